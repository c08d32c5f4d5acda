"""tools/: classify, embed, export and plot a user's own images. The fast tests use a few generated
images and an untrained narrow ResNet-12; the slow ones train on the Omniglot sample and run every
command end to end on its real images (characters the network never saw)."""
from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

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
    assert report["accuracy"] is not None  # queries in folders named like the classes are scored


def test_classify_reports_a_margin_named_and_explained_not_a_softmax(tiny, tmp_path, capsys):
    """The softmax of a C = 1 regression on unit-length features sat near 1/K for every query and was called a
    probability; the column is now the margin between the two largest decision values, and says so."""
    from tools import classify

    report = classify.main(["--model_path", str(tiny["checkpoint"]), "--support", str(tiny["support"]),
                            "--query", str(tiny["query"]), "--device", "cpu", "--out", str(tmp_path / "p")])
    with open(tmp_path / "p.csv") as f:
        header = next(csv.reader(f))
    assert header == ["path", "prediction", "margin", "runner_up", "true_class", "duplicate_of",
                      "score_blue", "score_green", "score_red"]
    for row in report["predictions"]:
        ranked = sorted(row["scores"], key=row["scores"].get, reverse=True)
        assert [row["prediction"], row["runner_up"]] == ranked[:2]  # the prediction is the largest decision value
        assert row["margin"] == row["scores"][ranked[0]] - row["scores"][ranked[1]] >= 0
    assert "margin" in capsys.readouterr().out.splitlines()[-2 - len(report["predictions"])]
    explained = " ".join(classify.get_args_parser().format_help().split())
    assert "runner-up class; 0 is a tie" in explained and "not a probability" in explained
    docs = (Path(__file__).resolve().parents[1] / "docs" / "own-images.md").read_text()
    section = docs.split("## Classify your images")[1].split("\n## ")[0]
    assert "`margin`" in section and "path,prediction,margin,runner_up,true_class,duplicate_of," in section


def test_classify_flags_support_copies_and_leaves_them_out_of_the_accuracy(tiny, tmp_path, capsys):
    from tools import classify

    queries = tmp_path / "queries"
    shutil.copytree(tiny["query"], queries)
    support = tiny["support"]
    shutil.copy(support / "red" / "0.png", queries / "red" / "copy.png")  # the same bytes
    # The same pixels in other bytes: re-encoded without compression.
    Image.open(support / "green" / "1.png").save(queries / "green" / "reencoded.png", compress_level=0)
    assert (queries / "green" / "reencoded.png").read_bytes() != (support / "green" / "1.png").read_bytes()
    shutil.copy(support / "blue" / "2.png", tmp_path / "loose.png")  # a copy outside any class folder

    def classify_queries(*query: Path) -> tuple[dict, str]:
        report = classify.main(["--model_path", str(tiny["checkpoint"]), "--support", str(support), "--query",
                                *map(str, query), "--device", "cpu", "--out", str(tmp_path / "p")])
        return report, capsys.readouterr().out

    report, out = classify_queries(queries, tmp_path / "loose.png")
    copies = {Path(r["path"]).name: r["duplicate_of"] for r in report["predictions"] if r["duplicate_of"]}
    assert copies == {"copy.png": str(support / "red" / "0.png"), "reencoded.png": str(support / "green" / "1.png"),
                      "loose.png": str(support / "blue" / "2.png")}
    assert ("left out of the accuracy: 3 queries that are support images (the same pixels once read; duplicate_of "
            "names which)") in out.splitlines()
    scored = [r for r in report["predictions"] if r["true_class"] and not r["duplicate_of"]]
    assert len(scored) == 14 and f"on the 14 queries in folders named like a support class" in out
    assert report["accuracy"] == pytest.approx(100 * np.mean([r["prediction"] == r["true_class"] for r in scored]))
    assert report["support_copies_left_out"] == 3
    assert next(line for line in out.splitlines() if "copy.png" in line).endswith(f"(a copy of {support}/red/0.png)")
    rows = {Path(r["path"]).name: r for r in csv.DictReader((tmp_path / "p.csv").open())}
    assert rows["copy.png"]["duplicate_of"] == str(support / "red" / "0.png") and rows["0.png"]["duplicate_of"] == ""

    # The support folder given as the queries: every query is a leak, and no accuracy is claimed.
    report, out = classify_queries(support)
    assert all(r["duplicate_of"] == r["path"] for r in report["predictions"]) and report["accuracy"] is None
    assert "left out of the accuracy: 9 queries" in out
    assert not [line for line in out.splitlines() if line.startswith("accuracy:")]


def test_classify_refuses_images_below_the_class_folders(tiny, tmp_path):
    """A query folder is read with its sub-folders, one level deep (the documented layout): images further down
    are refused in one line that names their folder, never dropped without a word."""
    from tools import classify

    queries = tmp_path / "queries"
    shutil.copytree(tiny["query"], queries)
    (queries / "red" / "later" / "batch").mkdir(parents=True)
    shutil.copy(queries / "red" / "1.png", queries / "red" / "later" / "batch" / "5.png")
    with pytest.raises(util.UsageError) as e:
        classify.main(["--model_path", str(tiny["checkpoint"]), "--support", str(tiny["support"]),
                       "--query", str(queries), "--device", "cpu", "--out", str(tmp_path / "p")])
    assert str(e.value).startswith(f"--query {queries}: {queries / 'red' / 'later'} holds images two or more "
                                   f"folders deep, which are not read") and "\n" not in str(e.value)
    assert not (tmp_path / "p.csv").exists()


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


@pytest.mark.parametrize("hidden", ["onnx", "onnxruntime"])
def test_export_checks_optional_packages_before_writing_anything(tiny, tmp_path, monkeypatch, hidden):
    from tools import export

    for other in {"onnx", "onnxruntime"} - {hidden}:  # present, so that the check reaches `hidden` where it is not
        if importlib.util.find_spec(other) is None:
            monkeypatch.setitem(sys.modules, other, types.ModuleType(other))
    monkeypatch.setitem(sys.modules, hidden, None)  # import `hidden` now raises ImportError
    with pytest.raises(util.UsageError) as e:
        export.main(["--model_path", str(tiny["checkpoint"]), "--images", str(tiny["query"]),
                     "--out", str(tmp_path / "export" / "backbone"), "--formats", "torchscript,onnx"])
    assert str(e.value) == (f"--formats onnx: needs the package {hidden}, which is not installed: pip install -r "
                            f"requirements-optional.txt (or leave onnx out of --formats)")
    assert not any(tmp_path.iterdir())  # not the TorchScript file, not the folder


def _export(tiny: dict, out: Path, formats: str = "torchscript,onnx") -> dict:
    from tools import export

    return export.main(["--model_path", str(tiny["checkpoint"]), "--images", str(tiny["query"]), "--out", str(out),
                        "--formats", formats, "--check_images", "4"])


def test_export_failing_check_writes_nothing_and_keeps_the_old_files(tiny, tmp_path, monkeypatch):
    from tools import export

    def one_percent_off(module, example, path):  # writes a file that runs, but computes something else
        run = export.export_torchscript(module, example, path)
        return lambda x: run(x) * 1.01

    monkeypatch.setitem(export.EXPORTERS, "onnx", one_percent_off)
    monkeypatch.setitem(export.OPTIONAL_PACKAGES, "onnx", ())  # no onnx needed by the stand-in
    old = {"backbone.pt": b"the previous export", "backbone.json": b"{}"}
    for name, content in old.items():
        (tmp_path / name).write_bytes(content)
    with pytest.raises(util.UsageError, match=r"^onnx: the export differs from the PyTorch model by "):
        _export(tiny, tmp_path / "backbone")  # the TorchScript file passed its check first
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == old  # no temporaries, the old files as they were
    with pytest.raises(util.UsageError, match="nothing written"):
        _export(tiny, tmp_path / "new" / "backbone")
    assert not (tmp_path / "new").exists()


class Scaled(nn.Module):
    """A backbone whose features are `factor` times another's."""

    def __init__(self, model: nn.Module, factor: float) -> None:
        super().__init__()
        self.model, self.factor = model, factor

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.factor * self.model.forward_features(x)


def test_export_tolerance_is_relative_to_the_features_scale(tiny, tmp_path, monkeypatch, capsys):
    """Features near 2e3 that an export reproduces to 4e-7 of their size differ by about 8e-4, float32 rounding,
    which an absolute 1e-4 refused."""
    from tools import export

    load = export.load_backbone
    monkeypatch.setattr(export, "load_backbone", lambda args, device: dataclasses.replace(
        load(args, device), model=Scaled(load(args, device).model, 500)))

    def rounded(module, example, path):  # the right function, to 4e-7 relative
        run = export.export_torchscript(module, example, path)
        return lambda x: (run(x).astype(np.float64) * (1 + 4e-7)).astype(np.float32)

    monkeypatch.setitem(export.EXPORTERS, "onnx", rounded)
    monkeypatch.setitem(export.OPTIONAL_PACKAGES, "onnx", ())
    info = _export(tiny, tmp_path / "backbone")
    check = info["exports"]["onnx"]
    assert 1e3 < check["max_abs_difference"] / check["relative_difference"] < 1e4  # the features' scale
    assert check["max_abs_difference"] > 1e-4 and 3e-7 < check["relative_difference"] < 6e-7
    assert info["exports"]["torchscript"]["relative_difference"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backbone.json", "backbone.onnx", "backbone.pt"]


def test_export_writes_every_format_and_no_temporaries(tiny, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    info = _export(tiny, tmp_path / "export" / "backbone")
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["backbone.json", "backbone.onnx", "backbone.pt"]
    assert json.loads((tmp_path / "export" / "backbone.json").read_text()) == info
    for check in info["exports"].values():
        assert check["relative_difference"] <= 1e-5 and check["checked_images"] == 4


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
        assert check["relative_difference"] <= 1e-4 and check["checked_images"] == 32
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
