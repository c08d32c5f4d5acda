"""SKD objectives as pure functions of tensors (SPEC sections 3 and 4)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rotation_loss(rot_logits: torch.Tensor, rot_labels: torch.Tensor) -> torch.Tensor:
    """The official L_rot: BCE-with-logits against one-hot rotation targets, mean over all B x 4 entries."""
    targets = F.one_hot(rot_labels, rot_logits.shape[1]).to(rot_logits.dtype)
    return F.binary_cross_entropy_with_logits(rot_logits, targets)


def gen0_loss(logits: torch.Tensor, rot_logits: torch.Tensor, targets: torch.Tensor, rot_labels: torch.Tensor,
              gamma: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generation 0: CE(logits, y) + gamma * L_rot. Returns (loss, ce, rot)."""
    ce = F.cross_entropy(logits, targets)
    rot = rotation_loss(rot_logits, rot_labels)
    return ce + gamma * rot, ce, rot


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton KD: KL(softmax(t/T) || softmax(s/T)) summed, times T^2, divided by the batch size."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="sum") * temperature**2 / student_logits.shape[0]


def twin_l2_loss(logits: torch.Tensor, rotated_logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the L2 norm (not squared) of the difference of the twins' logits."""
    return (rotated_logits - logits).norm(p=2, dim=1).mean()


def gen1_loss(student_logits: torch.Tensor, student_rotated_logits: torch.Tensor, teacher_logits: torch.Tensor,
              beta: float, temperature: float, l2_divisor: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generation 1: KD + beta * L2 / l2_divisor (the official code divides by 3). Returns (loss, kd, l2)."""
    kd = kd_loss(student_logits, teacher_logits, temperature)
    l2 = twin_l2_loss(student_logits, student_rotated_logits)
    return kd + beta * l2 / l2_divisor, kd, l2
