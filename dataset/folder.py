"""Bring-your-own images: `DIR/{train,val,test}/<class>/*.png|jpg`, one folder per class."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dataset.errors import DataError
from dataset.imageset import ImageSet

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def image_files(class_dir: Path) -> list[Path]:
    return sorted(f for f in class_dir.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


def load_image(path: Path, image_size: int | None) -> np.ndarray:
    """An RGB uint8 (H, W, 3) array, resized to image_size x image_size when given."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if image_size is not None and img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: not a readable image ({e})") from None


def read_image_folder(split_dir: Path, image_size: int | None = None) -> ImageSet:
    """Every image of every class folder, classes in sorted order. All images must be square and of
    one size unless `image_size` is given, in which case each is resized to it."""
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: split folder not found; expected <data_root>/{split_dir.name}/<class>/*.png|jpg")
    class_dirs = sorted(d for d in split_dir.iterdir() if d.is_dir())
    if not class_dirs:
        raise DataError(f"{split_dir}: no class folders; expected {split_dir}/<class>/*.png|jpg")
    images, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        files = image_files(class_dir)
        if not files:
            raise DataError(f"{class_dir}: no .png or .jpg images")
        for path in files:
            image = load_image(path, image_size)
            if image.shape[0] != image.shape[1]:
                raise DataError(f"{path}: image is {image.shape[1]}x{image.shape[0]}, not square; "
                                f"pass --image_size N to resize every image to N x N")
            if images and image.shape != images[0].shape:
                raise DataError(f"{path}: image is {image.shape[1]}x{image.shape[0]}, the first one is "
                                f"{images[0].shape[1]}x{images[0].shape[0]}; pass --image_size N to resize")
            images.append(image)
            labels.append(label)
    return ImageSet.from_raw(np.stack(images), np.asarray(labels), str(split_dir), [d.name for d in class_dirs])
