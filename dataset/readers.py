"""Readers for the official SKD/RFS data packages (SPEC section 6). Each returns an ImageSet."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np

from dataset.errors import DataError
from dataset.imageset import ImageSet


def _open_pickle(path: Path) -> object:
    """Load a pickle written under Python 2 or 3 (latin1 decodes the Python 2 byte strings)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with path.open("rb") as f:
            return pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as e:
        raise DataError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None


def _require_keys(obj: object, keys: tuple[str, ...], path: Path) -> dict:
    if not isinstance(obj, dict) or any(k not in obj for k in keys):
        found = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise DataError(f"{path}: expected a dict with keys {list(keys)}, found {found}")
    return obj


def read_data_pickle(path: Path) -> ImageSet:
    """CIFAR-FS / FC100 / miniImageNet pickle: {'data': uint8 (N, H, W, 3), 'labels': N ints, ...}."""
    content = _require_keys(_open_pickle(path), ("data", "labels"), path)
    return ImageSet.from_raw(np.asarray(content["data"]), content["labels"], str(path))


def read_tiered_split(folder: Path, split: str) -> ImageSet:
    """tieredImageNet: `{split}_images.npz` (key 'images') and `{split}_labels.pkl` (key 'labels')."""
    image_file = folder / f"{split}_images.npz"
    label_file = folder / f"{split}_labels.pkl"
    if not image_file.is_file():
        raise DataError(f"{image_file}: file not found")
    try:
        with np.load(image_file) as npz:
            if "images" not in npz.files:
                raise DataError(f"{image_file}: expected an npz with key 'images', found {npz.files}")
            images = npz["images"]
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"{image_file}: not a readable npz ({e})") from None
    labels = _require_keys(_open_pickle(label_file), ("labels",), label_file)["labels"]
    return ImageSet.from_raw(images, labels, str(image_file))
