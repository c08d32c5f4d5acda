"""The process a run computes in, set up in one place: the torchrun process group and this rank's device,
the precision (--amp auto decided, TF32 allowed or not), cuDNN's determinism, and the seeds."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from runtime import distributed
from util import (autocast, configure_tf32, describe_device, git_sha, precision_name, resolve_amp, resolve_device,
                  seed_everything)


@dataclass(frozen=True)
class ProcessConfig:
    """What a command asks of the process (its --device, --amp, --tf32, --deterministic)."""

    device: str | None = None  # cpu, cuda, cuda:N; None: a usable GPU, else the CPU
    amp: str = "off"  # off, auto, bf16, fp16
    tf32: bool = False
    # True: deterministic cuDNN/cuBLAS algorithms; False: cuDNN autotunes (fixed shapes every step);
    # None: cuDNN's own defaults (evaluation, which never asked for either).
    deterministic: bool | None = None
    # Join the torchrun/srun process group (training and evaluation share their work over the ranks); False for
    # a command that shares nothing (the tools), which then just takes its device.
    join_ranks: bool = True


@dataclass(frozen=True)
class Process:
    """The process as set up: this rank's place and device, and the autocast precision that runs."""

    ranks: distributed.Distributed
    device: torch.device
    amp: str  # off, bf16 or fp16: --amp auto decided
    requested_device: str | None  # --device as given, which the device line explains

    @property
    def precision(self) -> str:
        """What the network computes in (fp32, tf32, bf16, fp16), as results record it."""
        return precision_name(self.device, self.amp)

    @property
    def device_name(self) -> str:
        return describe_device(self.device, self.requested_device)


def start(config: ProcessConfig) -> Process:
    """Join the torchrun process group when launched by torchrun (or srun), pick this rank's device,
    decide the precision and check it against the device (fp16 on a CPU is refused here, before any
    work), and set cuDNN's algorithm choice."""
    if config.join_ranks:
        ranks, device = distributed.setup(config.device)
    else:
        ranks, device = distributed.Distributed(), resolve_device(config.device)
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)
    amp = resolve_amp(config.amp, device)
    configure_tf32(device, config.tf32)
    autocast(device, amp)  # refuses what the device cannot run
    if device.type == "cuda" and config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for deterministic GEMMs
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)
    elif device.type == "cuda" and config.deterministic is False:
        # Fixed input shapes every step: let cuDNN pick its fastest convolution algorithms once.
        torch.backends.cudnn.benchmark = True
    return Process(ranks, device, amp, config.device)


def seed(seed: int) -> None:
    """Seed Python, NumPy and torch for this rank (rank 0: `seed` itself). Model initialisation may then
    differ per rank: DDP broadcasts rank 0's weights when it wraps them."""
    seed_everything(distributed.rank_seed(seed))


def print_header(flags: Mapping[str, Any], process: Process | None = None) -> None:
    """The git sha, the device chosen and why, the precision, then every flag on one line, as resolved
    (--amp auto shows what it chose; results.json and args.json keep them too)."""
    print(f"git: {git_sha()}")
    if process is not None:
        print(f"device: {process.device_name}")
        print(f"precision: {process.precision}")
    shown = {k: v for k, v in sorted(flags.items()) if not (k == "device" and process is not None)}
    print("args: " + " ".join(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in shown.items()))
