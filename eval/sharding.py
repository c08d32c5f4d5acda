"""Sharing evaluation work over the ranks of a torchrun job (torch.distributed's default process
group). Work is cut into numbered pieces that are the same whatever the number of ranks (batches of
images, chunks of episodes); rank r computes pieces r, r + W, r + 2W, ... and every rank receives
all of them in order, so a sharded evaluation computes exactly what one process computes. With no
process group every helper is the single-process identity."""
from __future__ import annotations

from typing import Callable, TypeVar

import runtime.distributed

T = TypeVar("T")


def world() -> tuple[int, int]:
    """(rank, number of ranks); (0, 1) outside torchrun."""
    info = runtime.distributed.current()
    return info.rank, info.world_size


def is_main() -> bool:
    return world()[0] == 0


def my_pieces(n_pieces: int) -> range:
    rank, size = world()
    return range(rank, n_pieces, size)


def compute_sharded(n_pieces: int, compute: Callable[[int], T]) -> list[T]:
    """[compute(0), ..., compute(n_pieces - 1)], each piece computed by one rank and gathered to all.
    `compute` should return CPU tensors or plain objects (they are pickled between ranks)."""
    mine = {i: compute(i) for i in my_pieces(n_pieces)}
    if world()[1] == 1:
        return [mine[i] for i in range(n_pieces)]
    gathered: list[dict[int, T]] = runtime.distributed.all_gather_objects(mine)
    merged = {i: piece for part in gathered for i, piece in part.items()}
    return [merged[i] for i in range(n_pieces)]
