"""Distillation: a student trained against the frozen teacher of --path_t by one of the methods
registered for this script in methods/, chosen by --objective (default: SKD's generation 1).

This file is wiring only: it reads and checks the teacher, and each method owns its flags, its
student, its step and its checks (`python train_distillation.py --help` lists them by method).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from torch import nn

from published.profiles import DatasetProfile, Normalization
from models import Backbone, list_models
import engine.args
from engine.args import Unset
import engine.checkpoint
import engine.config
import engine.data
import engine.official_flags
import engine.run
import engine.trained
import methods
import published
import runtime.artifacts
import util

SCRIPT = methods.DISTILL_SCRIPT


def get_args_parser() -> argparse.ArgumentParser:
    parser = methods.MethodArgumentParser(script=SCRIPT,
                                          description="SKD generation 1: self-supervised knowledge distillation")
    g = parser.add_argument_group("student and teacher")
    g.add_argument("--model_s", choices=list_models(), help="student architecture (default: --model_t's)")
    g.add_argument("--model_t", choices=list_models(),
                   help="teacher architecture (default: the one --path_t records; resnet12_ssl where it records none)")
    g.add_argument("--path_t", required=True, help="the teacher's checkpoint (checkpoint.pth of a Gen-0 run)")
    g.add_argument("--kd_T", type=float, default=Unset(2.0),
                   help="distillation temperature T (--objective skd and rfs; not given: the method's published T)")
    g.add_argument("--allow_teacher_mismatch", action="store_true",
                   help="accept a teacher trained on another dataset or image size, or by another kind of method, "
                        "than this run needs")
    methods.add_method_args(parser, SCRIPT)
    engine.args.add_training_script_args(parser, learning_rate=0.001, lr_decay_epochs="60", tags="gen1,skd")
    engine.official_flags.add_official_flags(parser, SCRIPT)
    return parser


def run_name(args: argparse.Namespace, profile: DatasetProfile) -> str:
    """The official run-folder name: S_<student>_T_<teacher>_<dataset>_<the method's part>_trans_<A|D>[_cosine]
    _trial_<t> (SKD Gen-1's part: kd_T_<T>_beta_<beta>[_quirks])."""
    part = methods.select_method(SCRIPT, args).run_name_part(args)
    return (f"S_{args.model_s}_T_{args.model_t}_{args.dataset}_{part}"
            f"_trans_{profile.transform_letter}{engine.args.run_name_suffix(args)}")


def load_teacher(args: argparse.Namespace, checkpoint: dict, image_size: int, device) -> Backbone:
    """The model of --path_t (`checkpoint` is its content), frozen and in eval mode."""
    teacher = engine.checkpoint.model_from_checkpoint(args.model_t, args.path_t, checkpoint, args.dataset, image_size)
    teacher.requires_grad_(False)
    return util.to_device(teacher, device).eval()


def check_teacher_matches_run(args: argparse.Namespace, method: type[methods.DistillationMethod], checkpoint: dict,
                              image_size: int | None) -> None:
    """A given --dataset or --image_size (`image_size`) other than the teacher's, or a teacher trained by a
    method of the other kind (with or without labels) than `method` distils, is almost always a wrong flag or
    --path_t: refused in one line naming the teacher's value and the flag that gives it."""
    if args.allow_teacher_mismatch:
        return
    recorded = engine.trained.trained_with(checkpoint)
    take = "(or leave it out to take the teacher's)"
    if recorded["dataset"] is not None and args.dataset != recorded["dataset"]:
        raise util.UsageError(f"--dataset {args.dataset}: the teacher {args.path_t} was trained on "
                              f"{recorded['dataset']}; give --dataset {recorded['dataset']} {take}")
    if recorded["image_size"] is not None and image_size != recorded["image_size"]:
        raise util.UsageError(f"--image_size {image_size}: the teacher {args.path_t} was trained on "
                              f"{recorded['image_size']} px images; give --image_size {recorded['image_size']} {take}")
    # DVP distils features from a label-free prior whose classifier never trained; the other methods distil
    # a classifier's logits, so each needs its own kind of teacher.
    train_args = engine.checkpoint.training_args(checkpoint)
    if train_args.get("objective") is None:  # checkpoints of the official release record no method
        return
    trained_by = methods.method_of_training_args(train_args)
    if trained_by.uses_labels != method.teacher_uses_labels:
        expected = methods.get_method(method.teacher)
        needed = (f"a teacher trained with labels, not {trained_by.kind}" if method.teacher_uses_labels
                  else f"{expected.kind} ({expected.script} {' '.join(expected.mode_flags)})")
        raise util.UsageError(f"--path_t {args.path_t}: --objective {args.objective} needs {needed}; the teacher was "
                              f"trained with --objective {train_args['objective']}; pass --allow_teacher_mismatch if "
                              f"that is intended")


def check_teacher_normalization(args: argparse.Namespace, checkpoint: dict, norm: Normalization) -> None:
    """A given --normalization whose constants (`norm`) are not the ones the teacher was trained with feeds
    the frozen teacher inputs it never saw: refused in one line, as check_teacher_matches_run refuses."""
    recorded = engine.checkpoint.checkpoint_normalization(checkpoint)
    if args.allow_teacher_mismatch or args.normalization == "auto" or recorded is None:
        return
    if not (np.allclose(norm.mean, recorded.mean) and np.allclose(norm.std, recorded.std)):
        raise util.UsageError(f"--normalization {args.normalization}: the teacher {args.path_t} was trained with "
                              f"{describe_normalization(recorded)}; leave --normalization out (or give auto) to "
                              f"take the teacher's")


def describe_normalization(norm: Normalization) -> str:
    return f"mean ({', '.join(f'{v:.4g}' for v in norm.mean)}), std ({', '.join(f'{v:.4g}' for v in norm.std)})"


def take_teacher_settings(args: argparse.Namespace, checkpoint: dict) -> list[str]:
    """--dataset, --data_root and --image_size where not given: what the teacher (`checkpoint`) records,
    read as eval_fewshot.py reads a checkpoint; the data root only on the teacher's dataset, whose files it
    names. Returns a `setting:` line for each value taken, and for the teacher's normalisation, which
    --normalization auto uses (teacher_for_run). Official checkpoints record none: the defaults stay."""
    recorded = engine.trained.trained_with(checkpoint)
    source = f"(the teacher's, {args.path_t})"
    lines = []
    for name, value in recorded.items():
        given = getattr(args, name)
        if value is None or not (given is None or isinstance(given, Unset)):
            continue
        if name == "data_root" and args.dataset != recorded["dataset"]:
            continue
        setattr(args, name, value)
        lines.append(f"--{name} {value} {source}")
    norm = engine.checkpoint.checkpoint_normalization(checkpoint)
    if args.normalization == "auto" and norm is not None:
        lines.append(f"--normalization auto: {describe_normalization(norm)} {source}")
    return lines


class TeacherFile:
    """--path_t, read while the command line is resolved (MethodArgumentParser.before_published): the
    teacher's settings fill the flags not given, and given ones are checked against it, before the published
    settings are looked up for the dataset. `checkpoint`: its content, for the run."""

    def __init__(self) -> None:
        self.checkpoint: dict = {}

    def settings(self, method: type[methods.DistillationMethod], args: argparse.Namespace) -> list[str]:
        self.checkpoint = read_teacher(args)
        check_student_architecture(args, method)
        lines = take_teacher_settings(args, self.checkpoint)
        check_teacher_matches_run(args, method, self.checkpoint, args.image_size)
        # Recorded with the flags (args.json, the checkpoint, W&B's config): the tables' rows per generation.
        args.generation = published.generation_of(engine.checkpoint.training_args(self.checkpoint)) + 1
        return lines


def read_teacher(args: argparse.Namespace) -> dict:
    """Read --path_t before the run starts (and prints its header), refusing a missing or unreadable
    one in one line, and fill --model_t and --model_s from it where not given."""
    if runtime.artifacts.is_reference(args.path_t):  # a W&B artifact: its checkpoint, fetched and verified
        args.path_t = str(runtime.artifacts.fetch_checkpoint(args.path_t, "--path_t", (
            engine.checkpoint.CHECKPOINT_NAME, engine.checkpoint.BEST_NAME)))
    if not Path(args.path_t).is_file():
        raise util.UsageError(f"--path_t {args.path_t}: checkpoint not found (the Gen-0 teacher's checkpoint.pth)")
    checkpoint = engine.checkpoint.load_checkpoint(args.path_t)
    resolve_architectures(args, engine.checkpoint.recorded_model(checkpoint, args.path_t))
    return checkpoint


def resolve_architectures(args: argparse.Namespace, teacher_model: str) -> None:
    """--model_t where not given: `teacher_model`, the one the teacher's checkpoint records; --model_s:
    --model_t's."""
    args.model_t = args.model_t or teacher_model
    args.model_s = args.model_s or args.model_t


def check_student_architecture(args: argparse.Namespace, method: type[methods.DistillationMethod]) -> None:
    """A student of another architecture than its teacher's, for a method whose student starts as a copy of the
    teacher, refused in one line naming the methods that train a fresh student of any architecture."""
    if args.model_s == args.model_t or not method.student_copies_teacher:
        return
    fresh = [m.objective for m in methods.methods_of_script(SCRIPT) if not m.student_copies_teacher]
    raise util.UsageError(f"--model_s {args.model_s}: the {method.label} student is a copy of the teacher, so it must "
                          f"be the teacher's architecture, {args.model_t}; --objective {' or '.join(fresh)} trains a "
                          f"fresh student of another architecture")


def teacher_for_run(args: argparse.Namespace, config: engine.config.TrainConfig, checkpoint: dict,
                    device) -> tuple[nn.Module, engine.data.TrainingData]:
    """Load the run's data and the frozen teacher (`checkpoint`, the content of --path_t, already checked
    against the run by TeacherFile), refusing in one line a teacher that does not fit the data; return the
    teacher and the run's TrainingData (normalised as the teacher was trained, unless --normalization says
    otherwise)."""
    teacher_norm = engine.checkpoint.checkpoint_normalization(checkpoint) if args.normalization == "auto" else None
    data = engine.data.load_training_data(config, teacher_norm)
    check_teacher_normalization(args, checkpoint, data.norm)
    teacher = load_teacher(args, checkpoint, data.image_size, device)
    if teacher.classifier.out_features != data.train.num_classes:
        raise util.UsageError(f"--path_t {args.path_t}: the teacher has {teacher.classifier.out_features} classes, "
                              f"the training split {data.train.source} has {data.train.num_classes}")
    return teacher, data


def main() -> None:
    parser = get_args_parser()
    teacher_file = TeacherFile()
    parser.before_published = teacher_file.settings
    args = parser.parse_args()
    method = methods.select_method(SCRIPT, args)
    config = engine.args.training_config(args, method.device_augment_refusal)
    config, process = engine.run.start_training_run(config, parser.settings)
    method.check_args(args)
    teacher, data = teacher_for_run(args, config, teacher_file.checkpoint, process.device)
    teacher_file.checkpoint = {}  # the teacher's whole file (its optimizer state too) is not needed past here
    identity = {"model": args.model_s, "dataset": args.dataset, "image_size": data.image_size,
                "path_t": str(Path(args.path_t).resolve()), "teacher_sha256": util.file_sha256(args.path_t)}
    run = method.from_args(args, device=process.device, data=data, teacher=teacher)
    methods.train(run, config=config, process=process, data=data, name=run_name(args, data.profile),
                  identity=identity, checkpoint_extra={"path_t": str(args.path_t)})


if __name__ == "__main__":
    util.run_cli(main)
