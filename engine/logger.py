"""The run logger: per-epoch metrics to W&B (whenever it works) and to `log.jsonl` in the run folder."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path


def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def wandb_mode(requested: str) -> str:
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if _wandb_logged_in() else "offline"


class RunLogger:
    """Per-epoch metrics to W&B (when it works) and to `log.jsonl` in the run folder."""

    def __init__(self, folder: Path, args: argparse.Namespace, wandb_id: str | None = None) -> None:
        self.jsonl = folder / "log.jsonl"
        self.wandb_run = self._start_wandb(folder, args, wandb_id)

    @staticmethod
    def _start_wandb(folder: Path, args: argparse.Namespace, wandb_id: str | None):
        mode = wandb_mode(args.wandb)
        if mode == "disabled":
            return None
        try:
            import wandb
        except ImportError:
            print("warning: wandb is not installed; logging to log.jsonl only", file=sys.stderr)
            return None
        project = args.wandb_project or Path(args.model_path).name or "skd"
        config = {k: v for k, v in vars(args).items()}
        for attempt in ([mode, "offline"] if mode == "online" else [mode]):
            try:
                return wandb.init(project=project, tags=args.tags, config=config, dir=str(folder), mode=attempt,
                                  id=wandb_id, resume="allow" if wandb_id else None, reinit="finish_previous")
            except Exception as e:  # W&B must never stop training
                print(f"warning: W&B {attempt} init failed ({type(e).__name__}: {e})", file=sys.stderr)
        print("warning: logging to log.jsonl only", file=sys.stderr)
        return None

    @property
    def wandb_id(self) -> str | None:
        return self.wandb_run.id if self.wandb_run is not None else None

    def log(self, metrics: dict[str, float]) -> None:
        with self.jsonl.open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        if self.wandb_run is not None:
            try:
                self.wandb_run.log(metrics)
            except Exception as e:
                print(f"warning: W&B log failed ({e})", file=sys.stderr)

    def summary(self, metrics: dict[str, float]) -> None:
        if self.wandb_run is not None:
            try:
                self.wandb_run.summary.update(metrics)
            except Exception as e:
                print(f"warning: W&B summary failed ({e})", file=sys.stderr)

    def finish(self) -> None:
        if self.wandb_run is not None:
            with contextlib.suppress(Exception):
                self.wandb_run.finish()
