"""DVP phase 2 (Zhao and Wen, 2020): teacher and student both start as the phase-1 prior of --path_t
(methods/dvp_prior.py); the student, with a fresh classifier, learns with cross-entropy plus, after
--dvp_no_distill_epochs, the partial L2 between its stage pre-activations (through a 1x1 conv + BN
connector each) and the frozen teacher's, with margins from the teacher's BatchNorm (distill/dvp.py)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from torch import nn

import runtime.distributed
import engine.loop
import util
from distill import cross_entropy_loss
from distill.dvp import feature_distillation_loss, feature_margins
from methods.base import DistillationMethod
from methods.registry import register_method
from published.dvp import DVP_CARD
from models import Backbone, WithConnectors, connector


@dataclass(frozen=True)
class DVPValues:
    dvp_weight: float
    dvp_no_distill_epochs: int


@register_method
class DVP(DistillationMethod):
    card = DVP_CARD
    Values = DVPValues
    kind = "a DVP student"
    objective_help = ("DVP phase 2 (student and teacher from a train_supervised_ssl.py --objective dvp prior; Zhao "
                      "and Wen, 2020)")
    teacher_uses_labels = False

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("--objective dvp (defaults: the DVP release's train_selfsup.py)")
        g.add_argument("--dvp_weight", type=float, default=1e-4,
                       help="weight of the feature distillation, summed over elements and averaged over images "
                            "(release: sum / batch / 10000)")
        g.add_argument("--dvp_no_distill_epochs", type=int, default=4,
                       help="first epochs with cross-entropy only (release: epoch < 5, counting from 1)")

    @classmethod
    def check_args(cls, args: argparse.Namespace) -> None:
        if args.dvp_weight < 0 or args.dvp_no_distill_epochs < 0:
            raise util.UsageError(f"--dvp_weight {args.dvp_weight}, --dvp_no_distill_epochs "
                                  f"{args.dvp_no_distill_epochs}: expected numbers >= 0")

    @classmethod
    def run_name_part(cls, args: argparse.Namespace) -> str:
        return f"dvp_w_{args.dvp_weight}_after_{args.dvp_no_distill_epochs}"

    def create_network(self) -> nn.Module:
        student = self.clone_teacher()
        student.classifier.reset_parameters()  # the prior's backbone with a fresh classifier, as the release's
        return student

    def create_extra_modules(self) -> None:
        """One connector per stage, student to teacher channels, checkpointed beside "model"."""
        self.connectors = nn.ModuleList([
            connector(s.num_features, t.num_features) for s, t in
            zip(self.model.preactivation_batchnorms(), self.teacher.preactivation_batchnorms())]).to(self.device)
        if self.setting.bn_stats == "global":  # their BatchNorms, as the student's, over the global batch
            self.connectors = runtime.distributed.use_global_batch_statistics(self.connectors)
        self.extra_modules["dvp_connectors"] = self.connectors  # DDP broadcasts rank 0's with the student
        self.distill_weight = DistillWeight(self.values.dvp_weight, self.values.dvp_no_distill_epochs)

    def extra_parameters(self) -> list[nn.Parameter]:
        return list(self.connectors.parameters())

    def before_epoch(self, epoch: int) -> None:
        self.distill_weight.set_epoch(epoch)

    def make_step(self, state: engine.loop.TrainState, loader) -> engine.loop.Step:
        margins = feature_margins(self.teacher.preactivation_batchnorms())
        return dvp_step(WithConnectors(self.model, self.connectors), self.teacher, margins, self.distill_weight)


class DistillWeight:
    """DVP's distillation weight: 0 in the first `off_epochs` epochs, then `weight`."""

    def __init__(self, weight: float, off_epochs: int) -> None:
        self.weight, self.off_epochs, self.epoch = weight, off_epochs, 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self) -> float:
        return self.weight if self.epoch > self.off_epochs else 0.0


def dvp_step(student: WithConnectors, teacher: Backbone, margins: list[torch.Tensor],
             weight: DistillWeight) -> engine.loop.Step:
    """Student and frozen teacher on the plain images; CE plus weight() times the feature
    distillation (measured and logged every step, its weight 0 in the first epochs)."""
    forward = runtime.distributed.wrap(student, unused=("model.rot_classifier",))

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
