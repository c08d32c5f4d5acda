"""What a set of fixed runs computes, as one JSON of digests: run it before and after a change that must not
change any result (a restructuring) and compare the two files.

    python tests/fingerprint_runs.py OUT.json [--quickstart]

Every method trains on the built-in synthetic data (16 px) in a fixed folder (/tmp/skd_fingerprint, made
afresh), with W&B off: Gen-0 (with --eval_freq, so best.pth and the val evaluator run), Gen-1, RFS-simple,
RFS-distill, SSKD (its head phase too), DVP's prior and DVP, each with its final report, then eval_fewshot.py
on Gen-1. Each run folder gives the sha256 of every tensor and plain value of its checkpoints, its log.jsonl
and results.json without the keys that time or date a run, and its args.json. `--quickstart` adds
scripts/quickstart.sh's checkpoints and results.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
ROOT = Path(os.environ.get("SKD_FINGERPRINT_ROOT", "/tmp/skd_fingerprint"))  # fixed: checkpoints record paths
VARYING = {"images_per_s", "epoch_seconds", "seconds", "git", "wandb_id"}  # time or commit, not a result
COMMON = ["--dataset", "synthetic", "--image_size", "16", "--batch_size", "32", "--wandb", "disabled",
          "--n_test_runs", "4", "--val_episodes", "3", "--num_workers", "0", "--amp", "off"]


def run(script: str, *flags: str) -> str:
    """Run a training or evaluation script; returns its stdout (its checkpoint line read from it)."""
    done = subprocess.run([sys.executable, script, *flags], cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{script} {' '.join(flags)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def checkpoint_of(stdout: str) -> str:
    return next(line.split(": ", 1)[1] for line in stdout.splitlines() if line.startswith("checkpoint: "))


def digest(value: object) -> str:
    """sha256 of a value's content: tensors by their bytes, dtype and shape; containers entry by entry."""
    h = hashlib.sha256()
    if isinstance(value, torch.Tensor):
        h.update(f"{value.dtype}{tuple(value.shape)}".encode())
        h.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        for k in sorted(value, key=str):
            if not varies(str(k)):
                h.update(f"{k}={digest(value[k])};".encode())
    elif isinstance(value, (list, tuple)):
        for v in value:
            h.update(f"{digest(v)},".encode())
    else:
        h.update(repr(value).encode())
    return h.hexdigest()[:16]


def varies(key: str) -> bool:
    """A key that times or dates a run, a phase's too (teacher_head_epoch_seconds)."""
    return key in VARYING or any(key.endswith(f"_{name}") for name in VARYING)


def without_varying(record: dict) -> dict:
    return {k: without_varying(v) if isinstance(v, dict) else v for k, v in record.items() if not varies(k)}


def folder_fingerprint(folder: Path) -> dict:
    out = {}
    for path in sorted(folder.glob("*.pth")):
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        out[path.name] = {k: digest(v) for k, v in checkpoint.items() if not varies(k)}
    for path in sorted(folder.glob("*.json")):
        out[path.name] = without_varying(json.loads(path.read_text()))
    log = folder / "log.jsonl"
    if log.is_file():
        out["log.jsonl"] = [without_varying(json.loads(line)) for line in log.read_text().splitlines()]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output")
    parser.add_argument("--quickstart", action="store_true")
    args = parser.parse_args()
    if ROOT.exists():
        shutil.rmtree(ROOT)
    common = [*COMMON, "--model_path", str(ROOT / "runs")]
    gen0 = checkpoint_of(run("train_supervised_ssl.py", *common, "--epochs", "2", "--lr_decay_epochs", "1",
                             "--eval_freq", "1", "--learning_rate", "0.02"))
    stages = {"gen0": gen0}
    stages["gen1"] = checkpoint_of(run("train_distillation.py", *common, "--path_t", gen0, "--epochs", "1"))
    simple = checkpoint_of(run("train_supervised_ssl.py", *common, "--objective", "rfs_simple", "--epochs", "1"))
    stages["rfs_simple"] = simple
    stages["rfs_distill"] = checkpoint_of(run("train_distillation.py", *common, "--objective", "rfs", "--path_t",
                                              simple, "--epochs", "1"))
    stages["sskd"] = checkpoint_of(run("train_distillation.py", *common, "--objective", "sskd", "--path_t", gen0,
                                       "--epochs", "1", "--sskd_head_epochs", "1"))
    prior = checkpoint_of(run("train_supervised_ssl.py", *common, "--objective", "dvp", "--epochs", "1",
                              "--dvp_queue", "64"))
    stages["dvp_prior"] = prior
    stages["dvp"] = checkpoint_of(run("train_distillation.py", *common, "--objective", "dvp", "--path_t", prior,
                                      "--epochs", "1"))
    evaluation = ROOT / "eval_gen1.json"
    run("eval_fewshot.py", "--model_path", stages["gen1"], "--n_test_runs", "5", "--wandb", "disabled",
        "--output", str(evaluation), "--amp", "off")
    result = {name: folder_fingerprint(Path(path).parent) for name, path in stages.items()}
    result["eval_fewshot"] = without_varying(json.loads(evaluation.read_text()))
    if args.quickstart:
        out = ROOT / "quickstart"
        done = subprocess.run(["bash", "scripts/quickstart.sh", str(out)], cwd=REPO, capture_output=True, text=True,
                              env={**os.environ, "AMP": "off", "WANDB_MODE": "disabled"})
        if done.returncode:
            sys.exit(f"quickstart failed:\n{done.stderr[-3000:]}")
        result["quickstart"] = {p.parent.name: folder_fingerprint(p.parent)
                                for p in sorted(out.glob("*/checkpoint.pth"))}
    Path(args.output).write_text(json.dumps(result, indent=1, sort_keys=True, default=str) + "\n")
    print(f"fingerprint: {args.output}")


if __name__ == "__main__":
    main()
