"""Images per second of the two training-augmentation paths, per CPU core (one thread, one process)
and on CUDA when there is one: `workers`, torchvision on PIL image by image as each loader worker
runs it (here in the main process: the figure is one worker's), and `device`, the batched
augmentation of dataset.batch_augment on a uint8 split held on the device. Random pixels, batch 64.

    python bench/bench_augment.py --batches 30
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import util  # noqa: E402
from dataset.device_loader import DeviceBatches  # noqa: E402
from dataset.imageset import ImageSet  # noqa: E402
from dataset.loaders import train_loader  # noqa: E402
from published.profiles import CIFAR_NORMALIZATION  # noqa: E402
from dataset.transforms import train_transform  # noqa: E402


def images_per_second(loader, device: torch.device, batches: int) -> float:
    loader.sampler.set_epoch(1)
    it = iter(loader)
    next(it)  # warm-up: first batch (allocations, kernel selection)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(batches):
        images, _ = next(it)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batches * len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser("training augmentation throughput: PIL per image vs batched")
    parser.add_argument("--sizes", default="32,84")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=30, help="timed batches per path and size")
    args = parser.parse_args()
    torch.set_num_threads(1)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if util.cuda_usable() else [])
    print(f"device: cpu (every path on one core, the table's unit), torch {torch.__version__}")
    if len(devices) > 1:
        print(f"device: {util.describe_device(devices[1], 'cuda')}")
    else:
        print(f"no CUDA column: {util.cuda_unavailable_reason()}")
    print("| image size | workers path, 1 core | device path, 1 core | ratio |"
          + (" device path, CUDA |" if len(devices) > 1 else ""))
    print("|---|---|---|---|" + ("---|" if len(devices) > 1 else ""))
    for size in (int(s) for s in args.sizes.split(",")):
        n = args.batch_size * (args.batches + 1)
        rng = np.random.RandomState(0)
        images = ImageSet(rng.randint(0, 256, (n, size, size, 3), dtype=np.uint8), np.arange(n) % 64, "random")
        padding = 4 if size <= 32 else 8
        workers = train_loader(images, train_transform(size, padding, CIFAR_NORMALIZATION), args.batch_size, 0, seed=0)
        rates = [images_per_second(workers, torch.device("cpu"), args.batches)]
        for device in devices:
            batched = DeviceBatches(images, args.batch_size, 0, padding, CIFAR_NORMALIZATION, device)
            rates.append(images_per_second(batched, device, args.batches))
        cuda = f" {rates[2]:.0f} |" if len(rates) > 2 else ""
        print(f"| {size} px | {rates[0]:.0f} | {rates[1]:.0f} | {rates[1] / rates[0]:.1f}x |{cuda}", flush=True)


if __name__ == "__main__":
    util.run_cli(main)
