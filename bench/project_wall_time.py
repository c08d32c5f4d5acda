"""What each paper table's SKD training costs: FLOPs from the model (torch.utils.flop_counter) and the
published settings (epochs, train-set sizes in methods/), turned into wall time at a throughput you
give: the scripts' measured images/s (bench/gpu_check.sh prints them), or an assumed sustained
TFLOP/s (arithmetic for scale, not a measurement).

    python bench/project_wall_time.py --tflops 250
    python bench/project_wall_time.py --gen0_rate 32=9000,84=1300 --gen1_rate 32=15000,84=2200
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import methods  # noqa: E402
from dataset.profiles import dataset_profile  # noqa: E402
from methods.settings import DATASETS, TRAIN_IMAGES  # noqa: E402
from models import create_model  # noqa: E402

BATCH = 64  # the paper's; an epoch drops the last incomplete batch
# Forward-equivalents per training image (a backward costs about two forwards): Gen-0 trains on the
# image and its 3 rotations (4 x 3); Gen-1 trains the student on the image and its 180-degree twin
# (2 x 3) and runs the frozen teacher once (1).
FORWARDS = {"skd_gen0": 12, "skd_gen1": 7}


def forward_flops(dataset: str) -> int:
    """FLOPs of one ResNet-12 forward at the dataset's image size (convolutions and matmuls)."""
    size = dataset_profile(dataset).image_size
    model = create_model("resnet12_ssl", 64, dataset).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops()


def rates(text: str | None) -> dict[int, float]:
    """`32=9000,84=1300` -> {32: 9000.0, 84: 1300.0} (training images per second by image size)."""
    if not text:
        return {}
    try:
        return {int(k): float(v) for k, v in (item.split("=") for item in text.split(","))}
    except ValueError:
        sys.exit(f"error: expected SIZE=IMAGES_PER_S[,SIZE=IMAGES_PER_S], got {text!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--tflops", type=float, help="an assumed sustained throughput, TFLOP/s")
    parser.add_argument("--gen0_rate", help="measured Gen-0 training images/s by image size, e.g. 32=9000,84=1300")
    parser.add_argument("--gen1_rate", help="measured Gen-1 training images/s by image size")
    args = parser.parse_args()
    measured = {"skd_gen0": rates(args.gen0_rate), "skd_gen1": rates(args.gen1_rate)}
    timed = bool(args.tflops) or any(measured.values())
    header = "| table | images / epoch | px | Gen-0 epochs | Gen-0 PFLOP | Gen-1 epochs | Gen-1 PFLOP |"
    if timed:
        header += " Gen-0 min | Gen-1 min | together min |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for dataset in DATASETS:
        size = dataset_profile(dataset).image_size
        images = TRAIN_IMAGES[dataset].value // BATCH * BATCH
        flops = forward_flops(dataset)
        row = [dataset, f"{images:,}", str(size)]
        minutes = []
        for name in ("skd_gen0", "skd_gen1"):
            epochs = methods.get_method(name).published[dataset].epochs.value
            total = images * epochs * FORWARDS[name] * flops
            row += [str(epochs), f"{total / 1e15:.1f}"]
            if size in measured[name]:
                minutes.append(images * epochs / measured[name][size] / 60)
            elif args.tflops:
                minutes.append(total / (args.tflops * 1e12) / 60)
            else:
                minutes.append(None)
        if timed:
            row += ["-" if m is None else f"{m:.1f}" for m in minutes]
            row.append("-" if None in minutes else f"{sum(minutes):.1f}")
        print("| " + " | ".join(row) + " |")
    print("\nResNet-12 forward: " + ", ".join(f"{dataset_profile(d).image_size} px {forward_flops(d) / 1e9:.2f} GFLOP"
                                             for d in ("CIFAR-FS", "miniImageNet")))
    if args.tflops and not any(measured.values()):
        print(f"minutes at an assumed {args.tflops:g} TFLOP/s sustained: arithmetic, not a measurement")


if __name__ == "__main__":
    main()
