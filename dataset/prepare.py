"""Build the official data packages from sources that can still be downloaded.

    python -m dataset.prepare cifar-fs --cifar100 PATH --out DIR   # DIR/CIFAR-FS/{train,val,test,trainval}.pickle
    python -m dataset.prepare fc100    --cifar100 PATH --out DIR   # DIR/FC100/...
    python -m dataset.prepare omniglot --zip images_background_small1.zip --out DIR   # DIR/{train,val,test}/<class>/
    python -m dataset.prepare omniglot --download          # fetch the Omniglot sample into the cache (the tests use it)
    python -m dataset.prepare omniglot --download --out DIR   # both: fetch it (if not yet there), then build DIR

PATH is CIFAR-100's python archive (`cifar-100-python.tar.gz`), its extracted folder, or the folder
holding either; `--download` fetches it there through torchvision. CIFAR-FS and FC100 are fixed
class splits of CIFAR-100 (class lists in dataset/splits/) using all 600 images of each class:
the 500 of CIFAR-100's train part, then the 100 of its test part, class by class in list order.
Labels are CIFAR-100 fine-label ids, as in the official files. The Omniglot sample (1.3 MB, MIT
licence, Brenden Lake's Omniglot repository) is fetched into ~/.cache/skd/omniglot/ (or
$XDG_CACHE_HOME/skd/omniglot/); without --zip, the omniglot package reads it from there. Where there
is no network, --download fails naming the file's address: fetch it by hand and give it with --zip.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import shutil
import tarfile
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from dataset.errors import DataError
from dataset.readers import safe_unpickle
from util import ArgumentParser, atomic_write, run_cli

SPLITS_DIR = Path(__file__).resolve().parent / "splits"
ARCHIVE_NAME = "cifar-100-python.tar.gz"
ARCHIVE_FOLDER = "cifar-100-python"
IMAGES_PER_CLASS = 600
PACKAGES = {"cifar-fs": ("CIFAR-FS", "cifar_fs.json"), "fc100": ("FC100", "fc100.json")}
# Omniglot background sample (images_background_small1): whole alphabets per split, so that test
# characters come from scripts never seen in training.
OMNIGLOT_ALPHABETS = {"train": ("Korean", "Latin"), "val": ("Early_Aramaic",), "test": ("Balinese", "Greek")}
OMNIGLOT_ZIP_NAME = "images_background_small1.zip"
OMNIGLOT_URL = f"https://github.com/brendenlake/omniglot/raw/master/python/{OMNIGLOT_ZIP_NAME}"


def class_lists(package: str) -> dict[str, list[str]]:
    """Split -> CIFAR-100 class names, in the order the package stores them."""
    content = json.loads((SPLITS_DIR / PACKAGES[package][1]).read_text())
    if package == "fc100":
        return {split: [c for classes in v["superclasses"].values() for c in classes] for split, v in content.items()}
    return content


# ----------------------------------------------------------------------------- CIFAR-100

def _load_pickle(data: bytes | None, name: str) -> dict:
    if data is None:
        raise DataError(f"{name}: missing from the CIFAR-100 archive")
    try:
        return safe_unpickle(io.BytesIO(data))  # numpy arrays and plain data only: no code runs
    except Exception as e:  # any unpickling failure means a damaged or foreign file
        raise DataError(f"{name}: not a readable CIFAR-100 pickle ({type(e).__name__})") from None


def _read_cifar100_parts(path: Path) -> dict[str, dict]:
    """{'train', 'test', 'meta'} pickles from the .tar.gz or the extracted folder."""
    if path.is_dir() and (path / ARCHIVE_FOLDER).is_dir():
        path = path / ARCHIVE_FOLDER
    elif path.is_dir() and (path / ARCHIVE_NAME).is_file():
        path = path / ARCHIVE_NAME
    if path.is_dir():
        return {p: _load_pickle((path / p).read_bytes() if (path / p).is_file() else None, str(path / p))
                for p in ("train", "test", "meta")}
    if not path.is_file():
        raise DataError(f"{path}: --cifar100 not found; expected {ARCHIVE_NAME} or its extracted {ARCHIVE_FOLDER}/ "
                        f"(or pass --download)")
    try:
        with tarfile.open(path, "r:*") as tar:
            def member(p: str) -> bytes | None:
                try:
                    f = tar.extractfile(f"{ARCHIVE_FOLDER}/{p}")
                except KeyError:
                    return None
                return f.read() if f is not None else None

            return {p: _load_pickle(member(p), f"{path}:{ARCHIVE_FOLDER}/{p}") for p in ("train", "test", "meta")}
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable tar archive ({e})") from None


def read_cifar100(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All 60000 images (N, 32, 32, 3) uint8, fine labels, and the fine-label names; train part first."""
    parts = _read_cifar100_parts(path)
    images, labels = [], []
    for part in ("train", "test"):
        content = parts[part]
        if not isinstance(content, dict) or "data" not in content or "fine_labels" not in content:
            raise DataError(f"{path}: CIFAR-100 '{part}' has no 'data'/'fine_labels'")
        data = np.asarray(content["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{path}: CIFAR-100 '{part}' data has shape {data.shape}, expected (N, 3072)")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(content["fine_labels"], dtype=np.int64))
    meta = parts["meta"]
    if not isinstance(meta, dict) or "fine_label_names" not in meta:
        raise DataError(f"{path}: CIFAR-100 'meta' has no 'fine_label_names'")
    return np.concatenate(images), np.concatenate(labels), list(meta["fine_label_names"])


def build_package(package: str, images: np.ndarray, labels: np.ndarray, names: list[str]) -> dict[str, dict]:
    """Split -> {'data': uint8 (N, 32, 32, 3), 'labels': [fine ids]} for CIFAR-FS or FC100, plus trainval."""
    index = {name: i for i, name in enumerate(names)}
    out = {}
    for split, classes in class_lists(package).items():
        unknown = [c for c in classes if c not in index]
        if unknown:
            raise DataError(f"CIFAR-100 has no classes {unknown} (needed by {package} {split})")
        picks = []
        for name in classes:
            members = np.flatnonzero(labels == index[name])
            if len(members) != IMAGES_PER_CLASS:
                raise DataError(f"CIFAR-100 class {name!r} has {len(members)} images, expected {IMAGES_PER_CLASS}")
            picks.append(members)
        picks = np.concatenate(picks)
        out[split] = {"data": np.ascontiguousarray(images[picks]), "labels": labels[picks].tolist()}
    out["trainval"] = {"data": np.concatenate([out["train"]["data"], out["val"]["data"]]),
                       "labels": out["train"]["labels"] + out["val"]["labels"]}
    return out


def write_package(splits: dict[str, dict], folder: Path) -> None:
    """Each pickle is written to a temporary name and renamed, so no half-written file is left."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, content in splits.items():
        with atomic_write(folder / f"{split}.pickle") as tmp, tmp.open("wb") as f:
            pickle.dump(content, f, protocol=2)  # readable by the official Python 2 era code too


def download_cifar100(folder: Path) -> Path:
    from torchvision.datasets import CIFAR100

    folder.mkdir(parents=True, exist_ok=True)
    try:
        CIFAR100(str(folder), train=True, download=True)
    except Exception as e:  # network errors come in many types
        raise DataError(f"--download: could not fetch CIFAR-100 into {folder} ({type(e).__name__}: {e})") from None
    return folder


# ----------------------------------------------------------------------------- Omniglot

def omniglot_cache_path() -> Path:
    """Where `--download` puts the Omniglot sample and where the omniglot package and the tests look."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "skd" / "omniglot" / OMNIGLOT_ZIP_NAME


def download_omniglot(dest: Path, url: str | None = None) -> Path:
    """Fetch the Omniglot sample (from OMNIGLOT_URL unless `url` is given) to `dest`, written only once it is a
    readable zip of the expected alphabets. On failure nothing is left behind: the folders made for `dest`
    are removed again (folders that were there before are kept)."""
    url = url or OMNIGLOT_URL
    created = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]  # innermost first
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(staging, "wb") as f:
            shutil.copyfileobj(response, f)
        with zipfile.ZipFile(staging) as archive:
            alphabets = {Path(name).parts[1] for name in archive.namelist() if len(Path(name).parts) > 2}
        missing = sorted({a for names in OMNIGLOT_ALPHABETS.values() for a in names} - alphabets)
        if missing:
            raise DataError(f"{url}: the zip lacks the alphabets {missing}; expected {OMNIGLOT_ZIP_NAME}")
        os.replace(staging, dest)
    except zipfile.BadZipFile:
        raise DataError(f"{url}: not a zip; expected {OMNIGLOT_ZIP_NAME}") from None
    except OSError as e:  # URLError is an OSError
        reason = " ".join(f"{type(e).__name__}: {e}".split())  # one line, whatever the OS's message holds
        raise DataError(f"--download: could not fetch {url} ({reason}); download that file by hand and give it "
                        f"with --zip PATH") from None
    finally:
        staging.unlink(missing_ok=True)
        if not dest.exists():
            _remove_empty(created)
    return dest


def _remove_empty(folders: list[Path]) -> None:
    """Remove `folders` (innermost first) where they are still empty: another process may have written into them
    meanwhile, and what it wrote stays."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone already): kept
            continue


def build_omniglot(zip_path: Path, out: Path) -> dict[str, int]:
    """Unpack the Omniglot background sample into out/{train,val,test}/<alphabet>_<character>/*.png."""
    if not zip_path.is_file():
        raise DataError(f"{zip_path}: --zip not found; expected images_background_small1.zip")
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out}: --out already exists and is not empty; remove it or choose another folder")
    split_of = {a: split for split, alphabets in OMNIGLOT_ALPHABETS.items() for a in alphabets}
    counts = {split: 0 for split in OMNIGLOT_ALPHABETS}
    staging = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for info in archive.infolist():
                parts = Path(info.filename).parts
                if info.is_dir() or len(parts) != 4 or not parts[3].endswith(".png") or parts[1] not in split_of:
                    continue
                target = staging / split_of[parts[1]] / f"{parts[1]}_{parts[2]}" / parts[3]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(info))
                counts[split_of[parts[1]]] += 1
    except zipfile.BadZipFile as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(f"{zip_path}: not a readable zip ({e})") from None
    if not all(counts.values()):
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(f"{zip_path}: expected the alphabets {sorted(split_of)}; found images for {counts}")
    if out.exists():
        out.rmdir()  # empty, checked above
    os.replace(staging, out)
    return counts


# ----------------------------------------------------------------------------- command line

def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser("python -m dataset.prepare", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", choices=[*PACKAGES, "omniglot"])
    parser.add_argument("--out", metavar="DIR",
                        help="where to write: cifar-fs and fc100 make their package folder inside it (DIR/CIFAR-FS/, "
                             "DIR/FC100/); omniglot writes DIR/{train,val,test}/ itself, the --data_root of "
                             "--dataset folder. Optional only for `omniglot --download`, which then fetches the "
                             "sample alone")
    parser.add_argument("--cifar100", metavar="PATH",
                        help="CIFAR-100 python archive, its extracted folder, or the folder holding it")
    parser.add_argument("--download", action="store_true",
                        help="download CIFAR-100 into --cifar100 first; for omniglot, the sample to --zip or the "
                             "cache, unless it is there already")
    parser.add_argument("--zip", metavar="PATH",
                        help="Omniglot images_background_small1.zip (for the omniglot package; default: the one "
                             "--download put in the cache)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    if args.package == "omniglot":
        zip_path = Path(args.zip) if args.zip else omniglot_cache_path()
        if args.download and zip_path.is_file():  # as torchvision's download=True: fetched once
            print(f"already fetched: {zip_path}")
        elif args.download:
            print(f"fetched {download_omniglot(zip_path)}")
        if not args.out:
            if args.download:
                return
            raise DataError("--out: give the data root to build the omniglot package into")
        if not zip_path.is_file():
            raise DataError(f"{zip_path}: not found; give --zip images_background_small1.zip, or add --download")
        out = Path(args.out)
        counts = build_omniglot(zip_path, out)
        print(f"wrote {out}/{{train,val,test}}: " + ", ".join(f"{k} {v} images" for k, v in counts.items()))
        return
    if not args.out:
        raise DataError(f"--out: give the data root to build {args.package} into")
    out = Path(args.out)
    if not args.cifar100:
        raise DataError(f"--cifar100: {args.package} is built from CIFAR-100; give its archive or folder "
                        f"(with --download to fetch it)")
    source = download_cifar100(Path(args.cifar100)) if args.download else Path(args.cifar100)
    images, labels, names = read_cifar100(source)
    splits = build_package(args.package, images, labels, names)
    folder = out / PACKAGES[args.package][0]
    write_package(splits, folder)
    for split, content in splits.items():
        print(f"{folder / (split + '.pickle')}: {len(content['labels'])} images, "
              f"{len(set(content['labels']))} classes")


if __name__ == "__main__":
    run_cli(main)
