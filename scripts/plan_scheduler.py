"""Run a plan's stages on this machine, several at a time: each stage waits for the stages it depends
on (a student for its teacher, an evaluation for its training run), takes a free slot (its GPUs,
pinned with CUDA_VISIBLE_DEVICES, and its share of the CPUs for loader workers), and a failing stage
stops only the stages that depend on it. Standard library only, so that it is tested with fake stages.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
POLL_S = 0.05  # how often running stages are checked; a stage lasts minutes to hours


@dataclass(frozen=True)
class Stage:
    """One command of the plan. `command()` is asked only when `done()` is false and every dependency
    has finished; it returns the command to run now (with --resume when a checkpoint is partial). A stage
    with an `action` runs no command: the action runs in this process (a decision taking milliseconds, such
    as a selection on validation results), and its exception is the stage's failure."""
    id: str
    label: str
    deps: tuple[str, ...]
    done: Callable[[], bool]
    command: Callable[[], list[str]]
    log: Path | None = None  # where its output goes when stages run side by side
    action: Callable[[], None] | None = None


@dataclass(frozen=True)
class Slot:
    """Where one stage runs: its GPUs (None: leave CUDA_VISIBLE_DEVICES as it is) and its CPUs (None: all)."""
    name: str
    gpus: tuple[str, ...] | None = None
    cpus: frozenset[int] | None = None


@dataclass
class Outcome:
    """What happened to each stage: finished (run now or found done), failed (with why), or not run."""
    finished: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    blocked: list[str] = field(default_factory=list)
    stopped_by: int | None = None  # the signal that stopped the plan


def cpu_shares(n: int, cpus: set[int] | None = None) -> list[frozenset[int]]:
    """The CPUs this process may run on, cut into `n` contiguous shares (shared round robin when fewer)."""
    ordered = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
    if len(ordered) < n:
        return [frozenset({ordered[i % len(ordered)]}) for i in range(n)]
    size, extra = divmod(len(ordered), n)
    shares, start = [], 0
    for i in range(n):
        end = start + size + (i < extra)
        shares.append(frozenset(ordered[start:end]))
        start = end
    return shares


def make_slots(parallel: int, gpus: list[str] | None, gpus_per_stage: int = 1) -> list[Slot]:
    """`parallel` slots; with GPUs, each takes `gpus_per_stage` of them in turn (round robin when there
    are more slots than GPU groups), and every slot a share of the CPUs. One slot without GPUs changes nothing."""
    if parallel == 1 and not gpus:
        return [Slot("main")]
    shares = cpu_shares(parallel)
    slots = []
    for i in range(parallel):
        if gpus:
            groups = max(1, len(gpus) // gpus_per_stage)
            first = (i % groups) * gpus_per_stage
            mine = tuple(gpus[first:first + gpus_per_stage])
            slots.append(Slot(f"gpu {','.join(mine)}", mine, shares[i]))
        else:
            first, last = min(shares[i]), max(shares[i])
            slots.append(Slot(f"cpu {first}" if first == last else f"cpus {first}-{last}", None, shares[i]))
    return slots


def dependants(stages: list[Stage], failed: str) -> set[str]:
    """Every stage that needs `failed`, directly or through others."""
    out: set[str] = set()
    grew = True
    while grew:
        grew = False
        for s in stages:
            if s.id not in out and (failed in s.deps or out.intersection(s.deps)):
                out.add(s.id)
                grew = True
    return out


def describe_exit(command: list[str], code: int) -> str:
    script = next((Path(c).name for c in command if c.endswith(".py")), Path(command[0]).name)
    if code < 0:
        return f"{script} was killed by {signal.Signals(-code).name}"
    return f"{script} exited with code {code}"


class Scheduler:
    """Runs `stages` (listed in dependency order) in `slots`; with a single slot each stage runs in the
    foreground, its output on the terminal, as one process after another always did."""

    def __init__(self, stages: list[Stage], slots: list[Slot], echo: Callable[[str], None] = print) -> None:
        ids = {s.id for s in stages}
        for s in stages:
            missing = set(s.deps) - ids
            if missing:
                raise ValueError(f"stage {s.id} depends on unknown stages {sorted(missing)}")
        self.stages, self.slots, self.echo = stages, slots, echo
        self.side_by_side = len(slots) > 1

    def progress(self, outcome: Outcome, running: dict[str, tuple]) -> str:
        waiting = len(self.stages) - len(outcome.finished) - len(outcome.failed) - len(outcome.blocked) - len(running)
        where = "; ".join(f"{self.by_id[i].label} on {slot.name}" for i, (_, slot, _) in running.items())
        failed = f", {len(outcome.failed)} failed" if outcome.failed else ""
        blocked = f", {len(outcome.blocked)} not run (they need a failed one)" if outcome.blocked else ""
        return (f"plan: {len(outcome.finished)} of {len(self.stages)} stages finished, {len(running)} running"
                f"{' (' + where + ')' if where else ''}{failed}{blocked}, {waiting} waiting")

    def launch(self, command: list[str], slot: Slot, log: Path | None) -> subprocess.Popen:
        env = dict(os.environ)
        if slot.gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(slot.gpus)
        if slot.cpus is not None:
            env.setdefault("OMP_NUM_THREADS", str(len(slot.cpus)))
        cpus = slot.cpus
        preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus is not None else None
        if not self.side_by_side or log is None:
            return subprocess.Popen(command, env=env, preexec_fn=preexec)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as out:  # appended: a resumed stage keeps what its first attempt said
            out.write(f"$ {shlex.join(command)}\n")
            out.flush()
            return subprocess.Popen(command, env=env, preexec_fn=preexec, stdout=out, stderr=subprocess.STDOUT)

    def run(self) -> Outcome:
        """Run every stage that is not done; stop launching on SIGTERM/SIGINT (which reach every stage of the
        job or terminal too: each stops after its step with a checkpoint) and wait for the running ones."""
        self.by_id = {s.id: s for s in self.stages}
        outcome = Outcome()
        received: list[int] = []
        previous = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in STOP_SIGNALS}
        running: dict[str, tuple[subprocess.Popen, Slot, list[str]]] = {}
        try:
            while True:
                settled = set(outcome.finished) | set(outcome.failed) | set(outcome.blocked) | set(running)
                free = [slot for slot in self.slots if all(slot is not s for _, s, _ in running.values())]
                launched = False
                if not received:
                    for stage in self.stages:
                        if not free:
                            break
                        if stage.id in settled or not set(stage.deps) <= set(outcome.finished):
                            continue
                        settled.add(stage.id)
                        try:
                            if stage.done():
                                outcome.finished.append(stage.id)
                                continue
                            if stage.action is not None:
                                stage.action()
                                outcome.finished.append(stage.id)
                                continue
                            command = stage.command()
                        except Exception as e:  # a checkpoint that cannot be read, an action that failed:
                            # this stage's failure only
                            self.fail(stage, f"{stage.label}: {e}", outcome)
                            continue
                        slot = free.pop(0)
                        where = f" on {slot.name} (log {stage.log})" if self.side_by_side else ""
                        self.echo(f"$ {shlex.join(command)}{where}")
                        running[stage.id] = (self.launch(command, slot, stage.log), slot, command)
                        launched = True
                        if received:
                            break
                    if launched:
                        self.echo(self.progress(outcome, running))
                if not running:
                    break
                ended = self.wait_any(running)
                process, slot, command = running.pop(ended)
                if received:
                    outcome.failed[ended] = f"{self.by_id[ended].label} ({describe_exit(command, process.returncode)})"
                elif process.returncode == 0:
                    outcome.finished.append(ended)
                else:
                    stage = self.by_id[ended]
                    log = f" (log {stage.log})" if self.side_by_side else ""
                    self.fail(stage, f"{stage.label}: {describe_exit(command, process.returncode)}{log}", outcome)
                self.echo(self.progress(outcome, running))
        finally:
            for process, _, _ in running.values():  # only on an unexpected error: the plan must not leave orphans
                process.wait()
            for s, handler in previous.items():
                signal.signal(s, handler)
        outcome.stopped_by = received[0] if received else None
        return outcome

    def fail(self, stage: Stage, why: str, outcome: Outcome) -> None:
        outcome.failed[stage.id] = why
        outcome.blocked += sorted(dependants(self.stages, stage.id) - set(outcome.blocked))

    @staticmethod
    def wait_any(running: dict[str, tuple[subprocess.Popen, Slot, list[str]]]) -> str:
        """The id of the next stage to end (a signal interrupts the sleep, not the wait)."""
        while True:
            for stage_id, (process, _, _) in running.items():
                if process.poll() is not None:
                    return stage_id
            time.sleep(POLL_S)
