"""Generation 0 of SKD: a ResNet-12 trained with cross-entropy plus a rotation loss (SPEC section 3).

Each batch of B images becomes 4B: the images and their 90, 180 and 270 degree rotations. The
network classifies all of them into the training classes, and its rotation head, fed with the
class logits, predicts which rotation each one is:  loss = CE + gamma * L_rot.

`--plain` trains the RFS-simple baseline instead (the RFS release's pre-training): cross-entropy on
the plain images, no rotations.
"""
from __future__ import annotations

import argparse

import torch

from distill import cross_entropy_loss, four_rotations, gen0_loss
from models import ResNet12SSL, create_model, list_models
from dataset.profiles import DatasetProfile
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
    engine.args.add_training_script_args(parser, learning_rate=0.05, lr_decay_epochs="60", tags="gen0,ssl")
    return parser


def run_name(args: argparse.Namespace, profile: DatasetProfile) -> str:
    """The official run-folder name: <model>_<dataset>_lr_<lr>_decay_<wd>_trans_<A|D>[_plain][_cosine]_trial_<t>."""
    plain = "_plain" if args.plain else ""
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


def main() -> None:
    args = get_args_parser().parse_args()
    device = engine.run.start_training_run(args)

    data = engine.run.load_training_data(args)
    model = util.to_device(create_model(args.model, data.train.num_classes, args.dataset, image_size=data.image_size),
                           device)
    if args.sync_bn:
        model = engine.distributed.convert_sync_batchnorm(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.learning_rate, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    identity = {"model": args.model, "dataset": args.dataset, "image_size": data.image_size, "plain": args.plain}
    state = engine.run.prepare_run(args, run_name(args, data.profile), model, optimizer,
                                   "rfs_simple" if args.plain else "skd_gen0", identity, data)
    step = plain_step(model) if args.plain else gen0_step(model, args.gamma)
    engine.loop.fit(state, step, engine.run.make_train_loader(data, args, device), args, device)
    engine.run.finish_training(state, data, args, device)


if __name__ == "__main__":
    util.run_cli(main)
