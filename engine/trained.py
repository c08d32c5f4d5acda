"""A trained checkpoint as every command that evaluates, embeds or distils from it reads it: the file a
--model_path names (a run folder gives its last epoch), what its run recorded (dataset, data root, image
size, which weights these are), and the normalisation its network expects. The weights themselves are
read by engine.checkpoint (ours, the official release's, a bare or a DataParallel state dict)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dataset import load_split
from published.profiles import NAMED_NORMALIZATIONS, Normalization, dataset_profile
from dataset.transforms import data_normalization
from engine.checkpoint import BEST_NAME, CHECKPOINT_NAME, checkpoint_normalization, training_args
from runtime.artifacts import fetch_checkpoint, is_reference
from util import UsageError


def checkpoint_file(given: str, flag: str = "--model_path") -> Path:
    """`given` as a checkpoint file: a file as given; a run folder's checkpoint.pth (its last epoch, the
    paper's protocol), said in one line; a W&B artifact reference (entity/project/name:alias) fetched and
    verified (runtime.artifacts); a folder without one refused, naming what it holds."""
    path = Path(given)
    if path.is_file():
        return path
    if is_reference(given):
        return fetch_checkpoint(given, flag, (CHECKPOINT_NAME, BEST_NAME))
    if not path.is_dir():
        raise UsageError(f"{flag} {given}: checkpoint not found")
    last, best = path / CHECKPOINT_NAME, path / BEST_NAME
    if last.is_file():
        other = f"; best.pth: give {best} as {flag}" if best.is_file() else ""
        print(f"checkpoint: {last} (the run folder's last epoch{other})")
        return last
    found = sorted(p.name for p in path.glob("*.pth") if p.is_file())
    held = (f"it holds {', '.join(found[:3])}{', ...' if len(found) > 3 else ''}: give one as {flag}" if found
            else "it holds no .pth file")
    raise UsageError(f"{flag} {given}: a folder without {CHECKPOINT_NAME} (a run folder's last-epoch checkpoint); "
                     f"{held}")


def trained_with(checkpoint: dict) -> dict[str, Any]:
    """What the checkpoint records of its training run (ours do; official checkpoints record nothing)."""
    train_args = training_args(checkpoint)
    return {"dataset": train_args.get("dataset"), "data_root": train_args.get("data_root"),
            "image_size": checkpoint.get("image_size")}


def checkpoint_choice(checkpoint: dict) -> str:
    """Which weights of a run these are, as results.json says it (tables never mix choices): a best.pth
    ("best val (epoch K)"), an unfinished run's checkpoint ("epoch K of N"), else the last epoch."""
    if "val_acc" in checkpoint and "epoch" in checkpoint:
        return f"best val (epoch {checkpoint['epoch']})"
    epochs = training_args(checkpoint).get("epochs")
    if epochs is not None and checkpoint.get("epoch") is not None and checkpoint["epoch"] < epochs:
        return f"epoch {checkpoint['epoch']} of {epochs}"
    return "last epoch"


def domain_name(dataset: str | None, data_root: str | Path | None) -> str | None:
    """A domain as results files name it: the dataset, or for a folder dataset the folder's name."""
    if dataset == "folder" and data_root:
        return Path(data_root).resolve().name
    return dataset


def evaluation_normalization(choice: str, checkpoint: dict, dataset: str, data_root: str | None,
                             image_size: int) -> tuple[Normalization, str]:
    """The normalisation a network trained on `dataset` (read from `data_root`) expects, by --normalization
    `choice`: auto = the checkpoint's, else the dataset profile's constants, else the statistics of the
    training split (data): never of the images being evaluated. Returns it and where it came from."""
    recorded = checkpoint_normalization(checkpoint)
    if choice == "auto" and recorded is not None:
        return recorded, "the checkpoint's"
    profile_norm = dataset_profile(dataset, image_size).normalization
    if choice == "auto" and profile_norm is not None:
        return profile_norm, f"the {dataset} profile's constants"
    if choice in ("auto", "data"):
        train = load_split(dataset, data_root, "train", image_size)
        return data_normalization(train.images), f"statistics of the training split {train.source}"
    return NAMED_NORMALIZATIONS[choice], f"--normalization {choice}"
