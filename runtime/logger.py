"""The run logger: per-epoch metrics to W&B (whenever it works) and to `log.jsonl` in the run folder."""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

LOG_NAME = "log.jsonl"  # the run folder's per-epoch JSON lines
# Beside a run's checkpoints once they are W&B artifacts: {file name: artifact reference}, what a student or an
# evaluation of one of them declares as its input.
ARTIFACT_RECORD = "wandb_artifact.json"


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
    """Per-epoch metrics to W&B (when it works) and to a JSON-lines file (when given).

    `run_id` resumes that W&B run (a training run continued by --resume); evaluation never passes
    one, it opens a run of its own (job type eval) in the training run's group.

    Metrics are defined as they first appear (W&B's define_metric): a record's `epoch` (or a phase's
    `<phase>_epoch`) is the x-axis of every other key of the record; a summary keeps an accuracy's maximum
    (the training loop adds `best_val_acc_epoch`, kept across --resume), a loss term's (`train_*`) minimum,
    anything else its last value.
    """

    def __init__(self, jsonl: Path | None, *, mode: str, project: str, config: dict, wandb_dir: Path,
                 tags: list[str] | tuple[str, ...] = (), run_id: str | None = None, group: str | None = None,
                 job_type: str | None = None, name: str | None = None) -> None:
        self.jsonl = jsonl
        self.wandb_run = self._start_wandb(mode, project, config, wandb_dir, tags=list(tags), run_id=run_id,
                                           group=group, job_type=job_type, name=name)
        # Kept if W&B fails later, so that a resumed run continues the same W&B run.
        self.wandb_id = getattr(self.wandb_run, "id", None)
        self.defined: set[str] = set()

    @staticmethod
    def _start_wandb(requested: str, project: str, config: dict, wandb_dir: Path, *, tags: list[str],
                     run_id: str | None, group: str | None, job_type: str | None, name: str | None):
        mode = wandb_mode(requested)
        if mode == "disabled":
            return None
        try:
            import wandb
        except ImportError:
            print("warning: wandb is not installed; logging to log.jsonl only", file=sys.stderr)
            return None
        wandb_dir.mkdir(parents=True, exist_ok=True)
        sync = f"upload later with: wandb sync {wandb_dir / 'wandb'}/offline-run-*"
        if mode == "offline" and requested == "auto":
            print(f"W&B: not logged in, logging offline to {wandb_dir / 'wandb'}; {sync}", file=sys.stderr)
        failure = None
        for attempt in ([mode, "offline"] if mode == "online" else [mode]):
            try:
                # A short init timeout: an unreachable server must not stall the run for minutes.
                # silent: W&B's own dozen lines of start-up and shutdown chatter go; the one line below says
                # where the run is (WANDB_SILENT=false brings them back).
                silent = os.environ.get("WANDB_SILENT", "true").lower() != "false"
                run = wandb.init(project=project, tags=tags, config=config, dir=str(wandb_dir), mode=attempt,
                                 id=run_id, resume="allow" if run_id else None, group=group, job_type=job_type,
                                 name=name, reinit="finish_previous",
                                 settings=wandb.Settings(init_timeout=30, silent=silent))
            except Exception as e:  # W&B must never stop training
                failure = failure or f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                continue
            if attempt != mode:
                print(f"W&B: online failed ({failure}); fell back to offline in {wandb_dir / 'wandb'}; {sync}",
                      file=sys.stderr)
            elif attempt == "online":
                print(f"W&B: {getattr(run, 'url', None) or project}")
            return run
        print(f"W&B: off for this run ({failure}); metrics go to the console and log.jsonl only", file=sys.stderr)
        return None

    def log(self, metrics: dict[str, float]) -> None:
        if self.jsonl is not None:
            with self.jsonl.open("a") as f:
                f.write(json.dumps(metrics) + "\n")
        if self.wandb_run is not None:
            try:
                self._define(metrics)
                self.wandb_run.log(metrics)
            except Exception as e:
                self._give_up(e)

    def _define(self, metrics: dict[str, float]) -> None:
        """Define the record's keys not defined yet against its epoch key (a record without one: W&B's step)."""
        axis = next((k for k in metrics if k == "epoch" or k.endswith("_epoch")), None)
        if axis is None:
            return
        if axis not in self.defined:
            self.wandb_run.define_metric(axis)
            self.defined.add(axis)
        for key, value in metrics.items():
            if key in self.defined or not isinstance(value, (int, float)):
                continue
            name = key.removeprefix(axis.removesuffix("epoch"))  # a phase's keys carry its prefix
            summary = "max" if "acc" in name else "min" if name.startswith("train_") else "last"
            self.wandb_run.define_metric(key, step_metric=axis, summary=summary)
            self.defined.add(key)

    def log_model(self, path: Path, name: str, aliases: list[str], metadata: dict) -> str | None:
        """`path` as a version of the artifact `name` (type model) with `aliases`; returns its reference
        (entity/project/name:vN once W&B knows it, else name:alias), or None without W&B or when it fails
        (one line, training goes on)."""
        if self.wandb_run is None:
            return None
        try:
            import wandb

            artifact = wandb.Artifact(name, type="model", metadata=metadata)
            # Immutable: W&B reads the file where it is (a finished checkpoint) instead of copying it to its staging
            # folder in the home directory, which offline runs on a cluster would fill until `wandb sync`.
            artifact.add_file(str(path), name=path.name, policy="immutable")
            logged = self.wandb_run.log_artifact(artifact, aliases=aliases)
            with contextlib.suppress(Exception):  # online: wait for the version; offline it is known at sync
                if self.wandb_run.settings.mode == "online":
                    logged.wait()
                    return logged.qualified_name
            return f"{name}:{aliases[0]}"
        except Exception as e:
            print(f"W&B: could not log {path} as an artifact ({type(e).__name__}: {e}); the file stays in the "
                  f"run folder", file=sys.stderr)
            return None

    def log_code(self, root: Path, files: list[Path]) -> None:
        """`files` (under `root`) as the run's code artifact (type code; W&B keeps one version per distinct
        content), as the release saved its *.py with each run."""
        if self.wandb_run is None:
            return
        try:
            import wandb

            artifact = wandb.Artifact("source", type="code")
            for path in files:
                artifact.add_file(str(path), name=path.relative_to(root).as_posix())
            self.wandb_run.log_artifact(artifact)
        except Exception as e:
            print(f"W&B: the code was not saved with the run ({type(e).__name__}: {e})", file=sys.stderr)

    def use_model(self, reference: str, role: str) -> None:
        """Declare the artifact `reference` an input of this run (W&B's lineage: teacher -> student, checkpoint
        -> evaluation). Offline, where W&B cannot resolve artifacts, it goes into the config as `<role>_artifact`
        instead; a reference W&B cannot resolve online (another project) costs one line."""
        if self.wandb_run is None:
            return
        if getattr(self.wandb_run, "offline", False):
            with contextlib.suppress(Exception):
                self.wandb_run.config.update({f"{role}_artifact": reference}, allow_val_change=True)
            return
        try:
            self.wandb_run.use_artifact(reference, type="model")
        except Exception as e:
            why = str(e).splitlines()[0] if str(e) else ""
            print(f"W&B: lineage to {reference} not recorded ({type(e).__name__}: {why})", file=sys.stderr)

    def summary(self, metrics: dict[str, float]) -> None:
        if self.wandb_run is not None:
            try:
                self.wandb_run.summary.update(metrics)
            except Exception as e:
                self._give_up(e)

    def _give_up(self, error: Exception) -> None:
        """The W&B service failed mid-run: one line, then no more W&B calls (each could block or
        fail again); log.jsonl keeps every epoch."""
        print(f"W&B: stopped logging after an error ({type(error).__name__}: {error}); the run continues, "
              f"metrics go to log.jsonl", file=sys.stderr)
        with contextlib.suppress(Exception):
            self.wandb_run.finish(exit_code=1)
        self.wandb_run = None

    def finish(self) -> None:
        if self.wandb_run is not None:
            with contextlib.suppress(Exception):
                self.wandb_run.finish()


def artifact_name(run_name: str) -> str:
    """The W&B artifact holding a run's checkpoints: `model-<run folder name>`, in the characters W&B allows."""
    return ("model-" + "".join(c if c.isalnum() or c in "-_." else "-" for c in run_name))[:128]


def recorded_artifact(checkpoint: Path) -> str | None:
    """The artifact reference recorded beside `checkpoint` (a link, such as a selection's, is followed), if any."""
    real = Path(checkpoint).resolve()
    try:
        return json.loads((real.parent / ARTIFACT_RECORD).read_text()).get(real.name)
    except (OSError, ValueError, AttributeError):
        return None


class ProgressLines:
    """Progress for output that is not a terminal (a SLURM log, a file), where tqdm's bar is off: a
    line at most every `every` seconds, so that a long epoch or evaluation is not silence."""

    def __init__(self, enabled: bool = True, every: float = 60.0) -> None:
        self.enabled = enabled and not sys.stdout.isatty()
        self.every = every
        self.last = time.perf_counter()

    def __call__(self, text: str) -> None:
        now = time.perf_counter()
        if self.enabled and now - self.last >= self.every:
            print(text, flush=True)
            self.last = now
