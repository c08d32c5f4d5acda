"""Runs a training script as `python SCRIPT ARGS...` would, pausing in its STEP-th optimizer step
(counted over every optimizer of the run) until SIGTERM reaches the process from outside:

    python tests/pause_at_step.py STEP SCRIPT ARGS...

On reaching the step it writes the line "paused at step STEP" to stdout, so that a test sends the
signal at a step it knows (a signal sent at whatever step the run had reached could find it between
epochs, or finished). The pause comes after the optimizer update, where tests/sigterm_at_step.py sends
its signal; the signal meets the command's own handler, called as it would be unpaused, and the step
then goes on. Under torchrun each rank pauses at the same step and writes the line."""
from __future__ import annotations

import runpy
import signal
import sys
import time
from pathlib import Path

from torch.optim.optimizer import register_optimizer_step_post_hook

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 600  # a test that never sends the signal fails instead of leaving the run paused for good


def main(step: str, script: str, *args: str) -> None:
    at, seen = int(step), 0

    def pause(optimizer, hook_args, hook_kwargs) -> None:
        nonlocal seen
        seen += 1
        if seen != at:
            return
        command = signal.getsignal(signal.SIGTERM)
        arrived: list[int] = []

        def relay(signum, frame) -> None:
            arrived.append(signum)
            command(signum, frame)

        signal.signal(signal.SIGTERM, relay)
        sys.stdout.flush()  # the command's own lines first: the report is a line of its own
        sys.stdout.write(f"paused at step {at}\n")
        sys.stdout.flush()
        deadline = time.monotonic() + WAIT_S
        while not arrived:
            if time.monotonic() > deadline:
                raise RuntimeError(f"pause_at_step: no SIGTERM within {WAIT_S} s of step {at}")
            time.sleep(0.01)
        signal.signal(signal.SIGTERM, command)

    register_optimizer_step_post_hook(pause)
    sys.argv = [script, *args]
    sys.path[0] = str((REPO / script).resolve().parent)  # as `python SCRIPT` puts the script's folder first
    runpy.run_path(str(REPO / script), run_name="__main__")


if __name__ == "__main__":
    main(*sys.argv[1:])
