"""The epoch loop: steps under autocast with a grad scaler, a loud stop on a non-finite loss, the
learning-rate schedule, one checkpoint and one log line per epoch, and (with --eval_freq) a val
evaluation that keeps best.pth."""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn
from tqdm import tqdm

from runtime import distributed
from runtime.preemption import StopRequest, rng_state, set_rng_state
from engine.checkpoint import BEST_NAME, CHECKPOINT_NAME, save_checkpoint
from runtime.logger import ProgressLines, RunLogger
from models.dropblock import dropblock_calls, keep_dropblock_eager
from util import NonFiniteLossError, Preempted, autocast


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


@dataclass
class StepResult:
    """What a training step reports: the loss to minimise and metrics (tensors, averaged per image)."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    correct: torch.Tensor | None = None  # correctly classified un-rotated images
    images: int = 0  # dataset images in the step (before rotations)


Step = Callable[[torch.Tensor, torch.Tensor], StepResult]
# Val metrics of a model on a device; "val_acc" is what best.pth is selected by.
Validation = Callable[[nn.Module, torch.device], dict[str, float | None]]


class Meter:
    """Running sums of per-step metrics, weighted by images, kept on the device: adding a step
    never waits for the GPU; `averages` reads them once."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.images = 0
        self.correct: torch.Tensor | None = None
        self.restored_images = 0  # trained before a pre-emption, restored from a mid-epoch checkpoint

    def state_dict(self) -> dict:
        return {"sums": {k: v.detach().cpu() for k, v in self.sums.items()}, "images": self.images,
                "correct": None if self.correct is None else self.correct.detach().cpu()}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.sums = {k: v.to(device) for k, v in state["sums"].items()}
        self.images = self.restored_images = int(state["images"])
        self.correct = None if state["correct"] is None else state["correct"].to(device)

    def update(self, result: StepResult) -> None:
        n = result.images
        self.images += n
        for name, value in {"loss": result.loss, **result.metrics}.items():
            value = value.detach().float() * n
            self.sums[name] = value if name not in self.sums else self.sums[name] + value
        if result.correct is not None:
            correct = result.correct.detach().float()
            self.correct = correct if self.correct is None else self.correct + correct

    def averages(self) -> tuple[dict[str, float], int]:
        """Image-weighted averages over the epoch, and the images trained on by this process (not
        restored from a checkpoint), both over every rank under torchrun (one reduction)."""
        names = list(self.sums)
        device = next(iter(self.sums.values())).device if self.sums else torch.device("cpu")
        totals = torch.stack([*(self.sums[n].reshape(()) for n in names),
                              torch.tensor(float(self.images - self.restored_images), device=device),
                              torch.tensor(float(self.images), device=device),
                              (self.correct if self.correct is not None else torch.zeros((), device=device)).reshape(())])
        totals = distributed.all_reduce_sum(totals.double()).tolist()
        images = max(totals[-2], 1)
        out = {name: total / images for name, total in zip(names, totals)}
        if self.correct is not None:
            out["acc"] = 100.0 * totals[-1] / images
        return out, int(totals[-3])


class FinitenessCheck:
    """Collects each step's loss on the device and checks them together every few steps, so that a
    non-finite loss stops the run naming its first bad step without a host sync per step."""

    def __init__(self) -> None:
        self.pending: list[tuple[int, StepResult]] = []

    def add(self, step: int, result: StepResult) -> None:
        self.pending.append((step, StepResult(result.loss.detach(), result.metrics)))

    def check(self, epoch: int, last_good: Path | None) -> float | None:
        """Raise NonFiniteLossError at the first non-finite loss; else return the last loss (or None)."""
        if not self.pending:
            return None
        # Summed over ranks: a non-finite loss on any rank stops every rank at the same check.
        losses = distributed.all_reduce_sum(torch.stack([r.loss.detach().float() for _, r in self.pending])).cpu()
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            step, result = self.pending[int(bad[0])]
            raise NonFiniteLossError(
                f"non-finite loss ({float(losses[int(bad[0])])}) at epoch {epoch}, step {step}; "
                f"metrics: {', '.join(f'{k}={float(v):.4g}' for k, v in result.metrics.items())}. "
                f"Last good checkpoint: {last_good or 'none'}")
        self.pending.clear()
        return float(losses[-1])


@dataclass
class TrainState:
    """What one training run carries from epoch to epoch, and what a checkpoint restores."""

    model: nn.Module  # the network itself, never its DDP wrapper: checkpoints keep the official key names
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    folder: Path
    logger: RunLogger
    start_epoch: int = 1
    checkpoint_extra: dict = field(default_factory=dict)
    validation: Validation | None = None  # run every --eval_freq epochs and at the last
    best_val_acc: float | None = None  # of best.pth, kept across --resume
    partial: dict | None = None  # this rank's part of a mid-epoch checkpoint being resumed (runtime.preemption)
    # Trained modules besides the network (an objective's heads), each saved under its own checkpoint
    # key so that "model" keeps exactly the official weights.
    extra_modules: dict[str, nn.Module] = field(default_factory=dict)
    data_seed: int = 0  # the stage's seed of data order, augmentations and dropout (engine.run.stage_seed)

    @property
    def checkpoint_path(self) -> Path:
        return self.folder / CHECKPOINT_NAME

    @property
    def best_path(self) -> Path:
        return self.folder / BEST_NAME


def _checkpoint(state: TrainState, epoch: int, args: argparse.Namespace) -> dict:
    return {
        "epoch": epoch,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scaler": state.scaler.state_dict(),  # fp16's loss scale; empty when the scaler is a pass-through
        "args": {k: v for k, v in vars(args).items()},
        "dropblock_calls": dropblock_calls(state.model),
        "wandb_id": state.logger.wandb_id,
        **{key: module.state_dict() for key, module in state.extra_modules.items()},
        **state.checkpoint_extra,
    }


def _validate(model: nn.Module, validation: Validation, device: torch.device) -> dict[str, float | None]:
    """Val metrics of the current weights, leaving training as it was: in eval mode BatchNorm
    statistics and DropBlock ramp counters do not move, train mode is restored after, and the RNG
    streams are forked, so a run with --eval_freq trains bit-identically to one without."""
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device], device_type=device.type):
        model.eval()
        try:
            return validation(model, device)
        finally:
            model.train()


def _batches(loader, epoch: int, args: argparse.Namespace, data_seed: int, skip_steps: int = 0) -> Iterator:
    """The epoch's batches after its first `skip_steps`. The data order and augmentations are a
    function of (the stage's seed, epoch) (dataset.loaders.EpochSampler); the global RNG, which draws
    dropout and DropBlock masks, is re-seeded per epoch and per rank."""
    seed = distributed.rank_seed(data_seed) * 100_003 + epoch
    torch.manual_seed(seed)
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch, skip_steps * loader.batch_size)
    elif loader.generator is not None:  # a plain DataLoader (tests, benchmarks): re-seed its shuffle
        loader.generator.manual_seed(seed)
    return tqdm(loader, desc=f"epoch {epoch}/{args.epochs}", leave=False, initial=skip_steps,
                total=skip_steps + len(loader), disable=None if distributed.is_main_process() else True,
                dynamic_ncols=True)


def _save_partial(state: TrainState, epoch: int, step: int, meter: Meter, args: argparse.Namespace) -> None:
    """The mid-epoch checkpoint: "epoch" counts the completed epochs as always; "partial" holds the
    epoch in progress, its steps done, and every rank's RNG states and metric sums."""
    mine = {"rng": rng_state(), "meter": meter.state_dict()}
    ranks = distributed.all_gather_objects(mine)
    if distributed.is_main_process():
        checkpoint = _checkpoint(state, epoch - 1, args)
        checkpoint["partial"] = {"epoch": epoch, "step": step, "world_size": len(ranks), "ranks": ranks}
        save_checkpoint(checkpoint, state.checkpoint_path)


def _stop(stop: StopRequest, state: TrainState, epoch: int, step: int | None, steps: int) -> Preempted:
    where = f"epoch {epoch}, step {step}/{steps}" if step is not None else f"the end of epoch {epoch}"
    code = 130 if stop.signal_name == "SIGINT" else 143
    return Preempted(f"{stop.signal_name} at {where}; checkpoint {state.checkpoint_path}. Continue with the same "
                     f"command plus --resume", code)


def fit(state: TrainState, step: Step, loader, args: argparse.Namespace, device: torch.device,
        after_epoch: Callable[[int], None] | None = None, before_epoch: Callable[[int], None] | None = None) -> None:
    """Train from state.start_epoch to args.epochs: one checkpoint and one log line per epoch.
    `before_epoch(epoch)` runs before an epoch's first step (also a resumed one's), `after_epoch(epoch)`
    after its steps, before its checkpoint is written. With
    state.validation, every --eval_freq epochs and at the last the val metrics join the log line and
    best.pth is rewritten whenever val_acc improves.

    Under torchrun `step` calls the DDP-wrapped network (runtime.distributed.wrap), every rank runs
    the loop and the (sharded) val evaluation, and rank 0 alone writes checkpoints and logs.
    """
    if getattr(args, "compile", False):
        keep_dropblock_eager()
        step = torch.compile(step)  # the closure's network and losses become one graph (or a few)
    with StopRequest(args.log_interval) as stop:
        for epoch in range(state.start_epoch, args.epochs + 1):
            if before_epoch is not None:
                before_epoch(epoch)
            _train_epoch(state, step, loader, args, device, epoch, stop, after_epoch)
            # Arrived during the epoch's last step, its evaluation or its save; an all-reduce that rank 0
            # joins after writing the checkpoint, so no rank exits before it is on disk.
            if stop.requested():
                raise _stop(stop, state, epoch, None, 0)
    distributed.barrier()  # every rank may read best.pth or checkpoint.pth next
    distributed.check_replicas_equal(state.model, state.extra_modules)


def _train_epoch(state: TrainState, step: Step, loader, args: argparse.Namespace, device: torch.device, epoch: int,
                 stop: StopRequest, after_epoch: Callable[[int], None] | None) -> None:
    main = distributed.is_main_process()
    scaler = state.scaler
    lr = learning_rate_at(epoch, args)
    set_learning_rate(state.optimizer, lr)
    state.model.train()
    meter, finite = Meter(), FinitenessCheck()
    resumed, state.partial = state.partial, None
    skip = resumed["step"] if resumed is not None else 0
    last_good = state.checkpoint_path if epoch > 1 or skip else None
    start = time.perf_counter()
    progress = _batches(loader, epoch, args, state.data_seed, skip)
    steps = skip + len(loader)
    if resumed is not None:  # the RNG streams and metric sums exactly as they were after step `skip`
        set_rng_state(resumed["rng"])
        meter.load_state_dict(resumed["meter"], device)
    lines = ProgressLines(main)
    for i, (images, targets) in enumerate(progress, start=skip + 1):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with autocast(device, args.amp):
            result = step(images, targets)
        state.optimizer.zero_grad(set_to_none=True)
        scaler.scale(result.loss).backward()
        scaler.step(state.optimizer)
        scaler.update()
        meter.update(result)
        finite.add(i, result)
        if i % args.log_interval == 0:
            loss = finite.check(epoch, last_good)
            progress.set_postfix(loss=f"{loss:.3f}")
            lines(f"epoch {epoch}/{args.epochs} step {i}/{steps} loss={loss:.4g} "
                  f"seconds={time.perf_counter() - start:.0f}")
        if i < steps and stop.requested(i):
            finite.check(epoch, last_good)  # never checkpoint a non-finite state
            progress.close()
            _save_partial(state, epoch, i, meter, args)
            distributed.wait_for_checkpoint(state.checkpoint_path)  # no rank exits before it is on disk
            raise _stop(stop, state, epoch, i, steps)
    finite.check(epoch, last_good)
    # Every rank evaluates and rank 0 saves the same network; modules outside DDP (a momentum key
    # encoder) also kept BatchNorm statistics of their own rank's images.
    for module in (state.model, *state.extra_modules.values()):
        distributed.broadcast_buffers(module)
    if after_epoch is not None:
        after_epoch(epoch)
    averages, images = meter.averages()
    seconds = time.perf_counter() - start
    record = {"epoch": epoch, "lr": lr, **{f"train_{k}": v for k, v in averages.items()},
              "images_per_s": images / seconds, "epoch_seconds": seconds}
    if skip:
        record["resumed_at_step"] = skip  # images_per_s and epoch_seconds cover the steps after it
    checkpoint = _checkpoint(state, epoch, args)
    if state.validation is not None and (epoch % args.eval_freq == 0 or epoch == args.epochs):
        metrics = _validate(state.model, state.validation, device)
        record.update(metrics)
        if state.best_val_acc is None or metrics["val_acc"] > state.best_val_acc:
            state.best_val_acc = metrics["val_acc"]
            # Written before checkpoint.pth, so a crash between the two loses no improvement:
            # --resume retrains this epoch and compares it with best.pth's val_acc.
            if main:
                save_checkpoint({**checkpoint, "val_acc": metrics["val_acc"]}, state.best_path)
    if main:
        save_checkpoint(checkpoint, state.checkpoint_path)
        state.logger.log(record)
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()),
              flush=True)
