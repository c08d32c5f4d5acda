"""Methods registered by name, and how a script's command line (or a checkpoint's recorded
arguments) selects one."""
from __future__ import annotations

import argparse
from typing import Any, Mapping

from methods.base import DISTILL_SCRIPT, GEN0_SCRIPT, Method
from util import UsageError

_METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: add `cls` to the registry under `cls.name` (registration order is the table's)."""
    if cls.name in _METHODS:
        raise ValueError(f"method {cls.name!r} is registered twice")
    _METHODS[cls.name] = cls
    return cls


def method_names() -> list[str]:
    """Every registered method, teachers before their students."""
    return list(_METHODS)


def get_method(name: str) -> type[Method]:
    if name not in _METHODS:
        raise KeyError(f"unknown method {name!r}; registered: {', '.join(_METHODS)}")
    return _METHODS[name]


def methods_of_script(script: str) -> list[type[Method]]:
    return [m for m in _METHODS.values() if m.script == script]


def add_method_args(parser: argparse.ArgumentParser, script: str) -> None:
    """--objective with one choice per objective of `script`'s methods, then each method's own flags."""
    methods = methods_of_script(script)
    default = default_method(script).objective
    objectives = list(dict.fromkeys([default, *(m.objective for m in methods)]))
    ordered = sorted(methods, key=lambda m: objectives.index(m.objective))
    help_lines = "; ".join(f"{m.objective}: {m.objective_help}" for m in ordered if m.objective_help)
    parser.add_argument_group("method").add_argument("--objective", default=default, choices=objectives,
                                                     help=help_lines)
    for method in methods:
        method.add_args(parser)


def default_method(script: str) -> type[Method]:
    """What `script` trains without --objective (SKD's generation)."""
    return next(m for m in methods_of_script(script) if m.default)


def select_method(script: str, args: argparse.Namespace | Mapping[str, Any]) -> type[Method]:
    """The method `args` of `script` select: by --objective and, among methods sharing it, a method's
    own switch (RFS-simple's --plain). Arguments recorded before --objective existed mean its default."""
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    methods = methods_of_script(script)
    objective = values.get("objective") or default_method(script).objective
    candidates = [m for m in methods if m.objective == objective]
    switched = [m for m in candidates if m.switch and values.get(m.switch)]
    chosen = (switched or [m for m in candidates if not m.switch])[0]
    for other in methods:  # a flag only another method understands is a mistake, not a no-op
        given = [flag for flag in other.exclusive_flags if other is not chosen and values.get(flag)]
        if given:
            reason = other.exclusive_reason.format(objective=objective)
            raise UsageError(f"--{'/--'.join(given)}: {reason}")
    return chosen


def selection(script: str, args: argparse.Namespace) -> dict[str, Any]:
    """The flags that select the method, as recorded in a checkpoint's identity (a resumed run must
    keep them): --objective and each method's switch."""
    return {"objective": args.objective,
            **{m.switch: getattr(args, m.switch) for m in methods_of_script(script) if m.switch}}


def method_of_training_args(train_args: Mapping[str, Any]) -> type[Method]:
    """The method a checkpoint's recorded arguments trained (train_distillation.py records --path_t)."""
    script = DISTILL_SCRIPT if "path_t" in train_args else GEN0_SCRIPT
    return select_method(script, train_args)
