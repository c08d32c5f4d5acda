"""torch Datasets and DataLoaders over an ImageSet.

The training order and every augmentation are pure functions of (seed, epoch): EpochSampler draws
each epoch's permutation from a generator seeded by them and pairs every index with the seed of
its augmentation, which the dataset applies in a forked RNG. Nothing depends on which worker
process loads an image or on what the workers drew before, so a run resumed in a fresh process
(after a pre-emption, mid-epoch or at an epoch boundary) loads exactly the batches an
uninterrupted run loads, with worker processes, persistent or not.
"""
from __future__ import annotations

import atexit
import functools
import multiprocessing
import multiprocessing.synchronize
import os
import signal
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from dataset.imageset import ImageSet


def augmentation_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of image `index`'s augmentation in `epoch` (each image is drawn once per epoch)."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (1 << 63)


class TransformedImages(Dataset):
    """(transform(image), label) pairs of an ImageSet. Indexed by (index, augmentation seed) from
    EpochSampler, the transform runs in a forked torch RNG seeded with it; a plain index uses the
    current RNG."""

    def __init__(self, images: ImageSet, transform: Callable[[np.ndarray], torch.Tensor]) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        if isinstance(item, tuple):
            index, seed = item
            with torch.random.fork_rng(devices=[]):  # torchvision's random transforms draw from torch's CPU RNG
                # The CPU generator alone: torch.manual_seed would also (lazily) re-seed every GPU's stream,
                # which costs a stack trace per image and, loading in the main process, would reset the
                # dropout and DropBlock masks' stream to the last image's seed.
                torch.default_generator.manual_seed(seed)
                image = self.transform(self.images.images[index])
        else:
            index = item
            image = self.transform(self.images.images[index])
        return image, int(self.images.labels[index])


class EpochSampler(Sampler):
    """Each epoch, a permutation of the `n` images drawn from (seed, epoch), cut to a multiple of
    `world` (this rank takes every world-th index from `rank`, as DistributedSampler does), each
    index paired with its augmentation seed. `set_epoch(epoch, skip)` selects the epoch and skips
    its first `skip` samples (a resumed epoch's trained part)."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def indices(self) -> torch.Tensor:
        """This rank's image indices of the epoch in training order, after the skipped ones."""
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        return order[: self.n - self.n % self.world][self.rank::self.world][self.skip:]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self.indices().tolist():
            yield index, augmentation_seed(self.seed, self.epoch, index)

    def __len__(self) -> int:
        return max(self.n // self.world - self.skip, 0)


_main_exiting: multiprocessing.synchronize.Event | None = None


def _exiting_event() -> multiprocessing.synchronize.Event:
    """Set when the main process exits (atexit), before multiprocessing terminates the workers."""
    global _main_exiting
    if _main_exiting is None:
        _main_exiting = multiprocessing.Event()
        atexit.register(_main_exiting.set)  # runs before multiprocessing's own exit handler (registered earlier)
    return _main_exiting


def _worker_signals(main_exiting: multiprocessing.synchronize.Event, worker_id: int) -> None:
    """SIGTERM and SIGINT reach every process of a job (SLURM signals the whole step, Ctrl-C and
    torchrun the process group). A worker killed by one would fail the main process's step, which
    is to finish and checkpoint; so workers ignore them, except the SIGTERM with which the exiting
    main process terminates its workers."""
    def on_sigterm(signum: int, frame: object) -> None:
        if main_exiting.is_set():
            os._exit(0)

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def train_loader(images: ImageSet, transform: Callable, batch_size: int, num_workers: int, seed: int, *,
                 pin_memory: bool = False, shard: tuple[int, int] | None = None) -> DataLoader:
    """Shuffled batches of EpochSampler's order (call `loader.sampler.set_epoch` before each epoch);
    drops the last incomplete batch, as the official loader does.

    `shard`: (rank, world size) under distributed training: each rank reads a disjoint 1/world of
    every epoch's permutation."""
    rank, world = shard if shard is not None else (0, 1)
    # Its own generator: starting an epoch's iterator must not draw from the global RNG (dropout masks).
    return DataLoader(TransformedImages(images, transform), batch_size=batch_size,
                      sampler=EpochSampler(len(images), seed, rank, world), drop_last=True, num_workers=num_workers,
                      pin_memory=pin_memory,
                      worker_init_fn=functools.partial(_worker_signals, _exiting_event()) if num_workers > 0 else None,
                      persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(seed))
