"""scripts/reproduce.py --submit slurm against stand-in sbatch, sacct, squeue and scancel (written here onto PATH):
one job per stage with its resources, afterok on its teacher or training run, eval.table after all, a dry run
that submits nothing, and a second submission that re-submits only what failed (and what waited for it)."""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.plan_scheduler import Stage
from scripts.slurm_submit import Request, SubmitError, submit
from test_reproduce import _FakeStages, _tiny_folder, reproduce  # noqa: F401 (reproduce is a fixture)

SBATCH = """
import json, os, shutil, sys
folder = os.environ["FAKE_SLURM"]
log = os.path.join(folder, "submitted.json")
jobs = json.load(open(log)) if os.path.exists(log) else []
job = str(1001 + len(jobs))
script = open(sys.argv[-1], encoding="utf-8", errors="surrogateescape").read()
jobs.append({"id": job, "argv": sys.argv[1:], "script": script})
json.dump(jobs, open(log, "w"))
states = os.path.join(folder, "states.json")
known = json.load(open(states)) if os.path.exists(states) else {}
known[job] = "PENDING"
json.dump(known, open(states, "w"))
print(job + ";cluster")
"""
SACCT = """
import json, os, sys
known = json.load(open(os.path.join(os.environ["FAKE_SLURM"], "states.json")))
wanted = sys.argv[sys.argv.index("-j") + 1].split(",")
for job in wanted:
    if job in known:
        print(job + "|" + known[job])
"""
SCANCEL = """
import json, os, sys
folder = os.environ["FAKE_SLURM"]
log = os.path.join(folder, "cancelled.json")
done = json.load(open(log)) if os.path.exists(log) else []
json.dump(done + sys.argv[1:], open(log, "w"))
"""


@pytest.fixture
def slurm(tmp_path, monkeypatch):
    """A folder of stand-in SLURM commands on PATH; returns what they recorded."""
    bin_dir, state = tmp_path / "bin", tmp_path / "slurm_state"
    bin_dir.mkdir()
    state.mkdir()
    for name, code in (("sbatch", SBATCH), ("sacct", SACCT), ("squeue", "print()"), ("scancel", SCANCEL)):
        (bin_dir / name).write_text(f"#!{sys.executable}\n{code}")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(state))

    class Recorded:
        def jobs(self) -> list[dict]:
            path = state / "submitted.json"
            return json.loads(path.read_text()) if path.is_file() else []

        def cancelled(self) -> list[str]:
            path = state / "cancelled.json"
            return json.loads(path.read_text()) if path.is_file() else []

        def set_states(self, states: dict[str, str]) -> None:
            known = json.loads((state / "states.json").read_text())
            (state / "states.json").write_text(json.dumps({**known, **states}))
    return Recorded()


SPACE = b" \t\n\v\f\r"  # C's isspace() in sbatch


def sbatch_arguments(text: bytes) -> list[str]:
    """The arguments of one #SBATCH line (after the magic word) as sbatch's get_argument (src/sbatch/opt.c) reads
    them, byte by byte: an argument ends at unquoted whitespace; single or double quotes group; a backslash makes
    the next byte literal, inside quotes too; an unquoted # ends the line, and so does an empty argument."""
    arguments, i = [], 0
    while True:
        while i < len(text) and text[i] in SPACE:
            i += 1
        argument, quote = bytearray(), None
        while i < len(text) and (quote or text[i] not in SPACE):
            byte, i = text[i:i + 1], i + 1
            if byte == b"\\":
                argument += text[i:i + 1]
                i += 1
            elif quote:
                argument += b"" if byte == quote else byte
                quote = None if byte == quote else quote
            elif byte in (b'"', b"'"):
                quote = byte
            elif byte == b"#":
                return arguments + ([os.fsdecode(bytes(argument))] if argument else [])
            else:
                argument += byte
        if quote:  # sbatch stops: "Unmatched quote"
            raise ValueError(f"unmatched {quote!r} in #SBATCH{text!r}")
        if not argument:
            return arguments
        arguments.append(os.fsdecode(bytes(argument)))


def sbatch_options(script: str) -> dict[str, str]:
    """The --name=value options sbatch takes from a script: its #SBATCH lines up to the first command."""
    options = {}
    for line in os.fsencode(script).split(b"\n"):
        if not line.startswith(b"#SBATCH"):
            if line.strip() and not line.strip().startswith(b"#"):
                break
            continue
        for argument in sbatch_arguments(line[len(b"#SBATCH"):]):
            name, _, value = argument.partition("=")
            options[name.removeprefix("--")] = value
    return options


def slurm_filename(pattern: str, chdir: str, job_id: str, job_name: str) -> str:
    """The file an --output pattern names, as sbatch (relative: joined to --chdir) and then slurmstepd
    (expand_stdio_fields, src/common/print_fields.c) make it: with a backslash anywhere, the backslashes dropped
    and nothing expanded; else `%%` is `%`, `%j` the job id, `%x` its name and so on, any other `%c` kept, a last
    lone `%` dropped."""
    if not pattern.startswith("/"):
        pattern = chdir.rstrip("/") + "/" + pattern
    if "\\" in pattern:
        return pattern.replace("\\", "")
    values = {"A": job_id, "j": job_id, "J": job_id, "a": "0", "b": "0", "r": "0", "n": "0", "t": "0", "s": "batch",
              "x": job_name, "N": "node1", "u": "someone", "S": "sluid"}

    def expand(match: re.Match) -> str:
        width, letter = match.groups()
        if not letter or (letter == "%" and not width):
            return letter  # a last lone `%` is dropped, `%%` is one `%`
        return values[letter].zfill(int(width or 0)) if letter in values else match.group(0)
    return re.sub(r"%(\d*)(.?)", expand, pattern, flags=re.S)


def directive(script: str, name: str) -> str | None:
    return sbatch_options(script).get(name)


def stage_of(script: str) -> str:
    return re.search(r"^# stage: (.*)$", script, re.M).group(1)


def after(script: str) -> set[str]:
    deps = directive(script, "dependency")
    return set(deps.removeprefix("afterok:").split(":")) if deps else set()


def assert_each_job_waits_and_requeues(by_stage: dict[str, dict], ids: dict[str, str]) -> None:
    """Each evaluation's job waits for its own training run; every job goes to the partition and account the
    command named (gpu, lab), is requeued when SIGTERM stops it, and asks for its stage's time."""
    for stage, job in by_stage.items():
        script = job["script"]
        if stage.startswith("eval "):  # each evaluation after its own training run
            assert after(script) == {ids["train " + stage.split()[1]]}
        assert directive(script, "partition") == "gpu" and directive(script, "account") == "lab"
        assert "#SBATCH --requeue" in script and "#SBATCH --signal=TERM@120" in script
        assert "scontrol requeue" in script  # stopped by SIGTERM with a checkpoint: back in the queue, same id
        assert directive(script, "time") == ("0-01:00:00" if stage.startswith("train ") else "01:00:00" if
                                             stage.startswith("eval ") else "00:30:00")  # tiny runs: the 1 h floor


def test_a_table_is_submitted_as_one_job_per_stage_and_resubmitted_after_a_failure(reproduce, slurm, tmp_path):
    data = _tiny_folder(tmp_path / "data")
    argv = ["--dataset", "folder", "--data_root", str(data), "--output", str(tmp_path / "out"), "--seeds", "0",
            "--wandb_group", "g", "--submit", "slurm", "--partition", "gpu", "--account", "lab"]
    dry = reproduce(*argv, "--dry_run")
    assert dry.returncode == 0, dry.stderr
    assert slurm.jobs() == [] and dry.stdout.count("#!/bin/bash") == 13  # 4 runs x (train + 2 evals), eval.table
    assert "#SBATCH --dependency=afterok:<job 1>" in dry.stdout and "# dependency graph" in dry.stdout

    first = reproduce(*argv)
    assert first.returncode == 0, first.stderr
    jobs = slurm.jobs()
    assert len(jobs) == 13 and all(j["argv"][0] == "--parsable" for j in jobs)
    by_stage = {stage_of(j["script"]): j for j in jobs}
    ids = {stage: j["id"] for stage, j in by_stage.items()}
    trains = {s for s in ids if s.startswith("train ")}
    simple = next(s for s in trains if "_plain_" in s)
    distill = next(s for s in trains if "_rfs_" in s)
    gen0 = next(s for s in trains if s.startswith("train resnet12_ssl_folder") and "_plain_" not in s)
    gen1 = next(s for s in trains if "_beta_" in s)
    assert after(by_stage[simple]["script"]) == set() and after(by_stage[gen0]["script"]) == set()
    assert after(by_stage[distill]["script"]) == {ids[simple]} and after(by_stage[gen1]["script"]) == {ids[gen0]}
    assert_each_job_waits_and_requeues(by_stage, ids)
    assert after(by_stage["eval.table"]["script"]) == {j["id"] for j in jobs[:-1]}
    assert directive(by_stage["eval.table"]["script"], "gpus") is None
    assert directive(by_stage[gen0]["script"], "gpus") == "1"
    assert (directive(by_stage[gen0]["script"], "cpus-per-task"), directive(by_stage[gen0]["script"], "mem")) == \
        ("8", "32G")
    # The job runs this plan's stage, as the local plan runs it, and logs beside the run folder.
    srun = shlex.split(next(line for line in by_stage[gen0]["script"].splitlines() if line.startswith("srun ")))
    assert srun[-2:] == ["--stage", gen0] and srun[srun.index("--wandb_group") + 1] == "g"
    assert directive(by_stage[gen0]["script"], "output") == str(tmp_path / "out" / (gen0.split()[1] + ".train.log"))
    assert f"submitted {ids[distill]}: rfs_distill seed 0 (after {ids[simple]})" in first.stdout
    assert first.stdout.splitlines()[-1].startswith("slurm: 0 of 12 stages done, 0 running, 0 queued, 12 submitted now")

    # RFS-simple's job fails; SLURM cancels the jobs waiting for it (--kill-on-invalid-dep); SKD's run on.
    waiting = {stage for stage in ids if "_plain_" in stage or "_rfs_" in stage} - {simple}
    slurm.set_states({ids[simple]: "FAILED", **{ids[s]: "CANCELLED" for s in waiting}, ids[gen0]: "RUNNING"})
    second = reproduce(*argv)
    assert second.returncode == 0, second.stderr
    again = slurm.jobs()[13:]
    assert {stage_of(j["script"]) for j in again} == {simple, *waiting, "eval.table"}  # nothing else twice
    new = {stage_of(j["script"]): j["id"] for j in again}
    assert after(next(j["script"] for j in again if stage_of(j["script"]) == distill)) == {new[simple]}
    assert slurm.cancelled() == [ids["eval.table"]]  # it waited for the failed job
    assert "6 submitted now (again after 5x CANCELLED, 1x FAILED)" in second.stdout.splitlines()[-1]
    assert "1 running" in second.stdout.splitlines()[-1]

    third = reproduce(*argv)  # everything is queued or running: nothing is submitted again
    assert third.returncode == 0 and len(slurm.jobs()) == 13 + 7
    status = reproduce(*argv, "--status")
    assert status.stdout.splitlines() == ["slurm: 0 of 12 stages done, 1 running, 11 queued, 0 ended unfinished, "
                                          f"0 not submitted; eval.table: job {new['eval.table']}"]


def test_a_job_runs_its_one_stage_as_the_local_plan_would(reproduce, monkeypatch, tmp_path):
    data = _tiny_folder(tmp_path / "data")
    argv = ["--dataset", "folder", "--data_root", str(data), "--output", str(tmp_path / "out"), "--seeds", "0",
            "--wandb_group", "g", "--methods", "rfs_simple"]
    stages = _FakeStages(monkeypatch)
    run_folder = "resnet12_ssl_folder_lr_0.02_decay_0.0005_trans_D_plain_trial_0"
    early = reproduce(*argv, "--stage", f"eval {run_folder} test 1shot")
    assert early.returncode == 2 and "waits for train " in early.stderr and stages.commands == []
    done = reproduce(*argv, "--stage", f"train {run_folder}")
    assert done.returncode == 0, done.stderr
    assert len(stages.commands) == 1 and "rfs_simple" in stages.commands[0]
    assert reproduce(*argv, "--stage", "train nothing").stderr.startswith("error: --stage 'train nothing': not a stage")


def test_a_training_jobs_time_limit_is_projected_from_the_images_it_forwards():
    from scripts.slurm_submit import train_request

    args = argparse.Namespace(time_limit=None, images_per_s=2000.0, cpus_per_gpu=8, mem_per_gpu="32G")
    # tieredImageNet Gen-0: 107,673,600 forwarded images; at 2000/s on 1 GPU 53,837 s, x1.5 + 15 min = 22 h 41 min.
    assert train_request(args, 1, 107_673_600).time == "0-22:41:00"
    four = train_request(args, 4, 107_673_600)
    assert (four.gpus, four.cpus, four.mem, four.time) == (4, 32, "128G", "0-05:52:00")
    assert train_request(argparse.Namespace(**{**vars(args), "time_limit": "3:00:00"}), 1, 10).time == "3:00:00"


# A space, a %-pattern, both quotes, non-ASCII: each changes what sbatch or SLURM reads from an unquoted path.
AWKWARD = "runs/ä ö%j 'x\""


def submit_two_jobs(tmp_path: Path, output: Path, logs: list[Path]) -> tuple[list[str], list[str]]:
    """Submit one stage logging to each of `logs` and the eval.table job (logging in `output`), from the
    current folder; the stages' commands and the table's."""
    args = argparse.Namespace(dry_run=False, status=False, output=str(output), partition=None, account=None)
    stages = [Stage(f"train r{i}", f"run {i}", (), lambda: False, list, log=log) for i, log in enumerate(logs)]
    command = [sys.executable, "scripts/reproduce.py", "--data_root", str(tmp_path / AWKWARD / "data"),
               "--output", str(output)]
    table = [sys.executable, "-m", "eval.table", str(output)]
    submit(args, stages, {s.id: Request(1, 8, "32G", "1:00:00") for s in stages}, command, table,
           {"PYTHONPATH": str(tmp_path / AWKWARD)})
    return command, table


def run_body(script: str, chdir: str, tmp_path: Path) -> dict:
    """Run a job script with bash in its --chdir folder, as its job would, with a stand-in srun that records the
    command it was given, the folder and PYTHONPATH."""
    bin_dir, record = tmp_path / "srun_bin", tmp_path / "srun.json"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "srun").write_text(f"#!{sys.executable}\nimport json, os, sys\njson.dump({{'argv': sys.argv[1:], "
                                  f"'cwd': os.getcwd(), 'PYTHONPATH': os.environ.get('PYTHONPATH')}}, "
                                  f"open(os.environ['SRUN_RECORD'], 'w'))\n")
    (bin_dir / "srun").chmod(0o755)
    (tmp_path / "job.sh").write_bytes(os.fsencode(script))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    done = subprocess.run(["bash", str(tmp_path / "job.sh")], cwd=chdir, capture_output=True, text=True,
                          env={**env, "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}", "SRUN_RECORD": str(record)})
    assert done.returncode == 0, done.stderr
    return json.loads(record.read_text())


def test_job_scripts_name_any_path_exactly_as_slurm_and_bash_read_it(slurm, tmp_path, monkeypatch):
    repo, output = tmp_path / AWKWARD / "repo", tmp_path / AWKWARD / "out"
    repo.mkdir(parents=True)
    monkeypatch.chdir(repo)
    command, table = submit_two_jobs(tmp_path, output, [output / "r0.train.log"])
    jobs = slurm.jobs()
    assert [stage_of(j["script"]) for j in jobs] == ["train r0", "eval.table"]
    for job, log, argv in zip(jobs, [output / "r0.train.log", output / "eval_table.log"],
                              [[*command, "--stage", "train r0"], table]):
        options = sbatch_options(job["script"])
        assert options["chdir"] == str(repo)
        assert slurm_filename(options["output"], options["chdir"], job["id"], options["job-name"]) == str(log)
        ran = run_body(job["script"], options["chdir"], tmp_path)
        assert ran["argv"] == ["--ntasks=1", *argv] and ran["cwd"] == str(repo)
    assert ran["PYTHONPATH"] == str(tmp_path / AWKWARD)  # the table job's exported environment


@pytest.mark.parametrize("folder, why", [("a\nb", "newline"), ("a\\b", "backslash")])
def test_a_path_no_job_script_can_name_is_refused_before_any_job_is_submitted(slurm, tmp_path, monkeypatch,
                                                                               folder, why):
    """sbatch reads a script line by line, and SLURM drops every backslash of an --output path: neither can be
    named. The second stage's log is the one: the first stage's job is not submitted either."""
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "out"
    with pytest.raises(SubmitError) as refused:
        submit_two_jobs(tmp_path, output, [output / "r0.train.log", output / folder / "r1.train.log"])
    message = str(refused.value)
    assert slurm.jobs() == [] and why in message and "\n" not in message
    assert str(output / folder) in message or repr(str(output / folder / "r1.train.log")) in message
