"""--compile runs the training step through torch.compile: it trains (the loss falls as eager's
does), and its checkpoint holds the network's own state-dict keys, which load and evaluate as
an eager run's."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import engine.checkpoint
import engine.loop
import engine.run
from dataset import load_split
from dataset.device_loader import DeviceBatches
from dataset.profiles import CIFAR_NORMALIZATION
from test_preemption import SmallNet, _args


def _fit(folder, compile_step: bool) -> tuple[torch.nn.Module, list[float]]:
    torch.manual_seed(0)
    model = SmallNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    args = _args(folder, compile=compile_step, epochs=2)
    state = engine.run.prepare_run(args, "run", model, optimizer, "test", {})
    loader = DeviceBatches(load_split("synthetic", None, "train"), 50, args.seed, 4, CIFAR_NORMALIZATION,
                           torch.device("cpu"))
    losses = []

    def step(x: torch.Tensor, y: torch.Tensor) -> engine.loop.StepResult:
        loss = F.cross_entropy(model(x), y)
        return engine.loop.StepResult(loss, {"ce": loss.detach()}, None, len(x))

    engine.loop.fit(state, step, loader, args, torch.device("cpu"))
    for line in (folder / "run" / "log.jsonl").read_text().splitlines():
        losses.append(__import__("json").loads(line)["train_loss"])
    return model, losses


@pytest.mark.slow  # compiling takes about a minute on a 2-core CPU
def test_compiled_step_trains_like_eager_and_checkpoints_the_same_keys(tmp_path):
    eager, eager_losses = _fit(tmp_path / "eager", False)
    compiled, compiled_losses = _fit(tmp_path / "compiled", True)
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-3)  # the same computation, fused differently
    checkpoint = engine.checkpoint.load_checkpoint(tmp_path / "compiled" / "run" / "checkpoint.pth")
    assert list(checkpoint["model"]) == list(eager.state_dict())  # no _orig_mod. prefix
    fresh = SmallNet()
    fresh.load_state_dict(checkpoint["model"])
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(fresh.eval()(x), compiled.eval()(x))
