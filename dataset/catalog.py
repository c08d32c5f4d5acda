"""Which files make up each dataset, and `load_split` to read one split of it.

`--data_root` may be the official parent folder (`DIR/<dataset folder>/...`) or the dataset
folder itself. The `folder` dataset reads `--data_root/{train,val,test}/<class>/*.png|jpg`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dataset.errors import DataError
from dataset.folder import read_image_folder
from dataset.imageset import ImageSet
from published.profiles import dataset_profile
from dataset.readers import read_data_pickle, read_tiered_split
from dataset.synthetic import make_synthetic_split
from util import Registry

TOY_CLASSES = 5  # the official `toy` dataset: the first 5 classes of CIFAR-FS


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    folder: str | None  # sub-folder of --data_root in the official layout; "": --data_root itself; None: built in
    splits: tuple[str, ...]
    read: Callable[[Path, str, int | None], ImageSet]  # (dataset folder, split, image size or None) -> ImageSet
    marker: Callable[[str], str]  # split -> a file name that identifies the dataset folder


def _cifar_file(split: str) -> str:
    return f"{split}.pickle"


def _mini_file(split: str) -> str:
    # Training reads the "train_phase" files; episodes read the category splits.
    if split in ("train", "trainval"):
        return f"miniImageNet_category_split_train_phase_{split}.pickle"
    return f"miniImageNet_category_split_{split}.pickle"


def _tiered_file(split: str) -> str:
    return f"{split}_images.npz"


# DATASETS' contract: an entry is a DatasetSpec under its own name, whose `read` gives an ImageSet of a split
# (uint8 images, labels 0..K-1, its source named); its training profile (augmentation, normalisation, image
# size, DropBlock size) is published.profiles'. --dataset's choices, the data checks and the plans read it.
DATASETS: Registry[DatasetSpec] = Registry("dataset")
for _spec in (
    DatasetSpec("CIFAR-FS", "CIFAR-FS", ("train", "val", "test", "trainval"),
                lambda d, s, _: read_data_pickle(d / _cifar_file(s)), _cifar_file),
    DatasetSpec("FC100", "FC100", ("train", "val", "test", "trainval"),
                lambda d, s, _: read_data_pickle(d / _cifar_file(s)), _cifar_file),
    DatasetSpec("toy", "CIFAR-FS", ("train", "val", "test"),
                lambda d, s, _: read_data_pickle(d / _cifar_file(s)).subset_classes(TOY_CLASSES), _cifar_file),
    DatasetSpec("miniImageNet", "miniImageNet", ("train", "val", "test", "trainval"),
                lambda d, s, _: read_data_pickle(d / _mini_file(s)), _mini_file),
    DatasetSpec("tieredImageNet", "tieredImageNet", ("train", "val", "test", "trainval"),
                lambda d, s, _: read_tiered_split(d, s), _tiered_file),
    DatasetSpec("synthetic", None, ("train", "val", "test"),
                lambda d, s, _: make_synthetic_split(s), lambda s: ""),
    # Resizing happens while reading, so large images never sit in memory at full size.
    DatasetSpec("folder", "", ("train", "val", "test"),
                lambda d, s, size: read_image_folder(d / s, size), lambda s: s),
):
    DATASETS.register(_spec.name, _spec)


def dataset_names() -> list[str]:
    return DATASETS.names()


def resolve_dataset_folder(spec: DatasetSpec, data_root: str | Path | None) -> Path | None:
    """The folder holding the dataset's files: DIR/<folder> if it exists, else DIR itself."""
    if spec.folder is None:
        return None
    if spec.folder == "":
        if data_root is None or str(data_root) == "":
            raise DataError(f"--data_root: dataset {spec.name} needs a folder holding train/, val/ and test/")
        if not Path(data_root).is_dir():
            raise DataError(f"{data_root}: --data_root folder not found")
        return Path(data_root)
    if data_root is None or str(data_root) == "":
        raise DataError(f"--data_root: dataset {spec.name} needs a data folder "
                        f"(DIR/{spec.folder}/ or the folder itself)")
    root = Path(data_root)
    if (root / spec.folder).is_dir():
        return root / spec.folder
    if (root / spec.marker("train")).is_file():
        return root
    if not root.is_dir():
        raise DataError(f"{root}: --data_root folder not found")
    raise DataError(f"{root}: expected {spec.folder}/ inside it or {spec.marker('train')} in it")


def load_split(dataset: str, data_root: str | Path | None, split: str, image_size: int | None = None) -> ImageSet:
    """Read one split (train, val, test, trainval) of a dataset, resized to image_size when given,
    carrying the dataset's profile."""
    if dataset not in DATASETS:
        raise DataError(f"--dataset: unknown dataset {dataset!r}; expected one of {', '.join(DATASETS.names())}")
    spec = DATASETS.get(dataset)
    if split not in spec.splits:
        raise DataError(f"--dataset {dataset}: no split {split!r}; it has {', '.join(spec.splits)}")
    if image_size is not None and image_size < 8:
        raise DataError(f"--image_size: expected at least 8 pixels, got {image_size}")
    images = spec.read(resolve_dataset_folder(spec, data_root), split, image_size)
    images = images if image_size is None else images.resized(image_size)
    # The dataset's profile, not the image size's (only `folder` is profiled by its image size).
    images.profile = dataset_profile(dataset, images.image_size)
    return images
