"""The drivers' progress lines (ray_cora.progress), pure: a fake clock, lines collected in a list."""

from __future__ import annotations

import re

import pytest

from ray_cora.progress import JobProgress, eta_seconds, format_bytes, format_count, format_duration, print_line


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _progress(**options):
    clock, lines = Clock(), []
    progress = JobProgress(**{"clock": clock, "emit": lines.append, **options})
    return progress, clock, lines


def test_every_unit_of_a_small_job_gets_a_line_with_done_total_rate_bytes_and_eta():
    progress, clock, lines = _progress(job="embed", unit="shard", total=5, items="passages", todo_items=500)
    progress.start()
    for _ in range(5):
        clock.now += 2.0
        progress.add(items=100, bytes=1_500_000)
    assert lines == [
        "embed: shard 1/5 done (100 passages, 50 passages/s, 1.5 MB written), ETA 8 s",
        "embed: shard 2/5 done (200 passages, 50 passages/s, 3.0 MB written), ETA 6 s",
        "embed: shard 3/5 done (300 passages, 50 passages/s, 4.5 MB written), ETA 4 s",
        "embed: shard 4/5 done (400 passages, 50 passages/s, 6.0 MB written), ETA 2 s",
        "embed: shard 5/5 done (500 passages, 50 passages/s, 7.5 MB written)",
    ]
    assert progress.summary() == "embed: 5 shards (500 passages) in 10 s (50 passages/s, 7.5 MB written)"


def test_a_large_job_is_rate_limited_to_the_time_floor_plus_first_and_last_unit():
    progress, clock, lines = _progress(job="retrieve", unit="block", total=1000, items="questions",
                                       every_s=10.0, every_unit_up_to=20)
    progress.start()
    for _ in range(1000):
        clock.now += 0.5  # 2 blocks a second: 500 s in all
        progress.add(items=16)
    done = [int(re.match(r"retrieve: block (\d+)/1000 done", line).group(1)) for line in lines]
    assert done[0] == 1 and done[-1] == 1000
    assert done[1:-1] == list(range(21, 1000, 20))  # one line per 10 s = per 20 blocks
    assert len(lines) == 51


def test_a_resumed_job_says_what_it_skips_counts_it_in_done_and_not_in_the_rate():
    progress, clock, lines = _progress(job="embed", unit="shard", total=436, items="passages", already_done=120,
                                       already_items=12_000_000, todo_items=31_600_000)
    progress.start()
    assert lines == ["embed: resuming: 120 of 436 shards already done, skipping them"]
    clock.now += 3600
    progress.add(items=5_100_000, bytes=310_000_000)
    assert lines[1] == "embed: shard 121/436 done (5.1M passages, 1.4k passages/s, 310 MB written), ETA 5 h 12 min"
    clock.now += 5
    progress.add(items=100_000)  # within the time floor (10 s), a big job: no line
    assert len(lines) == 2
    assert progress.summary() == ("embed: 436 shards (17.2M passages) in 1 h (1.4k passages/s, 310 MB written); "
                                  "120 skipped as already done (resumed)")


def test_units_found_finished_while_running_are_skipped_lines_and_counted_in_the_summary():
    progress, clock, lines = _progress(job="passages", unit="file", total=3, items="passages")
    progress.start()
    progress.add(skipped=True, items=40, note="en file 0")
    clock.now += 4
    progress.add(items=20, bytes=2000)
    clock.now += 4
    progress.add(items=20, bytes=2000)
    assert lines == ["passages: file 1/3 done (en file 0, skipped: finished before)",
                     "passages: file 2/3 done (20 passages, 5.0 passages/s, 2.0 kB written), ETA 4 s",
                     "passages: file 3/3 done (40 passages, 5.0 passages/s, 4.0 kB written)"]
    assert progress.summary() == ("passages: 3 files (80 passages) in 8 s (5.0 passages/s, 4.0 kB written); "
                                  "1 skipped as already done (resumed)")


def test_units_without_items_show_units_per_second_and_unlike_units_show_neither_rate_nor_eta():
    progress, clock, lines = _progress(job="generate", unit="prediction", total=4)
    progress.start()
    clock.now += 1
    progress.add(bytes=50)
    assert lines == ["generate: prediction 1/4 done (1.0 predictions/s, 50 B written), ETA 3 s"]
    stages, clock, lines = _progress(job="iterate", unit="stage", total=2, uniform=False)
    stages.start()
    clock.now += 3000
    stages.add(note="round-1/mdpr")
    assert lines == ["iterate: stage 1/2 done (round-1/mdpr)"]
    assert stages.summary() == "iterate: 2 stages in 50 min"


@pytest.mark.parametrize("seconds, text", [(0, "0 s"), (59.4, "59 s"), (60, "1 min"), (61, "1 min 1 s"),
                                           (599, "9 min 59 s"), (600, "10 min"), (3569, "59 min"), (3599, "1 h"),
                                           (3600, "1 h"), (18_720, "5 h 12 min"), (86_400, "1 d")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_counts_bytes_and_eta_arithmetic():
    assert [format_count(n) for n in (999, 1000, 99_949, 100_000, 43_612_345)] == ["999", "1.0k", "99.9k", "100k",
                                                                                   "43.6M"]
    assert [format_bytes(n) for n in (999, 1000, 9_999_999, 10_000_000)] == ["999 B", "1.0 kB", "10.0 MB", "10 MB"]
    assert eta_seconds(3, 9, 6.0) == 18.0 and eta_seconds(5, 0, 1.0) == 0.0
    assert format_duration(eta_seconds(0, 9, 6.0)) == "?"


def test_print_line_flushes_stdout(capfd):
    print_line("embed: shard 1/2 done")
    assert capfd.readouterr().out == "embed: shard 1/2 done\n"
