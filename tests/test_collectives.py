"""Every collective the project issues puts its tensors on the process group's device.

NCCL serves CUDA tensors only, so a tensor made without a device (on the CPU) beside an NCCL group
fails ("No backend type associated with device type cpu"). This machine has no GPU, so the test
builds the same situation on the CPU: a one-rank gloo group whose collectives (patched here) accept
only CPU tensors, while every factory call without a device makes its tensor on `meta`, as a
factory call without a device makes a CPU tensor beside NCCL. Each of the project's collectives
then runs; one that forgets the group's device fails as it would on a GPU cluster."""
from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d
from torch import nn

from conftest import TEST_MODEL
from distill.dvp import KeyQueue
from runtime import distributed
from engine.loop import FinitenessCheck, Meter, StepResult, _save_partial
from runtime.preemption import StopRequest
from eval.sharding import compute_sharded
from models import create_model
from models.dropblock import DropBlock

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")

COLLECTIVES = ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter", "reduce",
               "gather", "scatter", "all_to_all")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


@pytest.fixture
def cpu_only_group(monkeypatch):
    """A one-rank gloo group that, like NCCL for CUDA, accepts tensors of one device type only (the
    CPU here), and `meta` as the device of tensors made without one. Yields the calls it served."""
    monkeypatch.setenv("LOCAL_RANK", "0")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    served: list[str] = []  # a call under the meta context is served twice (once through its torch-function mode)
    for name in COLLECTIVES:
        original = getattr(c10d, name)

        def strict(*args, _original=original, _name=name, **kwargs):
            for tensor in _tensors(list(args) + list(kwargs.values())):
                if tensor.device.type != "cpu":
                    raise RuntimeError(f"No backend type associated with device type {tensor.device.type}")
            served.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(c10d, name, strict)
        monkeypatch.setattr(dist, name, strict)
    try:
        with torch.device("meta"):
            yield served
    finally:
        dist.destroy_process_group()


def _model() -> nn.Module:
    with torch.device("cpu"):
        return create_model(TEST_MODEL, 5, "CIFAR-FS", image_size=32)


def test_the_stop_check(cpu_only_group):
    stop = StopRequest(interval=4)
    assert not stop.requested(3) and not cpu_only_group  # between checks: no collective, no host wait
    assert not stop.requested(4) and "all_reduce" in cpu_only_group
    stop.signal_name = "SIGTERM"
    assert stop.requested(8) and stop.requested()


def test_metric_reduction_and_finiteness_check(cpu_only_group):
    meter, finite = Meter(), FinitenessCheck()
    cpu = torch.device("cpu")
    for i in range(3):
        result = StepResult(torch.tensor(0.5, device=cpu), {"ce": torch.tensor(0.25, device=cpu)},
                            torch.tensor(3.0, device=cpu), 4)
        meter.update(result)
        finite.add(i + 1, result)
    averages, images = meter.averages()
    assert averages["loss"] == pytest.approx(0.5) and averages["acc"] == pytest.approx(75.0) and images == 12
    assert finite.check(1, None) == pytest.approx(0.5)
    assert Meter().averages()[1] == 0  # an epoch resumed at its end: nothing to sum but zeros
    assert "all_reduce" in cpu_only_group


def test_buffer_and_module_broadcasts_and_the_replica_check(cpu_only_group):
    model = _model()
    distributed.broadcast_buffers(model)
    with torch.device("cpu"):
        queue = KeyQueue(8, 4, torch.Generator().manual_seed(0))
    distributed.broadcast_module(queue)
    distributed.check_replicas_equal(model, {"queue": queue})
    assert "broadcast" in cpu_only_group and "all_gather" in cpu_only_group


def test_key_gather_and_sharded_evaluation(cpu_only_group):
    keys = torch.randn(4, 3, device="cpu")
    assert torch.equal(distributed.all_gather_tensor(keys), keys)
    assert compute_sharded(3, lambda i: torch.full((2,), float(i), device="cpu"))[2].tolist() == [2.0, 2.0]
    assert "all_gather" in cpu_only_group


def test_mid_epoch_checkpoint_gathers_every_ranks_state(cpu_only_group, tmp_path):
    from engine.checkpoint import load_checkpoint
    from engine.checkpointer import Checkpointer
    from engine.loop import TrainState, _Stretch

    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    checkpointer = Checkpointer(model=model, optimizer=optimizer, scaler=scaler, flags={"seed": 0}, identity={})
    state = TrainState(checkpointer=checkpointer, folder=tmp_path, logger=None)
    stretch = _Stretch(None, 1, optimizer, scaler, lambda epoch: 0.1, lambda epoch: epoch)
    meter = Meter()
    meter.update(StepResult(torch.tensor(0.5, device="cpu"), {"ce": torch.tensor(0.25, device="cpu")}, None, 4))
    _save_partial(state, stretch, 1, 2, meter)
    assert "all_gather" in cpu_only_group
    saved = load_checkpoint(tmp_path / "checkpoint.pth")
    # epoch 1 in progress after 2 steps, no epoch completed; the one rank's RNG states and metric sums
    assert saved["epoch"] == 0
    assert {k: saved["partial"][k] for k in ("epoch", "step", "world_size")} == {"epoch": 1, "step": 2, "world_size": 1}
    [rank] = saved["partial"]["ranks"]
    assert torch.equal(rank["rng"]["torch"], torch.get_rng_state())  # nothing drew from the RNG since the save
    assert rank["meter"]["images"] == 4 and rank["meter"]["correct"] is None
    assert {k: float(v) for k, v in rank["meter"]["sums"].items()} == {"loss": 2.0, "ce": 1.0}
    assert all(torch.equal(saved["model"][k], v) for k, v in model.state_dict().items())


def test_global_batch_statistics_in_a_training_step(cpu_only_group):
    model = distributed.use_global_batch_statistics(_model().train())
    for block in model.modules():
        if isinstance(block, DropBlock):
            block.num_calls = 40_000  # the ramp's end: blocks are dropped and the rescale is summed over ranks
    x = torch.randn(4, 3, 32, 32, device="cpu")
    model(x).sum().backward()
    assert cpu_only_group.count("all_reduce") >= 16 + 2  # 16 BatchNorms and 2 DropBlocks (backward adds more)


def test_batchnorm_over_the_global_batch(cpu_only_group, monkeypatch):
    sums = []
    helper = distributed.all_reduce_sum
    monkeypatch.setattr(distributed, "all_reduce_sum", lambda t: sums.append(t.shape) or helper(t))
    model = distributed.use_global_batch_statistics(_model()).train()
    model(torch.randn(2, 3, 32, 32, device="cpu")).sum().backward()
    # each of the 16 BatchNorms sums its statistics forward and its gradients backward through the helper
    assert len(sums) >= 32 and cpu_only_group.count("all_reduce") >= 32


HOST_READS = ("item", "cpu", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__")


def test_global_batch_statistics_read_nothing_back_to_the_host(cpu_only_group, monkeypatch):
    """On CUDA each of these calls waits for the GPU; the global BatchNorm and DropBlock's rescale
    (the whole training forward and backward under --bn_stats global) must make none of them
    (PyTorch's SyncBatchNorm makes one in every forward). Each raises here, as a sync debug mode set
    to error would on a GPU."""
    model = distributed.use_global_batch_statistics(_model().train())
    assert not any(type(m) is nn.BatchNorm2d for m in model.modules())
    for block in model.modules():
        if isinstance(block, DropBlock):
            block.num_calls = 40_000
    x = torch.randn(4, 3, 32, 32, device="cpu")
    calls = []

    def refuse(name):
        def read(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"host read: Tensor.{name}")
        return read

    with monkeypatch.context() as patched:
        for name in HOST_READS:
            patched.setattr(torch.Tensor, name, refuse(name))
        model(x).sum().backward()
    assert not calls and cpu_only_group.count("all_reduce") >= 32
    with pytest.raises(AssertionError, match="host read"):  # the mock itself bites
        with monkeypatch.context() as patched:
            patched.setattr(torch.Tensor, "item", refuse("item"))
            x.sum().item()
