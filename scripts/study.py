"""What turns a table's plan into a study (scripts/reproduce.py): sweeps of training flags, the selection that
decides between candidates (a sweep's configurations, or the K teachers of one seed) on validation episodes
only, and a sweep written for W&B's own sweep agent.

A selection reads each candidate's `results_val_<K>shot.json` (eval_fewshot.py on the val split, the same
fixed episodes for every candidate) and nothing else: it never opens a test results file, and the plan
evaluates a candidate on test only once a selection chose it (unless --report all). Its record,
`selections/<method>_seed_<S>_gen<G>.json` under the plan's output, says out of which candidates, by which
episodes and criterion, which was chosen for each shot count, and which teaches the next generation or the
students (the best mean over the shot counts: one network teaches both); `selections/<same>/checkpoint.pth`
links to that one, the `--path_t` the students' commands name before the choice is made.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import methods
import util

SELECTIONS = "selections"
CANDIDATE_SEED_STRIDE = 1000  # teacher candidate k of table seed S trains with seed S + 1000 k


@dataclass(frozen=True)
class Sweep:
    """One --sweep: FLAG (a method's weight name, such as beta, or a training flag without its dashes, such as
    learning_rate), its values as the flag spells them, and optionally the one method it is for."""
    flag: str
    values: tuple[str, ...]
    method: str | None = None

    @property
    def text(self) -> str:
        separator = ";" if any("," in v for v in self.values) else ","
        return f"{self.method + ':' if self.method else ''}{self.flag}={separator.join(self.values)}"


def parse_sweep(text: str) -> Sweep:
    """`[METHOD:]FLAG=v1,v2,...`; values that hold commas themselves (--lr_decay_epochs 30,40) are separated by
    semicolons instead: `lr_decay_epochs=30,40;50,60`."""
    target, equals, values = text.partition("=")
    method, colon, flag = target.rpartition(":")
    flag = flag.removeprefix("--")
    separator = ";" if ";" in values else ","
    parsed = tuple(v.strip() for v in values.split(separator))
    if not equals or not flag or not all(parsed) or (colon and not method):
        raise util.UsageError(f"--sweep {text}: expected [METHOD:]FLAG=v1,v2,... (e.g. beta=0.025,0.05 or "
                              f"skd_gen1:learning_rate=0.001,0.01)")
    if len(set(parsed)) < len(parsed) or len(parsed) < 2:
        raise util.UsageError(f"--sweep {text}: expected two or more distinct values")
    return Sweep(flag, parsed, method or None)


def selection_name(method: str, seed: int, generation: int) -> str:
    return f"{method}_seed_{seed}_gen{generation}"


def selection_record(output: str | Path, method: str, seed: int, generation: int) -> Path:
    return Path(output) / SELECTIONS / f"{selection_name(method, seed, generation)}.json"


def chosen_checkpoint(output: str | Path, method: str, seed: int, generation: int, name: str) -> Path:
    """Where the selection links the candidate that teaches (`name`: the checkpoint's file name)."""
    return Path(output) / SELECTIONS / selection_name(method, seed, generation) / name


def val_results(checkpoint: Path, shots: int) -> Path:
    """The val evaluation of a candidate, as the plan writes it beside its checkpoint."""
    return checkpoint.parent / f"results_val_{shots}shot.json"


def results_path(checkpoint: Path, split: str, shots: int) -> Path:
    return checkpoint.parent / f"results_{split}_{shots}shot.json"


def mean_accuracy(path: Path) -> tuple[float, Any]:
    """(mean accuracy, episode fingerprint) of a results file of one evaluation."""
    first = json.loads(path.read_text())["results"][0]
    return float(first["mean"]), first.get("fingerprint")


@dataclass(frozen=True)
class Candidate:
    checkpoint: Path
    configuration: dict[str, str]  # the swept values it trained with (empty: none swept)
    seed: int  # the seed it trained with (a teacher candidate's is not the table's)


def select(candidates: list[Candidate], shots: tuple[int, ...], *, what: dict[str, Any], record: Path,
           link: Path | None) -> dict[str, Any]:
    """Choose among `candidates` on their val results: the best for each shot count, and the best mean over
    them (the one that teaches); ties go to the first in plan order. Writes `record` and (re)points `link` at
    the teaching candidate's checkpoint, atomically; returns the record."""
    scores = []
    for c in candidates:
        found = {k: mean_accuracy(val_results(c.checkpoint, k)) for k in shots}
        folder = os.path.relpath(c.checkpoint.parent, record.parent.parent)  # within the plan's output
        scores.append({"checkpoint": str(c.checkpoint), "folder": Path(folder).as_posix(),
                       "configuration": c.configuration, "seed": c.seed,
                       "val": {str(k): found[k][0] for k in shots},
                       "mean": sum(v[0] for v in found.values()) / len(shots),
                       "episodes": {str(k): found[k][1] for k in shots}})
    fingerprints = {k: {json.dumps(s["episodes"][str(k)]) for s in scores} for k in shots}
    if any(len(f) > 1 for f in fingerprints.values()):
        raise util.UsageError(f"{record}: the candidates' val results were evaluated on different episodes; "
                              f"evaluate them again with the plan's settings")
    chosen = {str(k): max(scores, key=lambda s: s["val"][str(k)])["checkpoint"] for k in shots}
    teacher = max(scores, key=lambda s: s["mean"])["checkpoint"]
    content = {**what, "split": "val", "criterion": "mean val accuracy of the shot count; the teacher: the best "
                                                    "mean over the shot counts (ties: the first candidate)",
               "shots": list(shots), "candidates": scores, "chosen": chosen, "teacher": teacher}
    record.parent.mkdir(parents=True, exist_ok=True)
    with util.atomic_write(record) as tmp:
        tmp.write_text(json.dumps(content, indent=2) + "\n")
    if link is not None:
        point_link(link, Path(teacher))
    return content


def point_link(link: Path, target: Path) -> None:
    """`link` -> `target` (relative, so that the output folder can move), replacing any earlier link at once."""
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(os.path.relpath(target.resolve(), link.parent.resolve()))
    os.replace(tmp, link)


def read_record(record: Path) -> dict[str, Any] | None:
    try:
        content = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) and "chosen" in content else None


def selection_done(record: Path, candidates: list[Candidate], shots: tuple[int, ...], link: Path | None) -> bool:
    """Whether `record` holds a selection of exactly these candidates made after their latest val results."""
    content = read_record(record)
    if content is None or [c["checkpoint"] for c in content["candidates"]] != [str(c.checkpoint) for c in candidates]:
        return False
    results = [val_results(c.checkpoint, k) for c in candidates for k in shots]
    if not all(p.is_file() for p in results):
        return False
    newest = max(p.stat().st_mtime for p in results)
    linked = link is None or (link.is_symlink() and link.resolve() == Path(content["teacher"]).resolve())
    return record.stat().st_mtime >= newest and linked


def write_wandb_sweeps(args: argparse.Namespace, runs: list) -> list[Path]:
    """A W&B sweep configuration (grid) per seed of the plan's one swept method, running the plan's commands with
    the swept flags left to the agent; JSON, which `wandb sweep` reads as the YAML it is a subset of."""
    swept = [run for run in runs if run.place.swept]
    names = sorted({run.method for run in swept})
    if len(names) != 1 or args.generations > 1 or args.teachers > 1:
        found = f"this plan sweeps {', '.join(names)}" if names else "nothing is swept (--sweep)"
        raise util.UsageError(f"--wandb_sweep {args.wandb_sweep}: writes the sweep of one method, without "
                              f"--generations or --teachers; {found}")
    stage = methods.get_method(names[0])
    target = Path(args.wandb_sweep)
    written = []
    for seed in args.seeds:
        group = [run for run in swept if run.seed == seed]
        if any(run.checkpoint.parent.parent != Path(args.output) for run in group):
            raise util.UsageError(f"--wandb_sweep: {names[0]}'s run-folder name does not say "
                                  f"{', '.join(n for n, _ in group[0].place.swept)}, so the agent's runs would share "
                                  f"one folder; run the sweep with this script instead")
        flags = {n: stage.weight_flags.get(n, f"--{n}") for n, _ in group[0].place.swept}
        values = {n: sorted({dict(run.place.swept)[n] for run in group}, key=group_order(group, n)) for n in flags}
        fixed, skip = [], False
        for token in group[0].command[2:]:
            if skip:
                skip = False
            elif token in flags.values():
                skip = True
            else:
                fixed.append(token)
        config = {"name": f"{names[0]} {args.dataset} seed {seed}", "program": group[0].command[1], "method": "grid",
                  "description": f"scripts/reproduce.py's {names[0]} sweep (W&B group {args.wandb_group})",
                  "parameters": {flags[n].lstrip("-"): {"values": values[n]} for n in flags},
                  "command": ["${env}", "${interpreter}", "${program}", *fixed, "${args}"]}
        path = target if len(args.seeds) == 1 else target.with_name(f"{target.stem}_seed{seed}{target.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        with util.atomic_write(path) as tmp:
            tmp.write_text(json.dumps(config, indent=2) + "\n")
        written.append(path)
    return written


def group_order(group: list, name: str) -> Callable[[str], int]:
    """Values of a swept name in the order the plan trains them."""
    order = [dict(run.place.swept)[name] for run in group]
    return order.index
