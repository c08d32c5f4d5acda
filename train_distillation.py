"""Generation 1 of SKD: self-supervised knowledge distillation (SPEC section 4).

The student starts as an exact copy of the frozen Gen-0 teacher. Each batch x is seen by the
teacher (logits p_t) and by the student on x and on its 180-degree rotation:
    loss = KL(p_s(x), p_t(x)) at temperature T  +  beta * mean ||p_s(x180) - p_s(x)||_2
There is no cross-entropy term. `--official_quirks` reproduces the released code instead: the
student is forwarded on all four rotations (BatchNorm sees 4B images), the L2 term is divided
by 3, and DropBlock ramps as fast as there (`--official_ramp`).

`--objective rfs` trains the RFS-distill baseline instead (one born-again generation as the RFS
release runs it): a freshly initialised student, ce_weight * CE + kd_weight * KL at T = --kd_T to the
frozen teacher (an RFS-simple model), plain images only.

`--objective sskd` trains a freshly initialised student with SSKD (distill/sskd.py): CE and KD on
the plain images, selective KD on their three rotations, and similarity transfer through projection
heads; the teacher's head is first trained on the frozen teacher's features (--sskd_head_epochs).

`--objective dvp` is DVP's phase 2 (distill/dvp.py): teacher and student both start as the phase-1
prior of --path_t (train_supervised_ssl.py --objective dvp); the student learns with cross-entropy
plus, after --dvp_no_distill_epochs, the partial L2 between its stage pre-activations (through a
1x1 conv + BN connector each) and the frozen teacher's, with margins from the teacher's BatchNorm.
"""
from __future__ import annotations

import argparse
import copy
import math
from pathlib import Path

import torch
from torch import nn

from dataset.profiles import DatasetProfile
from distill import cross_entropy_loss, four_rotations, gen1_loss, rfs_distill_loss, rot90, rot180, rot270
from distill.dvp import feature_distillation_loss, feature_margins
from distill.sskd import SSKDWeights, similarity_head_loss, similarity_logits, sskd_loss
from models import ProjectionHead, ResNet12SSL, WithConnectors, WithProjection, connector, create_model, list_models
from models.dropblock import add_dropblock_calls, dropblock_calls, set_dropblock_calls
import engine.args
import engine.checkpoint
import engine.distributed
import engine.loop
import engine.run
import util


def get_args_parser() -> argparse.ArgumentParser:
    parser = util.ArgumentParser("SKD generation 1: self-supervised knowledge distillation")
    parser.add_argument("--model_s", default="resnet12_ssl", choices=list_models(), help="student architecture")
    parser.add_argument("--model_t", default="resnet12_ssl", choices=list_models(), help="teacher architecture")
    parser.add_argument("--path_t", required=True, help="the Gen-0 teacher checkpoint")
    parser.add_argument("--kd_T", type=float, default=2.0, help="distillation temperature T")
    parser.add_argument("--gamma", type=float, default=0.1,
                        help="beta, the weight of the L2 term (official per-dataset values: CIFAR-FS 0.1, FC100 0.2, "
                             "miniImageNet 0.025-0.5)")
    parser.add_argument("--objective", default="skd", choices=["skd", "rfs", "sskd", "dvp"],
                        help="skd: SKD Gen-1 (default); rfs: the RFS-distill baseline (fresh student, CE + KD); "
                             "sskd: SSKD (fresh student; Xu et al., ECCV 2020); dvp: DVP phase 2 (student and teacher "
                             "from a train_supervised_ssl.py --objective dvp prior; Zhao and Wen, 2020)")
    parser.add_argument("--ce_weight", type=float, default=0.5, help="--objective rfs: weight of cross-entropy (-r)")
    parser.add_argument("--kd_weight", type=float, default=0.5, help="--objective rfs: weight of the KD term (-a)")
    g = parser.add_argument_group("--objective sskd (defaults: the SSKD release's student.py)")
    g.add_argument("--sskd_ce", type=float, default=SSKDWeights.ce, help="weight of CE on the plain images")
    g.add_argument("--sskd_kd", type=float, default=SSKDWeights.kd, help="weight of KD on the plain images")
    g.add_argument("--sskd_tf", type=float, default=SSKDWeights.tf, help="weight of KD on the rotated images")
    g.add_argument("--sskd_ss", type=float, default=SSKDWeights.ss, help="weight of the similarity transfer")
    g.add_argument("--sskd_kd_T", type=float, default=SSKDWeights.kd_T, help="temperature of KD on plain images")
    g.add_argument("--sskd_tf_T", type=float, default=SSKDWeights.tf_T, help="temperature of KD on rotated images")
    g.add_argument("--sskd_ss_T", type=float, default=SSKDWeights.ss_T, help="temperature of the similarity softmax")
    g.add_argument("--sskd_tf_ratio", type=float, default=SSKDWeights.tf_ratio,
                   help="share of the teacher's wrong rotated rows kept by selective transfer")
    g.add_argument("--sskd_ss_ratio", type=float, default=SSKDWeights.ss_ratio,
                   help="share of the teacher's wrong similarity rows kept by selective transfer")
    g.add_argument("--sskd_head_epochs", type=int, default=60,
                   help="epochs training the teacher's projection head on its frozen features (release: 60)")
    g.add_argument("--sskd_head_lr", type=float, default=0.05,
                   help="lr of the teacher head, decayed x0.1 at 50%% and 75%% of its epochs (release: 0.05 at 30, 45)")
    g = parser.add_argument_group("--objective dvp (defaults: the DVP release's train_selfsup.py)")
    g.add_argument("--dvp_weight", type=float, default=1e-4,
                   help="weight of the feature distillation, summed over elements and averaged over images "
                        "(release: sum / batch / 10000)")
    g.add_argument("--dvp_no_distill_epochs", type=int, default=4,
                   help="first epochs with cross-entropy only (release: epoch < 5, counting from 1)")
    parser.add_argument("--official_quirks", action="store_true",
                        help="as the released code: forward the student on all four rotations, divide L2 by 3, "
                             "and ramp DropBlock as --official_ramp")
    parser.add_argument("--official_ramp", action="store_true",
                        help="ramp DropBlock as the released code does, whose counter also counts the 2 forwards per "
                             "test episode of its per-epoch evaluation (about 3x faster); no test data is read")
    parser.add_argument("--test_batch_size", type=int, default=1,
                        help="--official_ramp: episodes per batch of the released per-epoch evaluation whose forwards "
                             "the ramp counts (official default 1)")
    parser.add_argument("--allow_teacher_mismatch", action="store_true",
                        help="accept a teacher trained on another dataset or image size than this run's")
    engine.args.add_training_script_args(parser, learning_rate=0.001, lr_decay_epochs="60", tags="gen1,skd")
    return parser


def run_name(args: argparse.Namespace, profile: DatasetProfile) -> str:
    """S_<student>_T_<teacher>_<dataset>_kd_T_<T>_beta_<beta>[_quirks]_trans_<A|D>[_cosine]_trial_<t>, and for
    --objective rfs S_<student>_T_<teacher>_<dataset>_rfs_r_<ce>_a_<kd>_kd_T_<T>_trans_<A|D>[_cosine]_trial_<t>."""
    if args.objective == "rfs":
        loss = f"rfs_r_{args.ce_weight}_a_{args.kd_weight}_kd_T_{args.kd_T}"
    elif args.objective == "sskd":
        loss = f"sskd_ce_{args.sskd_ce}_kd_{args.sskd_kd}_tf_{args.sskd_tf}_ss_{args.sskd_ss}"
    elif args.objective == "dvp":
        loss = f"dvp_w_{args.dvp_weight}_after_{args.dvp_no_distill_epochs}"
    else:
        loss = f"kd_T_{args.kd_T}_beta_{args.gamma}" + ("_quirks" if args.official_quirks else "")
    return (f"S_{args.model_s}_T_{args.model_t}_{args.dataset}_{loss}"
            f"_trans_{profile.transform_letter}{engine.args.run_name_suffix(args)}")


def load_teacher(args: argparse.Namespace, checkpoint: dict, image_size: int, device: torch.device) -> ResNet12SSL:
    """The Gen-0 model of --path_t (`checkpoint` is its content), frozen and in eval mode."""
    teacher = engine.checkpoint.model_from_checkpoint(args.model_t, args.path_t, checkpoint, args.dataset, image_size)
    teacher.requires_grad_(False)
    return util.to_device(teacher, device).eval()


def check_teacher_matches_run(args: argparse.Namespace, checkpoint: dict, image_size: int) -> None:
    """A teacher trained on another dataset or image size is almost always a wrong --path_t."""
    train_args = engine.checkpoint.training_args(checkpoint)
    recorded = {"--dataset": train_args.get("dataset"), "image size": checkpoint.get("image_size")}
    given = {"--dataset": args.dataset, "image size": image_size}
    for what, value in recorded.items():
        if value is not None and value != given[what] and not args.allow_teacher_mismatch:
            raise util.UsageError(f"--path_t {args.path_t}: the teacher was trained with {what} {value}, this run "
                                  f"has {given[what]}; pass --allow_teacher_mismatch if that is intended")
    # DVP distils features from a label-free prior whose classifier never trained; the other objectives
    # distil a classifier's logits, so each needs its own kind of teacher.
    teacher_objective = train_args.get("objective")
    if (teacher_objective is not None and (teacher_objective == "dvp") != (args.objective == "dvp")
            and not args.allow_teacher_mismatch):
        needed = ("a DVP prior (train_supervised_ssl.py --objective dvp)" if args.objective == "dvp"
                  else "a teacher trained with labels, not a DVP prior")
        raise util.UsageError(f"--path_t {args.path_t}: --objective {args.objective} needs {needed}; the teacher was "
                              f"trained with --objective {teacher_objective}; pass --allow_teacher_mismatch if that "
                              f"is intended")


def official_eval_calls_per_epoch(args: argparse.Namespace) -> int:
    """DropBlock counter steps the released Gen-1 adds per epoch outside training: it evaluates the
    test split after every epoch, two forwards (support, query) per batch of episodes."""
    return 2 * math.ceil(args.n_test_runs / args.test_batch_size)


def clone_student(teacher: ResNet12SSL) -> ResNet12SSL:
    """The Gen-1 student: the teacher's exact weights and BatchNorm statistics ("clones"), trainable,
    with a DropBlock ramp starting at 0 (the official student is a fresh model loading the weights)."""
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


def gen1_step(student: ResNet12SSL, teacher: ResNet12SSL, beta: float, temperature: float,
              official_quirks: bool) -> engine.loop.Step:
    forward = engine.distributed.wrap(student, unused=("rot_classifier",))  # DDP under torchrun

    def step(images: torch.Tensor, targets: torch.Tensor) -> engine.loop.StepResult:
        b = len(images)
        with torch.no_grad():
            teacher_logits = teacher(images)
        if official_quirks:
            # The released code's order; BatchNorm statistics span all 4B images.
            logits = forward(torch.cat([images, rot180(images), rot90(images), rot270(images)]))
        else:
            logits = forward(torch.cat([images, rot180(images)]))
        loss, kd, l2 = gen1_loss(logits[:b], logits[b:2 * b], teacher_logits, beta, temperature,
                                 l2_divisor=3.0 if official_quirks else 1.0)
        correct = (logits[:b].argmax(1) == targets).sum()
        return engine.loop.StepResult(loss, {"kd": kd.detach(), "l2": l2.detach()}, correct, b)

    return step


def rfs_distill_step(student: ResNet12SSL, teacher: ResNet12SSL, ce_weight: float, kd_weight: float,
                     temperature: float) -> engine.loop.Step:
    """RFS-distill: student and teacher on the plain images; CE to the labels plus KD to the teacher."""
    forward = engine.distributed.wrap(student, unused=("rot_classifier",))

    def step(images: torch.Tensor, targets: torch.Tensor) -> engine.loop.StepResult:
        with torch.no_grad():
            teacher_logits = teacher(images)
        logits = forward(images)
        loss, ce, kd = rfs_distill_loss(logits, teacher_logits, targets, ce_weight, kd_weight, temperature)
        correct = (logits.argmax(1) == targets).sum()
        return engine.loop.StepResult(loss, {"ce": ce.detach(), "kd": kd.detach()}, correct, len(images))

    return step


def sskd_weights(args: argparse.Namespace) -> SSKDWeights:
    return SSKDWeights(args.sskd_ce, args.sskd_kd, args.sskd_tf, args.sskd_ss, args.sskd_kd_T, args.sskd_tf_T,
                       args.sskd_ss_T, args.sskd_tf_ratio, args.sskd_ss_ratio)


def sskd_step(student: WithProjection, teacher: ResNet12SSL, teacher_head: ProjectionHead,
              weights: SSKDWeights) -> engine.loop.Step:
    """SSKD: teacher and student (with their heads) on the B plain images and their three rotations."""
    forward = engine.distributed.wrap(student, unused=("model.rot_classifier",))

    def step(images: torch.Tensor, targets: torch.Tensor) -> engine.loop.StepResult:
        batch, _ = four_rotations(images)
        with torch.no_grad():
            feature = teacher.forward_features(batch)
            teacher_logits, teacher_proj = teacher.forward_head(feature), teacher_head(feature)
        logits, proj = forward(batch)
        loss, parts = sskd_loss(logits, teacher_logits, proj, teacher_proj, targets, weights)
        correct = (logits[:len(images)].argmax(1) == targets).sum()
        return engine.loop.StepResult(loss, {k: v.detach() for k, v in parts.items()}, correct, len(images))

    return step


class DistillWeight:
    """DVP's distillation weight: 0 in the first `off_epochs` epochs, then `weight`."""

    def __init__(self, weight: float, off_epochs: int) -> None:
        self.weight, self.off_epochs, self.epoch = weight, off_epochs, 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self) -> float:
        return self.weight if self.epoch > self.off_epochs else 0.0


def dvp_step(student: WithConnectors, teacher: ResNet12SSL, margins: list[torch.Tensor],
             weight: DistillWeight) -> engine.loop.Step:
    """DVP phase 2: student and frozen teacher on the plain images; CE plus weight() times the feature
    distillation (measured and logged every step, its weight 0 in the first epochs)."""
    forward = engine.distributed.wrap(student, unused=("model.rot_classifier",))

    def step(images: torch.Tensor, targets: torch.Tensor) -> engine.loop.StepResult:
        with torch.no_grad():
            teacher_maps, _ = teacher.forward_preactivations(images)
        maps, logits = forward(images)
        ce = cross_entropy_loss(logits, targets)
        distill = feature_distillation_loss(maps, teacher_maps, margins)
        # Multiplied by 0 rather than left out, so that DDP sees the connectors used in every step.
        loss = ce + weight() * distill
        correct = (logits.argmax(1) == targets).sum()
        return engine.loop.StepResult(loss, {"ce": ce.detach(), "distill": distill.detach()}, correct, len(images))

    return step


def train_teacher_head(teacher: ResNet12SSL, head: ProjectionHead, loader, args: argparse.Namespace,
                       device: torch.device) -> None:
    """SSKD's first phase: the teacher's projection head learns, on the frozen teacher's features,
    to match each rotated image to its own plain image among the batch's (SGD, momentum 0.9, weight
    decay 5e-4, lr x0.1 at 50% and 75% of --sskd_head_epochs, as the release's 30 and 45 of 60)."""
    optimizer = torch.optim.SGD(head.parameters(), lr=args.sskd_head_lr, momentum=0.9, weight_decay=5e-4)
    forward = engine.distributed.wrap(head.train())
    epochs = args.sskd_head_epochs
    for epoch in range(1, epochs + 1):
        lr = args.sskd_head_lr * 0.1 ** sum(epoch > m for m in (epochs * 0.5, epochs * 0.75))
        engine.loop.set_learning_rate(optimizer, lr)
        loader.sampler.set_epoch(-epoch)  # its own data order, apart from the student's epochs
        total, found, rows = torch.zeros((), device=device), torch.zeros((), device=device), 0
        for images, _ in loader:
            batch, _ = four_rotations(images.to(device, non_blocking=True))
            with torch.no_grad(), util.autocast(device, args.amp):
                feature = teacher.forward_features(batch)
            proj = forward(feature.float())
            loss = similarity_head_loss(proj, len(images))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                sim = similarity_logits(proj[len(images):], proj[:len(images)])
                found += (sim.argmax(1) == torch.arange(len(images), device=device).repeat(3)).sum()
            total += loss.detach() * len(images)
            rows += len(images)
        if not torch.isfinite(total):
            raise util.NonFiniteLossError(f"non-finite loss training the SSKD teacher head at epoch {epoch}")
        print(f"teacher head epoch={epoch} lr={lr:.4g} loss={float(total) / rows:.4f} "
              f"rotated_found_own={100 * float(found) / (3 * rows):.2f}", flush=True)


def main() -> None:
    args = get_args_parser().parse_args()
    device = engine.run.start_training_run(args)

    if args.objective != "skd" and (args.official_quirks or args.official_ramp):
        raise util.UsageError(f"--official_quirks/--official_ramp: reproduce the released SKD Gen-1; they do not "
                              f"apply to --objective {args.objective}")
    if args.objective == "sskd":
        util.check_positive(args, "sskd_head_epochs")
    if args.objective == "dvp" and (args.dvp_weight < 0 or args.dvp_no_distill_epochs < 0):
        raise util.UsageError(f"--dvp_weight {args.dvp_weight}, --dvp_no_distill_epochs {args.dvp_no_distill_epochs}: "
                              f"expected numbers >= 0")
    if args.model_s != args.model_t:
        raise util.UsageError(f"--model_s {args.model_s}: the student is a copy of the teacher, so it must be "
                              f"--model_t ({args.model_t})")
    if not Path(args.path_t).is_file():
        raise util.UsageError(f"--path_t {args.path_t}: checkpoint not found (the Gen-0 teacher's checkpoint.pth)")
    teacher_checkpoint = engine.checkpoint.load_checkpoint(args.path_t)
    # The student must see images as the teacher was trained to, unless --normalization says otherwise.
    teacher_norm = engine.checkpoint.checkpoint_normalization(teacher_checkpoint) if args.normalization == "auto" else None
    data = engine.run.load_training_data(args, teacher_norm)
    check_teacher_matches_run(args, teacher_checkpoint, data.image_size)
    teacher = load_teacher(args, teacher_checkpoint, data.image_size, device)
    if teacher.classifier.out_features != data.train.num_classes:
        raise util.UsageError(f"--path_t {args.path_t}: the teacher has {teacher.classifier.out_features} classes, "
                              f"the training split {data.train.source} has {data.train.num_classes}")
    if args.objective in ("rfs", "sskd"):  # born-again: a fresh student of the teacher's architecture
        student = util.to_device(create_model(args.model_s, data.train.num_classes, args.dataset,
                                              image_size=data.image_size), device)
    else:
        student = clone_student(teacher)
    if args.objective == "dvp":  # the prior's backbone with a fresh classifier, as the DVP release's student
        student.classifier.reset_parameters()
    if args.bn_stats == "global":
        student = engine.distributed.use_global_batch_statistics(student)
    teacher_before = snapshot(teacher)

    optimizer = torch.optim.SGD(student.parameters(), lr=args.learning_rate, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    identity = {"model": args.model_s, "dataset": args.dataset, "image_size": data.image_size,
                "path_t": str(Path(args.path_t).resolve()), "teacher_sha256": util.file_sha256(args.path_t),
                "objective": args.objective}
    job_type = {"rfs": "rfs_distill", "sskd": "sskd", "skd": "skd_gen1", "dvp": "dvp"}[args.objective]
    heads, extra_modules, before_epoch = None, None, None
    if args.objective == "sskd":  # a projection head each on the pooled feature, checkpointed beside "model"
        heads = nn.ModuleDict({"student": ProjectionHead(student.feature_dim),
                               "teacher": ProjectionHead(teacher.feature_dim)}).to(device)
        optimizer.add_param_group({"params": list(heads["student"].parameters())})
        extra_modules = {"sskd_heads": heads}
    if args.objective == "dvp":  # one connector per stage, student to teacher channels, checkpointed beside "model"
        connectors = nn.ModuleList([connector(s.num_features, t.num_features) for s, t in
                                    zip(student.preactivation_batchnorms(), teacher.preactivation_batchnorms())])
        connectors = connectors.to(device)  # DDP broadcasts rank 0's when it wraps them with the student
        optimizer.add_param_group({"params": list(connectors.parameters())})
        extra_modules = {"dvp_connectors": connectors}
    state = engine.run.prepare_run(args, run_name(args, data.profile), student, optimizer, job_type, identity,
                                   data, {"path_t": str(args.path_t)}, extra_modules)
    loader = engine.run.make_train_loader(data, args, device)
    if args.objective == "rfs":
        step = rfs_distill_step(student, teacher, args.ce_weight, args.kd_weight, args.kd_T)
    elif args.objective == "sskd":
        if state.start_epoch == 1 and state.partial is None:  # a resumed run restored the trained head
            train_teacher_head(teacher, heads["teacher"], loader, args, device)
        heads["teacher"].requires_grad_(False).eval()
        teacher_before.update({f"head.{k}": v for k, v in snapshot(heads["teacher"]).items()})
        step = sskd_step(WithProjection(student, heads["student"]), teacher, heads["teacher"], sskd_weights(args))
    elif args.objective == "dvp":
        margins = feature_margins(teacher.preactivation_batchnorms())
        distill_weight = DistillWeight(args.dvp_weight, args.dvp_no_distill_epochs)
        before_epoch = distill_weight.set_epoch
        step = dvp_step(WithConnectors(student, connectors), teacher, margins, distill_weight)
    else:
        step = gen1_step(student, teacher, args.gamma, args.kd_T, args.official_quirks)
    after_epoch = None
    if args.official_ramp or args.official_quirks:
        extra_calls = official_eval_calls_per_epoch(args)
        after_epoch = lambda epoch: add_dropblock_calls(student, extra_calls)  # noqa: E731
    engine.loop.fit(state, step, loader, args, device, after_epoch, before_epoch)
    assert_unchanged(teacher, {k: v for k, v in teacher_before.items() if not k.startswith("head.")},
                     f"teacher {args.path_t}")
    if heads is not None:
        assert_unchanged(heads["teacher"], {k[len("head."):]: v for k, v in teacher_before.items()
                                            if k.startswith("head.")}, "the teacher's projection head")
    print("teacher check: weights and BatchNorm statistics unchanged")
    engine.run.finish_training(state, data, args, device)


if __name__ == "__main__":
    util.run_cli(main)
