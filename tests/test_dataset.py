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
from published.profiles import CIFAR_NORMALIZATION, IMAGENET_NORMALIZATION
from dataset.transforms import (choose_normalization, crop_flip_batch,
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
    written = {}
    # The train_phase val/test files (training-time validation) must not be read for episodes.
    for name, first in (("miniImageNet_category_split_train_phase_train", 0),
                        ("miniImageNet_category_split_train_phase_val", 0),
                        ("miniImageNet_category_split_train_phase_test", 0),
                        ("miniImageNet_category_split_val", 50), ("miniImageNet_category_split_test", 80)):
        labels = labelled(rng, first, 3, 4)
        written[name] = {"data": fake_images(rng, labels, 84), "labels": list(labels),
                         "catname2label": {f"n{first + i}": first + i for i in range(3)}}
        write_pickle(folder / f"{name}.pickle", written[name])
    train = load_split("miniImageNet", tmp_path, "train")
    test = load_split("miniImageNet", tmp_path, "test")
    val = load_split("miniImageNet", tmp_path, "val")
    assert train.images.shape == (12, 84, 84, 3) and train.image_size == 84
    np.testing.assert_array_equal(train.images, written["miniImageNet_category_split_train_phase_train"]["data"])
    for split, ours in (("val", val), ("test", test)):
        raw = written[f"miniImageNet_category_split_{split}"]
        np.testing.assert_array_equal(ours.images, raw["data"])
        np.testing.assert_array_equal(ours.labels, first_appearance_labels(np.array(raw["labels"])))
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
    with np.load(folder / "test_images.npz") as npz:
        np.testing.assert_array_equal(test.images, npz["images"])
    first_seen = list(dict.fromkeys(labels.tolist()))
    np.testing.assert_array_equal(test.labels, [first_seen.index(v) for v in labels])
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
    ("not_pickle", "train.pickle: not a readable data pickle"),
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
    root = {"no_root": None, "missing_root": tmp_path / "nowhere",
            "wrong_folder": tmp_path / "CIFAR-FS"}.get(case, tmp_path)
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
    resized = load_split("folder", tmp_path, "train", image_size=32)
    assert resized.images.shape == (12, 32, 32, 3)
    np.testing.assert_array_equal(resized.labels, train.labels)
    # resized with PIL's bilinear filter, from the greyscale file converted to RGB
    png_image = Image.open(tmp_path / "train" / "class_1" / "1.png").convert("RGB")
    expected = np.asarray(png_image.resize((32, 32), Image.BILINEAR))
    np.testing.assert_array_equal(resized.images[5], expected)


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
    Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / "train" / "class_0" / "big.png")
    resized = load_split("folder", tmp_path, "train", image_size=16)
    assert resized.images.shape == (13, 16, 16, 3)
    big = [i for i, path in enumerate(sorted((tmp_path / "train" / "class_0").iterdir())) if path.name == "big.png"]
    assert len(big) == 1 and np.all(resized.images[big[0]] == (10, 200, 30))  # a flat colour stays that colour


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
    blank = np.zeros((2, 4, 4, 3), np.uint8)
    blank_norm = data_normalization(blank)  # blank images: no division by 0
    assert blank_norm.mean == (0.0, 0.0, 0.0)
    normalized = normalize_batch(__import__("torch").from_numpy(blank), blank_norm)
    assert bool(normalized.isfinite().all()) and float(normalized.abs().max()) == 0.0
    # chunking does not change the statistics
    np.testing.assert_allclose(data_normalization(images, chunk=1).std, norm.std, rtol=1e-9)


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
    for img, pad in zip(out, padded):
        windows = [pad[t:t + 8, l:l + 8] for t in range(5) for l in range(5)]
        assert any(torch.equal(img, w) for w in windows) or any(torch.equal(img, w.flip(1)) for w in windows)


# A 12x12 image whose pixels encode their position: channel 0 = row + 1, channel 1 = column + 1,
# channel 2 = 255; padding 4 (the CIFAR setting) gives 9 offsets per axis. Rows and columns 4..7 of
# any crop lie inside the image, so the pixel at (5, 5) and its right neighbour always do.
SIDE, PAD, DRAWS = 12, 4, 9 * 9 * 2 * 60


def _position_image() -> np.ndarray:
    rows, cols = np.meshgrid(np.arange(SIDE), np.arange(SIDE), indexing="ij")
    return np.stack([rows + 1, cols + 1, np.full_like(rows, 255)], -1).astype(np.uint8)


def _recover_crops(outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(top, left, flipped) of each (N, SIDE, SIDE, 3) output, each output checked exactly against
    that window of the zero-padded image (fill 0 in every channel)."""
    flipped = outputs[:, 5, 6, 1].astype(int) < outputs[:, 5, 5, 1].astype(int)
    unflipped = np.where(flipped[:, None, None, None], outputs[:, :, ::-1], outputs)
    # output (5, 5) is padded (top + 5, left + 5), i.e. image (top + 5 - PAD, left + 5 - PAD)
    top = unflipped[:, 5, 5, 0].astype(int) - 1 + PAD - 5
    left = unflipped[:, 5, 5, 1].astype(int) - 1 + PAD - 5
    padded = np.pad(_position_image(), ((PAD, PAD), (PAD, PAD), (0, 0)))
    for out, t, l in zip(unflipped, top, left):
        np.testing.assert_array_equal(out, padded[t:t + SIDE, l:l + SIDE])
    return top, left, flipped


def _torchvision_crops() -> np.ndarray:
    """What the official support transform draws: RandomCrop(size, padding) + RandomHorizontalFlip on PIL."""
    import torch
    from torchvision import transforms

    augment = transforms.Compose([transforms.RandomCrop(SIDE, padding=PAD), transforms.RandomHorizontalFlip()])
    image = Image.fromarray(_position_image())
    torch.manual_seed(0)
    return np.stack([np.asarray(augment(image)) for _ in range(DRAWS)])


def _ours_crops() -> np.ndarray:
    import torch

    batch = torch.from_numpy(np.repeat(_position_image()[None], DRAWS, 0))
    return crop_flip_batch(batch, PAD, torch.Generator().manual_seed(0)).numpy()


def test_crop_flip_batch_has_torchvisions_offset_and_flip_distribution():
    """Both draw top and left uniformly from 0..2*padding, independently, and flip with probability
    1/2, filling the padded border with zeros: a chi-square test of the joint (top, left, flip)
    counts against uniform for each, and of ours against torchvision's. Seeds are fixed, so the
    test is deterministic; an offset range off by one, a missing flip or top == left fail it."""
    from scipy import stats

    cells = (2 * PAD + 1, 2 * PAD + 1, 2)
    counts = {}
    for name, outputs in (("torchvision", _torchvision_crops()), ("ours", _ours_crops())):
        top, left, flipped = _recover_crops(outputs)
        assert set(top) == set(left) == set(range(2 * PAD + 1)), name
        joint = np.zeros(cells, int)
        np.add.at(joint, (top, left, flipped.astype(int)), 1)
        counts[name] = joint
        assert stats.chisquare(joint.ravel()).pvalue > 1e-3, name  # 162 cells, 60 expected in each
        # the flip rate within 4 standard deviations of 1/2
        assert abs(flipped.mean() - 0.5) < 4 * np.sqrt(0.25 / DRAWS), name
    for axis, what in ((0, "top"), (1, "left"), (2, "flip")):
        other = tuple(a for a in range(3) if a != axis)
        table = np.stack([counts["ours"].sum(other), counts["torchvision"].sum(other)])
        assert stats.chi2_contingency(table).pvalue > 1e-3, what


def test_crop_flip_batch_is_reproducible_and_leaves_the_global_rng_alone():
    import torch

    images = torch.from_numpy(np.repeat(_position_image()[None], 50, 0))
    state = torch.get_rng_state()
    a = crop_flip_batch(images, PAD, torch.Generator().manual_seed(3))
    b = crop_flip_batch(images, PAD, torch.Generator().manual_seed(3))
    c = crop_flip_batch(images, PAD, torch.Generator().manual_seed(4))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)


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


def test_one_profile_per_dataset_whatever_the_image_size(cifar_root):
    """--dataset CIFAR-FS --image_size 84 keeps CIFAR statistics, padding, block size and run-name letter."""
    from published.profiles import CIFAR_LIKE, IMAGENET_LIKE, dataset_profile

    resized = load_split("CIFAR-FS", cifar_root, "val", image_size=84)
    assert resized.image_size == 84 and resized.profile == CIFAR_LIKE
    assert (CIFAR_LIKE.crop_padding, CIFAR_LIKE.dropblock_size, CIFAR_LIKE.transform_letter) == (4, 2, "D")
    assert choose_normalization("auto", "CIFAR-FS", resized.images) == CIFAR_NORMALIZATION
    assert load_split("CIFAR-FS", cifar_root, "val", image_size=20).profile == CIFAR_LIKE
    assert dataset_profile("miniImageNet") == IMAGENET_LIKE and dataset_profile("tieredImageNet") == IMAGENET_LIKE
    assert (IMAGENET_LIKE.crop_padding, IMAGENET_LIKE.dropblock_size, IMAGENET_LIKE.transform_letter) == (8, 5, "A")
    # folders have no published profile: chosen by their images, normalised by their own statistics
    big, small = dataset_profile("folder", 84), dataset_profile("folder", 28)
    assert (big.crop_padding, big.dropblock_size, big.normalization) == (8, 5, None)
    assert (small.crop_padding, small.dropblock_size, small.normalization) == (4, 2, None)
    with pytest.raises(ValueError, match="no profile for dataset 'nope'"):
        dataset_profile("nope")


def test_training_crop_padding_comes_from_the_profile():
    from published.profiles import CIFAR_LIKE
    from dataset.transforms import train_transform

    transform = train_transform(84, CIFAR_LIKE.crop_padding, CIFAR_NORMALIZATION)
    crops = [t for t in transform.transforms if type(t).__name__ == "RandomCrop"]
    assert len(crops) == 1 and crops[0].padding == 4 and crops[0].size == (84, 84)
