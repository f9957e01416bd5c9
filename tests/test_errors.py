"""A user's error comes out as one line wherever it was raised: on the driver, in a Ray Data actor's
``__init__`` or ``__call__``, in a task; and what can be checked is checked on the driver before
any actor starts (model sources, resources)."""

from __future__ import annotations

import gzip
import json
import pickle
import subprocess
import sys
import time

import pytest

from ray_cora.configs.embed import EmbedConfig
from ray_cora.data.records import BadRecords
from ray_cora.data.wiki import iter_articles
from ray_cora.data.wikidata import iter_entities
from ray_cora.encoders import check_encoder_available
from ray_cora.errors import BadRecordError, ConfigError, StorageError, user_error_from_text
from ray_cora.runtime import check_resources_fit, user_errors_from_ray

STORAGE_MESSAGE = "db/manifest.json: not found; rerun the job that makes it"


class FailsInInit:
    """A Ray Data UDF whose ``__init__`` raises a user error (as a missing model or database)."""

    def __init__(self) -> None:
        raise StorageError(STORAGE_MESSAGE)

    def __call__(self, batch):
        return batch


class FailsInCall:
    """A Ray Data UDF whose ``__call__`` raises a user error on a bad record."""

    def __call__(self, batch):
        raise BadRecordError("corpus.jsonl", 7, "field 'text' is empty")


class FailsWithBug:
    def __call__(self, batch):
        raise ZeroDivisionError("a bug")


def _driver_error(cls):
    """The error as the driver itself would raise it (the line the CLI prints)."""
    try:
        cls().__call__({})
    except Exception as exc:  # noqa: BLE001 - the test compares it
        return exc


def test_a_traceback_text_gives_back_the_last_user_error_with_its_class_and_line():
    text = ("Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n"
            "ray_cora.errors.StorageError: inner: not found\n\nThe above exception was the direct cause of:\n"
            "\x1b[36mray::MapWorker\x1b[39m\n"
            "ray_cora.errors.BadRecordError: corpus.jsonl:7: field 'text' is empty (fix the record)\n")
    error = user_error_from_text(text)
    assert type(error) is BadRecordError
    assert str(error) == "corpus.jsonl:7: field 'text' is empty (fix the record)"
    assert (error.source, error.line, error.reason) == ("corpus.jsonl", 7, "field 'text' is empty")
    assert str(pickle.loads(pickle.dumps(error))) == str(error)
    # A line not in BadRecordError's own format keeps its text; a class of ours the driver never
    # imported (a worker's) is found in its module.
    assert str(user_error_from_text("ray_cora.errors.BadRecordError: odd text\n")) == "odd text"
    assert type(user_error_from_text("ray_cora.serve.run.ServeStartError: port busy\n")).__name__ == "ServeStartError"
    # Not a user error: nothing to recover (a bug keeps its traceback).
    assert user_error_from_text("Traceback ...\nZeroDivisionError: division by zero\n") is None
    assert user_error_from_text("ray_cora.errors.NoSuchError: x\nfoo.StorageError: y\n") is None


@pytest.mark.slow
def test_user_errors_from_ray_actors_come_out_as_the_drivers_one_line(ray_local):
    """An actor pool's ``__init__`` failure reaches the driver as ``ActorDiedError`` text only,
    a ``__call__`` failure as ``UserCodeException`` without its cause; both are given back as the
    very error the driver would have raised. A bug stays a bug."""
    data = ray_local.data

    def run(udf):
        return (data.range(4, override_num_blocks=1)
                .map_batches(udf, compute=data.ActorPoolStrategy(size=1), num_cpus=0.5).materialize())

    with pytest.raises(StorageError) as init_error:
        with user_errors_from_ray():
            run(FailsInInit)
    assert str(init_error.value) == STORAGE_MESSAGE
    assert type(init_error.value) is StorageError

    expected = _driver_error(FailsInCall)
    with pytest.raises(BadRecordError) as call_error:
        with user_errors_from_ray():
            run(FailsInCall)
    assert str(call_error.value) == str(expected)
    assert call_error.value.line == 7

    with pytest.raises(Exception) as bug:
        with user_errors_from_ray():
            run(FailsWithBug)
    assert not isinstance(bug.value, (StorageError, BadRecordError, ConfigError))


@pytest.mark.slow
def test_resources_no_node_has_are_refused_at_once(ray_local):
    """The local Ray has 2 CPUs and no GPU: 4 CPUs or 1 GPU per actor can never be scheduled."""
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"--actor-cpus 4 asks for 4 CPUs for each actor or task, but the "
                                          r"largest node of this Ray has 2"):
        check_resources_fit({"--actor-cpus/--actor-gpus": (4.0, 0.0)})
    with pytest.raises(ConfigError, match=r"--search-gpus 1 asks for 1 GPUs"):
        check_resources_fit({"--search-actor-cpus/--search-gpus": (0.25, 1.0)})
    check_resources_fit({"--actor-cpus/--actor-gpus": (2.0, 0.0)})  # fits: no error
    assert time.monotonic() - started < 10


def test_on_a_joined_cluster_a_missing_node_is_a_warning_the_autoscaler_may_answer(ray_local, monkeypatch, capsys):
    """cluster/aws.yaml starts GPU workers from zero on demand: a job that joined a cluster waits
    for them (one line says so) instead of being refused."""
    from ray_cora import runtime

    monkeypatch.setattr(runtime, "_joined_address", "10.0.0.1:6379")
    check_resources_fit({"--actor-cpus/--actor-gpus": (0.5, 1.0)})
    assert "no running node of the cluster at 10.0.0.1:6379 has 1 GPUs for --actor-gpus yet; waiting for " \
        "the autoscaler" in capsys.readouterr().err


def test_embed_with_more_actor_cpus_than_num_cpus_is_refused_in_the_config():
    with pytest.raises(ConfigError, match=r"--actor-cpus 4 is more than the 1 CPUs of --num-cpus"):
        EmbedConfig.load(overrides={"passages": "p.jsonl", "out": "o", "num_cpus": 1, "actor_cpus": 4})
    # Joining a cluster: its nodes are checked once joined, not against --num-cpus.
    EmbedConfig.load(overrides={"passages": "p.jsonl", "out": "o", "num_cpus": 1, "actor_cpus": 4,
                                "ray_address": "10.0.0.1:6379"})


@pytest.mark.slow
def test_embed_cli_with_impossible_actor_cpus_exits_2_at_once(tmp_path):
    """`ray-cora embed --num-cpus 1 --actor-cpus 4` used to wait forever without a word."""
    corpus = tmp_path / "p.jsonl"
    corpus.write_text('{"pid": "1", "lang": "en", "title": "t", "text": "x"}\n')
    result = subprocess.run([sys.executable, "-m", "ray_cora", "embed", "--passages", str(corpus), "--out",
                             str(tmp_path / "index"), "--num-cpus", "1", "--actor-cpus", "4"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "ray-cora embed: error: invalid EmbedConfig (command line): --actor-cpus 4 is more than the 1 CPUs "
        "of --num-cpus: Ray would wait forever for them; lower --actor-cpus or raise --num-cpus"]


def test_encoder_sources_are_checked_on_the_driver(tmp_path):
    """What an actor would fail to load in ``__init__`` is refused before any actor starts."""
    with pytest.raises(ConfigError, match=r"cannot load the encoder from '.*nomodel': no such folder"):
        check_encoder_available(f"hf:{tmp_path / 'nomodel'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"the folder has no config.json"):
        check_encoder_available(f"hf:{tmp_path / 'empty'}")
    with pytest.raises(StorageError, match=r"no such checkpoint file"):
        check_encoder_available(f"dpr:{tmp_path / 'none.cpt'}")
    not_a_checkpoint = tmp_path / "x.cpt"
    not_a_checkpoint.write_text('{"a": 1}\n')
    with pytest.raises(StorageError, match=r"x.cpt: refused to load"):
        check_encoder_available(f"dpr:{not_a_checkpoint}")
    check_encoder_available("muse")
    # What train-mdpr exports: a bi-encoder folder, a config.json in each tower and none at the top.
    for tower in ("question_encoder", "ctx_encoder"):
        (tmp_path / "bi" / tower).mkdir(parents=True)
        (tmp_path / "bi" / tower / "config.json").write_text("{}")
    check_encoder_available(f"hf:{tmp_path / 'bi'}")
    (tmp_path / "bi" / "ctx_encoder" / "config.json").unlink()
    with pytest.raises(ConfigError, match=r"the folder has no config.json"):
        check_encoder_available(f"hf:{tmp_path / 'bi'}")


def test_wiki_dump_lines_with_deep_json_or_lone_surrogates_are_bad_records_and_a_damaged_gz_one_line(tmp_path):
    good = json.dumps({"id": "1", "title": "T", "text": "words"}) + "\n"
    path = tmp_path / "wiki_00"
    path.write_text(good + "[" * 100_000 + "]" * 100_000 + "\n"
                    + json.dumps({"id": "2", "title": "T\ud800", "text": "x"}) + "\n")
    with pytest.raises(BadRecordError, match=r"wiki_00:2: JSON nested too deeply"):
        list(iter_articles(str(path)))
    bad = BadRecords("skip")
    assert [a["id"] for a in iter_articles(str(path), bad_records=bad)] == ["1"]
    assert [r["line"] for r in bad.records] == [2, 3] and "lone surrogate" in bad.records[1]["reason"]
    data = gzip.compress(b"".join((json.dumps({"id": str(i), "title": "T", "text": "w"}) + "\n").encode()
                                  for i in range(3000)))
    damaged = tmp_path / "wiki_01.gz"
    damaged.write_bytes(data[: len(data) // 2] + b"\x00junk" * 8)
    with pytest.raises(StorageError, match=r"wiki_01\.gz:\d+: cannot read the file on after line \d+"):
        list(iter_articles(str(damaged)))


def test_wikidata_entities_with_deep_json_or_lone_surrogates_are_bad_records():
    good = json.dumps({"id": "Q1", "labels": {"en": {"language": "en", "value": "one"}}})
    surrogate = json.dumps({"id": "Q2", "labels": {"en": {"language": "en", "value": "tw\udc00o"}}})
    lines = [(1, b"["), (2, good.encode() + b","), (3, b"[" * 100_000 + b"]" * 100_000), (4, surrogate.encode())]
    with pytest.raises(BadRecordError, match=r"dump.json:3: JSON nested too deeply"):
        list(iter_entities(lines, source="dump.json", langs=["en"]))
    bad = BadRecords("skip")
    assert [e.qid for e in iter_entities(lines, source="dump.json", langs=["en"], bad_records=bad)] == ["Q1"]
    assert [r["line"] for r in bad.records] == [3, 4]
    assert "field 'labels.en' holds a lone surrogate" in bad.records[1]["reason"]
