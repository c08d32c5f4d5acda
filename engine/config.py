"""A training run's settings as typed values. The training scripts turn their parsed command line into a
TrainConfig at their boundary (engine.args.training_config); everything below them (the run folder, the
loop, the data, the evaluation, the methods' runs) reads these values, never the command line."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from eval.fewshot import EvalConfig
from runtime.process import ProcessConfig


@dataclass(frozen=True)
class Schedule:
    """SGD and its learning-rate schedule over the method's own epochs."""

    epochs: int
    learning_rate: float
    lr_decay_epochs: tuple[float, ...] = ()
    lr_decay_rate: float = 0.1
    cosine: bool = False  # the official cosine schedule instead of step decay
    momentum: float = 0.9
    weight_decay: float = 5e-4

    def learning_rate_at(self, epoch: int) -> float:
        """lr for 1-based `epoch`: step decay after each of lr_decay_epochs, or the official cosine
        schedule (CosineAnnealingLR over all epochs to lr * rate^3, stepped before each epoch)."""
        if self.cosine:
            eta_min = self.learning_rate * self.lr_decay_rate**3
            return eta_min + (self.learning_rate - eta_min) * (1 + math.cos(math.pi * epoch / self.epochs)) / 2
        return step_decay(self.learning_rate, self.lr_decay_rate, self.lr_decay_epochs, epoch)


def step_decay(learning_rate: float, rate: float, milestones: tuple[float, ...] | list[float], epoch: int) -> float:
    """lr for 1-based `epoch`, multiplied by `rate` once for each milestone the epochs before it have
    reached (epoch - 1 >= m). A whole-number milestone m decays from epoch m + 1 on, as the releases'
    MultiStepLR; a fractional one (SSKD's head decays at 50% and 75% of its epochs) is not reached by
    the epoch it falls in, so a 1-epoch head trains at its given lr."""
    return learning_rate * rate**sum(epoch - 1 >= m for m in milestones)


@dataclass(frozen=True)
class DataConfig:
    """Which images a run trains on and how they reach the step."""

    dataset: str
    data_root: str | None = None
    image_size: int | None = None  # None: the data's own size
    normalization: str = "auto"
    use_trainval: bool = False  # train on the trainval split
    batch_size: int = 64  # global: under torchrun each rank takes its share
    num_workers: int = 0
    augment: str = "device"  # device or workers (dataset.device_loader.resolve_augment decided auto)


@dataclass(frozen=True)
class LoopConfig:
    """How the epoch loop checks, logs and selects."""

    log_interval: int = 20  # steps between loss checks, progress lines and stop-signal checks
    eval_freq: int = 0  # val evaluation every this many epochs and at the last (0: off)
    val_episodes: int = 200
    halt_on_divergence: bool = False
    compile: bool = False  # the step through torch.compile


@dataclass(frozen=True)
class WandbConfig:
    mode: str = "disabled"  # auto, online, offline, disabled
    project: str | None = None  # None: the last part of the runs' parent folder
    group: str | None = None  # None: the run folder's name
    tags: tuple[str, ...] = ()
    artifacts: str = "all"  # the checkpoints logged as W&B artifacts: none, final, best or all


@dataclass(frozen=True)
class RunConfig:
    """Where the run folder goes and what happens at its start and end."""

    model_path: str = "save"  # the parent of run folders
    resume: bool = False
    final_eval: bool = True
    final_checkpoint: str = "last"  # last or best (best.pth, kept with eval_freq)
    wandb: WandbConfig = WandbConfig()


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run reads besides its method's own values (the method's `Values`)."""

    schedule: Schedule
    data: DataConfig
    process: ProcessConfig = ProcessConfig(deterministic=False)
    loop: LoopConfig = LoopConfig()
    run: RunConfig = RunConfig()
    episodes: EvalConfig = EvalConfig()  # the final report's (n_episodes: --n_test_runs) and, with
    # n_episodes = loop.val_episodes, the val evaluation's
    seed: int = 0
    # The command line as resolved, recorded as it is in args.json, every checkpoint's "args", the W&B config and
    # results.json, so that a run says what ran and eval.table and resumption can read it back. Never read to
    # decide anything: the fields above are what the run does.
    flags: dict[str, Any] = field(default_factory=dict)
