"""What each paper table's SKD training costs: FLOPs from the model (torch.utils.flop_counter) and the
published settings (epochs, train-set sizes in methods/), turned into wall time at a throughput you
give: the scripts' measured images/s (bench/gpu_check.sh prints them), or an assumed sustained
TFLOP/s (arithmetic for scale, not a measurement). With a throughput, the whole table (the paper's
four rows x 3 seeds, every candidate of a sweep) is also scheduled as scripts/reproduce.py runs it:
one stage per GPU, each student after its teacher, on 1 and on 8 GPUs (--gpus).

    python bench/project_wall_time.py --tflops 250 [--model convnet4]
    python bench/project_wall_time.py --gen0_rate 32=9000,84=1300 --gen1_rate 32=15000,84=2200
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import methods  # noqa: E402
from published.profiles import dataset_profile  # noqa: E402
from published.settings import DATASETS, TRAIN_IMAGES  # noqa: E402
from models import DEFAULT_MODEL, create_model, list_models  # noqa: E402

BATCH = 64  # the paper's; an epoch drops the last incomplete batch
# Forward-equivalents per training image (a backward costs about two forwards): Gen-0 trains on the
# image and its 3 rotations (4 x 3); Gen-1 trains the student on the image and its 180-degree twin
# (2 x 3) and runs the frozen teacher once (1).
# RFS-simple trains on the plain image (1 x 3); RFS-distill adds the frozen teacher's forward (3 + 1).
FORWARDS = {"skd_gen0": 12, "skd_gen1": 7, "rfs_simple": 3, "rfs_distill": 4}
TABLE_ROWS = ("rfs_simple", "rfs_distill", "skd_gen0", "skd_gen1")  # teachers before their students
SEEDS = 3


def candidates(name: str, dataset: str) -> int:
    """Training runs of a method per seed: one per combination of its swept values (miniImageNet Gen-1: 3 betas)."""
    method = methods.get_method(name)
    weights = method.published[dataset].weights
    return math.prod(len(v) if isinstance(v := weights[w].value, tuple) else 1 for w in method.weight_flags)


def schedule(stages: list[tuple[str, float, str | None]], gpus: int) -> float:
    """The time a plan takes when every stage runs on one GPU as soon as a GPU is free and its teacher (the stage
    named third, None for none) has finished, plan order breaking ties, as reproduce.py schedules; the last end."""
    free = [0.0] * gpus
    ended: dict[str, float] = {}
    pending = list(stages)
    while pending:
        ready = [(max(min(free), ended[t] if t else 0.0), i) for i, (_, _, t) in enumerate(pending)
                 if t is None or t in ended]
        start, i = min(ready)
        name, minutes, _ = pending.pop(i)
        slot = free.index(min(free))
        free[slot] = ended[name] = start + minutes
    return max(ended.values())


def table_stages(dataset: str, minutes: dict[str, float]) -> list[tuple[str, float, str | None]]:
    """The table's training runs in reproduce.py's order (per seed, each method after its teacher)."""
    stages = []
    for seed in range(SEEDS):
        for name in TABLE_ROWS:
            teacher = methods.get_method(name).teacher
            stages += [(f"{name} {seed} {c}", minutes[name], f"{teacher} {seed} 0" if teacher else None)
                       for c in range(candidates(name, dataset))]
    return stages


def forward_flops(dataset: str, model_name: str = DEFAULT_MODEL) -> int:
    """FLOPs of one forward of the network at the dataset's image size (convolutions and matmuls)."""
    size = dataset_profile(dataset).image_size
    model = create_model(model_name, 64, dataset).eval()
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


def table_minutes(dataset: str, images: int, flops: int, measured: dict[str, dict[int, float]],
                  tflops: float | None) -> dict[str, float] | None:
    """Minutes of one training run of each table row: from the measured rate of its generation (RFS rows: Gen-0's,
    scaled by forward-equivalents), else from the assumed TFLOP/s; None when neither covers every row."""
    size = dataset_profile(dataset).image_size
    out = {}
    for name in TABLE_ROWS:
        epochs = methods.get_method(name).published[dataset].epochs.value
        rate_of = "skd_gen1" if name == "skd_gen1" else "skd_gen0"
        if size in measured[rate_of]:
            rate = measured[rate_of][size] * FORWARDS[rate_of] / FORWARDS[name]
            out[name] = images * epochs / rate / 60
        elif tflops:
            out[name] = images * epochs * FORWARDS[name] * flops / (tflops * 1e12) / 60
        else:
            return None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--tflops", type=float, help="an assumed sustained throughput, TFLOP/s")
    parser.add_argument("--gen0_rate", help="measured Gen-0 training images/s by image size, e.g. 32=9000,84=1300")
    parser.add_argument("--gen1_rate", help="measured Gen-1 training images/s by image size")
    parser.add_argument("--gpus", default="1,8", help="GPU counts to schedule a whole table on, one stage per GPU")
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=list_models(),
                        help="the network every stage trains (its FLOPs; measured rates must be of it)")
    args = parser.parse_args()
    gpu_counts = [int(n) for n in args.gpus.split(",")]
    measured = {"skd_gen0": rates(args.gen0_rate), "skd_gen1": rates(args.gen1_rate)}
    timed = bool(args.tflops) or any(measured.values())
    header = "| table | images / epoch | px | Gen-0 epochs | Gen-0 PFLOP | Gen-1 epochs | Gen-1 PFLOP |"
    if timed:
        header += " Gen-0 min | Gen-1 min | together min |"
        header += "".join(f" table, {n} GPU{'s' if n > 1 else ''} h |" for n in gpu_counts)
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for dataset in DATASETS:
        size = dataset_profile(dataset).image_size
        images = TRAIN_IMAGES[dataset].value // BATCH * BATCH
        flops = forward_flops(dataset, args.model)
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
            every = table_minutes(dataset, images, flops, measured, args.tflops)
            row += ["-" if every is None else f"{schedule(table_stages(dataset, every), n) / 60:.1f}"
                    for n in gpu_counts]
        print("| " + " | ".join(row) + " |")
    print(f"\n{args.model} forward: " + ", ".join(
        f"{dataset_profile(d).image_size} px {forward_flops(d, args.model) / 1e9:.2f} GFLOP"
        for d in ("CIFAR-FS", "miniImageNet")))
    if timed:
        print(f"table h: the paper's {len(TABLE_ROWS)} rows x {SEEDS} seeds (every sweep candidate) scheduled one run "
              f"per GPU, students after teachers; evaluations not included; the RFS rows from the Gen-0 rate scaled "
              f"by forward-equivalents ({FORWARDS['skd_gen0']} vs {FORWARDS['rfs_simple']}, {FORWARDS['rfs_distill']}) "
              f"when only rates are given")
    if args.tflops and not any(measured.values()):
        print(f"minutes at an assumed {args.tflops:g} TFLOP/s sustained: arithmetic, not a measurement")


if __name__ == "__main__":
    main()
