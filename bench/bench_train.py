"""Training throughput (dataset images per second, before rotations) of one SGD step of Gen-0 and
Gen-1 (default and --official_quirks) in each precision, on random data already on the device:
the step alone, the ceiling the training scripts approach (bench/bench_loader.py times the input
pipeline). On CUDA as the scripts run it: cuDNN autotuning on, TF32 only in the `tf32` rows, and
--warmup steps (autotuning, allocator) before the timing.

    python bench/bench_train.py --device cpu --image_size 32 --batch_size 64 --steps 5 [--contiguous]
    python bench/bench_train.py --device cuda --amp off,tf32,bf16,fp16 --steps 50 --warmup 20
    torchrun --nproc_per_node 2 bench/bench_train.py ...   # DDP: --batch_size is global, images/s over all ranks
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import runtime.distributed  # noqa: E402
import engine.loop  # noqa: E402
import util  # noqa: E402
from models import create_model  # noqa: E402
from models.dropblock import keep_dropblock_eager  # noqa: E402
from methods.skd_gen0 import gen0_step  # noqa: E402
from methods.skd_gen1 import gen1_step  # noqa: E402


def time_steps(step: engine.loop.Step, model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor,
               device: torch.device, amp: str, *, steps: int, warmup: int) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")  # as the scripts: its step reads the GPU
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with util.autocast(device, amp):
            result = step(images, targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(result.loss).backward()
        scaler.step(optimizer)
        scaler.update()
    if device.type == "cuda":
        torch.cuda.synchronize()
    runtime.distributed.barrier()  # the slowest rank ends the timing
    return steps * len(images) * runtime.distributed.current().world_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser("training throughput")
    parser.add_argument("--device", default=None)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_classes", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (cuDNN autotuning, allocator)")
    parser.add_argument("--amp", default="off,bf16",
                        help="comma-separated: off (fp32), tf32 (fp32 with TF32 convolutions, CUDA), bf16, fp16")
    parser.add_argument("--compile", action="store_true", help="each step through torch.compile, as --compile")
    parser.add_argument("--contiguous", action="store_true",
                        help="plain NCHW layout instead of the scripts' channels-last (to measure what it buys)")
    args = parser.parse_args()
    ranks, device = runtime.distributed.setup(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the training scripts: fixed shapes, autotuned convolutions
    torch.manual_seed(0)
    layout = torch.contiguous_format if args.contiguous else torch.channels_last
    per_rank = runtime.distributed.per_rank_batch_size(args.batch_size)
    images = torch.randn(per_rank, 3, args.image_size, args.image_size, device=device)
    images = images.contiguous(memory_format=layout)
    targets = torch.randint(0, args.num_classes, (per_rank,), device=device)

    def model():
        net = create_model("resnet12_ssl", args.num_classes, image_size=args.image_size)
        return net.to(device) if args.contiguous else util.to_device(net, device)

    print(f"device: {util.describe_device(device, args.device)}")
    print(f"device={device} threads={torch.get_num_threads()} layout={'NCHW' if args.contiguous else 'channels-last'} "
          f"image_size={args.image_size} compile={args.compile} "
          f"batch_size={args.batch_size} steps={args.steps} processes={ranks.world_size}"
          + (f" ({torch.distributed.get_backend()})" if ranks.enabled else ""))
    print("| stage | precision | images/s |\n|---|---|---|")
    for mode in args.amp.split(","):
        amp = "off" if mode == "tf32" else mode
        util.configure_tf32(device, mode == "tf32")
        precision = util.precision_name(device, amp)
        teacher = model().eval().requires_grad_(False)
        stages = {
            "gen0": lambda: (m := model(), gen0_step(m, 2.0)),
            "gen1": lambda: (m := model(), gen1_step(m, teacher, 0.1, 2.0, official_quirks=False)),
            "gen1 --official_quirks": lambda: (m := model(), gen1_step(m, teacher, 0.1, 2.0, official_quirks=True)),
        }
        for name, build in stages.items():
            m, step = build()
            if args.compile:
                keep_dropblock_eager()
                step = torch.compile(step)
            rate = time_steps(step, m, images, targets, device, amp, steps=args.steps, warmup=args.warmup)
            print(f"| {name} | {precision} | {rate:.1f} |", flush=True)
    runtime.distributed.cleanup()


if __name__ == "__main__":
    util.run_cli(main)
