"""Readers for the official SKD/RFS data packages (layout: docs/reproducing.md). Each returns an ImageSet."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import BinaryIO

import numpy as np

from dataset.errors import DataError
from dataset.imageset import ImageSet


# Everything the official packages' pickles (Python 2 and 3, numpy 1 and 2) need to rebuild numpy
# arrays and scalars; plain containers, numbers and strings need no globals.
SAFE_PICKLE_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # pickle protocol 5
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes bytes (the arrays' buffers) under pickle protocol 2
})


class _DataUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and plain data only: a pickle naming any other global (a payload that
    would run code on loading) is refused before anything of it runs."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in SAFE_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refused: it names {module}.{name}; a data pickle holds only numpy arrays "
                                         f"and plain data")
        return super().find_class(module, name)


def safe_unpickle(file: BinaryIO) -> object:
    """A pickle's content (Python 2 byte strings decoded as latin1), rebuilding numpy arrays and
    plain data only; raises pickle.UnpicklingError on any other global."""
    return _DataUnpickler(file, encoding="latin1").load()


def _open_pickle(path: Path) -> object:
    """Load a data pickle written under Python 2 or 3 (latin1 decodes the Python 2 byte strings),
    without executing code (_DataUnpickler)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with path.open("rb") as f:
            return safe_unpickle(f)
    except Exception as e:  # a damaged pickle fails in many ways (LookupError, UnicodeDecodeError, ...); none runs code
        raise DataError(f"{path}: not a readable data pickle ({type(e).__name__}: {e})") from None


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
    except DataError:
        raise
    except Exception as e:  # a damaged zip or .npy header fails in many ways; allow_pickle stays False
        raise DataError(f"{image_file}: not a readable npz ({str(e).split('. ')[0]})") from None
    labels = _require_keys(_open_pickle(label_file), ("labels",), label_file)["labels"]
    return ImageSet.from_raw(images, labels, str(image_file))
