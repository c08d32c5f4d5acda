"""Image transforms for training and for evaluation (see docs/faithfulness.md); their per-dataset
settings come from published.profiles.

Training uses torchvision on PIL images, as the official code does. Evaluation works on whole
uint8 batches as tensors: it is the hot path there, and a batched crop/flip/normalise is exact.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

if TYPE_CHECKING:
    from torchvision import transforms

from published.profiles import NAMED_NORMALIZATIONS, Normalization, dataset_profile


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
    """--normalization: auto = the dataset profile's constants (never the image size's), or for
    the `folder` dataset the statistics of `train_images`, which must be the training split's."""
    if choice == "auto":
        profile_norm = dataset_profile(dataset, int(train_images.shape[1])).normalization
        if profile_norm is not None:
            return profile_norm
        choice = "data"
    if choice == "data":
        return data_normalization(train_images)
    return NAMED_NORMALIZATIONS[choice]


def train_transform(image_size: int, padding: int, norm: Normalization) -> transforms.Compose:
    """Gen-0/Gen-1 training augmentation: crop with padding (the dataset profile's), colour jitter,
    flip, normalise."""
    # Imported here, not at the top: importing torchvision pulls in torch._dynamo, about 2 s of every
    # command's start-up, and only the workers path needs it.
    from torchvision import transforms

    return transforms.Compose([
        Image.fromarray,
        transforms.RandomCrop(image_size, padding=padding),
        transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(norm.mean, norm.std),
    ])


def contrastive_transform(image_size: int, norm: Normalization) -> transforms.Compose:
    """DVP phase 1's view of an image: the MoCo v1 augmentation its release trains with (random
    resized crop of 20-100% of the area, grayscale with p 0.2, colour jitter 0.4 with hue 0.4, flip),
    at the run's image size."""
    from torchvision import transforms

    return transforms.Compose([
        Image.fromarray,
        transforms.RandomResizedCrop(image_size, scale=(0.2, 1.0)),
        transforms.RandomGrayscale(p=0.2),
        transforms.ColorJitter(0.4, 0.4, 0.4, 0.4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(norm.mean, norm.std),
    ])


class TwoViews:
    """Two independent draws of `transform` of one image, stacked: (2, 3, H, W); a batch of them is
    (B, 2, 3, H, W), the query view first."""

    def __init__(self, transform: transforms.Compose) -> None:
        self.transform = transform

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return torch.stack([self.transform(image), self.transform(image)])


def normalize_batch(images: torch.Tensor, norm: Normalization) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W), the same values as ToTensor + Normalize."""
    return normalize_pixels(images.permute(0, 3, 1, 2).float(), norm)


def normalize_pixels(x: torch.Tensor, norm: Normalization) -> torch.Tensor:
    """Integer-valued float32 (N, 3, H, W) in [0, 255] -> normalised, ToTensor's and Normalize's float32
    operations (divide by 255, subtract the mean, divide by the std), so the same bits. In place."""
    levels, mean, std = _norm_tensors(norm, x.device)
    # 255 as a tensor on x's device, not a Python number: CUDA divides by a host scalar as a multiply by
    # its reciprocal, which can differ from ToTensor's division in the last bit; by a tensor, it divides.
    return x.div_(levels).sub_(mean).div_(std)


@functools.lru_cache(maxsize=8)
def _norm_tensors(norm: Normalization, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(255s, mean, std) as (1, 3, 1, 1) float32 on `device`, made once: a host-to-GPU copy per batch
    would make the host wait for the GPU's queued work."""
    return (torch.full((1, 3, 1, 1), 255.0, device=device),
            torch.tensor(norm.mean, device=device).view(1, 3, 1, 1),
            torch.tensor(norm.std, device=device).view(1, 3, 1, 1))


def crop_flip_batch(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """RandomCrop(size, padding) with zero fill + RandomHorizontalFlip, on a uint8 (N, H, W, 3) batch
    (CPU), the offsets and flips drawn from `generator`."""
    n = len(images)
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    return crop_flip_with(images, padding, top, left, flip)


def crop_flip_with(images: torch.Tensor, padding: int, top: torch.Tensor, left: torch.Tensor,
                   flip: torch.Tensor) -> torch.Tensor:
    """The crop of each zero-padded image at (top[i], left[i]), mirrored where flip[i]: one gather of
    whole pixels, on the images' device; uint8 (N, H, W, 3) in and out."""
    n, h, w, c = images.shape
    device = images.device
    padded = F.pad(images, (0, 0, padding, padding, padding, padding))  # zeros, like PIL's fill=0
    wp = w + 2 * padding
    rows = top.view(n, 1) + torch.arange(h, device=device)
    cols = left.view(n, 1) + torch.arange(w, device=device)
    cols = torch.where(flip.view(n, 1), cols.flip(1), cols)
    image_start = torch.arange(n, device=device).view(n, 1, 1) * ((h + 2 * padding) * wp)
    pixel = (image_start + rows.view(n, h, 1) * wp + cols.view(n, 1, w)).view(-1)
    return padded.reshape(-1, c).index_select(0, pixel).view(n, h, w, c)


def to_tensor_uint8(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images))
