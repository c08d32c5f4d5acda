"""SSKD (Xu et al., ECCV 2020) under the few-shot protocol: a freshly initialised student learns with
CE and KD on the plain images, selective KD on their three rotations, and similarity transfer
through projection heads (distill/sskd.py); the teacher's head is first trained on the frozen
teacher's features (--sskd_head_epochs), a phase of its own through the training loop."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from torch import nn

import runtime.distributed
import engine.config
import engine.loop
import util
from distill import four_rotations
from distill.sskd import SSKDWeights, similarity_head_loss, similarity_logits, sskd_loss
from methods.base import DistillationMethod
from methods.registry import register_method
from published.sskd import SSKD_CARD
from models import Backbone, ProjectionHead, WithProjection


@dataclass(frozen=True)
class SSKDValues:
    sskd_ce: float
    sskd_kd: float
    sskd_tf: float
    sskd_ss: float
    sskd_kd_T: float
    sskd_tf_T: float
    sskd_ss_T: float
    sskd_tf_ratio: float
    sskd_ss_ratio: float
    sskd_head_epochs: int
    sskd_head_lr: float


@register_method
class SSKD(DistillationMethod):
    card = SSKD_CARD
    Values = SSKDValues
    kind = "an SSKD student"
    student_copies_teacher = False  # SSKD comes from model compression: a fresh, often smaller, student
    objective_help = "SSKD (fresh student; Xu et al., ECCV 2020)"

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("--objective sskd (defaults: the SSKD release's student.py)")
        g.add_argument("--sskd_ce", type=float, default=SSKDWeights.ce, help="weight of CE on the plain images")
        g.add_argument("--sskd_kd", type=float, default=SSKDWeights.kd, help="weight of KD on the plain images")
        g.add_argument("--sskd_tf", type=float, default=SSKDWeights.tf, help="weight of KD on the rotated images")
        g.add_argument("--sskd_ss", type=float, default=SSKDWeights.ss, help="weight of the similarity transfer")
        g.add_argument("--sskd_kd_T", type=float, default=SSKDWeights.kd_T, help="temperature of KD on plain images")
        g.add_argument("--sskd_tf_T", type=float, default=SSKDWeights.tf_T, help="temperature of KD on rotated images")
        g.add_argument("--sskd_ss_T", type=float, default=SSKDWeights.ss_T,
                       help="temperature of the similarity softmax")
        g.add_argument("--sskd_tf_ratio", type=float, default=SSKDWeights.tf_ratio,
                       help="share of the teacher's wrong rotated rows kept by selective transfer")
        g.add_argument("--sskd_ss_ratio", type=float, default=SSKDWeights.ss_ratio,
                       help="share of the teacher's wrong similarity rows kept by selective transfer")
        g.add_argument("--sskd_head_epochs", type=int, default=60,
                       help="epochs training the teacher's projection head on its frozen features (release: 60)")
        g.add_argument("--sskd_head_lr", type=float, default=0.05,
                       help="lr of the teacher head, decayed x0.1 at 50%% and 75%% of its epochs (release: 0.05 at 30, "
                            "45)")

    @classmethod
    def check_args(cls, args: argparse.Namespace) -> None:
        util.check_positive(vars(args), "sskd_head_epochs")

    @classmethod
    def run_name_part(cls, args: argparse.Namespace) -> str:
        return f"sskd_ce_{args.sskd_ce}_kd_{args.sskd_kd}_tf_{args.sskd_tf}_ss_{args.sskd_ss}"

    def create_network(self) -> nn.Module:
        return self.fresh_network()  # a fresh student: the teacher's architecture (born-again) or --model_s

    def create_extra_modules(self) -> None:
        """A projection head each on the pooled feature, checkpointed beside "model"."""
        self.heads = nn.ModuleDict({"student": ProjectionHead(self.model.feature_dim),
                                    "teacher": ProjectionHead(self.teacher.feature_dim)}).to(self.device)
        self.extra_modules["sskd_heads"] = self.heads

    def extra_parameters(self) -> list[nn.Parameter]:
        return list(self.heads["student"].parameters())

    def pre_phases(self, state: engine.loop.TrainState, loader) -> list[engine.loop.Phase]:
        """SSKD's first phase: the teacher's projection head learns, on the frozen teacher's features, to
        match each rotated image to its own plain image among the batch's (SGD, momentum 0.9, weight decay
        5e-4, lr x0.1 at 50% and 75% of --sskd_head_epochs, as the release's 30 and 45 of 60), on a data
        order of its own (epoch keys -1, -2, ...)."""
        a, head = self.values, self.heads["teacher"]
        optimizer = torch.optim.SGD(head.parameters(), lr=a.sskd_head_lr, momentum=0.9, weight_decay=5e-4)
        epochs = a.sskd_head_epochs

        def learning_rate_at(epoch: int) -> float:
            return engine.config.step_decay(a.sskd_head_lr, 0.1, (epochs * 0.5, epochs * 0.75), epoch)

        return [engine.loop.Phase("teacher_head", epochs, lambda: teacher_head_step(self.teacher, head), optimizer,
                                  learning_rate_at, data_epoch=lambda epoch: -epoch)]

    def make_step(self, state: engine.loop.TrainState, loader) -> engine.loop.Step:
        """After the teacher-head phase (or its restored result, resuming): the head frozen, the student's step."""
        teacher, teacher_head = self.teacher, self.heads["teacher"]
        teacher_head.requires_grad_(False).eval()
        self.freeze(teacher_head, "the teacher's projection head")
        a = self.values
        weights = SSKDWeights(a.sskd_ce, a.sskd_kd, a.sskd_tf, a.sskd_ss, a.sskd_kd_T, a.sskd_tf_T, a.sskd_ss_T,
                              a.sskd_tf_ratio, a.sskd_ss_ratio)
        return sskd_step(WithProjection(self.model, self.heads["student"]), teacher, teacher_head, weights)


def sskd_step(student: WithProjection, teacher: Backbone, teacher_head: ProjectionHead,
              weights: SSKDWeights) -> engine.loop.Step:
    """Teacher and student (with their heads) on the B plain images and their three rotations."""
    forward = runtime.distributed.wrap(student, unused=("model.rot_classifier",))

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


def teacher_head_step(teacher: Backbone, head: ProjectionHead) -> engine.loop.Step:
    """The frozen teacher's features of the B images and their three rotations (under the run's
    autocast), the head on them in float32; metrics: the loss and how often a rotated image finds its
    own plain image first."""
    forward = runtime.distributed.wrap(head.train())

    def step(images: torch.Tensor, targets: torch.Tensor) -> engine.loop.StepResult:
        batch, _ = four_rotations(images)
        with torch.no_grad():
            feature = teacher.forward_features(batch)
        with torch.autocast(images.device.type, enabled=False):
            proj = forward(feature.float())
            loss = similarity_head_loss(proj, len(images))
            with torch.no_grad():
                sim = similarity_logits(proj[len(images):], proj[:len(images)])
                own = torch.arange(len(images), device=images.device).repeat(3)
                found = (sim.argmax(1) == own).float().mean() * 100
        return engine.loop.StepResult(loss, {"rotated_found_own": found}, None, len(images))

    return step
