"""Episodes on features embedded beforehand (`python -m tools.embed`'s file): the evaluator of
eval.fewshot (its episode sampler, classifiers and chunking) on stored vectors instead of images."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from dataset.episodes import sample_episodes
from eval.fewshot import EpisodeSetting, FewShotResult, episode_results, solve_episodes
from util import UsageError

FEATURE_KEYS = ("features", "labels", "class_names", "paths")  # what a tools.embed file holds at least


def read_features(path: Path) -> dict[str, np.ndarray]:
    """A tools.embed file's arrays (np.load, no pickles), refused with one line if it is none or has no labels."""
    if not path.is_file():
        raise UsageError(f"--features {path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except Exception as e:  # a damaged zip or header fails in many ways
        raise UsageError(f"--features {path}: not a readable .npz "
                         f"({type(e).__name__}: {str(e).split('. ')[0]})") from None
    missing = [k for k in FEATURE_KEYS if k not in data]
    if missing:
        raise UsageError(f"--features {path}: lacks {', '.join(missing)}; expected a file of `python -m tools.embed`")
    if (data["labels"] < 0).any():
        raise UsageError(f"--features {path}: its images have no classes (embedded from a flat folder); episodes "
                         f"need a folder with one sub-folder per class")
    return data


def feature_class_indices(labels: np.ndarray) -> list[np.ndarray]:
    """Indices of each class's images, in file order (as ImageSet.class_indices)."""
    order = np.argsort(labels, kind="stable")
    return np.split(order, np.cumsum(np.bincount(labels))[:-1])


def evaluate_features(data: dict[str, np.ndarray], split: str, setting: EpisodeSetting, device: torch.device,
                      classifiers: tuple[str, ...], seed: int) -> list[FewShotResult]:
    """eval.fewshot.evaluate's episodes on a tools.embed file's features. Supports are the file's augmented
    copies (the first setting.n_aug of each image) when it has them, else the plain features (n_aug 0)."""
    s = setting
    episodes = sample_episodes(feature_class_indices(data["labels"]), s.n_episodes, s.n_ways, s.n_shots,
                               s.n_queries, "--features")
    features = torch.from_numpy(data["features"]).to(device)
    augmented = torch.from_numpy(data["augmented"][:, :s.n_aug]).to(device) if s.n_aug else None
    support_index = torch.from_numpy(np.stack([e.support.reshape(-1) for e in episodes])).to(device)
    query_index = torch.from_numpy(np.stack([e.query.reshape(-1) for e in episodes])).to(device)

    def supports(ids: range) -> dict[str, torch.Tensor]:
        chosen = support_index[ids.start:ids.stop]
        if augmented is None:
            return {"feature": features[chosen]}
        # (E, shots, n_aug, d) -> copy-major, as eval.fewshot tiles the supports
        return {"feature": augmented[chosen].transpose(1, 2).reshape(len(ids), -1, features.shape[1])}

    def queries(ids: range) -> dict[str, torch.Tensor]:
        return {"feature": features[query_index[ids.start:ids.stop]]}

    predictions = solve_episodes(s, supports, queries, embeddings=("feature",), classifiers=classifiers,
                                 device=device, label=f"{split} {s.n_shots}-shot", progress=False)
    digest = hashlib.sha256(json.dumps({"setting": asdict(s), "seed": int(data.get("seed", seed))},
                                       sort_keys=True).encode())
    for key in ("labels", "features", *(["augmented"] if s.n_aug else [])):
        digest.update(np.ascontiguousarray(data[key]))
    return episode_results(predictions, split, s, str(data.get("precision", "fp32")), digest.hexdigest()[:16],
                           int(data["image_size"]) if "image_size" in data else None)
