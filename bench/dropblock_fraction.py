"""Share of units DropBlock zeroes at drop rate 0.1 (ramp finished), full-block mask vs the release's mask,
on the stage-3/4 maps of CIFAR-FS (32px: 4x4 and 2x2, b = 2) and miniImageNet (84px: 10x10 and 5x5, b = 5),
batch 64, 20 draws each. Usage: python bench/dropblock_fraction.py"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from models.dropblock import DropBlock  # noqa: E402

MAPS = [("CIFAR-FS stage 3", 2, 4, 320), ("CIFAR-FS stage 4", 2, 2, 640),
        ("miniImageNet stage 3", 5, 10, 320), ("miniImageNet stage 4", 5, 5, 640)]


def zeroed_share(mask: str, block: int, feat: int, channels: int, draws: int = 20) -> float:
    module = DropBlock(block, 0.1, mask=mask).train()
    module.num_calls = module.ramp_steps
    x = torch.ones(64, channels, feat, feat)
    return sum(float((module(x) == 0).float().mean()) for _ in range(draws)) / draws


def main() -> None:
    torch.manual_seed(0)
    for name, block, feat, channels in MAPS:
        full, release = (zeroed_share(m, block, feat, channels) for m in ("full", "release"))
        print(f"{name}: b={block} map={feat}x{feat} zeroed full={full:.4f} release={release:.4f}")


if __name__ == "__main__":
    main()
