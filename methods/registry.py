"""Methods registered by name, and how a script's command line (or a checkpoint's recorded
arguments) selects one and fills the flags it did not give.

Selection is one mechanism: `--objective NAME` names the method among its script's (`--plain` is kept
as an alias of `--objective rfs_simple`). A method's own flags, and the shared flags it declares, are
refused in one line when another method runs; the schedule and loss-weight flags not given take the
method's published value for the dataset (each printed with its source), or the script's default where
the dataset has none published (`synthetic`, `folder`).
"""
from __future__ import annotations

import argparse
from typing import Any, Callable, Mapping, Sequence

from engine.args import SCHEDULE_FLAGS, Unset
from methods.base import Method
from published import card_of_args, card_of_training_args
from util import ArgumentParser, Registry, UsageError, as_typed

# METHODS' contract: an entry is a Method subclass (methods/base.py) with a card in published/, registered under
# its card's name by @register_method; registration order is the table's (teachers before their students).
METHODS: Registry[type[Method]] = Registry("method")

# Fills flags not given from what the run's input records (Gen-1: its teacher's dataset, image size...) once the
# method is known and before the published settings are resolved for the dataset; returns `setting:` lines.
BeforePublished = Callable[[type[Method], argparse.Namespace], list[str]]


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: add `cls` to METHODS under its card's name."""
    return METHODS.register(cls.name, cls)


def method_names() -> list[str]:
    """Every registered method, teachers before their students."""
    return METHODS.names()


def get_method(name: str) -> type[Method]:
    return METHODS.get(name)


def methods_of_script(script: str) -> list[type[Method]]:
    return [m for m in METHODS.values() if m.script == script]


def default_method(script: str) -> type[Method]:
    """What `script` trains without --objective (SKD's generation)."""
    return next(m for m in methods_of_script(script) if m.default)


class MethodArgumentParser(ArgumentParser):
    """A training script's parser: after parsing it selects the method and fills every flag left
    unset (resolve_method_args); `settings` then holds one line per filled or given schedule value.
    `before_published` is set by a script's main, not by its get_args_parser: plans (scripts/reproduce.py)
    parse command lines whose inputs do not exist yet."""

    def __init__(self, *args, script: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.script = script
        self.owners: dict[str, str] = {}  # dest -> the method whose own flag it is
        self.settings: list[str] = []
        self.before_published: BeforePublished | None = None

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):
        parsed, extras = super().parse_known_args(args, namespace)
        flags = {action.dest: "/".join(action.option_strings) for action in self._actions if action.option_strings}
        self.settings = resolve_method_args(self.script, parsed, self.owners, flags, self.before_published)
        return parsed, extras


def add_method_args(parser: MethodArgumentParser, script: str) -> None:
    """--objective with one choice per method of `script` (and --plain, the alias of rfs_simple), then
    each method's own flags, recorded as that method's in `parser.owners`; every default becomes an
    Unset, so that the resolution knows which flags were given."""
    methods = methods_of_script(script)
    default = default_method(script)
    ordered = [default, *(m for m in methods if m is not default)]
    help_lines = "; ".join(f"{m.objective}: {m.objective_help}" for m in ordered)
    g = parser.add_argument_group("method")
    g.add_argument("--objective", default=Unset(default.objective), choices=[m.objective for m in ordered],
                   help=help_lines)
    for method in ordered:
        before = len(parser._actions)
        method.add_args(parser)
        for action in parser._actions[before:]:
            parser.owners[action.dest] = method.name
            action.default = Unset(action.default)


def resolve_method_args(script: str, args: argparse.Namespace, owners: Mapping[str, str],
                        flags: Mapping[str, str], before_published: BeforePublished | None = None) -> list[str]:
    """Select the method, refuse in one line a method flag it does not use, map the release's flag
    aliases it honours, fill every unset flag; return the schedule's lines "--flag value (source)",
    after those of `before_published`.
    `owners`: dest -> the method whose flag it is; `flags`: dest -> its option strings, as typed."""
    method = _select_given(script, args)
    _apply_release_aliases(method, args, flags)
    method.check_given(args)
    used = set(method.own_flags(owners)) | set(method.shared_flags)
    shared = {flag for m in methods_of_script(script) for flag in m.shared_flags}
    for dest, value in vars(args).items():
        if (dest in owners or dest in shared) and dest not in used and not isinstance(value, Unset):
            users = [get_method(owners[dest])] if dest in owners else [m for m in methods_of_script(script)
                                                                       if dest in m.shared_flags]
            raise UsageError(f"{flags.get(dest, '--' + dest)}: {method.label} (--objective {method.objective}) "
                             f"does not use it; it is a "
                             f"flag of {', '.join(f'--objective {m.objective}' for m in users)}")
    taken = before_published(method, args) if before_published is not None else []
    if isinstance(args.dataset, Unset):  # every published value is looked up by the dataset
        args.dataset = args.dataset.fallback
    lines = taken + _published_defaults(method, args, {flag: dest for dest, names in flags.items()
                                                       for flag in names.split("/")})
    for dest, value in vars(args).items():
        if isinstance(value, Unset):
            setattr(args, dest, value.fallback)
    if hasattr(args, "plain"):  # recorded as before rfs_simple was an objective
        args.plain = method.objective == "rfs_simple"
    return lines


def _select_given(script: str, args: argparse.Namespace) -> type[Method]:
    objective = args.objective
    if getattr(args, "plain", None) is True:  # the alias, given
        if not isinstance(objective, Unset) and objective != "rfs_simple":
            raise UsageError(f"--plain: the alias of --objective rfs_simple; it does not combine with --objective "
                             f"{objective}")
        args.objective = objective = "rfs_simple"
    args.objective = objective.fallback if isinstance(objective, Unset) else objective
    return select_method(script, {"objective": args.objective})


def _apply_release_aliases(method: type[Method], args: argparse.Namespace, flags: Mapping[str, str]) -> None:
    """The release's own flags in the meaning of the release the method comes from (RFS's -r and -a)."""
    for release_dest, dest in method.release_aliases.items():
        value = getattr(args, release_dest, None)
        if value is None or isinstance(value, Unset):
            continue
        if not isinstance(getattr(args, dest), Unset):
            raise UsageError(f"--{dest} and {flags.get(release_dest, release_dest)} (the release's name of --{dest} "
                             f"under --objective {method.objective}) given together; give one")
        setattr(args, dest, value)
        if release_dest.startswith("official_"):
            delattr(args, release_dest)  # taken: not also reported as an ignored release flag
        else:
            setattr(args, release_dest, Unset(getattr(args, release_dest)))


def _published_defaults(method: type[Method], args: argparse.Namespace, dest_of: Mapping[str, str]) -> list[str]:
    """Fill each unset schedule flag and loss weight of `method` (`dest_of`: option string -> dest)."""
    published = method.published.get(args.dataset)
    lines = []
    flags = {**{name: name for name in SCHEDULE_FLAGS},
             **{name: dest_of[flag] for name, flag in method.weight_flags.items()}}
    values = published.by_name() if published is not None else {}
    for name, dest in flags.items():
        value = getattr(args, dest, None)
        if not isinstance(value, Unset):
            lines.append(f"{_flag(method, name, dest)} {as_typed(value)} (given)")
            continue
        if name not in values:
            lines.append(f"{_flag(method, name, dest)} {value} (default; nothing published for --dataset "
                         f"{args.dataset})")
            continue
        chosen = values[name]
        if isinstance(chosen.value, tuple) and name not in SCHEDULE_FLAGS:
            raise UsageError(f"{_flag(method, name, dest)}: {method.label} on {args.dataset} has no single published "
                             f"value ({chosen.source}: {', '.join(map(str, chosen.value))}; scripts/reproduce.py "
                             f"trains each and selects by val accuracy); give one")
        setattr(args, dest, list(chosen.value) if isinstance(chosen.value, tuple) else chosen.value)
        lines.append(f"{_flag(method, name, dest)} {as_typed(chosen.value)} (published: {chosen.source})")
    return lines


def _flag(method: type[Method], name: str, dest: str) -> str:
    """How a setting is typed: its flag, and the method's name of it where that differs (Gen-1's beta)."""
    flag = method.weight_flags.get(name, f"--{dest}")
    return flag if flag.lstrip("-") == name or name in SCHEDULE_FLAGS else f"{flag} ({name})"


def method_of_training_args(train_args: Mapping[str, Any]) -> type[Method]:
    """The method a checkpoint's recorded arguments trained (published.card_of_training_args)."""
    return get_method(card_of_training_args(train_args).name)


def select_method(script: str, args: argparse.Namespace | Mapping[str, Any]) -> type[Method]:
    """The method resolved (or recorded) arguments of `script` select (published.card_of_args)."""
    return get_method(card_of_args(script, vars(args) if isinstance(args, argparse.Namespace) else args).name)
