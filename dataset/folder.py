"""Bring-your-own images: `DIR/{train,val,test}/<class>/*.png|jpg`, one folder per class; and the
reading of a user's own images for the command-line tools: a folder with one sub-folder per class, a
flat folder of images, a list file of image paths, or single files."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dataset.errors import DataError
from dataset.imageset import ImageSet

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# How an image becomes image_size x image_size: "stretch" resizes the whole image to the square (the
# folder datasets' reading); "crop" resizes to 1.15 x the side, then takes the central square (the
# BSCD-FSL test transform: Resize(int(1.15 * size)), CenterCrop(size)).
RESIZE_MODES = ("stretch", "crop")
BSCD_RESIZE_FACTOR = 1.15


def image_files(class_dir: Path) -> list[Path]:
    return sorted(f for f in class_dir.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


def load_image(path: Path, image_size: int | None, resize: str = "stretch", modes: Counter | None = None) -> np.ndarray:
    """An RGB uint8 (H, W, 3) array, made image_size x image_size when given (`resize`: RESIZE_MODES).
    `modes`, when given, counts the PIL mode each image had before its conversion to RGB (L, RGBA, ...)."""
    try:
        with Image.open(path) as img:
            if modes is not None:
                modes[img.mode] += 1
            img = img.convert("RGB")
            if image_size is not None and resize == "crop":
                side = int(image_size * BSCD_RESIZE_FACTOR)
                img = img.resize((side, side), Image.BILINEAR)
                # torchvision's CenterCrop offset: round((side - size) / 2)
                start = int(round((side - image_size) / 2.0))
                img = img.crop((start, start, start + image_size, start + image_size))
            elif image_size is not None and img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: not a readable image ({e})") from None


def describe_conversions(modes: Counter) -> str | None:
    """One line naming the images that were not RGB and were converted ("converted to RGB: 20 greyscale
    (L), 3 RGBA"), or None when all were RGB."""
    names = {"L": "greyscale (L)", "1": "black-and-white (1)", "LA": "greyscale with alpha (LA)", "P": "palette (P)",
             "RGBA": "RGBA", "CMYK": "CMYK", "I;16": "16-bit greyscale (I;16)", "I": "32-bit greyscale (I)"}
    parts = [f"{n} {names.get(mode, mode)}" for mode, n in sorted(modes.items()) if mode != "RGB"]
    return "converted to RGB: " + ", ".join(parts) if parts else None


def class_folders(folder: Path) -> list[Path]:
    """The sub-folders of `folder`, in sorted order: its classes in the ImageFolder layout."""
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def list_images(sources: list[str | Path]) -> list[Path]:
    """Image paths from each source, in the given order: a folder (its images, sorted; with class
    sub-folders, theirs), a list file (.txt: one path a line, relative to the list's folder; blank lines
    and lines starting with # skipped) or an image file."""
    paths: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            found = image_files(source) + [p for d in class_folders(source) for p in image_files(d)]
            if not found:
                raise DataError(f"{source}: no .png or .jpg images in it or in its sub-folders")
            paths += found
        elif source.is_file() and source.suffix.lower() == ".txt":
            lines = [line.strip() for line in source.read_text().splitlines()]
            listed = [source.parent / line for line in lines if line and not line.startswith("#")]
            if not listed:
                raise DataError(f"{source}: the list names no images (one path a line)")
            missing = [p for p in listed if not p.is_file()]
            if missing:
                raise DataError(f"{source}: lists {missing[0]}, which is not a file"
                                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
            paths += listed
        elif source.is_file():
            paths.append(source)
        else:
            raise DataError(f"{source}: no such file or folder")
    return paths


def folder_layout(folder: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """(image paths, labels, class names) of a folder in the ImageFolder layout (one sub-folder per class;
    labels index the sorted class names), or of a flat folder of images (labels -1, no class names)."""
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    classes = [d for d in class_folders(folder) if image_files(d)]
    if classes:
        loose = image_files(folder)
        if loose:
            raise DataError(f"{folder}: holds both class sub-folders and images ({loose[0].name}); expected "
                            f"one layout: {folder}/<class>/*.png|jpg or {folder}/*.png|jpg")
        paths = [p for d in classes for p in image_files(d)]
        labels = np.concatenate([np.full(len(image_files(d)), i, np.int64) for i, d in enumerate(classes)])
        return paths, labels, [d.name for d in classes]
    paths = image_files(folder)
    if not paths:
        raise DataError(f"{folder}: no .png or .jpg images; expected {folder}/<class>/*.png|jpg or {folder}/*.png|jpg")
    return paths, np.full(len(paths), -1, np.int64), []


def read_image_folder(split_dir: Path, image_size: int | None = None, resize: str = "stretch") -> ImageSet:
    """Every image of every class folder, classes in sorted order. All images must be square and of
    one size unless `image_size` is given, in which case each is made that size (`resize`: RESIZE_MODES)."""
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
            image = load_image(path, image_size, resize)
            if image.shape[0] != image.shape[1]:
                raise DataError(f"{path}: image is {image.shape[1]}x{image.shape[0]}, not square; "
                                f"pass --image_size N to resize every image to N x N")
            if images and image.shape != images[0].shape:
                raise DataError(f"{path}: image is {image.shape[1]}x{image.shape[0]}, the first one is "
                                f"{images[0].shape[1]}x{images[0].shape[0]}; pass --image_size N to resize")
            images.append(image)
            labels.append(label)
    return ImageSet.from_raw(np.stack(images), np.asarray(labels), str(split_dir), [d.name for d in class_dirs])
