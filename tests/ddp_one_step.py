"""One Gen-0 step and one Gen-1 step from fixed weights on a fixed batch of 16, the batch shared out
over the ranks as the training loader does (run under torchrun, or as plain python for one process).
Writes the updated weights to the path given: tests/test_distributed.py compares 2 ranks with 1. An optional
second argument is the device ("cuda": in fp32 with TF32 off; two ranks may share one GPU with
SKD_DIST_BACKEND=gloo, so the global BatchNorm and the gradient all-reduce run on CUDA with a single GPU)."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import runtime.distributed  # noqa: E402
from models import create_model  # noqa: E402
from methods.base import clone_student  # noqa: E402
from methods.skd_gen0 import gen0_step  # noqa: E402
from methods.skd_gen1 import gen1_step  # noqa: E402


def one_step(model: torch.nn.Module, step, images: torch.Tensor, targets: torch.Tensor) -> dict:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9,
                                weight_decay=5e-4)
    result = step(images, targets)
    optimizer.zero_grad(set_to_none=True)
    result.loss.backward()
    optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def main(out: str, device_name: str = "cpu") -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    info, device = runtime.distributed.setup(device_name)
    torch.manual_seed(0)
    initial = create_model("resnet12_ssl", 5, "CIFAR-FS", image_size=32).to(device)
    # Dropout and DropBlock masks are drawn per rank, from streams no number of ranks can share with one
    # process: off here, so that the comparison is of the arithmetic alone.
    for block in initial.modules():
        if hasattr(block, "drop_rate"):
            block.drop_rate = 0.0
    g = torch.Generator().manual_seed(1)
    images, targets = torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 5, (16,), generator=g)
    images, targets = images.to(device), targets.to(device)
    mine = slice(info.rank, None, info.world_size)  # EpochSampler's share: every world-th image

    gen0 = runtime.distributed.use_global_batch_statistics(clone_student(initial).train())
    after_gen0 = one_step(gen0, gen0_step(gen0, gamma=2.0), images[mine], targets[mine])
    teacher = initial.eval().requires_grad_(False)
    gen1 = runtime.distributed.use_global_batch_statistics(clone_student(teacher).train())
    after_gen1 = one_step(gen1, gen1_step(gen1, teacher, 0.1, 4.0, official_quirks=False), images[mine],
                          targets[mine])
    if info.is_main:
        states = {"initial": initial.state_dict(), "gen0": after_gen0, "gen1": after_gen1}
        torch.save({stage: {k: v.cpu() for k, v in tensors.items()} for stage, tensors in states.items()}, out)
    runtime.distributed.cleanup()


if __name__ == "__main__":
    main(*sys.argv[1:3])
