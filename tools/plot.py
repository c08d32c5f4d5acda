"""Charts of a run and of a results table, as PNG and SVG (needs matplotlib: `pip install matplotlib`).

    python -m tools.plot curves RUN_DIR... --out PREFIX     # from each run's log.jsonl
    python -m tools.plot table results_table.csv --out PREFIX
    python -m tools.plot sweep STUDY_OUTPUT --out PREFIX            # a reproduce.py --sweep study

`curves`: one panel each for the loss and its terms, the accuracies (train, and val with
--eval_freq), the learning rate and images/s, per epoch; several runs are drawn over one another.
`table`: each cell of the table `python -m eval.table` writes (its .csv), ours with its 95% interval
beside the paper's number; results files of eval_fewshot.py (--output) are drawn the same way,
without the paper's.
`sweep`: accuracy against the swept value (the first swept flag; one line per value of the others), val and
test, 1- and 5-shot, one row per method and generation, each point the mean over the seeds with the 95%
interval of the pooled episodes (eval.table's); test points only where test was evaluated (the chosen, or
every candidate with --report all), with the seeds that were.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import util
from eval.stats import mean_confidence_interval
from eval.table import Selection, find_selections
from runtime.logger import LOG_NAME

if TYPE_CHECKING:  # matplotlib is optional: imported by pyplot() when a chart is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MATPLOTLIB_INSTALL = "pip install matplotlib"
LOSS_SKIPPED = ("train_acc",)  # the train_* keys that are not loss terms


def get_args_parser() -> argparse.ArgumentParser:
    parser = util.ArgumentParser("python -m tools.plot", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="chart", required=True, metavar="{curves,table,sweep}")
    curves = sub.add_parser("curves", help="training curves from run folders' log.jsonl")
    curves.add_argument("runs", nargs="+", metavar="RUN", help="run folders, or their log.jsonl files")
    table = sub.add_parser("table", help="a results table beside the paper's numbers")
    table.add_argument("table", metavar="TABLE", help="the .csv of python -m eval.table, or a results .json")
    sweep = sub.add_parser("sweep", help="accuracy against a swept value, from a study's selections")
    sweep.add_argument("study", metavar="STUDY", help="the --output folder of scripts/reproduce.py --sweep")
    for p in (curves, table, sweep):
        p.add_argument("--out", required=True, help="writes PREFIX.png and PREFIX.svg")
    return parser


def pyplot():
    """matplotlib's pyplot without a display, or a one-line error saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise util.UsageError(f"tools.plot needs matplotlib, an optional dependency: {MATPLOTLIB_INSTALL}") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_log(run: Path) -> tuple[str, list[dict]]:
    """(the run's name, its per-epoch records) from a run folder or its log.jsonl."""
    path = run / LOG_NAME if run.is_dir() else run
    if not path.is_file():
        raise util.UsageError(f"{run}: no {LOG_NAME} (expected a run folder or its {LOG_NAME})")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise util.UsageError(f"{path}: line {number} is not JSON") from None
        if isinstance(record, dict) and "epoch" in record:
            records.append(record)
    if not records:
        raise util.UsageError(f"{path}: no epochs logged")
    return path.parent.name, records


def curve_panels(records: list[dict]) -> dict[str, list[str]]:
    """Panel title -> the logged keys drawn in it."""
    keys = list(dict.fromkeys(k for r in records for k in r))
    return {"loss and its terms": [k for k in keys if k.startswith("train_") and k not in LOSS_SKIPPED],
            "accuracy (%)": [k for k in keys if k.endswith("_acc")],
            "learning rate": [k for k in keys if k == "lr"],
            "images/s": [k for k in keys if k == "images_per_s"]}


def save(figure, out: Path) -> list[Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix in (".png", ".svg"):
        target = out.with_name(out.name + suffix)
        with util.atomic_write(target) as tmp, open(tmp, "wb") as f:
            figure.savefig(f, format=suffix[1:], dpi=120, bbox_inches="tight")
        written.append(target)
    return written


def legend_outside(ax: Axes) -> None:
    """The legend to the right of the axes, never over the data: curves and bars may reach any corner, so no
    place inside ("best" included) is free in general. bbox_inches="tight" (save) keeps it in the file."""
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)


def curves_figure(plt, logs: list[tuple[str, list[dict]]]) -> Figure:
    """One panel per curve_panels title, each run's keys drawn over one another."""
    figure, axes = plt.subplots(2, 2, figsize=(13, 7), constrained_layout=True)  # wide: room for two legends
    for ax, title in zip(axes.flat, curve_panels([r for _, records in logs for r in records])):
        for name, records in logs:
            for key in curve_panels(records)[title]:
                points = [(r["epoch"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
                if points:
                    label = key if len(logs) == 1 else f"{name}: {key}"
                    ax.plot(*zip(*points), marker="o", markersize=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if ax.lines:
            legend_outside(ax)
    figure.suptitle(", ".join(name for name, _ in logs), fontsize=9)
    return figure


def plot_curves(runs: list[Path], out: Path) -> list[Path]:
    plt = pyplot()
    figure = curves_figure(plt, [read_log(run) for run in runs])
    written = save(figure, out)
    plt.close(figure)
    return written


def read_cells(path: Path) -> list[dict]:
    """[{label, mean, ci95, paper}] from eval.table's CSV or an eval_fewshot.py results file."""
    if not path.is_file():
        raise util.UsageError(f"{path}: file not found")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
            return [{"label": f"{r['split']} {r['n_ways']}-way {r['n_shots']}-shot {r['embedding']} {r['classifier']}",
                     "mean": float(r["mean"]), "ci95": float(r["ci95"] or 0), "paper": None} for r in data["results"]]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise util.UsageError(f"{path}: not a results file of eval_fewshot.py ({type(e).__name__}: {e})") from None
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    needed = {"method", "dataset", "shots", "mean", "ci95", "paper"}
    if not rows or not needed <= rows[0].keys():
        raise util.UsageError(f"{path}: expected the .csv of python -m eval.table "
                              f"(columns {', '.join(sorted(needed))})")

    def number(text: str) -> float | None:
        return float(text) if text not in ("", None) and not math.isnan(float(text)) else None

    return [{"label": f"{r['method']} {r['dataset']} {r['shots']}-shot", "mean": float(r["mean"]),
             "ci95": number(r["ci95"]) or 0.0, "paper": number(r["paper"])} for r in rows]


def table_figure(plt, cells: list[dict], title: str) -> Figure:
    """Ours (with its 95% interval) beside the paper's number, one pair of bars per cell."""
    legend_room = 1.5  # inches on the right
    figure, ax = plt.subplots(figsize=(max(6, 0.9 * len(cells) + 2) + legend_room, 4.5), constrained_layout=True)
    x = range(len(cells))
    width = 0.4
    ax.bar([i - width / 2 for i in x], [c["mean"] for c in cells], width, yerr=[c["ci95"] for c in cells],
           capsize=3, label="ours (95% interval)")
    if any(c["paper"] is not None for c in cells):
        ax.bar([i + width / 2 for i in x], [c["paper"] if c["paper"] is not None else 0 for c in cells], width,
               label="paper", color="tab:gray")
    ax.set_xticks(list(x), [c["label"] for c in cells], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"few-shot accuracy: {title}")
    legend_outside(ax)
    return figure


def plot_table(table: Path, out: Path) -> list[Path]:
    plt = pyplot()
    figure = table_figure(plt, read_cells(table), table.name)
    written = save(figure, out)
    plt.close(figure)
    return written


def sweep_points(selections: list[Selection]) -> dict[tuple, dict[tuple, list[float]]]:
    """(method, generation, shots, split, the other swept values) -> {swept value: pooled per-episode accuracies}
    over the seeds, from each candidate's results files."""
    points: dict[tuple, dict[tuple, list[float]]] = {}
    for s in selections:
        r = s.record
        for candidate, folder in zip(r["candidates"], s.folders):
            configuration = candidate.get("configuration") or {}
            if not configuration:
                continue
            (first, value), *others = configuration.items()
            for path in sorted(folder.glob("results_*shot.json")):
                for result in json.loads(path.read_text()).get("results", []):
                    if result.get("embedding", "feature") != "feature" or "accuracies" not in result:
                        continue
                    key = (r["method"], int(r.get("generation", 1)), int(result["n_shots"]), result["split"],
                           first, tuple(others))
                    points.setdefault(key, {}).setdefault((value,), []).extend(result["accuracies"])
    return points


def sweep_figure(plt, points: dict[tuple, dict[tuple, list[float]]], title: str) -> Figure:
    """One panel per (method, generation) and shot count; val dashed, test solid."""
    rows = sorted({(k[0], k[1]) for k in points})
    shots = sorted({k[2] for k in points})
    figure, axes = plt.subplots(len(rows), len(shots), figsize=(5.5 * len(shots) + 2, 3.6 * len(rows)),
                                squeeze=False, constrained_layout=True)
    for (i, row), (j, k) in ((a, b) for a in enumerate(rows) for b in enumerate(shots)):
        ax = axes[i][j]
        for key in sorted(p for p in points if (p[0], p[1], p[2]) == (*row, k)):
            by_value = points[key]
            values = sorted(by_value, key=lambda v: _as_number(v[0]))
            stats = [mean_confidence_interval(np.asarray(by_value[v])) for v in values]
            x = [_as_number(v[0]) for v in values]
            others = ", ".join(f"{n} {v}" for n, v in key[5])
            ax.errorbar(x, [m for m, _ in stats], yerr=[0 if np.isnan(h) else h for _, h in stats], capsize=3,
                        marker="o", linestyle="--" if key[3] == "val" else "-",
                        label=f"{key[3]}{' (' + others + ')' if others else ''}")
            ax.set_xlabel(key[4])
        method, generation = row
        ax.set_title(f"{method}{f' generation {generation}' if generation > 1 else ''}, {k}-shot", fontsize=9)
        ax.set_ylabel("accuracy (%)")
        if ax.lines:
            legend_outside(ax)
    figure.suptitle(title, fontsize=9)
    return figure


def _as_number(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value


def plot_sweep(study: Path, out: Path) -> list[Path]:
    points = sweep_points(find_selections([str(study)]))
    if not points:
        raise util.UsageError(f"{study}: no swept candidates with results (selections/*.json of a "
                              f"scripts/reproduce.py --sweep study)")
    plt = pyplot()
    figure = sweep_figure(plt, points, study.name)
    written = save(figure, out)
    plt.close(figure)
    return written


def main(argv: list[str] | None = None) -> list[Path]:
    args = get_args_parser().parse_args(argv)
    out = Path(args.out)
    util.check_writable_folder(out.parent, "--out")
    if args.chart == "curves":
        written = plot_curves([Path(r) for r in args.runs], out)
    elif args.chart == "sweep":
        written = plot_sweep(Path(args.study), out)
    else:
        written = plot_table(Path(args.table), out)
    print("chart: " + ", ".join(map(str, written)))
    return written


if __name__ == "__main__":
    util.run_cli(main)
