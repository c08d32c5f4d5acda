"""Reproduce one of the paper's tables (SPEC 7): every method, seed and few-shot evaluation of one dataset,
each command with every published setting of dataset/profiles.py written out, so that it stays right
when a script's default changes.

    python scripts/reproduce.py --dataset CIFAR-FS --data_root DIR --dry_run
    python scripts/reproduce.py --dataset FC100 --data_root DIR --dry_run -- --epochs 1    # a smoke run

Flags this script does not know (after `--` or not) are appended to every training command, where
argparse's last-one-wins makes them override the published values; the data, seeds and run folders
stay the plan's (--dataset, --data_root, --seeds, --output). This version prints the plan
(--dry_run); running it comes next.
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the stage scripts and the packages live at the repository root

import engine.args  # noqa: E402
import engine.checkpoint  # noqa: E402
import engine.run  # noqa: E402
import train_distillation  # noqa: E402
import train_supervised_ssl  # noqa: E402
import util  # noqa: E402
from dataset.profiles import METHODS, PUBLISHED, PUBLISHED_EVAL, PublishedSettings, dataset_profile  # noqa: E402


@dataclass(frozen=True)
class Stage:
    """How a method runs: its script, the script flag of each loss weight, the method that trains its teacher."""
    module: ModuleType
    weight_flags: dict[str, str]
    teacher: str | None = None
    rotations: int = 1  # forwards per training image (Gen-0 trains on all four rotations, SPEC 3)


STAGES = {
    "skd_gen0": Stage(train_supervised_ssl, {"gamma": "--gamma"}, rotations=4),
    "skd_gen1": Stage(train_distillation, {"beta": "--gamma", "kd_T": "--kd_T"}, teacher="skd_gen0"),
}
# The settings every training command writes out, by their flag names (shared by both scripts).
SCHEDULE = ("epochs", "lr_decay_epochs", "learning_rate", "lr_decay_rate", "batch_size", "weight_decay", "momentum")
# What identifies a run of the plan; passthrough flags must leave it alone.
PLAN_OWNED = ("dataset", "data_root", "seed", "trial", "model_path", "path_t")
# The RFS rows need training modes the scripts do not have yet; the plan says so rather than invent flags.
NOT_RUNNABLE = {
    "rfs_simple": "train_supervised_ssl.py always trains on the four rotations (--gamma 0 drops the rotation loss "
                  "but still feeds 4x rotated images); RFS-simple is cross-entropy on plain images",
    "rfs_distill": "train_distillation.py clones its student from the teacher and has no cross-entropy term; "
                   "RFS-distill trains a fresh student with 0.5 CE + 0.5 KL (T 4) to the RFS-simple model",
}


@dataclass(frozen=True)
class Run:
    """One training run of the plan and the evaluations of its checkpoint."""
    method: str
    seed: int
    what: str  # the comment line above it: method, seed, swept values, images processed
    command: list[str] | None  # None: not runnable yet, for the reason in `why_not`
    why_not: str = ""
    evaluations: tuple[list[str], ...] = ()
    checkpoint: Path | None = None


def get_args_parser() -> argparse.ArgumentParser:
    # No abbreviations: `--seed 3` must pass through to the training scripts, not become --seeds.
    parser = argparse.ArgumentParser("Reproduce one dataset's table of the paper; other flags go to every training "
                                     "command", allow_abbrev=False)
    parser.add_argument("--dataset", required=True, help=f"one of {', '.join(PUBLISHED)}")
    parser.add_argument("--data_root", required=True, help="folder holding <dataset>/, as for the scripts")
    parser.add_argument("--methods", type=engine.args.comma_strings, default=list(METHODS),
                        help=f"comma-separated, from {','.join(METHODS)} (default: all)")
    parser.add_argument("--seeds", type=engine.args.comma_ints, default=[0, 1, 2],
                        help="comma-separated; each run gets --seed S --trial S")
    parser.add_argument("--episodes", type=int, default=PUBLISHED_EVAL.episodes.value, help="episodes per evaluation")
    parser.add_argument("--output", default="save", help="root of all run folders (the scripts' --model_path)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: the scripts' choice)")
    parser.add_argument("--amp", default=None, choices=["off", "bf16", "fp16"], help="autocast precision")
    parser.add_argument("--wandb_group", default=None,
                        help="W&B group of every run (default: reproduce_<dataset>_<date>)")
    parser.add_argument("--dry_run", action="store_true", help="print every command, one a line, and run nothing")
    return parser


def text(value: object) -> str:
    """A setting as the scripts' flags spell it: sequences comma-separated (--lr_decay_epochs 30,40,50)."""
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def python_command(script: str) -> list[str]:
    """The interpreter running this script, and `script` of the repository relative to the current folder."""
    return [sys.executable, os.path.relpath(REPO / script)]


def device_flags(args: argparse.Namespace) -> list[str]:
    return [*(["--device", args.device] if args.device else []), *(["--amp", args.amp] if args.amp else [])]


def parse_training(stage: Stage, argv: list[str]) -> argparse.Namespace:
    """`argv` read by the stage script's own parser: the run name, and so the checkpoint path, is then the
    script's, passthrough flags included; a flag the script lacks fails here, not hours into a plan."""
    parser = stage.module.get_args_parser()
    parser.exit_on_error = False
    script = Path(stage.module.__file__).name
    try:
        parsed, unknown = parser.parse_known_args(argv)
    except argparse.ArgumentError as e:
        raise util.UsageError(f"{script}: {e}") from None
    if unknown:
        raise util.UsageError(f"{script} does not accept {shlex.join(unknown)} (flags this script does not know go "
                              f"to every training command)")
    return parsed


def check_passthrough(stage: Stage, planned: list[str], passthrough: list[str]) -> None:
    """Passthrough flags may change any setting but the plan's own: which data, which seed, where runs go."""
    with_passthrough, without = parse_training(stage, planned + passthrough), parse_training(stage, planned)
    for name in PLAN_OWNED:
        if getattr(with_passthrough, name, None) != getattr(without, name, None):
            raise util.UsageError(f"{shlex.join(passthrough)}: changes --{name}, which the plan sets; use this "
                                  f"script's --dataset, --data_root, --seeds and --output")


def images_processed(epochs: int, batch_size: int, train_images: int, rotations: int, use_trainval: bool) -> str:
    """The training images a run draws (and, for Gen-0, the rotated copies it forwards)."""
    if use_trainval:
        return "images processed: unknown (--use_trainval: the trainval split's size is not in the table)"
    per_epoch = train_images // batch_size * batch_size  # the loaders drop the last incomplete batch
    total = epochs * per_epoch
    forwarded = f", x{rotations} rotations = {rotations * total:,} forwarded" if rotations > 1 else ""
    return f"{epochs} epochs x {per_epoch:,} images = {total:,} images{forwarded}"


def evaluation(args: argparse.Namespace, checkpoint: Path, split: str, shots: int) -> list[str]:
    ev = PUBLISHED_EVAL
    return [*python_command("eval_fewshot.py"), "--model_path", str(checkpoint), "--dataset", args.dataset,
            "--data_root", args.data_root, "--split", split, "--n_ways", str(ev.n_ways.value),
            "--n_shots", str(shots), "--n_queries", str(ev.n_queries.value),
            "--n_aug_support_samples", str(ev.n_aug_support_samples.value), "--n_test_runs", str(args.episodes),
            "--classifier", ev.classifier.value,
            "--output", str(checkpoint.parent / f"results_{split}_{shots}shot.json"), *device_flags(args)]


def training_runs(method: str, settings: PublishedSettings, seed: int, args: argparse.Namespace,
                  passthrough: list[str], teacher: Path | None) -> list[Run]:
    """The runs of `method` for one seed: one per combination of swept values (a sweep is decided on val)."""
    stage = STAGES[method]
    weights = {name: settings.weights[name].value for name in stage.weight_flags}
    swept = [name for name, value in weights.items() if isinstance(value, tuple)]
    runs = []
    for values in itertools.product(*(weights[name] for name in swept)):
        chosen = {**weights, **dict(zip(swept, values))}
        argv = ["--dataset", args.dataset, "--data_root", args.data_root,
                *itertools.chain.from_iterable((f"--{name}", text(getattr(settings, name).value)) for name in SCHEDULE),
                *itertools.chain.from_iterable((flag, text(chosen[name])) for name, flag in stage.weight_flags.items()),
                *(["--path_t", str(teacher)] if teacher else []),
                "--model_path", args.output, "--seed", str(seed), "--trial", str(seed),
                "--wandb_group", args.wandb_group,
                # Evaluation is the eval_fewshot.py commands below, so training never opens val or test.
                "--no_final_eval", *device_flags(args)]
        check_passthrough(stage, argv, passthrough)
        argv += passthrough
        parsed = parse_training(stage, argv)
        name = stage.module.run_name(parsed, dataset_profile(parsed.dataset, parsed.image_size))
        checkpoint = engine.run.run_folder(parsed, name) / engine.checkpoint.CHECKPOINT_NAME
        # Swept runs are also evaluated on val, which alone decides between them.
        splits = ("val", "test") if swept else ("test",)
        sweep = "".join(f", {n} {chosen[n]} of {text(weights[n])} (swept, decided on val)" for n in swept)
        images = images_processed(parsed.epochs, parsed.batch_size, PUBLISHED[args.dataset].train_images.value,
                                  stage.rotations, parsed.use_trainval)
        runs.append(Run(method, seed, f"{method} seed {seed}{sweep}: {images}",
                        [*python_command(Path(stage.module.__file__).name), *argv],
                        evaluations=tuple(evaluation(args, checkpoint, split, shots) for split in splits
                                          for shots in PUBLISHED_EVAL.shots.value),
                        checkpoint=checkpoint))
    return runs


def plan(args: argparse.Namespace, passthrough: list[str]) -> list[Run]:
    """Every run of the table in dependency order: per seed, each method after the method that trains its teacher
    (computed, for its checkpoint path, also when only the student is asked for)."""
    published = PUBLISHED[args.dataset]
    needed = set(args.methods) | {STAGES[m].teacher for m in args.methods if m in STAGES and STAGES[m].teacher}
    runs = []
    for seed in args.seeds:
        checkpoints: dict[str, Path | None] = {}
        for method in (m for m in METHODS if m in needed):
            settings = published.methods[method]
            if method in NOT_RUNNABLE:
                images = images_processed(settings.epochs.value, settings.batch_size.value,
                                          published.train_images.value, 1, False)
                method_runs = [Run(method, seed, f"{method} seed {seed}: {images}", None, NOT_RUNNABLE[method])]
            else:
                teacher = STAGES[method].teacher
                method_runs = training_runs(method, settings, seed, args, passthrough,
                                            checkpoints[teacher] if teacher else None)
            # A swept teacher would need the sweep decided first; no published teacher is swept.
            checkpoints[method] = method_runs[0].checkpoint
            runs += [run for run in method_runs if run.method in args.methods]
    return runs


def print_plan(args: argparse.Namespace, runs: list[Run]) -> None:
    published = PUBLISHED[args.dataset]
    print(f"# {args.dataset}: {', '.join(m for m in METHODS if m in args.methods)}; seeds "
          f"{', '.join(map(str, args.seeds))}; {args.episodes} episodes per evaluation; W&B group {args.wandb_group}")
    print("# published settings [source]:")
    for method in (m for m in METHODS if m in args.methods):
        settings = published.methods[method].by_name()
        print(f"#   {method}: " + "; ".join(f"{name} {text(v.value)} [{v.source}]" for name, v in settings.items()))
    ev = PUBLISHED_EVAL
    print(f"#   evaluation: {ev.n_ways.value}-way [{ev.n_ways.source}], shots {text(ev.shots.value)} "
          f"[{ev.shots.source}], {ev.n_queries.value} queries [{ev.n_queries.source}], "
          f"{ev.n_aug_support_samples.value} augmented support copies [{ev.n_aug_support_samples.source}], "
          f"classifier {ev.classifier.value} [{ev.classifier.source}]")
    print(f"#   train split: {published.train_images.value:,} images [{published.train_images.source}]")
    for run in runs:
        print(f"# {run.what}")
        if run.command is None:
            print(f"# not runnable yet: {run.why_not}")
            continue
        for command in (run.command, *run.evaluations):
            print(shlex.join(command))


def main() -> None:
    args, passthrough = get_args_parser().parse_known_args()
    if passthrough[:1] == ["--"]:
        passthrough = passthrough[1:]
    if args.dataset not in PUBLISHED:
        raise util.UsageError(f"--dataset {args.dataset}: no published settings; known: {', '.join(PUBLISHED)}")
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods:
        raise util.UsageError(f"--methods {','.join(args.methods)}: expected some of {','.join(METHODS)}")
    if not args.seeds or len(set(args.seeds)) < len(args.seeds):
        raise util.UsageError(f"--seeds {','.join(map(str, args.seeds))}: expected distinct seeds")
    util.check_positive(args, "episodes")
    args.wandb_group = args.wandb_group or f"reproduce_{args.dataset}_{datetime.date.today().isoformat()}"
    runs = plan(args, passthrough)
    if not args.dry_run:
        raise util.UsageError("only --dry_run is implemented in this version (the training driver comes next)")
    print_plan(args, runs)


if __name__ == "__main__":
    util.run_cli(main)
