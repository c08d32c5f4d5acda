"""The release's networks by their names (issue 40): each registered one holds the release's keys and shapes
(stored in release_state_dicts.json, so that the default tests need no release checkout), gives the release's
logits and features to the bit from the same weights (with SKD_RELEASE_DIR), and loads a release checkpoint
that has no rotation head with one line saying so.

    PYTHONPATH=. python tests/test_backbones.py RELEASE_DIR  # rewrites release_state_dicts.json from a release checkout
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from scripts.release_parity import RELEASE_NETWORKS, WITHOUT_ROTATION_HEAD

STORED = Path(__file__).with_name("release_state_dicts.json")
RELEASE = os.environ.get("SKD_RELEASE_DIR")


def release_network(name: str) -> nn.Module:
    """The release's network `name` as its create_model builds it for miniImageNet (84 px, 64 classes), from
    the checkout at SKD_RELEASE_DIR (scripts/release_parity.py compares the same at 32 px too)."""
    from scripts.release_parity import release_network as build

    return build(RELEASE, name, 84)


def ours(name: str) -> nn.Module:
    from models import create_model

    return create_model(name, 64, "miniImageNet")


def test_each_release_network_is_registered_with_the_releases_keys_and_shapes():
    stored = json.loads(STORED.read_text())["networks"]
    assert len(stored) == 6
    for name, keys in stored.items():
        with torch.device("meta"):
            mine = [[k, list(v.shape)] for k, v in ours(name).state_dict().items()]
        expected = keys + ([["rot_classifier.weight", [4, 64]], ["rot_classifier.bias", [4]]]
                           if name in WITHOUT_ROTATION_HEAD else [])
        assert mine == expected, name


def test_a_checkpoint_without_the_rotation_head_loads_and_says_so(tmp_path, capsys):
    from engine.checkpoint import load_model_weights

    torch.manual_seed(0)
    trained = ours("convnet4")
    state = {k: v for k, v in trained.state_dict().items() if not k.startswith("rot_classifier")}
    torch.save({"model": state}, tmp_path / "release.pth")  # the release's checkpoint layout
    fresh = ours("convnet4")
    head = fresh.rot_classifier.weight.detach().clone()
    load_model_weights(fresh, tmp_path / "release.pth")
    assert capsys.readouterr().out.count("has no rotation head") == 1
    assert torch.equal(fresh.classifier.weight, trained.classifier.weight)
    assert torch.equal(fresh.rot_classifier.weight, head)  # kept its initialisation


@pytest.mark.skipif(not RELEASE, reason="set SKD_RELEASE_DIR to a checkout of the release: "
                                        "git clone https://github.com/brjathu/SKD")
@pytest.mark.parametrize("name", sorted(json.loads(STORED.read_text())["networks"]))
def test_the_same_weights_give_the_releases_logits_and_features_to_the_bit(name):
    torch.manual_seed(0)
    theirs = release_network(name).eval()
    state = theirs.state_dict()
    for key, value in state.items():  # BatchNorm statistics away from the identity, so that eval mode uses them
        if key.endswith("running_mean"):
            value.normal_(0, 0.1)
        elif key.endswith("running_var"):
            value.uniform_(0.5, 1.5)
    mine = ours(name).eval()
    missing, unexpected = mine.load_state_dict(state, strict=False)
    assert sorted(missing) == (["rot_classifier.bias", "rot_classifier.weight"] if name in WITHOUT_ROTATION_HEAD
                               else []) and unexpected == []
    images = torch.randn(3, 3, 84, 84)
    with torch.no_grad():
        features, logits = theirs(images, is_feat=True)
        out = mine.forward_all(images)
    assert torch.equal(out.logits, logits) and torch.equal(out.feature, features[-1])
    if name not in WITHOUT_ROTATION_HEAD:
        with torch.no_grad():
            _, (_, rotation) = theirs(images, rot=True)
        assert torch.equal(out.rot_logits, rotation)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(json.loads(STORED.read_text())["networks"])))
def test_each_network_exports_to_torchscript_and_onnx_with_its_features_unchanged(name, tmp_path):
    """tools.export takes every network: its TorchScript file gives PyTorch's features on real image files, and
    so does its ONNX file within the tool's tolerance (where onnx and onnxruntime are installed, as in CI)."""
    import numpy as np
    from PIL import Image

    from conftest import run_script
    from models import create_model

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.random.RandomState(i).randint(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    torch.save({"model": create_model(name, 10, "synthetic").state_dict()}, tmp_path / "net.pth")
    onnx = importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime")
    formats = "torchscript,onnx" if onnx else "torchscript"
    done = run_script("-m", "tools.export", "--model_path", str(tmp_path / "net.pth"), "--model", name, "--dataset",
                      "synthetic", "--image_size", "16", "--images", str(folder), "--formats", formats,
                      "--out", str(tmp_path / "out" / name))
    assert done.returncode == 0, done.stderr
    lines = {line.split(":")[0]: line for line in done.stdout.splitlines() if "max abs difference" in line}
    assert "max abs difference from PyTorch 0.00e+00" in lines["torchscript"]
    assert ("onnx" in lines) == ("onnx" in formats)


def test_the_pages_example_network_registers_and_trains_a_gen0_step():
    """docs/backbones.md's "Adding a network" code, as the page shows it: it provides the contract and trains."""
    import re

    from methods.skd_gen0 import gen0_step
    from models import MODELS, Backbone, create_model

    page = (Path(__file__).resolve().parents[1] / "docs" / "backbones.md").read_text()
    network, registration = re.findall(r"```python\n(.*?)```", page.split("## Adding a network")[1], re.S)
    scope: dict = {}
    exec(network, scope)
    exec(registration, {**scope, "MODELS": MODELS})
    try:
        model = create_model("tinynet", 5, "CIFAR-FS")
        assert isinstance(model, Backbone)
        before = model.classifier.weight.detach().clone()
        result = gen0_step(model, 2.0)(torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,)))
        result.loss.backward()
        torch.optim.SGD(model.parameters(), lr=0.1).step()
        assert torch.isfinite(result.loss) and not torch.equal(model.classifier.weight, before)
        model.eval()
        images = torch.randn(2, 3, 32, 32)
        _, logits = model.forward_preactivations(images)
        torch.testing.assert_close(logits, model(images))
    finally:
        MODELS.unregister("tinynet")


if __name__ == "__main__":
    RELEASE = sys.argv[1]
    with torch.device("meta"):
        dicts = {name: [[k, list(v.shape)] for k, v in release_network(name).state_dict().items()]
                 for name in RELEASE_NETWORKS}
    source = ("github.com/brjathu/SKD models/resnet_ssl.py, convnet.py, wresnet.py: state_dict() keys and shapes "
              "in order, 64 classes, miniImageNet's create_model arguments "
              "(PYTHONPATH=. python tests/test_backbones.py RELEASE_DIR)")
    STORED.write_text(json.dumps({"source": source, "networks": dicts}, indent=0) + "\n")
