"""A built-in few-shot dataset generated in memory: no files, seeded, CIFAR-sized.

Each class is a random smooth colour field plus a random asymmetric glyph (so rotations are
distinguishable); each image is its class prototype shifted, re-lit and noised. Train, val and
test use disjoint, independently drawn classes, so few-shot accuracy on val/test measures
transfer to unseen classes, as on the real benchmarks.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from dataset.imageset import ImageSet

IMAGE_SIZE = 32
# (classes, images per class); 20 images per class allow 5-shot + 15-query episodes.
SPLIT_SIZES = {"train": (10, 40), "val": (10, 30), "test": (10, 30)}
_SPLIT_SEED_OFFSET = {"train": 0, "val": 1, "test": 2}


def _prototypes(rng: np.random.RandomState, num_classes: int) -> np.ndarray:
    colour = torch.from_numpy(rng.uniform(0, 255, (num_classes, 3, 4, 4)).astype(np.float32))
    colour = F.interpolate(colour, size=IMAGE_SIZE, mode="bilinear", align_corners=False)
    glyph = torch.from_numpy((rng.uniform(size=(num_classes, 1, 6, 6)) < 0.4).astype(np.float32))
    glyph = F.interpolate(glyph, size=IMAGE_SIZE, mode="nearest")
    ink = torch.from_numpy(rng.uniform(0, 255, (num_classes, 3, 1, 1)).astype(np.float32))
    return (colour * (1 - 0.7 * glyph) + ink * 0.7 * glyph).numpy()  # (K, 3, H, W) float


def make_synthetic_images(num_classes: int, per_class: int, seed: int, name: str) -> ImageSet:
    """num_classes random classes with per_class images each, interleaved, deterministic in seed."""
    rng = np.random.RandomState(seed)
    protos = _prototypes(rng, num_classes)
    labels = np.repeat(np.arange(num_classes), per_class)
    images = protos[labels]
    shifts = rng.randint(-6, 7, size=(len(labels), 2))
    images = np.stack([np.roll(img, tuple(s), axis=(1, 2)) for img, s in zip(images, shifts)])
    images = images * rng.uniform(0.75, 1.25, size=(len(labels), 1, 1, 1))
    images = images + rng.normal(0, 40, size=images.shape)
    images = np.clip(images, 0, 255).round().astype(np.uint8).transpose(0, 2, 3, 1)
    # Interleave classes so the file order is not sorted by class, as in real data files.
    order = rng.permutation(len(labels))
    names = [f"{name}_{c:02d}" for c in range(num_classes)]
    return ImageSet.from_raw(np.ascontiguousarray(images[order]), labels[order], name, names)


@lru_cache(maxsize=None)
def make_synthetic_split(split: str, seed: int = 0) -> ImageSet:
    if split not in SPLIT_SIZES:
        raise ValueError(f"synthetic has splits {sorted(SPLIT_SIZES)}, not {split!r}")
    num_classes, per_class = SPLIT_SIZES[split]
    images = make_synthetic_images(num_classes, per_class, seed * 10 + _SPLIT_SEED_OFFSET[split], f"synthetic_{split}")
    images.source = f"synthetic:{split}"
    return images
