"""Generation 0 of SKD: a ResNet-12 trained with cross-entropy plus a rotation loss (SPEC section 3).

Each batch of B images becomes 4B: the images and their 90, 180 and 270 degree rotations. The
network classifies all of them into the training classes, and its rotation head, fed with the
class logits, predicts which rotation each one is:  loss = CE + gamma * L_rot.

`--plain` trains the RFS-simple baseline instead (the RFS release's pre-training): cross-entropy on
the plain images, no rotations.

`--objective dvp` trains DVP's phase 1 instead, without labels: momentum contrast (a query encoder,
its momentum copy as key encoder, a queue of earlier keys as negatives) with DVP's margin on the
positive pair (distill/dvp.py). Its query encoder is the teacher and the starting point of
`train_distillation.py --objective dvp`.
"""
from __future__ import annotations

import argparse
import copy

import torch
from torch import nn

from dataset.profiles import DatasetProfile
from dataset.transforms import TwoViews, contrastive_transform
from distill import cross_entropy_loss, four_rotations, gen0_loss
from distill.dvp import KeyQueue, grouped_forward, margin_contrastive_logits, margin_contrastive_loss, momentum_update
from models import ProjectedFeatures, ResNet12SSL, create_model, list_models
from models.dropblock import dropblock_calls, set_dropblock_calls
import engine.args
import engine.distributed
import engine.loop
import engine.run
import util


def get_args_parser() -> argparse.ArgumentParser:
    parser = util.ArgumentParser("SKD generation 0: supervised training with rotation self-supervision")
    parser.add_argument("--model", default="resnet12_ssl", choices=list_models())
    parser.add_argument("--gamma", type=float, default=2.0, help="weight of the rotation loss")
    parser.add_argument("--plain", action="store_true",
                        help="RFS-simple baseline: cross-entropy on the plain images only (no rotations, no --gamma)")
    parser.add_argument("--objective", default="skd", choices=["skd", "dvp"],
                        help="skd: SKD Gen-0 (default; with --plain RFS-simple); dvp: DVP phase 1, a momentum-contrast "
                             "prior trained without labels (Zhao and Wen, 2020)")
    g = parser.add_argument_group("--objective dvp (defaults: the DVP release's MoCo command; scripts/reproduce.py "
                                  "also sets its schedule: lr 0.03, weight decay 1e-4, batch 256, 200 epochs)")
    g.add_argument("--dvp_dim", type=int, default=128, help="dimension of the contrastive embedding")
    g.add_argument("--dvp_head", default="bn_linear", choices=["bn_linear", "linear"],
                   help="projection head on the pooled feature: bn_linear, BatchNorm then Linear (ours: with the "
                        "release's linear head ResNet-12 collapses, every embedding the same; see README) or linear "
                        "(MoCo v1, the release's command)")
    g.add_argument("--dvp_queue", type=int, default=4096,
                   help="negative keys K, a small share of the training images, so that an image's own earlier key is "
                        "rarely among its negatives (the release's 65,536 exceed CIFAR-FS's and miniImageNet's 38,400)")
    g.add_argument("--dvp_momentum", type=float, default=0.999, help="momentum m of the key encoder")
    g.add_argument("--dvp_temperature", type=float, default=0.07, help="softmax temperature")
    g.add_argument("--dvp_margin", type=float, default=0.4, help="margin subtracted from the positive cosine")
    g.add_argument("--dvp_key_groups", type=int, default=2,
                   help="keys are forwarded shuffled in this many groups, so that BatchNorm statistics cannot tell "
                        "which key matches a query (MoCo's shuffle BN across GPUs; 1: off)")
    engine.args.add_training_script_args(parser, learning_rate=0.05, lr_decay_epochs="60", tags="gen0,ssl")
    return parser


def run_name(args: argparse.Namespace, profile: DatasetProfile) -> str:
    """The official run-folder name: <model>_<dataset>_lr_<lr>_decay_<wd>_trans_<A|D>[_plain][_cosine]_trial_<t>
    (--objective dvp: _dvp_margin_<m>_K_<K>_m_<momentum>_T_<T> in place of _plain)."""
    plain = "_plain" if args.plain else ""
    if args.objective == "dvp":
        plain = f"_dvp_margin_{args.dvp_margin}_K_{args.dvp_queue}_m_{args.dvp_momentum}_T_{args.dvp_temperature}"
    return (f"{args.model}_{args.dataset}_lr_{args.learning_rate}_decay_{args.weight_decay}"
            f"_trans_{profile.transform_letter}{plain}{engine.args.run_name_suffix(args)}")


def gen0_step(model: ResNet12SSL, gamma: float) -> engine.loop.Step:
    forward_all = engine.distributed.wrap(model, "forward_all")  # DDP under torchrun

    def step(images: torch.Tensor, targets: torch.Tensor) -> engine.loop.StepResult:
        batch, rot_labels = four_rotations(images)
        out = forward_all(batch)
        loss, ce, rot = gen0_loss(out.logits, out.rot_logits, targets.repeat(4), rot_labels, gamma)
        correct = (out.logits[: len(images)].argmax(1) == targets).sum()
        return engine.loop.StepResult(loss, {"ce": ce.detach(), "rot": rot.detach()}, correct, len(images))

    return step


def plain_step(model: ResNet12SSL) -> engine.loop.Step:
    """RFS-simple: one forward of the B plain images, cross-entropy only."""
    forward = engine.distributed.wrap(model, unused=("rot_classifier",))

    def step(images: torch.Tensor, targets: torch.Tensor) -> engine.loop.StepResult:
        logits = forward(images)
        loss = cross_entropy_loss(logits, targets)
        return engine.loop.StepResult(loss, {"ce": loss.detach()}, (logits.argmax(1) == targets).sum(), len(images))

    return step


class MomentumContrast(nn.Module):
    """What DVP's phase 1 trains besides the network: the query's projection head, the key encoder
    (a momentum copy of network + head, never trained by gradients) and the queue of negatives.
    Checkpointed under "dvp_prior", so "model" keeps the official ResNet-12 keys."""

    def __init__(self, model: ResNet12SSL, args: argparse.Namespace) -> None:
        super().__init__()
        dim = model.feature_dim
        # The pooled features of ResNet-12 (after LeakyReLU and max-pool) share a large positive common part,
        # which a linear head turns into one direction shared by every embedding; BatchNorm removes it first.
        linear = nn.Linear(dim, args.dvp_dim)
        self.query_head = linear if args.dvp_head == "linear" else nn.Sequential(nn.BatchNorm1d(dim), linear)
        self.key = copy.deepcopy(ProjectedFeatures(model, self.query_head)).requires_grad_(False)
        self.queue = KeyQueue(args.dvp_queue, args.dvp_dim, torch.Generator().manual_seed(args.seed))


def dvp_prior_step(model: ResNet12SSL, prior: MomentumContrast, args: argparse.Namespace) -> engine.loop.Step:
    """Each image comes as two views (B, 2, 3, H, W); the labels are never read."""
    query = ProjectedFeatures(model, prior.query_head)
    # The classifier and the rotation head are not part of the contrastive task.
    forward = engine.distributed.wrap(query, unused=("model.classifier", "model.rot_classifier"))

    def step(images: torch.Tensor, targets: torch.Tensor) -> engine.loop.StepResult:
        q = forward(images[:, 0])
        with torch.no_grad():
            momentum_update(query, prior.key, args.dvp_momentum)  # after the previous step's update, as MoCo
            # The key encoder drops as much as the query encoder at this point of the DropBlock ramp (its own
            # counters are not checkpointed and would count each key group).
            set_dropblock_calls(prior.key, dropblock_calls(model))
            k = grouped_forward(prior.key, images[:, 1], args.dvp_key_groups)
        negatives = prior.queue.keys.clone()
        loss = margin_contrastive_loss(q, k, negatives, args.dvp_margin, args.dvp_temperature)
        with torch.no_grad():  # how often the positive (margin included) beats every negative
            logits = margin_contrastive_logits(q, k, negatives, args.dvp_margin, args.dvp_temperature)
            found = (logits.argmax(1) == 0).float().mean() * 100
        prior.queue.enqueue(engine.distributed.all_gather_tensor(k))  # every rank's keys: one queue on all ranks
        return engine.loop.StepResult(loss, {"instance_acc": found}, None, len(images))

    return step


def check_dvp_args(args: argparse.Namespace) -> None:
    if args.plain:
        raise util.UsageError("--plain: trains RFS-simple; it does not combine with --objective dvp")
    util.check_positive(args, "dvp_dim", "dvp_queue", "dvp_key_groups")
    if not 0 <= args.dvp_momentum < 1:
        raise util.UsageError(f"--dvp_momentum: expected a number in [0, 1), got {args.dvp_momentum}")
    if not args.dvp_temperature > 0:
        raise util.UsageError(f"--dvp_temperature: expected a positive number, got {args.dvp_temperature}")
    # A queue of more keys than training images (the release's 65,536 on its ~50,000) is allowed: every
    # query then meets earlier keys of its own image among its negatives (README, DVP settings).
    if args.dvp_queue < args.batch_size:
        raise util.UsageError(f"--dvp_queue {args.dvp_queue}: expected at least --batch_size ({args.batch_size}), "
                              f"the keys one step enqueues")
    per_rank = engine.distributed.per_rank_batch_size(args.batch_size)
    if per_rank < 2 * args.dvp_key_groups:  # BatchNorm in train mode needs 2 images per group
        raise util.UsageError(f"--dvp_key_groups {args.dvp_key_groups}: expected at least 2 images per group, "
                              f"got {per_rank} images per step and rank")


def main() -> None:
    args = get_args_parser().parse_args()
    if args.objective == "dvp":  # its two views come from torchvision in loader workers
        if args.augment == "device":
            raise util.UsageError("--augment device: DVP's two-view augmentation runs on loader workers only; "
                                  "use --augment workers (or auto)")
        args.augment = "workers"
    device = engine.run.start_training_run(args)

    dvp = args.objective == "dvp"
    if dvp:
        check_dvp_args(args)
    data = engine.run.load_training_data(args)
    model = util.to_device(create_model(args.model, data.train.num_classes, args.dataset, image_size=data.image_size),
                           device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.learning_rate, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    identity = {"model": args.model, "dataset": args.dataset, "image_size": data.image_size, "plain": args.plain,
                "objective": args.objective}
    prior = None
    if dvp:
        prior = MomentumContrast(model, args).to(device)
        engine.distributed.broadcast_module(prior)  # the key encoder starts as rank 0's query encoder, as DDP's
        optimizer.add_param_group({"params": list(prior.query_head.parameters())})
    if args.bn_stats == "global":  # after the key encoder's copy, which keeps per-rank statistics (shuffle BN)
        model = engine.distributed.use_global_batch_statistics(model)
    job_type = "dvp_prior" if dvp else "rfs_simple" if args.plain else "skd_gen0"
    state = engine.run.prepare_run(args, run_name(args, data.profile), model, optimizer, job_type, identity, data,
                                   extra_modules={"dvp_prior": prior} if prior is not None else None)
    if dvp:
        views = TwoViews(contrastive_transform(data.image_size, data.norm))
        step, loader = dvp_prior_step(model, prior, args), engine.run.make_train_loader(data, args, device, views)
    else:
        step = plain_step(model) if args.plain else gen0_step(model, args.gamma)
        loader = engine.run.make_train_loader(data, args, device)
    engine.loop.fit(state, step, loader, args, device)
    engine.run.finish_training(state, data, args, device)


if __name__ == "__main__":
    util.run_cli(main)
