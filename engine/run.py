"""A training run from start to finish: validate flags and pick the device, read the splits training
uses before anything is written, open (or resume) the run folder, build the loader, end with the
report (the only reader of the test split)."""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from dataset import ImageSet, load_split
from dataset.catalog import DATASETS, resolve_dataset_folder
from dataset.episodes import check_episode_feasible
from dataset.errors import DataError
from dataset.device_loader import DeviceBatches, resolve_augment
from dataset.loaders import train_loader
from dataset.transforms import Normalization, choose_normalization, train_transform
from dataset.profiles import DatasetProfile
from runtime import distributed
from engine.checkpoint import load_checkpoint, load_model_weights
from engine.checkpointer import Checkpointer
from runtime.folder_lock import FolderLock
from runtime.logger import LOG_NAME, RunLogger
from engine.official_flags import report_official_flags
from engine.loop import TrainState
from eval.fewshot import EpisodeSetting, evaluate
from eval.report import REPORT_SHOTS, final_report
from util import (UsageError, atomic_write, check_positive, check_writable_folder, describe_device,
                  git_sha, precision_name, print_run_header, seed_everything, setup_precision)


def start_training_run(args: argparse.Namespace, device_augment_refusal: str | None = None,
                       settings: list[str] = ()) -> torch.device:
    """Validate the flags, join the torchrun process group when launched by torchrun, pick the
    (per-rank) device, print the git sha, every argument and `settings` (where each schedule value
    came from: given, or published with its source), seed everything (per rank).
    `device_augment_refusal`: why the method's augmentation cannot run with --augment device (it
    then runs on loader workers, and an explicit --augment device is refused)."""
    report_official_flags(args)  # a refusal comes before anything is printed
    if device_augment_refusal is not None:
        if args.augment == "device":
            raise UsageError(f"--augment device: {device_augment_refusal}; use --augment workers (or auto)")
        args.augment = "workers"
    check_positive(args, "epochs", "batch_size", "n_ways", "n_shots", "n_queries", "n_test_runs",
                   "n_aug_support_samples", "eval_batch_size", "log_interval", "val_episodes")
    for name in ("learning_rate", "lr_decay_rate"):
        if not args.__dict__[name] > 0:
            raise UsageError(f"--{name}: expected a positive number, got {args.__dict__[name]}")
    check_writable_folder(args.model_path, "--model_path")
    if args.dataset in DATASETS:  # a missing data folder is one line before the header, not after it
        resolve_dataset_folder(DATASETS[args.dataset], args.data_root)
    if args.eval_freq < 0:
        raise UsageError(f"--eval_freq: expected 0 (off) or a number of epochs, got {args.eval_freq}")
    if args.final_checkpoint == "best" and not args.eval_freq:
        raise UsageError("--final_checkpoint best: needs --eval_freq, which keeps best.pth by val accuracy")
    ranks, device = distributed.setup(args.device)
    setup_precision(args, device)  # --amp auto decided, --tf32 applied, --amp checked against the device
    args.augment = resolve_augment(args.augment)
    distributed.per_rank_batch_size(args.batch_size)  # validates the global batch against the ranks
    if device.type == "cuda" and args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for deterministic GEMMs
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)
    elif device.type == "cuda":
        # Fixed input shapes every step: let cuDNN pick its fastest convolution algorithms once.
        torch.backends.cudnn.benchmark = True
    print_run_header(args, device)
    for line in settings:
        print(f"setting: {line}")
    if ranks.enabled:
        print(f"distributed: {ranks.world_size} processes ({torch.distributed.get_backend()}), global batch "
              f"{args.batch_size} = {ranks.world_size} x {args.batch_size // ranks.world_size}")
    # Model initialisation may differ per rank: DDP broadcasts rank 0's weights when it wraps them.
    seed_everything(distributed.rank_seed(args.seed))
    return device


def stage_seed(seed: int, generation: int) -> int:
    """The seed of a stage's data order, augmentations and dropout masks: --seed itself for a first
    generation (Gen-0, RFS-simple, DVP's prior), so that their runs draw what they always drew; a
    distinct stream for each later generation, so that a student never sees its teacher's batches
    and augmentations at the same --seed. (An offset in the low 32 bits: the CPU generator's Mersenne
    twister reads only those of its seed.)"""
    return seed + generation * 1_000_000_007


def sgd(model: nn.Module, extra_parameters: list[nn.Parameter], args: argparse.Namespace) -> torch.optim.SGD:
    """SGD on the network (the first parameter group) and on what the method trains beside it (a
    second group, when there is any), with the run's lr, momentum and weight decay."""
    optimizer = torch.optim.SGD(model.parameters(), lr=args.learning_rate, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    if extra_parameters:
        optimizer.add_param_group({"params": extra_parameters})
    return optimizer


def run_folder(args: argparse.Namespace, name: str) -> Path:
    return Path(args.model_path) / name


def training_logger(folder: Path, args: argparse.Namespace, name: str, job_type: str, run_id: str | None = None,
                    device: torch.device = torch.device("cpu")) -> RunLogger:
    """W&B (project: --wandb_project or the last part of --model_path; group: --wandb_group or the
    run-folder name; config: the arguments, the device and the precision that ran) and `log.jsonl`
    in the run folder."""
    project = args.wandb_project or Path(args.model_path).name or "skd"
    config = {**vars(args), "device_name": describe_device(device, getattr(args, "device", None)),
              "precision": precision_name(device, getattr(args, "amp", "off"))}
    return RunLogger(folder / LOG_NAME, mode=args.wandb, project=project, config=config, wandb_dir=folder,
                     tags=args.tags, run_id=run_id, group=args.wandb_group or name, job_type=job_type, name=name)


def _trim_log(log: Path, last_epoch: int, phase: dict | None = None) -> None:
    """Keep the JSON-lines records of what the checkpoint holds: the method's epochs up to its epoch
    and, of a phase in progress, its epochs up to the saved one (a crash after a log line but before
    the next checkpoint must not leave an epoch logged twice once it is trained again)."""
    if not log.is_file():
        return
    kept = []
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
            name = record.get("phase")
            if name is None:
                keep = record.get("epoch", 0) <= last_epoch
            else:  # a phase before the method's own: done, unless it is the one in progress
                keep = phase is None or name != phase["name"] or record.get(f"{name}_epoch", 0) <= phase["epoch"]
            if keep:
                kept.append(line)
        except (json.JSONDecodeError, AttributeError):
            pass  # a line cut short by the crash
    with atomic_write(log) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in kept))


def load_eval_split(args: argparse.Namespace, split: str, image_size: int) -> ImageSet:
    """The val or test split, checked against the training images' size and the report's episodes."""
    images = load_split(args.dataset, args.data_root, split, args.image_size)
    if images.image_size != image_size:
        raise DataError(f"{images.source}: images are {images.image_size}px, the training images are {image_size}px")
    check_episode_feasible(images.class_indices(), args.n_ways, max(REPORT_SHOTS), args.n_queries, images.source)
    return images


@dataclass
class ValEvaluation:
    """--eval_freq's evaluation: the val split on the same episodes every time (episode i drawn from
    seed i, support crops from --seed), 1- and 5-shot, features and logistic regression, each image
    embedded once, so that it is cheap enough to run every few epochs."""

    images: ImageSet
    norm: Normalization
    args: argparse.Namespace

    def __call__(self, model: nn.Module, device: torch.device) -> dict[str, float | None]:
        a = self.args
        metrics: dict[str, float | None] = {}
        for shots in REPORT_SHOTS:
            setting = EpisodeSetting(a.n_ways, shots, a.n_queries, a.val_episodes, a.n_aug_support_samples)
            (result,) = evaluate(model, self.images, "val", setting, self.norm, device, ("LR",), ("feature",),
                                 a.eval_batch_size, a.seed, a.amp, progress=False)
            summary = result.to_dict()  # ci95 is None for a single episode, as in results.json
            metrics[f"val_{shots}shot_acc"], metrics[f"val_{shots}shot_ci95"] = summary["mean"], summary["ci95"]
        metrics["val_acc"] = sum(metrics[f"val_{shots}shot_acc"] for shots in REPORT_SHOTS) / len(REPORT_SHOTS)
        return metrics


def prepare_run(*, args: argparse.Namespace, name: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                job_type: str, identity: dict[str, Any], data: TrainingData | None = None,
                checkpoint_extra: dict | None = None, extra_modules: dict[str, nn.Module] | None = None,
                data_seed: int | None = None) -> TrainState:
    """Open the run folder: a fresh run (refusing a folder that holds a checkpoint), or with --resume
    the last checkpoint restored into everything the run's Checkpointer owns (weights, optimizer, grad
    scaler, extra modules, DropBlock ramp, a phase in progress, a mid-epoch stop) and the best val
    accuracy so far from best.pth. Under torchrun every rank restores; rank 0 alone writes and logs.

    `identity`: what a resumed run must share with the checkpoint (model, dataset, image size, method,
    the Gen-1 teacher); recorded in every checkpoint. `data`: the run's splits (its val split serves
    --eval_freq; its image size and normalisation go into every checkpoint). `extra_modules`: trained
    modules besides `model` (an objective's heads), checkpointed and restored under their keys.
    `data_seed`: the stage's seed of data order and dropout (stage_seed; default --seed).
    """
    validation = None
    if args.eval_freq:
        if data is None or data.val is None:
            raise ValueError("--eval_freq: prepare_run needs the run's TrainingData with its val split")
        validation = ValEvaluation(data.val, data.norm, args)
    # fp16 gradients underflow without loss scaling; for bf16 and fp32 the scaler is a pass-through.
    scaler = torch.amp.GradScaler(next(model.parameters()).device.type, enabled=args.amp == "fp16")
    checkpointer = Checkpointer(model=model, optimizer=optimizer, scaler=scaler, args=args, identity=identity,
                                extra_modules=extra_modules,
                                extra={**(data.checkpoint_extra() if data is not None else {}),
                                       **(checkpoint_extra or {})})
    state = TrainState(checkpointer=checkpointer, folder=run_folder(args, name), logger=None, validation=validation,
                       data_seed=args.seed if data_seed is None else data_seed)
    state.lock = _lock_run_folder(state.folder) if distributed.is_main_process() else None
    try:
        args_file = _resume(state, args.epochs) if args.resume else _start_fresh(state)
    except BaseException:
        release_run_folder(state)
        raise
    if distributed.is_main_process():
        with atomic_write(state.folder / args_file) as tmp:
            tmp.write_text(json.dumps(vars(args), indent=2, default=str) + "\n")
        state.logger = training_logger(state.folder, args, name, job_type, checkpointer.wandb_id,
                                       device=next(model.parameters()).device)
    else:
        state.logger = RunLogger(None, mode="disabled", project="", config={}, wandb_dir=state.folder)
    checkpointer.wandb_id = state.logger.wandb_id
    return state


def _lock_run_folder(folder: Path) -> FolderLock:
    """This process is the run folder's one writer (runtime.folder_lock) before anything in it is read."""
    lock = FolderLock(folder, what="run folder")
    lock.acquire()
    return lock


def release_run_folder(state: TrainState) -> None:
    """Give the run folder's lock back (the process's end does too); a folder this run made and left
    empty (a run refused after the lock) is removed."""
    if state.lock is not None:
        state.lock.release()
        state.lock = None


def _start_fresh(state: TrainState) -> str:
    """A new run: refuse a folder holding a checkpoint; returns the name of its arguments file."""
    if state.checkpoint_path.is_file():
        raise UsageError(f"{state.folder}: run folder already has a checkpoint; pass --resume to continue it, "
                         f"or a new --trial")
    # A run that crashed before its first checkpoint left a log (and maybe a best.pth) of epochs that are
    # trained again now.
    if distributed.is_main_process():
        (state.folder / LOG_NAME).unlink(missing_ok=True)
        state.best_path.unlink(missing_ok=True)
    return "args.json"


def _resume(state: TrainState, epochs: int) -> str:
    """Restore the last checkpoint; returns the name of this resumption's arguments file (args.json
    stays the original run's). `epochs`: the run's, to say so when the checkpoint already holds them all."""
    point = state.checkpointer.resume(state.checkpoint_path)
    state.resumed, state.start_epoch, state.phase, state.partial = True, point.epoch + 1, point.phase, point.partial
    if state.best_path.is_file():  # a resumed run must beat the best epoch before the interruption
        state.best_val_acc = float(load_checkpoint(state.best_path)["val_acc"])
    if distributed.is_main_process():
        _trim_log(state.folder / LOG_NAME, point.epoch, point.phase)
    where = (f"epoch {point.phase['epoch']} of phase {point.phase['name']}" if point.phase
             else f"epoch {point.epoch}")
    if point.epoch >= epochs and not point.phase and not point.partial:
        print(f"resume: {state.checkpoint_path} already holds all {point.epoch} epochs (--epochs {epochs}); "
              f"nothing left to train")
    else:
        print(f"resuming {state.checkpoint_path} after {where}"
              + (f", step {point.partial['step']} of epoch {point.partial['epoch']}" if point.partial else ""))
    phase = f"_{point.phase['name']}_{point.phase['epoch']}" if point.phase else ""
    return f"args.resume_after_epoch_{point.epoch}{phase}.json"


@dataclass
class TrainingData:
    train: ImageSet
    val: ImageSet | None  # read when --eval_freq or the final report uses it; test is read by the report only
    norm: Normalization

    @property
    def image_size(self) -> int:
        return self.train.image_size

    @property
    def profile(self) -> DatasetProfile:
        return self.train.profile

    def checkpoint_extra(self) -> dict:
        """What evaluation needs to see images as training did."""
        return {"image_size": self.image_size,
                "normalization": {"mean": list(self.norm.mean), "std": list(self.norm.std)}}


def load_training_data(args: argparse.Namespace, norm: Normalization | None = None) -> TrainingData:
    """Read the training and val splits before anything is written, so bad data fails cleanly; the
    test split is left unopened until the final report, so nothing during training can select on it.
    `norm`: a normalisation fixed by the caller (Gen-1: the teacher's); default: --normalization."""
    split = "trainval" if getattr(args, "use_trainval", False) else "train"
    train = load_split(args.dataset, args.data_root, split, args.image_size)
    val = load_eval_split(args, "val", train.image_size) if args.eval_freq or not args.no_final_eval else None
    if len(train) < args.batch_size:
        raise UsageError(f"--batch_size {args.batch_size}: larger than the {len(train)} training images of "
                         f"{train.source}")
    if norm is None:
        norm = choose_normalization(args.normalization, args.dataset, train.images)
    return TrainingData(train, val, norm)


def make_train_loader(data: TrainingData, args: argparse.Namespace, device: torch.device,
                      transform: Callable | None = None, seed: int | None = None):
    """Shuffled, augmented batches; under torchrun each rank reads its share of every epoch's order
    in batches of --batch_size / world size. With --augment device (and the default transform), the
    split is held on `device` and augmented there in batches (dataset.device_loader); otherwise a
    DataLoader applies `transform` (default: the Gen-0/Gen-1 training augmentation of the dataset's
    profile) to each image in --num_workers processes. `seed`: the stage's (stage_seed; default --seed)."""
    seed = args.seed if seed is None else seed
    ranks = distributed.current()
    shard = (ranks.rank, ranks.world_size) if ranks.enabled else None
    batch_size = distributed.per_rank_batch_size(args.batch_size)
    if transform is None and args.augment == "device":
        return DeviceBatches(data.train, batch_size, seed, data.profile.crop_padding, data.norm, device, shard)
    transform = transform or train_transform(data.image_size, data.profile.crop_padding, data.norm)
    return train_loader(data.train, transform, batch_size, args.num_workers, seed,
                        pin_memory=device.type == "cuda", shard=shard)


def final_weights(state: TrainState, args: argparse.Namespace) -> tuple[Path, str, int]:
    """What the final report evaluates: (checkpoint, choice for results.json, epoch). The last epoch
    (the paper's protocol), or with --final_checkpoint best, best.pth's weights loaded into the model."""
    if args.final_checkpoint == "last":
        return state.checkpoint_path, "last epoch", args.epochs
    best = load_model_weights(state.model, state.best_path)
    return state.best_path, f"best val (epoch {best['epoch']})", int(best["epoch"])


def finish_training(state: TrainState, data: TrainingData, args: argparse.Namespace, device: torch.device) -> None:
    """Print the checkpoint path, run the few-shot report unless --no_final_eval (its episodes shared
    out over the ranks under torchrun), close the logger and the process group."""
    print(f"checkpoint: {state.checkpoint_path}", flush=True)
    if not args.no_final_eval:
        path, choice, epoch = final_weights(state, args)
        print(f"final evaluation: {path} ({choice})", flush=True)
        splits = {"val": data.val, "test": load_eval_split(args, "test", data.image_size)}
        extra = {"checkpoint": str(path), "checkpoint_choice": choice, "epoch": epoch,
                 "dataset": args.dataset, "git": git_sha(), "device": describe_device(device, args.device),
                 "precision": precision_name(device, args.amp), "args": vars(args)}
        final_report(state.model, splits, data.norm, device, args, args.amp, state.logger,
                     state.folder / "results.json" if distributed.is_main_process() else None, extra)
    state.logger.finish()
    release_run_folder(state)
    distributed.cleanup()
