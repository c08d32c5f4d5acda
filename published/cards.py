"""A method's card: what is published about it and how a command line names it, apart from the code
that trains it (methods/), as timm keeps a model's pretrained configs beside its entry point. The
results table, the reproduction driver and the training scripts' defaults read cards; a training
method (methods.base.Method) takes its name, selection and published settings from its card."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from published.settings import PublishedSettings
from util import Registry

GEN0_SCRIPT = "train_supervised_ssl.py"
DISTILL_SCRIPT = "train_distillation.py"


PAPER_NETWORK = "resnet12_ssl"  # what the paper's numbers (MethodCard.paper) were trained with


@dataclass(frozen=True)
class Reported:
    """A method's results as another group published them: 5-way (1-shot, 5-shot) accuracy by dataset, with the
    network they ran, by our registered name where it is one of ours (eval.table then shows them beside ours),
    else by the reporter's own name."""
    source: str
    network: str
    results: dict[str, tuple[float, float]]


@dataclass(frozen=True)
class MethodCard:
    name: str  # registry key, W&B job type, reproduce.py and eval.table name
    label: str  # its row in the results table
    script: str  # GEN0_SCRIPT or DISTILL_SCRIPT
    objective: str  # its --objective value
    published: dict[str, PublishedSettings]  # dataset -> the settings its numbers were trained with
    small_scale: PublishedSettings  # `folder` datasets (the CPU study; not published)
    default: bool = False  # what its script trains without --objective
    teacher: str | None = None  # the method that trains its teacher (reproduce.py's order)
    in_paper: bool = False  # one of the paper's rows
    paper: dict[str, tuple[float, float]] = field(default_factory=dict)  # dataset -> 5-way (1-shot, 5-shot) accuracy
    reported: tuple[Reported, ...] = ()  # by others, on this or other networks
    # Its published loss weights by name -> the flag setting each (reproduce.py's commands, the defaults).
    weight_flags: dict[str, str] = field(default_factory=dict)
    forwards_per_image: int = 1  # what each training image costs: forwards, and what they are
    forwarded_copies: str = "rotations"
    # Whether reproduce.py --generations chains it: its student teaches the next student of the same method.
    born_again: bool = False
    # dataset -> weight name -> values a release swept where the table's published value is one (reproduce.py
    # --release_sweeps).
    release_sweeps: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def mode_flags(self) -> tuple[str, ...]:
        """The flags selecting it on its script's command line."""
        return ("--objective", self.objective)


# Every method's card by its name, added by published/__init__.py in the table's order.
CARDS: Registry[MethodCard] = Registry("method card")


def add_cards(*cards: MethodCard) -> None:
    for card in cards:
        CARDS.register(card.name, card)


def cards() -> list[MethodCard]:
    """Every method's card, teachers before their students, the paper's rows first (the table's order)."""
    return CARDS.values()


def card(name: str) -> MethodCard:
    return CARDS.get(name)


def card_of_args(script: str, values: Mapping[str, Any]) -> MethodCard:
    """The method that resolved (or recorded) arguments of `script` select. Arguments recorded before
    --objective existed mean the script's default; before rfs_simple was an objective, RFS-simple
    recorded `--objective skd --plain`."""
    of_script = [c for c in CARDS.values() if c.script == script]
    objective = values.get("objective") or next(c for c in of_script if c.default).objective
    if values.get("plain"):
        objective = "rfs_simple"
    for c in of_script:
        if c.objective == objective:
            return c
    raise KeyError(f"{script} has no method of --objective {objective}")


def card_of_training_args(train_args: Mapping[str, Any]) -> MethodCard:
    """The method a checkpoint's recorded arguments trained (train_distillation.py records --path_t)."""
    return card_of_args(DISTILL_SCRIPT if "path_t" in train_args else GEN0_SCRIPT, train_args)


def generation_of(train_args: Mapping[str, Any]) -> int:
    """A run's place in a chain of teachers, from its recorded arguments: 0 trained without a teacher, 1 a
    student of such a run, N the student of generation N - 1 (train_distillation.py records it as
    `generation`; runs recorded before it did, and official checkpoints' students, count as 1)."""
    if "generation" in train_args:
        return int(train_args["generation"])
    return 1 if train_args.get("path_t") else 0
