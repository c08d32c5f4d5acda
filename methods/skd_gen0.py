"""SKD generation 0: a ResNet-12 trained with cross-entropy plus a rotation loss.

Each batch of B images becomes 4B: the images and their 90, 180 and 270 degree rotations. The
network classifies all of them into the training classes, and its rotation head, fed with the class
logits, predicts which rotation each one is:  loss = CE + gamma * L_rot.
"""
from __future__ import annotations

import argparse

import torch

import runtime.distributed
import engine.loop
from distill import four_rotations, gen0_loss
from methods.base import Gen0Method
from methods.registry import register_method
from methods.settings import SKD_GEN0, SMALL_LR, PublishedSettings, Sourced, small_scale
from models import ResNet12SSL


def skd_gen0_settings(epochs: int, lr_decay_epochs: tuple[int, ...]) -> PublishedSettings:
    return PublishedSettings(
        epochs=Sourced(epochs, SKD_GEN0), lr_decay_epochs=Sourced(lr_decay_epochs, SKD_GEN0),
        learning_rate=Sourced(0.05, SKD_GEN0), lr_decay_rate=Sourced(0.1, SKD_GEN0),
        batch_size=Sourced(64, f"{SKD_GEN0}: before the 4x rotations"), weight_decay=Sourced(5e-4, SKD_GEN0),
        momentum=Sourced(0.9, SKD_GEN0), weights={"gamma": Sourced(2.0, f"{SKD_GEN0}: rotation loss weight")})


@register_method
class SKDGen0(Gen0Method):
    name = "skd_gen0"
    label = "SKD Gen-0"
    kind = "an SKD Gen-0 model"
    objective = "skd"
    default = True
    objective_help = "SKD Gen-0 (default)"
    in_paper = True
    paper = {"miniImageNet": (65.93, 83.15), "tieredImageNet": (71.69, 86.66), "CIFAR-FS": (74.5, 88.0),
             "FC100": (45.3, 62.2)}
    weight_flags = {"gamma": "--gamma"}
    forwards_per_image = 4
    published = {"CIFAR-FS": skd_gen0_settings(65, (60,)), "FC100": skd_gen0_settings(65, (60,)),
                 "miniImageNet": skd_gen0_settings(65, (60,)), "tieredImageNet": skd_gen0_settings(60, (30, 40, 50))}
    small_scale = small_scale(10, (7,), 0.02, SMALL_LR, {"gamma": Sourced(2.0, SKD_GEN0)})

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("SKD Gen-0 (--objective skd)")
        g.add_argument("--gamma", type=float, default=2.0, help="weight of the rotation loss")

    @classmethod
    def run_name_part(cls, args: argparse.Namespace) -> str:
        return ""

    def make_step(self, state: engine.loop.TrainState, loader) -> engine.loop.Step:
        return gen0_step(self.model, self.args.gamma)


def gen0_step(model: ResNet12SSL, gamma: float) -> engine.loop.Step:
    """The B images and their three rotations through the network; CE + gamma * L_rot."""
    forward_all = runtime.distributed.wrap(model, "forward_all")  # DDP under torchrun

    def step(images: torch.Tensor, targets: torch.Tensor) -> engine.loop.StepResult:
        batch, rot_labels = four_rotations(images)
        out = forward_all(batch)
        loss, ce, rot = gen0_loss(out.logits, out.rot_logits, targets.repeat(4), rot_labels, gamma)
        correct = (out.logits[: len(images)].argmax(1) == targets).sum()
        return engine.loop.StepResult(loss, {"ce": ce.detach(), "rot": rot.detach()}, correct, len(images))

    return step
