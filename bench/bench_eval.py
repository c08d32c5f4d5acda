"""Wall time of few-shot evaluation: ours (`eval.fewshot.evaluate`: queries embedded once, batched
logistic regression) against the official cost model (`eval.reference`: per episode, 5 augmented
copies of each support and 5 copies of each query embedded, scikit-learn fitted), same model and data.

    python bench/bench_eval.py --model_path CKPT --shots 1,5 --episodes 600 --reference_episodes 30

The data is a CIFAR-FS-sized test split (20 classes x 600 images, 32x32) generated in memory, or
--dataset/--data_root. The reference is timed on its first --reference_episodes episodes and its
time per episode is extrapolated to --episodes (it is linear in episodes: nothing is shared
between them); accuracies are compared on those same episodes.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import engine.checkpoint  # noqa: E402
import runtime.process  # noqa: E402
import util  # noqa: E402
from dataset import load_split  # noqa: E402
from dataset.synthetic import make_synthetic_images  # noqa: E402
from published.profiles import CIFAR_NORMALIZATION  # noqa: E402
from dataset.transforms import choose_normalization  # noqa: E402
from eval import EpisodeSetting, evaluate, mean_confidence_interval  # noqa: E402
from eval.reference import evaluate_reference  # noqa: E402
from models import create_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser("few-shot evaluation wall time: ours vs the official cost model")
    parser.add_argument("--model_path", default=None, help="checkpoint (default: a randomly initialised ResNet-12)")
    parser.add_argument("--dataset", default=None, help="a dataset of this repo (default: CIFAR-FS-sized synthetic)")
    parser.add_argument("--data_root", default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument("--shots", default="1,5")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--reference_episodes", type=int, default=30)
    parser.add_argument("--device", default=None)
    parser.add_argument("--amp", default="off", choices=["off", "auto", "bf16", "fp16"])
    parser.add_argument("--batch_size", type=int, default=256)
    args = parser.parse_args()
    process = runtime.process.start(runtime.process.ProcessConfig(args.device, args.amp))
    device, precision, args.amp = process.device, process.precision, process.amp
    print(f"device: {process.device_name}")

    if args.dataset:
        images = load_split(args.dataset, args.data_root, args.split)
        norm = choose_normalization("auto", args.dataset, images.images)
    else:
        images = make_synthetic_images(20, 600, seed=123, name="cifar-fs-sized")
        norm = CIFAR_NORMALIZATION
    torch.manual_seed(0)
    if args.model_path:
        checkpoint = engine.checkpoint.load_checkpoint(args.model_path)
        model = engine.checkpoint.model_from_checkpoint(engine.checkpoint.recorded_model(checkpoint, args.model_path),
                                                        args.model_path, checkpoint, args.dataset, images.image_size)
    else:
        model = create_model("resnet12_ssl", 64, image_size=images.image_size)
    model = util.to_device(model, device).eval()

    print(f"device={device} threads={torch.get_num_threads()} amp={args.amp} ({precision}) data={images.source} "
          f"({images.num_classes} classes, {len(images)} images, {images.image_size}px) "
          f"model={args.model_path or 'random init'}")
    print("| 5-way | episodes | ours (s) | reference (s) | speed-up | ours acc | reference acc (same episodes) |")
    print("|---|---|---|---|---|---|---|")
    for shots in (int(s) for s in args.shots.split(",")):
        setting = EpisodeSetting(5, shots, 15, args.episodes, 5)
        start = time.perf_counter()
        ours = evaluate(model, images, args.split, setting, norm, device, batch_size=args.batch_size, amp=args.amp,
                        progress=False)[0]
        ours_seconds = time.perf_counter() - start

        subset = replace(setting, n_episodes=args.reference_episodes)
        start = time.perf_counter()
        reference = evaluate_reference(model, images, args.split, subset, norm, device, batch_size=args.batch_size,
                                       amp=args.amp)
        reference_seconds = (time.perf_counter() - start) * args.episodes / args.reference_episodes

        same = ours.accuracies[:args.reference_episodes]
        ours_mean, ours_ci = mean_confidence_interval(same)
        ref_mean, ref_ci = mean_confidence_interval(reference.accuracies)
        agree = np.abs(same - reference.accuracies).max() * 100
        print(f"| {shots}-shot | {args.episodes} | {ours_seconds:.1f} | {reference_seconds:.0f} "
              f"(timed on {args.reference_episodes}) | {reference_seconds / ours_seconds:.1f}x | "
              f"{ours_mean:.2f} +- {ours_ci:.2f} | {ref_mean:.2f} +- {ref_ci:.2f} (max per-episode gap {agree:.1f}) |",
              flush=True)


if __name__ == "__main__":
    util.run_cli(main)
