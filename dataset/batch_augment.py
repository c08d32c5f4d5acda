"""The Gen-0/Gen-1 training augmentation (dataset.transforms.train_transform: random crop with
padding, colour jitter of brightness, contrast and saturation 0.4 in a random order, horizontal
flip, normalisation) computed on a whole uint8 batch at once, on the CPU or the GPU, with
parameters drawn per image.

Faithful to torchvision on PIL to the bit, given the same parameters: each colour operation is
Pillow's blend of the image with a "degenerate" image (black for brightness, the mean grey of the
image's luma for contrast, its luma for saturation), out = trunc(clip(d + f * (x - d))) in float32,
with Pillow's integer luma; crops pad with zeros; ToTensor and Normalize are the same float32 ops.
Flip commutes with the colour operations (they are per pixel or use the whole image's mean), so
it is applied with the crop, as one gather.

The parameters of image `index` in `epoch` are a pure function of (seed, epoch, index): a
counter-based hash, not a random stream, so they do not depend on the batch an image lands in, on
the number of ranks, or on what was drawn before (a run resumed mid-epoch draws what an
uninterrupted one draws). Their distributions are torchvision's: crop offsets uniform on
0..2*padding, flip with probability 1/2, each factor uniform on [0.6, 1.4], each of the 6 orders of
the three operations equally likely.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from itertools import permutations

import torch

from published.profiles import Normalization
from dataset.transforms import crop_flip_with, normalize_pixels

JITTER = 0.4  # brightness, contrast and saturation, as train_transform
BRIGHTNESS, CONTRAST, SATURATION = 0, 1, 2
ORDERS = torch.tensor(list(permutations(range(3))))  # (6, 3): the orders ColorJitter's randperm can give
_MASK32 = 0xFFFFFFFF
# The draws of one image, each from its own hash stream.
_STREAMS = {"top": 1, "left": 2, "flip": 3, "brightness": 4, "contrast": 5, "saturation": 6, "order": 7}


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """x * constant mod 2^32 for int64 tensors of 32-bit values, without overflowing int64."""
    high, low = constant >> 16, constant & 0xFFFF
    return ((((x * high) & 0xFFFF) << 16) + x * low) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash with full avalanche (Wellons' lowbias32 constants)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _mix32_int(x: int) -> int:
    """_mix32 of one Python integer (host side)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def _key(*values: int) -> int:
    """A 32-bit key of Python integers of any size (seed, epoch, stream)."""
    key = 0x9E3779B9
    for value in values:
        for part in (value & _MASK32, (value >> 32) & _MASK32):
            key = _mix32_int(key ^ part)
    return key


@functools.lru_cache(maxsize=16)
def _stream_keys(seed: int, epoch: int, streams: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """(S, 2) int64 keys on `device`, made once per epoch: a host-to-GPU copy per batch would make the
    host wait for the GPU's queued work."""
    return torch.tensor([[_key(seed, epoch, s), _key(s, seed)] for s in streams], dtype=torch.int64, device=device)


@functools.lru_cache(maxsize=4)
def _orders_on(device: torch.device) -> torch.Tensor:
    return ORDERS.to(device)


def counter_uniform(seed: int, epoch: int, streams: list[int], index: torch.Tensor) -> torch.Tensor:
    """(N, len(streams)) float32 in [0, 1), 24 random bits each, for each entry of `index` (int64, any
    device): a pure function of (seed, epoch, stream, index)."""
    keys = _stream_keys(seed, epoch, tuple(streams), index.device)
    h = _mix32((index.to(torch.int64) & _MASK32).view(-1, 1) ^ keys[:, 0])
    h = _mix32(h ^ keys[:, 1])
    return (h >> 8).to(torch.float32) * (1.0 / (1 << 24))


@dataclass
class AugmentParams:
    """One batch's parameters, one row per image, on the batch's device."""

    top: torch.Tensor  # int64 crop offsets into the padded image
    left: torch.Tensor
    flip: torch.Tensor  # bool
    factors: torch.Tensor  # (N, 3) float32: brightness, contrast, saturation
    order: torch.Tensor  # (N, 3) int64: the operations in the order they apply

    def __len__(self) -> int:
        return len(self.top)


def draw_params(seed: int, epoch: int, index: torch.Tensor, padding: int) -> AugmentParams:
    """The parameters of the images `index` in `epoch`, as torchvision's transforms draw them."""
    u = dict(zip(_STREAMS, counter_uniform(seed, epoch, list(_STREAMS.values()), index).unbind(1)))
    offsets = 2 * padding + 1
    top = (u["top"] * offsets).long().clamp_max(offsets - 1)
    left = (u["left"] * offsets).long().clamp_max(offsets - 1)
    factors = torch.stack([1 - JITTER + 2 * JITTER * u[name] for name in ("brightness", "contrast", "saturation")], 1)
    order = _orders_on(index.device)[(u["order"] * len(ORDERS)).long().clamp_max(len(ORDERS) - 1)]
    return AugmentParams(top, left, u["flip"] < 0.5, factors, order)


def pil_luma(x: torch.Tensor) -> torch.Tensor:
    """Pillow's RGB -> L of integer-valued float (N, 3, H, W), as int32 (N, 1, H, W):
    (19595 R + 38470 G + 7471 B + 2^15) >> 16."""
    r, g, b = x.to(torch.int32).unbind(1)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).unsqueeze(1)


def color_jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """ColorJitter(0.4, 0.4, 0.4) on integer-valued float32 (N, 3, H, W) in [0, 255], image i with
    factors[i] in order[i]; Pillow's rounding after each operation."""
    n, _, h, w = x.shape
    for slot in range(order.shape[1]):
        op = order[:, slot:slot + 1]
        factor = factors.gather(1, op).view(n, 1, 1, 1)
        luma = pil_luma(x)
        # ImageStat's mean of the luma (an exact integer sum over a count, in float64), rounded half up
        # as ImageEnhance.Contrast does. The count is a tensor on the device: CUDA divides by a host
        # scalar as a multiply by its reciprocal, which can change the last bit, and at a tie the rounding.
        sums = luma.sum((1, 2, 3), dtype=torch.int64).double()
        mean_grey = torch.floor(sums / torch.full_like(sums, h * w) + 0.5).to(x.dtype)
        # The degenerate image: 0 (brightness), the mean grey (contrast) or the luma (saturation),
        # selected by 0/1 weights, exact on integer values.
        is_contrast = (op == CONTRAST).to(x.dtype).view(n, 1, 1, 1)
        is_saturation = (op == SATURATION).to(x.dtype).view(n, 1, 1, 1)
        degenerate = luma.to(x.dtype) * is_saturation + mean_grey.view(n, 1, 1, 1) * is_contrast
        # Pillow's float32 blend d + f * (x - d), a separate multiply and add (no fused rounding),
        # truncated to an integer and clipped to 0..255 (floor, cheaper than trunc, is the same here:
        # below 0 either ends at 0).
        x = (x - degenerate).mul_(factor).add_(degenerate).floor_().clamp_(0, 255)
    return x


def augment_batch(images: torch.Tensor, params: AugmentParams, padding: int, norm: Normalization) -> torch.Tensor:
    """uint8 (N, H, W, 3) images -> normalised float32 (N, 3, H, W), contiguous as a DataLoader's batch
    of train_transform's outputs (the training step lays out its rotated batch itself), each image
    with its parameters; on the images' device."""
    cropped = crop_flip_with(images, padding, params.top, params.left, params.flip)  # uint8 (N, H, W, 3)
    x = cropped.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)  # planes: fast luma
    x = color_jitter(x, params.factors, params.order)
    return normalize_pixels(x, norm)
