"""SKD generation 0: a ResNet-12 trained with cross-entropy plus a rotation loss.

Each batch of B images becomes 4B: the images and their 90, 180 and 270 degree rotations. The
network classifies all of them into the training classes, and its rotation head, fed with the class
logits, predicts which rotation each one is:  loss = CE + gamma * L_rot.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

import runtime.distributed
import engine.loop
from distill import four_rotations, gen0_loss
from methods.base import Gen0Method
from methods.registry import register_method
from published.skd import SKD_GEN0_CARD
from models import Backbone


@dataclass(frozen=True)
class SKDGen0Values:
    gamma: float  # the rotation loss's weight


@register_method
class SKDGen0(Gen0Method):
    card = SKD_GEN0_CARD
    Values = SKDGen0Values
    kind = "an SKD Gen-0 model"
    objective_help = "SKD Gen-0 (default)"

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("SKD Gen-0 (--objective skd)")
        g.add_argument("--gamma", type=float, default=2.0, help="weight of the rotation loss")

    @classmethod
    def run_name_part(cls, args: argparse.Namespace) -> str:
        return ""

    def make_step(self, state: engine.loop.TrainState, loader) -> engine.loop.Step:
        return gen0_step(self.model, self.values.gamma)


def gen0_step(model: Backbone, gamma: float) -> engine.loop.Step:
    """The B images and their three rotations through the network; CE + gamma * L_rot."""
    forward_all = runtime.distributed.wrap(model, "forward_all")  # DDP under torchrun

    def step(images: torch.Tensor, targets: torch.Tensor) -> engine.loop.StepResult:
        batch, rot_labels = four_rotations(images)
        out = forward_all(batch)
        loss, ce, rot = gen0_loss(out.logits, out.rot_logits, targets.repeat(4), rot_labels, gamma)
        correct = (out.logits[: len(images)].argmax(1) == targets).sum()
        return engine.loop.StepResult(loss, {"ce": ce.detach(), "rot": rot.detach()}, correct, len(images))

    return step
