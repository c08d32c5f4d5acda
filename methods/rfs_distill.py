"""RFS-distill, the RFS release's born-again generation (Tian et al., 2020): a freshly initialised
student, ce_weight * CE + kd_weight * KL at T = --kd_T to the frozen teacher (an RFS-simple model),
plain images only."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from torch import nn

import runtime.distributed
import engine.loop
from distill import rfs_distill_loss
from methods.base import DistillationMethod
from methods.registry import register_method
from published.rfs import RFS_DISTILL_CARD
from models import Backbone


@dataclass(frozen=True)
class RFSDistillValues:
    ce_weight: float
    kd_weight: float
    kd_T: float


@register_method
class RFSDistill(DistillationMethod):
    card = RFS_DISTILL_CARD
    Values = RFSDistillValues
    kind = "an RFS-distill student"
    student_copies_teacher = False  # RFS distils into a fresh network, of any architecture
    objective_help = "the RFS-distill baseline (fresh student, CE + KD)"
    shared_flags = ("kd_T",)
    # The RFS release's train_distillation.py: -r/--gamma weighs the cross-entropy, -a/--alpha the KD term.
    release_aliases = {"beta": "ce_weight", "official_alpha": "kd_weight"}  # -r/--gamma is SKD Gen-1's beta

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("RFS-distill (--objective rfs)")
        g.add_argument("--ce_weight", type=float, default=0.5, help="weight of cross-entropy (the release's -r)")
        g.add_argument("--kd_weight", type=float, default=0.5, help="weight of the KD term (the release's -a)")

    @classmethod
    def run_name_part(cls, args: argparse.Namespace) -> str:
        return f"rfs_r_{args.ce_weight}_a_{args.kd_weight}_kd_T_{args.kd_T}"

    def create_network(self) -> nn.Module:
        return self.fresh_network()  # a fresh student: the teacher's architecture (born-again) or --model_s

    def make_step(self, state: engine.loop.TrainState, loader) -> engine.loop.Step:
        v = self.values
        return rfs_distill_step(self.model, self.teacher, v.ce_weight, v.kd_weight, v.kd_T)


def rfs_distill_step(student: Backbone, teacher: Backbone, ce_weight: float, kd_weight: float,
                     temperature: float) -> engine.loop.Step:
    """Student and teacher on the plain images; CE to the labels plus KD to the teacher."""
    forward = runtime.distributed.wrap(student, unused=("rot_classifier",))

    def step(images: torch.Tensor, targets: torch.Tensor) -> engine.loop.StepResult:
        with torch.no_grad():
            teacher_logits = teacher(images)
        logits = forward(images)
        loss, ce, kd = rfs_distill_loss(logits, teacher_logits, targets, ce_weight, kd_weight, temperature)
        correct = (logits.argmax(1) == targets).sum()
        return engine.loop.StepResult(loss, {"ce": ce.detach(), "kd": kd.detach()}, correct, len(images))

    return step
