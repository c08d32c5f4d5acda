"""DropBlock (Ghiasi et al. 2018) with the linear ramp used by SKD/RFS.

Two masks, chosen by `mask` ("--dropblock_mask"):

* "full" (the method as published): a seed at grid position (i, j) zeroes rows i..i+b-1 and
  columns j..j+b-1, computed as a max-pool over the seed grid.
* "release": the mask the official code really builds. It lists the N seeds and the b*b block
  offsets and tiles both lists (`repeat`, not `repeat_interleave`) before adding them, so seed i
  (in row-major order over batch, channel, row, column) is paired only with offsets
  (i + kN) mod b^2, i.e. b^2 / gcd(N, b^2) of them, plus its own cell at offset
  ((b-1)//2, (b-1)//2), which the padding keeps. A seed zeroes its full block only when N is
  coprime with b^2. Rebuilt here with device-neutral index arithmetic (no `.cuda()`).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

# The official keep rate ramps over 20 * 2000 forward calls: keep = 1 - drop_rate * n / 40000.
RAMP_STEPS = 40_000
MASKS = ("full", "release")


class DropBlock(nn.Module):
    """Zeroes square blocks of a feature map during training; identity in eval mode.

    The drop probability ramps linearly with the number of training-mode forward calls `n`
    (a plain attribute, not part of the state dict, exactly as in the official code, so it
    restarts at 0 when a checkpoint is loaded into a fresh model).
    """

    def __init__(self, block_size: int, drop_rate: float, ramp_steps: int = RAMP_STEPS,
                 mask: str = "full") -> None:
        super().__init__()
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if mask not in MASKS:
            raise ValueError(f"DropBlock mask must be one of {MASKS}, got {mask!r}")
        self.mask = mask
        self.block_size = block_size
        self.drop_rate = drop_rate
        self.ramp_steps = ramp_steps
        self.num_calls = 0
        # Under torchrun, a sum over the ranks (runtime.distributed.use_global_batch_statistics): the
        # rescale then uses the share kept over the global batch, as one process at that batch does.
        self.sum_over_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None

    def keep_rate(self) -> float:
        return max(1.0 - self.drop_rate * self.num_calls / self.ramp_steps, 1.0 - self.drop_rate)

    def effective_block_size(self, feat_size: int) -> int:
        """The block size, shrunk to the feature map when that is smaller (e.g. 1x1 maps of 28px
        inputs); at the official image sizes blocks always fit and this is block_size."""
        return min(self.block_size, feat_size)

    def seed_probability(self, feat_size: int) -> float:
        """gamma: per-position Bernoulli rate of block seeds for the current ramp step."""
        b = self.effective_block_size(feat_size)
        return (1.0 - self.keep_rate()) / b**2 * feat_size**2 / (feat_size - b + 1) ** 2

    def block_mask(self, seeds: torch.Tensor, block_size: int | None = None) -> torch.Tensor:
        """1 where activations are kept, 0 where this module's `mask` rule drops them."""
        b = block_size or self.block_size
        if self.mask == "release":
            return release_block_mask(seeds, b)
        # Pad b-1 on every side so output position r sees seeds r-b+1..r after a b x b max-pool.
        dropped = F.max_pool2d(F.pad(seeds, (b - 1, b - 1, b - 1, b - 1)), kernel_size=b, stride=1)
        return 1.0 - dropped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_rate == 0:
            return x
        self.num_calls += 1
        batch, channels, height, width = x.shape
        b = self.effective_block_size(min(height, width))
        gamma = self.seed_probability(height)
        grid = (batch, channels, height - b + 1, width - b + 1)
        seeds = torch.bernoulli(torch.full(grid, gamma, device=x.device, dtype=torch.float32))
        mask = self.block_mask(seeds, b)
        # Rescale so the expected activation is unchanged; clamp guards the all-dropped case.
        counts = torch.stack([mask.sum(), mask.new_full((), float(mask.numel()))])  # a fill, no host copy
        if self.sum_over_ranks is not None:
            counts = self.sum_over_ranks(counts)
        scale = counts[1] / counts[0].clamp_min(1.0)
        return x * (mask * scale).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"block_size={self.block_size}, drop_rate={self.drop_rate}, ramp_steps={self.ramp_steps}, "
                f"mask={self.mask}")


def release_block_mask(seeds: torch.Tensor, b: int) -> torch.Tensor:
    """The official code's mask for a (batch, channels, h, w) seed grid: seed i is paired only with the
    block offsets (i + kN) mod b^2 (both index lists tiled), and keeps its own cell at ((b-1)//2, (b-1)//2)."""
    lead, trail = (b - 1) // 2, b // 2
    padded = F.pad(seeds, (lead, trail, lead, trail))
    idx = seeds.nonzero()
    n = idx.shape[0]
    if n > 0:
        pair = torch.arange(n * b * b, device=seeds.device)
        offset = pair % (b * b)
        rows = idx[pair % n]
        padded[rows[:, 0], rows[:, 1], rows[:, 2] + offset // b, rows[:, 3] + offset % b] = 1.0
    return 1.0 - padded


def set_dropblock_mask(model: nn.Module, mask: str) -> None:
    """Choose the mask rule ("full" or "release") of every DropBlock in `model`."""
    if mask not in MASKS:
        raise ValueError(f"--dropblock_mask must be one of {MASKS}, got {mask!r}")
    for module in model.modules():
        if isinstance(module, DropBlock):
            module.mask = mask


def keep_dropblock_eager() -> None:
    """Leave DropBlock out of torch.compile's graphs (--compile): its ramp counter is a Python int
    that changes every call and would recompile every step, so the block runs eagerly between
    compiled graphs. Applied when a run compiles, not as a decorator: torch.compiler.disable imports
    torch._dynamo, about 2 s of every command's start-up."""
    if not getattr(DropBlock, "eager_under_compile", False):
        DropBlock.forward = torch.compiler.disable(DropBlock.forward)
        DropBlock.eager_under_compile = True


def dropblock_calls(model: nn.Module) -> list[int]:
    """The ramp counter of every DropBlock in `model`, in module order (saved for --resume)."""
    return [m.num_calls for m in model.modules() if isinstance(m, DropBlock)]


def set_dropblock_calls(model: nn.Module, calls: list[int]) -> None:
    """Restore the ramp counters saved by `dropblock_calls`."""
    for module, n in zip((m for m in model.modules() if isinstance(m, DropBlock)), calls):
        module.num_calls = int(n)


def add_dropblock_calls(model: nn.Module, calls: int) -> None:
    """Advance every DropBlock's ramp by `calls` forwards (the official ramp counts evaluation forwards too)."""
    for module in model.modules():
        if isinstance(module, DropBlock):
            module.num_calls += calls
