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
from published.rfs import RFS_SIMPLE_CARD
from models import Backbone


@register_method
class RFSSimple(Gen0Method):
    card = RFS_SIMPLE_CARD
    kind = "an RFS-simple model"
    objective_help = "the RFS-simple baseline, cross-entropy on the plain images (alias: --plain)"

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


def plain_step(model: Backbone) -> engine.loop.Step:
    """One forward of the B plain images, cross-entropy only."""
    forward = runtime.distributed.wrap(model, unused=("rot_classifier",))

    def step(images: torch.Tensor, targets: torch.Tensor) -> engine.loop.StepResult:
        logits = forward(images)
        loss = cross_entropy_loss(logits, targets)
        return engine.loop.StepResult(loss, {"ce": loss.detach()}, (logits.argmax(1) == targets).sum(), len(images))

    return step
