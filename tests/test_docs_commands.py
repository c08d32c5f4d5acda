"""docs/own-images.md's commands, run as written: every ```bash block of the page, in page order, each in one
bash (-e: a command that fails fails the test), in a scratch folder, on the real Omniglot sample.

What the test changes, and only that:
- `python SCRIPT.py` runs the repository's SCRIPT.py (the page's commands run from the repository root; the
  test runs them in a scratch folder, with the repository on PYTHONPATH for `python -m`).
- The page's placeholders: `RUN`, which the page defines as the run folder its training command prints
  (`checkpoint: RUN/checkpoint.pth`), and `CKPT`, the checkpoint the BSCD-FSL blocks evaluate (`RUN/checkpoint.pth`).
- Scale, so that the page runs in minutes on a CPU: the training commands get `--epochs 1 --lr_decay_epochs 1
  --no_final_eval` appended, the evaluations `--n_test_runs 5` (the last value of a flag is the one used).
- `--download` finds the sample in a cache folder of the test's (XDG_CACHE_HOME), as a second run would.
- The BSCD-FSL data sets, which this project does not have, are stand-ins: at each `--data_root` a BSCD block
  names, 5 classes of 65 generated images, enough for the preset's 50 shots and 15 queries.
The page's paths are kept: a block that names a folder no earlier block made fails.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import OMNIGLOT_ZIP, REPO

PAGE = REPO / "docs" / "own-images.md"
SPEED = {"train_supervised_ssl.py": "--epochs 1 --lr_decay_epochs 1 --no_final_eval",
         "train_distillation.py": "--epochs 1 --lr_decay_epochs 1 --no_final_eval",
         "eval_fewshot.py": "--n_test_runs 5"}


def bash_blocks(page: Path) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", page.read_text(), flags=re.S | re.M)


def scaled(block: str, run: str | None) -> str:
    """The block with the test's substitutions (the module docstring lists them)."""
    lines = []
    for line in block.splitlines():
        command, hash_, comment = line.partition("  #")  # the page's comments follow two spaces
        script = re.search(r"\bpython (\w+\.py)\b", command)
        if script:
            command = command.replace(f"python {script[1]}", f"python {REPO / script[1]}")
            command = f"{command.rstrip()} {SPEED.get(script[1], '')}".rstrip()
        if run is not None:
            command = re.sub(r"\bCKPT\b", f"{run}/checkpoint.pth", re.sub(r"\bRUN\b", run, command))
        lines.append(command + hash_ + comment)
    return "\n".join(lines)


def stand_in(folder: Path, classes: int = 5, per_class: int = 65) -> None:
    rng = np.random.RandomState(0)
    for c in range(classes):
        (folder / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(40 * c, 30, (36, 36, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"class{c}" / f"{i}.png")


def environment(tmp_path: Path) -> dict:
    cache = tmp_path / "cache" / "skd" / "omniglot"
    cache.mkdir(parents=True)
    shutil.copy(OMNIGLOT_ZIP, cache / "images_background_small1.zip")
    bin_dir = tmp_path / "bin"  # `python` is this interpreter, whatever PATH holds
    bin_dir.mkdir()
    # A wrapper, not a symlink: a venv's python finds its pyvenv.cfg (and so its packages) only beside the path
    # it is started by.
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO),
            "XDG_CACHE_HOME": str(tmp_path / "cache"), "WANDB_MODE": "disabled"}


@pytest.mark.slow
def test_own_images_page_runs_as_written(tmp_path):
    if not OMNIGLOT_ZIP.is_file():
        pytest.skip("the Omniglot sample is not here (SKD_OMNIGLOT_ZIP, or `python -m dataset.prepare omniglot "
                    "--download`)")
    for package in ("matplotlib", "onnx", "onnxruntime"):  # the page's plot and export blocks
        pytest.importorskip(package)
    env = environment(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    run = None
    blocks = bash_blocks(PAGE)
    assert "train_supervised_ssl.py" in blocks[0]
    for number, block in enumerate(blocks, start=1):
        script = scaled(block, run)
        if "CKPT" in block:
            for root in re.findall(r"--data_root (\S+)", block):
                stand_in(work / root)
        done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=work, env=env,
                              capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, f"block {number} of {PAGE.name}:\n{script}\n{done.stdout[-2000:]}" \
                                     f"{done.stderr[-3000:]}"
        printed = re.search(r"^checkpoint: (\S+)/checkpoint\.pth$", done.stdout, flags=re.M)
        run = printed[1] if printed else run
        assert run is not None, f"block {number}: the page's first block should train and print the checkpoint"
        for output in re.findall(r"--(?:out|output) (\S+)", script):
            assert list((work / output).parent.glob(Path(output).name + "*")), f"block {number}: no {output}"
