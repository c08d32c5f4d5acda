"""Runs a training script as `python SCRIPT ARGS...` would, on one CPU thread, with the disk full for
its SAVE-th checkpoint (counted over every torch.save of the run): that save's file is pointed at
/dev/full, so the write fails with the kernel's own ENOSPC, as on a full disk:

    python tests/enospc_at_save.py SAVE SCRIPT ARGS...

Everything else, the handling of the failure included, is the command's own."""
from __future__ import annotations

import os
import sys

import torch

from sigterm_at_step import main as run_script_as_main


def fill_disk_at(save: int) -> None:
    real_save, seen = torch.save, 0

    def save_onto_a_full_disk(obj, f, *args, **kwargs):
        nonlocal seen
        seen += 1
        if seen == save:
            os.dup2(os.open("/dev/full", os.O_WRONLY), f.fileno())
        return real_save(obj, f, *args, **kwargs)

    torch.save = save_onto_a_full_disk


if __name__ == "__main__":
    fill_disk_at(int(sys.argv[1]))
    run_script_as_main("0", *sys.argv[2:])
