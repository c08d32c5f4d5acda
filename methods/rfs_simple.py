"""RFS-simple, the RFS release's pre-training (Tian et al., 2020): cross-entropy on the plain
images, no rotations. Selected by `train_supervised_ssl.py --objective rfs_simple`
(or its alias `--plain`)."""
from __future__ import annotations

import argparse

import torch

import runtime.distributed
import engine.loop
from distill import cross_entropy_loss
from methods.base import Gen0Method
from methods.registry import register_method
from methods.settings import DATASETS, SMALL_LR, rfs_settings, small_scale
from models import ResNet12SSL

SCRIPT = "train_supervised.py"  # the RFS release's script of this stage


@register_method
class RFSSimple(Gen0Method):
    name = "rfs_simple"
    label = "RFS-simple"
    kind = "an RFS-simple model"
    objective = "rfs_simple"
    objective_help = "the RFS-simple baseline, cross-entropy on the plain images (alias: --plain)"
    in_paper = True
    paper = {"miniImageNet": (62.02, 79.64), "tieredImageNet": (69.74, 84.41), "CIFAR-FS": (71.5, 86.0),
             "FC100": (42.6, 59.1)}
    published = {dataset: rfs_settings(dataset, SCRIPT, {})
                 for dataset in DATASETS}
    small_scale = small_scale(10, (7,), 0.02, SMALL_LR, {})

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("RFS-simple (--objective rfs_simple)")
        g.add_argument("--plain", action="store_true",
                       help="the alias of --objective rfs_simple, kept for older command lines")

    @classmethod
    def run_name_part(cls, args: argparse.Namespace) -> str:
        return "_plain"

    def make_step(self, state: engine.loop.TrainState, loader) -> engine.loop.Step:
        return plain_step(self.model)


def plain_step(model: ResNet12SSL) -> engine.loop.Step:
    """One forward of the B plain images, cross-entropy only."""
    forward = runtime.distributed.wrap(model, unused=("rot_classifier",))

    def step(images: torch.Tensor, targets: torch.Tensor) -> engine.loop.StepResult:
        logits = forward(images)
        loss = cross_entropy_loss(logits, targets)
        return engine.loop.StepResult(loss, {"ce": loss.detach()}, (logits.argmax(1) == targets).sum(), len(images))

    return step
