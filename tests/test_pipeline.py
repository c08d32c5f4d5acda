"""The three commands end to end on real images: the Omniglot sample, split by alphabet into
train (Korean, Latin), val (Early_Aramaic) and test (Balinese, Greek) characters, at 28x28, with the
narrow ResNet-12 (the commands are under test here, not the network: docs/studies.md has ResNet-12's
figures on the same data)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import engine.checkpoint
from conftest import CPU_AMP, TEST_MODEL, run_script
from dataset import load_split
from eval.fewshot import EpisodeSetting, evaluate

pytestmark = pytest.mark.slow

DATA = ["--dataset", "folder", "--image_size", "28", "--device", "cpu", "--amp", CPU_AMP]
TRAIN = [*DATA, "--num_workers", "0", "--batch_size", "32", "--no_final_eval"]
CHANCE = 20.0


def _checkpoint_path(stdout: str) -> Path:
    return Path(next(line for line in stdout.splitlines() if line.startswith("checkpoint: "))[len("checkpoint: "):])


def _test_accuracy(checkpoint: Path, root: Path, output: Path) -> float:
    done = run_script("eval_fewshot.py", *DATA, "--data_root", str(root), "--model_path", str(checkpoint),
                      "--n_shots", "1", "--n_test_runs", "300", "--output", str(output), timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(output.read_text())["results"][0]["mean"]


@pytest.fixture(scope="module")
def pipeline(omniglot_root, omniglot_gen0, tmp_path_factory):
    save = tmp_path_factory.mktemp("omniglot_runs")
    gen0_path = omniglot_gen0
    gen1 = run_script("train_distillation.py", *TRAIN, "--data_root", str(omniglot_root), "--model_path", str(save),
                      "--path_t", str(gen0_path), "--epochs", "1", "--lr_decay_epochs", "1", timeout=1800)
    assert gen1.returncode == 0, gen1.stderr[-3000:]
    assert "teacher check: weights and BatchNorm statistics unchanged" in gen1.stdout
    return {"gen0": gen0_path, "gen1": _checkpoint_path(gen1.stdout), "save": save}


def test_both_generations_learn_transferable_features(pipeline, omniglot_root):
    gen0 = _test_accuracy(pipeline["gen0"], omniglot_root, pipeline["save"] / "gen0.json")
    gen1 = _test_accuracy(pipeline["gen1"], omniglot_root, pipeline["save"] / "gen1.json")
    print(f"Omniglot 5-way 1-shot test accuracy: gen0 {gen0:.2f}, gen1 {gen1:.2f}")
    assert gen0 > 2.5 * CHANCE and gen1 > 2.5 * CHANCE


def test_lr_agrees_with_sklearn_on_trained_features(pipeline, omniglot_root):
    """Issue 3's acceptance check: 600 official episodes, features of a trained model."""
    checkpoint = engine.checkpoint.load_checkpoint(pipeline["gen0"])
    images = load_split("folder", omniglot_root, "test", image_size=28)
    model = engine.checkpoint.model_from_checkpoint(TEST_MODEL, pipeline["gen0"], checkpoint, "folder", 28)
    results = evaluate(model.eval(), images, "test", EpisodeSetting(5, 1, 15, 600, 5),
                       engine.checkpoint.checkpoint_normalization(checkpoint), torch.device("cpu"),
                       classifiers=("LR", "sklearn"), progress=False)
    ours, reference = results
    assert (ours.predictions == reference.predictions).mean() >= 0.995
    assert abs(ours.accuracies.mean() - reference.accuracies.mean()) * 100 <= 0.1
