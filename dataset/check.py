"""Check a data root before training on it: what each split holds and every problem found.

    python -m dataset.check --dataset CIFAR-FS --data_root DIR [--n_ways 5 --n_shots 5 --n_queries 15]

Prints, per split, the files read, image shape and dtype, classes and images per class, then
each problem on its own line (missing or unreadable file, wrong shape, too few classes or images
for n_ways-way n_shots-shot episodes with n_queries queries). Exits 1 when there is a problem.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from dataset.catalog import DATASETS, load_split
from dataset.errors import DataError
from dataset.imageset import ImageSet
from util import ArgumentParser

# Splits the training scripts can run without: only --use_trainval reads trainval.
OPTIONAL_SPLITS = ("trainval",)


def describe(split: str, images: ImageSet) -> str:
    counts = np.bincount(images.labels)
    per_class = f"{counts.min()}" if counts.min() == counts.max() else f"{counts.min()}-{counts.max()}"
    return (f"{split:9s} {images.source}: {len(images)} images {images.images.shape[1:]} {images.images.dtype}, "
            f"{images.num_classes} classes, {per_class} images per class")


def episode_problems(split: str, images: ImageSet, n_ways: int, n_shots: int, n_queries: int) -> list[str]:
    counts = np.bincount(images.labels)
    problems = []
    if images.num_classes < n_ways:
        problems.append(f"{images.source}: {images.num_classes} classes, {n_ways}-way episodes need {n_ways}")
    short = np.flatnonzero(counts < n_shots + n_queries)
    if len(short):
        names = [images.class_names[c] if c < len(images.class_names) else str(c) for c in short[:5]]
        problems.append(f"{images.source}: {len(short)} classes have fewer than n_shots + n_queries = "
                        f"{n_shots + n_queries} images (e.g. {', '.join(names)}: {counts[short[0]]})")
    return problems


def check(dataset: str, data_root: str | None, n_ways: int, n_shots: int, n_queries: int,
          image_size: int | None = None) -> tuple[list[str], list[str]]:
    """(report lines, problem lines) for every split of the dataset."""
    report, problems = [], []
    sizes = {}
    for split in DATASETS.get(dataset).splits:
        try:
            images = load_split(dataset, data_root, split, image_size)
        except DataError as e:
            if split in OPTIONAL_SPLITS and "file not found" in str(e):
                report.append(f"{split:9s} not found (optional: only --use_trainval reads it)")
            else:
                problems.append(str(e))
            continue
        report.append(describe(split, images))
        sizes[split] = images.image_size
        if split in ("val", "test"):
            problems += episode_problems(split, images, n_ways, n_shots, n_queries)
    if len(set(sizes.values())) > 1:
        problems.append(f"image sizes differ between splits: {sizes}")
    return report, list(dict.fromkeys(problems))  # a bad --data_root fails every split the same way


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser("python -m dataset.check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=DATASETS.names())
    parser.add_argument("--data_root", default=None)
    parser.add_argument("--image_size", type=int, default=None)
    parser.add_argument("--n_ways", type=int, default=5)
    parser.add_argument("--n_shots", type=int, default=5,
                        help="default 5: the end-of-training report runs 1 and 5 shots")
    parser.add_argument("--n_queries", type=int, default=15)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    report, problems = check(args.dataset, args.data_root, args.n_ways, args.n_shots, args.n_queries, args.image_size)
    print("\n".join(report))
    for problem in problems:
        print(f"problem: {problem}")
    print(f"{args.dataset}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
