"""Does the GPU compute what the CPU computes? From the same weights and the same batch, one Gen-0
step and one Gen-1 step on --device against the CPU, in fp32 with TF32 off: the loss, every gradient
and the BatchNorm statistics the step leaves; then the few-shot evaluator (what eval_fewshot.py runs)
on the same episodes on both: features, predictions, accuracy. Prints one line per comparison with
its difference and tolerance, exits 1 if any is past its tolerance.

    python bench/gpu_parity.py --device cuda
    python bench/gpu_parity.py --device cpu --model resnet12_ssl_narrow   # CPU against CPU: differences 0

Tolerances. A training step: each loss, gradient tensor and BatchNorm statistic may differ from the
CPU's (in norm) by 10 times the CPU's own fp32 rounding error, its distance from the same step run in
float64, plus 1e-5 of its size. A correct GPU step is an fp32 computation summed in other orders by
other algorithms (cuDNN's Winograd and FFT among them), so its error is of the CPU's order; the factor
10 leaves room for the less accurate algorithms, and the floor for tensors the CPU happens to get
exactly. A fixed relative tolerance would not do: a gradient that sums many cancelling terms (a
BatchNorm weight's, a distilled student's) carries a relative fp32 error of up to 4e-3 on the CPU
itself (ResNet-12, batch 8, against float64), the Gen-1 loss 7e-6. A real fault (a missing term, a
wrong scale or layout, a wrong reduction) is off by far more than 10 rounding errors: on the CPU, a
gradient tensor scaled by 1.05 fails; scaled by 1.01 it can hide under the full network's rounding
in a few tensors. Evaluation: features within 1e-3 relative (a forward pass carries about 3e-6 in
fp32); a query's prediction flips only when its classifier's margin is inside that noise, so at most
1% of the queries may differ, and the mean accuracy by at most 0.5 points.
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import util  # noqa: E402
from published.profiles import CIFAR_NORMALIZATION  # noqa: E402
from dataset.synthetic import make_synthetic_split  # noqa: E402
from dataset.transforms import normalize_batch  # noqa: E402
from eval import EpisodeSetting, evaluate  # noqa: E402
from eval.embed import embed  # noqa: E402
from methods.base import clone_student  # noqa: E402
from methods.skd_gen0 import gen0_step  # noqa: E402
from methods.skd_gen1 import gen1_step  # noqa: E402
from models import create_model  # noqa: E402

CPU = torch.device("cpu")
ROUNDING_FACTOR, FLOOR_RTOL, FEATURE_RTOL = 10.0, 1e-5, 1e-3
MAX_FLIPPED, MAX_ACCURACY_POINTS = 0.01, 0.5


class Report:
    """One line per comparison; remembers whether any failed."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def check(self, name: str, difference: float, tolerance: float, detail: str = "") -> None:
        ok = difference <= tolerance  # NaN fails
        if not ok:
            self.failed.append(name)
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {difference:.3g} (tolerance {tolerance:.3g}) {detail}", flush=True)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64 (the absolute difference where b is zero)."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm()) if b.norm() > 0 else float((a - b).norm())


def without_dropout(model: nn.Module) -> nn.Module:
    """Dropout and DropBlock off: their masks come from each device's own random generator."""
    for module in model.modules():
        if hasattr(module, "drop_rate"):
            module.drop_rate = 0.0
    return model


def calibrated(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """BatchNorm running statistics set to those of `images`, so that the eval-mode network (teacher,
    evaluation) has unit-scale activations as a trained one does, not those of a fresh initialisation."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: one batch gives its own statistics
    with torch.no_grad():
        model.train()(images)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()


class StepOutput(NamedTuple):
    loss: torch.Tensor
    gradients: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]  # after the step: BatchNorm's running statistics and counters


def one_step(stage: str, network: nn.Module, images: torch.Tensor, targets: torch.Tensor,
             device: torch.device) -> StepOutput:
    """One Gen-0 or Gen-1 step of a copy of `network` on `device`, laid out as the training scripts lay it
    (channels-last); tensors returned on the CPU."""
    model = util.to_device(copy.deepcopy(network), device)
    if stage == "gen0":
        trained = model.train()
        step = gen0_step(trained, gamma=2.0)
    else:
        teacher = model.eval().requires_grad_(False)
        trained = clone_student(teacher).train()
        step = gen1_step(trained, teacher, beta=0.1, temperature=4.0, official_quirks=False)
    result = step(images.to(device), targets.to(device))
    result.loss.backward()
    return StepOutput(result.loss.detach().cpu(),
                      {n: p.grad.detach().cpu() for n, p in trained.named_parameters() if p.grad is not None},
                      {n: b.detach().cpu() for n, b in trained.named_buffers()})


def step_difference(cpu: torch.Tensor, exact: torch.Tensor, dev: torch.Tensor) -> tuple[float, float]:
    """(||dev - cpu||, its tolerance): ROUNDING_FACTOR times the CPU's own fp32 rounding error (its
    distance from the float64 step), plus FLOOR_RTOL of the tensor's size."""
    cpu, exact, dev = cpu.double(), exact.double(), dev.double()
    return float((dev - cpu).norm()), float(ROUNDING_FACTOR * (cpu - exact).norm() + FLOOR_RTOL * exact.norm())


def compare_steps(report: Report, network: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                  device: torch.device) -> None:
    for stage in ("gen0", "gen1"):
        start = time.perf_counter()
        cpu = one_step(stage, network, images, targets, CPU)
        exact = one_step(stage, copy.deepcopy(network).double(), images.double(), targets, CPU)
        dev = one_step(stage, network, images, targets, device)
        print(f"{stage} step: loss {float(cpu.loss):.7f} on the CPU, {float(dev.loss):.7f} on {device}, "
              f"{float(exact.loss):.7f} in float64 ({time.perf_counter() - start:.1f} s)", flush=True)
        report.check(f"{stage} loss", *step_difference(cpu.loss, exact.loss, dev.loss), "(absolute)")
        for what, ours, reference, theirs in (("gradients", cpu.gradients, exact.gradients, dev.gradients),
                                              ("BatchNorm statistics", cpu.buffers, exact.buffers, dev.buffers)):
            report.check(f"{stage} {what}: tensors missing on one side", float(len(set(ours) ^ set(theirs))), 0,
                         f"({len(ours)} on the CPU)")
            floats = [n for n, t in ours.items() if t.is_floating_point() and n in theirs]

            def ratio(name: str) -> float:
                difference, tolerance = step_difference(ours[name], reference[name], theirs[name])
                within = difference <= tolerance  # False for NaN
                return difference / tolerance if within and tolerance > 0 else 0.0 if within else math.inf

            worst = max(floats, key=ratio)  # the tensor closest to (or furthest past) its tolerance
            report.check(f"{stage} {what}, worst: {worst}",
                         *step_difference(ours[worst], reference[worst], theirs[worst]),
                         f"(its norm {float(reference[worst].double().norm()):.3g})")
        counters = [n for n, b in cpu.buffers.items() if not b.is_floating_point()]
        report.check(f"{stage} BatchNorm counters differing",
                     float(sum(not torch.equal(dev.buffers[n], cpu.buffers[n]) for n in counters)), 0)


def compare_evaluation(report: Report, network: nn.Module, device: torch.device, shots: list[int],
                       episodes: int) -> None:
    images = make_synthetic_split("val")
    on_device = util.to_device(copy.deepcopy(network), device).eval()
    start = time.perf_counter()
    pixels = torch.from_numpy(images.images)
    cpu_features, _ = embed(network, pixels, CIFAR_NORMALIZATION, CPU, 64)
    features, _ = embed(on_device, pixels, CIFAR_NORMALIZATION, device, 64)
    report.check("evaluation features (relative)", relative(features.cpu(), cpu_features), FEATURE_RTOL,
                 f"({len(pixels)} images)")
    for n_shots in shots:
        setting = EpisodeSetting(5, n_shots, 15, episodes, 5)
        [cpu] = evaluate(network, images, "val", setting, CIFAR_NORMALIZATION, CPU, progress=False)
        [gpu] = evaluate(on_device, images, "val", setting, CIFAR_NORMALIZATION, device, progress=False)
        report.check(f"{n_shots}-shot episodes identical", float(cpu.fingerprint != gpu.fingerprint), 0,
                     f"(fingerprint {cpu.fingerprint})")
        flipped = float(np.mean(cpu.predictions != gpu.predictions))
        report.check(f"{n_shots}-shot predictions differing (share)", flipped, MAX_FLIPPED,
                     f"({cpu.predictions.size} queries)")
        report.check(f"{n_shots}-shot mean accuracy (points)", abs(cpu.mean_ci[0] - gpu.mean_ci[0]),
                     MAX_ACCURACY_POINTS, f"(CPU {cpu.mean_ci[0]:.2f}, {device} {gpu.mean_ci[0]:.2f})")
    print(f"evaluation: {time.perf_counter() - start:.1f} s on both", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser("GPU against CPU: one Gen-0 and one Gen-1 step, and evaluation, in fp32")
    parser.add_argument("--device", default=None, help="the device compared with the CPU (default: cuda if usable)")
    parser.add_argument("--model", default="resnet12_ssl")
    parser.add_argument("--batch_size", type=int, default=8, help="images a step, before rotations")
    parser.add_argument("--shots", default="1,5")
    parser.add_argument("--episodes", type=int, default=50)
    args = parser.parse_args()
    device = util.resolve_device(args.device)
    util.configure_tf32(device, False)  # fp32 means fp32 here; TF32 rounds inputs to 10 mantissa bits
    torch.backends.cudnn.benchmark = True  # the convolution algorithms the training scripts get (autotuned)
    print(f"device: {util.describe_device(device, args.device)}; compared with the CPU, fp32, TF32 off")
    torch.manual_seed(0)
    train = make_synthetic_split("train")
    network = without_dropout(create_model(args.model, int(train.labels.max()) + 1, "CIFAR-FS", image_size=32))
    pick = np.random.RandomState(0).permutation(len(train.labels))[:max(args.batch_size, 64)]
    normalized = normalize_batch(torch.from_numpy(train.images[pick]), CIFAR_NORMALIZATION)
    calibrated(network, normalized)
    images, targets = normalized[:args.batch_size], torch.from_numpy(train.labels[pick[:args.batch_size]]).long()
    report = Report()
    compare_steps(report, network, images, targets, device)
    compare_evaluation(report, network, device, [int(s) for s in args.shots.split(",")], args.episodes)
    if report.failed:
        sys.exit(f"{len(report.failed)} comparison(s) past tolerance: {', '.join(report.failed)}")
    print("all comparisons within tolerance")


if __name__ == "__main__":
    util.run_cli(main)
