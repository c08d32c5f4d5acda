"""SSKD ("Knowledge Distillation Meets Self-Supervision", Xu, Liu, Li, Loy, ECCV 2020) as pure
functions of tensors: our own implementation of the loss of the paper and its official release.

A batch of B plain images and its 3B rotated copies (90, 180, 270 degrees, rotation-major as
distill.four_rotations lays them out) passes through teacher and student. Besides cross-entropy
and KD on the plain images, the student learns

- transformed KD: KD on the rotated images, keeping only rows the teacher gets right plus a
  `ratio` of the rows it gets wrong, those where the true class ranks highest ("selective
  transfer");
- similarity transfer: for each rotated image, the softmax over its cosine similarities to the
  B plain images of the batch (projection-head outputs, temperature 0.5), student matched to
  teacher by KL, with the same selective transfer where the "true class" of a rotated image is
  its own plain image.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distill.losses import float32_loss, kd_loss


@dataclass(frozen=True)
class SSKDWeights:
    """The release's defaults (student.py): weights, temperatures and selective-transfer ratios."""

    ce: float = 0.1
    kd: float = 0.9
    tf: float = 2.7
    ss: float = 10.0
    kd_T: float = 4.0
    tf_T: float = 4.0
    ss_T: float = 0.5
    tf_ratio: float = 1.0  # every transformed row kept: the release's default
    ss_ratio: float = 0.75


def true_class_rank(teacher_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per row, the position of the true class in the teacher's scores sorted high to low (0: correct)."""
    true_score = teacher_logits.gather(1, targets[:, None])
    return (teacher_logits > true_score).sum(1)


def selective_mask(teacher_logits: torch.Tensor, targets: torch.Tensor, ratio: float) -> torch.Tensor:
    """(N,) bool, the rows transferred: every row the teacher classifies correctly, plus
    int(wrong * ratio) of its wrong rows, those whose true class it ranks highest (ties broken by
    row order, so the choice is deterministic). Computed on the device with shapes that do not
    depend on the data, so that a training step never waits to read how many rows were kept."""
    rank = true_class_rank(teacher_logits, targets)
    wrong = (rank > 0).sum()
    keep = (wrong.double() * ratio).floor().long()
    # A stable sort by rank lists the correct rows (rank 0) first, then the wrong ones best-ranked first.
    order = torch.sort(rank, stable=True).indices
    position = torch.empty_like(order).scatter_(0, order, torch.arange(len(order), device=order.device))
    return position < len(rank) - wrong + keep


def selective_rows(teacher_logits: torch.Tensor, targets: torch.Tensor, ratio: float) -> torch.Tensor:
    """Sorted indices of the rows selective_mask keeps (for reading; the loss uses the mask)."""
    return selective_mask(teacher_logits, targets, ratio).nonzero().flatten()


def similarity_logits(rotated: torch.Tensor, plain: torch.Tensor) -> torch.Tensor:
    """(3B, B) cosine similarities of each rotated image's embedding to each plain image's."""
    return F.normalize(rotated, dim=1) @ F.normalize(plain, dim=1).T


def rotation_sources(batch: int, device: torch.device) -> torch.Tensor:
    """The plain image each of the 3B rotated rows came from (rotation-major layout)."""
    return torch.arange(batch, device=device).repeat(3)


@float32_loss
def selective_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                 temperature: float, ratio: float) -> torch.Tensor:
    """KD (T^2-scaled, batch-mean over the kept rows) on the rows selective transfer keeps; 0 if none.
    kd_loss on those rows, as a masked mean over all rows."""
    kept = selective_mask(teacher_logits, targets, ratio)
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    per_row = F.kl_div(log_p_s, p_t, reduction="none").sum(1)
    return torch.where(kept, per_row, 0.0).sum() * temperature**2 / kept.sum().clamp_min(1)


@float32_loss
def sskd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, student_proj: torch.Tensor,
              teacher_proj: torch.Tensor, targets: torch.Tensor, w: SSKDWeights = SSKDWeights()
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The SSKD objective on a 4B batch (plain images first, then their three rotations, rotation-
    major): logits (4B, K) and projection-head outputs (4B, d) of student and teacher, labels (B,).
    Returns (loss, {"ce", "kd", "tf", "ss"})."""
    b = len(targets)
    ce = F.cross_entropy(student_logits[:b], targets)
    kd = kd_loss(student_logits[:b], teacher_logits[:b], w.kd_T)
    tf = selective_kd(student_logits[b:], teacher_logits[b:], targets.repeat(3), w.tf_T, w.tf_ratio)
    s_sim = similarity_logits(student_proj[b:], student_proj[:b])
    t_sim = similarity_logits(teacher_proj[b:], teacher_proj[:b])
    ss = selective_kd(s_sim, t_sim, rotation_sources(b, targets.device), w.ss_T, w.ss_ratio)
    loss = w.ce * ce + w.kd * kd + w.tf * tf + w.ss * ss
    return loss, {"ce": ce, "kd": kd, "tf": tf, "ss": ss}


@float32_loss
def similarity_head_loss(proj: torch.Tensor, batch: int) -> torch.Tensor:
    """The teacher head's pre-training task: each rotated image must find its own plain image among
    the batch's, cross-entropy over the raw cosine similarities (no temperature, as the release)."""
    logits = similarity_logits(proj[batch:], proj[:batch])
    return F.cross_entropy(logits, rotation_sources(batch, proj.device))
