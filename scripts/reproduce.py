"""Reproduce one of the paper's tables : every method, seed and few-shot evaluation of one dataset,
each command with every published setting of its method (methods/) written out, so that it stays right
when a script's default changes.

    python scripts/reproduce.py --dataset CIFAR-FS --data_root DIR --dry_run
    python scripts/reproduce.py --dataset FC100 --data_root DIR --dry_run -- --epochs 1    # a smoke run

Every training command computes what produced the paper's numbers: the release's DropBlock mask
(`--dropblock_mask release`) in every run and SKD Gen-1's `--official_quirks`; `--intended` plans the
method as published instead (docs/faithfulness.md).

Stages that do not depend on each other run at the same time, one per GPU (--gpus, --parallel); every
student after its teacher. `--submit slurm` makes each stage a SLURM job instead (afterok dependencies).

A study goes further than the table (docs/reproducing.md, section 4): `--sweep FLAG=v1,v2` trains every value (a grid
when repeated), `--generations N` continues SKD Gen-1 and RFS-distill as born-again chains, `--teachers K` trains
K teachers per seed; validation episodes choose (scripts/study.py), and only the chosen see the test split.

Flags this script does not know (after `--` or not) are appended to every training command whose
script accepts them, where argparse's last-one-wins makes them override the published values
(`-- --dvp_margin 0` reaches train_supervised_ssl.py's runs only); a flag no script of the plan
accepts is refused. The data, seeds and run folders stay the plan's (--dataset, --data_root,
--seeds, --output).
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import os
import shlex
import signal
import sys
import json
from dataclasses import dataclass, replace
from typing import Any
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the stage scripts and the packages live at the repository root

import torch  # noqa: E402

import engine.args  # noqa: E402
import engine.checkpoint  # noqa: E402
import engine.run  # noqa: E402
import methods  # noqa: E402
import models  # noqa: E402
import train_distillation  # noqa: E402
import train_supervised_ssl  # noqa: E402
import util  # noqa: E402
from dataset.catalog import DATASETS, resolve_dataset_folder  # noqa: E402
from published.profiles import dataset_profile  # noqa: E402
from methods.base import dropblock_mask_of  # noqa: E402
from published.settings import PUBLISHED_EVAL, TRAIN_IMAGES, PublishedSettings, Sourced  # noqa: E402
from scripts import plan_scheduler, slurm_submit, study  # noqa: E402
from scripts.plan_scheduler import Stage  # noqa: E402
from scripts.study import Candidate, Sweep  # noqa: E402
from runtime.folder_lock import FolderLock  # noqa: E402

# The training script of each method, by the file name the method names.
SCRIPTS: dict[str, ModuleType] = {Path(m.__file__).name: m for m in (train_supervised_ssl, train_distillation)}
ALL_METHODS = tuple(methods.method_names())  # teachers before their students
PAPER_METHODS = tuple(m for m in ALL_METHODS if methods.get_method(m).in_paper)  # the paper's rows


# The settings every training command writes out, by their flag names (shared by both scripts).
SCHEDULE = ("epochs", "lr_decay_epochs", "learning_rate", "lr_decay_rate", "batch_size", "weight_decay", "momentum")
# What identifies a run of the plan; passthrough flags must leave it alone.
PLAN_OWNED = ("dataset", "data_root", "seed", "trial", "model_path", "path_t")
# The release's behaviours that produced the paper's numbers where the scripts default to the method as published
# (docs/faithfulness.md): its DropBlock mask in every ResNet-12, and for a method below the flags that restore its
# other behaviours. Every plan passes them unless --intended.
RELEASE_MASK = ("--dropblock_mask", "release")
RELEASE_BEHAVIOURS = {"skd_gen1": ("--official_quirks",)}  # four student views, L2 / 3, the release's ramp and mask


@dataclass(frozen=True)
class Teacher:
    """What a student of the plan distils from: a run's checkpoint, or a selection's link to the chosen one."""
    checkpoint: Path
    model: str  # its architecture
    stage: str  # the stage that makes it (a training run, or the selection)


@dataclass(frozen=True)
class Place:
    """Where a run sits in a study: its generation (0 without a teacher), which of the K teacher candidates of
    its seed (0: the table's own run), and the values swept for it."""
    generation: int = 0
    candidate: int = 0
    swept: tuple[tuple[str, str], ...] = ()  # (weight or flag name, value)


@dataclass(frozen=True)
class Run:
    """One training run of the plan and the evaluations of its checkpoint."""
    method: str
    seed: int  # the table's seed (a teacher candidate trains with another, `trained_seed`)
    what: str  # the comment line above it: method, seed, swept values, images processed
    command: list[str]
    epochs: int
    checkpoint: Path
    model: str  # the architecture it trains (a student's teacher has the same)
    place: Place = Place()
    candidate: bool = False  # one of several its selection chooses from: on val, and on test once chosen
    evaluations: tuple[list[str], ...] = ()
    passthrough: tuple[tuple[str, ...], ...] = ()  # the passthrough flags (with their values) its script accepted
    teacher: Teacher | None = None  # what it distils from, made by another stage of the plan
    forwarded: int | None = None  # images its network forwards in all, rotations and views included (None: unknown)
    dropblock_mask: str = "full"  # the DropBlock mask it trains with, which its folder name does not say
    trained_seed: int = 0
    in_table: bool = True  # a method the table shows (else a teacher only: never evaluated on test)

    @property
    def label(self) -> str:
        """The run in progress and error lines: method, seed and swept values, without the image count."""
        return self.what.split(":")[0]

    @property
    def group(self) -> tuple[str, int, int]:
        """The runs a selection decides between share it: method, table seed, generation."""
        return self.method, self.seed, self.place.generation


def get_args_parser() -> argparse.ArgumentParser:
    # No abbreviations: `--seed 3` must pass through to the training scripts, not become --seeds.
    parser = util.ArgumentParser(description="Reproduce one dataset's table of the paper; other flags go to every "
                                             "training command that accepts them", allow_abbrev=False)
    parser.add_argument("--dataset", required=True, help=f"one of {', '.join(TRAIN_IMAGES)}, or folder")
    parser.add_argument("--data_root", required=True, help="folder holding <dataset>/, as for the scripts")
    parser.add_argument("--methods", type=engine.args.comma_strings, default=list(PAPER_METHODS),
                        help=f"comma-separated, from {','.join(ALL_METHODS)} (default: the paper's rows, "
                             f"{','.join(PAPER_METHODS)})")
    parser.add_argument("--seeds", type=engine.args.comma_ints, default=[0, 1, 2],
                        help="comma-separated; each run gets --seed S --trial S")
    parser.add_argument("--episodes", type=int, default=PUBLISHED_EVAL.episodes.value, help="episodes per evaluation")
    parser.add_argument("--output", default="save", help="root of all run folders (the scripts' --model_path)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: the scripts' choice)")
    parser.add_argument("--amp", default=None, type=engine.args.amp_choice,
                        choices=engine.args.AMP_CHOICES, help="autocast precision (fp32 is off)")
    parser.add_argument("--wandb_group", default=None,
                        help="W&B group of every run (default: reproduce_<dataset>_<date>)")
    parser.add_argument("--nproc_per_node", type=int, default=1,
                        help="train each run with torchrun on N processes of this node (N GPUs; --batch_size stays the "
                             "global batch); evaluations run in one process")
    parser.add_argument("--intended", action="store_true",
                        help="train the method as published instead of what produced the paper's numbers: without "
                             "the release's DropBlock mask (--dropblock_mask release) and SKD Gen-1's "
                             "--official_quirks, which every plan passes otherwise")
    parser.add_argument("--dry_run", action="store_true", help="print every command, one a line, and run nothing "
                        "(with --submit slurm: every sbatch script and the dependency graph, submitting nothing)")
    parser.add_argument("--gpus", type=engine.args.comma_ints, default=None,
                        help="GPUs to run stages on, as this process numbers them (e.g. 0,1,2; default: every visible "
                             "GPU); each stage is pinned to its own with CUDA_VISIBLE_DEVICES")
    parser.add_argument("--parallel", type=int, default=None,
                        help="stages run at the same time (default: one per GPU, --nproc_per_node GPUs each; one on "
                             "the CPU); each gets its share of the CPUs for its loader workers")
    g = parser.add_argument_group("studies (docs/reproducing.md): candidates decided on val episodes, never test")
    g.add_argument("--sweep", action="append", type=study.parse_sweep, default=[], metavar="[METHOD:]FLAG=v1,v2",
                   help="train every value of a training flag (a weight name such as beta or gamma, or a flag such "
                        "as learning_rate); repeated: a grid. Without METHOD: every method of --methods that takes "
                        "it. Val picks one configuration per method, seed and shot count")
    g.add_argument("--release_sweeps", action="store_true",
                   help="where a release swept a weight that the table gives one value of (SKD Gen-1's beta on FC100 "
                        "and tieredImageNet: run.sh's seven values), sweep those values")
    g.add_argument("--generations", type=int, default=1,
                   help="born-again chains: Gen-1 ... Gen-N of SKD Gen-1 and RFS-distill, each student the next "
                        "one's teacher (the val-chosen one of a sweep), same settings")
    g.add_argument("--teachers", type=int, default=1,
                   help="K teachers per seed for every method that teaches another of the plan (seeds S, S+1000, "
                        "...); the best on val (mean of 1- and 5-shot) teaches that seed's students")
    g.add_argument("--report", default="chosen", choices=["chosen", "all"],
                   help="test evaluations of candidates: the val-chosen ones only (default), or all of them, each "
                        "marked chosen or not by eval.table")
    g.add_argument("--wandb_sweep", default=None, metavar="FILE",
                   help="also write a W&B sweep configuration of the swept method (one file per seed: FILE, or "
                        "FILE with _seed<S> before its suffix) for `wandb sweep FILE`, and run nothing")
    parser.add_argument("--stage", default=None, metavar="ID",
                        help="run one stage of the plan only (what each SLURM job of --submit slurm runs)")
    slurm_submit.add_args(parser)
    return parser


def text(value: object) -> str:
    """A setting as the scripts' flags spell it: sequences comma-separated (--lr_decay_epochs 30,40,50)."""
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def python_command(script: str, nproc_per_node: int = 1) -> list[str]:
    """The interpreter running this script, and `script` of the repository relative to the current folder;
    launched by torchrun (single node, its own rendezvous) when `nproc_per_node` > 1."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}"]
    return [sys.executable, *(launcher if nproc_per_node > 1 else []), os.path.relpath(REPO / script)]


def device_flags(args: argparse.Namespace) -> list[str]:
    return [*(["--device", args.device] if args.device else []), *(["--amp", args.amp] if args.amp else [])]


def release_flags(method: type[methods.Method], architecture: str, args: argparse.Namespace) -> list[str]:
    """The flags giving a run the release's behaviours that the paper's numbers were trained with (none with
    --intended)."""
    if args.intended:
        return []
    mask = list(RELEASE_MASK) if architecture.startswith("resnet12") else []
    return [*RELEASE_BEHAVIOURS.get(method.name, ()), *mask]


def parse_training(method: type[methods.Method], argv: list[str]) -> argparse.Namespace:
    """`argv` read by the method's script's own parser: the run name, and so the checkpoint path, is then the
    script's, passthrough flags included; a flag the script lacks fails here, not hours into a plan."""
    parser = SCRIPTS[method.script].get_args_parser()
    parser.exit_on_error = False
    script = method.script
    try:
        parsed, unknown = parser.parse_known_args(argv)
    except argparse.ArgumentError as e:
        raise util.UsageError(f"{script}: {e}") from None
    if unknown:
        raise util.UsageError(f"{script} does not accept {shlex.join(unknown)}")
    return parsed


def flag_groups(passthrough: list[str]) -> list[list[str]]:
    """The passthrough flags one by one, each with the values after it (`--epochs 1`, `--lr_decay_epochs=3,4`)."""
    groups: list[list[str]] = []
    for token in passthrough:
        if token.startswith("--") or not groups:
            groups.append([token])
        else:
            groups[-1].append(token)
    return groups


def accepts(method: type[methods.Method], planned: list[str], group: list[str]) -> bool:
    """Whether the method uses the flag of `group` (a known flag with a bad value counts as known:
    parse_training then names the value)."""
    parser = SCRIPTS[method.script].get_args_parser()
    parser.exit_on_error = False
    try:
        _, unknown = parser.parse_known_args(planned + group)
    except argparse.ArgumentError:
        return True
    except util.UsageError:  # the script knows it, but this method does not use it (another method's flag)
        return False
    return not unknown


def check_passthrough(method: type[methods.Method], planned: list[str], passthrough: list[str]) -> None:
    """Passthrough flags may change any setting but the plan's own: which data, which seed, where runs go."""
    with_passthrough, without = parse_training(method, planned + passthrough), parse_training(method, planned)
    for name in PLAN_OWNED:
        if getattr(with_passthrough, name, None) != getattr(without, name, None):
            raise util.UsageError(f"{shlex.join(passthrough)}: changes --{name}, which the plan sets; use this "
                                  f"script's --dataset, --data_root, --seeds and --output")


def images_processed(epochs: int, batch_size: int, train_images: int, rotations: int, use_trainval: bool,
                     copies: str = "rotations") -> str:
    """The training images a run draws (and, for Gen-0, SSKD and DVP's prior, the copies it forwards)."""
    if use_trainval:
        return "images processed: unknown (--use_trainval: the trainval split's size is not in the table)"
    per_epoch = train_images // batch_size * batch_size  # the loaders drop the last incomplete batch
    total = epochs * per_epoch
    forwarded = f", x{rotations} {copies} = {rotations * total:,} forwarded" if rotations > 1 else ""
    return f"{epochs} epochs x {per_epoch:,} images = {total:,} images{forwarded}"


def evaluation(args: argparse.Namespace, checkpoint: Path, split: str, shots: int) -> list[str]:
    ev = PUBLISHED_EVAL
    return [*python_command("eval_fewshot.py"), "--model_path", str(checkpoint), "--dataset", args.dataset,
            "--data_root", args.data_root, "--split", split, "--n_ways", str(ev.n_ways.value),
            "--n_shots", str(shots), "--n_queries", str(ev.n_queries.value),
            "--n_aug_support_samples", str(ev.n_aug_support_samples.value), "--n_test_runs", str(args.episodes),
            "--classifier", ev.classifier.value,
            "--output", str(checkpoint.parent / f"results_{split}_{shots}shot.json"), *device_flags(args)]


def settings_of(method: type[methods.Method], args: argparse.Namespace) -> PublishedSettings:
    """The method's published settings on --dataset; a `folder` dataset has none: its small-scale ones."""
    return method.small_scale if args.dataset == "folder" else method.published[args.dataset]


def planned_weights(stage: type[methods.Method], args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    """The method's weights as the table trains them (a tuple where a sweep is published, or with
    --release_sweeps a release's), and where each swept one's values come from."""
    settings = settings_of(stage, args)
    weights = {name: settings.weights[name].value for name in stage.weight_flags}
    sources = {name: settings.weights[name].source for name, value in weights.items() if isinstance(value, tuple)}
    if args.release_sweeps:
        for name, values in stage.release_sweeps.get(args.dataset, {}).items():
            weights[name], sources[name] = values.value, values.source
    return weights, sources


def takes_sweep(stage: type[methods.Method], argv: list[str], sweep: Sweep) -> bool:
    """Whether `sweep` sweeps a flag of this method: one of its weights by name, or a flag its script accepts for
    it that is not one of its weights under another name (SKD Gen-1's --gamma is beta)."""
    if sweep.flag in stage.weight_flags:
        return True
    flag = f"--{sweep.flag}"
    return flag not in stage.weight_flags.values() and accepts(stage, argv, [flag, sweep.values[0]])


def sweeps_of(stage: type[methods.Method], args: argparse.Namespace) -> list[Sweep]:
    """The --sweep flags aimed at this method: by name, or unnamed when the table shows it."""
    return [s for s in args.sweep if s.method == stage.name or (s.method is None and stage.name in args.methods)]


def training_runs(name: str, seed: int, args: argparse.Namespace, passthrough: list[str],
                  teacher: Teacher | None, place: Place) -> list[Run]:
    """The runs of method `name` for one seed at one place of the study: one per combination of swept values."""
    stage = methods.get_method(name)
    settings = settings_of(stage, args)
    weights, sources = planned_weights(stage, args)
    trained_seed = seed + study.CANDIDATE_SEED_STRIDE * place.candidate
    base = [*stage.mode_flags, "--dataset", args.dataset, "--data_root", args.data_root,
            *itertools.chain.from_iterable((f"--{name}", text(getattr(settings, name).value)) for name in SCHEDULE),
            *(["--path_t", str(teacher.checkpoint)] if teacher else []),
            "--seed", str(trained_seed), "--trial", str(seed), "--wandb_group", args.wandb_group,
            # Evaluation is the eval_fewshot.py commands below, so training never opens val or test.
            "--no_final_eval", *device_flags(args)]
    extra: dict[str, tuple[str, ...]] = {}  # swept flags that are not weights, by name
    # Every weight given (a swept one's first value): the script refuses a command that leaves one out.
    probe = base + [*itertools.chain.from_iterable((flag, text(v[0] if isinstance(v := weights[n], tuple) else v))
                                                   for n, flag in stage.weight_flags.items())]
    for sweep in sweeps_of(stage, args):
        if not takes_sweep(stage, probe, sweep):
            continue
        if sweep.flag in stage.weight_flags:
            weights[sweep.flag] = sweep.values
        else:
            extra[sweep.flag] = sweep.values
        sources[sweep.flag] = f"--sweep {sweep.text}"
    swept = {**{n: tuple(map(text, v)) for n, v in weights.items() if isinstance(v, tuple)}, **extra}
    root = Path(args.output) / (f"gen{place.generation}" if place.generation > 1 else "") / (
        f"teacher{place.candidate}" if place.candidate else "")
    combinations = [dict(zip(swept, values)) for values in itertools.product(*swept.values())]

    def build(chosen: dict[str, str], model_path: Path) -> Run:
        values = {**{n: text(v) for n, v in weights.items()}, **chosen}
        argv = [*base, "--model_path", str(model_path),
                *itertools.chain.from_iterable((flag, values[n]) for n, flag in stage.weight_flags.items())]
        mine = tuple(tuple(group) for group in flag_groups(passthrough) if accepts(stage, argv, group))
        accepted = [token for group in mine for token in group]
        check_passthrough(stage, argv, accepted)
        # The architecture (a student's is its teacher's) decides the release flags, which come before the
        # passthrough flags so that those still override them (`-- --dropblock_mask full`); swept flags come last.
        architecture = teacher.model if teacher else models.architecture_of(vars(parse_training(
            stage, argv + accepted)))
        argv += [*release_flags(stage, architecture, args), *accepted,
                 *itertools.chain.from_iterable((f"--{n}", chosen[n]) for n in extra)]
        parsed = parse_training(stage, argv)
        if teacher:  # the architecture the student's script reads from the teacher's checkpoint
            train_distillation.resolve_architectures(parsed, teacher.model)
        script = SCRIPTS[stage.script]
        folder = script.run_name(parsed, dataset_profile(parsed.dataset, parsed.image_size or args.folder_image_size))
        checkpoint = engine.run.run_folder(parsed, folder) / engine.checkpoint.CHECKPOINT_NAME
        where = (f" generation {place.generation}" if place.generation > 1 else "") + (
            f" teacher candidate {place.candidate + 1} of {args.teachers} (seed {trained_seed})"
            if args.teachers > 1 and teaches(name, args) else "")
        sweep = "".join(f", {n} {chosen[n]} of {','.join(swept[n])} (swept [{sources[n]}])" for n in swept)
        images = images_processed(parsed.epochs, parsed.batch_size, args.train_images.value,
                                  stage.forwards_per_image, parsed.use_trainval, stage.forwarded_copies)
        per_epoch = args.train_images.value // parsed.batch_size * parsed.batch_size
        forwarded = None if parsed.use_trainval else parsed.epochs * per_epoch * stage.forwards_per_image
        evaluations = tuple(evaluation(args, checkpoint, split, shots) for split in ("val", "test")
                            for shots in PUBLISHED_EVAL.shots.value)
        return Run(stage.name, seed, f"{stage.name}{where} seed {seed}{sweep}: {images}",
                   [*python_command(stage.script, args.nproc_per_node), *argv], parsed.epochs, checkpoint,
                   models.architecture_of(vars(parsed)), replace(place, swept=tuple(chosen.items())),
                   evaluations=evaluations, passthrough=mine, teacher=teacher, forwarded=forwarded,
                   dropblock_mask=dropblock_mask_of(parsed), trained_seed=trained_seed)

    runs = [build(chosen, root) for chosen in combinations]
    if len({run.checkpoint for run in runs}) < len(runs):  # swept values its run-folder name does not say
        runs = [build(chosen, root / "_".join(f"{n}_{v}" for n, v in chosen.items())) for chosen in combinations]
    return runs


def teaches(name: str, args: argparse.Namespace) -> bool:
    """Whether method `name` teaches another method of the plan (so --teachers trains K of it per seed)."""
    return any(methods.get_method(m).teacher == name for m in planned_methods(args))


def planned_methods(args: argparse.Namespace) -> list[str]:
    """The methods of --methods and the teachers they need, teachers first."""
    needed = set(args.methods) | {methods.get_method(m).teacher for m in args.methods if methods.get_method(m).teacher}
    return [m for m in ALL_METHODS if m in needed]


def settle_group(args: argparse.Namespace, group: list[Run]) -> list[Run]:
    """A group's runs as the plan evaluates them: several are candidates (val for all, test for the chosen, or
    for all with --report all); one alone is evaluated on test when the table shows its method."""
    in_table = group[0].method in args.methods
    if len(group) > 1:
        return [replace(run, candidate=True, in_table=in_table) for run in group]
    run = group[0]
    tests = tuple(c for c in run.evaluations if option(c, "--split") == "test")
    return [replace(run, in_table=in_table, evaluations=tests if in_table else ())]


def teacher_of(args: argparse.Namespace, group: list[Run]) -> Teacher:
    """What the group's students distil from: its one run, or the link its selection points at the chosen one."""
    if len({run.model for run in group}) > 1:
        raise util.UsageError(f"{group[0].label}: its candidates are of different architectures; the students "
                              f"of a selection need one (sweep --model of a method that teaches none)")
    if len(group) == 1:
        return Teacher(group[0].checkpoint, group[0].model, train_id(args, group[0]))
    link = study.chosen_checkpoint(args.output, *group[0].group, engine.checkpoint.CHECKPOINT_NAME)
    return Teacher(link, group[0].model, selection_id(group))


def plan(args: argparse.Namespace, passthrough: list[str]) -> list[Run]:
    """Every run of the study in dependency order: per seed, each method after what teaches it (computed, for
    its checkpoint path, also when only the student is asked for), each generation after the one before."""
    runs = []
    for seed in args.seeds:
        teachers: dict[str, Teacher] = {}  # what teaches each method's students: its first generation
        for method in planned_methods(args):
            stage = methods.get_method(method)
            teacher = teachers[stage.teacher] if stage.teacher else None
            candidates = args.teachers if teaches(method, args) else 1
            first = 1 if stage.teacher else 0
            chain = args.generations if stage.born_again and method in args.methods else 1
            for generation in range(first, first + chain):
                group = settle_group(args, [run for k in range(candidates) for run in training_runs(
                    method, seed, args, passthrough, teacher, Place(generation, k))])
                runs += group
                teacher = teacher_of(args, group)
                teachers.setdefault(method, teacher)
    for sweep in args.sweep:
        if not any(dict(run.place.swept).get(sweep.flag) is not None for run in runs):
            raise util.UsageError(f"--sweep {sweep.text}: no method of the plan ({', '.join(planned_methods(args))}) "
                                  f"takes {sweep.flag}" + (f" ({sweep.method} is not in the plan)"
                                                           if sweep.method and sweep.method not in planned_methods(args)
                                                           else ""))
    for group in flag_groups(passthrough):
        if not any(tuple(group) in run.passthrough for run in runs):
            scripts = sorted({methods.get_method(run.method).script for run in runs})
            raise util.UsageError(f"{shlex.join(group)}: no training script of the plan accepts it "
                                  f"({', '.join(scripts)})")
    return runs


def print_plan(args: argparse.Namespace, runs: list[Run]) -> None:
    print(f"# {args.dataset}: {', '.join(m for m in ALL_METHODS if m in args.methods)}; seeds "
          f"{', '.join(map(str, args.seeds))}; {args.episodes} episodes per evaluation; W&B group {args.wandb_group}")
    if args.intended:
        print("# behaviours: the method as published (--intended): no release flags")
    else:
        quirks = "; ".join(f"{m}: {' '.join(RELEASE_BEHAVIOURS[m])}" for m in ALL_METHODS
                           if m in args.methods and m in RELEASE_BEHAVIOURS)
        print(f"# behaviours: the release's, which produced the paper's numbers (--intended: the method as "
              f"published): {' '.join(RELEASE_MASK)} on every ResNet-12 run" + (f"; {quirks}" if quirks else ""))
    print("# published settings [source]:")
    for method in (m for m in ALL_METHODS if m in args.methods):
        settings = settings_of(methods.get_method(method), args).by_name()
        print(f"#   {method}: " + "; ".join(f"{name} {text(v.value)} [{v.source}]" for name, v in settings.items()))
    ev = PUBLISHED_EVAL
    print(f"#   evaluation: {ev.n_ways.value}-way [{ev.n_ways.source}], shots {text(ev.shots.value)} "
          f"[{ev.shots.source}], {ev.n_queries.value} queries [{ev.n_queries.source}], "
          f"{ev.n_aug_support_samples.value} augmented support copies [{ev.n_aug_support_samples.source}], "
          f"classifier {ev.classifier.value} [{ev.classifier.source}]")
    print(f"#   train split: {args.train_images.value:,} images [{args.train_images.source}]")
    last_of_group = {run.group: run for run in runs}
    for run in runs:
        print(f"# {run.what}")
        print(shlex.join(run.command))
        for command in run.evaluations:
            if run.candidate and option(command, "--split") == "test" and args.report == "chosen":
                continue
            print(shlex.join(command))
        if run.candidate and run is last_of_group[run.group]:
            chosen = "each shot count's chosen one is evaluated on test" if run.in_table else "not evaluated on test"
            print(f"# val chooses between {sum(r.group == run.group for r in runs)} candidates "
                  f"({study.selection_record(args.output, *run.group)}): "
                  + ("all are evaluated on test (--report all)" if args.report == "all" and run.in_table else chosen)
                  + "; the best mean teaches")


# ----------------------------------------------------------------------------- running the plan

def finished_epochs(checkpoint: Path) -> int:
    """Epochs of the method's own training a run folder's checkpoint holds (0: none yet, or stopped in its
    first epoch or in a phase before it)."""
    return int(engine.checkpoint.load_checkpoint(checkpoint)["epoch"]) if checkpoint.is_file() else 0


def stopped_at(checkpoint: Path) -> str:
    """Where the run in a checkpoint stopped, as a person reads it: after an epoch, mid-epoch, or in a
    phase before the method's own (SSKD's teacher head)."""
    saved = engine.checkpoint.load_checkpoint(checkpoint)
    if saved.get("phase"):
        return f"in epoch {int(saved['phase']['epoch']) + 1} of its {saved['phase']['name']} phase"
    if saved.get("partial"):
        return f"in epoch {saved['partial']['epoch']}, step {saved['partial']['step']}"
    return f"after epoch {int(saved['epoch'])}"


def recorded_mask(checkpoint: Path) -> str | None:
    """The DropBlock mask a run folder's checkpoint was trained with (None: it records no arguments, as
    official checkpoints; a run from before --dropblock_mask existed trained the full mask)."""
    recorded = engine.checkpoint.training_args(engine.checkpoint.load_checkpoint(checkpoint))
    if not recorded:
        return None
    return dropblock_mask_of(argparse.Namespace(**recorded)) if "dropblock_mask" in recorded else "full"


def check_found_runs(runs: list[Run]) -> None:
    """A run folder's name is the same with either DropBlock mask: a checkpoint there trained with the other
    one would be skipped as done or resumed as this plan's run. Refused, before anything runs."""
    for run in runs:
        found = recorded_mask(run.checkpoint) if run.checkpoint.is_file() else None
        if found is not None and found != run.dropblock_mask:
            raise util.UsageError(f"{run.checkpoint}: trained with --dropblock_mask {found}, but this plan trains "
                                  f"{run.label} with {run.dropblock_mask}; give this plan another --output"
                                  f"{'' if run.dropblock_mask == 'full' else ' (or pass --intended)'}")


def option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def stage_log(checkpoint: Path, what: str) -> Path:
    """A stage's log, beside its run folder (not in it: the run folder is the training script's)."""
    folder = checkpoint.parent
    return folder.with_name(f"{folder.name}.{what}.log")


def evaluated(command: list[str], checkpoint: Path) -> bool:
    """Whether an evaluation's results file exists and is newer than the checkpoint it evaluates."""
    output = Path(option(command, "--output"))
    return output.is_file() and checkpoint.is_file() and output.stat().st_mtime >= checkpoint.stat().st_mtime


def train_id(args: argparse.Namespace, run: Run) -> str:
    """A training run's stage id: its run folder, relative to the plan's output."""
    return f"train {run.checkpoint.parent.relative_to(args.output).as_posix()}"


def selection_id(group: list[Run]) -> str:
    return f"select {study.selection_name(*group[0].group)}"


def group_label(group: list[Run]) -> str:
    """A selection's group in progress lines: method, generation past the first, table seed."""
    method, seed, generation = group[0].group
    return f"{method}{f' generation {generation}' if generation > 1 else ''} seed {seed}"


def train_stage(args: argparse.Namespace, run: Run, announce: bool) -> Stage:
    """Train `run`, resume it from its checkpoint, or skip it when its checkpoint holds every epoch."""
    def done() -> bool:
        epochs = finished_epochs(run.checkpoint)
        if epochs >= run.epochs and announce:
            print(f"== {run.label}: done ({run.checkpoint}, epoch {epochs})", flush=True)
        return epochs >= run.epochs

    def command() -> list[str]:
        # Any checkpoint is resumed, whatever it holds: one written in the first epoch or in a phase before
        # the method's own says epoch 0, and the script refuses a folder with a checkpoint unless resumed.
        if not run.checkpoint.is_file():
            print(f"== {run.label}: training", flush=True)
            return run.command
        print(f"== {run.label}: resuming (stopped {stopped_at(run.checkpoint)})", flush=True)
        return run.command + ["--resume"]

    deps = (run.teacher.stage,) if run.teacher else ()
    return Stage(train_id(args, run), run.label, deps, done, command, stage_log(run.checkpoint, "train"))


def eval_stage(args: argparse.Namespace, run: Run, command: list[str]) -> Stage:
    split, shots = option(command, "--split"), option(command, "--n_shots")
    folder = run.checkpoint.parent.relative_to(args.output).as_posix()
    return Stage(f"eval {folder} {split} {shots}shot", f"{run.label}: {split} {shots}-shot", (train_id(args, run),),
                 lambda: evaluated(command, run.checkpoint), lambda: command,
                 stage_log(run.checkpoint, f"{split}_{shots}shot"))


def selection_stage(args: argparse.Namespace, group: list[Run], deps: tuple[str, ...]) -> Stage:
    """Choose between the group's candidates on their val results (scripts/study.py), in this process."""
    method, seed, generation = group[0].group
    record = study.selection_record(args.output, method, seed, generation)
    link = study.chosen_checkpoint(args.output, method, seed, generation, engine.checkpoint.CHECKPOINT_NAME)
    candidates = [Candidate(run.checkpoint, dict(run.place.swept), run.trained_seed) for run in group]
    shots = tuple(PUBLISHED_EVAL.shots.value)
    label = f"{group_label(group)}: val's choice"
    what = {"method": method, "seed": seed, "generation": generation, "dataset": args.dataset,
            "episodes": f"{args.episodes} val episodes per shot count, the same for every candidate "
                        f"(eval_fewshot.py --split val)"}

    def action() -> None:
        content = study.select(candidates, shots, what=what, record=record, link=link)
        scores = {c["checkpoint"]: c for c in content["candidates"]}

        def named(path: str, shot: str | None = None) -> str:
            value = scores[path]["val"][shot] if shot else scores[path]["mean"]
            return f"{scores[path]['folder']} (val {value:.2f})"

        picks = "; ".join(f"{k}-shot {named(content['chosen'][str(k)], str(k))}" for k in shots)
        print(f"== {label}: {picks}; teaches: {named(content['teacher'])}, out of {len(candidates)} ({record})",
              flush=True)

    return Stage(selection_id(group), label, deps, lambda: study.selection_done(record, candidates, shots, link),
                 lambda: [], record.with_name(f"{record.stem}.select.log"), action)


def chosen_test_stage(args: argparse.Namespace, group: list[Run], shots: int, deps: tuple[str, ...]) -> Stage:
    """The test evaluation of the candidate val chose for `shots`, read from the selection's record."""
    record = study.selection_record(args.output, *group[0].group)

    def chosen() -> Run | None:
        content = study.read_record(record)
        path = content["chosen"].get(str(shots)) if content else None
        return next((run for run in group if str(run.checkpoint) == path), None)

    def test_command(run: Run) -> list[str]:
        return next(c for c in run.evaluations
                    if option(c, "--split") == "test" and option(c, "--n_shots") == str(shots))

    def done() -> bool:
        run = chosen()
        return run is not None and evaluated(test_command(run), run.checkpoint)

    def command() -> list[str]:
        run = chosen()
        if run is None:
            raise util.UsageError(f"{record}: no choice for {shots}-shot among this plan's candidates")
        print(f"== {run.label}: test {shots}-shot (val's choice)", flush=True)
        return test_command(run)

    name = study.selection_name(*group[0].group)
    return Stage(f"test {name} {shots}shot", f"{group_label(group)}: test {shots}-shot of val's choice", deps, done,
                 command, record.with_name(f"{name}.test_{shots}shot.log"))


def stages_of(args: argparse.Namespace, runs: list[Run], announce: bool = True) -> list[Stage]:
    """The plan as stages in dependency order: each training run after what teaches it, its evaluations after it;
    a selection's candidates on val, the selection after all of them, then the chosen ones' test evaluations
    (--report all: every candidate's) and the students the chosen one teaches."""
    stages = []
    for _, grouped in itertools.groupby(runs, key=lambda r: r.group):
        group = list(grouped)
        stages += [train_stage(args, run, announce) for run in group]
        if not group[0].candidate:
            stages += [eval_stage(args, run, command) for run in group for command in run.evaluations]
            continue
        vals = [eval_stage(args, run, c) for run in group for c in run.evaluations if option(c, "--split") == "val"]
        select = selection_stage(args, group, tuple(v.id for v in vals))
        stages += [*vals, select]
        if not group[0].in_table:
            continue
        if args.report == "all":
            stages += [eval_stage(args, run, c) for run in group for c in run.evaluations
                       if option(c, "--split") == "test"]
        else:
            stages += [chosen_test_stage(args, group, shots, (select.id,)) for shots in PUBLISHED_EVAL.shots.value]
    return stages


def visible_gpus() -> list[str]:
    """The GPUs this process sees, as CUDA_VISIBLE_DEVICES names them (indices when it is not set)."""
    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [n.strip() for n in listed.split(",")] if listed else [str(i) for i in range(count)]
    return names[:count]


def slots_of(args: argparse.Namespace) -> list[plan_scheduler.Slot]:
    """Where the stages run: one slot per GPU group (--gpus, default every visible GPU, --nproc_per_node GPUs
    each), one on the CPU; --parallel sets how many stages share them."""
    device = util.resolve_device(args.device)
    pinned = device.type == "cuda" and device.index is None  # --device cuda:N keeps every stage on that GPU
    gpus = None
    if args.gpus is not None:
        if device.type != "cuda" or not pinned:
            raise util.UsageError(f"--gpus {','.join(map(str, args.gpus))}: needs CUDA and not --device cpu or cuda:N "
                                  f"(device here: {device})")
        visible = visible_gpus()
        bad = [g for g in args.gpus if g < 0 or g >= len(visible)]
        if bad or len(set(args.gpus)) < len(args.gpus) or not args.gpus:
            raise util.UsageError(f"--gpus {','.join(map(str, args.gpus))}: expected distinct GPUs of "
                                  f"0..{len(visible) - 1}")
        gpus = [visible[g] for g in args.gpus]
    elif pinned:
        gpus = visible_gpus()
    if gpus is not None and args.nproc_per_node > len(gpus):
        raise util.UsageError(f"--nproc_per_node {args.nproc_per_node}: more than the {len(gpus)} GPU(s) to run on")
    parallel = args.parallel or (len(gpus) // args.nproc_per_node if gpus else 1)
    return plan_scheduler.make_slots(parallel, gpus, args.nproc_per_node)


def execute(args: argparse.Namespace, runs: list[Run]) -> None:
    """Run every stage not yet done, side by side where slots allow; a failure stops its dependants only."""
    stages = stages_of(args, runs)
    if args.stage is not None:
        stages = [one_stage(stages, args.stage)]
    outcome = plan_scheduler.Scheduler(stages, slots_of(args) if args.stage is None else [plan_scheduler.Slot("main")],
                                       echo=lambda line: print(line, flush=True)).run()
    resume = "finished runs are kept, the same command resumes the plan"
    if outcome.stopped_by is not None:
        raise util.Preempted(f"{signal.Signals(outcome.stopped_by).name} during {'; '.join(outcome.failed.values())}; "
                             f"{resume}", 128 + outcome.stopped_by)
    if outcome.failed:
        blocked = f" ({len(outcome.blocked)} stage(s) that need it not run)" if outcome.blocked else ""
        raise util.UsageError(f"{'; '.join(outcome.failed.values())}; {resume}{blocked}")


def one_stage(stages: list[Stage], wanted: str) -> Stage:
    """--stage ID: that stage alone, once the stages it needs are done (SLURM's afterok sees to it)."""
    by_id = {s.id: s for s in stages}
    if wanted not in by_id:
        raise util.UsageError(f"--stage {wanted!r}: not a stage of this plan (--dry_run --submit slurm lists them)")
    waiting = [d for d in by_id[wanted].deps if not by_id[d].done()]
    if waiting:
        raise util.UsageError(f"--stage {wanted!r}: waits for {', '.join(waiting)}, not finished")
    return replace(by_id[wanted], deps=())


def check_data(args: argparse.Namespace) -> None:
    """Fail in one line before any training when the dataset's files are not where --data_root says."""
    spec = DATASETS.get(args.dataset)
    folder = resolve_dataset_folder(spec, args.data_root)
    for split in ("train", "val", "test"):
        if not (folder / spec.marker(split)).exists():
            raise util.UsageError(f"{folder / spec.marker(split)}: not found (the {split} split of {args.dataset})")


def first_image_size(data_root: str) -> int:
    """The side of a `folder` dataset's first training image: its profile (and run names) depend on it."""
    from PIL import Image

    first = next(p for p in sorted((Path(data_root) / "train").rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES)
    with Image.open(first) as image:
        return image.size[0]


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def count_folder_images(data_root: str) -> Sourced[int]:
    """A `folder` dataset's training images, counted (it has no published size)."""
    train = Path(data_root) / "train"
    if not train.is_dir():
        raise util.UsageError(f"{train}: not found (--dataset folder reads --data_root/train/<class>/*.png|jpg)")
    return Sourced(sum(1 for p in train.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES), f"counted in {train}")


def check_seeds(seeds: list[int]) -> None:
    shown = ",".join(map(str, seeds))
    if not seeds or len(set(seeds)) < len(seeds):
        raise util.UsageError(f"--seeds {shown}: expected distinct seeds")
    if any(seed < 0 for seed in seeds):
        raise util.UsageError(f"--seeds {shown}: expected non-negative integers")


def check_data_root(args: argparse.Namespace) -> None:
    """A --data_root that does not exist stops a run in one line; a dry run says so in one line and plans on."""
    if not (args.dry_run or args.wandb_sweep):
        require_data_root(args.data_root)


def require_data_root(data_root: str) -> None:
    if not Path(data_root).is_dir():
        raise util.UsageError(f"{data_root}: --data_root folder not found")


def note_missing_data(args: argparse.Namespace) -> None:
    """A dry run plans without the data, but says in one line what the real run would refuse."""
    try:
        require_data_root(args.data_root)
        if args.dataset != "folder":  # a folder dataset's images were counted to plan it
            check_data(args)
    except util.UsageError as e:
        print(f"note: {e}; the plan below is printed without its data (the real run stops there)", file=sys.stderr)


def check_args(args: argparse.Namespace) -> None:
    """Every flag of the plan itself, each a one-line error, before anything is planned or printed."""
    if args.dataset not in TRAIN_IMAGES and args.dataset != "folder":
        raise util.UsageError(f"--dataset {args.dataset}: no published settings; known: {', '.join(TRAIN_IMAGES)}, "
                              f"and folder (small-scale settings)")
    unknown = [m for m in args.methods if m not in ALL_METHODS]
    if unknown or not args.methods:
        raise util.UsageError(f"--methods {','.join(args.methods)}: expected some of {','.join(ALL_METHODS)}")
    check_seeds(args.seeds)
    util.check_positive(vars(args), "episodes", "nproc_per_node", "generations", "teachers")
    for sweep in args.sweep:
        if sweep.flag in PLAN_OWNED:
            raise util.UsageError(f"--sweep {sweep.text}: --{sweep.flag} is the plan's to set (--dataset, "
                                  f"--data_root, --seeds, --output)")
        if sweep.method is not None and sweep.method not in ALL_METHODS:
            raise util.UsageError(f"--sweep {sweep.text}: {sweep.method} is not a method; known: "
                                  f"{','.join(ALL_METHODS)}")
    if args.teachers > 1 and max(args.seeds) >= study.CANDIDATE_SEED_STRIDE:
        raise util.UsageError(f"--teachers {args.teachers}: teacher candidates train with seeds S + "
                              f"{study.CANDIDATE_SEED_STRIDE} k, so --seeds must be below "
                              f"{study.CANDIDATE_SEED_STRIDE}")
    if args.parallel is not None:
        util.check_positive(vars(args), "parallel")
    if args.submit and args.stage:
        raise util.UsageError("--stage with --submit: a job runs one stage, the submission all of them")
    if args.submit is None:  # a login node submitting jobs may have no GPU: each job checks its own
        util.resolve_device(args.device)  # --device cuda without a usable GPU
        slots_of(args)  # --gpus and --nproc_per_node against the GPUs here
    check_data_root(args)  # a dry run notes it once the plan is known to be valid


def main() -> None:
    args, passthrough = get_args_parser().parse_known_args()
    if passthrough[:1] == ["--"]:
        passthrough = passthrough[1:]
    check_args(args)
    args.folder_image_size = None
    if args.dataset == "folder":
        args.train_images = count_folder_images(args.data_root)
        args.folder_image_size = first_image_size(args.data_root)
    else:
        args.train_images = TRAIN_IMAGES[args.dataset]
    args.wandb_group = args.wandb_group or f"reproduce_{args.dataset}_{datetime.date.today().isoformat()}"
    runs = plan(args, passthrough)
    if args.wandb_sweep:
        for path in study.write_wandb_sweeps(args, runs):
            print(f"wrote {path}: wandb sweep {path}")
        return
    if not args.dry_run:
        check_data(args)
        check_found_runs(runs)
    else:
        note_missing_data(args)
    if args.submit == "slurm":
        stages = stages_of(args, runs, announce=False)
        try:
            slurm_submit.submit(args, stages, slurm_requests(args, runs, stages), job_argv(args, passthrough),
                                [sys.executable, "-m", "eval.table", args.output], {"PYTHONPATH": str(REPO)})
        except slurm_submit.SubmitError as e:
            raise util.UsageError(str(e)) from None
        return
    if args.status:
        stages = stages_of(args, runs, announce=False)
        print(f"plan: {sum(s.done() for s in stages)} of {len(stages)} stages done ({args.output})")
        return
    if args.stage is None:
        print_plan(args, runs)
        print_totals(args, runs, stages_of(args, runs, announce=False))
    if args.dry_run:
        return
    if args.stage is not None:  # a SLURM job of one stage: the stage's script locks its own run folder
        execute(args, runs)
        return
    # One plan at a time writes an output folder: a second launch would start the same stages again beside
    # the first's (each stage's script also refuses a second writer of its run folder).
    with FolderLock(args.output, name=".plan.lock", what="plan output folder"):
        execute(args, runs)
    print(f"== done: python -m eval.table {args.output}")


def print_totals(args: argparse.Namespace, runs: list[Run], stages: list[Stage]) -> None:
    """The plan's size, and its training time projected from the images it forwards."""
    selections = sum(s.action is not None for s in stages)
    forwarded = [run.forwarded for run in runs if run.forwarded is not None]
    unknown = len(runs) - len(forwarded)
    hours = sum(forwarded) / args.images_per_s / 3600
    print(f"# {len(stages)} stages: {len(runs)} training runs, {len(stages) - len(runs) - selections} evaluations, "
          f"{selections} selections; projected training time {hours:.1f} GPU-hours at --images_per_s "
          f"{args.images_per_s:g} forwarded images/s per GPU (an assumption; bench/gpu_check.sh measures it)"
          + (f", {unknown} run(s) of unknown size (--use_trainval)" if unknown else ""))


def slurm_requests(args: argparse.Namespace, runs: list[Run], stages: list[Stage]) -> dict[str, slurm_submit.Request]:
    """Each stage's job: a training run's GPUs (--nproc_per_node) and its projected time, an evaluation one GPU."""
    gpus = 0 if args.device == "cpu" else 1
    requests = {s.id: slurm_submit.eval_request(args, gpus) for s in stages}
    # A selection reads a few JSON files: no GPU, one CPU, minutes.
    requests.update({s.id: slurm_submit.Request(0, 1, "2G", "00:10:00") for s in stages if s.action is not None})
    requests.update({train_id(args, r): slurm_submit.train_request(args, gpus * args.nproc_per_node, r.forwarded)
                     for r in runs})
    return requests


def job_argv(args: argparse.Namespace, passthrough: list[str]) -> list[str]:
    """This plan's command line for a job: the same plan (its W&B group fixed now, not on the day a job starts),
    one stage of which the job runs with --stage."""
    return [sys.executable, os.path.relpath(REPO / "scripts" / "reproduce.py"), "--dataset", args.dataset,
            "--data_root", args.data_root, "--methods", ",".join(args.methods),
            "--seeds", ",".join(map(str, args.seeds)),
            "--episodes", str(args.episodes), "--output", args.output, "--wandb_group", args.wandb_group,
            "--nproc_per_node", str(args.nproc_per_node), *device_flags(args),
            *(["--intended"] if args.intended else []), *study_argv(args),
            *(["--", *passthrough] if passthrough else [])]


def study_argv(args: argparse.Namespace) -> list[str]:
    """The study's own flags, as a job repeats them."""
    return [*itertools.chain.from_iterable(("--sweep", s.text) for s in args.sweep),
            *(["--release_sweeps"] if args.release_sweeps else []), "--generations", str(args.generations),
            "--teachers", str(args.teachers), "--report", args.report]


if __name__ == "__main__":
    util.run_cli(main)
