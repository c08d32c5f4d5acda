"""SKD generation 1: self-supervised knowledge distillation.

The student starts as an exact copy of the frozen Gen-0 teacher. Each batch x is seen by the teacher
(logits p_t) and by the student on x and on its 180-degree rotation:
    loss = KL(p_s(x), p_t(x)) at temperature T  +  beta * mean ||p_s(x180) - p_s(x)||_2
There is no cross-entropy term. `--official_quirks` reproduces the released code instead: the
student is forwarded on all four rotations (BatchNorm sees 4B images), the L2 term is divided by 3,
and DropBlock ramps as fast as there (`--official_ramp`).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
import math

import torch
from torch import nn

import engine.loop
import runtime.distributed
import util
from engine.args import Unset
from distill import gen1_loss, rot90, rot180, rot270
from methods.base import DistillationMethod
from methods.registry import register_method
from published.skd import SKD_GEN1_CARD
from models import Backbone
from models.dropblock import add_dropblock_calls, dropblock_calls


@dataclass(frozen=True)
class SKDGen1Values:
    beta: float  # the L2 term's weight (-r/--gamma)
    kd_T: float
    official_quirks: bool
    official_ramp: bool
    test_batch_size: int  # episodes per batch of the released per-epoch evaluation (its ramp count)
    n_test_runs: int  # episodes of that evaluation


@register_method
class SKDGen1(DistillationMethod):
    card = SKD_GEN1_CARD
    Values = SKDGen1Values
    kind = "an SKD Gen-1 student"
    objective_help = "SKD Gen-1 (default)"
    shared_flags = ("kd_T",)

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("SKD Gen-1 (--objective skd)")
        g.add_argument("-r", "--gamma", dest="beta", type=float, default=0.1,
                       help="beta, the weight of the L2 term (not given: the value for --dataset, CIFAR-FS 0.1, "
                            "FC100 0.2, miniImageNet 0.025, 0.05 or 0.075 (the release's sweep: give one; "
                            "scripts/reproduce.py trains each and keeps the best on val), tieredImageNet 0.2 "
                            "(ours: FC100's))")
        g.add_argument("--official_quirks", action="store_true",
                       help="as the released code: forward the student on all four rotations, divide L2 by 3, "
                            "and ramp DropBlock as --official_ramp")
        g.add_argument("--official_ramp", action="store_true",
                       help="ramp DropBlock as the released code does, whose counter also counts the 2 forwards per "
                            "test episode of its per-epoch evaluation (about 3x faster); no test data is read")
        g.add_argument("--test_batch_size", type=int, default=1,
                       help="--official_ramp: episodes per batch of the released per-epoch evaluation whose forwards "
                            "the ramp counts (official default 1)")

    @classmethod
    def check_given(cls, args: argparse.Namespace) -> None:
        given = [not isinstance(getattr(args, dest), Unset) and getattr(args, dest)
                 for dest in ("official_ramp", "official_quirks")]
        if not isinstance(args.test_batch_size, Unset) and not any(given):
            raise util.UsageError("--test_batch_size: read only by the released ramp's count; it needs --official_ramp "
                                  "or --official_quirks")

    @classmethod
    def run_name_part(cls, args: argparse.Namespace) -> str:
        return f"kd_T_{args.kd_T}_beta_{args.beta}" + ("_quirks" if args.official_quirks else "")

    def create_network(self) -> nn.Module:
        student = self.clone_teacher()
        if self.values.official_ramp and not dropblock_calls(student):
            raise util.UsageError(f"--official_ramp: the {self.setting.model} student has no DropBlock to ramp")
        return student

    def make_step(self, state: engine.loop.TrainState, loader) -> engine.loop.Step:
        v = self.values
        return gen1_step(self.model, self.teacher, v.beta, v.kd_T, v.official_quirks)

    def after_epoch(self, epoch: int) -> None:
        if self.values.official_ramp or self.values.official_quirks:
            add_dropblock_calls(self.model, official_eval_calls_per_epoch(self.values.n_test_runs,
                                                                          self.values.test_batch_size))


def gen1_step(student: Backbone, teacher: Backbone, beta: float, temperature: float,
              official_quirks: bool) -> engine.loop.Step:
    """Teacher on x, student on x and x180 (all four rotations with the released code's quirks)."""
    forward = runtime.distributed.wrap(student, unused=("rot_classifier",))  # DDP under torchrun

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


def official_eval_calls_per_epoch(n_test_runs: int, test_batch_size: int) -> int:
    """DropBlock counter steps the released Gen-1 adds per epoch outside training: it evaluates the
    test split after every epoch, two forwards (support, query) per batch of episodes."""
    return 2 * math.ceil(n_test_runs / test_batch_size)
