"""The end-of-training report: val and test, 1 and 5 shots, features and logits (as the official
scripts end), printed, written to results.json and put in the W&B summary."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import torch
from torch import nn

from dataset.episodes import sample_episodes
from dataset.imageset import ImageSet
from dataset.transforms import Normalization, crop_flip_batch
from eval import sharding
from eval.classifiers import DEFAULT_CLASSIFIER, classify
from eval.embed import embed
from eval.fewshot import EMBEDDINGS, EpisodeSetting, EvalConfig, FewShotResult, evaluate, l2_normalize
from util import atomic_write

REPORT_SHOTS = (1, 5)
SHORT_RUNS = 100  # the --n_test_runs a CPU run is offered to shorten its report to (interval ~2.4x as wide)
PROBE_IMAGES = 32  # images embedded to time the network
PROBE_EPISODES = 16  # episodes classified to time a classifier, in one batch as evaluate() batches them

T = TypeVar("T")
Planned = tuple[str, ImageSet, EpisodeSetting]  # one evaluate() call: split name, its images, the episodes


def write_results(results: list[FewShotResult], path: Path, extra: dict | None = None, *,
                  source_domain: str | None = None, target_domain: str | None = None) -> None:
    """results.json, written atomically. `source_domain`: what the network was trained on; `target_domain`:
    what its episodes came from (a dataset's name, or a folder dataset's folder name); top-level keys
    when given, so that a table tells a cross-domain result from an in-domain one."""
    domains = {k: v for k, v in (("source_domain", source_domain), ("target_domain", target_domain)) if v is not None}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps({**(extra or {}), **domains, "results": [r.to_dict() for r in results]}, indent=2)
                       + "\n")


def summary_metrics(results: list[FewShotResult]) -> dict[str, float | str]:
    out = {}
    for r in results:
        mean, ci = r.mean_ci
        out[f"fewshot/{r.key}_acc"] = mean
        out[f"fewshot/{r.key}_ci95"] = ci
        out[f"fewshot/{r.key}_precision"] = r.precision
    return out


@dataclass(frozen=True)
class EvaluationCost:
    """What evaluate() costs on this device, measured on a probe: seconds per image embedded (augmented
    as supports are) and per episode classified, by episode shape (n_episodes set to 0)."""
    per_image: float
    per_episode: dict[EpisodeSetting, float]

    def seconds(self, planned: list[Planned]) -> float:
        """Projected seconds of `planned`, its work shared over the torchrun ranks as evaluate() shares it."""
        total = sum(self.per_image * images_embedded(images, s) + self.per_episode[replace(s, n_episodes=0)]
                    * s.n_episodes for _, images, s in planned)
        return total / sharding.world()[1]


def images_embedded(images: ImageSet, s: EpisodeSetting) -> int:
    """Images one evaluate() call embeds: its episodes' queries once (their union), each support n_aug times."""
    episodes = sample_episodes(images.class_indices(), s.n_episodes, s.n_ways, s.n_shots, s.n_queries, images.source)
    queries = np.unique(np.concatenate([e.query.reshape(-1) for e in episodes]))
    return len(queries) + s.n_episodes * s.n_ways * s.n_shots * s.n_aug


def measure_cost(planned: list[Planned], model: nn.Module, norm: Normalization, device: torch.device, *,
                 batch_size: int, amp: str, classifiers: tuple[str, ...],
                 embeddings: tuple[str, ...]) -> EvaluationCost:
    """Time PROBE_IMAGES images of the first split through augmentation and the network, then
    `classifiers` on PROBE_EPISODES episodes of each shape drawn from their embeddings: seconds on a
    CPU, against minutes for the evaluations themselves. Each is run once untimed first: a first call
    pays one-off set-up costs (kernels chosen, memory allocated) several times the steady one."""
    pixels = torch.from_numpy(planned[0][1].images[:PROBE_IMAGES])

    def embed_probe() -> dict[str, torch.Tensor]:
        augmented = crop_flip_batch(pixels, planned[0][1].profile.crop_padding, torch.Generator().manual_seed(0))
        return dict(zip(EMBEDDINGS, embed(model, augmented, norm, device, batch_size, amp)))

    per_image, embedded = timed(embed_probe)
    per_episode = {}
    for shape in {replace(s, n_episodes=0) for _, _, s in planned}:
        n_support = shape.n_ways * shape.n_shots * shape.n_aug
        labels = torch.arange(shape.n_ways, device=device).repeat_interleave(shape.n_shots).repeat(shape.n_aug)
        pick = torch.randint(len(pixels), (PROBE_EPISODES, n_support + shape.n_ways * shape.n_queries),
                             generator=torch.Generator().manual_seed(0)).to(device)
        # Random probe vectors: the cost follows the episode's shapes far more than its values.
        episodes = [l2_normalize(embedded[name][pick]) for name in embeddings]
        per_episode[shape] = timed(partial(classify_probe, episodes, labels.expand(PROBE_EPISODES, -1), n_support,
                                           shape.n_ways, classifiers))[0] / PROBE_EPISODES
    return EvaluationCost(per_image / len(pixels), per_episode)


def classify_probe(episodes: list[torch.Tensor], labels: torch.Tensor, n_support: int, n_ways: int,
                   classifiers: tuple[str, ...]) -> None:
    """Fit every classifier to every batch of probe episodes (supports first along dim 1, then queries)."""
    for vectors in episodes:
        for clf in classifiers:
            classify(clf, vectors[:, :n_support], labels, vectors[:, n_support:], n_ways)


def timed(work: Callable[[], T]) -> tuple[float, T]:
    """Seconds of a second call of `work` (the first, untimed, warms up), and its result."""
    work()
    start = time.perf_counter()
    result = work()
    return time.perf_counter() - start, result


def duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def projection(cost: EvaluationCost, planned: list[Planned]) -> str:
    """'about T on this CPU' for `planned`, and above SHORT_RUNS episodes what --n_test_runs SHORT_RUNS takes."""
    text = f"about {duration(cost.seconds(planned))} on this CPU"
    if planned[0][2].n_episodes <= SHORT_RUNS:
        return text
    shorter = [(split, images, replace(s, n_episodes=SHORT_RUNS)) for split, images, s in planned]
    return (f"{text}; shorten it with --n_test_runs {SHORT_RUNS} (about {duration(cost.seconds(shorter))}, "
            f"wider intervals)")


def report_projection(planned: list[Planned], model: nn.Module, norm: Normalization, device: torch.device,
                      batch_size: int, amp: str) -> str:
    """The line a run on a CPU prints before its final report (minutes there, unannounced otherwise):
    its size, its projected time, and the two ways to shorten it."""
    cost = measure_cost(planned, model, norm, device, batch_size=batch_size, amp=amp,
                        classifiers=(DEFAULT_CLASSIFIER,), embeddings=EMBEDDINGS)
    episodes = planned[0][2].n_episodes
    splits = " and ".join(dict.fromkeys(split for split, _, _ in planned))
    return (f"final report: {len(planned)} evaluations ({splits} x {' and '.join(map(str, REPORT_SHOTS))} shots) "
            f"x {episodes} episodes, {projection(cost, planned)}{' or' if episodes > SHORT_RUNS else ';'} skip it "
            f"with --no_final_eval and run eval_fewshot.py on the checkpoint later")


def evaluation_projection(planned: list[Planned], model: nn.Module, norm: Normalization, device: torch.device,
                          episodes: EvalConfig, amp: str, *, classifiers: tuple[str, ...],
                          embeddings: tuple[str, ...]) -> str:
    """The line eval_fewshot.py prints on a CPU before its evaluations: their size and projected time."""
    cost = measure_cost(planned, model, norm, device, batch_size=episodes.batch_size, amp=amp, classifiers=classifiers,
                        embeddings=embeddings)
    shots = "/".join(str(s.n_shots) for _, _, s in planned)
    return (f"evaluation: {len(planned)} x {planned[0][2].n_episodes} episodes ({planned[0][0]}, {shots}-shot), "
            f"{projection(cost, planned)}")


def run_evaluations(planned: list[Planned], model: nn.Module, norm: Normalization, device: torch.device,
                    episodes: EvalConfig, amp: str, *, classifiers: tuple[str, ...],
                    embeddings: tuple[str, ...]) -> list[FewShotResult]:
    """Each planned evaluation's results, each printed as it is done."""
    results = []
    for split, images, setting in planned:
        for result in evaluate(model, images, split, setting, norm, device, classifiers=classifiers,
                               embeddings=embeddings, batch_size=episodes.batch_size, seed=episodes.seed, amp=amp):
            print(result.line(), flush=True)
            results.append(result)
    return results


def final_report(model: nn.Module, splits: dict[str, ImageSet], norm: Normalization, device: torch.device,
                 episodes: EvalConfig, amp: str = "off", *, logger=None, output: Path | None = None,
                 extra: dict | None = None) -> list[FewShotResult]:
    """Evaluate on every split given (val, test), 1 and 5 shots, with features and logits, embedding
    under `amp` (recorded in every result and printed beside every accuracy); print each line, write
    `output` (results.json, with `extra`) and the W&B summary of `logger` when given."""
    planned: list[Planned] = [(split, images, episodes.setting(shots)) for split, images in splits.items()
                              for shots in REPORT_SHOTS]
    if device.type == "cpu" and sharding.is_main():
        print(report_projection(planned, model, norm, device, episodes.batch_size, amp), flush=True)
    results = run_evaluations(planned, model, norm, device, episodes, amp, classifiers=(DEFAULT_CLASSIFIER,),
                              embeddings=EMBEDDINGS)
    if output is not None:
        write_results(results, output, extra)
        print(f"results: {output}")
    if logger is not None:
        logger.summary(summary_metrics(results))
    return results
