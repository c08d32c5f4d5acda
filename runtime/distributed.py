"""Distributed training under torchrun: read the launcher's environment, start the process group
(NCCL on CUDA, gloo on CPU, or SKD_DIST_BACKEND), wrap the network in DistributedDataParallel, reduce metrics, and
gate printing, logging and saving to rank 0.

A plain `python script.py` run starts no process group: every function here is then a no-op
(or the identity), so single-process runs behave exactly as they did before DDP existed.
"""
from __future__ import annotations

import builtins
import datetime
import hashlib
import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from runtime.global_batchnorm import convert_to_global_batchnorm
from util import UsageError, resolve_device


@dataclass(frozen=True)
class Distributed:
    """This process's place among the ranks (rank 0 of 1 outside torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def launched_by_srun() -> bool:
    """`srun python script.py` with several tasks and no torchrun inside: each task is one rank. The
    step's task count (SLURM_STEP_NUM_TASKS, set by srun only) rather than the job's, so a plain
    `python script.py` in the batch script of a multi-task job stays one process."""
    tasks = os.environ.get("SLURM_STEP_NUM_TASKS", os.environ.get("SLURM_NTASKS", "1"))
    return (not launched_by_torchrun() and "SLURM_PROCID" in os.environ and "SLURM_LOCALID" in os.environ
            and tasks.isdigit() and int(tasks) > 1)


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list: "gpu[03-05,09],cpu1" -> "gpu03"."""
    head = re.match(r"[^,\[]+(\[[^\]]*\])?", nodelist.strip())
    if head is None or not head.group(0):
        raise UsageError(f"SLURM_STEP_NODELIST {nodelist!r}: cannot read the first host; set MASTER_ADDR")
    host = head.group(0)
    if head.group(1):
        first = head.group(1)[1:-1].split(",")[0].split("-")[0]
        host = host[:host.index("[")] + first
    return host


def _adopt_srun_environment() -> None:
    """Give an srun task the variables torchrun would have set: RANK, WORLD_SIZE, LOCAL_RANK from
    SLURM's, MASTER_ADDR from the step's first node and MASTER_PORT from the job id (unless given)."""
    env = os.environ
    env["RANK"] = env["SLURM_PROCID"]
    env["WORLD_SIZE"] = env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1"))
    env["LOCAL_RANK"] = env["SLURM_LOCALID"]
    if "MASTER_ADDR" not in env:
        nodelist = env.get("SLURM_STEP_NODELIST", env.get("SLURM_JOB_NODELIST"))
        if nodelist is None:
            raise UsageError("srun: neither MASTER_ADDR nor SLURM_STEP_NODELIST is set; export MASTER_ADDR")
        env["MASTER_ADDR"] = first_slurm_host(nodelist)
    if "MASTER_PORT" not in env:
        # Jobs sharing a node get different ports; the range avoids the well-known and ephemeral ports.
        env["MASTER_PORT"] = str(20_000 + int(env.get("SLURM_JOB_ID", "0")) % 20_000)


def process_group_backend(device: torch.device) -> str:
    """SKD_DIST_BACKEND when set (gloo or nccl), else NCCL on CUDA and gloo on the CPU."""
    backend = os.environ.get("SKD_DIST_BACKEND", "nccl" if device.type == "cuda" else "gloo")
    if backend not in ("gloo", "nccl"):
        raise UsageError(f"SKD_DIST_BACKEND={backend}: expected gloo or nccl")
    if backend == "nccl" and device.type != "cuda":
        raise UsageError(f"SKD_DIST_BACKEND=nccl needs CUDA, but the device is {device}; use gloo")
    return backend


def setup(device_name: str | None) -> tuple[Distributed, torch.device]:
    """The process group and this rank's device. Under torchrun (or srun with one task per GPU, whose
    SLURM variables stand in for torchrun's) each rank takes GPU LOCAL_RANK of its node (so `--device
    cuda`, or the default, means one GPU per rank) and joins with NCCL; on CPU the ranks join with
    gloo. SKD_DIST_BACKEND=gloo on CUDA lets more ranks than GPUs share them (rank r on GPU
    r % GPUs): a test of the distributed arithmetic on one GPU, not a way to train fast. Outside a
    launcher: (rank 0 of 1, resolve_device(device_name))."""
    if launched_by_srun():
        _adopt_srun_environment()
    if not launched_by_torchrun():
        device = resolve_device(device_name)
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)  # what a bare torch.cuda call (RNG state, streams) means from now on
        return Distributed(), device
    rank, local_rank, world_size = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    device = resolve_device(device_name)
    backend = process_group_backend(device)
    if device.type == "cuda":
        if device.index not in (None, local_rank):
            raise UsageError(f"--device {device_name}: under torchrun each rank uses GPU LOCAL_RANK; "
                             "pass --device cuda")
        gpus = torch.cuda.device_count()
        if local_rank >= gpus and backend != "gloo":
            raise UsageError(f"torchrun: LOCAL_RANK {local_rank} but this node has {gpus} GPUs; "
                             f"use --nproc_per_node {gpus} or fewer (or SKD_DIST_BACKEND=gloo to share GPUs)")
        device = torch.device("cuda", local_rank % gpus)
        torch.cuda.set_device(device)
        if rank == 0 and int(os.environ.get("LOCAL_WORLD_SIZE", 1)) > gpus:  # torchrun sets LOCAL_WORLD_SIZE
            print(f"device: ranks share this node's {gpus} GPU(s), LOCAL_RANK r on cuda:(r % {gpus}) "
                  f"(SKD_DIST_BACKEND=gloo; the GPUs are time-shared, for testing)")
    if not dist.is_initialized():
        dist.init_process_group(backend, device_id=device if backend == "nccl" else None)
    info = Distributed(rank, local_rank, world_size)
    if not info.is_main:
        _silence_print()
    return info, device


def _silence_print() -> None:
    """Only rank 0 prints (as DINO does); `print(..., force=True)` still prints from any rank.
    Errors are unaffected: they go to stderr through exceptions and the CLI's error line."""
    original = builtins.print

    def rank_zero_print(*args, force: bool = False, **kwargs) -> None:
        if force:
            original(*args, **kwargs)

    builtins.print = rank_zero_print


def current() -> Distributed:
    """This process's Distributed, from the live process group (rank 0 of 1 when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Distributed()
    return Distributed(dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_world_size())


def is_main_process() -> bool:
    return current().is_main


def per_rank_batch_size(batch_size: int) -> int:
    """--batch_size is global (the paper's 64 whatever the number of processes): each rank takes an
    equal share, so the effective batch and the learning rate stay those of the paper."""
    world = current().world_size
    if batch_size % world:
        raise UsageError(f"--batch_size {batch_size}: the global batch must divide evenly over {world} processes")
    return batch_size // world


def rank_seed(seed: int) -> int:
    """Each rank's seed for its augmentations and dropout masks; rank 0 keeps `seed` itself, so a
    one-process run draws what it always drew."""
    return seed + 1_000_003 * current().rank


def wrap(model: nn.Module, method: str = "forward", unused: tuple[str, ...] = ()):
    """What a training step calls: outside torchrun the model's `method` itself; under torchrun a
    DistributedDataParallel module whose forward is that method, so gradients are averaged over the
    ranks during backward. `unused`: submodules the objective never calls (the rotation head of
    Gen-1 and the RFS baselines); they are frozen under DDP, which would otherwise wait for their
    gradients (or search the graph for unused parameters every step). Frozen or not they receive
    no update, as SGD skips parameters without a gradient. `model` itself stays the unwrapped
    network: checkpoints save its state dict, with the official key names."""
    info = current()
    if not info.enabled:
        return model if method == "forward" else getattr(model, method)  # the module itself keeps its hooks
    for name in unused:
        model.get_submodule(name).requires_grad_(False)
    target = model if method == "forward" else _Method(model, method)
    device = next(model.parameters()).device
    return nn.parallel.DistributedDataParallel(target, device_ids=[device] if device.type == "cuda" else None)


def use_global_batch_statistics(model: nn.Module) -> nn.Module:
    """Make N ranks at global batch B compute what one process computes at batch B (--bn_stats
    global, the default under torchrun): BatchNorm normalises over the global batch
    (runtime.global_batchnorm: sums all-reduced on the device, no host read, on NCCL and gloo alike;
    PyTorch's SyncBatchNorm would wait for the GPU in every forward), and DropBlock rescales by the
    share of activations kept over the global batch. Parameters, buffers and names are unchanged, so
    the optimizer and the checkpoint keys are too. A no-op outside torchrun. Call it before building
    the optimizer or any copy of the model."""
    if not current().enabled:
        return model
    for module in model.modules():
        if hasattr(module, "sum_over_ranks"):  # a module whose rescale counts over the batch (models.dropblock)
            module.sum_over_ranks = all_reduce_sum
    return convert_to_global_batchnorm(model, all_reduce_sum)


class _Method(nn.Module):
    """Exposes one method of `model` as forward (DDP only hooks forward)."""

    def __init__(self, model: nn.Module, method: str) -> None:
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, x: torch.Tensor):
        return getattr(self.model, self.method)(x)


def group_device() -> torch.device:
    """The device the default process group's collectives take tensors on: this rank's GPU under
    NCCL, which serves CUDA tensors only, the CPU under gloo. Every collective of the project goes
    through the helpers below, which move their tensors there and back: a tensor made without a
    device (on the CPU) beside an NCCL group fails with "No backend type associated with device
    type cpu"."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def on_group_device(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` on group_device() (itself when it is there already)."""
    return tensor.to(group_device())


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over ranks, on `tensor`'s device (in place when that is the group's device); the
    tensor itself outside torchrun. A NaN or inf on any rank makes the sum non-finite on every
    rank, so all ranks stop together."""
    if not current().enabled:
        return tensor
    shared = on_group_device(tensor)
    dist.all_reduce(shared, op=dist.ReduceOp.SUM)
    return shared.to(tensor.device)


def _broadcast_in_place(tensors: list[torch.Tensor]) -> None:
    for tensor in tensors:
        shared = on_group_device(tensor.data)
        dist.broadcast(shared, src=0)
        if shared.data_ptr() != tensor.data.data_ptr():
            tensor.data.copy_(shared)


def broadcast_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank. DDP broadcasts them
    before each forward, so after an epoch's last step each rank holds statistics updated with its
    own images; evaluation and checkpoints must all see rank 0's, the ones it saves."""
    if current().enabled:
        _broadcast_in_place(list(model.buffers()))


def broadcast_module(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank: for modules DDP does not wrap (a momentum
    encoder, a queue) whose initial values were drawn per rank."""
    if current().enabled:
        _broadcast_in_place([*module.parameters(), *module.buffers()])


@torch.no_grad()
def all_gather_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor` concatenated along dim 0 in rank order (no gradient), on `tensor`'s
    device; the tensor itself outside torchrun. All ranks must pass the same shape."""
    info = current()
    if not info.enabled:
        return tensor
    shared = on_group_device(tensor).contiguous()
    parts = [torch.empty_like(shared) for _ in range(info.world_size)]
    dist.all_gather(parts, shared)
    return torch.cat(parts).to(tensor.device)


def check_replicas_equal(model: nn.Module, extra_modules: dict[str, nn.Module] | None = None) -> None:
    """Raise unless every parameter and buffer of `model` and of `extra_modules` (an objective's heads,
    key encoder, queue) is bit-identical on all ranks (compared by sha256 of their bytes): the
    guarantee DDP gives, checked at the end of training as MoCo v3 checks a frozen network."""
    info = current()
    if not info.enabled:
        return
    tensors = {**model.state_dict(), **{f"{key}.{name}": t for key, module in (extra_modules or {}).items()
                                        for name, t in module.state_dict().items()}}
    digests = {name: hashlib.sha256(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
                     .hexdigest()
               for name, t in tensors.items() if isinstance(t, torch.Tensor)}
    everyone = all_gather_objects(digests)
    differ = sorted({name for other in everyone[1:] for name, d in other.items() if everyone[0].get(name) != d})
    if differ:
        raise RuntimeError(f"DDP replicas differ after training in {len(differ)} tensors: {', '.join(differ[:5])}")
    print(f"replicas check: parameters and buffers identical on {info.world_size} ranks")


def all_gather_objects(obj: object) -> list:
    """[rank 0's obj, rank 1's, ...] on every rank (pickled; keep tensors on the CPU); [obj] outside torchrun.
    torch moves the pickled bytes to the group's device itself (under NCCL this rank's GPU, which
    setup() made the current device)."""
    info = current()
    if not info.enabled:
        return [obj]
    everyone: list = [None] * info.world_size
    dist.all_gather_object(everyone, obj)
    return everyone


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def wait_for_checkpoint(path, timeout_s: float = 300.0) -> None:
    """Every rank waits here until rank 0 has written `path` (it joins after its save), so that no
    rank exits on a pre-emption before the checkpoint is on disk: torchrun kills the remaining ranks
    once one exits. An all-reduce whose result is read on the host: under NCCL, wait() alone only
    orders the GPU stream and would let this rank run on (and exit). gloo honours `timeout_s`; under
    NCCL the process group's own timeout ends a wait for a rank that never comes."""
    if not current().enabled:
        return
    flag = torch.ones(1, device=group_device())
    work = dist.all_reduce(flag, async_op=True)
    if not work.wait(timeout=datetime.timedelta(seconds=timeout_s)):
        raise RuntimeError(f"rank {current().rank}: rank 0 did not finish writing {path} within {timeout_s:.0f} s")
    flag.cpu()  # the host waits for the collective itself (once, on a stop)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
