"""Each registered network's size and cost: parameters, forward GFLOPs per image at 32 and 84 px (counted by
torch's FlopCounterMode: multiply-adds of convolutions and matmuls, as 2 FLOPs each), and the CPU rate of
one Gen-0 step (cross-entropy plus rotation, 4 copies of each image) on random data.

    python bench/backbones.py [--image_size 32] [--batch_size 16] [--steps 3] [--models convnet4,resnet12_ssl]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from methods.skd_gen0 import gen0_step  # noqa: E402
from models import create_model, list_models  # noqa: E402


def forward_gflops(name: str, size: int) -> float:
    model = create_model(name, 64, "miniImageNet" if size >= 64 else "CIFAR-FS").eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def step_rate(name: str, size: int, batch_size: int, steps: int) -> float:
    """Dataset images per second of Gen-0 steps (forward, backward, SGD) after one untimed step."""
    torch.manual_seed(0)
    model = create_model(name, 64, "miniImageNet" if size >= 64 else "CIFAR-FS").train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    step = gen0_step(model, 2.0)
    images, targets = torch.randn(batch_size, 3, size, size), torch.randint(0, 64, (batch_size,))
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        loss = step(images, targets).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return batch_size * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image_size", type=int, default=32, help="of the timed steps")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--models", default=",".join(list_models()))
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32")
    print(f"| network | parameters (64 classes) | GFLOPs/image 32 px | GFLOPs/image 84 px | Gen-0 images/s, CPU, "
          f"{args.image_size} px, batch {args.batch_size} |")
    print("|---|---|---|---|---|")
    for name in args.models.split(","):
        params = sum(p.numel() for p in create_model(name, 64, "CIFAR-FS").parameters())
        print(f"| `{name}` | {params / 1e6:.2f} M | {forward_gflops(name, 32):.3f} | {forward_gflops(name, 84):.2f} | "
              f"{step_rate(name, args.image_size, args.batch_size, args.steps):.1f} |", flush=True)


if __name__ == "__main__":
    main()
