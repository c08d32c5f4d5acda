"""An in-memory labelled image array: what every reader returns."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from dataset.errors import DataError
from published.profiles import DatasetProfile, dataset_profile


def first_appearance_labels(raw_labels: np.ndarray) -> np.ndarray:
    """Map arbitrary labels to 0..k-1 in order of first appearance (the official convention)."""
    _, first_index, inverse = np.unique(raw_labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first_index), dtype=np.int64)
    rank[np.argsort(first_index, kind="stable")] = np.arange(len(first_index))
    return rank[inverse.reshape(-1)]


@dataclass
class ImageSet:
    """Images (N, H, W, 3) uint8 with labels 0..k-1 numbered by first appearance in the source."""

    images: np.ndarray
    labels: np.ndarray
    source: str
    class_names: list[str] = field(default_factory=list)
    # Set by load_split from the dataset's name; an ImageSet made otherwise is profiled like a
    # `folder` dataset of its images.
    profile: DatasetProfile | None = None

    def __post_init__(self) -> None:
        if self.profile is None and self.images.ndim == 4:
            self.profile = dataset_profile("folder", int(self.images.shape[1]))

    @classmethod
    def from_raw(cls, images: np.ndarray, raw_labels, source: str, class_names: list[str] | None = None) -> "ImageSet":
        images = np.asarray(images)
        raw = np.asarray(raw_labels).reshape(-1)
        if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
            raise DataError(f"{source}: expected images of shape (N, H, H, 3), got {images.shape}")
        if images.dtype != np.uint8:
            raise DataError(f"{source}: expected uint8 images, got {images.dtype}")
        if len(raw) != len(images):
            raise DataError(f"{source}: {len(images)} images but {len(raw)} labels")
        if len(images) == 0:
            raise DataError(f"{source}: no images")
        return cls(images, first_appearance_labels(raw), source, list(class_names or []))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def class_indices(self) -> list[np.ndarray]:
        """Indices of each class's images, in file order (class c is entry c)."""
        order = np.argsort(self.labels, kind="stable")
        counts = np.bincount(self.labels, minlength=self.num_classes)
        return np.split(order, np.cumsum(counts)[:-1])

    def subset_classes(self, num_classes: int) -> "ImageSet":
        """The images of the first `num_classes` classes (the official `toy` rule: label < 5)."""
        keep = self.labels < num_classes
        return replace(self, images=self.images[keep], labels=self.labels[keep],
                       class_names=self.class_names[:num_classes])

    def resized(self, image_size: int) -> "ImageSet":
        """The same images resized to image_size x image_size (bilinear), or self if already that size."""
        if image_size == self.image_size:
            return self
        out = np.stack([np.asarray(Image.fromarray(img).resize((image_size, image_size), Image.BILINEAR))
                        for img in self.images])
        return replace(self, images=out)
