"""ray_cora.faults: the fault plan tests inject, empty (and inert) in production."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest

from ray_cora import faults
from ray_cora.faults import EMPTY, FaultPlan, SimulatedCrash


def test_the_empty_plan_does_nothing(tmp_path):
    plan = faults.current()
    assert plan is EMPTY and not plan and plan.get(faults.DRIVER_ENTRIES) is None
    for point in faults.POINTS:
        plan.raise_after(point, 10**9)
        plan.raise_at(point, "round-1/a")
        plan.die_once_here(point, 2)  # would end this process if it did anything
    assert list(tmp_path.iterdir()) == []


def test_inject_sets_the_current_plan_and_restores_it_nested():
    outer, inner = FaultPlan({faults.DRIVER_ENTRIES: 3}), FaultPlan({faults.ITERATE_AFTER_STAGE: "round-2/index"})
    with faults.inject(outer) as got:
        assert got is outer and faults.current() is outer
        with faults.inject(inner):
            assert faults.current() is inner
        assert faults.current() is outer
        with pytest.raises(KeyError), faults.inject(inner):
            raise KeyError("restored even when the block raises")
        assert faults.current() is outer
    assert faults.current() is EMPTY


def test_raise_after_raises_simulated_crash_at_the_count():
    plan = FaultPlan({faults.DRIVER_ENTRIES: 3})
    plan.raise_after(faults.DRIVER_ENTRIES, 1)
    plan.raise_after(faults.DRIVER_ENTRIES, 2)
    plan.raise_after(faults.PIVOT_ANSWER_PARTS, 5)  # another point: not set
    with pytest.raises(SimulatedCrash, match="driver.entries: the driver stops after 3 block"):
        plan.raise_after(faults.DRIVER_ENTRIES, 3, "the driver stops after 3 block(s)")
    assert issubclass(SimulatedCrash, RuntimeError)


def test_raise_at_matches_the_value_only():
    plan = FaultPlan({faults.ITERATE_AFTER_STAGE: "round-2/index"})
    plan.raise_at(faults.ITERATE_AFTER_STAGE, "round-1/index")
    with pytest.raises(SimulatedCrash, match="round-2/index"):
        plan.raise_at(faults.ITERATE_AFTER_STAGE, "round-2/index")


def test_the_plan_pickles_and_is_frozen(tmp_path):
    plan = FaultPlan({faults.RETRIEVE_WRITER_BLOCK: "en-00001", faults.DRIVER_ENTRIES: 3},
                     once_marker=str(tmp_path / "died"))
    again = pickle.loads(pickle.dumps(plan))
    assert again == plan and again.get(faults.RETRIEVE_WRITER_BLOCK) == "en-00001"
    assert again.once_marker == str(tmp_path / "died")
    with pytest.raises(AttributeError):
        plan.once_marker = None  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(EMPTY)) == EMPTY


def test_a_plan_refuses_unknown_points_and_die_once_points_without_a_marker():
    with pytest.raises(ValueError, match="unknown injection point"):
        FaultPlan({"retrieve.writer_blok": "en-00001"})
    with pytest.raises(ValueError, match="once_marker"):
        FaultPlan({faults.EMBED_ACTOR_SHARD: 2})


def test_die_once_here_ends_the_process_once(tmp_path):
    marker = tmp_path / "died"
    script = ("import sys; from ray_cora import faults\n"
              f"plan = faults.FaultPlan({{faults.EMBED_ACTOR_SHARD: 2}}, once_marker={str(marker)!r})\n"
              "plan.die_once_here(faults.EMBED_ACTOR_SHARD, 1)\n"
              "plan.die_once_here(faults.EMBED_ACTOR_SHARD, 2)\n"
              "print('survived')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def run():
        return subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True,
                              env=env, timeout=60)

    first = run()
    assert first.returncode == 1 and "survived" not in first.stdout and marker.exists()
    second = run()
    assert second.returncode == 0 and "survived" in second.stdout
