"""A run whose finite loss runs away, or whose training accuracy stays at chance, says so in one line per
occurrence, with the epoch, the step and the loss terms; --halt_on_divergence stops it as a non-finite
loss stops a run (one line, exit code 1, nothing saved from the broken epoch)."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import engine.loop
import engine.run
import util
from conftest import TEST_MODEL, run_script
from engine.config import DataConfig, LoopConfig, RunConfig, Schedule, TrainConfig, WandbConfig
from runtime.distributed import Distributed
from runtime.process import Process

# (w . x)^2 with |x| = 1: plain SGD multiplies w . x by 1 - 2 lr each step, so lr 1.5 quadruples the loss
# every step (a learning rate that is too large) and lr 0.1 shrinks it.
TOO_LARGE, SOUND = 1.5, 0.1


def _config(tmp_path, *, learning_rate: float = TOO_LARGE, halt_on_divergence: bool = False) -> TrainConfig:
    return TrainConfig(schedule=Schedule(epochs=2, learning_rate=learning_rate), data=DataConfig("synthetic"),
                       loop=LoopConfig(log_interval=2, halt_on_divergence=halt_on_divergence),
                       run=RunConfig(str(tmp_path), wandb=WandbConfig("disabled", tags=("t",))))


def _fit(tmp_path, model: nn.Module, step, batch: int = 2, **overrides) -> engine.loop.TrainState:
    """`step` trained by engine.loop.fit for 2 epochs of 4 steps (batches of `batch` identical images)."""
    config = _config(tmp_path, **overrides)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.schedule.learning_rate)
    process = Process(Distributed(), torch.device("cpu"), "off", "cpu")
    state = engine.run.prepare_run(config=config, process=process, name="run", model=model, optimizer=optimizer,
                                   job_type="test", identity={})
    x = torch.full((4 * batch, 4), 0.5)  # |x| = 1
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(len(x), dtype=torch.long)),
                                         batch_size=batch, generator=torch.Generator())
    engine.loop.fit(state=state, make_step=lambda: step, loader=loader, schedule=config.schedule, loop=config.loop,
                    device=process.device)
    return state


def _regression(model: nn.Linear):
    def step(x: torch.Tensor, y: torch.Tensor) -> engine.loop.StepResult:
        loss = (model(x) ** 2).mean()
        return engine.loop.StepResult(loss, {"mse": loss.detach(), "w": model.weight.detach().norm()}, None, len(x))

    return step


def _warnings(capsys) -> list[str]:
    """The run's warning lines: on stdout, among its epoch lines."""
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning: ")]


def test_a_too_large_learning_rate_is_reported_once_an_epoch_with_epoch_step_and_terms(tmp_path, capsys):
    torch.manual_seed(0)
    model = nn.Linear(4, 1, bias=False)
    _fit(tmp_path, model, _regression(model))
    lines = _warnings(capsys)
    # Windows of 2 steps: 1x and 4x the first loss (mean 2.5x), then 16x and 64x (mean 40x) at step 4; in
    # epoch 2 the first window is already far beyond, and the rest of that epoch is not repeated.
    assert len(lines) == 2, lines
    assert re.match(r"warning: diverging loss \(mean \S+ over steps 3-4, 40x the first step's \S+\) at epoch 1, "
                    r"step 4; metrics: mse=\S+, w=\S+ \(--halt_on_divergence stops such a run\)$", lines[0]), lines[0]
    assert re.search(r" at epoch 2, step 2; metrics: mse=", lines[1]), lines[1]


def test_a_sound_learning_rate_says_nothing(tmp_path, capsys):
    torch.manual_seed(0)
    model = nn.Linear(4, 1, bias=False)
    _fit(tmp_path, model, _regression(model), learning_rate=SOUND)
    assert _warnings(capsys) == []


def test_halt_on_divergence_stops_the_run_as_a_non_finite_loss_does(tmp_path, capsys):
    torch.manual_seed(0)
    model = nn.Linear(4, 1, bias=False)
    with pytest.raises(engine.loop.DivergenceError, match=r"^diverging loss \(.*\) at epoch 1, step 4; metrics: "
                                                          r"mse=\S+, w=\S+\. Last good checkpoint: none$"):
        _fit(tmp_path, model, _regression(model), halt_on_divergence=True)
    assert not (tmp_path / "run" / "checkpoint.pth").exists()  # nothing was saved from the broken epoch
    again = nn.Linear(4, 1, bias=False)
    with pytest.raises(SystemExit) as exit_info:
        util.run_cli(lambda: _fit(tmp_path / "again", again, _regression(again), halt_on_divergence=True))
    assert exit_info.value.code == 1  # as a non-finite loss
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: diverging loss"), err


class _Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Linear(4, 5)  # 5 classes: guessing is right 20% of the time


def _labelled(model: _Classifier, right: bool):
    """Cross-entropy steps that count every image right (`right`) or wrong."""
    def step(x: torch.Tensor, y: torch.Tensor) -> engine.loop.StepResult:
        loss = nn.functional.cross_entropy(model.classifier(x), y)
        correct = torch.tensor(len(x) if right else 0)
        return engine.loop.StepResult(loss, {"ce": loss.detach()}, correct, len(x))

    return step


def test_a_training_accuracy_at_chance_is_reported_after_each_epoch(tmp_path, capsys):
    model = _Classifier()
    _fit(tmp_path, model, _labelled(model, right=False), batch=10, learning_rate=0.0)
    lines = _warnings(capsys)
    assert [line.split(" after ")[1].split(";")[0] for line in lines] == ["epoch 1", "epoch 2"]
    assert re.match(r"warning: training accuracy at chance \(0% of 40 images, guessing among 5 classes 20%, at most "
                    r"26\.3% by chance\) after epoch 1; metrics: loss=\S+, ce=\S+", lines[0]), lines[0]
    model = _Classifier()
    _fit(tmp_path / "right", model, _labelled(model, right=True), batch=10, learning_rate=0.0)
    assert _warnings(capsys) == []
    model = _Classifier()  # 8 images of 5 classes: too few to tell a network from guessing
    _fit(tmp_path / "few", model, _labelled(model, right=False), learning_rate=0.0)
    assert _warnings(capsys) == []


def test_halt_on_divergence_stops_at_chance_before_the_epochs_checkpoint(tmp_path):
    model = _Classifier()
    with pytest.raises(engine.loop.DivergenceError, match=r"^training accuracy at chance .* after epoch 1; "
                                                          r"metrics: .*Last good checkpoint: none$"):
        _fit(tmp_path, model, _labelled(model, right=False), batch=10, learning_rate=0.0, halt_on_divergence=True)
    assert not (tmp_path / "run" / "checkpoint.pth").exists()


def test_a_method_trained_at_a_too_large_learning_rate_halts_in_one_line(cifar_root, tmp_path):
    """SKD Gen-0 at lr 1 (published: 0.05) on the tiny package: finite, but 10x its first loss by step 2."""
    done = run_script("train_supervised_ssl.py", "--dataset", "CIFAR-FS", "--data_root", str(cifar_root), "--model",
                      TEST_MODEL, "--batch_size", "16", "--epochs", "2", "--learning_rate", "1", "--num_workers",
                      "0", "--device", "cpu", "--log_interval", "1", "--no_final_eval", "--halt_on_divergence",
                      "--model_path", str(tmp_path))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr[-2000:]
    assert len(lines) == 1 and re.match(r"error: diverging loss \(mean \S+ over step \d+, \S+x the first step's "
                                        r"\S+\) at epoch 1, step \d+; metrics: ce=\S+, rot=\S+\. Last good "
                                        r"checkpoint: none$", lines[0]), lines
