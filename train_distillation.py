"""Distillation: a student trained against the frozen teacher of --path_t by one of the methods
registered for this script in methods/, chosen by --objective (default: SKD's generation 1).

This file is wiring only: it reads and checks the teacher, and each method owns its flags, its
student, its step and its checks (`python train_distillation.py --help` lists them by method).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from torch import nn

from dataset.profiles import DatasetProfile
from models import ResNet12SSL, list_models
import engine.args
from engine.args import Unset
import engine.checkpoint
import engine.loop
import engine.official_flags
import engine.run
import methods
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


def load_teacher(args: argparse.Namespace, checkpoint: dict, image_size: int, device) -> ResNet12SSL:
    """The model of --path_t (`checkpoint` is its content), frozen and in eval mode."""
    teacher = engine.checkpoint.model_from_checkpoint(args.model_t, args.path_t, checkpoint, args.dataset, image_size)
    teacher.requires_grad_(False)
    return util.to_device(teacher, device).eval()


def check_teacher_matches_run(args: argparse.Namespace, method: type[methods.DistillationMethod], checkpoint: dict,
                              image_size: int) -> None:
    """A teacher trained on another dataset or image size, or by a method of the other kind (with or
    without labels) than `method` distils, is almost always a wrong --path_t."""
    if args.allow_teacher_mismatch:
        return
    train_args = engine.checkpoint.training_args(checkpoint)
    recorded = {"--dataset": train_args.get("dataset"), "image size": checkpoint.get("image_size")}
    given = {"--dataset": args.dataset, "image size": image_size}
    for what, value in recorded.items():
        if value is not None and value != given[what]:
            raise util.UsageError(f"--path_t {args.path_t}: the teacher was trained with {what} {value}, this run "
                                  f"has {given[what]}; pass --allow_teacher_mismatch if that is intended")
    # DVP distils features from a label-free prior whose classifier never trained; the other methods distil
    # a classifier's logits, so each needs its own kind of teacher.
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


def read_teacher(args: argparse.Namespace) -> dict:
    """Read --path_t before the run starts (and prints its header), refusing a missing or unreadable
    one in one line, and fill --model_t and --model_s from it where not given."""
    if not Path(args.path_t).is_file():
        raise util.UsageError(f"--path_t {args.path_t}: checkpoint not found (the Gen-0 teacher's checkpoint.pth)")
    checkpoint = engine.checkpoint.load_checkpoint(args.path_t)
    resolve_architectures(args, engine.checkpoint.recorded_model(checkpoint, args.path_t))
    return checkpoint


def resolve_architectures(args: argparse.Namespace, teacher_model: str) -> None:
    """--model_t where not given: `teacher_model`, the one the teacher's checkpoint records; --model_s:
    --model_t's. The student is a copy of the teacher, so the two must agree."""
    args.model_t = args.model_t or teacher_model
    args.model_s = args.model_s or args.model_t
    if args.model_s != args.model_t:
        raise util.UsageError(f"--model_s {args.model_s}: the student is a copy of the teacher, so it must be "
                              f"the teacher's architecture, {args.model_t}")


def teacher_for_run(args: argparse.Namespace, method: type[methods.DistillationMethod], checkpoint: dict,
                    device) -> tuple[nn.Module, dict]:
    """Check the teacher (`checkpoint`, the content of --path_t) against the run, refusing a wrong one in
    one line, and load the run's data; return the frozen teacher and the run's TrainingData
    (normalised as the teacher was trained, unless --normalization says otherwise)."""
    teacher_norm = engine.checkpoint.checkpoint_normalization(checkpoint) if args.normalization == "auto" else None
    data = engine.run.load_training_data(args, teacher_norm)
    check_teacher_matches_run(args, method, checkpoint, data.image_size)
    teacher = load_teacher(args, checkpoint, data.image_size, device)
    if teacher.classifier.out_features != data.train.num_classes:
        raise util.UsageError(f"--path_t {args.path_t}: the teacher has {teacher.classifier.out_features} classes, "
                              f"the training split {data.train.source} has {data.train.num_classes}")
    return teacher, data


def main() -> None:
    parser = get_args_parser()
    args = parser.parse_args()
    method = methods.select_method(SCRIPT, args)
    checkpoint = read_teacher(args)
    device = engine.run.start_training_run(args, method.device_augment_refusal, parser.settings)
    method.check_args(args)
    teacher, data = teacher_for_run(args, method, checkpoint, device)
    del checkpoint  # the teacher's whole file (its optimizer state too) is not needed past here
    identity = {"model": args.model_s, "dataset": args.dataset, "image_size": data.image_size,
                "path_t": str(Path(args.path_t).resolve()), "teacher_sha256": util.file_sha256(args.path_t)}
    methods.train(method, args=args, device=device, data=data, name=run_name(args, data.profile), identity=identity,
                  teacher=teacher, checkpoint_extra={"path_t": str(args.path_t)})


if __name__ == "__main__":
    util.run_cli(main)
