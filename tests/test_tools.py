"""tools/: classify, embed, export and plot a user's own images. The fast tests use a few generated
images and an untrained narrow ResNet-12; the slow ones train on the Omniglot sample and run every
command end to end on its real images (characters the network never saw)."""
from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import util
from conftest import TEST_MODEL, run_script
from models import create_model

CHANCE = 20.0  # 5-way


# ----------------------------------------------------------------------------- fast: generated images

def _write_images(folder: Path, colour: tuple[int, int, int], n: int, seed: int, mode: str = "RGB") -> None:
    rng = np.random.RandomState(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pixels = np.clip(np.array(colour) + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).convert(mode).save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """An untrained narrow network saved as our checkpoint (folder dataset, 32 px), a support folder of 3
    classes with unequal shots, and labelled queries, one of them greyscale and one RGBA."""
    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    model = create_model(TEST_MODEL, 6, "folder", image_size=32)
    checkpoint = root / "run" / "checkpoint.pth"
    checkpoint.parent.mkdir()
    torch.save({"epoch": 1, "model": model.state_dict(), "image_size": 32,
                "normalization": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
                "args": {"dataset": "folder", "data_root": str(root / "mine"), "model": TEST_MODEL}}, checkpoint)
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (20, 40, 220)}
    for k, (name, colour) in enumerate(colours.items()):
        _write_images(root / "support" / name, colour, 2 + k, seed=k)
        _write_images(root / "query" / name, colour, 4, seed=10 + k)
    Image.open(root / "query" / "red" / "0.png").convert("L").save(root / "query" / "red" / "grey.png")
    Image.open(root / "query" / "blue" / "0.png").convert("RGBA").save(root / "query" / "blue" / "alpha.png")
    return {"root": root, "checkpoint": checkpoint, "support": root / "support", "query": root / "query"}


def test_classify_writes_csv_and_json_says_conversions_once(tiny, tmp_path, capsys):
    from tools import classify

    report = classify.main(["--model_path", str(tiny["checkpoint"]), "--support", str(tiny["support"]),
                            "--query", str(tiny["query"]), "--device", "cpu", "--out", str(tmp_path / "p")])
    out = capsys.readouterr().out
    assert "device: cpu" in out
    assert [line for line in out.splitlines() if line.startswith("converted to RGB")] == [
        "converted to RGB: 1 greyscale (L), 1 RGBA"]
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(rows) == 14 and json.loads((tmp_path / "p.json").read_text()) == report
    assert (report["classes"] == ["blue", "green", "red"]
            and report["support_images"] == {"blue": 4, "green": 3, "red": 2})
    for row in report["predictions"]:
        assert sum(row["probabilities"].values()) == pytest.approx(1, abs=1e-6)
        assert row["probability"] == max(row["probabilities"].values())
    assert report["accuracy"] is not None  # queries in folders named like the classes are scored


def test_classify_one_line_errors(tiny, tmp_path):
    from tools import classify

    def run(support: Path, query: Path) -> str:
        with pytest.raises(util.UsageError) as e:
            classify.main(["--model_path", str(tiny["checkpoint"]), "--support", str(support), "--query", str(query),
                           "--device", "cpu", "--out", str(tmp_path / "p")])
        assert "\n" not in str(e.value)
        return str(e.value)

    support = tmp_path / "support"
    shutil.copytree(tiny["support"], support)
    (support / "empty").mkdir()
    assert "class 'empty'" in run(support, tiny["query"])
    (support / "empty").rmdir()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    assert run(support, broken).startswith(f"{broken}: not a readable image")
    for name in ("green", "red"):
        shutil.rmtree(support / name)
    assert "1 class folder(s); expected at least 2" in run(support, tiny["query"])
    assert not (tmp_path / "p.csv").exists()


def test_embed_resumes_after_a_stop_and_eval_reads_its_file(tiny, tmp_path, monkeypatch, capsys):
    import eval_fewshot
    from tools import embed

    argv = ["--model_path", str(tiny["checkpoint"]), "--images", str(tiny["query"]), "--device", "cpu",
            "--shard_size", "5", "--n_aug_support_samples", "2"]
    whole = embed.main([*argv, "--output", str(tmp_path / "whole.npz")])
    real, calls = embed.embed_shard, []

    def stop_after_one(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(embed, "embed_shard", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        embed.main([*argv, "--output", str(tmp_path / "resumed.npz")])
    assert sorted(p.name for p in (tmp_path / "resumed.npz.partial").iterdir()) == ["manifest.json", "shard_00000.npz"]
    monkeypatch.setattr(embed, "embed_shard", real)
    resumed = embed.main([*argv, "--output", str(tmp_path / "resumed.npz")])
    assert "continuing: 5 of 14 images" in capsys.readouterr().out
    assert not (tmp_path / "resumed.npz.partial").exists()
    with np.load(whole) as a, np.load(resumed) as b:
        assert a["features"].shape == (14, 160) and a["augmented"].shape == (14, 2, 160)
        assert list(a["class_names"]) == ["blue", "green", "red"] and a["paths"][0] == "blue/0.png"
        for key in a.files:
            assert np.array_equal(a[key], b[key]), key
    with pytest.raises(util.UsageError, match="exists"):
        embed.main([*argv, "--output", str(whole)])

    output = tmp_path / "results.json"
    eval_fewshot.main(["--features", str(whole), "--n_ways", "3", "--n_shots", "1", "--n_queries", "1",
                       "--n_test_runs", "4", "--n_aug_support_samples", "2", "--device", "cpu",
                       "--output", str(output)])
    data = json.loads(output.read_text())
    assert data["source_domain"] == "mine" and data["target_domain"] == "query"
    assert data["results"][0]["n_aug"] == 2 and len(data["results"][0]["accuracies"]) == 4


def test_export_names_the_pip_command_without_onnx(tiny, tmp_path, monkeypatch):
    from tools import export

    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(util.UsageError, match=r"pip install onnx onnxruntime"):
        export.main(["--model_path", str(tiny["checkpoint"]), "--images", str(tiny["query"]),
                     "--out", str(tmp_path / "backbone"), "--formats", "onnx"])
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_plot_names_the_pip_command_without_matplotlib(tmp_path, monkeypatch):
    from tools import plot

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    (tmp_path / "log.jsonl").write_text(json.dumps({"epoch": 1, "lr": 0.1, "train_loss": 1.0}) + "\n")
    with pytest.raises(util.UsageError, match=r"^tools.plot needs matplotlib, an optional dependency: pip install "
                                               r"matplotlib$"):
        plot.main(["curves", str(tmp_path), "--out", str(tmp_path / "c")])


# ----------------------------------------------------------------------------- slow: the Omniglot sample

# Five characters of the test alphabets, which training never sees: five drawings each as the support
# set, the other fifteen as queries.
CHARACTERS = ("Balinese_character01", "Balinese_character09", "Balinese_character17", "Greek_character03",
              "Greek_character15")
SHOTS = 5


@pytest.fixture(scope="module")
def omniglot_run(omniglot_root, omniglot_gen0, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("own_images")
    checkpoint = omniglot_gen0  # the slow tests' shared Gen-0 (tests/conftest.py)
    for character in CHARACTERS:
        drawings = sorted((omniglot_root / "test" / character).iterdir())
        for folder, files in (("support", drawings[:SHOTS]), ("queries", drawings[SHOTS:])):
            (root / folder / character).mkdir(parents=True)
            for f in files:
                shutil.copy(f, root / folder / character / f.name)
    return {"root": root, "checkpoint": checkpoint}


@pytest.mark.slow
def test_classify_own_images_well_above_chance(omniglot_run):
    root = omniglot_run["root"]
    done = run_script("-m", "tools.classify", "--model_path", str(omniglot_run["checkpoint"]),
                      "--support", str(root / "support"), "--query", str(root / "queries"), "--out", str(root / "pred"))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((root / "pred.json").read_text())
    print(done.stdout.splitlines()[-2])
    assert len(report["predictions"]) == 5 * 15 and report["accuracy"] > 2.5 * CHANCE
    assert "converted to RGB: 100 black-and-white (1)" in done.stdout  # Omniglot's PNGs are 1-bit, said once
    # A list file and single files give the same predictions for the same images.
    queries = sorted((root / "queries" / CHARACTERS[0]).iterdir())[:3]
    (root / "list.txt").write_text("".join(f"queries/{CHARACTERS[0]}/{q.name}\n" for q in queries))
    for query in ([str(root / "list.txt")], [str(q) for q in queries]):
        again = run_script("-m", "tools.classify", "--model_path", str(omniglot_run["checkpoint"]),
                           "--support", str(root / "support"), "--query", *query, "--out", str(root / "again"))
        assert again.returncode == 0, again.stderr[-3000:]
        first = {Path(r["path"]).name: r["prediction"] for r in report["predictions"]}
        assert {Path(r["path"]).name: r["prediction"]
                for r in json.loads((root / "again.json").read_text())["predictions"]} == {
            q.name: first[q.name] for q in queries}


@pytest.mark.slow
def test_embed_then_evaluate_from_features_matches_evaluating_images(omniglot_run, omniglot_root):
    root = omniglot_run["root"]
    features = root / "test_features.npz"
    done = run_script("-m", "tools.embed", "--model_path", str(omniglot_run["checkpoint"]),
                      "--images", str(omniglot_root / "test"), "--output", str(features),
                      "--n_aug_support_samples", "5", "--shard_size", "256")
    assert done.returncode == 0, done.stderr[-3000:]
    accuracy = {}
    for name, source in (("features", ["--features", str(features)]),
                         ("images", ["--model_path", str(omniglot_run["checkpoint"]), "--device", "cpu"])):
        output = root / f"from_{name}.json"
        run = run_script("eval_fewshot.py", *source, "--n_shots", "5", "--n_test_runs", "200", "--wandb", "disabled",
                         "--output", str(output))
        assert run.returncode == 0, run.stderr[-3000:]
        accuracy[name] = json.loads(output.read_text())["results"][0]["mean"]
    print(accuracy)
    # The same episodes and classifier; only the supports' random crops differ (drawn per image, not per episode).
    assert accuracy["features"] > 2.5 * CHANCE and abs(accuracy["features"] - accuracy["images"]) < 3


@pytest.mark.slow
def test_export_matches_pytorch_on_real_images(omniglot_run):
    root = omniglot_run["root"]
    formats = "torchscript,onnx"
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        formats = "torchscript"
    done = run_script("-m", "tools.export", "--model_path", str(omniglot_run["checkpoint"]),
                      "--images", str(root / "queries"), "--out", str(root / "export" / "backbone"),
                      "--formats", formats)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((root / "export" / "backbone.json").read_text())
    assert set(info["exports"]) == set(formats.split(","))
    for check in info["exports"].values():
        assert check["max_abs_difference"] <= 1e-4 and check["checked_images"] == 32
    assert info["input"]["image_size"] == 28 and info["input"]["channel_order"] == "RGB"
    # A consumer without this repository: torch.jit.load and the JSON's recipe give the features.
    module = torch.jit.load(str(root / "export" / "backbone.pt"))
    image = next((root / "queries" / CHARACTERS[0]).iterdir())
    pixels = np.asarray(Image.open(image).convert("RGB").resize((28, 28), Image.BILINEAR), dtype=np.float32) / 255
    x = (torch.from_numpy(pixels).permute(2, 0, 1)[None] - torch.tensor(info["input"]["mean"]).view(1, 3, 1, 1)) \
        / torch.tensor(info["input"]["std"]).view(1, 3, 1, 1)
    assert module(x).shape == (1, info["output"]["shape"][1])


@pytest.mark.slow
def test_cross_domain_preset_records_domains(omniglot_run, omniglot_root):
    root = omniglot_run["root"]
    greek = root / "Greek"  # another "domain": a folder of class folders, no splits
    for character in (omniglot_root / "test").iterdir():
        if character.name.startswith("Greek"):
            shutil.copytree(character, greek / character.name)
    output = root / "greek.json"
    done = run_script("eval_fewshot.py", "--model_path", str(omniglot_run["checkpoint"]), "--dataset", "folder",
                      "--data_root", str(greek), "--preset", "bscd", "--n_shots", "5", "--n_test_runs", "50",
                      "--device", "cpu", "--wandb", "disabled", "--output", str(output))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "its class folders are the test classes" in done.stdout
    data = json.loads(output.read_text())
    assert data["source_domain"] == omniglot_root.name and data["target_domain"] == "Greek"
    [result] = data["results"]
    assert (result["n_ways"], result["n_shots"], result["n_queries"], result["n_episodes"]) == (5, 5, 15, 50)
    assert data["args"]["resize"] == "crop" and result["mean"] > 2.5 * CHANCE


@pytest.mark.slow
def test_plot_writes_curves_and_table_of_a_real_run(omniglot_run, omniglot_root):
    pytest.importorskip("matplotlib")
    root = omniglot_run["root"]
    run_dir = omniglot_run["checkpoint"].parent
    evaluated = run_script("eval_fewshot.py", "--model_path", str(omniglot_run["checkpoint"]), "--n_shots", "1",
                           "--n_test_runs", "50", "--device", "cpu", "--wandb", "disabled",
                           "--output", str(root / "results" / "r1.json"))
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    table = run_script("-m", "eval.table", str(root / "results"), "--wandb", "disabled", "--out", str(root / "table"))
    assert table.returncode == 0, table.stderr[-3000:]
    for chart, source in (("curves", run_dir), ("table", root / "table.csv")):
        done = run_script("-m", "tools.plot", chart, str(source), "--out", str(root / "plots" / chart))
        assert done.returncode == 0, done.stderr[-3000:]
        for suffix in (".png", ".svg"):
            assert (root / "plots" / f"{chart}{suffix}").stat().st_size > 1000
