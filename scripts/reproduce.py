"""Reproduce one of the paper's tables : every method, seed and few-shot evaluation of one dataset,
each command with every published setting of its method (methods/) written out, so that it stays right
when a script's default changes.

    python scripts/reproduce.py --dataset CIFAR-FS --data_root DIR --dry_run
    python scripts/reproduce.py --dataset FC100 --data_root DIR --dry_run -- --epochs 1    # a smoke run

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
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the stage scripts and the packages live at the repository root

import engine.args  # noqa: E402
import engine.checkpoint  # noqa: E402
import engine.run  # noqa: E402
import methods  # noqa: E402
import train_distillation  # noqa: E402
import train_supervised_ssl  # noqa: E402
import util  # noqa: E402
from dataset.catalog import DATASETS, resolve_dataset_folder  # noqa: E402
from dataset.profiles import dataset_profile  # noqa: E402
from methods.settings import PUBLISHED_EVAL, TRAIN_IMAGES, PublishedSettings, Sourced  # noqa: E402

# The training script of each method, by the file name the method names.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
SCRIPTS: dict[str, ModuleType] = {Path(m.__file__).name: m for m in (train_supervised_ssl, train_distillation)}
ALL_METHODS = tuple(methods.method_names())  # teachers before their students
PAPER_METHODS = tuple(m for m in ALL_METHODS if methods.get_method(m).in_paper)  # the paper's rows


# The settings every training command writes out, by their flag names (shared by both scripts).
SCHEDULE = ("epochs", "lr_decay_epochs", "learning_rate", "lr_decay_rate", "batch_size", "weight_decay", "momentum")
# What identifies a run of the plan; passthrough flags must leave it alone.
PLAN_OWNED = ("dataset", "data_root", "seed", "trial", "model_path", "path_t")
@dataclass(frozen=True)
class Run:
    """One training run of the plan and the evaluations of its checkpoint."""
    method: str
    seed: int
    what: str  # the comment line above it: method, seed, swept values, images processed
    command: list[str]
    epochs: int
    checkpoint: Path
    model: str  # the architecture it trains (a student's teacher has the same)
    swept: bool = False  # one candidate of a sweep: evaluated on val, and on test only if val picks it
    evaluations: tuple[list[str], ...] = ()
    passthrough: tuple[tuple[str, ...], ...] = ()  # the passthrough flags (with their values) its script accepted

    @property
    def label(self) -> str:
        """The run in progress and error lines: method, seed and swept values, without the image count."""
        return self.what.split(":")[0]


def get_args_parser() -> argparse.ArgumentParser:
    # No abbreviations: `--seed 3` must pass through to the training scripts, not become --seeds.
    parser = util.ArgumentParser(description="Reproduce one dataset's table of the paper; other flags go to every training "
                                     "command that accepts them", allow_abbrev=False)
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
    parser.add_argument("--amp", default=None, choices=["off", "auto", "bf16", "fp16"], help="autocast precision")
    parser.add_argument("--wandb_group", default=None,
                        help="W&B group of every run (default: reproduce_<dataset>_<date>)")
    parser.add_argument("--nproc_per_node", type=int, default=1,
                        help="train each run with torchrun on N processes of this node (N GPUs; --batch_size stays the "
                             "global batch); evaluations run in one process")
    parser.add_argument("--dry_run", action="store_true", help="print every command, one a line, and run nothing")
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
    """Whether the method's script knows the flag of `group` (a known flag with a bad value counts as known:
    parse_training then names the value)."""
    parser = SCRIPTS[method.script].get_args_parser()
    parser.exit_on_error = False
    try:
        _, unknown = parser.parse_known_args(planned + group)
    except argparse.ArgumentError:
        return True
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


def training_runs(name: str, seed: int, args: argparse.Namespace, passthrough: list[str],
                  teacher: Run | None) -> list[Run]:
    """The runs of method `name` for one seed: one per combination of swept values (a sweep is decided on val)."""
    stage = methods.get_method(name)
    settings = settings_of(stage, args)
    weights = {name: settings.weights[name].value for name in stage.weight_flags}
    swept = [name for name, value in weights.items() if isinstance(value, tuple)]
    runs = []
    for values in itertools.product(*(weights[name] for name in swept)):
        chosen = {**weights, **dict(zip(swept, values))}
        argv = [*stage.mode_flags, "--dataset", args.dataset, "--data_root", args.data_root,
                *itertools.chain.from_iterable((f"--{name}", text(getattr(settings, name).value)) for name in SCHEDULE),
                *itertools.chain.from_iterable((flag, text(chosen[name])) for name, flag in stage.weight_flags.items()),
                *(["--path_t", str(teacher.checkpoint)] if teacher else []),
                "--model_path", args.output, "--seed", str(seed), "--trial", str(seed),
                "--wandb_group", args.wandb_group,
                # Evaluation is the eval_fewshot.py commands below, so training never opens val or test.
                "--no_final_eval", *device_flags(args)]
        mine = tuple(tuple(group) for group in flag_groups(passthrough) if accepts(stage, argv, group))
        accepted = [token for group in mine for token in group]
        check_passthrough(stage, argv, accepted)
        argv += accepted
        parsed = parse_training(stage, argv)
        if teacher:  # the architecture the student's script reads from the teacher's checkpoint
            train_distillation.resolve_architectures(parsed, teacher.model)
        script = SCRIPTS[stage.script]
        folder = script.run_name(parsed, dataset_profile(parsed.dataset, parsed.image_size or args.folder_image_size))
        checkpoint = engine.run.run_folder(parsed, folder) / engine.checkpoint.CHECKPOINT_NAME
        # Swept runs are also evaluated on val, which alone decides between them.
        splits = ("val", "test") if swept else ("test",)
        sweep = "".join(f", {n} {chosen[n]} of {text(weights[n])} (swept, decided on val)" for n in swept)
        images = images_processed(parsed.epochs, parsed.batch_size, args.train_images.value,
                                  stage.forwards_per_image, parsed.use_trainval, stage.forwarded_copies)
        runs.append(Run(stage.name, seed, f"{stage.name} seed {seed}{sweep}: {images}",
                        [*python_command(stage.script, args.nproc_per_node), *argv], parsed.epochs,
                        checkpoint, engine.checkpoint.architecture_of(vars(parsed)),
                        bool(swept), tuple(evaluation(args, checkpoint, split, shots) for split in splits
                                           for shots in PUBLISHED_EVAL.shots.value), mine))
    return runs


def plan(args: argparse.Namespace, passthrough: list[str]) -> list[Run]:
    """Every run of the table in dependency order: per seed, each method after the method that trains its teacher
    (computed, for its checkpoint path, also when only the student is asked for)."""
    needed = set(args.methods) | {methods.get_method(m).teacher for m in args.methods if methods.get_method(m).teacher}
    runs = []
    for seed in args.seeds:
        trained: dict[str, Run] = {}  # each method's first run: the teacher of the methods distilling it
        for method in (m for m in ALL_METHODS if m in needed):
            teacher = methods.get_method(method).teacher
            method_runs = training_runs(method, seed, args, passthrough, trained[teacher] if teacher else None)
            # A swept teacher would need the sweep decided first; no published teacher is swept.
            trained[method] = method_runs[0]
            if method not in args.methods:  # a teacher the table does not show: trained (or found done), not evaluated
                method_runs = [replace(run, evaluations=()) for run in method_runs]
            runs += method_runs
    for group in flag_groups(passthrough):
        if not any(tuple(group) in run.passthrough for run in runs):
            scripts = sorted({methods.get_method(run.method).script for run in runs})
            raise util.UsageError(f"{shlex.join(group)}: no training script of the plan accepts it "
                                  f"({', '.join(scripts)})")
    return runs


def print_plan(args: argparse.Namespace, runs: list[Run]) -> None:
    print(f"# {args.dataset}: {', '.join(m for m in ALL_METHODS if m in args.methods)}; seeds "
          f"{', '.join(map(str, args.seeds))}; {args.episodes} episodes per evaluation; W&B group {args.wandb_group}")
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
    for run in runs:
        print(f"# {run.what}")
        print(shlex.join(run.command))
        if run.swept:
            print("# val decides the sweep; the test evaluations run for its winner only")
        for command in run.evaluations:
            print(shlex.join(command))


# ----------------------------------------------------------------------------- running the plan

def finished_epochs(checkpoint: Path) -> int:
    """Epochs a run folder's checkpoint holds (0: none yet)."""
    return int(engine.checkpoint.load_checkpoint(checkpoint)["epoch"]) if checkpoint.is_file() else 0


def run_command(command: list[str], what: str) -> None:
    """Run one stage in the foreground (its progress bars show on a terminal); a failure stops the plan.
    SIGTERM reaches every process of a SLURM job step, and Ctrl-C's SIGINT the terminal's whole process
    group: the stage stops itself after its step with a checkpoint, so the plan waits for it and then
    stops too, instead of dying first (SLURM would then end the step and kill the stage mid-checkpoint)."""
    print(f"$ {shlex.join(command)}", flush=True)
    received: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in STOP_SIGNALS}
    try:
        code = subprocess.run(command).returncode
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    script = next(Path(c).name for c in command if c.endswith(".py"))
    if received:
        raise util.Preempted(f"{signal.Signals(received[0]).name} during {what} ({script} exited with code {code}); "
                             f"finished runs are kept, the same command resumes the plan", 128 + received[0])
    if code != 0:
        raise util.UsageError(f"{what}: {script} exited with code {code}; finished runs are kept, "
                              f"the same command resumes the plan")


def option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def train(run: Run) -> None:
    """Train `run`, resume it from its checkpoint, or skip it when its checkpoint holds every epoch."""
    done = finished_epochs(run.checkpoint)
    if done >= run.epochs:
        print(f"== {run.label}: done ({run.checkpoint}, epoch {done})", flush=True)
        return
    print(f"== {run.label}: {'resuming after epoch ' + str(done) if done else 'training'}", flush=True)
    run_command(run.command + (["--resume"] if done else []), run.label)


def evaluate_run(run: Run, split: str) -> list[dict]:
    """Run `run`'s evaluations of `split` whose results are missing or older than the checkpoint; return them all."""
    results = []
    for command in (c for c in run.evaluations if option(c, "--split") == split):
        output = Path(option(command, "--output"))
        if not output.is_file() or output.stat().st_mtime < run.checkpoint.stat().st_mtime:
            run_command(command, f"{run.label}: {split} {option(command, '--n_shots')}-shot")
        results.append(json.loads(output.read_text()))
    return results


def val_accuracy(results: list[dict]) -> float:
    """The sweep criterion: mean val accuracy over the shots evaluated (1 and 5)."""
    return sum(r["results"][0]["mean"] for r in results) / len(results)


def execute(args: argparse.Namespace, runs: list[Run]) -> None:
    """Train and evaluate every run in order; a sweep is decided on val, and only its winner sees test."""
    for key, group in itertools.groupby(runs, key=lambda r: (r.method, r.seed)):
        group = list(group)
        for run in group:
            train(run)
        if not group[0].swept:
            for run in group:
                evaluate_run(run, "test")
            continue
        scores = {run.checkpoint: val_accuracy(evaluate_run(run, "val")) for run in group}
        winner = max(group, key=lambda r: scores[r.checkpoint])
        record = {"method": key[0], "seed": key[1], "criterion": "mean val accuracy, 1- and 5-shot",
                  "candidates": {str(r.checkpoint): scores[r.checkpoint] for r in group}, "winner": str(winner.checkpoint)}
        sweep_file = Path(args.output) / f"sweep_{key[0]}_seed_{key[1]}.json"
        with util.atomic_write(sweep_file) as tmp:
            tmp.write_text(json.dumps(record, indent=2) + "\n")
        print(f"== {key[0]} seed {key[1]}: val picks {winner.checkpoint.parent.name} ({scores[winner.checkpoint]:.2f})")
        evaluate_run(winner, "test")


def check_data(args: argparse.Namespace) -> None:
    """Fail in one line before any training when the dataset's files are not where --data_root says."""
    spec = DATASETS[args.dataset]
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


def main() -> None:
    args, passthrough = get_args_parser().parse_known_args()
    if passthrough[:1] == ["--"]:
        passthrough = passthrough[1:]
    args.folder_image_size = None
    if args.dataset == "folder":
        args.train_images = count_folder_images(args.data_root)
        args.folder_image_size = first_image_size(args.data_root)
    elif args.dataset in TRAIN_IMAGES:
        args.train_images = TRAIN_IMAGES[args.dataset]
    else:
        raise util.UsageError(f"--dataset {args.dataset}: no published settings; known: {', '.join(TRAIN_IMAGES)}, "
                              f"and folder (small-scale settings)")
    unknown = [m for m in args.methods if m not in ALL_METHODS]
    if unknown or not args.methods:
        raise util.UsageError(f"--methods {','.join(args.methods)}: expected some of {','.join(ALL_METHODS)}")
    if not args.seeds or len(set(args.seeds)) < len(args.seeds):
        raise util.UsageError(f"--seeds {','.join(map(str, args.seeds))}: expected distinct seeds")
    util.check_positive(args, "episodes", "nproc_per_node")
    args.wandb_group = args.wandb_group or f"reproduce_{args.dataset}_{datetime.date.today().isoformat()}"
    runs = plan(args, passthrough)
    if not args.dry_run:
        check_data(args)
    print_plan(args, runs)
    if args.dry_run:
        return
    Path(args.output).mkdir(parents=True, exist_ok=True)
    execute(args, runs)
    print(f"== done: python -m eval.table {args.output}")


if __name__ == "__main__":
    util.run_cli(main)
