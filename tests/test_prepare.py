"""Rebuilding CIFAR-FS and FC100 from a (tiny, fake) CIFAR-100 archive; the data-root checker."""
from __future__ import annotations

import hashlib
import io
import json
import pickle
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_cifar_package
from dataset import DataError, load_split
from dataset import check as check_module
from dataset import prepare
from util import run_cli

TRAIN_PER_CLASS, TEST_PER_CLASS = 5, 1  # the real archive has 500 + 100


def _source_images(parts: dict, names: list[str], classes: list[str]) -> np.ndarray:
    """The expected package data, straight from the CIFAR-100 parts: per class in list order, its
    train-part images then its test-part images, each row (3072,) = (3, 32, 32) moved to (32, 32, 3)."""
    picked = []
    for name in classes:
        for part in ("train", "test"):
            rows = np.flatnonzero(np.array(parts[part]["fine_labels"]) == names.index(name))
            picked.append(parts[part]["data"][rows].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return np.concatenate(picked)


def _cifar100_names() -> list[str]:
    lists = prepare.class_lists("cifar-fs")
    return sorted(c for split in lists.values() for c in split)  # CIFAR-100's fine names are alphabetical


def _part(rng, per_class: int) -> dict:
    labels = np.tile(np.arange(100), per_class)
    rng.shuffle(labels)
    # Pixel (0, 0) of channel 0 encodes the label and channel 1 the position, so tests can trace images.
    data = rng.randint(0, 256, (len(labels), 3, 32, 32)).astype(np.uint8)
    data[:, 0, 0, 0] = labels
    data[:, 1, 0, 0] = np.arange(len(labels)) % 256
    return {"data": data.reshape(len(labels), -1), "fine_labels": labels.tolist(),
            "coarse_labels": (labels // 5).tolist(), "filenames": [f"{i}.png" for i in range(len(labels))]}


@pytest.fixture(scope="module")
def cifar100_archive(tmp_path_factory):
    """cifar-100-python.tar.gz with the real layout: cifar-100-python/{train,test,meta}."""
    rng = np.random.RandomState(0)
    parts = {"train": _part(rng, TRAIN_PER_CLASS), "test": _part(rng, TEST_PER_CLASS),
             "meta": {"fine_label_names": _cifar100_names(), "coarse_label_names": [f"c{i}" for i in range(20)]}}
    path = tmp_path_factory.mktemp("cifar100") / "cifar-100-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, content in parts.items():
            blob = pickle.dumps(content, protocol=2)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path, parts


@pytest.fixture(autouse=True)
def small_classes(monkeypatch):
    monkeypatch.setattr(prepare, "IMAGES_PER_CLASS", TRAIN_PER_CLASS + TEST_PER_CLASS)


@pytest.mark.parametrize("package, folder, counts", [("cifar-fs", "CIFAR-FS", (64, 16, 20)),
                                                      ("fc100", "FC100", (60, 20, 20))])
def test_builders_write_the_official_layout(cifar100_archive, tmp_path, capsys, package, folder, counts):
    archive, parts = cifar100_archive
    prepare.main([package, "--cifar100", str(archive), "--out", str(tmp_path)])
    names = parts["meta"]["fine_label_names"]
    lists = prepare.class_lists(package)
    per_class = TRAIN_PER_CLASS + TEST_PER_CLASS
    for split, n_classes in zip(("train", "val", "test"), counts):
        with open(tmp_path / folder / f"{split}.pickle", "rb") as f:
            raw = pickle.load(f, encoding="latin1")  # how the official loaders read them
        data, labels = raw["data"], raw["labels"]
        assert data.dtype == np.uint8 and data.shape == (n_classes * per_class, 32, 32, 3)
        # Classes in list order, labels are CIFAR-100 fine ids, each image really is of its class.
        assert labels == [names.index(c) for c in lists[split] for _ in range(per_class)]
        np.testing.assert_array_equal(data[:, 0, 0, 0], labels)
        # Every pixel of every image, in channels-last layout (a wrong transpose keeps pixel (0, 0)).
        np.testing.assert_array_equal(data, _source_images(parts, names, lists[split]))
        ours = load_split(folder, tmp_path, split)
        assert ours.num_classes == n_classes and np.all(np.bincount(ours.labels) == per_class)
        np.testing.assert_array_equal(ours.images, data)
    with open(tmp_path / folder / "trainval.pickle", "rb") as f:
        raw_trainval = pickle.load(f, encoding="latin1")
    np.testing.assert_array_equal(raw_trainval["data"], _source_images(parts, names, lists["train"] + lists["val"]))
    assert raw_trainval["labels"] == [names.index(c) for c in lists["train"] + lists["val"] for _ in range(per_class)]
    trainval = load_split(folder, tmp_path, "trainval")
    assert trainval.num_classes == counts[0] + counts[1]
    assert not list((tmp_path / folder).glob(".*tmp*"))
    assert f"{folder}/train.pickle: {counts[0] * per_class} images, {counts[0]} classes" in capsys.readouterr().out


def test_class_lists_are_the_published_splits():
    cifar_fs, fc100 = prepare.class_lists("cifar-fs"), prepare.class_lists("fc100")
    for lists, counts in ((cifar_fs, (64, 16, 20)), (fc100, (60, 20, 20))):
        assert tuple(len(lists[s]) for s in ("train", "val", "test")) == counts
        assert len({c for s in lists.values() for c in s}) == 100  # disjoint and covering CIFAR-100
    # The published lists: CIFAR-FS test classes (Bertinetto et al.) and FC100's superclass split.
    assert cifar_fs["test"] == ["baby", "bed", "bicycle", "chimpanzee", "fox", "leopard", "man", "pickup_truck",
                                "plain", "poppy", "rocket", "rose", "snail", "sweet_pepper", "table", "telephone",
                                "wardrobe", "whale", "woman", "worm"]
    fc100_json = json.loads((prepare.SPLITS_DIR / "fc100.json").read_text())
    assert {s: sorted(v["superclasses"]) for s, v in fc100_json.items()} == {
        "train": ["fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
                  "household_furniture", "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "reptiles",
                  "trees", "vehicles_1", "vehicles_2"],
        "val": ["large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates", "small_mammals"],
        "test": ["aquatic_mammals", "insects", "medium_mammals", "people"]}
    supers = {k: v for split in fc100_json.values() for k, v in split["superclasses"].items()}
    assert all(len(v) == 5 for v in supers.values()) and len(supers) == 20
    assert sorted(supers["people"]) == ["baby", "boy", "girl", "man", "woman"]
    assert sorted(supers["aquatic_mammals"]) == ["beaver", "dolphin", "otter", "seal", "whale"]
    # FC100's class order: superclasses in file order, their classes in file order
    assert fc100["test"] == [c for v in fc100_json["test"]["superclasses"].values() for c in v]


# sha256 of the reference class lists (json.dumps(..., sort_keys=True) of the files the official splits were
# checked against), so that an edit of dataset/splits/ fails here on any machine.
REFERENCE_SPLITS_SHA256 = {"cifar_fs.json": "8c865483cb454bbbf77ff79c319df61877fe7690dcb88a57e09af6f2fdd60909",
                           "fc100.json": "a7fc3dae44e175ec197c0671097c47b282dd0a2440c9cf3fd7322325771f93cb"}


@pytest.mark.parametrize("name", sorted(REFERENCE_SPLITS_SHA256))
def test_class_lists_match_the_reference(name):
    content = json.loads((prepare.SPLITS_DIR / name).read_text())
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    assert digest == REFERENCE_SPLITS_SHA256[name]


def test_train_images_come_before_test_images_within_a_class(cifar100_archive, tmp_path):
    archive, parts = cifar100_archive
    images, labels, names = prepare.read_cifar100(archive)
    first = names.index(prepare.class_lists("cifar-fs")["train"][0])
    expected = [i for i, y in enumerate(parts["train"]["fine_labels"]) if y == first]
    expected_test = [i for i, y in enumerate(parts["test"]["fine_labels"]) if y == first]
    built = prepare.build_package("cifar-fs", images, labels, names)["train"]["data"][:6]
    np.testing.assert_array_equal(built[:5, 0, 0, 1], np.array(expected) % 256)
    np.testing.assert_array_equal(built[5:, 0, 0, 1], np.array(expected_test) % 256)


def test_extracted_folder_works_too(cifar100_archive, tmp_path):
    archive, _ = cifar100_archive
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "src", filter="data")
    prepare.main(["cifar-fs", "--cifar100", str(tmp_path / "src"), "--out", str(tmp_path / "out")])
    prepare.main(["cifar-fs", "--cifar100", str(archive), "--out", str(tmp_path / "from_tar")])
    for split in ("train", "val", "test", "trainval"):
        from_folder = load_split("CIFAR-FS", tmp_path / "out", split)
        from_tar = load_split("CIFAR-FS", tmp_path / "from_tar", split)
        np.testing.assert_array_equal(from_folder.images, from_tar.images)
        np.testing.assert_array_equal(from_folder.labels, from_tar.labels)
    assert load_split("CIFAR-FS", tmp_path / "out", "test").num_classes == 20


@pytest.mark.parametrize("case, message", [
    ("missing", "--cifar100 not found; expected cifar-100-python.tar.gz"),
    ("not_tar", "not a readable tar archive"),
    ("no_meta", "cifar-100-python/meta: missing from the CIFAR-100 archive"),
    ("no_source", "--cifar100: cifar-fs is built from CIFAR-100"),
])
def test_builder_errors(tmp_path, case, message):
    path = tmp_path / "cifar-100-python.tar.gz"
    if case == "not_tar":
        path.write_bytes(b"garbage")
    elif case == "no_meta":
        with tarfile.open(path, "w:gz") as tar:
            blob = pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "fine_labels": [0]})
            for name in ("train", "test"):
                info = tarfile.TarInfo(f"cifar-100-python/{name}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    argv = ["cifar-fs", "--out", str(tmp_path / "out")] + ([] if case == "no_source" else ["--cifar100", str(path)])
    with pytest.raises(DataError, match=message):
        prepare.main(argv)
    assert not (tmp_path / "out").exists()


def _omniglot_zip(path: Path) -> Path:
    """A stand-in for images_background_small1.zip: its layout and alphabets, one blank drawing per character."""
    with zipfile.ZipFile(path, "w") as z:
        for alphabet in ("Korean", "Latin", "Early_Aramaic", "Balinese", "Greek", "Unused"):
            for char in ("character01", "character02"):
                buffer = io.BytesIO()
                Image.new("L", (105, 105), 255).save(buffer, format="PNG")
                z.writestr(f"images_background_small1/{alphabet}/{char}/0001_01.png", buffer.getvalue())
    return path


def test_omniglot_split_by_alphabet(tmp_path):
    path = _omniglot_zip(tmp_path / "images_background_small1.zip")
    counts = prepare.build_omniglot(path, tmp_path / "omni")
    assert counts == {"train": 4, "val": 2, "test": 4}
    assert sorted(p.name for p in (tmp_path / "omni" / "test").iterdir()) == [
        "Balinese_character01", "Balinese_character02", "Greek_character01", "Greek_character02"]
    with pytest.raises(DataError, match="--out already exists and is not empty"):
        prepare.build_omniglot(path, tmp_path / "omni")


def test_omniglot_download_fills_the_cache_and_the_package_reads_it(tmp_path, monkeypatch, capsys):
    source = _omniglot_zip(tmp_path / "served.zip")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(prepare, "OMNIGLOT_URL", source.as_uri())
    prepare.main(["omniglot", "--download"])
    cached = tmp_path / "cache" / "skd" / "omniglot" / "images_background_small1.zip"
    assert cached.read_bytes() == source.read_bytes()
    assert capsys.readouterr().out.strip() == f"fetched {cached}"
    prepare.main(["omniglot", "--out", str(tmp_path / "omni")])  # no --zip: the cached copy
    assert sorted(p.name for p in (tmp_path / "omni").iterdir()) == ["test", "train", "val"]


@pytest.mark.parametrize("served", [b"<html>rate limited</html>", b""])
def test_omniglot_download_of_something_else_writes_nothing(tmp_path, served):
    (tmp_path / "served").write_bytes(served)
    dest = tmp_path / "cache" / "images_background_small1.zip"
    with pytest.raises(DataError, match=r"served: not a zip; expected images_background_small1\.zip"):
        prepare.download_omniglot(dest, (tmp_path / "served").as_uri())
    assert not dest.parent.exists()  # made for the download, removed with it


def test_omniglot_download_is_not_repeated(tmp_path, monkeypatch, capsys):
    cached = _omniglot_zip(tmp_path / "images_background_small1.zip")
    monkeypatch.setattr(prepare, "OMNIGLOT_URL", "http://127.0.0.1:9/unused")  # would fail if fetched
    prepare.main(["omniglot", "--download", "--zip", str(cached), "--out", str(tmp_path / "omni")])
    assert capsys.readouterr().out.startswith(f"already fetched: {cached}\n")
    assert sorted(p.name for p in (tmp_path / "omni").iterdir()) == ["test", "train", "val"]


def test_omniglot_download_without_a_network_names_the_fix_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    def no_network(url, timeout):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    cache = tmp_path / "cache"  # exists, with something of its own: kept; skd/omniglot/ inside it is ours
    cache.mkdir()
    (cache / "other").write_text("kept")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    with pytest.raises(SystemExit) as stopped:
        run_cli(lambda: prepare.main(["omniglot", "--download", "--out", str(tmp_path / "omni")]))
    assert stopped.value.code == 2
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and message.startswith("error: --download: could not fetch ")
    assert f"{prepare.OMNIGLOT_URL} (URLError: " in message and message.rstrip().endswith("give it with --zip PATH")
    assert sorted(p.name for p in cache.iterdir()) == ["other"] and not (tmp_path / "omni").exists()


def test_omniglot_without_the_sample_names_the_download(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"images_background_small1\.zip: not found; give --zip .* or add --download"):
        prepare.main(["omniglot", "--out", str(tmp_path / "omni")])
    assert not (tmp_path / "omni").exists()


# ----------------------------------------------------------------------------- python -m dataset.check

def test_check_reports_a_good_root(tmp_path, capsys):
    make_cifar_package(tmp_path / "CIFAR-FS")
    assert check_module.main(["--dataset", "CIFAR-FS", "--data_root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "train.pickle: 48 images (32, 32, 3) uint8, 6 classes, 8 images per class" in out
    assert "test.pickle: 100 images (32, 32, 3) uint8, 5 classes, 20 images per class" in out
    assert "trainval  not found (optional" in out and out.strip().endswith("CIFAR-FS: OK")


def test_check_lists_every_problem_one_line_each(tmp_path, capsys):
    make_cifar_package(tmp_path / "CIFAR-FS", eval_classes=4, per_class_eval=12)
    (tmp_path / "CIFAR-FS" / "val.pickle").unlink()
    assert check_module.main(["--dataset", "CIFAR-FS", "--data_root", str(tmp_path)]) == 1
    problems = [line for line in capsys.readouterr().out.splitlines() if line.startswith("problem: ")]
    assert len(problems) == 3
    assert "val.pickle: file not found" in problems[0]
    assert "test.pickle: 4 classes, 5-way episodes need 5" in problems[1]
    assert "4 classes have fewer than n_shots + n_queries = 20 images" in problems[2]


def test_check_reports_a_wrong_shape(tmp_path, capsys):
    make_cifar_package(tmp_path / "CIFAR-FS")
    with open(tmp_path / "CIFAR-FS" / "test.pickle", "wb") as f:
        pickle.dump({"data": np.zeros((4, 32, 32), np.uint8), "labels": [0, 1, 2, 3]}, f)
    assert check_module.main(["--dataset", "CIFAR-FS", "--data_root", str(tmp_path)]) == 1
    assert "test.pickle: expected images of shape (N, H, H, 3), got (4, 32, 32)" in capsys.readouterr().out


def test_check_image_folder(tmp_path, capsys):
    for split in ("train", "val", "test"):
        for c in range(5):
            folder = tmp_path / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (10, 10), (c * 40, i, 0)).save(folder / f"{i}.png")
    assert check_module.main(["--dataset", "folder", "--data_root", str(tmp_path), "--n_shots", "1",
                              "--n_queries", "2"]) == 0
    assert "15 images (10, 10, 3) uint8, 5 classes, 3 images per class" in capsys.readouterr().out
    assert check_module.main(["--dataset", "folder", "--data_root", str(tmp_path)]) == 1
    problems = [line for line in capsys.readouterr().out.splitlines() if line.startswith("problem: ")]
    assert len(problems) == 2  # val and test: 3 images per class, the default 5 + 15 need 20
    assert all("5 classes have fewer than n_shots + n_queries = 20 images" in line for line in problems)
