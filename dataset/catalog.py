"""Which files make up each dataset, and `load_split` to read one split of it.

`--data_root` may be the official parent folder (`DIR/<dataset folder>/...`) or the dataset
folder itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dataset.errors import DataError
from dataset.imageset import ImageSet
from dataset.readers import read_data_pickle, read_tiered_split
from dataset.synthetic import make_synthetic_split

TOY_CLASSES = 5  # the official `toy` dataset: the first 5 classes of CIFAR-FS


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    folder: str | None  # sub-folder of --data_root in the official layout; None: built in
    splits: tuple[str, ...]
    read: Callable[[Path, str], ImageSet]  # (dataset folder, split) -> ImageSet
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


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("CIFAR-FS", "CIFAR-FS", ("train", "val", "test", "trainval"),
                    lambda d, s: read_data_pickle(d / _cifar_file(s)), _cifar_file),
        DatasetSpec("FC100", "FC100", ("train", "val", "test", "trainval"),
                    lambda d, s: read_data_pickle(d / _cifar_file(s)), _cifar_file),
        DatasetSpec("toy", "CIFAR-FS", ("train", "val", "test"),
                    lambda d, s: read_data_pickle(d / _cifar_file(s)).subset_classes(TOY_CLASSES), _cifar_file),
        DatasetSpec("miniImageNet", "miniImageNet", ("train", "val", "test", "trainval"),
                    lambda d, s: read_data_pickle(d / _mini_file(s)), _mini_file),
        DatasetSpec("tieredImageNet", "tieredImageNet", ("train", "val", "test", "trainval"),
                    read_tiered_split, _tiered_file),
        DatasetSpec("synthetic", None, ("train", "val", "test"),
                    lambda d, s: make_synthetic_split(s), lambda s: ""),
    )
}


def dataset_names() -> list[str]:
    return list(DATASETS)


def resolve_dataset_folder(spec: DatasetSpec, data_root: str | Path | None) -> Path | None:
    """The folder holding the dataset's files: DIR/<folder> if it exists, else DIR itself."""
    if spec.folder is None:
        return None
    if data_root is None or str(data_root) == "":
        raise DataError(f"--data_root: dataset {spec.name} needs a data folder (DIR/{spec.folder}/ or the folder itself)")
    root = Path(data_root)
    if (root / spec.folder).is_dir():
        return root / spec.folder
    if (root / spec.marker("train")).is_file():
        return root
    if not root.is_dir():
        raise DataError(f"{root}: --data_root folder not found")
    raise DataError(f"{root}: expected {spec.folder}/ inside it or {spec.marker('train')} in it")


def load_split(dataset: str, data_root: str | Path | None, split: str) -> ImageSet:
    """Read one split (train, val, test, trainval) of a dataset."""
    if dataset not in DATASETS:
        raise DataError(f"--dataset: unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    spec = DATASETS[dataset]
    if split not in spec.splits:
        raise DataError(f"--dataset {dataset}: no split {split!r}; it has {', '.join(spec.splits)}")
    return spec.read(resolve_dataset_folder(spec, data_root), split)
