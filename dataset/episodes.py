"""The official episode sampler (see docs/faithfulness.md), reproduced with a per-episode RandomState.

The official code calls `np.random.seed(i)` and then the global `np.random.choice`; a
`np.random.RandomState(i)` issues the same draws without touching global state.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dataset.errors import DataError


@dataclass(frozen=True)
class Episode:
    classes: np.ndarray  # (n_ways,) class ids, in the order they were drawn (= episode labels 0..n_ways-1)
    support: np.ndarray  # (n_ways, n_shots) indices into the split's ImageSet
    query: np.ndarray  # (n_ways, n_queries) indices into the split's ImageSet


def sample_episode(class_indices: list[np.ndarray], index: int, n_ways: int, n_shots: int, n_queries: int) -> Episode:
    """Episode `index`: the same classes, supports and queries as the official loaders."""
    rng = np.random.RandomState(index)
    classes = rng.choice(len(class_indices), n_ways, replace=False)
    support, query = [], []
    for c in classes:
        members = class_indices[c]
        shots = rng.choice(len(members), n_shots, replace=False)
        rest = np.setxor1d(np.arange(len(members)), shots)
        queries = rng.choice(rest, n_queries, replace=False)
        support.append(members[shots])
        query.append(members[queries])
    return Episode(classes, np.stack(support), np.stack(query))


def check_episode_feasible(class_indices: list[np.ndarray], n_ways: int, n_shots: int, n_queries: int,
                           source: str) -> None:
    if n_ways > len(class_indices):
        raise DataError(f"{source}: {n_ways}-way episodes need {n_ways} classes, "
                        f"the split has {len(class_indices)}")
    smallest = min(len(m) for m in class_indices)
    if smallest < n_shots + n_queries:
        raise DataError(f"{source}: a class has {smallest} images, "
                        f"episodes need n_shots + n_queries = {n_shots + n_queries}")


def sample_episodes(class_indices: list[np.ndarray], n_episodes: int, n_ways: int, n_shots: int, n_queries: int,
                    source: str = "split") -> list[Episode]:
    check_episode_feasible(class_indices, n_ways, n_shots, n_queries, source)
    return [sample_episode(class_indices, i, n_ways, n_shots, n_queries) for i in range(n_episodes)]
