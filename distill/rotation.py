"""Image rotations by multiples of 90 degrees (SKD's self-supervised task), on (B, C, H, W) batches."""
from __future__ import annotations

import torch


def rot90(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(2, 3).flip(2)


def rot180(x: torch.Tensor) -> torch.Tensor:
    return x.flip(2).flip(3)


def rot270(x: torch.Tensor) -> torch.Tensor:
    return x.flip(2).transpose(2, 3)


def rotate(x: torch.Tensor, label: int) -> torch.Tensor:
    """Rotate by label * 90 degrees, label in {0, 1, 2, 3}."""
    return (lambda t: t, rot90, rot180, rot270)[label](x)


def four_rotations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cat(x, x90, x180, x270) and rotation labels [0]*B + [1]*B + [2]*B + [3]*B."""
    batch = torch.cat([x, rot90(x), rot180(x), rot270(x)])
    labels = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
    return batch, labels
