"""One profile per dataset: the facts the releases fix for each dataset a run uses (normalisation,
crop padding, DropBlock block size, the official transform letter), read by transforms, models,
evaluation and run names alike: data on the ground floor, so that the networks read their
dataset-dependent choices without importing the data code. The published training settings live
with each method's card.

Image size never changes a named dataset's profile: `--dataset CIFAR-FS --image_size 84` keeps the
CIFAR statistics, padding and block size. Only `folder` datasets, which have no published profile,
take the CIFAR-like or ImageNet-like one by the size of their images.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


CIFAR_NORMALIZATION = Normalization((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
IMAGENET_NORMALIZATION = Normalization(
    (120.39586422 / 255, 115.59361427 / 255, 104.54012653 / 255),
    (70.68188272 / 255, 68.27635443 / 255, 72.54505529 / 255),
)
NAMED_NORMALIZATIONS = {"cifar": CIFAR_NORMALIZATION, "imagenet": IMAGENET_NORMALIZATION}  # --normalization NAME


@dataclass(frozen=True)
class DatasetProfile:
    family: str  # "cifar" or "imagenet"
    image_size: int  # the published image side
    normalization: Normalization | None  # None: the training images' own statistics (folder datasets)
    crop_padding: int  # RandomCrop padding, for training and for support augmentation
    dropblock_size: int  # DropBlock block size in stages 3 and 4
    transform_letter: str  # the official transform family in run names: D (CIFAR) or A (ImageNet)


CIFAR_LIKE = DatasetProfile("cifar", 32, CIFAR_NORMALIZATION, crop_padding=4, dropblock_size=2, transform_letter="D")
IMAGENET_LIKE = DatasetProfile("imagenet", 84, IMAGENET_NORMALIZATION, crop_padding=8, dropblock_size=5,
                               transform_letter="A")

PROFILES: dict[str, DatasetProfile] = {
    "CIFAR-FS": CIFAR_LIKE,
    "FC100": CIFAR_LIKE,
    "toy": CIFAR_LIKE,
    "synthetic": CIFAR_LIKE,
    "miniImageNet": IMAGENET_LIKE,
    "tieredImageNet": IMAGENET_LIKE,
}

# Folder images of at least this side get the ImageNet-like profile (84 px), smaller ones the CIFAR-like one.
FOLDER_IMAGENET_MIN_SIZE = 64


def dataset_profile(dataset: str, image_size: int | None = None) -> DatasetProfile:
    """The profile of `dataset`; for `folder`, chosen by `image_size` (the side of its images)."""
    if dataset in PROFILES:
        return PROFILES[dataset]
    if dataset != "folder":
        raise ValueError(f"no profile for dataset {dataset!r}; known: {', '.join([*PROFILES, 'folder'])}")
    if image_size is None:
        raise ValueError("dataset 'folder': its profile depends on the image size; pass image_size")
    family = IMAGENET_LIKE if image_size >= FOLDER_IMAGENET_MIN_SIZE else CIFAR_LIKE
    return DatasetProfile(family.family, image_size, None, family.crop_padding, family.dropblock_size,
                          family.transform_letter)
