"""Pre-emption: SIGTERM (what SLURM and Kubernetes send before SIGKILL) or SIGINT (Ctrl-C) during
training lets the current step finish, then the loop writes a mid-epoch checkpoint and stops; a
second SIGINT stops at once. A resumed run continues from that exact step, bit for bit.

The mid-epoch checkpoint is the usual checkpoint ("epoch" still counts completed epochs, so every
reader of it stays correct) plus a "partial" entry: the epoch in progress, the steps done in it,
every rank's RNG states (torch, CUDA, numpy, python) and its running metric sums. The data order
needs no state: it is a pure function of (seed, epoch) (dataset.loaders.EpochSampler).
"""
from __future__ import annotations

import random
import signal
from types import FrameType

import numpy as np
import torch

from engine import distributed


class StopRequest:
    """Within `with StopRequest() as stop:`, SIGTERM and SIGINT set a flag instead of killing the
    process; `stop.requested()` says whether any rank received one (all ranks agree, so they stop
    at the same step). The previous handlers are restored on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: stop now, without the checkpoint
        # Only a flag: printing here could re-enter a print the signal interrupted.
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> StopRequest:
        try:
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        except ValueError:  # not the main thread (e.g. a test runner's worker): signals stay as they are
            self._previous = {}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def requested(self) -> bool:
        if not distributed.current().enabled:  # one process: the flag itself, no tensor per step
            return self.signal_name is not None
        flag = distributed.all_reduce_sum(torch.tensor(1.0 if self.signal_name else 0.0))
        if flag.item() and self.signal_name is None:
            self.signal_name = "SIGTERM (on another rank)"
        return bool(flag.item())


def rng_state() -> dict:
    """Every random stream training draws from, in a form torch.load(weights_only=True) reads back."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
