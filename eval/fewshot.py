"""N-way K-shot evaluation on frozen embeddings (the paper's protocol, see docs/faithfulness.md), with each
image embedded once.

The official loader re-embeds every query in every episode (five times over, on CIFAR); here the
queries of all episodes are embedded once and indexed, and only the augmented supports, which
differ per episode, are embedded per episode, many episodes per forward pass.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from dataset.episodes import sample_episodes
from dataset.imageset import ImageSet
from dataset.transforms import Normalization, crop_flip_batch
from runtime.logger import ProgressLines
from eval import sharding
from eval.classifiers import DEFAULT_CLASSIFIER, classify
from eval.embed import embed
from eval.stats import mean_confidence_interval
from util import precision_name

EMBEDDINGS = ("feature", "logit")
SUPPORT_IMAGES_PER_CHUNK = 2048  # supports embedded (and episodes solved) per batch of episodes


@dataclass(frozen=True)
class EpisodeSetting:
    n_ways: int = 5
    n_shots: int = 1
    n_queries: int = 15
    n_episodes: int = 600
    n_aug: int = 5  # augmented copies of each support image


@dataclass(frozen=True)
class EvalConfig:
    """How a command's evaluations draw and embed their episodes, whatever their shots: `n_episodes` per
    evaluation, the support augmentations seeded by `seed`, `batch_size` images per forward pass."""

    n_ways: int = 5
    n_queries: int = 15
    n_episodes: int = 600
    n_aug: int = 5
    batch_size: int = 256
    seed: int = 0

    def setting(self, shots: int) -> EpisodeSetting:
        return EpisodeSetting(self.n_ways, shots, self.n_queries, self.n_episodes, self.n_aug)


@dataclass
class FewShotResult:
    split: str
    setting: EpisodeSetting
    embedding: str
    classifier: str
    accuracies: np.ndarray  # per episode, in [0, 1]
    predictions: np.ndarray | None = None  # (episodes, queries) predicted episode labels, class-major
    precision: str = "fp32"  # what the network embedded in: fp32, tf32, bf16 or fp16 (util.precision_name)
    fingerprint: str | None = None  # of the episode set: equal fingerprints = identical episodes (episode_fingerprint)
    image_size: int | None = None  # of the evaluated images, part of the protocol a results table compares


    @property
    def mean_ci(self) -> tuple[float, float]:
        return mean_confidence_interval(self.accuracies)

    def to_dict(self) -> dict:
        """The JSON record; `accuracies` (per episode, in [0, 1]) let a results table pool seeds and pair
        methods evaluated on the same episodes (same `fingerprint`)."""
        mean, ci = self.mean_ci
        return {"split": self.split, **asdict(self.setting), "embedding": self.embedding,
                "classifier": self.classifier, "precision": self.precision, "mean": mean,
                "ci95": None if np.isnan(ci) else ci, "image_size": self.image_size, "fingerprint": self.fingerprint,
                "accuracies": [round(float(a), 6) for a in self.accuracies]}

    def line(self) -> str:
        mean, ci = self.mean_ci
        s = self.setting
        return (f"{self.split} {s.n_ways}-way {s.n_shots}-shot {self.embedding:7s} {self.classifier:7s} "
                f"{mean:6.2f} +- {ci:.2f}  ({s.n_episodes} episodes, {self.precision})")

    @property
    def key(self) -> str:
        return f"{self.split}_{self.setting.n_shots}shot_{self.embedding}_{self.classifier}"


def episode_generator(seed: int, episode: int) -> torch.Generator:
    """The support augmentations of one episode: independent of chunking, batch size and device."""
    return torch.Generator().manual_seed(seed * 1_000_003 + episode)


def episode_fingerprint(images: ImageSet, setting: EpisodeSetting, seed: int) -> str:
    """A short sha256 of everything that fixes the episodes and their support augmentations: the split's
    pixels and labels (so the episodes' indices and their images), the episode setting and the
    augmentation seed. Two evaluations with equal fingerprints saw identical episodes, episode by
    episode, so their accuracies can be compared pairwise."""
    digest = hashlib.sha256(json.dumps({"setting": asdict(setting), "seed": seed, "shape": images.images.shape,
                                        "dtype": str(images.images.dtype)}, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(images.labels, dtype=np.int64))
    digest.update(np.ascontiguousarray(images.images))  # hashed in place: no copy of a contiguous split
    return digest.hexdigest()[:16]


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def evaluate(model: nn.Module, images: ImageSet, split: str, setting: EpisodeSetting, norm: Normalization,
             device: torch.device, *, classifiers: tuple[str, ...] = (DEFAULT_CLASSIFIER,),
             embeddings: tuple[str, ...] = ("feature",), batch_size: int = 256, seed: int = 0, amp: str = "off",
             progress: bool = True) -> list[FewShotResult]:
    """Accuracy per episode for every (embedding, classifier) pair, on the official episodes; the
    network embeds under `amp` (off, bf16, fp16), recorded in each result.

    Under torchrun every rank calls this and the work is shared out (eval.sharding): the query
    images by embedding batch, the episodes by chunk; every rank returns the full results, equal
    episode for episode to a single process's."""
    s = setting
    episodes = sample_episodes(images.class_indices(), s.n_episodes, s.n_ways, s.n_shots, s.n_queries, images.source)
    pixels = torch.from_numpy(images.images)

    # Queries: the union over all episodes, embedded once, un-augmented.
    query_index = np.stack([e.query.reshape(-1) for e in episodes])  # (E, n_ways * n_queries), class-major
    unique, inverse = np.unique(query_index, return_inverse=True)
    inverse = torch.from_numpy(inverse.reshape(query_index.shape)).to(device)
    query_embeddings = dict(zip(EMBEDDINGS, _embed_sharded(model, pixels[unique], norm, device, batch_size, amp)))

    # Supports: each image repeated n_aug times (the official np.tile order), freshly augmented.
    support_index = np.tile(np.stack([e.support.reshape(-1) for e in episodes]), (1, s.n_aug))
    padding = images.profile.crop_padding

    def supports(ids: range) -> dict[str, torch.Tensor]:
        augmented = torch.cat([crop_flip_batch(pixels[support_index[i]], padding, episode_generator(seed, i))
                               for i in ids])
        embedded = dict(zip(EMBEDDINGS, embed(model, augmented, norm, device, batch_size, amp)))
        return {emb: embedded[emb].view(len(ids), support_index.shape[1], -1) for emb in embeddings}

    def queries(ids: range) -> dict[str, torch.Tensor]:
        return {emb: query_embeddings[emb][inverse[ids.start:ids.stop]] for emb in embeddings}

    predictions = solve_episodes(setting, supports, queries, embeddings=embeddings, classifiers=classifiers,
                                 device=device, label=f"{split} {s.n_shots}-shot", progress=progress)
    return episode_results(predictions, split, setting, precision_name(device, amp),
                           episode_fingerprint(images, setting, seed), images.image_size)


Embedded = Callable[[range], dict[str, torch.Tensor]]  # episodes -> (episodes, vectors, d) per embedding


def solve_episodes(setting: EpisodeSetting, supports: Embedded, queries: Embedded, *, embeddings: tuple[str, ...],
                   classifiers: tuple[str, ...], device: torch.device, label: str,
                   progress: bool = True) -> dict[tuple[str, str], torch.Tensor]:
    """Every episode's query predictions by each (embedding, classifier), the episodes taken in chunks of
    about SUPPORT_IMAGES_PER_CHUNK support vectors (shared out over the ranks under torchrun).
    `supports(ids)`: the chunk's support vectors, every support image's n_aug copies copy-major (the
    official np.tile order); `queries(ids)`: its query vectors, class-major. Both are L2-normalised here."""
    s = setting
    n_support = s.n_ways * s.n_shots * max(s.n_aug, 1)
    support_labels = torch.arange(s.n_ways, device=device).repeat_interleave(s.n_shots).repeat(max(s.n_aug, 1))
    per_chunk = max(1, SUPPORT_IMAGES_PER_CHUNK // n_support)
    starts = range(0, s.n_episodes, per_chunk)
    bar = tqdm(total=len(sharding.my_pieces(len(starts))), desc=label, leave=False,
               disable=None if progress and sharding.is_main() else True)
    lines = ProgressLines(progress and sharding.is_main())

    def predict_chunk(chunk: int) -> dict[tuple[str, str], torch.Tensor]:
        ids = range(starts[chunk], min(starts[chunk] + per_chunk, s.n_episodes))
        support_vectors, query_vectors = supports(ids), queries(ids)
        out = {}
        for emb in embeddings:
            support, query = l2_normalize(support_vectors[emb]), l2_normalize(query_vectors[emb])
            for clf in classifiers:
                out[(emb, clf)] = classify(clf, support, support_labels.expand(len(ids), -1), query, s.n_ways).cpu()
        bar.update()
        lines(f"{label}: episodes {ids.stop}/{s.n_episodes}")
        return out

    chunks = sharding.compute_sharded(len(starts), predict_chunk)
    bar.close()
    return {key: torch.cat([chunk[key] for chunk in chunks]) for key in chunks[0]}


def episode_results(predictions: dict[tuple[str, str], torch.Tensor], split: str, setting: EpisodeSetting,
                    precision: str, fingerprint: str, image_size: int | None) -> list[FewShotResult]:
    """solve_episodes' predictions as one FewShotResult per (embedding, classifier), accuracies per episode."""
    query_labels = torch.arange(setting.n_ways).repeat_interleave(setting.n_queries)
    return [FewShotResult(split, setting, emb, clf, (found == query_labels).double().mean(1).numpy(),
                          found.numpy().astype(np.int8), precision, fingerprint, image_size)
            for (emb, clf), found in predictions.items()]


def _embed_sharded(model: nn.Module, pixels: torch.Tensor, norm: Normalization, device: torch.device,
                   batch_size: int, amp: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`embed` of every image, its forward batches shared out over the ranks under torchrun (the
    same batches as one process runs, so the same numbers), gathered on every rank."""
    def embed_batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        features, logits = embed(model, pixels[i * batch_size:(i + 1) * batch_size], norm, device, batch_size, amp)
        return features.cpu(), logits.cpu()

    if sharding.world()[1] == 1:
        return embed(model, pixels, norm, device, batch_size, amp)
    pieces = sharding.compute_sharded(-(-len(pixels) // batch_size), embed_batch)
    return (torch.cat([f for f, _ in pieces]).to(device), torch.cat([g for _, g in pieces]).to(device))
