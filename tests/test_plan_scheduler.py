"""scripts/plan_scheduler.py with fake stages (tiny Python processes that record when and where they ran):
students after teachers, stages side by side, each pinned to its own GPU and CPUs, a failure stopping only
its dependants, a killed stage resumed by the next run, and SIGTERM waiting for every running stage."""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from scripts.plan_scheduler import Scheduler, Slot, Stage, cpu_shares, make_slots

FAKE = """
import json, os, signal, sys, time
name, state = sys.argv[1], sys.argv[2]
start = time.time()
if os.environ.get("FAKE_KILL") == name and "--resume" not in sys.argv:
    open(os.path.join(state, name + ".partial"), "w").close()
    os.kill(os.getpid(), signal.SIGKILL)
if os.environ.get("FAKE_FAIL") == name:
    sys.exit(3)
stopped = []
signal.signal(signal.SIGTERM, lambda *a: stopped.append(1))
open(os.path.join(state, name + ".pid"), "w").write(str(os.getpid()))
meet = os.environ.get("FAKE_MEET", "").split(",")  # stages that each wait until all of them have started
while name in meet and not all(os.path.exists(os.path.join(state, m + ".pid")) for m in meet) \
        and time.time() < start + 60:
    time.sleep(0.01)
deadline = start + float(os.environ.get("FAKE_SECONDS", "0.15"))
while time.time() < deadline and not stopped:
    time.sleep(0.01)
if stopped:  # a checkpoint "written", then SIGTERM's exit code
    time.sleep(0.2)
    open(os.path.join(state, name + ".partial"), "w").close()
    sys.exit(143)
record = {"start": start, "end": time.time(), "argv": sys.argv[1:], "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
          "cpus": sorted(os.sched_getaffinity(0)), "omp": os.environ.get("OMP_NUM_THREADS")}
json.dump(record, open(os.path.join(state, name + ".json"), "w"))
"""

# Two seeds: a teacher and its student each, and an evaluation of each student.
GRAPH = {"t0": (), "t1": (), "s0": ("t0",), "s1": ("t1",), "e0": ("s0",), "e1": ("s1",), "other": ()}


def fake_stages(tmp_path: Path) -> list[Stage]:
    script = tmp_path / "fake_stage.py"
    script.write_text(FAKE)
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)

    def stage(name: str, deps: tuple[str, ...]) -> Stage:
        return Stage(name, f"stage {name}", deps, lambda: (state / f"{name}.json").is_file(),
                     lambda: [sys.executable, str(script), name, str(state)]
                     + (["--resume"] if (state / f"{name}.partial").is_file() else []),
                     tmp_path / "logs" / f"{name}.log")
    return [stage(name, deps) for name, deps in GRAPH.items()]


def ran(tmp_path: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (tmp_path / "state").glob("*.json")}


@pytest.fixture(params=[1, pytest.param(2, marks=pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2,
                                                                  reason="needs 2 CPUs to pin 2 stages apart"))])
def cpus(request):
    """The first 1 or 2 of this machine's CPUs as this thread's affinity: the plan's, and its stages'."""
    everything = os.sched_getaffinity(0)
    mine = sorted(everything)[:request.param]
    os.sched_setaffinity(0, mine)
    yield mine
    os.sched_setaffinity(0, everything)


def test_stages_run_side_by_side_after_their_dependencies_each_pinned_to_its_gpu_and_cpus(tmp_path, monkeypatch,
                                                                                         cpus):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    # The two teachers, launched first, each end only once both have started: they overlap if, and only if, the
    # plan runs them side by side, however slowly their interpreters start.
    monkeypatch.setenv("FAKE_MEET", "t0,t1")
    slots = make_slots(2, ["3", "5"])
    outcome = Scheduler(fake_stages(tmp_path), slots, echo=lambda line: None).run()
    assert sorted(outcome.finished) == sorted(GRAPH) and not outcome.failed
    records = ran(tmp_path)
    for name, deps in GRAPH.items():
        assert all(records[name]["start"] >= records[d]["end"] for d in deps)  # every student after its teacher
    t0, t1 = records["t0"], records["t1"]
    assert t0["start"] < t1["end"] and t1["start"] < t0["end"]  # side by side
    intervals = sorted((r["start"], r["end"], r["gpus"], tuple(r["cpus"])) for r in records.values())
    overlapping = [(a, b) for i, a in enumerate(intervals) for b in intervals[i + 1:] if b[0] < a[1]]
    # Each slot a CPU of its own where there are 2; where there is 1, both slots share it.
    assert [sorted(slot.cpus) for slot in slots] == [cpus[:1], cpus[-1:]]
    assert all(r["cpus"] == sorted(next(s.cpus for s in slots if s.gpus == (r["gpus"],))) for r in records.values())
    for a, b in overlapping:
        assert a[2] != b[2]  # on different GPUs
        assert bool(set(a[3]) & set(b[3])) == (len(cpus) == 1)  # on different CPUs, but for the one CPU there is
    at_once = max(sum(s <= start < e for s, e, *_ in intervals) for start, *_ in intervals)
    assert at_once == 2  # never more stages than slots
    assert {r["gpus"] for r in records.values()} == {"3", "5"}
    assert all(r["omp"] == str(len(r["cpus"])) for r in records.values())
    assert all((tmp_path / "logs" / f"{name}.log").read_text().startswith("$ ") for name in GRAPH)  # a log each


def test_a_failing_stage_stops_its_dependants_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL", "t0")
    outcome = Scheduler(fake_stages(tmp_path), make_slots(2, None), echo=lambda line: None).run()
    assert list(outcome.failed) == ["t0"] and "fake_stage.py exited with code 3" in outcome.failed["t0"]
    assert sorted(outcome.blocked) == ["e0", "s0"]
    assert sorted(ran(tmp_path)) == ["e1", "other", "s1", "t1"]


def test_a_killed_stage_is_resumed_by_the_next_run_and_finished_ones_are_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_KILL", "s1")
    stages = fake_stages(tmp_path)
    first = Scheduler(stages, [Slot("main")], echo=lambda line: None).run()
    assert "killed by SIGKILL" in first.failed["s1"] and first.blocked == ["e1"]
    finished = {name: r["end"] for name, r in ran(tmp_path).items()}
    lines: list[str] = []
    second = Scheduler(stages, [Slot("main")], echo=lines.append).run()
    assert sorted(second.finished) == sorted(GRAPH) and not second.failed
    launched = [line for line in lines if line.startswith("$ ")]
    assert len(launched) == 2 and launched[0].endswith("s1 " + str(tmp_path / "state") + " --resume")
    assert "e1" in launched[1]
    assert all(ran(tmp_path)[name]["end"] == end for name, end in finished.items())  # not run again


def test_sigterm_waits_for_every_running_stage_then_reports_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_SECONDS", "60")  # a stage runs until the signal, however late it comes
    stages = fake_stages(tmp_path)
    # SLURM signals every process of the job step: the plan (this process) and each running stage.
    def signal_the_job():
        deadline = time.time() + 30
        while len(list((tmp_path / "state").glob("*.pid"))) < 2 and time.time() < deadline:
            time.sleep(0.05)
        for pid_file in (tmp_path / "state").glob("*.pid"):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=signal_the_job, daemon=True).start()
    outcome = Scheduler(stages, make_slots(2, None), echo=lambda line: None).run()
    assert outcome.stopped_by == signal.SIGTERM
    assert sorted(outcome.failed) == ["t0", "t1"]  # the two running stages, each waited for
    assert all("exited with code 143" in why for why in outcome.failed.values())
    assert all((tmp_path / "state" / f"{n}.partial").is_file() for n in ("t0", "t1"))  # their checkpoints
    assert ran(tmp_path) == {}  # nothing launched after the signal


def test_cpu_shares_split_the_cpus_without_overlap():
    assert cpu_shares(3, {0, 1, 2, 3, 4, 5, 6}) == [frozenset({0, 1, 2}), frozenset({3, 4}), frozenset({5, 6})]
    assert cpu_shares(3, {4, 9}) == [frozenset({4}), frozenset({9}), frozenset({4})]
    with pytest.raises(ValueError, match="unknown stages"):
        Scheduler([Stage("a", "a", ("b",), lambda: True, lambda: [])], [Slot("main")])
