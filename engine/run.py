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
from engine.checkpoint import CHECKPOINT_NAME, load_model_weights
from engine.logger import RunLogger
from engine.loop import TrainState
from eval.report import REPORT_SHOTS, final_report
from models.dropblock import set_dropblock_calls
from util import CheckpointError, UsageError, autocast, check_positive, print_run_header, resolve_device, seed_everything


def start_training_run(args: argparse.Namespace) -> torch.device:
    """Validate the flags, pick the device, print the git sha and every argument, seed everything."""
    check_positive(args, "epochs", "batch_size", "n_ways", "n_shots", "n_queries", "n_test_runs",
                   "n_aug_support_samples", "eval_batch_size")
    device = resolve_device(args.device)
    autocast(device, args.amp)  # validates --amp against the device before any work
    print_run_header(args)
    seed_everything(args.seed)
    return device


def run_folder(args: argparse.Namespace, name: str) -> Path:
    return Path(args.model_path) / name


def prepare_run(args: argparse.Namespace, name: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                device: torch.device, checkpoint_extra: dict | None = None) -> TrainState:
    """Create (or, with --resume, reopen) the run folder; restore the last checkpoint when resuming."""
    folder = run_folder(args, name)
    start_epoch, wandb_id = 1, None
    checkpoint_path = folder / CHECKPOINT_NAME
    if args.resume:
        if not checkpoint_path.is_file():
            raise CheckpointError(f"{checkpoint_path}: --resume given but the run folder has no checkpoint")
        checkpoint = load_model_weights(model, checkpoint_path)
        if "optimizer" not in checkpoint:
            raise CheckpointError(f"{checkpoint_path}: has no optimizer state to resume from")
        optimizer.load_state_dict(checkpoint["optimizer"])
        set_dropblock_calls(model, checkpoint.get("dropblock_calls", []))
        start_epoch = int(checkpoint["epoch"]) + 1
        wandb_id = checkpoint.get("wandb_id")
        print(f"resuming {checkpoint_path} after epoch {checkpoint['epoch']}")
    elif checkpoint_path.is_file():
        raise UsageError(f"{folder}: run folder already has a checkpoint; pass --resume to continue it, "
                         f"or a new --trial")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "args.json").write_text(json.dumps(vars(args), indent=2, default=str) + "\n")
    logger = RunLogger(folder, args, wandb_id)
    return TrainState(model, optimizer, folder, logger, start_epoch, dict(checkpoint_extra or {}))


@dataclass
class TrainingData:
    train: Any  # ImageSet
    eval_splits: dict  # split name -> ImageSet, for the end-of-training report
    norm: Normalization

    @property
    def image_size(self) -> int:
        return self.train.image_size

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
    return train_loader(data.train, train_transform(data.image_size, data.norm), args.batch_size, args.num_workers,
                        args.seed, pin_memory=device.type == "cuda")


def finish_training(state: TrainState, data: TrainingData, args: argparse.Namespace, device: torch.device) -> None:
    """Print the checkpoint path, run the few-shot report unless --no_final_eval, close the logger."""
    print(f"checkpoint: {state.checkpoint_path}", flush=True)
    if data.eval_splits:
        final_report(state.model, data.eval_splits, data.norm, device, args, autocast(device, args.amp),
                     state.logger, state.folder / "results.json")
    state.logger.finish()
