"""torch Datasets and DataLoaders over an ImageSet."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from dataset.imageset import ImageSet


class TransformedImages(Dataset):
    """(transform(image), label) pairs of an ImageSet."""

    def __init__(self, images: ImageSet, transform: Callable[[np.ndarray], torch.Tensor]) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images.images[index]), int(self.images.labels[index])


def train_loader(images: ImageSet, transform: Callable, batch_size: int, num_workers: int, seed: int,
                 pin_memory: bool = False, shard: tuple[int, int] | None = None) -> DataLoader:
    """Shuffled batches; drops the last incomplete batch, as the official loader does.

    `shard`: (rank, world size) under distributed training: each rank reads a disjoint 1/world of
    every epoch's shuffle (DistributedSampler, reshuffled per epoch by its `set_epoch`)."""
    generator = torch.Generator().manual_seed(seed)
    dataset = TransformedImages(images, transform)
    sampler = None
    if shard is not None:
        rank, world = shard
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    return DataLoader(dataset, batch_size=batch_size, shuffle=sampler is None, sampler=sampler, drop_last=True,
                      num_workers=num_workers, pin_memory=pin_memory, generator=generator,
                      persistent_workers=num_workers > 0)
