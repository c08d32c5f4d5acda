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

from runtime import distributed
from util import cuda_usable


class StopRequest:
    """Within `with StopRequest(interval) as stop:`, SIGTERM and SIGINT set a flag instead of killing
    the process; `stop.requested(step)` says whether any rank received one (all ranks agree, so they
    stop at the same step). One process reads its own flag at every step, for free. Under torchrun
    the ranks agree through an all-reduce, which waits for the GPU, so they compare flags only at
    every `interval`-th step (and whenever `step` is None, at an epoch's end): a signal then stops
    training within `interval` steps (--log_interval, 20 by default). The previous handlers are
    restored on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, interval: int = 1) -> None:
        self.signal_name: str | None = None
        self.interval = max(int(interval), 1)
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

    def requested(self, step: int | None = None) -> bool:
        if not distributed.current().enabled:  # one process: the flag itself, no tensor per step
            return self.signal_name is not None
        if step is not None and step % self.interval:
            return False
        flag = torch.tensor(1.0 if self.signal_name else 0.0, device=distributed.group_device())
        stop = bool(distributed.all_reduce_sum(flag).item())
        if stop and self.signal_name is None:
            self.signal_name = "SIGTERM (on another rank)"
        return stop


def rng_state() -> dict:
    """Every random stream training draws from, in a form torch.load(weights_only=True) reads back."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
             "python": random.getstate()}
    if cuda_usable() and torch.cuda.is_initialized():
        # The training GPU's stream only (torch.cuda.set_device selects it), so that a run resumes on
        # a node that shows fewer GPUs.
        state["cuda"] = [torch.cuda.get_rng_state()]
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and cuda_usable():
        # Checkpoints before the fix hold every visible GPU's stream: take the training GPU's if it
        # is there, else the first.
        states = state["cuda"]
        index = torch.cuda.current_device()
        torch.cuda.set_rng_state(states[index] if index < len(states) else states[0])
