"""Pre-emption and crashes: SIGTERM mid-epoch or at an epoch boundary leaves a checkpoint from which
--resume ends bit-identical to an uninterrupted run, with worker processes loading the data; a
writer killed mid-write never damages the previous checkpoint."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import engine.checkpoint
import engine.loop
import engine.run
import runtime.distributed
import util
from conftest import REPO, TEST_MODEL, run_script
from dataset import load_split
from dataset.device_loader import DeviceBatches
from dataset.loaders import train_loader
from published.profiles import CIFAR_NORMALIZATION
from dataset.transforms import train_transform
from engine.config import DataConfig, LoopConfig, RunConfig, Schedule, TrainConfig
from runtime.process import Process

STEPS_PER_EPOCH = 8  # 400 synthetic images, batch 50


class SmallNet(nn.Module):
    """Convolution, dropout (so the global RNG matters) and a linear head: fast enough to train a
    few epochs per test, with momentum and BatchNorm state to restore."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.dropout(F.relu(self.bn(self.conv(x))), 0.3, self.training)
        return self.head(x.mean((2, 3)))


def _config(folder: Path, *, resume: bool = False, log_interval: int = 2) -> TrainConfig:
    """Two epochs at lr 0.05, decayed after the first, seed 3, no W&B, no final report."""
    return TrainConfig(schedule=Schedule(epochs=2, learning_rate=0.05, lr_decay_epochs=(1,)),
                       data=DataConfig("synthetic", batch_size=50), loop=LoopConfig(log_interval=log_interval),
                       run=RunConfig(model_path=str(folder), resume=resume, final_eval=False), seed=3)


def cpu_process() -> Process:
    """This process as runtime.process.start sets it up on the CPU, outside torchrun (or as one rank of it)."""
    return Process(runtime.distributed.current(), torch.device("cpu"), "off", "cpu")


def _train(folder: Path, signal_at_step: int | None = None, resume: bool = False,
           augment: str = "workers") -> dict[str, torch.Tensor]:
    """Two epochs on synthetic images loaded by two persistent worker processes (or augmented in
    batches, --augment device); SIGTERM to this process during global step `signal_at_step`, as a
    cluster scheduler would send it."""
    torch.manual_seed(0)
    model = SmallNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    config = _config(folder, resume=resume)
    state = engine.run.prepare_run(config=config, process=cpu_process(), name="run", model=model,
                                   optimizer=optimizer, job_type="test", identity={})
    images = load_split("synthetic", None, "train")
    if augment == "device":
        loader = DeviceBatches(images, 50, config.seed, 4, CIFAR_NORMALIZATION, torch.device("cpu"))
    else:
        loader = train_loader(images, train_transform(32, 4, CIFAR_NORMALIZATION), 50, num_workers=2,
                              seed=config.seed)
    calls = 0

    def step(x: torch.Tensor, y: torch.Tensor) -> engine.loop.StepResult:
        nonlocal calls
        calls += 1
        if calls == signal_at_step:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-step: the step must still finish
        loss = F.cross_entropy(model(x), y)
        return engine.loop.StepResult(loss, {"ce": loss.detach()}, None, len(x))

    try:
        engine.loop.fit(state=state, make_step=lambda: step, loader=loader, schedule=config.schedule,
                        loop=config.loop, device=torch.device("cpu"))
    except util.Preempted as e:
        # Raised without its traceback, whose frames would keep this loader's worker processes alive
        # for the rest of the session (the real command exits instead).
        stopped = e.with_traceback(None)
    else:
        return model.state_dict()
    del loader, state
    raise stopped


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, torch.Tensor]:
    return _train(tmp_path_factory.mktemp("straight"))


@pytest.mark.parametrize("signal_at_step, where", [(3, "epoch 1, step 3/8"), (STEPS_PER_EPOCH, "the end of epoch 1")])
def test_sigterm_then_resume_is_bit_identical(uninterrupted, tmp_path, signal_at_step, where):
    with pytest.raises(util.Preempted, match=f"SIGTERM at {where}; .* Continue with the same command plus --resume") \
            as stopped:
        _train(tmp_path, signal_at_step)
    assert stopped.value.exit_code == 143
    checkpoint = engine.checkpoint.load_checkpoint(tmp_path / "run" / "checkpoint.pth")
    if signal_at_step < STEPS_PER_EPOCH:
        assert checkpoint["epoch"] == 0 and checkpoint["partial"]["epoch"] == 1
        assert checkpoint["partial"]["step"] == 3  # the step during which the signal came was finished
    else:
        assert checkpoint["epoch"] == 1 and "partial" not in checkpoint
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone with the loop
    resumed = _train(tmp_path, resume=True)
    for key, value in uninterrupted.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=key)
    epochs = [line for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(epochs) == 2  # each epoch logged once


def test_sigterm_then_resume_is_bit_identical_with_device_augmentation(tmp_path):
    straight = _train(tmp_path / "straight", augment="device")
    with pytest.raises(util.Preempted, match="SIGTERM at epoch 2, step 3/8"):
        _train(tmp_path / "stopped", STEPS_PER_EPOCH + 3, augment="device")
    resumed = _train(tmp_path / "stopped", resume=True, augment="device")
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=key)


def test_resuming_mid_epoch_with_another_number_of_processes_is_refused(tmp_path):
    with pytest.raises(util.Preempted):
        _train(tmp_path, 3)
    path = tmp_path / "run" / "checkpoint.pth"
    checkpoint = engine.checkpoint.load_checkpoint(path)
    checkpoint["partial"]["world_size"] = 2
    engine.checkpoint.save_checkpoint(checkpoint, path)
    with pytest.raises(util.CheckpointError,
                       match="stopped mid-epoch with 2 processes; resume it with the same number"):
        _train(tmp_path, resume=True)


@pytest.mark.slow  # a minute or more on a 2-core CPU without AVX-512; CI runs it (`-m slow`)
def test_sigterm_to_the_training_command_with_workers(cifar_root, tmp_path):
    """The real command with the default data loading (2 persistent workers here), its whole process
    group signalled as SLURM does, in the first step of epoch 2 (tests/pause_at_step.py holds the run
    there until the signal comes): the signal meets the workers starting the epoch's first batches."""
    common = ["train_supervised_ssl.py", "--dataset", "CIFAR-FS", "--data_root", str(cifar_root), "--batch_size", "8",
              "--augment", "workers", "--num_workers", "2", "--device", "cpu", "--no_final_eval", "--epochs", "3",
              "--log_interval", "1", "--model", TEST_MODEL]
    straight = run_script(*common, "--model_path", str(tmp_path / "a"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    # 48 images, batch 8: 6 steps an epoch, so step 7 is epoch 2's first. stderr goes to a file: a full pipe
    # that nobody reads while the test waits for stdout would stall the run.
    with open(tmp_path / "stderr", "w") as stderr:
        process = subprocess.Popen([sys.executable, "tests/pause_at_step.py", "7", *common,
                                    "--model_path", str(tmp_path / "b")], cwd=REPO, stdout=subprocess.PIPE,
                                   stderr=stderr, text=True, start_new_session=True,
                                   env={**os.environ, "WANDB_MODE": "disabled"})
    paused = "paused at step 7\n" in process.stdout  # reads up to that line, or to the end of a run that failed
    if paused:
        os.killpg(process.pid, signal.SIGTERM)
    process.communicate(timeout=300)
    err = (tmp_path / "stderr").read_text()
    assert paused, f"the run never paused at step 7: {err[-3000:]}"
    assert process.returncode == 143, err[-3000:]
    [message] = [line for line in err.splitlines() if line.startswith("stopped: ")]
    assert (message.startswith("stopped: SIGTERM at epoch 2, step 1/6; ")
            and message.endswith("Continue with the same command plus --resume"))
    assert "Traceback" not in err
    [b] = (tmp_path / "b").iterdir()
    partial = engine.checkpoint.load_checkpoint(b / "checkpoint.pth")["partial"]
    assert (partial["epoch"], partial["step"], partial["world_size"]) == (2, 1, 1)
    resumed = run_script(*common, "--model_path", str(tmp_path / "b"), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    [a] = (tmp_path / "a").iterdir()
    one = torch.load(a / "checkpoint.pth", map_location="cpu", weights_only=True)
    two = torch.load(b / "checkpoint.pth", map_location="cpu", weights_only=True)
    assert one["dropblock_calls"] == two["dropblock_calls"]
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=0, atol=0, msg=key)


WRITER = """
import sys, torch
sys.path.insert(0, {repo!r})
from engine.checkpoint import save_checkpoint
save_checkpoint({{"epoch": 1, "model": {{"w": torch.ones(3)}}}}, {path!r})
print("first written", flush=True)
save_checkpoint({{"epoch": 2, "model": {{"w": torch.zeros(150_000_000)}}}}, {path!r})  # 600 MB, slow to write
print("second written", flush=True)
"""


def test_a_writer_killed_mid_write_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pth"
    writer = subprocess.Popen([sys.executable, "-c", WRITER.format(repo=str(REPO), path=str(path))],
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "first written"
    tmp = path.with_name(f".{path.name}.tmp{writer.pid}")
    deadline = time.monotonic() + 60
    while not (tmp.is_file() and tmp.stat().st_size > 0) and time.monotonic() < deadline:
        time.sleep(0.001)
    writer.kill()  # SIGKILL: no cleanup of any kind runs
    writer.wait()
    assert tmp.is_file(), "the kill did not land mid-write"
    checkpoint = engine.checkpoint.load_checkpoint(path)
    assert checkpoint["epoch"] == 1 and torch.equal(checkpoint["model"]["w"], torch.ones(3))
    # The next write clears the dead writer's leftover temporary file.
    engine.checkpoint.save_checkpoint({"epoch": 3}, path)
    assert not tmp.exists() and engine.checkpoint.load_checkpoint(path)["epoch"] == 3


def test_no_rank_exits_before_rank_0s_checkpoint_is_on_disk(tmp_path):
    """Two gloo ranks; rank 1 alone receives SIGTERM, rank 0 writes the mid-epoch checkpoint with a
    2-second delay. torchrun ends the job when one rank exits, so rank 1 must still be waiting until
    the file is there."""
    from test_collectives import _free_port

    port, script = str(_free_port()), str(REPO / "tests" / "preempt_two_ranks.py")
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1",
           "WANDB_MODE": "disabled"}
    ranks = [subprocess.Popen([sys.executable, script, str(tmp_path / "run")], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)})
             for r in range(2)]
    outputs = [rank.communicate(timeout=120) for rank in ranks]
    for r, (out, err) in enumerate(outputs):
        assert f"rank {r} exits; checkpoint on disk: True" in out, err[-2000:]
