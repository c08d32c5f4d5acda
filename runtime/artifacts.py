"""A checkpoint named by its W&B artifact (`entity/project/model-<run>:alias`, or `project/name:alias`): fetched
once into a cache folder (SKD_ARTIFACT_CACHE, default ~/.cache/skd/artifacts), one folder per artifact digest,
each file checked against the artifact's manifest before the folder is used, so that a half-downloaded or
altered copy is never read. Needs W&B online (its API); the training and evaluation commands call it for a
--path_t or --model_path that is not a file or folder here but reads as an artifact reference."""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from runtime.logger import ARTIFACT_RECORD
from util import UsageError

# [entity/][project/]name:alias, the characters W&B allows in each part; a path on disk never has the colon.
REFERENCE = re.compile(r"^(?:[\w.-]+/){0,2}[\w.-]+:[\w.-]+$")


def is_reference(given: str) -> bool:
    return bool(REFERENCE.match(given)) and not Path(given).exists()


def cache_root() -> Path:
    return Path(os.environ.get("SKD_ARTIFACT_CACHE") or Path.home() / ".cache" / "skd" / "artifacts")


def fetch_checkpoint(reference: str, flag: str, names: tuple[str, ...]) -> Path:
    """The checkpoint file of the artifact `reference` (the first of `names`, a run folder's checkpoint file names,
    that it holds), from the cache or downloaded into it and verified."""
    try:
        import wandb
    except ImportError:
        raise UsageError(f"{flag} {reference}: a W&B artifact reference, but wandb is not installed "
                         f"(pip install wandb)") from None
    try:
        artifact = wandb.Api().artifact(reference, type="model")
        digest = artifact.digest
    except Exception as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(f"{flag} {reference}: W&B cannot give this artifact ({why}); `wandb login`, or give the "
                         f"checkpoint file") from None
    folder = cache_root() / digest
    if not folder.is_dir():
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{digest}.", dir=folder.parent))
        try:
            artifact.download(root=str(staging))
            artifact.verify(root=str(staging))
        except Exception as e:
            shutil.rmtree(staging, ignore_errors=True)
            raise UsageError(f"{flag} {reference}: the download does not match the artifact's manifest ({e}); "
                             f"nothing was kept in {folder.parent}") from None
        # Its reference beside each file, as a training run writes it: the runs that read them declare it.
        names = [p.name for p in staging.iterdir() if p.is_file()]
        (staging / ARTIFACT_RECORD).write_text(json.dumps({n: artifact.qualified_name for n in names}, indent=2))
        try:
            os.rename(staging, folder)  # whole or not at all; another process may have put it there first
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    found = [folder / name for name in names if (folder / name).is_file()]
    if not found:
        raise UsageError(f"{flag} {reference}: the artifact holds no {' or '.join(names)} ({folder})")
    print(f"{flag} {reference}: {found[0]} (W&B artifact {digest[:12]}, verified)")
    return found[0]
