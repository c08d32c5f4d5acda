"""scripts/: the quickstart's handling of its output folder (the run itself is the README's first command)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def _quickstart(out: Path, python: str) -> subprocess.CompletedProcess:
    # PYTHON=false makes the run stop at its first python call, right after the folder is prepared.
    return subprocess.run(["bash", str(REPO / "scripts" / "quickstart.sh"), str(out)], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": python, "AMP": "off"}, timeout=60)


def test_quickstart_refuses_a_folder_it_did_not_make(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    done = _quickstart(out, "false")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {out}: exists and was not made by the quickstart (no .skd-quickstart); give a new or empty folder"]
    assert [p.name for p in out.iterdir()] == ["thesis.tex"] and (out / "thesis.tex").read_text() == "years of work"


def test_quickstart_clears_only_its_own_folder(tmp_path):
    out = tmp_path / "qs"
    out.mkdir()
    (out / ".skd-quickstart").touch()
    (out / "gen0.log").write_text("an earlier quickstart's log")
    done = _quickstart(out, "false")
    assert done.returncode != 0  # stopped at the first python call, after preparing the folder
    assert (out / ".skd-quickstart").is_file()
    assert all(p.read_text() == "" for p in out.iterdir())  # the old log is gone (gen0.log is the new, empty one)
    empty = tmp_path / "empty"
    empty.mkdir()
    _quickstart(empty, "false")  # an empty folder is accepted, and marked as the quickstart's
    assert (empty / ".skd-quickstart").is_file()


def test_slurm_example_runs_one_table_inside_srun_one_run_per_gpu(tmp_path, cifar_root):
    # A stand-in srun that drops its own options and runs the task, as srun does on one node.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/sh\nwhile [ "${1#--}" != "$1" ]; do shift; done\nexec "$@"\n')
    (bin_dir / "srun").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}", "DATASET": "CIFAR-FS",
           "DATA_ROOT": str(cifar_root), "OUTPUT": str(tmp_path / "save"), "SLURM_GPUS_ON_NODE": "2",
           "SLURM_JOB_ID": "77", "DRY_RUN": "1", "WANDB_MODE": "disabled"}
    done = subprocess.run(["bash", str(REPO / "scripts" / "slurm_table.sbatch"), "--seeds", "0"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line and not line.startswith("#")]
    training = [line for line in lines if "eval_fewshot.py" not in line]
    assert len(training) == 4  # RFS-simple, RFS-distill, Gen-0, Gen-1 of seed 0
    # One run per GPU side by side (reproduce.py's scheduler), not each run spread over the node by torchrun.
    assert not any("torch.distributed.run" in line for line in training)
    assert all("--wandb_group reproduce_CIFAR-FS_77" in line for line in training)  # evaluations join it
    assert all(" --amp auto" in line for line in lines)  # bf16 where native, fp16 on older GPUs
    assert not (tmp_path / "save").exists()  # a dry run writes nothing
    # The other launch: srun with one task per GPU, each a rank, no torchrun.
    tasks = subprocess.run(["bash", str(REPO / "scripts" / "slurm_table.sbatch"), "--seed", "1"], capture_output=True,
                           text=True, env={**env, "LAUNCH": "tasks", "SLURM_CPUS_PER_TASK": "16"}, timeout=60)
    assert tasks.returncode == 0, tasks.stderr
    assert tasks.stdout.startswith("srun --ntasks=2 --cpus-per-task=8 python train_supervised_ssl.py "
                                   "--dataset CIFAR-FS ")
    assert tasks.stdout.rstrip().endswith("--amp auto --seed 1") and "torch.distributed.run" not in tasks.stdout
