"""Image transforms per image size (SPEC section 3 for training, section 5 for evaluation).

Training uses torchvision on PIL images, as the official code does. Evaluation works on whole
uint8 batches as tensors: it is the hot path there, and a batched crop/flip/normalise is exact.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


CIFAR_NORMALIZATION = Normalization((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
IMAGENET_NORMALIZATION = Normalization(
    (120.39586422 / 255, 115.59361427 / 255, 104.54012653 / 255),
    (70.68188272 / 255, 68.27635443 / 255, 72.54505529 / 255),
)


NORMALIZATIONS = ("auto", "cifar", "imagenet", "data")


def data_normalization(images: np.ndarray, chunk: int = 4096) -> Normalization:
    """Per-channel mean and std of uint8 (N, H, W, 3) images, in [0, 1] units (chunked: no big copies)."""
    total = np.zeros(3)
    squares = np.zeros(3)
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].reshape(-1, 3).astype(np.float64) / 255
        total += x.sum(0)
        squares += (x * x).sum(0)
    n = images.shape[0] * images.shape[1] * images.shape[2]
    mean = total / n
    std = np.sqrt(np.maximum(squares / n - mean**2, 0))
    std = np.maximum(std, 1e-3)  # a constant channel (e.g. blank backgrounds) must not divide by zero
    return Normalization(tuple(float(v) for v in mean), tuple(float(v) for v in std))


def choose_normalization(choice: str, dataset: str, train_images: np.ndarray) -> Normalization:
    """--normalization: auto = the official constants for the benchmarks (by image size) and the
    training images' own statistics for the `folder` dataset."""
    if choice == "auto":
        choice = "data" if dataset == "folder" else ("imagenet" if train_images.shape[1] >= 64 else "cifar")
    if choice == "data":
        return data_normalization(train_images)
    return {"cifar": CIFAR_NORMALIZATION, "imagenet": IMAGENET_NORMALIZATION}[choice]


def crop_padding(image_size: int) -> int:
    """RandomCrop padding: 4 at 32x32, 8 at 84x84 (official transforms D and A)."""
    return 8 if image_size >= 64 else 4


def transform_letter(image_size: int) -> str:
    """The official name of the transform family: 'D' (CIFAR-style) or 'A' (ImageNet-style)."""
    return "A" if image_size >= 64 else "D"


def train_transform(image_size: int, norm: Normalization) -> transforms.Compose:
    """Gen-0/Gen-1 training augmentation: crop with padding, colour jitter, flip, normalise."""
    return transforms.Compose([
        Image.fromarray,
        transforms.RandomCrop(image_size, padding=crop_padding(image_size)),
        transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(norm.mean, norm.std),
    ])


def normalize_batch(images: torch.Tensor, norm: Normalization) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W), the same values as ToTensor + Normalize."""
    x = images.permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(norm.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(norm.std, device=x.device).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


def crop_flip_batch(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """RandomCrop(size, padding) with zero fill + RandomHorizontalFlip, on a uint8 (N, H, W, 3) batch."""
    n, h, w, _ = images.shape
    padded = F.pad(images.permute(0, 3, 1, 2), (padding,) * 4)  # zeros, like PIL's fill=0
    top = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
    flip = torch.rand(n, 1, generator=generator) < 0.5
    rows = top + torch.arange(h)
    cols = left + torch.arange(w)
    cols = torch.where(flip, cols.flip(1), cols)
    batch = torch.arange(n).view(n, 1, 1, 1)
    channel = torch.arange(3).view(1, 3, 1, 1)
    out = padded[batch, channel, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
    return out.permute(0, 2, 3, 1)


def to_tensor_uint8(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images))
