"""What a training method is: one class per method, registered by name, owning how it trains.

What is published about a method (its name, table label, objective, teacher, the paper's numbers and
its settings per dataset) is its card in published/, which the class names (`card`) and exposes as
class attributes. The class itself says, as class attributes, what its network is and how its flags
relate to the others; as class methods, its flags and their checks and its part of the run-folder
name. An instance is one run of it: built from the run's arguments, data, device and network (Gen-0)
or frozen teacher (distillation), it holds the network checkpointed as "model", the modules
checkpointed beside it, the training step, the per-epoch hooks, and the checks that the frozen
modules stayed frozen. The losses stay pure functions in `distill/`.
"""
from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass, fields
from typing import Any, Callable, ClassVar

import torch
from torch import nn

import engine.checkpoint
import engine.loop
import runtime.distributed
import util
from engine.data import TrainingData
from published.cards import DISTILL_SCRIPT, GEN0_SCRIPT, MethodCard
from models import architecture_of, create_model
from models.dropblock import dropblock_calls, set_dropblock_calls, set_dropblock_mask

__all__ = ["DISTILL_SCRIPT", "GEN0_SCRIPT", "DistillationMethod", "Gen0Method", "Method", "RunSetting", "clone_student"]


@dataclass(frozen=True)
class RunSetting:
    """What every method's run reads of its command line besides its own values."""
    model: str  # the architecture (a student's is its teacher's)
    dataset: str
    bn_stats: str  # "global" or "per_rank" (runtime.distributed.use_global_batch_statistics)
    dropblock_mask: str  # "full" or "release"
    seed: int
    teacher_path: str | None = None  # --path_t, named when a frozen teacher changes

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunSetting:
        return cls(model=architecture_of(vars(args)), dataset=args.dataset, bn_stats=args.bn_stats,
                   dropblock_mask=dropblock_mask_of(args), seed=args.seed, teacher_path=getattr(args, "path_t", None))


class Method:
    card: ClassVar[MethodCard]  # what is published about it; its fields are also class attributes
    # From the card: name (registry key, W&B job type), label, objective, default, teacher, in_paper, paper,
    # weight_flags, published, small_scale, forwards_per_image, forwarded_copies, mode_flags, born_again,
    # release_sweeps.
    name: ClassVar[str]
    label: ClassVar[str]
    objective: ClassVar[str]
    script: ClassVar[str]  # GEN0_SCRIPT or DISTILL_SCRIPT
    kind: ClassVar[str]  # what its network is, in error messages ("a DVP prior")
    objective_help: ClassVar[str]  # --objective's help for this value
    # The script's flags it reads besides its own group's (--kd_T); another method's given flag is refused.
    shared_flags: ClassVar[tuple[str, ...]] = ()
    # The release's flags it honours in that release's meaning: dest given -> the dest it sets (RFS's -r, -a).
    release_aliases: ClassVar[dict[str, str]] = {}
    generation: ClassVar[int]  # 0: trained from scratch; 1: from a teacher (its data stream: engine.run.stage_seed)
    uses_labels: ClassVar[bool] = True  # DVP's prior trains without them
    # Why --augment device is refused (None: it is not); such a method's augmentation runs on loader workers.
    device_augment_refusal: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        card = cls.__dict__.get("card")
        if card is None:
            return
        if card.script != cls.script:
            raise TypeError(f"{cls.__name__}: its card {card.name!r} is of {card.script}, the class of {cls.script}")
        for name in ("name", "label", "objective", "default", "teacher", "in_paper", "paper", "weight_flags",
                     "published", "small_scale", "forwards_per_image", "forwarded_copies", "mode_flags", "born_again",
                     "release_sweeps"):
            setattr(cls, name, getattr(card, name))

    # ----------------------------------------------------------------- the method itself (no run)

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser) -> None:
        """Add the method's own flags (an argument group named after it)."""

    @classmethod
    def own_flags(cls, owners: dict[str, str]) -> list[str]:
        """The dests of the flags its add_args added (`owners`: dest -> method name)."""
        return [dest for dest, name in owners.items() if name == cls.name]

    @classmethod
    def check_given(cls, args: argparse.Namespace) -> None:
        """Refuse in one line a combination of given flags that means nothing for it; unset flags are
        still engine.args.Unset here."""

    @classmethod
    def check_args(cls, args: argparse.Namespace) -> None:
        """Refuse bad values of the method's flags in one line (util.UsageError); called after the
        process group is joined, so per-rank quantities are known."""

    @classmethod
    def run_name_part(cls, args: argparse.Namespace) -> str:
        """The method's part of the official run-folder name."""
        raise NotImplementedError

    # ----------------------------------------------------------------- one run of it

    # Its own values (a frozen dataclass whose fields are named as its flags' dests), read by from_args.
    Values: ClassVar[type] = None

    def __init__(self, *, values: Any, setting: RunSetting, device: torch.device, data: TrainingData,
                 teacher: nn.Module | None = None) -> None:
        self.values, self.setting, self.device, self.data, self.teacher = values, setting, device, data, teacher
        self.extra_modules: dict[str, nn.Module] = {}  # trained modules checkpointed beside "model", by key
        self._frozen: list[tuple[nn.Module, dict[str, torch.Tensor], str]] = []
        self.model = self.create_network()  # checkpointed under "model", with the official keys
        set_dropblock_mask(self.model, setting.dropblock_mask)
        self.create_extra_modules()
        # After the extra modules, which may copy the network and keep per-rank statistics (DVP's key encoder).
        if setting.bn_stats == "global":
            self.model = runtime.distributed.use_global_batch_statistics(self.model)
        if teacher is not None:
            self.freeze(teacher, f"teacher {setting.teacher_path}")

    @classmethod
    def from_args(cls, args: argparse.Namespace, *, device: torch.device, data: TrainingData,
                  teacher: nn.Module | None = None) -> Method:
        """The run of the command line `args`: its values and the run's setting read from them."""
        values = cls.Values(**{f.name: getattr(args, f.name) for f in fields(cls.Values)}) if cls.Values else None
        return cls(values=values, setting=RunSetting.from_args(args), device=device, data=data, teacher=teacher)

    def create_network(self) -> nn.Module:
        """The network to train, on the run's device; default: freshly initialised."""
        return self.fresh_network()

    def fresh_network(self) -> nn.Module:
        s, data = self.setting, self.data
        return util.to_device(create_model(s.model, data.train.num_classes, s.dataset, image_size=data.image_size),
                              self.device)

    def create_extra_modules(self) -> None:
        """Modules trained beside the network, into self.extra_modules (on the run's device)."""

    def extra_parameters(self) -> list[nn.Parameter]:
        """Parameters trained besides the network's (the optimizer's second group)."""
        return []

    def train_transform(self) -> Callable | None:
        """The loader's per-image transform (None: the Gen-0/Gen-1 augmentation, on the device or workers)."""
        return None

    def pre_phases(self, state: engine.loop.TrainState, loader: Any) -> list[engine.loop.Phase]:
        """Phases trained before the method's own epochs, in order, each through the training loop
        (checkpointed, resumable, logged like any epoch); default: none."""
        return []

    def make_step(self, state: engine.loop.TrainState, loader: Any) -> engine.loop.Step:
        """The training step of the method's own epochs, built once its pre_phases are done."""
        raise NotImplementedError

    def before_epoch(self, epoch: int) -> None:
        """Before an epoch's first step (also a resumed one's)."""

    def after_epoch(self, epoch: int) -> None:
        """After an epoch's steps, before its checkpoint."""

    def freeze(self, module: nn.Module, what: str) -> None:
        """Record `module` as frozen: `check_frozen` fails if any weight or buffer of it changes."""
        self._frozen.append((module, snapshot(module), what))

    def check_frozen(self) -> None:
        """Raise if a frozen module changed during training; say so when there are some."""
        for module, before, what in self._frozen:
            assert_unchanged(module, before, what)
        if self._frozen:
            print("teacher check: weights and BatchNorm statistics unchanged")


class Gen0Method(Method):
    """A method of train_supervised_ssl.py: a network trained from scratch on the training split."""

    script = GEN0_SCRIPT
    generation = 0


class DistillationMethod(Method):
    """A method of train_distillation.py: a student trained against the frozen teacher of --path_t."""

    script = DISTILL_SCRIPT
    generation = 1
    teacher_uses_labels: ClassVar[bool] = True  # whether its teacher must be a model trained with labels
    # Whether its student starts as a copy of the teacher (same architecture); else a fresh network of --model_s.
    student_copies_teacher: ClassVar[bool] = True

    def clone_teacher(self) -> nn.Module:
        return clone_student(self.teacher)


def dropblock_mask_of(args: argparse.Namespace) -> str:
    """--dropblock_mask, or the release's mask under --official_quirks, else the full-block mask."""
    if getattr(args, "dropblock_mask", None):
        return args.dropblock_mask
    return "release" if getattr(args, "official_quirks", False) else "full"


def clone_student(teacher: nn.Module) -> nn.Module:
    """The teacher's exact weights and BatchNorm statistics ("clones"), trainable, with a DropBlock
    ramp starting at 0 (the official student is a fresh model loading the weights)."""
    student = copy.deepcopy(teacher).requires_grad_(True)
    set_dropblock_calls(student, [0] * len(dropblock_calls(student)))
    return student


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter and buffer (BatchNorm statistics included)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor], what: str) -> None:
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    if changed:
        raise RuntimeError(f"{what} changed during training: {', '.join(changed[:5])}"
                           + (f" (+{len(changed) - 5} more)" if len(changed) > 5 else ""))
