"""The epoch loop: steps under autocast with a grad scaler, a loud stop on a non-finite loss, a line (or
with halt_on_divergence the same stop) on a finite one that diverges, the learning-rate schedule, one
checkpoint and one log line per epoch, and (with --eval_freq) a val evaluation that keeps best.pth."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn
from tqdm import tqdm

from runtime import distributed
from runtime.preemption import StopRequest, rng_state, set_rng_state
from engine.checkpoint import BEST_NAME, CHECKPOINT_NAME
from engine.checkpointer import Checkpointer
from engine.config import LoopConfig, Schedule
from runtime.folder_lock import FolderLock
from runtime.logger import ProgressLines, RunLogger
from models.dropblock import keep_dropblock_eager
from util import CheckpointError, NonFiniteLossError, Preempted, autocast


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
                              (self.correct if self.correct is not None
                               else torch.zeros((), device=device)).reshape(())])
        totals = distributed.all_reduce_sum(totals.double()).tolist()
        images = max(totals[-2], 1)
        out = {name: total / images for name, total in zip(names, totals)}
        if self.correct is not None:
            out["acc"] = 100.0 * totals[-1] / images
        return out, int(totals[-3])


# A window of steps whose mean loss is this many times the stretch's first loss is diverging: SSKD's release
# recipe on ResNet-12 at lr 0.05 (issue 43) reached thousands from a first loss of a few. A collapse that stays
# under it (26 -> 105 -> 26 on Omniglot) ends at chance accuracy, which the epoch's check names.
DIVERGENCE_FACTOR = 10.0


class DivergenceError(NonFiniteLossError):
    """A finite loss that ran away, or a training accuracy at chance, with --halt_on_divergence: the run
    stops as for a non-finite loss (a subclass, so util.run_cli gives it the same one line and exit code 1)."""


@dataclass
class DivergenceWatch:
    """One stretch's watch for a run that trains into the ground while its loss stays finite: a window of
    steps whose mean loss is DIVERGENCE_FACTOR times the stretch's first loss (seen by this process: a
    resumed run starts over), or, on a labelled step, an epoch's training accuracy not above chance. One
    line per occurrence (a window rule at most once an epoch); with `halt`, a DivergenceError instead.
    It reads only what the loop already brought to the host (FinitenessCheck's losses, the epoch's sums)."""

    first_loss: float | None = None
    reported_epoch: int = 0

    def window(self, epoch: int, steps: list[int], losses: torch.Tensor, metrics: list[dict[str, torch.Tensor]],
               halt: bool, last_good: Path | None) -> None:
        """`losses`: the window's per-step losses on the host (summed over ranks), `metrics` their steps'."""
        losses = losses / distributed.current().world_size
        if self.first_loss is None:
            self.first_loss = float(losses[0])
        mean = float(losses.mean())
        if self.first_loss <= 0 or mean <= DIVERGENCE_FACTOR * self.first_loss or epoch == self.reported_epoch:
            return
        self.reported_epoch = epoch
        terms = {k: float(torch.stack([m[k].detach().float() for m in metrics]).mean()) for k in metrics[-1]}
        over = f"steps {steps[0]}-{steps[-1]}" if len(steps) > 1 else f"step {steps[0]}"
        _diverged(f"diverging loss (mean {mean:.4g} over {over}, {mean / self.first_loss:.3g}x the first step's "
                  f"{self.first_loss:.4g}) at epoch {epoch}, step {steps[-1]}", terms, halt, last_good)

    def epoch_accuracy(self, epoch: int, averages: dict[str, float], images: int, classes: int | None, halt: bool,
                       last_good: Path | None) -> None:
        """`averages`: the epoch's (Meter.averages), with "acc" where the step counts correct images, over
        `images`. At chance: not above guessing by more than one standard error of guessing on that many
        images. On 1,300 Omniglot images of 66 classes (bound 1.86%) a collapsed SSKD student's epochs scored
        1.48-1.72% and a healthy Gen-0's first 2.06%: a first epoch that close to chance may be named too.
        Not judged on fewer images than make that error a third of chance (9 per class beyond the first): a
        few dozen images (tests, smoke runs) say nothing about chance."""
        if "acc" not in averages or not classes or images < 9 * (classes - 1):
            return
        chance = 1.0 / classes
        bound = 100.0 * (chance + math.sqrt(chance * (1 - chance) / images))
        if averages["acc"] > bound:
            return
        terms = {k: v for k, v in averages.items() if k != "acc"}
        _diverged(f"training accuracy at chance ({averages['acc']:.3g}% of {images} images, guessing among {classes} "
                  f"classes {100 * chance:.3g}%, at most {bound:.3g}% by chance) after epoch {epoch}", terms, halt,
                  last_good)


def _diverged(what: str, terms: dict[str, float], halt: bool, last_good: Path | None) -> None:
    message = f"{what}; metrics: {', '.join(f'{k}={v:.4g}' for k, v in terms.items())}"
    if halt:
        raise DivergenceError(f"{message}. Last good checkpoint: {last_good or 'none'}")
    # On stdout, among the epoch lines it is about; stderr stays for what ends a run.
    print(f"warning: {message} (--halt_on_divergence stops such a run)", flush=True)


def _classes(model: nn.Module) -> int | None:
    """The classes of the network's classifier, what chance accuracy is 1 over (None: it has none)."""
    classifier = getattr(model, "classifier", None)
    return classifier.out_features if isinstance(classifier, nn.Linear) else None


class FinitenessCheck:
    """Collects each step's loss on the device and checks them together every few steps, so that a
    non-finite loss stops the run naming its first bad step without a host sync per step; the losses it
    read go on to the stretch's DivergenceWatch."""

    def __init__(self, watch: DivergenceWatch | None = None, halt_on_divergence: bool = False) -> None:
        """`watch`: the stretch's, kept across its epochs (None: one of its own)."""
        self.pending: list[tuple[int, StepResult]] = []
        self.watch, self.halt = watch or DivergenceWatch(), halt_on_divergence

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
        self.watch.window(epoch, [i for i, _ in self.pending], losses, [r.metrics for _, r in self.pending], self.halt,
                          last_good)
        self.pending.clear()
        return float(losses[-1])


@dataclass
class Phase:
    """A stretch of training before the method's own, through this same loop (SSKD's teacher head):
    its epochs, the step it builds when it starts, its optimizer and schedule, and the epoch key of its
    data order (apart from the method's own epochs). Checkpointed under "phase" while it runs, so that
    a stop in it resumes; its log lines carry its name."""

    name: str
    epochs: int
    make_step: Callable[[], Step]
    optimizer: torch.optim.Optimizer
    learning_rate_at: Callable[[int], float]
    data_epoch: Callable[[int], int]
    scaler: torch.amp.GradScaler | None = None  # None: a pass-through (fp16 runs get one of its own)


@dataclass
class TrainState:
    """What one training run carries from epoch to epoch; `checkpointer` saves and restores it."""

    checkpointer: Checkpointer
    folder: Path
    logger: RunLogger
    start_epoch: int = 1
    validation: Validation | None = None  # run every --eval_freq epochs and at the last
    best_val_acc: float | None = None  # of best.pth, kept across --resume
    partial: dict | None = None  # this rank's part of a mid-epoch checkpoint being resumed
    phase: dict | None = None  # a phase before the method's own being resumed: {"name", "epoch", "optimizer"}
    resumed: bool = False  # from a checkpoint: phases before the one it names (all, if none) are done
    data_seed: int = 0  # the stage's seed of data order, augmentations and dropout (engine.run.stage_seed)
    lock: FolderLock | None = None  # the run folder's, held by the process that writes it (rank 0)

    @property
    def model(self) -> nn.Module:  # the network itself, never its DDP wrapper: checkpoints keep the official keys
        return self.checkpointer.model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.checkpointer.optimizer

    @property
    def scaler(self) -> torch.amp.GradScaler:
        return self.checkpointer.scaler

    @property
    def extra_modules(self) -> dict[str, nn.Module]:
        return self.checkpointer.extra_modules

    @property
    def checkpoint_path(self) -> Path:
        return self.folder / CHECKPOINT_NAME

    @property
    def best_path(self) -> Path:
        return self.folder / BEST_NAME


@dataclass
class _Stretch:
    """What an epoch of the loop trains: the method's own epochs (`phase` None) or a Phase's."""

    phase: Phase | None
    epochs: int
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    learning_rate_at: Callable[[int], float]
    data_epoch: Callable[[int], int]
    watch: DivergenceWatch = field(default_factory=DivergenceWatch)  # across the stretch's epochs

    @property
    def prefix(self) -> str:
        return f"{self.phase.name}_" if self.phase else ""

    def checkpoint(self, state: TrainState, epoch: int) -> dict:
        """The checkpoint after `epoch` epochs of this stretch."""
        if self.phase is None:
            return state.checkpointer.state_dict(epoch=epoch)
        return state.checkpointer.state_dict(epoch=0, phase={
            "name": self.phase.name, "epoch": epoch, "optimizer": self.optimizer.state_dict()})


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


def _batches(loader, epoch: int, stretch: _Stretch, data_seed: int, skip_steps: int = 0) -> Iterator:
    """The epoch's batches after its first `skip_steps`. The data order and augmentations are a
    function of (the stage's seed, the stretch's epoch key) (dataset.loaders.EpochSampler); the global
    RNG, which draws dropout and DropBlock masks, is re-seeded per epoch and per rank."""
    key = stretch.data_epoch(epoch)
    seed = distributed.rank_seed(data_seed) * 100_003 + key
    torch.manual_seed(seed)
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(key, skip_steps * loader.batch_size)
    elif loader.generator is not None:  # a plain DataLoader (tests, benchmarks): re-seed its shuffle
        loader.generator.manual_seed(seed)
    name = f"{stretch.phase.name} " if stretch.phase else ""
    return tqdm(loader, desc=f"{name}epoch {epoch}/{stretch.epochs}", leave=False, initial=skip_steps,
                total=skip_steps + len(loader), disable=None if distributed.is_main_process() else True,
                dynamic_ncols=True)


def _save_partial(state: TrainState, stretch: _Stretch, epoch: int, step: int, meter: Meter) -> None:
    """The mid-epoch checkpoint: "epoch" counts the completed epochs as always; "partial" holds the
    epoch in progress, its steps done, and every rank's RNG states and metric sums."""
    mine = {"rng": rng_state(), "meter": meter.state_dict()}
    ranks = distributed.all_gather_objects(mine)
    if distributed.is_main_process():
        checkpoint = stretch.checkpoint(state, epoch - 1)
        checkpoint["partial"] = {"epoch": epoch, "step": step, "world_size": len(ranks), "ranks": ranks}
        state.checkpointer.save(state.checkpoint_path, checkpoint)


def _stop(stop: StopRequest, state: TrainState, stretch: _Stretch, epoch: int, step: int | None,
          steps: int) -> Preempted:
    where = f"epoch {epoch}, step {step}/{steps}" if step is not None else f"the end of epoch {epoch}"
    if stretch.phase is not None:  # its epochs count apart from the method's own
        where += f" of the {stretch.phase.name} phase"
    code = 130 if stop.signal_name == "SIGINT" else 143
    return Preempted(f"{stop.signal_name} at {where}; checkpoint {state.checkpoint_path}. Continue with the same "
                     f"command plus --resume", code)


@dataclass
class _Loop:
    """What every epoch of one fit() call reads: the run, its loader, its loop settings, the device and
    autocast precision, the stop-signal watch, and the method's own epoch count."""

    state: TrainState
    loader: Any
    config: LoopConfig
    device: torch.device
    amp: str
    stop: StopRequest
    epochs: int


def fit(*, state: TrainState, make_step: Callable[[], Step], loader, schedule: Schedule, loop: LoopConfig,
        device: torch.device, amp: str = "off", phases: list[Phase] = (),
        after_epoch: Callable[[int], None] | None = None, before_epoch: Callable[[int], None] | None = None) -> None:
    """Train each of `phases` (the method's phases before its own, in order), then the method's own
    epochs from state.start_epoch to schedule.epochs with the step `make_step()` builds once the phases
    are done, under autocast `amp`: one checkpoint and one log line per epoch, a stop signal
    checkpointing mid-epoch in any of them. `before_epoch(epoch)` runs before each of the method's epochs'
    first step (also a resumed one's), `after_epoch(epoch)` after its steps, before its checkpoint is
    written. With state.validation, every loop.eval_freq epochs and at the last the val metrics join the
    log line and best.pth is rewritten whenever val_acc improves.

    Under torchrun the step calls the DDP-wrapped network (runtime.distributed.wrap), every rank runs
    the loop and the (sharded) val evaluation, and rank 0 alone writes checkpoints and logs.
    """
    with StopRequest(loop.log_interval) as stop:
        run = _Loop(state, loader, loop, device, amp, stop, schedule.epochs)
        for phase, first_epoch in _phases_to_train(state, list(phases)):
            stretch = _Stretch(phase, phase.epochs, phase.optimizer, phase.scaler or _pass_through(device),
                               phase.learning_rate_at, phase.data_epoch)
            _train_stretch(run, stretch, phase.make_step(), first_epoch)
        step = make_step()
        if loop.compile:
            keep_dropblock_eager()
            step = torch.compile(step)  # the closure's network and losses become one graph (or a few)
        own = _Stretch(None, schedule.epochs, state.optimizer, state.scaler, schedule.learning_rate_at,
                       lambda epoch: epoch)
        _train_stretch(run, own, step, state.start_epoch, after_epoch, before_epoch)
    distributed.barrier()  # every rank may read best.pth or checkpoint.pth next
    distributed.check_replicas_equal(state.model, state.extra_modules)


def _pass_through(device: torch.device) -> torch.amp.GradScaler:
    return torch.amp.GradScaler(device.type, enabled=False)


def _phases_to_train(state: TrainState, phases: list[Phase]) -> list[tuple[Phase, int]]:
    """Each phase still to train and its first epoch: all from epoch 1 in a fresh run; in a resumed one
    the phase its checkpoint names from the epoch after the one it saved (its optimizer restored), and
    the phases after it from 1. A checkpoint naming none was written in the method's own epochs."""
    if not state.resumed:
        return [(phase, 1) for phase in phases]
    if state.phase is None:
        return []
    names = [phase.name for phase in phases]
    if state.phase["name"] not in names:
        raise CheckpointError(f"--resume: {state.checkpoint_path} stopped in phase {state.phase['name']!r}, which "
                              f"this method does not have ({', '.join(names) or 'none'})")
    at = names.index(state.phase["name"])
    phases[at].optimizer.load_state_dict(state.phase["optimizer"])
    return [(phases[at], int(state.phase["epoch"]) + 1), *((phase, 1) for phase in phases[at + 1:])]


def _train_stretch(run: _Loop, stretch: _Stretch, step: Step, first_epoch: int,
                   after_epoch: Callable[[int], None] | None = None,
                   before_epoch: Callable[[int], None] | None = None) -> None:
    state = run.state
    for epoch in range(first_epoch, stretch.epochs + 1):
        if before_epoch is not None:
            before_epoch(epoch)
        meter, seconds, skip = _train_epoch(run, stretch, step, epoch)
        # Every rank evaluates and rank 0 saves the same network; modules outside DDP (a momentum key
        # encoder) also kept BatchNorm statistics of their own rank's images.
        for module in (state.model, *state.extra_modules.values()):
            distributed.broadcast_buffers(module)
        if after_epoch is not None:
            after_epoch(epoch)
        _end_epoch(run, stretch, epoch, meter, seconds, skip)
        # Arrived during the epoch's last step, its evaluation or its save; an all-reduce that rank 0
        # joins after writing the checkpoint, so no rank exits before it is on disk.
        if run.stop.requested():
            raise _stop(run.stop, state, stretch, epoch, None, 0)


def _train_epoch(run: _Loop, stretch: _Stretch, step: Step, epoch: int) -> tuple[Meter, float, int]:
    """The epoch's steps (from a mid-epoch checkpoint's step when resuming one); returns its metric
    sums, its seconds and the steps it resumed after."""
    state, device, stop = run.state, run.device, run.stop
    set_learning_rate(stretch.optimizer, stretch.learning_rate_at(epoch))
    state.model.train()
    meter, finite = Meter(), FinitenessCheck(stretch.watch, run.config.halt_on_divergence)
    resumed, state.partial = state.partial, None
    skip = resumed["step"] if resumed is not None else 0
    last_good = state.checkpoint_path if state.checkpoint_path.is_file() else None
    start = time.perf_counter()
    progress = _batches(run.loader, epoch, stretch, state.data_seed, skip)
    steps = skip + len(run.loader)
    if resumed is not None:  # the RNG streams and metric sums exactly as they were after step `skip`
        set_rng_state(resumed["rng"])
        meter.load_state_dict(resumed["meter"], device)
    lines = ProgressLines(distributed.is_main_process())
    for i, (images, targets) in enumerate(progress, start=skip + 1):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with autocast(device, run.amp):
            result = step(images, targets)
        stretch.optimizer.zero_grad(set_to_none=True)
        stretch.scaler.scale(result.loss).backward()
        stretch.scaler.step(stretch.optimizer)
        stretch.scaler.update()
        meter.update(result)
        finite.add(i, result)
        if i % run.config.log_interval == 0:
            loss = finite.check(epoch, last_good)
            progress.set_postfix(loss=f"{loss:.3f}")
            lines(f"{stretch.prefix.replace('_', ' ')}epoch {epoch}/{stretch.epochs} step {i}/{steps} "
                  f"loss={loss:.4g} seconds={time.perf_counter() - start:.0f}")
        if i < steps and stop.requested(i):
            finite.check(epoch, last_good)  # never checkpoint a non-finite state
            progress.close()
            _save_partial(state, stretch, epoch, i, meter)
            distributed.wait_for_checkpoint(state.checkpoint_path)  # no rank exits before it is on disk
            raise _stop(stop, state, stretch, epoch, i, steps)
    finite.check(epoch, last_good)
    return meter, time.perf_counter() - start, skip


def _end_epoch(run: _Loop, stretch: _Stretch, epoch: int, meter: Meter, seconds: float, skip: int) -> None:
    """The epoch's log line, its val evaluation (the method's own epochs, with eval_freq) and checkpoint."""
    state = run.state
    averages, images = meter.averages()
    # Before this epoch's checkpoint, so that a halted run keeps the last good one, as for a non-finite loss.
    stretch.watch.epoch_accuracy(epoch, averages, images, _classes(state.model), run.config.halt_on_divergence,
                                 state.checkpoint_path if state.checkpoint_path.is_file() else None)
    p = stretch.prefix
    record = {**({"phase": stretch.phase.name} if stretch.phase else {}), f"{p}epoch": epoch,
              f"{p}lr": stretch.optimizer.param_groups[0]["lr"], **{f"{p}train_{k}": v for k, v in averages.items()},
              f"{p}images_per_s": images / seconds, f"{p}epoch_seconds": seconds}
    if skip:
        record[f"{p}resumed_at_step"] = skip  # images_per_s and epoch_seconds cover the steps after it
    main = distributed.is_main_process()
    checkpoint = stretch.checkpoint(state, epoch)
    if stretch.phase is None and state.validation is not None and (epoch % run.config.eval_freq == 0
                                                                   or epoch == run.epochs):
        metrics = _validate(state.model, state.validation, run.device)
        record.update(metrics)
        if state.best_val_acc is None or metrics["val_acc"] > state.best_val_acc:
            state.best_val_acc = metrics["val_acc"]
            if main:  # W&B's summary: val_acc's maximum (define_metric) and the epoch that reached it
                state.logger.summary({"best_val_acc_epoch": epoch})
            # Written before checkpoint.pth, so a crash between the two loses no improvement:
            # --resume retrains this epoch and compares it with best.pth's val_acc.
            if main:
                state.checkpointer.save(state.best_path, {**checkpoint, "val_acc": metrics["val_acc"]})
    if main:
        state.checkpointer.save(state.checkpoint_path, checkpoint)
        state.logger.log(record)
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()),
              flush=True)
