"""Data readers on tiny files in the official formats, the built-in dataset, and the episode sampler."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from conftest import fake_images, labelled, make_cifar_package, write_pickle
from dataset import DataError, load_split, sample_episode, sample_episodes
from dataset.imageset import first_appearance_labels
from dataset.synthetic import SPLIT_SIZES, make_synthetic_split
from dataset.transforms import (CIFAR_NORMALIZATION, IMAGENET_NORMALIZATION, choose_normalization, crop_flip_batch,
                                data_normalization, normalize_batch)


def _read_back(path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


@pytest.mark.parametrize("dataset", ["CIFAR-FS", "FC100"])
def test_cifar_style_reader(tmp_path, dataset):
    make_cifar_package(tmp_path / dataset)
    raw = _read_back(tmp_path / dataset / "train.pickle")
    train = load_split(dataset, tmp_path, "train")
    assert train.images.shape == (48, 32, 32, 3) and train.images.dtype == np.uint8
    np.testing.assert_array_equal(train.images, raw["data"])
    # Labels are numbered 0..k-1 in order of first appearance of the sparse raw label.
    first_seen = list(dict.fromkeys(raw["labels"]))
    np.testing.assert_array_equal(train.labels, [first_seen.index(v) for v in raw["labels"]])
    assert train.num_classes == 6 and load_split(dataset, tmp_path, "test").num_classes == 5


def test_data_root_may_be_the_dataset_folder_itself(cifar_root):
    parent = load_split("CIFAR-FS", cifar_root, "val")
    direct = load_split("CIFAR-FS", cifar_root / "CIFAR-FS", "val")
    np.testing.assert_array_equal(parent.images, direct.images)


def test_toy_is_first_five_classes(tmp_path):
    make_cifar_package(tmp_path / "CIFAR-FS", train_classes=8)
    full = load_split("CIFAR-FS", tmp_path, "train")
    toy = load_split("toy", tmp_path, "train")
    assert toy.num_classes == 5
    np.testing.assert_array_equal(toy.images, full.images[full.labels < 5])


def test_miniimagenet_reader_uses_train_phase_and_category_files(tmp_path):
    rng = np.random.RandomState(0)
    folder = tmp_path / "miniImageNet"
    for name, first in (("miniImageNet_category_split_train_phase_train", 0),
                        ("miniImageNet_category_split_val", 50), ("miniImageNet_category_split_test", 80)):
        labels = labelled(rng, first, 3, 4)
        write_pickle(folder / f"{name}.pickle", {"data": fake_images(rng, labels, 84), "labels": list(labels),
                                                 "catname2label": {f"n{first + i}": first + i for i in range(3)}})
    train = load_split("miniImageNet", tmp_path, "train")
    test = load_split("miniImageNet", tmp_path, "test")
    assert train.images.shape == (12, 84, 84, 3) and train.image_size == 84
    assert test.num_classes == 3
    with pytest.raises(DataError, match="miniImageNet_category_split_train_phase_trainval.pickle: file not found"):
        load_split("miniImageNet", tmp_path, "trainval")


def test_tieredimagenet_reader_npz_plus_labels(tmp_path):
    rng = np.random.RandomState(0)
    folder = tmp_path / "tieredImageNet"
    folder.mkdir()
    labels = labelled(rng, 10, 3, 4)
    np.savez(folder / "test_images.npz", images=fake_images(rng, labels, 84))
    write_pickle(folder / "test_labels.pkl", {"labels": labels, "label_specific": labels})
    test = load_split("tieredImageNet", tmp_path, "test")
    assert test.images.shape == (12, 84, 84, 3) and test.num_classes == 3
    np.savez(folder / "val_images.npz", pictures=fake_images(rng, labels, 84))
    with pytest.raises(DataError, match=r"val_images.npz: expected an npz with key 'images'"):
        load_split("tieredImageNet", tmp_path, "val")


def test_synthetic_is_deterministic_and_episode_ready():
    a, b = make_synthetic_split("train"), make_synthetic_split.__wrapped__("train")
    np.testing.assert_array_equal(a.images, b.images)
    for split, (classes, per_class) in SPLIT_SIZES.items():
        s = load_split("synthetic", None, split)
        assert s.num_classes == classes and np.all(np.bincount(s.labels) == per_class)
        assert s.images.dtype == np.uint8 and s.image_size == 32
    assert not np.array_equal(make_synthetic_split("val").images, make_synthetic_split("test").images)


def test_first_appearance_labels():
    np.testing.assert_array_equal(first_appearance_labels(np.array([42, 7, 42, 99, 7])), [0, 1, 0, 2, 1])


@pytest.mark.parametrize("case, message", [
    ("no_root", "--data_root: dataset CIFAR-FS needs a data folder"),
    ("missing_root", "--data_root folder not found"),
    ("wrong_folder", "expected CIFAR-FS/ inside it or train.pickle in it"),
    ("missing_file", "val.pickle: file not found"),
    ("not_pickle", "train.pickle: not a readable pickle"),
    ("wrong_keys", r"train.pickle: expected a dict with keys \['data', 'labels'\], found \['images', 'labels'\]"),
    ("wrong_shape", r"train.pickle: expected images of shape \(N, H, H, 3\), got \(4, 32, 32\)"),
    ("wrong_dtype", "train.pickle: expected uint8 images, got float32"),
    ("label_count", "train.pickle: 4 images but 3 labels"),
    ("unknown_split", "no split 'trainval'"),
])
def test_each_data_error_names_the_path(tmp_path, case, message):
    folder = tmp_path / "CIFAR-FS"
    folder.mkdir()
    data = np.zeros((4, 32, 32, 3), np.uint8)
    content = {
        "not_pickle": None, "wrong_keys": {"images": data, "labels": [0] * 4},
        "wrong_shape": {"data": data[..., 0], "labels": [0] * 4},
        "wrong_dtype": {"data": data.astype(np.float32), "labels": [0] * 4},
        "label_count": {"data": data, "labels": [0] * 3},
    }.get(case, {"data": data, "labels": [0, 1, 0, 1]})
    if case == "not_pickle":
        (folder / "train.pickle").write_bytes(b"definitely not a pickle")
    elif case != "wrong_folder":
        write_pickle(folder / "train.pickle", content)
    root = {"no_root": None, "missing_root": tmp_path / "nowhere", "wrong_folder": tmp_path / "CIFAR-FS"}.get(case, tmp_path)
    split = {"missing_file": "val"}.get(case, "train")
    dataset = "toy" if case == "unknown_split" else "CIFAR-FS"
    split = "trainval" if case == "unknown_split" else split
    with pytest.raises(DataError, match=message):
        load_split(dataset, root, split)


# ----------------------------------------------------------------------------- image folders

def write_image_folder(root, splits=("train", "val", "test"), classes=3, per_class=4, size=20, mode="RGB"):
    rng = np.random.RandomState(0)
    for split in splits:
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.randint(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).convert(mode).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def test_image_folder_reader(tmp_path):
    write_image_folder(tmp_path, classes=3, per_class=4, mode="L")
    train = load_split("folder", tmp_path, "train")
    assert train.images.shape == (12, 20, 20, 3) and train.class_names == ["class_0", "class_1", "class_2"]
    np.testing.assert_array_equal(train.labels, np.repeat(np.arange(3), 4))
    png = np.asarray(Image.open(tmp_path / "train" / "class_1" / "1.png").convert("RGB"))
    np.testing.assert_array_equal(train.images[5], png)
    assert load_split("folder", tmp_path, "val", image_size=32).images.shape == (12, 32, 32, 3)


@pytest.mark.parametrize("case, message", [
    ("missing_split", "val: split folder not found"),
    ("empty_class", "class_9: no .png or .jpg images"),
    ("mixed_sizes", r"odd.png: image is 24x24, the first one is 20x20; pass --image_size N"),
    ("not_square", r"wide.png: image is 30x20, not square"),
    ("corrupt", "broken.png: not a readable image"),
])
def test_image_folder_errors(tmp_path, case, message):
    write_image_folder(tmp_path, splits=("train",))
    if case == "missing_split":
        split = "val"
    else:
        split = "train"
        folder = tmp_path / "train" / ("class_9" if case == "empty_class" else "class_2")
        folder.mkdir(exist_ok=True)
        if case == "mixed_sizes":
            Image.new("RGB", (24, 24)).save(folder / "odd.png")
        elif case == "not_square":
            Image.new("RGB", (30, 20)).save(tmp_path / "train" / "class_0" / "0wide.png")
            message = message.replace("wide", "0wide")
        elif case == "corrupt":
            (folder / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=message):
        load_split("folder", tmp_path, split)


def test_image_folder_resize_accepts_mixed_sizes(tmp_path):
    write_image_folder(tmp_path, splits=("train",))
    Image.new("RGB", (40, 30)).save(tmp_path / "train" / "class_0" / "big.png")
    assert load_split("folder", tmp_path, "train", image_size=16).images.shape == (13, 16, 16, 3)


# ----------------------------------------------------------------------------- normalisation and transforms

def test_normalization_choices():
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (10, 8, 8, 3)).astype(np.uint8)
    norm = data_normalization(images, chunk=3)
    x = images.reshape(-1, 3) / 255
    np.testing.assert_allclose(norm.mean, x.mean(0), rtol=1e-9)
    np.testing.assert_allclose(norm.std, x.std(0), rtol=1e-9)
    assert choose_normalization("auto", "CIFAR-FS", images) == CIFAR_NORMALIZATION
    assert choose_normalization("auto", "miniImageNet", np.zeros((1, 84, 84, 3), np.uint8)) == IMAGENET_NORMALIZATION
    np.testing.assert_allclose(choose_normalization("auto", "folder", images).mean, norm.mean, rtol=1e-12)
    assert min(data_normalization(np.zeros((2, 4, 4, 3), np.uint8)).std) > 0  # blank images: no division by 0


def test_normalize_batch_matches_torchvision():
    from torchvision import transforms

    image = np.random.RandomState(0).randint(0, 256, (6, 6, 3)).astype(np.uint8)
    expected = transforms.Normalize(CIFAR_NORMALIZATION.mean, CIFAR_NORMALIZATION.std)(transforms.ToTensor()(image))
    got = normalize_batch(__import__("torch").from_numpy(image[None]), CIFAR_NORMALIZATION)[0]
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-6)


def test_crop_flip_batch_is_a_shifted_window_of_the_padded_image():
    import torch

    images = torch.randint(1, 256, (64, 8, 8, 3), dtype=torch.uint8)  # no zeros: padding is recognisable
    out = crop_flip_batch(images, 2, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images.permute(0, 3, 1, 2), (2, 2, 2, 2)).permute(0, 2, 3, 1)
    flips = 0
    for img, pad in zip(out, padded):
        windows = [pad[t:t + 8, l:l + 8] for t in range(5) for l in range(5)]
        plain = any(torch.equal(img, w) for w in windows)
        flipped = any(torch.equal(img, w.flip(1)) for w in windows)
        assert plain or flipped
        flips += flipped and not plain
    assert 10 < flips < 54  # about half are flipped


# ----------------------------------------------------------------------------- episodes

def _legacy_episode(class_indices, i, n_ways, n_shots, n_queries):
    """The official loader's procedure, with the global numpy seed."""
    np.random.seed(i)
    classes = np.random.choice(len(class_indices), n_ways, False)
    support, query = [], []
    for c in classes:
        imgs = class_indices[c]
        support_xs_ids = np.random.choice(range(len(imgs)), n_shots, False)
        query_xs_ids = np.setxor1d(np.arange(len(imgs)), support_xs_ids)
        query_xs_ids = np.random.choice(query_xs_ids, n_queries, False)
        support.append(imgs[support_xs_ids])
        query.append(imgs[query_xs_ids])
    return classes, np.stack(support), np.stack(query)


@pytest.mark.parametrize("n_shots", [1, 5])
def test_episodes_match_the_legacy_global_seed_procedure(n_shots):
    rng = np.random.RandomState(3)
    labels = labelled(rng, 0, 12, 25)
    from dataset.imageset import ImageSet

    images = ImageSet.from_raw(np.zeros((len(labels), 2, 2, 3), np.uint8), labels, "test")
    class_indices = images.class_indices()
    for i in (0, 1, 7, 599):
        classes, support, query = _legacy_episode(class_indices, i, 5, n_shots, 15)
        episode = sample_episode(class_indices, i, 5, n_shots, 15)
        np.testing.assert_array_equal(episode.classes, classes)
        np.testing.assert_array_equal(episode.support, support)
        np.testing.assert_array_equal(episode.query, query)
        assert not set(episode.support.ravel()) & set(episode.query.ravel())


def test_infeasible_episodes_are_refused():
    class_indices = [np.arange(10), np.arange(10, 30)]
    with pytest.raises(DataError, match="5-way episodes need 5 classes, the split has 2"):
        sample_episodes(class_indices, 3, 5, 1, 15, "val.pickle")
    with pytest.raises(DataError, match="a class has 10 images, episodes need n_shots \\+ n_queries = 16"):
        sample_episodes(class_indices, 3, 2, 1, 15, "val.pickle")
