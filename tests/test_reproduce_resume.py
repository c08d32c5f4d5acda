"""A table's stages resume whatever they stopped in. scripts/reproduce.py runs a real plan (SKD Gen-0,
then SSKD from it, on tiny data and the narrow network); a SIGTERM stops Gen-0 in its first epoch,
then, when the plan is run again, SSKD in its teacher-head phase: both checkpoints then say epoch 0.
Running the same plan command once more must finish both, with weights equal to the bit to those of
a plan that was never stopped."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, TEST_MODEL, make_cifar_package
from test_reproduce import reproduce  # noqa: F401 (the fixture: the plan in this process)
from test_resume_every_method import NOT_TRAINING, assert_same_training_state

pytestmark = pytest.mark.slow

TINY = ["--model", TEST_MODEL, "--epochs", "2", "--lr_decay_epochs", "1", "--batch_size", "8", "--image_size", "16",
        "--num_workers", "0", "--log_interval", "1", "--sskd_head_epochs", "2"]


class SignalOnce:
    """Launches the plan's stages as the plan does, each training run through tests/sigterm_at_step.py (one
    CPU thread, so that every run sums in the same order), which sends the next run of `pending`'s script
    SIGTERM during its optimizer step `pending[1]`, and no signal to the others."""

    def __init__(self, monkeypatch) -> None:
        self.real_popen = subprocess.Popen
        self.pending: tuple[str, int] | None = None
        self.trained: list[list[str]] = []
        monkeypatch.setattr(subprocess, "Popen", self.popen)

    def popen(self, command, *args, **kwargs):
        if Path(command[1]).name.startswith("train_"):
            self.trained.append(command)
            step = 0
            if self.pending is not None and Path(command[1]).name == self.pending[0]:
                step, self.pending = self.pending[1], None
            command = [sys.executable, str(REPO / "tests" / "sigterm_at_step.py"), str(step), *command[1:]]
        return self.real_popen(command, *args, **kwargs)


def _plan(reproduce, data: Path, output: Path):  # noqa: F811
    return reproduce("--dataset", "CIFAR-FS", "--data_root", str(data), "--output", str(output), "--seeds", "0",
                     "--methods", "skd_gen0,sskd", "--episodes", "2", "--device", "cpu", "--amp", "off",
                     "--wandb_group", "g", "--", *TINY)


def _checkpoints(output: Path) -> dict[str, dict]:
    return {folder.name: torch.load(folder / "checkpoint.pth", map_location="cpu", weights_only=True)
            for folder in sorted(output.iterdir()) if (folder / "checkpoint.pth").is_file()}


def test_a_stage_stopped_in_its_first_epoch_or_a_phase_before_it_is_resumed_by_the_plan(reproduce,  # noqa: F811
                                                                                      monkeypatch, tmp_path):
    data = make_cifar_package(tmp_path / "data" / "CIFAR-FS", train_classes=4, per_class_train=4).parent
    launcher = SignalOnce(monkeypatch)
    straight = _plan(reproduce, data, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]

    stopped = tmp_path / "stopped"
    launcher.pending = ("train_supervised_ssl.py", 1)  # Gen-0's epoch 1, step 1 of 2
    first = _plan(reproduce, data, stopped)
    assert first.returncode == 2 and "exited with code 143" in first.stderr, first.stderr[-3000:]
    [gen0] = _checkpoints(stopped).values()
    assert gen0["epoch"] == 0 and gen0["partial"]["epoch"] == 1

    launcher.pending = ("train_distillation.py", 1)  # SSKD's teacher-head phase, its first step
    second = _plan(reproduce, data, stopped)
    assert second.returncode == 2 and "exited with code 143" in second.stderr, second.stderr[-3000:]
    assert "resuming (stopped in epoch 1, step 1)" in second.stdout and launcher.trained[-2][-1] == "--resume"
    sskd = next(c for name, c in _checkpoints(stopped).items() if name.startswith("S_"))
    assert sskd["epoch"] == 0 and sskd["phase"]["name"] == "teacher_head"

    third = _plan(reproduce, data, stopped)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "resuming (stopped in epoch 1 of its teacher_head phase)" in third.stdout
    assert launcher.trained[-1][-1] == "--resume"
    resumed, uninterrupted = _checkpoints(stopped), _checkpoints(tmp_path / "straight")
    assert set(resumed) == set(uninterrupted) and len(resumed) == 2
    for name, checkpoint in uninterrupted.items():
        assert checkpoint["epoch"] == 2 and "partial" not in resumed[name] and "phase" not in resumed[name]
        assert_same_training_state({k: v for k, v in resumed[name].items() if k not in NOT_TRAINING},
                                   {k: v for k, v in checkpoint.items() if k not in NOT_TRAINING}, name)
