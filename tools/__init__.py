"""Command-line tools for a user's own images: classify query images against a support folder
(`python -m tools.classify`), embed a folder of images into one .npz of features (`tools.embed`),
export the backbone to TorchScript and ONNX with its preprocessing (`tools.export`), and draw a
run's training curves and a results table (`tools.plot`). docs/own-images.md is their manual.

Each tool is a thin command over the project's own pieces (engine.checkpoint, eval.embed,
eval.classifiers, dataset.folder), so it computes exactly what the evaluation computes. Tools may
import every other part of the project; nothing imports tools.

Below, the installed commands (pyproject.toml's [project.scripts], on PATH after `pip install -e .`):
each runs one module as `python -m MODULE` does, its `if __name__ == "__main__":` block included,
so a command's flags, output, one-line errors and exit codes are the module's own.
"""
from __future__ import annotations

import runpy


class Command:
    """A console script that runs `module` as `python -m module` does. A console script calls its object with
    no arguments and hands the return value to sys.exit; the modules' main() functions return results (a
    dict, paths) and leave one-line errors and exit codes to their __main__ block (util.run_cli), so the
    command runs that block rather than main() itself."""

    def __init__(self, module: str) -> None:
        self.module = module

    def __call__(self) -> None:
        runpy.run_module(self.module, run_name="__main__", alter_sys=True)


train_gen0_command = Command("train_supervised_ssl")
train_gen1_command = Command("train_distillation")
eval_command = Command("eval_fewshot")
reproduce_command = Command("scripts.reproduce")
table_command = Command("eval.table")
prepare_command = Command("dataset.prepare")
check_data_command = Command("dataset.check")
classify_command = Command("tools.classify")
embed_command = Command("tools.embed")
export_command = Command("tools.export")
plot_command = Command("tools.plot")
