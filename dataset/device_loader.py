"""--augment device: the training split held on the training device as uint8, each batch gathered
and augmented there in one batched function (dataset.batch_augment), with no worker processes and
no per-image host work, as the fastest small-image trainers feed a GPU.

The batches are those of the worker path's order (EpochSampler: the epoch's permutation from
(seed, epoch), cut into this rank's share) and every image's augmentation is a pure function of
(seed, epoch, index), so a run resumed mid-epoch, or run with another batch size or number of
ranks, augments each image exactly as an uninterrupted one. The draws differ from the worker
path's (a counter-based hash, not torch's generator); their distributions and the pixels given
the same draws are torchvision's (tests/test_batch_augment.py).
"""
from __future__ import annotations

from typing import Iterator

import torch

from dataset.batch_augment import augment_batch, draw_params
from dataset.imageset import ImageSet
from dataset.loaders import EpochSampler
from published.profiles import Normalization

AUGMENT_CHOICES = ("auto", "device", "workers")
# Share of the GPU's free memory the uint8 training split may take; beyond it the split stays in
# pinned host memory and each batch is copied over.
DEVICE_SHARE = 0.25


def resolve_augment(choice: str) -> str:
    """--augment auto: device on every device. On CUDA it removes the loader from the step's path;
    on the CPU it is 11.5x the PIL path per core at 32 px and level with it end to end (docs/speed.md)."""
    return "device" if choice == "auto" else choice


def placement(nbytes: int, device: torch.device) -> torch.device:
    """Where the uint8 training split lives: on `device` if it fits in DEVICE_SHARE of the free memory."""
    if device.type != "cuda":
        return device
    free, _ = torch.cuda.mem_get_info(device)
    return device if nbytes <= DEVICE_SHARE * free else torch.device("cpu")


class DeviceBatches:
    """Iterable over one epoch's (images, labels) batches on `device`, augmented and normalised,
    drop_last as the official loader; `sampler.set_epoch(epoch, skip)` before each epoch, as for a
    DataLoader over EpochSampler."""

    def __init__(self, images: ImageSet, batch_size: int, seed: int, padding: int, norm: Normalization,
                 device: torch.device, *, shard: tuple[int, int] | None = None) -> None:
        rank, world = shard if shard is not None else (0, 1)
        self.sampler = EpochSampler(len(images), seed, rank, world)
        self.batch_size, self.seed, self.padding, self.norm, self.device = batch_size, seed, padding, norm, device
        pixels = torch.from_numpy(images.images)
        home = placement(pixels.numel(), device)
        self.pixels = pixels.to(home) if home.type == device.type else pixels.pin_memory()
        self.labels = torch.from_numpy(images.labels).long().to(device)
        where = (f"on {device}" if self.on_device
                 else "in pinned host memory, one copy per batch (it does not fit on the GPU)")
        print(f"training images: {pixels.numel() / 1e6:.0f} MB uint8 {where}, augmented in batches on {device}")

    @property
    def on_device(self) -> bool:
        return self.pixels.device.type == self.device.type

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.sampler.indices()[: len(self) * self.batch_size]
        order_here = order.to(self.device, non_blocking=True)
        for start in range(0, len(order), self.batch_size):
            index = order_here[start:start + self.batch_size]
            if self.on_device:
                pixels = self.pixels[index]
            else:
                pixels = (self.pixels[order[start:start + self.batch_size]]
                          .pin_memory().to(self.device, non_blocking=True))
            params = draw_params(self.seed, self.sampler.epoch, index, self.padding)
            yield augment_batch(pixels, params, self.padding, self.norm), self.labels[index]
