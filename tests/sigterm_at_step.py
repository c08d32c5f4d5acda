"""Runs a training script as `python SCRIPT ARGS...` would, on one CPU thread, sending SIGTERM to its
own process during its STEP-th optimizer step (counted over every optimizer of the run, so also over a
phase that trains before the student's, such as SSKD's teacher head; 0: no signal):

    python tests/sigterm_at_step.py STEP SCRIPT ARGS...

The signal lands after the optimizer update, as one from a cluster scheduler may land at any point of
a step; the command must then finish that step, write a checkpoint and exit 143. What the signal meets
is the command's own handling: nothing of it is replaced. tests/test_resume_every_method.py runs this
through tests/conftest.py's run_script (a fork of the warm interpreter)."""
from __future__ import annotations

import os
import runpy
import signal
import sys
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

REPO = Path(__file__).resolve().parents[1]


def main(step: str, script: str, *args: str) -> None:
    at, seen = int(step), 0

    def count(optimizer, hook_args, hook_kwargs) -> None:
        nonlocal seen
        seen += 1
        if seen == at:
            os.kill(os.getpid(), signal.SIGTERM)

    torch.set_num_threads(1)
    if at > 0:
        register_optimizer_step_post_hook(count)
    sys.argv = [script, *args]
    sys.path[0] = str((REPO / script).resolve().parent)  # as `python SCRIPT` puts the script's folder first
    runpy.run_path(str(REPO / script), run_name="__main__")


if __name__ == "__main__":
    main(*sys.argv[1:])
