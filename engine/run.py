"""A training run from start to finish: validate flags and pick the device, read every split before
anything is written, open (or resume) the run folder, build the loader, end with the report."""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dataset import load_split
from dataset.episodes import check_episode_feasible
from dataset.errors import DataError
from dataset.loaders import train_loader
from dataset.transforms import Normalization, choose_normalization, train_transform
from dataset.profiles import DatasetProfile
from engine.checkpoint import CHECKPOINT_NAME, load_checkpoint, load_model_weights
from engine.logger import LOG_NAME, RunLogger
from engine.loop import TrainState
from eval.report import REPORT_SHOTS, final_report
from models.dropblock import set_dropblock_calls
from util import (CheckpointError, UsageError, atomic_write, autocast, check_positive, git_sha, print_run_header,
                  resolve_device, seed_everything)


def start_training_run(args: argparse.Namespace) -> torch.device:
    """Validate the flags, pick the device, print the git sha and every argument, seed everything."""
    check_positive(args, "epochs", "batch_size", "n_ways", "n_shots", "n_queries", "n_test_runs",
                   "n_aug_support_samples", "eval_batch_size", "log_interval")
    device = resolve_device(args.device)
    autocast(device, args.amp)  # validates --amp against the device before any work
    if device.type == "cuda":
        # Fixed input shapes every step: let cuDNN pick its fastest convolution algorithms once.
        torch.backends.cudnn.benchmark = True
    print_run_header(args)
    seed_everything(args.seed)
    return device


def run_folder(args: argparse.Namespace, name: str) -> Path:
    return Path(args.model_path) / name


def training_logger(folder: Path, args: argparse.Namespace, name: str, job_type: str,
                    run_id: str | None = None) -> RunLogger:
    """W&B (project: --wandb_project or the last part of --model_path; group: --wandb_group or the
    run-folder name) and `log.jsonl` in the run folder."""
    return RunLogger(folder / LOG_NAME, mode=args.wandb, project=args.wandb_project or Path(args.model_path).name or "skd",
                     config=dict(vars(args)), wandb_dir=folder, tags=args.tags, run_id=run_id,
                     group=args.wandb_group or name, job_type=job_type, name=name)


def check_resume_identity(checkpoint: dict, path: Path, identity: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint made with another model, dataset, image size or teacher."""
    recorded = checkpoint.get("identity")
    if not isinstance(recorded, dict):  # checkpoints written before identities were recorded
        train_args = checkpoint.get("args") if isinstance(checkpoint.get("args"), dict) else {}
        recorded = {**train_args, "image_size": checkpoint.get("image_size")}
    for key, value in identity.items():
        if key in recorded and recorded[key] is not None and recorded[key] != value:
            flag = RESUME_FLAGS.get(key, f"--{key}")
            raise CheckpointError(f"--resume: {path} was trained with {flag} {recorded[key]}, this run has "
                                  f"{value}; use a new --trial or the original setting")


# How each identity entry is set on the command line, for the one-line refusal.
RESUME_FLAGS = {"image_size": "image size", "teacher_sha256": "a teacher file of sha256", "path_t": "--path_t"}


def _trim_log(log: Path, last_epoch: int) -> None:
    """Keep the JSON-lines records of epochs up to the checkpoint's: a crash after a log line but
    before the next checkpoint must not leave an epoch logged twice once it is trained again."""
    if not log.is_file():
        return
    kept = []
    for line in log.read_text().splitlines():
        try:
            if json.loads(line).get("epoch", 0) <= last_epoch:
                kept.append(line)
        except (json.JSONDecodeError, AttributeError):
            pass  # a line cut short by the crash
    with atomic_write(log) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in kept))


def prepare_run(args: argparse.Namespace, name: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                job_type: str, identity: dict[str, Any], checkpoint_extra: dict | None = None) -> TrainState:
    """Create (or, with --resume, reopen) the run folder; restore the last checkpoint when resuming.

    `identity`: what a resumed run must share with the checkpoint (model, dataset, image size, the
    Gen-1 teacher); recorded in every checkpoint.
    """
    folder = run_folder(args, name)
    start_epoch, wandb_id = 1, None
    checkpoint_path = folder / CHECKPOINT_NAME
    if args.resume:
        if not checkpoint_path.is_file():
            raise CheckpointError(f"{checkpoint_path}: --resume given but the run folder has no checkpoint")
        checkpoint = load_checkpoint(checkpoint_path)
        check_resume_identity(checkpoint, checkpoint_path, identity)
        load_model_weights(model, checkpoint_path, checkpoint)
        if "optimizer" not in checkpoint:
            raise CheckpointError(f"{checkpoint_path}: has no optimizer state to resume from")
        optimizer.load_state_dict(checkpoint["optimizer"])
        set_dropblock_calls(model, checkpoint.get("dropblock_calls", []))
        start_epoch = int(checkpoint["epoch"]) + 1
        wandb_id = checkpoint.get("wandb_id")
        _trim_log(folder / LOG_NAME, int(checkpoint["epoch"]))
        # args.json stays the original run's; each resumption's arguments go beside it.
        args_file = folder / f"args.resume_after_epoch_{checkpoint['epoch']}.json"
        print(f"resuming {checkpoint_path} after epoch {checkpoint['epoch']}")
    else:
        if checkpoint_path.is_file():
            raise UsageError(f"{folder}: run folder already has a checkpoint; pass --resume to continue it, "
                             f"or a new --trial")
        # A run that crashed before its first checkpoint left a log of epochs that are trained again now.
        (folder / LOG_NAME).unlink(missing_ok=True)
        args_file = folder / "args.json"
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(args_file) as tmp:
        tmp.write_text(json.dumps(vars(args), indent=2, default=str) + "\n")
    logger = training_logger(folder, args, name, job_type, wandb_id)
    extra = {"identity": identity, **(checkpoint_extra or {})}
    return TrainState(model, optimizer, folder, logger, start_epoch, extra)


@dataclass
class TrainingData:
    train: Any  # ImageSet
    eval_splits: dict  # split name -> ImageSet, for the end-of-training report
    norm: Normalization

    @property
    def image_size(self) -> int:
        return self.train.image_size

    @property
    def profile(self) -> DatasetProfile:
        return self.train.profile

    def checkpoint_extra(self) -> dict:
        """What evaluation needs to see images as training did."""
        return {"image_size": self.image_size, "normalization": {"mean": list(self.norm.mean), "std": list(self.norm.std)}}


def load_training_data(args: argparse.Namespace, norm: Normalization | None = None) -> TrainingData:
    """Read every split the run needs before anything is written, so bad data fails cleanly.
    `norm`: a normalisation fixed by the caller (Gen-1: the teacher's); default: --normalization."""
    split = "trainval" if getattr(args, "use_trainval", False) else "train"
    train = load_split(args.dataset, args.data_root, split, args.image_size)
    eval_splits = {}
    if not args.no_final_eval:
        for split in ("val", "test"):
            images = load_split(args.dataset, args.data_root, split, args.image_size)
            if images.image_size != train.image_size:
                raise DataError(f"{images.source}: images are {images.image_size}px, the train split's are "
                                f"{train.image_size}px")
            # The report runs 1- and 5-shot episodes; fail now rather than after training.
            check_episode_feasible(images.class_indices(), args.n_ways, max(REPORT_SHOTS), args.n_queries, images.source)
            eval_splits[split] = images
    if len(train) < args.batch_size:
        raise UsageError(f"--batch_size {args.batch_size}: larger than the {len(train)} training images of "
                         f"{train.source}")
    if norm is None:
        norm = choose_normalization(args.normalization, args.dataset, train.images)
    return TrainingData(train, eval_splits, norm)


def make_train_loader(data: TrainingData, args: argparse.Namespace, device: torch.device):
    transform = train_transform(data.image_size, data.profile.crop_padding, data.norm)
    return train_loader(data.train, transform, args.batch_size, args.num_workers,
                        args.seed, pin_memory=device.type == "cuda")


def finish_training(state: TrainState, data: TrainingData, args: argparse.Namespace, device: torch.device) -> None:
    """Print the checkpoint path, run the few-shot report unless --no_final_eval, close the logger."""
    print(f"checkpoint: {state.checkpoint_path}", flush=True)
    if data.eval_splits:
        extra = {"checkpoint": str(state.checkpoint_path), "checkpoint_choice": "last epoch", "epoch": args.epochs,
                 "dataset": args.dataset, "git": git_sha(), "args": vars(args)}
        final_report(state.model, data.eval_splits, data.norm, device, args, args.amp, state.logger,
                     state.folder / "results.json", extra)
    state.logger.finish()
