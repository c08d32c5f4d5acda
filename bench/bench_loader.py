"""Throughput of the training input pipeline alone (images per second): the scripts' loader
(EpochSampler order, per-image PIL augmentation in worker processes, pinned memory on CUDA) over a
CIFAR-FS-sized training split of random pixels, each batch copied to the device. Compare with
bench/bench_train.py's step-only figure: training runs at the slower of the two.

    python bench/bench_loader.py --image_size 32 --num_workers 2 --batches 100
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import engine.args  # noqa: E402
import util  # noqa: E402
from dataset.imageset import ImageSet  # noqa: E402
from dataset.loaders import train_loader  # noqa: E402
from published.profiles import CIFAR_NORMALIZATION  # noqa: E402
from dataset.transforms import train_transform  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser("training loader throughput")
    parser.add_argument("--device", default=None)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--images", type=int, default=38_400,
                        help="training images (CIFAR-FS and miniImageNet: 38,400)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=engine.args.default_num_workers(),
                        help="default: the training scripts' default for this process")
    parser.add_argument("--batches", type=int, default=100, help="timed batches, after one epoch start")
    args = parser.parse_args()
    device = util.resolve_device(args.device)
    print(f"device: {util.describe_device(device, args.device)}")
    rng = np.random.RandomState(0)
    pixels = rng.randint(0, 256, (args.images, args.image_size, args.image_size, 3), dtype=np.uint8)
    images = ImageSet(pixels, np.arange(args.images) % 64, "random pixels")
    padding = 4 if args.image_size <= 32 else 8
    loader = train_loader(images, train_transform(args.image_size, padding, CIFAR_NORMALIZATION), args.batch_size,
                          args.num_workers, seed=0, pin_memory=device.type == "cuda")
    loader.sampler.set_epoch(1)
    batches = iter(loader)
    next(batches)  # workers started and their first batches in flight
    start = time.perf_counter()
    for _ in range(args.batches):
        x, y = next(batches)
        x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    rate = args.batches * args.batch_size / (time.perf_counter() - start)
    print(f"| loader | {args.image_size} px | {args.num_workers} workers | {rate:.0f} images/s |")


if __name__ == "__main__":
    util.run_cli(main)
