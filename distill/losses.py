"""SKD objectives (Gen-0 and Gen-1, and RFS-distill's; see docs/methods.md) as pure functions of tensors.

Every loss computes in float32 whatever the autocast state: under autocast the network hands over
bf16/fp16 logits, and CPU autocast would keep log_softmax, softmax and norm in bf16 (about three
significant digits), too coarse for a KL between near-identical student and teacher.
"""
from __future__ import annotations

import functools
from typing import Callable, TypeVar

import torch
import torch.nn.functional as F

LossFn = TypeVar("LossFn", bound=Callable[..., object])


def float32_loss(fn: LossFn) -> LossFn:
    """Run `fn` with autocast off and its floating-point tensor arguments upcast to float32."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        def up(v):
            return v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v

        args = [up(a) for a in args]
        kwargs = {k: up(v) for k, v in kwargs.items()}
        device_type = next((a.device.type for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), "cpu")
        with torch.autocast(device_type, enabled=False):
            return fn(*args, **kwargs)

    return wrapped  # type: ignore[return-value]


@float32_loss
def rotation_loss(rot_logits: torch.Tensor, rot_labels: torch.Tensor) -> torch.Tensor:
    """The official L_rot: BCE-with-logits against one-hot rotation targets, mean over all B x 4 entries."""
    targets = F.one_hot(rot_labels, rot_logits.shape[1]).to(rot_logits.dtype)
    return F.binary_cross_entropy_with_logits(rot_logits, targets)


@float32_loss
def cross_entropy_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy: the whole RFS-simple objective."""
    return F.cross_entropy(logits, targets)


@float32_loss
def gen0_loss(logits: torch.Tensor, rot_logits: torch.Tensor, targets: torch.Tensor, rot_labels: torch.Tensor,
              gamma: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generation 0: CE(logits, y) + gamma * L_rot. Returns (loss, ce, rot)."""
    ce = F.cross_entropy(logits, targets)
    rot = rotation_loss(rot_logits, rot_labels)
    return ce + gamma * rot, ce, rot


@float32_loss
def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton KD: KL(softmax(t/T) || softmax(s/T)) summed, times T^2, divided by the batch size."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="sum") * temperature**2 / student_logits.shape[0]


@float32_loss
def twin_l2_loss(logits: torch.Tensor, rotated_logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the L2 norm (not squared) of the difference of the twins' logits."""
    return (rotated_logits - logits).norm(p=2, dim=1).mean()


@float32_loss
def gen1_loss(student_logits: torch.Tensor, student_rotated_logits: torch.Tensor, teacher_logits: torch.Tensor,
              beta: float, temperature: float,
              l2_divisor: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generation 1: KD + beta * L2 / l2_divisor (the official code divides by 3). Returns (loss, kd, l2)."""
    kd = kd_loss(student_logits, teacher_logits, temperature)
    l2 = twin_l2_loss(student_logits, student_rotated_logits)
    return kd + beta * l2 / l2_divisor, kd, l2


@float32_loss
def rfs_distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                     ce_weight: float, kd_weight: float, temperature: float
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RFS-distill (born-again, as the RFS release): ce_weight * CE + kd_weight * KD at `temperature`.
    Returns (loss, ce, kd)."""
    ce = F.cross_entropy(student_logits, targets)
    kd = kd_loss(student_logits, teacher_logits, temperature)
    return ce_weight * ce + kd_weight * kd, ce, kd
