"""torch Datasets and DataLoaders over an ImageSet."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

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
                 pin_memory: bool = False) -> DataLoader:
    """Shuffled batches; drops the last incomplete batch, as the official loader does."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(TransformedImages(images, transform), batch_size=batch_size, shuffle=True, drop_last=True,
                      num_workers=num_workers, pin_memory=pin_memory, generator=generator,
                      persistent_workers=num_workers > 0)
