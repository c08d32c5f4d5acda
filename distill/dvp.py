"""DVP ("Distilling Visual Priors from Self-Supervised Learning", Zhao and Wen, ECCV 2020 VIPriors
workshop) as pure functions of tensors: our own implementation of the pieces of its two phases.

Phase 1 trains a momentum-contrast teacher without labels, with a margin on the positive pair:
    L = -log( e^{(cos+ - m)/tau} / (e^{(cos+ - m)/tau} + sum_j e^{cos_j/tau}) ),
cos+ between a query and its key (another view of the same image), cos_j between the query and
the queue of earlier keys; m = 0.4, tau = 0.07 in the release.

Phase 2 distils the teacher's stage outputs (before their ReLU) into a student through a 1x1
conv + BN connector per stage, with the "partial L2" of feature-overhaul distillation: a
teacher activation at or below its channel's margin (the expected value of the BatchNorm output
given that it is negative) only asks the student to stay below that margin.

`train_supervised_ssl.py --objective dvp` runs phase 1 and `train_distillation.py --objective dvp`
phase 2 with these functions.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from distill.losses import float32_loss


@float32_loss
def margin_contrastive_logits(query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, margin: float,
                              temperature: float) -> torch.Tensor:
    """(B, 1 + K) logits: the positive cosine minus `margin`, then the cosines to the K queued keys,
    all divided by `temperature`. The positive pair is column 0."""
    q, k, negatives = F.normalize(query, dim=1), F.normalize(key, dim=1), F.normalize(queue, dim=1)
    positive = (q * k).sum(1, keepdim=True) - margin
    return torch.cat([positive, q @ negatives.T], dim=1) / temperature


@float32_loss
def margin_contrastive_loss(query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, margin: float = 0.4,
                            temperature: float = 0.07) -> torch.Tensor:
    """DVP's phase-1 loss: cross-entropy of margin_contrastive_logits with the positive as the target."""
    logits = margin_contrastive_logits(query, key.detach(), queue, margin, temperature)
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


@torch.no_grad()
def momentum_update(query_encoder: nn.Module, key_encoder: nn.Module, momentum: float) -> None:
    """key <- momentum * key + (1 - momentum) * query, parameter by parameter (MoCo); buffers keep
    the key encoder's own statistics."""
    for q, k in zip(query_encoder.parameters(), key_encoder.parameters(), strict=True):
        k.mul_(momentum).add_(q.detach(), alpha=1 - momentum)


class KeyQueue(nn.Module):
    """The negatives: the last `size` keys, oldest overwritten first (a ring buffer, kept as buffers
    so that checkpoints carry it)."""

    def __init__(self, size: int, dim: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        # Random unit vectors until real keys replace them, as in MoCo.
        self.register_buffer("keys", F.normalize(torch.randn(size, dim, generator=generator), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        size, n = len(self.keys), len(keys)
        slots = (self.pointer + torch.arange(n, device=keys.device)) % size
        self.keys[slots] = F.normalize(keys.detach().to(self.keys.dtype), dim=1)
        self.pointer.copy_((self.pointer + n) % size)


@torch.no_grad()
def grouped_forward(encoder: nn.Module, images: torch.Tensor, groups: int) -> torch.Tensor:
    """encoder(images) with the batch shuffled (global torch RNG) and forwarded in `groups` parts,
    rows returned in the input order. A stand-in on one process for MoCo's shuffle BN across GPUs:
    a key's BatchNorm statistics come from other images than its query's, so the contrast cannot
    be solved by matching batch statistics."""
    if groups <= 1:
        return encoder(images)
    order = torch.randperm(len(images), device=images.device)
    out = torch.cat([encoder(part) for part in images[order].tensor_split(groups)])
    return out[torch.argsort(order)]


def batchnorm_margin(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per channel, E[x | x < 0] for x ~ N(bias, |weight|^2), the distribution of a BatchNorm output
    before its ReLU; -3 |weight| where P(x < 0) is at most 0.001 (the formula is unstable there)."""
    s, mu = weight.detach().abs().double(), bias.detach().double()
    z = mu / s
    below = 0.5 * torch.erfc(z / math.sqrt(2))  # P(x < 0) = Phi(-mu / s)
    density = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    expected = mu - s * density / below.clamp_min(1e-300)
    return torch.where(below > 1e-3, expected, -3 * s).to(weight.dtype)


@float32_loss
def partial_l2(student: torch.Tensor, teacher: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """Sum over every element of (s - t')^2, t' = max(t, margin), counted where s > t' or t' > 0:
    a teacher activation above 0 is matched exactly, one below its margin only asks the student
    to stay below the margin. `margin`: (C,) per channel, negative."""
    target = torch.maximum(teacher, margin.view(1, -1, *([1] * (teacher.dim() - 2))))
    mask = (student > target) | (target > 0)
    return ((student - target).pow(2) * mask).sum()


def feature_margins(batchnorms: list[nn.BatchNorm2d]) -> list[torch.Tensor]:
    """batchnorm_margin of each stage's BatchNorm before its activation (the teacher's), float32."""
    return [batchnorm_margin(bn.weight, bn.bias).float() for bn in batchnorms]


def stage_weights(stages: int) -> list[float]:
    """1 / 2^(stages - 1 - i): each stage counts twice the one before it, the last one 1."""
    return [1.0 / 2 ** (stages - 1 - i) for i in range(stages)]


@float32_loss
def feature_distillation_loss(student_stages: list[torch.Tensor], teacher_stages: list[torch.Tensor],
                              margins: list[torch.Tensor]) -> torch.Tensor:
    """DVP's phase-2 distillation term, per image: sum over stages of stage_weights * partial_l2 of
    the connected student maps and the (detached) teacher maps, divided by the batch size."""
    weights = stage_weights(len(student_stages))
    total = sum(w * partial_l2(s, t.detach(), m)  # partial_l2 upcasts each stage's maps to float32
                for w, s, t, m in zip(weights, student_stages, teacher_stages, margins, strict=True))
    return total / student_stages[0].shape[0]
