"""Run plumbing shared by the three scripts: arguments, device and autocast, seeding, run folder,
checkpoints, logging (W&B + JSON lines), learning-rate schedule and the generic epoch loop."""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from dataset.errors import DataError
from dataset.transforms import NORMALIZATIONS, Normalization

REPO_DIR = Path(__file__).resolve().parent
CHECKPOINT_NAME = "checkpoint.pth"


# ----------------------------------------------------------------------------- errors and entry point

class UsageError(ValueError):
    """A bad flag value or input file; reported as one line, exit code 2."""


class CheckpointError(UsageError):
    """A checkpoint that is missing, unreadable, or does not fit the model."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: the run stops loudly instead of training on garbage."""


def run_cli(main: Callable[[], Any]) -> None:
    """Run a script's main(); turn expected failures into a one-line error and a non-zero exit."""
    try:
        main()
    except (UsageError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


# ----------------------------------------------------------------------------- arguments

def comma_ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def comma_strings(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def add_data_args(parser: argparse.ArgumentParser) -> None:
    from dataset import dataset_names

    g = parser.add_argument_group("data")
    g.add_argument("--dataset", default="synthetic", choices=dataset_names(),
                   help="dataset; 'synthetic' is built in and needs no files")
    g.add_argument("--data_root", default=None,
                   help="folder holding <dataset>/ (official layout) or the dataset folder itself")
    g.add_argument("--num_workers", type=int, default=2, help="data-loading worker processes")
    g.add_argument("--image_size", type=int, default=None,
                   help="resize images to N x N (default: the data's own size)")
    g.add_argument("--normalization", default="auto", choices=NORMALIZATIONS,
                   help="per-channel normalisation: auto = official constants for the benchmarks and the training "
                        "images' statistics for --dataset folder; evaluation uses what the checkpoint was trained with")


def add_fewshot_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("few-shot evaluation")
    g.add_argument("--n_ways", type=int, default=5, help="classes per episode")
    g.add_argument("--n_shots", type=int, default=1, help="support images per class")
    g.add_argument("--n_queries", type=int, default=15, help="query images per class")
    g.add_argument("--n_test_runs", type=int, default=600, help="episodes per evaluation")
    g.add_argument("--n_aug_support_samples", type=int, default=5, help="augmented copies of each support image")
    g.add_argument("--test_batch_size", type=int, default=1,
                   help="accepted for compatibility with the official command; evaluation batches by --eval_batch_size")
    g.add_argument("--eval_batch_size", type=int, default=256, help="images per forward pass when embedding")


def add_training_args(parser: argparse.ArgumentParser, learning_rate: float, lr_decay_epochs: str) -> None:
    g = parser.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=65)
    g.add_argument("--batch_size", type=int, default=64, help="images per step, before rotations")
    g.add_argument("--learning_rate", type=float, default=learning_rate)
    g.add_argument("--lr_decay_epochs", type=comma_ints, default=comma_ints(lr_decay_epochs),
                   help="comma-separated epochs after which lr is multiplied by --lr_decay_rate")
    g.add_argument("--lr_decay_rate", type=float, default=0.1)
    g.add_argument("--weight_decay", type=float, default=5e-4)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--cosine", action="store_true", help="cosine annealing instead of step decay")


def add_run_args(parser: argparse.ArgumentParser, tags: str) -> None:
    g = parser.add_argument_group("run")
    g.add_argument("--model_path", default="save", help="parent folder of run folders; its last part names the W&B project")
    g.add_argument("--tags", type=comma_strings, default=comma_strings(tags), help="comma-separated W&B tags")
    g.add_argument("-t", "--trial", default="1", help="experiment id, part of the run-folder name")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    g.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"],
                   help="autocast precision (fp16 needs CUDA)")
    g.add_argument("--resume", action="store_true", help="continue the run in the run folder from its last checkpoint")
    g.add_argument("--wandb", default="auto", choices=["auto", "online", "offline", "disabled"],
                   help="W&B mode; auto: online when logged in, otherwise offline")
    g.add_argument("--wandb_project", default=None, help="W&B project (default: last part of --model_path)")
    g.add_argument("--no_final_eval", action="store_true", help="skip the few-shot report at the end of training")


def add_training_script_args(parser: argparse.ArgumentParser, learning_rate: float, lr_decay_epochs: str,
                             tags: str) -> None:
    """Everything both training scripts accept besides their stage's own flags."""
    parser.add_argument("--use_trainval", action="store_true", help="train on train+val (the trainval split)")
    add_data_args(parser)
    add_training_args(parser, learning_rate, lr_decay_epochs)
    add_fewshot_args(parser)
    add_run_args(parser, tags)


def run_name_suffix(args: argparse.Namespace) -> str:
    """The end of the official run-folder names: [_cosine]_trial_<t>[_trainval]."""
    trial = f"{args.trial}_trainval" if args.use_trainval else args.trial
    return f"{'_cosine' if args.cosine else ''}_trial_{trial}"


def start_training_run(args: argparse.Namespace) -> torch.device:
    """Validate the flags, pick the device, print the git sha and every argument, seed everything."""
    check_positive(args, "epochs", "batch_size", "n_ways", "n_shots", "n_queries", "n_test_runs",
                   "n_aug_support_samples", "eval_batch_size")
    device = resolve_device(args.device)
    autocast(device, args.amp)  # validates --amp against the device before any work
    print_run_header(args)
    seed_everything(args.seed)
    return device


def check_positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        if getattr(args, name) < 1:
            raise UsageError(f"--{name}: expected a positive integer, got {getattr(args, name)}")


# ----------------------------------------------------------------------------- device, precision, seeds

def resolve_device(name: str | None) -> torch.device:
    """The device to run on: `name`, or cuda when available, else cpu."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device: expected cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    return device


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """An autocast context for `--amp`; a no-op when amp is off."""
    if amp == "off":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise UsageError("--amp fp16: needs a CUDA device; use --amp bf16 on CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def to_device(model: nn.Module, device: torch.device) -> nn.Module:
    """Move to `device` in channels-last layout: 5-18% faster training on this CPU (bench_train.py
    --contiguous compares) and the layout tensor cores want on CUDA. State-dict values and names
    are unchanged."""
    return model.to(device, memory_format=torch.channels_last)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True,
                             timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_DIR,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def print_run_header(args: argparse.Namespace) -> None:
    print(f"git: {git_sha()}")
    print("\n".join(f"{k}: {v}" for k, v in sorted(vars(args).items())))


# ----------------------------------------------------------------------------- checkpoints

@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to; it replaces `path` only if the block
    finishes, so a reader never sees a half-written file, even if the process is killed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(state: dict, path: Path) -> None:
    with atomic_write(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location: torch.device | str = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for corrupt or foreign files
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(obj).__name__}")
    return obj


def extract_state_dict(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The model weights of our, the official ({'model': ...}), bare, or DataParallel checkpoints."""
    state = checkpoint.get("model", checkpoint)
    if not isinstance(state, dict):
        raise CheckpointError(f"expected checkpoint['model'] to be a state dict, found {type(state).__name__}")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_model_weights(model: nn.Module, path: str | Path, checkpoint: dict | None = None) -> dict:
    """Load a checkpoint's weights into `model` (strict); say exactly which keys or shapes differ.
    `checkpoint`: the already loaded content of `path`, to avoid reading it twice."""
    checkpoint = load_checkpoint(path) if checkpoint is None else checkpoint
    state = extract_state_dict(checkpoint)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if items:
            shown = ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise CheckpointError(f"{path}: does not fit the model: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    return checkpoint


def model_from_checkpoint(name: str, path: str | Path, checkpoint: dict, dataset: str | None,
                          image_size: int) -> nn.Module:
    """Model `name` sized to fit `checkpoint` (the class count read from classifier.weight), with
    its weights loaded. `checkpoint` is the loaded content of `path`."""
    from models import create_model

    state = extract_state_dict(checkpoint)
    if "classifier.weight" not in state:
        raise CheckpointError(f"{path}: has no classifier.weight; expected a {name} checkpoint")
    model = create_model(name, int(state["classifier.weight"].shape[0]), dataset, image_size=image_size)
    load_model_weights(model, path, checkpoint)
    return model


def checkpoint_normalization(checkpoint: dict) -> Normalization | None:
    """The normalisation a model was trained with, when its checkpoint records it (ours do)."""
    norm = checkpoint.get("normalization")
    if not isinstance(norm, dict) or "mean" not in norm or "std" not in norm:
        return None
    return Normalization(tuple(norm["mean"]), tuple(norm["std"]))


def dropblock_calls(model: nn.Module) -> list[int]:
    from models.dropblock import DropBlock

    return [m.num_calls for m in model.modules() if isinstance(m, DropBlock)]


def set_dropblock_calls(model: nn.Module, calls: list[int]) -> None:
    from models.dropblock import DropBlock

    for module, n in zip((m for m in model.modules() if isinstance(m, DropBlock)), calls):
        module.num_calls = int(n)


# ----------------------------------------------------------------------------- learning rate

def learning_rate_at(epoch: int, args: argparse.Namespace) -> float:
    """lr for 1-based `epoch`: step decay after each of --lr_decay_epochs, or the official cosine
    schedule (CosineAnnealingLR over all epochs to lr * rate^3, stepped before each epoch)."""
    if args.cosine:
        eta_min = args.learning_rate * args.lr_decay_rate**3
        return eta_min + (args.learning_rate - eta_min) * (1 + math.cos(math.pi * epoch / args.epochs)) / 2
    steps = sum(epoch > e for e in args.lr_decay_epochs)
    return args.learning_rate * args.lr_decay_rate**steps


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# ----------------------------------------------------------------------------- logging

def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def wandb_mode(requested: str) -> str:
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if _wandb_logged_in() else "offline"


class RunLogger:
    """Per-epoch metrics to W&B (when it works) and to `log.jsonl` in the run folder."""

    def __init__(self, folder: Path, args: argparse.Namespace, wandb_id: str | None = None) -> None:
        self.jsonl = folder / "log.jsonl"
        self.wandb_run = self._start_wandb(folder, args, wandb_id)

    @staticmethod
    def _start_wandb(folder: Path, args: argparse.Namespace, wandb_id: str | None):
        mode = wandb_mode(args.wandb)
        if mode == "disabled":
            return None
        try:
            import wandb
        except ImportError:
            print("warning: wandb is not installed; logging to log.jsonl only", file=sys.stderr)
            return None
        project = args.wandb_project or Path(args.model_path).name or "skd"
        config = {k: v for k, v in vars(args).items()}
        for attempt in ([mode, "offline"] if mode == "online" else [mode]):
            try:
                return wandb.init(project=project, tags=args.tags, config=config, dir=str(folder), mode=attempt,
                                  id=wandb_id, resume="allow" if wandb_id else None, reinit="finish_previous")
            except Exception as e:  # W&B must never stop training
                print(f"warning: W&B {attempt} init failed ({type(e).__name__}: {e})", file=sys.stderr)
        print("warning: logging to log.jsonl only", file=sys.stderr)
        return None

    @property
    def wandb_id(self) -> str | None:
        return self.wandb_run.id if self.wandb_run is not None else None

    def log(self, metrics: dict[str, float]) -> None:
        with self.jsonl.open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        if self.wandb_run is not None:
            try:
                self.wandb_run.log(metrics)
            except Exception as e:
                print(f"warning: W&B log failed ({e})", file=sys.stderr)

    def summary(self, metrics: dict[str, float]) -> None:
        if self.wandb_run is not None:
            try:
                self.wandb_run.summary.update(metrics)
            except Exception as e:
                print(f"warning: W&B summary failed ({e})", file=sys.stderr)

    def finish(self) -> None:
        if self.wandb_run is not None:
            with contextlib.suppress(Exception):
                self.wandb_run.finish()


# ----------------------------------------------------------------------------- the epoch loop

@dataclass
class StepResult:
    """What a training step reports: the loss to minimise and metrics (tensors, averaged per image)."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    correct: torch.Tensor | None = None  # correctly classified un-rotated images
    images: int = 0  # dataset images in the step (before rotations)


Step = Callable[[torch.Tensor, torch.Tensor], StepResult]


class Meter:
    """Running sums of per-step metrics, weighted by images."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.images = 0
        self.correct = 0.0

    def update(self, result: StepResult) -> None:
        n = result.images
        self.images += n
        for name, value in {"loss": result.loss.detach(), **result.metrics}.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value) * n
        if result.correct is not None:
            self.correct += float(result.correct)

    def averages(self) -> dict[str, float]:
        out = {name: total / max(self.images, 1) for name, total in self.sums.items()}
        out["acc"] = 100.0 * self.correct / max(self.images, 1)
        return out


@dataclass
class TrainState:
    """What one training run carries from epoch to epoch, and what a checkpoint restores."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    folder: Path
    logger: RunLogger
    start_epoch: int = 1
    checkpoint_extra: dict = field(default_factory=dict)

    @property
    def checkpoint_path(self) -> Path:
        return self.folder / CHECKPOINT_NAME


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


def _save(state: TrainState, epoch: int, args: argparse.Namespace) -> None:
    save_checkpoint({
        "epoch": epoch,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "args": {k: v for k, v in vars(args).items()},
        "dropblock_calls": dropblock_calls(state.model),
        "wandb_id": state.logger.wandb_id,
        **state.checkpoint_extra,
    }, state.checkpoint_path)


def _batches(loader, epoch: int, args: argparse.Namespace) -> Iterator:
    # Re-seed per epoch so that a resumed run draws the same shuffles and augmentations.
    seed = args.seed * 100_003 + epoch
    torch.manual_seed(seed)
    loader.generator.manual_seed(seed)
    return tqdm(loader, desc=f"epoch {epoch}/{args.epochs}", leave=False, disable=None, dynamic_ncols=True)


def fit(state: TrainState, step: Step, loader, args: argparse.Namespace, device: torch.device) -> None:
    """Train from state.start_epoch to args.epochs: one checkpoint and one log line per epoch."""
    # fp16 gradients underflow without loss scaling; for bf16 and fp32 the scaler is a pass-through.
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    for epoch in range(state.start_epoch, args.epochs + 1):
        lr = learning_rate_at(epoch, args)
        set_learning_rate(state.optimizer, lr)
        state.model.train()
        meter = Meter()
        start = time.perf_counter()
        progress = _batches(loader, epoch, args)
        for i, (images, targets) in enumerate(progress):
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            with autocast(device, args.amp):
                result = step(images, targets)
            loss_value = float(result.loss.detach())
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(
                    f"non-finite loss ({loss_value}) at epoch {epoch}, step {i + 1}; "
                    f"metrics: {', '.join(f'{k}={float(v):.4g}' for k, v in result.metrics.items())}. "
                    f"Last good checkpoint: {state.checkpoint_path if epoch > 1 else 'none'}")
            state.optimizer.zero_grad(set_to_none=True)
            scaler.scale(result.loss).backward()
            scaler.step(state.optimizer)
            scaler.update()
            meter.update(result)
            progress.set_postfix(loss=f"{loss_value:.3f}")
        seconds = time.perf_counter() - start
        averages = meter.averages()
        record = {"epoch": epoch, "lr": lr, **{f"train_{k}": v for k, v in averages.items()},
                  "images_per_s": meter.images / seconds, "epoch_seconds": seconds}
        _save(state, epoch, args)
        state.logger.log(record)
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()),
              flush=True)


# ----------------------------------------------------------------------------- data for training runs

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
    from dataset import load_split
    from dataset.episodes import check_episode_feasible
    from dataset.transforms import choose_normalization
    from eval.report import REPORT_SHOTS

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
    from dataset.loaders import train_loader
    from dataset.transforms import train_transform

    return train_loader(data.train, train_transform(data.image_size, data.norm), args.batch_size, args.num_workers,
                        args.seed, pin_memory=device.type == "cuda")


def finish_training(state: TrainState, data: TrainingData, args: argparse.Namespace, device: torch.device) -> None:
    """Print the checkpoint path, run the few-shot report unless --no_final_eval, close the logger."""
    print(f"checkpoint: {state.checkpoint_path}", flush=True)
    if data.eval_splits:
        from eval.report import final_report

        final_report(state.model, data.eval_splits, data.norm, device, args, autocast(device, args.amp),
                     state.logger, state.folder / "results.json")
    state.logger.finish()
