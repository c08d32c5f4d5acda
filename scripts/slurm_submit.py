"""Submit a plan's stages to SLURM: one job per stage, each student's job after its teacher's (afterok),
each evaluation after its training run, and eval.table after all. The jobs run `reproduce.py ... --stage ID`,
the stage exactly as the local plan runs it (skipped when done, resumed from its checkpoint). The job ids go to
OUTPUT/slurm/jobs.json, so a second submission keeps what is queued or running, skips what finished, and
submits again only what is missing or ended without finishing. Standard library only (tested with stand-in
sbatch, sacct, squeue and scancel executables).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from scripts.plan_scheduler import Stage

# SLURM job states in which a job will still run (or is running); every other state has ended.
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING", "REQUEUE_HOLD",
          "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}
TABLE = "eval.table"  # the record's key of the final table job
MIN_TRAIN_S = 3600


class SubmitError(RuntimeError):
    """sbatch is missing or refused a job, a resource flag is malformed, or a path cannot be written in a job
    script (refused before any job is submitted); what was submitted is recorded."""


def add_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("SLURM (--submit slurm)")
    g.add_argument("--submit", default=None, choices=["slurm"],
                   help="submit the plan as SLURM jobs (one per stage, afterok dependencies) instead of running it")
    g.add_argument("--status", action="store_true", help="print the plan's state in one line and run nothing")
    g.add_argument("--partition", default=None, help="sbatch --partition of every job")
    g.add_argument("--account", default=None, help="sbatch --account of every job")
    g.add_argument("--cpus_per_gpu", type=int, default=8, help="CPUs per GPU of each job (its loader workers)")
    g.add_argument("--mem_per_gpu", default="32G", help="memory per GPU of each job (sbatch --mem units)")
    g.add_argument("--images_per_s", type=float, default=2000.0,
                   help="forwarded training images per second per GPU, from which a training job's time limit is "
                        "projected (1.5x plus 15 min, at least 1 h); the default is an assumption: give the rate "
                        "bench/gpu_check.sh measures")
    g.add_argument("--time_limit", default=None, help="sbatch --time of every training job instead of the projection")
    g.add_argument("--eval_time", default="01:00:00", help="sbatch --time of each evaluation job")


@dataclass(frozen=True)
class Request:
    """What one job asks for."""
    gpus: int
    cpus: int
    mem: str
    time: str


def slurm_time(seconds: float) -> str:
    minutes = math.ceil(seconds / 60)
    days, minutes = divmod(minutes, 24 * 60)
    return f"{days}-{minutes // 60:02d}:{minutes % 60:02d}:00"


def train_request(args: argparse.Namespace, gpus: int, forwarded: int | None) -> Request:
    """A training job: --nproc_per_node GPUs, their CPUs and memory, the time its images take at --images_per_s."""
    if args.time_limit:
        time = args.time_limit
    elif forwarded is not None:
        time = slurm_time(max(MIN_TRAIN_S, 1.5 * forwarded / (args.images_per_s * max(gpus, 1)) + 900))
    else:  # --use_trainval: the image count is not known, so the cluster's usual maximum
        time = "2-00:00:00"
    return Request(gpus, args.cpus_per_gpu * max(gpus, 1), scaled(args.mem_per_gpu, max(gpus, 1)), time)


def eval_request(args: argparse.Namespace, gpus: int) -> Request:
    return Request(gpus, args.cpus_per_gpu, args.mem_per_gpu, args.eval_time)


def scaled(mem: str, n: int) -> str:
    """`32G` x 2 = `64G` (sbatch's units: K, M, G, T; megabytes without one)."""
    match = re.fullmatch(r"(\d+)([KMGT]?)", mem.upper())
    if not match:
        raise SubmitError(f"--mem_per_gpu {mem}: expected a size such as 32G")
    return f"{int(match.group(1)) * n}{match.group(2)}"


# The job's paths go in its #SBATCH lines rather than on sbatch's command line, so that the script (printed by
# --dry_run, kept in OUTPUT/slurm/) is the whole job and `sbatch FILE` submits it again as it was. sbatch splits
# an #SBATCH line into arguments itself (src/sbatch/opt.c, get_argument): at unquoted whitespace, an unquoted `#`
# ends the line, single or double quotes group, and a backslash makes the next character literal, inside quotes
# too. Every value is therefore written in double quotes with `\` and `"` backslashed: each other character,
# non-ASCII bytes included, is then read as written. A newline cannot be written: sbatch reads one line at a time.
def sbatch_quoted(value: str) -> str:
    """`value` as one argument of an #SBATCH line."""
    if "\n" in value:
        raise SubmitError(f"{value!r}: holds a newline, which an #SBATCH line cannot (sbatch reads it line by line)")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def output_pattern(log: Path) -> str:
    """The --output value SLURM expands to exactly `log`. slurmstepd reads it as a filename pattern (%j, %x, ...;
    `%%` is one `%`), so each `%` is doubled; a backslash anywhere turns the patterns off and is itself dropped,
    so a path with one cannot be named. Absolute: a relative one would be joined to --chdir, whose `%`s would then
    be expanded as well (--chdir itself is taken as written)."""
    path = os.path.abspath(log)
    if "\\" in path:
        raise SubmitError(f"{path}: SLURM drops every backslash of a job's --output path; use an --output folder "
                          "without one")
    return sbatch_quoted(path.replace("%", "%%"))


def job_script(stage_id: str, label: str, request: Request, command: list[str], log: Path, *,
               dependencies: list[str], args: argparse.Namespace, env: dict[str, str] | None = None) -> str:
    """The sbatch script of one stage. A stage stopped by SIGTERM (SLURM's --signal before the time limit, or
    pre-emption) writes its checkpoint and exits 143; the job then requeues itself, keeping its id, so the jobs
    waiting for it (afterok) still wait, and the requeued job resumes the stage from its checkpoint."""
    lines = ["#!/bin/bash", f"#SBATCH --job-name=skd-{re.sub(r'[^A-Za-z0-9_.-]+', '_', label)[:60]}",
             f"#SBATCH --output={output_pattern(log)}", "#SBATCH --open-mode=append",
             f"#SBATCH --chdir={sbatch_quoted(os.getcwd())}",
             "#SBATCH --ntasks=1", *([f"#SBATCH --gpus={request.gpus}"] if request.gpus else []),
             f"#SBATCH --cpus-per-task={request.cpus}", f"#SBATCH --mem={request.mem}",
             f"#SBATCH --time={request.time}",
             "#SBATCH --requeue", "#SBATCH --signal=TERM@120",
             *([f"#SBATCH --partition={sbatch_quoted(args.partition)}"] if args.partition else []),
             *([f"#SBATCH --account={sbatch_quoted(args.account)}"] if args.account else []),
             *([f"#SBATCH --dependency=afterok:{':'.join(dependencies)}", "#SBATCH --kill-on-invalid-dep=yes"]
               if dependencies else []),
             f"# stage: {stage_id}",
             *(f"export {k}={shlex.quote(v)}" for k, v in (env or {}).items()),
             f"srun --ntasks=1 {shlex.join(command)}",
             "code=$?",
             '[ "$code" -eq 143 ] && [ -n "${SLURM_JOB_ID:-}" ] && { scontrol requeue "$SLURM_JOB_ID" || true; }',
             'exit "$code"']
    return "\n".join(lines) + "\n"


def record_path(args: argparse.Namespace) -> Path:
    return Path(args.output) / "slurm" / "jobs.json"


def read_record(args: argparse.Namespace) -> dict[str, str]:
    path = record_path(args)
    return json.loads(path.read_text()) if path.is_file() else {}


def write_record(args: argparse.Namespace, record: dict[str, str]) -> None:
    path = record_path(args)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)  # written after every submission: a crash in between never loses a job id


def job_states(job_ids: list[str]) -> dict[str, str]:
    """Each job's state from sacct (the last attempt of a requeued job), else from squeue (a job it no longer
    lists has ended: ENDED); a job neither knows is absent."""
    if not job_ids:
        return {}
    try:
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
                             capture_output=True, text=True, check=True).stdout
        states = {}
        for line in out.splitlines():
            if "|" in line:
                job, state = line.split("|")[:2]
                states[job.strip()] = state.split()[0] if state.split() else "UNKNOWN"
        return states
    except (OSError, subprocess.CalledProcessError):  # no accounting on this cluster
        out = subprocess.run(["squeue", "-h", "-o", "%i|%T", "-j", ",".join(job_ids)],
                             capture_output=True, text=True).stdout
        listed = dict(line.split("|")[:2] for line in out.splitlines() if "|" in line)
        return {job: listed.get(job, "ENDED") for job in job_ids}


def sbatch(script: Path) -> str:
    try:
        done = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
    except OSError as e:
        raise SubmitError(f"sbatch: {e.strerror} (--submit slurm runs on a SLURM login node)") from None
    if done.returncode != 0:
        raise SubmitError(f"sbatch {script}: {(done.stderr or done.stdout).strip()}; the jobs submitted before it "
                          f"are recorded, the same command submits the rest")
    return done.stdout.strip().split(";")[0]


def check_paths(args: argparse.Namespace, logs: list[Path]) -> None:
    """SubmitError, naming the path, when a job script cannot name one of the jobs' paths."""
    for log in logs:
        output_pattern(log)
    for value in (os.getcwd(), args.partition, args.account):
        if value:
            sbatch_quoted(value)


def write_and_sbatch(folder: Path, stage_id: str, script: str) -> str:
    """Write a stage's job script into `folder` (a file name made of the stage id) and submit it; the job id."""
    path = folder / (re.sub(r"[^A-Za-z0-9_.-]+", "_", stage_id) + ".sbatch")
    path.write_bytes(os.fsencode(script))  # a path's own bytes, whatever the locale, undecodable ones too
    return sbatch(path)


def print_dependency_graph(stages: list[Stage], done: set[str], kind: dict[str, str], number: dict[str, int]) -> None:
    """--dry_run: each job by its number in the printed scripts, with the jobs it waits for."""
    print("# dependency graph (job: what it runs <- the jobs it waits for):")
    for stage in stages:
        deps = [f"<job {number[d]}>" for d in stage.deps if kind[d] != "done"]
        print(f"#   <job {number[stage.id]}> {stage.label}" + (f" <- {', '.join(deps)}" if deps else "")
              if stage.id not in done else f"#   done: {stage.label}")
    print(f"#   <job {len(stages) + 1}> eval.table <- every job above")


def submit(args: argparse.Namespace, stages: list[Stage], requests: dict[str, Request], command: list[str],
           table_command: list[str], table_env: dict[str, str]) -> None:
    """Submit what is neither done nor queued; print each job id, then the plan's state in one line.
    --dry_run prints every job's script and the dependency graph instead; --status only the state line."""
    number = {s.id: i for i, s in enumerate(stages, 1)}
    record = {} if args.dry_run else read_record(args)
    states = {} if args.dry_run else job_states(sorted(set(record.values())))
    done = {s.id for s in stages if s.done()}
    kind: dict[str, str] = {}  # done, kept (queued or running), new (submitted now)
    job: dict[str, str] = {}
    ended: list[str] = []  # the states of the jobs that ended without finishing their stage
    folder, table_log = Path(args.output) / "slurm", Path(args.output) / "eval_table.log"
    if not args.status:  # every job's paths, before the first job is submitted (or printed)
        check_paths(args, [*(s.log for s in stages if s.id not in done), table_log])
    if not args.dry_run and not args.status:
        folder.mkdir(parents=True, exist_ok=True)
        # SLURM opens a job's --output before the job runs: a study's log folders (gen<g>/, teacher<k>/,
        # selections/) must exist when it starts.
        for stage in stages:
            if stage.log is not None and stage.id not in done:
                stage.log.parent.mkdir(parents=True, exist_ok=True)

    def place(stage_id: str, deps: tuple[str, ...], label: str, make_script: Callable[[list[str]], str]) -> None:
        old = record.get(stage_id)
        state = states.get(old, "") if old else ""
        waiting_on = [d for d in deps if kind[d] != "done"]
        if old and state in ACTIVE and all(kind[d] in ("done", "kept") for d in deps):
            kind[stage_id], job[stage_id] = "kept", old
            return
        if old and state and state not in ACTIVE and state != "COMPLETED":
            ended.append(state)
        if args.status:
            kind[stage_id] = "kept" if state in ACTIVE else "failed" if old else "unsubmitted"
            job[stage_id] = old or ""
            return
        dependencies = [job[d] for d in waiting_on]
        if args.dry_run:
            kind[stage_id], job[stage_id] = "new", f"<job {number.get(stage_id, len(stages) + 1)}>"
            print(f"# ---- job {job[stage_id]}: {label}")
            print(make_script(dependencies), end="")
            return
        if old and state in ACTIVE:  # queued after a job that is submitted again: it would wait for nothing
            subprocess.run(["scancel", old], capture_output=True)
        kind[stage_id], job[stage_id] = "new", write_and_sbatch(folder, stage_id, make_script(dependencies))
        record[stage_id] = job[stage_id]
        write_record(args, record)
        after = f" (after {', '.join(dependencies)})" if dependencies else ""
        print(f"submitted {job[stage_id]}: {label}{after}", flush=True)

    for stage in stages:
        if stage.id in done:
            kind[stage.id] = "done"
            continue
        place(stage.id, stage.deps, stage.label, lambda deps, s=stage: job_script(
            s.id, s.label, requests[s.id], [*command, "--stage", s.id], s.log, dependencies=deps, args=args))
    table_state = states.get(record.get(TABLE, ""), "")
    if any(k in ("new", "kept", "unsubmitted", "failed") for k in kind.values()) or table_state != "COMPLETED":
        place(TABLE, tuple(s.id for s in stages), "eval.table", lambda deps: job_script(
            TABLE, "eval.table", Request(0, 2, "8G", "00:30:00"), table_command, table_log, dependencies=deps,
            args=args, env=table_env))
    else:
        kind[TABLE] = "done"
    if args.dry_run:
        print_dependency_graph(stages, done, kind, number)
    print(state_line(stages, kind, job, states, ended, args), flush=True)


def state_line(stages: list[Stage], kind: dict[str, str], job: dict[str, str], states: dict[str, str],
               ended: list[str], args: argparse.Namespace) -> str:
    """One line: stages done, running, queued, submitted now, and the jobs that failed."""
    ids = [s.id for s in stages]
    count = {k: sum(kind.get(i) == k for i in ids) for k in ("done", "new", "unsubmitted", "failed")}
    running = sum(kind.get(i) == "kept" and states.get(job[i]) == "RUNNING" for i in ids)
    queued = sum(kind.get(i) == "kept" for i in ids) - running
    failed = ", ".join(f"{n}x {s}" for s, n in sorted({s: ended.count(s) for s in ended}.items()))
    table = f"; eval.table: {'done' if kind.get(TABLE) == 'done' else 'job ' + job.get(TABLE, '')}"
    if args.dry_run:
        return f"slurm (dry run): {count['done']} of {len(ids)} stages done, {count['new']} jobs + eval.table to submit"
    if args.status:
        return (f"slurm: {count['done']} of {len(ids)} stages done, {running} running, {queued} queued, "
                f"{count['failed']} ended unfinished, {count['unsubmitted']} not submitted{table}")
    return (f"slurm: {count['done']} of {len(ids)} stages done, {running} running, {queued} queued, "
            f"{count['new']} submitted now" + (f" (again after {failed})" if failed else "") + table
            + f"; jobs in {record_path(args)}")
