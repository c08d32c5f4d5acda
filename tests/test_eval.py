"""Few-shot evaluation: the batched classifiers against scikit-learn, statistics, the embed-once
pipeline against the per-episode reference, checkpoint formats and the command line."""
from __future__ import annotations

import json
import re
import shutil
import sys

import numpy as np
import pytest
import torch
from scipy import stats

import engine.checkpoint
import util
from conftest import TEST_MODEL, run_script
from dataset import load_split, sample_episodes
from published.profiles import CIFAR_NORMALIZATION
from eval import classifiers as clf
from eval import fewshot
from eval.fewshot import EpisodeSetting, evaluate
from eval.reference import evaluate_reference
from eval.stats import mean_confidence_interval
from models import create_model


def _episodes(rng, e, n_ways, n_shots, n_queries, d):
    centres = rng.normal(0, 1, (e, n_ways, 1, d))
    support = centres + rng.normal(0, 1.5, (e, n_ways, n_shots, d))
    query = centres + rng.normal(0, 1.5, (e, n_ways, n_queries, d))
    labels = np.repeat(np.arange(n_ways), n_shots)
    to = lambda a: torch.from_numpy(a.reshape(e, -1, d))  # noqa: E731
    return to(support), torch.from_numpy(np.tile(labels, (e, 1))), to(query)


@pytest.mark.parametrize("n_shots, d", [(1, 640), (5, 64), (5, 200)])
def test_lr_solves_sklearns_problem(n_shots, d):
    from sklearn.linear_model import LogisticRegression

    support, labels, query = _episodes(np.random.RandomState(n_shots + d), 6, 5, n_shots, 7, d)
    scores = clf.logistic_regression_scores(support, labels, query, 5)
    for s, y, q, ours in zip(support.numpy(), labels.numpy(), query.numpy(), scores):
        reference = LogisticRegression(C=1.0, max_iter=1000, tol=1e-10).fit(s, y).decision_function(q)
        # Softmax scores are defined up to a per-row constant: compare them centred.
        ours = ours.numpy() - ours.numpy().mean(1, keepdims=True)
        np.testing.assert_allclose(ours, reference - reference.mean(1, keepdims=True), atol=1e-4)


@pytest.mark.parametrize("n_shots", [1, 5])
def test_lr_agrees_with_sklearn_on_real_images(omniglot_root, n_shots):
    """600 official 5-way episodes on real Omniglot characters, with pixel features (strokes as
    ink, 14x14); trained-network features are checked the same way in test_pipeline.py."""
    images = load_split("folder", omniglot_root, "test", image_size=28)
    ink = 1 - torch.from_numpy(images.images[..., 0]).double()[:, None] / 255
    features = torch.nn.functional.normalize(torch.nn.functional.avg_pool2d(ink, 2).flatten(1), dim=1)
    episodes = sample_episodes(images.class_indices(), 600, 5, n_shots, 15, images.source)
    support = features[np.stack([e.support.ravel() for e in episodes])]
    query = features[np.stack([e.query.ravel() for e in episodes])]
    labels = torch.arange(5).repeat_interleave(n_shots).expand(600, -1)
    truth = torch.arange(5).repeat_interleave(15)
    ours = clf.classify("LR", support, labels, query, 5)
    reference = clf.classify("sklearn", support, labels, query, 5)
    assert (ours == reference).double().mean() >= 0.995
    acc_ours = (ours == truth).double().mean(1).numpy()
    acc_reference = (reference == truth).double().mean(1).numpy()
    assert abs(acc_ours.mean() - acc_reference.mean()) * 100 <= 0.1
    assert acc_ours.mean() > 0.4  # well above 20% chance: the features carry real signal


def test_nearest_neighbour_and_cosine():
    support = torch.tensor([[[1.0, 0.0], [0.0, 10.0]]])
    labels = torch.tensor([[0, 1]])
    query = torch.tensor([[[0.9, 0.5], [3.0, 2.5]]])
    assert clf.classify("NN", support, labels, query, 2).tolist() == [[0, 0]]
    assert clf.classify("Cosine", support, labels, query, 2).tolist() == [[0, 0]]
    query = torch.tensor([[[0.1, 0.3], [0.5, 6.0]]])  # the first is nearest to class 0, closest in angle to 1
    assert clf.classify("NN", support, labels, query, 2).tolist() == [[0, 1]]
    assert clf.classify("Cosine", support, labels, query, 2).tolist() == [[1, 1]]


def test_confidence_interval_formula():
    acc = np.random.RandomState(0).uniform(0.4, 0.9, 600)
    mean, ci = mean_confidence_interval(acc)
    assert mean == pytest.approx(100 * acc.mean())
    assert ci == pytest.approx(100 * stats.t.ppf(0.975, 599) * acc.std(ddof=1) / np.sqrt(600))
    assert np.isnan(mean_confidence_interval(np.array([0.5]))[1])


# ----------------------------------------------------------------------------- the pipeline

@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return util.to_device(create_model("resnet12_ssl", 6, image_size=32), torch.device("cpu")).eval()


@pytest.fixture(scope="module")
def narrow_model():
    """For tests of the evaluation itself, not of the network (a sixteenth of the compute)."""
    torch.manual_seed(0)
    return util.to_device(create_model(TEST_MODEL, 6, image_size=32), torch.device("cpu")).eval()


class _ImageCounter:
    def __init__(self, model):
        self.images = 0
        self.handle = model.layer1.register_forward_pre_hook(
            lambda m, inputs: setattr(self, "images", self.images + len(inputs[0])))


@pytest.mark.slow  # a minute or more on a 2-core CPU without AVX-512; CI runs it (`-m slow`)
def test_each_image_is_embedded_once_and_matches_the_reference(narrow_model, cifar_root, monkeypatch):
    images = load_split("CIFAR-FS", cifar_root, "val")
    setting = EpisodeSetting(5, 1, 15, 6, 5)
    counter = _ImageCounter(narrow_model)
    monkeypatch.setattr(fewshot, "SUPPORT_IMAGES_PER_CHUNK", 50)  # 2 episodes per chunk
    ours = evaluate(narrow_model, images, "val", setting, CIFAR_NORMALIZATION, torch.device("cpu"),
                    classifiers=("LR", "sklearn"), embeddings=("feature",), progress=False)
    counter.handle.remove()
    episodes = sample_episodes(images.class_indices(), 6, 5, 1, 15)
    unique_queries = len(np.unique(np.concatenate([e.query.ravel() for e in episodes])))
    assert counter.images == unique_queries + 6 * 5 * 1 * 5
    reference = evaluate_reference(narrow_model, images, "val", setting, CIFAR_NORMALIZATION, torch.device("cpu"))
    np.testing.assert_allclose(ours[1].accuracies, reference.accuracies)  # same episodes, pixels and solver
    np.testing.assert_allclose(ours[0].accuracies, reference.accuracies, atol=1 / 75 + 1e-9)
    monkeypatch.setattr(fewshot, "SUPPORT_IMAGES_PER_CHUNK", 2048)  # one chunk: nothing may change
    again = evaluate(narrow_model, images, "val", setting, CIFAR_NORMALIZATION, torch.device("cpu"),
                     classifiers=("sklearn",), progress=False)
    np.testing.assert_array_equal(again[0].accuracies, ours[1].accuracies)


def test_batched_evaluation_matches_the_per_episode_reference(narrow_model, cifar_root, monkeypatch):
    """The default run's version of the test above: eval.fewshot.evaluate (each image embedded once, the
    episodes solved in batches, 2 episodes a chunk) against eval.reference (each episode embedded and
    solved on its own with scikit-learn), on 4 episodes of 5-way 1-shot with 5 queries a class."""
    images = load_split("CIFAR-FS", cifar_root, "val")
    setting = EpisodeSetting(5, 1, 5, 4, 2)
    monkeypatch.setattr(fewshot, "SUPPORT_IMAGES_PER_CHUNK", 10)  # 5 support images x 2 augmentations an episode
    ours = evaluate(narrow_model, images, "val", setting, CIFAR_NORMALIZATION, torch.device("cpu"),
                    classifiers=("LR", "sklearn"), embeddings=("feature",), progress=False)
    reference = evaluate_reference(narrow_model, images, "val", setting, CIFAR_NORMALIZATION, torch.device("cpu"))
    assert len(reference.accuracies) == 4
    np.testing.assert_allclose(ours[1].accuracies, reference.accuracies)  # same episodes, pixels and solver
    # the batched solver's decision differs from scikit-learn's at most on a near-tie: one query of the 25
    np.testing.assert_allclose(ours[0].accuracies, reference.accuracies, atol=1 / 25 + 1e-9)


def test_embed_is_the_models_own_forward(narrow_model):
    """eval.embed.embed (batches of 2, channels-last, the project's pixel normalisation) against the
    network's plain forward on images normalised here by hand: the logits are model(x), the features
    what its classifier receives."""
    from eval.embed import embed

    images = torch.from_numpy(np.random.RandomState(0).randint(0, 256, (5, 32, 32, 3), dtype=np.uint8))
    features, logits = embed(narrow_model, images, CIFAR_NORMALIZATION, torch.device("cpu"), batch_size=2)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (CIFAR_NORMALIZATION.mean, CIFAR_NORMALIZATION.std))
    x = (images.permute(0, 3, 1, 2).double() / 255 - mean) / std
    seen = []
    hook = narrow_model.classifier.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0]))
    with torch.no_grad():
        expected = narrow_model.eval()(x.float())
    hook.remove()
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(features, seen[0], rtol=1e-4, atol=1e-5)
    assert features.shape == (5, narrow_model.classifier.in_features)


def test_lr_receives_l2_normalised_embeddings(narrow_model, cifar_root, monkeypatch):
    """Every support and query vector the classifier is given is an embedding divided by its Euclidean
    norm, computed here in numpy from embed()'s own output (not through the project's helper)."""
    raw, given = [], []
    real_embed, real_classify = fewshot.embed, fewshot.classify
    monkeypatch.setattr(fewshot, "embed", lambda *a, **k: [raw.append(t) or t for t in real_embed(*a, **k)])
    monkeypatch.setattr(fewshot, "classify", lambda name, support, labels, query, n_ways: (
        given.extend([support, query]), real_classify(name, support, labels, query, n_ways))[1])
    evaluate(narrow_model, load_split("CIFAR-FS", cifar_root, "val"), "val", EpisodeSetting(5, 1, 5, 2, 2),
             CIFAR_NORMALIZATION, torch.device("cpu"), classifiers=("LR",), embeddings=("feature",), progress=False)
    features = np.concatenate([t.numpy() for t in raw[0::2]]).astype(np.float64)  # (features, logits) per call
    norms = np.sqrt((features ** 2).sum(1, keepdims=True))
    assert not np.allclose(norms, 1.0)  # the raw features are not unit vectors already
    by_hand = features / norms
    for vectors in given:
        rows = vectors.reshape(-1, vectors.shape[-1]).double().numpy()
        distance = np.abs(rows[:, None, :] - by_hand[None, :, :]).max(2).min(1)
        assert distance.max() < 1e-6


# ----------------------------------------------------------------------------- checkpoints and the CLI

@pytest.mark.parametrize("layout", ["ours", "official", "bare", "dataparallel"])
def test_checkpoint_formats_load(small_model, tmp_path, layout):
    # A fresh model's BatchNorm buffers equal small_model's (never trained): perturb them so that
    # running_mean, running_var and num_batches_tracked must really come from the file.
    torch.manual_seed(1)
    state = {k: v.clone() for k, v in small_model.state_dict().items()}
    for key, value in state.items():
        if key.endswith("running_mean"):
            value.normal_()
        elif key.endswith("running_var"):
            value.uniform_(0.5, 2)
        elif key.endswith("num_batches_tracked"):
            value.fill_(7)
    assert any(k.endswith("num_batches_tracked") for k in state)
    content = {"ours": {"epoch": 3, "model": state, "optimizer": {}, "normalization": {}},
               "official": {"model": state}, "bare": state,
               "dataparallel": {"model": {f"module.{k}": v for k, v in state.items()}}}[layout]
    torch.save(content, tmp_path / "ckpt.pth")
    fresh = create_model("resnet12_ssl", 6, image_size=32)
    buffers = [k for k, _ in fresh.named_buffers()]
    assert buffers and not any(torch.equal(fresh.state_dict()[k], state[k]) for k in buffers)
    engine.checkpoint.load_model_weights(fresh, tmp_path / "ckpt.pth")
    for key, value in state.items():
        assert torch.equal(fresh.state_dict()[key], value)


def test_checkpoint_mismatch_names_keys_and_shapes(small_model, tmp_path):
    state = dict(small_model.state_dict())
    del state["layer1.0.bn1.running_mean"]
    state["extra.weight"] = torch.zeros(1)
    torch.save({"model": state}, tmp_path / "ckpt.pth")
    with pytest.raises(util.CheckpointError, match=r"missing: layer1.0.bn1.running_mean; unexpected: extra.weight"):
        engine.checkpoint.load_model_weights(create_model("resnet12_ssl", 6, image_size=32), tmp_path / "ckpt.pth")
    with pytest.raises(util.CheckpointError, match=r"shape mismatch: classifier.weight \(6, 640\) vs model \(7, 640\)"):
        engine.checkpoint.load_model_weights(create_model("resnet12_ssl", 7, image_size=32), tmp_path / "ckpt.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(util.CheckpointError,
                       match=r"junk.pth: not a PyTorch checkpoint: text, not a zip archive or a pickle"):
        engine.checkpoint.load_checkpoint(tmp_path / "junk.pth")


def test_eval_fewshot_command(small_model, cifar_root, tmp_path):
    torch.save(small_model.state_dict(), tmp_path / "bare.pth")  # bare state dict; classes read from it
    output = tmp_path / "out" / "results.json"
    done = run_script("eval_fewshot.py", "--model", "resnet12_ssl", "--model_path", str(tmp_path / "bare.pth"),
                      "--dataset", "CIFAR-FS", "--data_root", str(cifar_root), "--n_ways", "5", "--n_shots", "1",
                      "--n_queries", "15", "--n_test_runs", "3", "--n_aug_support_samples", "5",
                      "--split", "val", "--use_logit", "--classifier", "NN",
                      "--device", "cpu", "--output", str(output))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "normalization: the CIFAR-FS profile's constants" in done.stdout
    # The same evaluation in-process (the same weights, channels-last, the profile's constants, seed 0):
    # the CLI must report exactly its accuracies. NN on logits gives per-episode accuracies in steps
    # of 1/75, so identical embeddings up to float noise give identical numbers.
    [expected] = evaluate(small_model, load_split("CIFAR-FS", cifar_root, "val"), "val", EpisodeSetting(5, 1, 15, 3, 5),
                          CIFAR_NORMALIZATION, torch.device("cpu"), classifiers=("NN",), embeddings=("logit",),
                          progress=False)
    mean, ci = expected.mean_ci
    lines = [line for line in done.stdout.splitlines() if line.startswith("val 5-way")]
    assert lines == [expected.line()] and lines[0].endswith("(3 episodes, fp32)")
    [result] = json.loads(output.read_text())["results"]
    assert result == {"split": "val", "n_ways": 5, "n_shots": 1, "n_queries": 15, "n_episodes": 3, "n_aug": 5,
                      "embedding": "logit", "classifier": "NN", "precision": "fp32",
                      "mean": pytest.approx(mean, rel=1e-12), "ci95": pytest.approx(ci, rel=1e-12), "image_size": 32,
                      "fingerprint": expected.fingerprint,
                      "accuracies": pytest.approx(expected.accuracies.tolist(), abs=1e-6)}


# ----------------------------------------------------------------------------- defaults from the checkpoint

def _our_checkpoint(model, folder, cifar_root, architecture="resnet12_ssl", **extra):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "checkpoint.pth"
    torch.save({"epoch": 1, "model": model.state_dict(), "image_size": 32, "wandb_id": "train123",
                "normalization": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
                "args": {"dataset": "CIFAR-FS", "data_root": str(cifar_root), "model_path": str(folder.parent),
                         "wandb_project": None, "wandb_group": "table-1", "model": architecture}, **extra}, path)
    return path


def test_eval_takes_dataset_and_data_from_the_checkpoint_and_writes_nothing_beside_it(narrow_model, cifar_root,
                                                                                      tmp_path):
    path = _our_checkpoint(narrow_model, tmp_path / "save" / "run", cifar_root, architecture=TEST_MODEL)
    before = sorted(p.name for p in path.parent.iterdir())
    done = run_script("eval_fewshot.py", "--model_path", str(path), "--n_test_runs", "2", "--split", "val",
                      "--device", "cpu", "--wandb", "offline", "--wandb_dir", str(tmp_path / "wb"),
                      env={"WANDB_MODE": "offline"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "dataset: CIFAR-FS (from the checkpoint)" in done.stdout.splitlines()
    assert f"model: {TEST_MODEL} (from the checkpoint)" in done.stdout.splitlines()
    assert f"data_root: {cifar_root} (from the checkpoint)" in done.stdout.splitlines()
    assert "normalization: the checkpoint's" in done.stdout.splitlines()
    assert sorted(p.name for p in path.parent.iterdir()) == before
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and not runs[0].name.endswith("train123")  # a run of its own, not the training run's

    other = run_script("eval_fewshot.py", "--model_path", str(path), "--dataset", "toy", "--n_test_runs", "1",
                       "--split", "val", "--device", "cpu")
    assert other.returncode == 0, other.stderr[-2000:]
    assert "dataset: toy (--dataset; the checkpoint was trained with CIFAR-FS)" in other.stdout.splitlines()


def test_eval_of_a_checkpoint_that_records_no_dataset_asks_for_one(small_model, tmp_path):
    torch.save({"model": small_model.state_dict()}, tmp_path / "official.pth")
    done = run_script("eval_fewshot.py", "--model_path", str(tmp_path / "official.pth"), "--device", "cpu")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: --dataset: {tmp_path / 'official.pth'} does not record the dataset it was trained on; pass --dataset"]


def test_eval_logs_to_its_own_wandb_run_in_the_training_group(small_model, cifar_root, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")  # optional: the scripts run without it

    import eval_fewshot

    calls = []
    monkeypatch.setattr(wandb, "init", lambda **kwargs: calls.append(kwargs))
    path = _our_checkpoint(small_model, tmp_path / "save" / "run", cifar_root)
    args = eval_fewshot.get_args_parser().parse_args(["--model_path", str(path), "--wandb", "offline",
                                                      "--output", str(tmp_path / "out" / "r.json")])
    eval_fewshot.eval_logger(args, engine.checkpoint.load_checkpoint(path), {"device_name": "cpu", "precision": "fp32"})
    (kwargs,) = calls
    assert kwargs["config"]["device_name"] == "cpu" and kwargs["config"]["precision"] == "fp32"
    assert kwargs["job_type"] == "eval" and kwargs["group"] == "table-1" and kwargs["id"] is None
    assert kwargs["resume"] is None and kwargs["project"] == "save" and kwargs["dir"] == str(tmp_path / "out")
    assert {"eval", "split:test", "shots:1", "method:skd_gen0", "dataset:CIFAR-FS", "model:resnet12_ssl"} <= \
        set(kwargs["tags"])


def test_eval_normalisation_never_comes_from_the_evaluated_split(tmp_path):
    from PIL import Image

    from dataset.transforms import data_normalization
    from engine.trained import evaluation_normalization

    for split, value in (("train", 200), ("val", 40), ("test", 40)):
        for c in range(5):
            (tmp_path / split / f"c{c}").mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((28, 28, 3), value + c + i, np.uint8)).save(
                    tmp_path / split / f"c{c}" / f"{i}.png")
    norm, source = evaluation_normalization("auto", {"model": {}}, "folder", str(tmp_path), 28)
    assert norm == data_normalization(load_split("folder", tmp_path, "train").images)
    assert source.startswith("statistics of the training split")
    assert (evaluation_normalization("imagenet", {"model": {}}, "folder", str(tmp_path), 28)[0].mean[0]
            == pytest.approx(120.39586422 / 255))
    recorded = {"normalization": {"mean": [0.1, 0.2, 0.3], "std": [1, 1, 1]}}
    assert evaluation_normalization("auto", recorded, "folder", str(tmp_path), 28)[0].mean == (0.1, 0.2, 0.3)


# ----------------------------------------------------------------------------- the results table

def test_evaluate_records_accuracies_and_a_fingerprint_of_its_episodes(small_model, cifar_root):
    import dataclasses

    from eval.fewshot import episode_fingerprint

    images = load_split("CIFAR-FS", cifar_root, "val")
    setting = EpisodeSetting(5, 1, 15, 2, 1)
    run = lambda imgs, seed: evaluate(small_model, imgs, "val", setting, CIFAR_NORMALIZATION,  # noqa: E731
                                      torch.device("cpu"), classifiers=("NN",), progress=False, seed=seed)[0]
    first = run(images, 0)
    record = first.to_dict()
    assert record["accuracies"] == pytest.approx(first.accuracies.tolist(), abs=1e-6) and len(record["accuracies"]) == 2
    assert record["fingerprint"] == first.fingerprint and len(first.fingerprint) == 16 and record["image_size"] == 32
    # The same content in other arrays (the split read again, its pixels copied): the same fingerprint; it
    # hashes what the episodes are made of, not which objects hold it.
    again = load_split("CIFAR-FS", cifar_root, "val")
    assert again.images is not images.images
    assert episode_fingerprint(dataclasses.replace(again, images=again.images.copy()), setting, 0) == first.fingerprint
    # Another augmentation seed, other pixels, another setting: other episodes.
    assert run(images, 1).fingerprint != first.fingerprint
    changed = images.images.copy()
    changed[-1, 0, 0, 0] ^= 1
    assert run(dataclasses.replace(images, images=changed), 0).fingerprint != first.fingerprint
    assert episode_fingerprint(images, EpisodeSetting(5, 1, 15, 3, 1), 0) != first.fingerprint


def _accuracies(seed: int, n: int = 12) -> list[float]:
    return (np.random.RandomState(seed).randint(20, 75, n) / 75).tolist()


def _results(folder, args: dict, accuracies: dict[int, list[float]], *, dataset="CIFAR-FS", fingerprint="f0",
             top: dict | None = None, name="results.json", **protocol) -> None:
    """A results file as training writes it: per shots, test-split feature/LR accuracies."""
    results = [{"split": "test", "n_ways": 5, "n_shots": shots, "n_queries": 15, "n_episodes": len(acc), "n_aug": 5,
                "embedding": "feature", "classifier": "LR", "precision": "fp32", "image_size": 32,
                "fingerprint": fingerprint, "accuracies": acc, **protocol} for shots, acc in accuracies.items()]
    results.append({**results[0], "split": "val", "accuracies": [0.0] * len(accuracies[1])})  # never tabulated
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps({"checkpoint_choice": "last epoch", "dataset": dataset, "args": args,
                                           **(top or {}), "results": results}))


def _gen0(seed):
    return {"epochs": 2, "seed": seed, "dataset": "CIFAR-FS"}


def _gen1(seed):
    return {"epochs": 2, "seed": seed, "dataset": "CIFAR-FS", "path_t": "t.pth"}


def _ci(a):
    a = 100 * np.asarray(a)
    return stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / np.sqrt(len(a))


def test_table_cells_seed_spread_paper_and_paired_difference_by_hand(tmp_path):
    import csv

    from eval import table

    acc = {(m, s, k): _accuracies(100 * m + 10 * s + k) for m in (0, 1) for s in (0, 1, 2) for k in (1, 5)}
    for s in (0, 1, 2):
        # Seed 2 of Gen-1 saw other episodes than Gen-0's seed 2: it is left out of the pairing.
        _results(tmp_path / f"gen0_{s}", _gen0(s), {k: acc[(0, s, k)] for k in (1, 5)}, fingerprint=f"f{s}")
        _results(tmp_path / f"gen1_{s}", _gen1(s), {k: acc[(1, s, k)] for k in (1, 5)},
                 fingerprint=f"f{s}" if s < 2 else "other")
    prefix = tmp_path / "out" / "t"
    result = table.main([str(tmp_path), "--baseline", "skd_gen0", "--out", str(prefix), "--wandb", "disabled"])

    assert result.methods == ["skd_gen0", "skd_gen1"] and result.columns == [("CIFAR-FS", 1), ("CIFAR-FS", 5)]
    cell = result.cells[("skd_gen1", "CIFAR-FS", 1)]
    seed_means = [100 * np.mean(acc[(1, s, 1)]) for s in (0, 1, 2)]
    pooled = acc[(1, 0, 1)] + acc[(1, 1, 1)] + acc[(1, 2, 1)]
    assert cell.mean == pytest.approx(np.mean(seed_means)) and cell.seeds == 3 and cell.episodes == 36
    assert cell.ci95 == pytest.approx(_ci(pooled))
    assert cell.seed_std == pytest.approx(np.std(seed_means, ddof=1))
    differences = np.concatenate([np.subtract(acc[(1, s, 5)], acc[(0, s, 5)]) for s in (0, 1)])
    paired = result.paired[("skd_gen1", "CIFAR-FS", 5)]
    assert paired.seeds == 2 and paired.mean == pytest.approx(100 * differences.mean())
    assert paired.ci95 == pytest.approx(_ci(differences))
    assert ("skd_gen0", "CIFAR-FS", 5) not in result.paired  # the baseline is not compared with itself

    md = (tmp_path / "out" / "t.md").read_text()
    assert f"| SKD Gen-1 | {cell.mean:.2f} ± {cell.ci95:.2f} (sd {cell.seed_std:.2f}, 3 seeds) |" in md
    assert ("## Paper (the SKD paper's table: 5-way accuracy (%), ResNet-12)" in md
            and "| SKD Gen-1 | 76.90 | 88.90 |" in md)
    assert f"| SKD Gen-1 | {cell.mean - 76.9:+.2f} |" in md
    assert "| SKD Gen-0 | baseline | baseline |" in md
    assert f" | {paired.mean:+.2f} ± {paired.ci95:.2f} (2 seeds) |\n" in md
    rows = list(csv.DictReader((tmp_path / "out" / "t.csv").open()))
    assert [(r["method"], r["shots"]) for r in rows] == [("skd_gen0", "1"), ("skd_gen0", "5"), ("skd_gen1", "1"),
                                                          ("skd_gen1", "5")]
    assert float(rows[2]["mean"]) == pytest.approx(cell.mean) and float(rows[2]["paper"]) == 76.9
    assert float(rows[3]["paired_diff"]) == pytest.approx(paired.mean) and rows[3]["baseline"] == "skd_gen0"
    tex = (tmp_path / "out" / "t.tex").read_text()
    assert tex.startswith(r"\begin{tabular}{l|cc}") and r"\multicolumn{2}{c}{CIFAR-FS}" in tex
    assert rf"SKD Gen-1 & ${cell.mean:.2f} \pm {cell.ci95:.2f}$ &" in tex


@pytest.mark.parametrize("setting, other", [("n_episodes", {}), ("n_aug", {"n_aug": 1}),
                                            ("image_size", {"image_size": 84}),
                                            ("checkpoint_choice", {"top": {"checkpoint_choice": "best val"}})])
def test_table_refuses_to_mix_protocols(tmp_path, setting, other):
    from eval import table

    _results(tmp_path / "a", _gen0(0), {1: _accuracies(0)})
    _results(tmp_path / "b", _gen0(1), {1: _accuracies(1, 8 if setting == "n_episodes" else 12)}, **other)
    with pytest.raises(util.UsageError, match=f"CIFAR-FS 1-shot: {setting} differs .* in .*a/results.json, "
                                              f".* in .*b/results.json"):
        table.main([str(tmp_path), "--out", str(tmp_path / "t"), "--wandb", "disabled"])


def test_table_never_averages_two_architectures(tmp_path):
    from eval import table

    _results(tmp_path / "a", _gen0(0), {1: _accuracies(0)})
    _results(tmp_path / "b", {**_gen0(1), "model": "resnet12_ssl_narrow"}, {1: _accuracies(1)})
    result = table.main([str(tmp_path), "--out", str(tmp_path / "t"), "--wandb", "disabled"])
    assert result.methods == ["skd_gen0@resnet12_ssl", "skd_gen0@resnet12_ssl_narrow"]  # a row each, one seed each
    assert [result.cells[(m, "CIFAR-FS", 1)].seeds for m in result.methods] == [1, 1]


def test_table_command_is_one_line_on_mixed_protocols(tmp_path):
    _results(tmp_path / "a", _gen0(0), {1: _accuracies(0)})
    _results(tmp_path / "b", _gen1(0), {1: _accuracies(1)}, n_queries=10)
    done = run_script("-m", "eval.table", str(tmp_path), "--out", str(tmp_path / "t"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: CIFAR-FS 1-shot: n_queries differs (15 in {tmp_path / 'a' / 'results.json'}, 10 in "
        f"{tmp_path / 'b' / 'results.json'}); results of different protocols are never averaged"]


def test_table_methods_of_eval_results_and_duplicates(tmp_path):
    from eval import table

    # eval_fewshot.py outputs: the method and seed come from args.json beside the checkpoint.
    for name, train_args in (("simple", {**_gen0(3), "plain": True}), ("distill", {**_gen1(3), "objective": "rfs"}),
                             ("sskd", {**_gen1(3), "objective": "sskd"}), ("dvp", {**_gen1(3), "objective": "dvp"}),
                             ("prior", {**_gen0(3), "objective": "dvp"})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "args.json").write_text(json.dumps(train_args))
        _results(tmp_path / name, {"model_path": str(tmp_path / name / "last.pth"), "seed": 0},
                 {1: _accuracies(len(name))}, top={"checkpoint": str(tmp_path / name / "last.pth")},
                 name="results_test_1shot.json")
    _results(tmp_path / "named", {"seed": 0}, {1: _accuracies(7)}, top={"method": "skd_gen1"},
             name="results_test_1shot.json")
    for copy in ("copy", "copy_again"):  # the same evaluation twice: counted once
        _results(tmp_path / copy, _gen1(0), {1: _accuracies(7)})
    result = table.main([str(tmp_path), "--out", str(tmp_path / "t"), "--wandb", "disabled"])
    # SSKD and DVP's two phases are rows after the paper's, as the sibling methods are.
    assert result.methods == ["rfs_simple", "rfs_distill", "skd_gen1", "sskd", "dvp_prior", "dvp"]
    assert result.baseline == "rfs_simple"
    assert result.cells[("rfs_simple", "CIFAR-FS", 1)].seeds == 1
    # Seed 0 (the copies) and an unknown seed (`named`: no training arguments).
    assert result.cells[("skd_gen1", "CIFAR-FS", 1)].seeds == 2
    _results(tmp_path / "copy2", _gen1(0), {1: _accuracies(8)})
    with pytest.raises(util.UsageError, match="skd_gen1 seed 0, CIFAR-FS 1-shot: two different results"):
        table.main([str(tmp_path), "--out", str(tmp_path / "t"), "--wandb", "disabled"])
    _results(tmp_path / "anonymous", {"seed": 0}, {1: _accuracies(9)}, name="results_x.json")
    with pytest.raises(util.UsageError, match="anonymous/results_x.json: cannot tell the method"):
        table.main([str(tmp_path / "anonymous"), "--out", str(tmp_path / "t"), "--wandb", "disabled"])


def test_table_logs_a_wandb_table_and_bar_chart(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")  # optional: the scripts run without it

    from eval import table

    logged, inits = [], []

    class Run:
        id = "table1"
        log = staticmethod(logged.append)
        finish = staticmethod(lambda: None)

    monkeypatch.setattr(wandb, "init", lambda **kwargs: inits.append(kwargs) or Run())
    _results(tmp_path / "runs" / "a", {**_gen0(0), "wandb_group": "study"}, {1: _accuracies(0)})
    table.main([str(tmp_path / "runs"), "--out", str(tmp_path / "t"), "--wandb", "offline"])
    (record,) = logged
    assert record["results_table"].columns[:3] == ["method", "dataset", "shots"]
    assert record["ours_vs_paper"] is not None
    assert inits[0]["group"] == "study" and inits[0]["id"] is None  # beside the runs it tabulates
    first = (tmp_path / "t.md").read_text()
    (tmp_path / "t.md").unlink()
    monkeypatch.setattr(wandb, "Table", lambda **kwargs: 1 / 0)  # W&B trouble never fails the table
    table.main([str(tmp_path / "runs"), "--out", str(tmp_path / "t"), "--wandb", "offline"])
    assert (tmp_path / "t.md").read_text() == first and len(logged) == 1  # written again, the same; nothing logged
    assert inits[1]["id"] == "table1" and inits[1]["resume"] == "allow"  # the same W&B run, not one per call


def test_table_reads_only_results_files_and_runs_twice_the_same_with_wandb_offline(tmp_path):
    _results(tmp_path / "gen0", _gen0(0), {1: _accuracies(0)})
    _results(tmp_path / "gen1", _gen1(0), {1: _accuracies(1)}, name="results_test_1shot.json")
    (tmp_path / "gen0" / "args.json").write_text(json.dumps(_gen0(0)))  # JSON that is not a results file
    (tmp_path / "gen0" / "results_notes.json").write_text(json.dumps({"results": ["not an evaluation"]}))
    runs = [run_script("-m", "eval.table", str(tmp_path), "--wandb", "offline", env={"WANDB_MODE": "offline"})
            for _ in range(2)]
    # The first run's W&B files (a results_table_*.table.json among them) are under tmp_path/wandb.
    assert list((tmp_path / "wandb").rglob("results_table_*.table.json"))
    assert [r.returncode for r in runs] == [0, 0], runs[1].stderr
    assert runs[0].stdout == runs[1].stdout and "| SKD Gen-1 |" in runs[0].stdout
    assert "error" not in runs[1].stderr


def test_table_names_a_given_file_that_is_not_a_results_file(tmp_path):
    from eval import table

    (tmp_path / "args.json").write_text(json.dumps(_gen0(0)))
    with pytest.raises(util.UsageError, match="args.json: not a results file"):
        table.main([str(tmp_path / "args.json"), "--out", str(tmp_path / "t"), "--wandb", "disabled"])
    with pytest.raises(util.UsageError, match="no results files .* under"):
        table.main([str(tmp_path), "--out", str(tmp_path / "t"), "--wandb", "disabled"])


def test_eval_results_say_which_weights_of_the_run_they_are():
    from engine.trained import checkpoint_choice

    assert checkpoint_choice({"epoch": 7, "val_acc": 61.0, "args": {"epochs": 10}}) == "best val (epoch 7)"
    assert checkpoint_choice({"epoch": 4, "args": {"epochs": 10}}) == "epoch 4 of 10"
    assert checkpoint_choice({"epoch": 10, "args": {"epochs": 10}}) == "last epoch"
    assert checkpoint_choice({"model": {}}) == "last epoch"  # official files: their final weights


# ----------------------------------------------------------------------------- messages that name the fix, CPU time

def test_eval_of_a_run_folder_takes_its_checkpoint_and_says_how_long_on_a_cpu(narrow_model, cifar_root, tmp_path):
    folder = _our_checkpoint(narrow_model, tmp_path / "save" / "run", cifar_root, architecture=TEST_MODEL).parent
    shutil.copy(folder / "checkpoint.pth", folder / "best.pth")
    output = tmp_path / "out" / "results.json"
    done = run_script("eval_fewshot.py", "--model_path", str(folder), "--n_test_runs", "2", "--split", "val",
                      "--device", "cpu", "--output", str(output))
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert (f"checkpoint: {folder / 'checkpoint.pth'} (the run folder's last epoch; best.pth: give "
            f"{folder / 'best.pth'} as --model_path)") in lines
    [projected] = [i for i, line in enumerate(lines)
                   if re.fullmatch(r"evaluation: 1 x 2 episodes \(val, 1-shot\), about \d+ s on this CPU", line)]
    assert lines[projected + 1].startswith("val 5-way 1-shot")  # said before the evaluation starts
    assert json.loads(output.read_text())["checkpoint"] == str(folder / "checkpoint.pth")


def test_a_checkpoint_of_another_registered_architecture_is_named_with_the_flag(narrow_model, small_model, tmp_path):
    path = tmp_path / "official.pth"
    torch.save({"model": narrow_model.state_dict()}, path)  # records no architecture: its shapes tell it
    with pytest.raises(util.CheckpointError) as error:
        engine.checkpoint.load_model_weights(create_model("resnet12_ssl", 6, image_size=32), path)
    assert str(error.value) == (f"{path}: holds a {TEST_MODEL} (told by its weights' shapes), not the resnet12_ssl "
                                f"built for it: pass --model {TEST_MODEL} (a Gen-1 teacher: --model_t)")
    torch.save({"model": small_model.state_dict(), "args": {"model": "resnet12_ssl"}}, path)
    with pytest.raises(util.CheckpointError) as error:
        engine.checkpoint.load_model_weights(create_model(TEST_MODEL, 6, image_size=32), path)
    assert str(error.value).startswith(f"{path}: holds a resnet12_ssl (recorded in its args), not the {TEST_MODEL} "
                                       f"built for it: leave --model out to use the checkpoint's, or pass --model "
                                       f"resnet12_ssl")


def test_final_report_on_a_cpu_first_says_how_long_and_how_to_shorten_it(narrow_model, cifar_root, capsys):
    from eval.fewshot import EvalConfig
    from eval.report import final_report

    splits = {split: load_split("CIFAR-FS", cifar_root, split) for split in ("val", "test")}
    episodes = EvalConfig(n_ways=5, n_queries=15, n_episodes=2, n_aug=1, batch_size=64, seed=0)
    final_report(narrow_model, splits, CIFAR_NORMALIZATION, torch.device("cpu"), episodes)
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"final report: 4 evaluations \(val and test x 1 and 5 shots\) x 2 episodes, about \d+ s on "
                        r"this CPU; skip it with --no_final_eval and run eval_fewshot\.py on the checkpoint later",
                        lines[0]), lines[0]
    assert lines[1].startswith("val 5-way 1-shot") and len(lines) == 9


def test_projection_counts_each_image_embedded_and_each_episode_classified(cifar_root):
    from eval.report import EvaluationCost, projection

    images = load_split("CIFAR-FS", cifar_root, "val")  # 5 classes of 20 images: 600 episodes query all 100
    planned = [("val", images, EpisodeSetting(5, shots, 15, 600, 5)) for shots in (1, 5)]
    cost = EvaluationCost(0.001, {EpisodeSetting(5, 1, 15, 0, 5): 0.01, EpisodeSetting(5, 5, 15, 0, 5): 0.02})
    # 600 episodes: (100 + 600 x 25 + 100 + 600 x 125) images x 1 ms + 600 x (10 + 20) ms = 108.2 s;
    # 100 episodes: (100 + 2500 + 100 + 12500) x 1 ms + 100 x 30 ms = 18.2 s.
    assert projection(cost, planned) == ("about 1.8 min on this CPU; shorten it with --n_test_runs 100 (about 18 s, "
                                         "wider intervals)")


def test_table_opens_no_wandb_run_unless_asked(tmp_path, monkeypatch, capsys):
    import runtime.logger
    from eval import table

    def refuse(*args, **kwargs):
        raise AssertionError("a W&B run was opened")

    monkeypatch.setattr(runtime.logger, "RunLogger", refuse)
    monkeypatch.setitem(sys.modules, "wandb", None)  # any `import wandb` now fails
    _results(tmp_path / "runs" / "a", _gen0(0), {1: _accuracies(0)})
    table.main([str(tmp_path / "runs")])
    assert (tmp_path / "runs" / "results_table.md").is_file()
    assert not [p for p in tmp_path.rglob("*") if "wandb" in p.name] and capsys.readouterr().err == ""


def test_the_table_compares_a_network_with_what_others_report_for_it_not_with_the_papers_resnet12(tmp_path):
    from eval import table

    for s in (0, 1):
        _results(tmp_path / f"gen0_{s}", {**_gen0(s), "dataset": "miniImageNet", "model": "convnet4"},
                 {k: _accuracies(10 * s + k) for k in (1, 5)}, dataset="miniImageNet")
    result = table.main([str(tmp_path), "--out", str(tmp_path / "out" / "t"), "--wandb", "disabled"])
    assert result.protocols[("miniImageNet", 1)]["model"] == "convnet4"
    md = (tmp_path / "out" / "t.md").read_text()
    assert "| SKD Gen-0 | — | — |" in md  # the paper's 65.93 / 83.15 are ResNet-12's: not this network's
    assert ("## Reported by others for the same network (LibFewShot's SKD, github.com/RL-VIG/LibFewShot "
            "config/reproduce/SKD/README.md)" in md and "| SKD Gen-0 | 48.14 | 66.36 |" in md)
    assert table.paper_value("skd_gen0", "miniImageNet", 1) == 65.93  # the paper's network


def test_results_of_two_networks_make_a_row_each_paired_on_the_same_episodes(tmp_path):
    from eval import table

    acc = {(net, s, k): _accuracies(hash((net, s, k)) % 1000) for net in ("convnet4", "resnet12_ssl")
           for s in (0, 1) for k in (1, 5)}
    for (net, s, k) in acc:
        if k == 1:
            _results(tmp_path / f"{net}_{s}", {**_gen0(s), "model": net},
                     {shots: acc[(net, s, shots)] for shots in (1, 5)}, fingerprint=f"f{s}")
    result = table.main([str(tmp_path), "--baseline", "skd_gen0@resnet12_ssl", "--out", str(tmp_path / "out" / "t"),
                         "--wandb", "disabled"])
    assert result.methods == ["skd_gen0@convnet4", "skd_gen0@resnet12_ssl"]
    differences = np.concatenate([np.subtract(acc[("convnet4", s, 1)], acc[("resnet12_ssl", s, 1)]) for s in (0, 1)])
    assert result.paired[("skd_gen0@convnet4", "CIFAR-FS", 1)].mean == pytest.approx(100 * differences.mean())
    md = (tmp_path / "out" / "t.md").read_text()
    assert "| SKD Gen-0 (convnet4) | — | — |" in md and "| SKD Gen-0 (resnet12_ssl) | 74.50 | 88.00 |" in md
