"""The paper's results table from many runs and seeds : rows = methods, columns =
dataset x shots, ours beside the paper's numbers.

    python -m eval.table RUN_DIR... [--baseline METHOD] [--out PREFIX] [--wandb offline]

Reads every results file under each RUN_DIR (training's end-of-run results.json, eval_fewshot.py
--output), recognised by its content: other JSON there (args.json, W&B's files) is skipped, so runs on
the same folders give the same table. By default the test split, pooled features, logistic regression.
Writes PREFIX.md, PREFIX.csv (one line per cell, machine readable) and PREFIX.tex (a LaTeX tabular
of ours) and prints the markdown; with --wandb auto|online|offline it also logs a W&B Table with a bar
chart of ours vs the paper (no W&B run otherwise).

A cell over several seeds (each seed one training run, evaluated on n episodes):
  - ours = the mean over seeds of the per-seed mean accuracies; the protocol check below makes every
    seed contribute the same number of episodes, so this is also the mean over all episodes pooled.
  - its 95% interval = t.ppf(0.975, N - 1) * sem over all N = seeds x n episodes pooled: the kind of
    interval the paper reports, as if one model had been evaluated on N episodes. It
    measures episode sampling only, not training noise (and seeds evaluated on the same episodes,
    as scripts/reproduce.py does, make it optimistic); hence the seed spread beside it: the sample
    standard deviation (ddof 1) of the per-seed means, with the number of seeds. A gap to the paper
    within the seed spread is no evidence of a difference.
  - paired difference vs --baseline (default: the first row): for each seed whose evaluation of the
    method and of the baseline saw identical episodes (equal fingerprints, see
    eval.fewshot.episode_fingerprint), the per-episode differences; pooled over those seeds, their
    mean and t interval. Episode difficulty cancels in the differences, so this interval is
    usually much narrower than the two separate ones: the comparison they cannot make.

A study (scripts/reproduce.py --sweep, --teachers, --generations) adds what its selections recorded
(selections/*.json, decided on val): a candidate's results count in the table only for the shot count it was
chosen for, under its table seed; every candidate's val and test are listed below the table, the chosen
marked. Later generations of a born-again chain are rows of their own (`skd_gen1:gen2`).

Results evaluated under different protocols (ways, queries, episodes, support augmentations, image
size, checkpoint choice, network architecture) are never put in one column: that is an error naming
the setting and two files.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

import published
from models import architecture_of
from eval.fewshot import EMBEDDINGS
from eval.stats import mean_confidence_interval
from util import ArgumentParser, UsageError, atomic_write, run_cli

PAPER_SOURCE = "the SKD paper's table: 5-way accuracy (%), ResNet-12"
PAPER_SHOTS = (1, 5)
DATASET_ORDER = ("miniImageNet", "tieredImageNet", "CIFAR-FS", "FC100")  # the paper's column order
# What must be equal for results to share a column (shots and dataset are the column itself).
PROTOCOL = ("n_ways", "n_queries", "n_episodes", "n_aug", "image_size", "checkpoint_choice", "model")
RESULT_KEYS = {"split", "n_shots", "embedding", "classifier"}  # what every evaluation in a results file names


@dataclass(frozen=True)
class Entry:
    """One evaluation: a method's run of one seed, on one column."""
    path: Path
    method: str
    dataset: str
    shots: int
    seed: int | None
    protocol: dict[str, Any]
    accuracies: np.ndarray  # per episode, in [0, 1]
    fingerprint: str | None


@dataclass(frozen=True)
class Cell:
    mean: float
    ci95: float
    seed_std: float  # nan with one seed
    seeds: int
    episodes: int


@dataclass(frozen=True)
class Paired:
    mean: float  # method minus baseline, percentage points
    ci95: float
    seeds: int  # seeds whose episodes were identical for both


@dataclass
class Table:
    columns: list[tuple[str, int]]  # (dataset, shots)
    methods: list[str]
    cells: dict[tuple[str, str, int], Cell]  # (method, dataset, shots)
    protocols: dict[tuple[str, int], dict[str, Any]]
    baseline: str | None  # None with a single method
    paired: dict[tuple[str, str, int], Paired]


# ----------------------------------------------------------------------------- reading results files

def is_results(data: Any) -> bool:
    """Whether parsed JSON is a results file this project writes (eval.report.write_results): a `results`
    list of evaluations, each naming its split, shots, embedding and classifier. Other JSON under a run
    folder (args.json, sweeps, W&B's own files, this table's W&B copy) is none."""
    return (isinstance(data, dict) and isinstance(data.get("results"), list) and bool(data["results"])
            and all(isinstance(r, dict) and RESULT_KEYS <= r.keys() for r in data["results"]))


def find_results(run_dirs: list[str]) -> list[Path]:
    """The results files in each RUN_DIR (recursively, recognised by their content) or given by name."""
    files = []
    for run_dir in map(Path, run_dirs):
        if run_dir.is_file():
            files.append(run_dir)  # named by the user: load_entries says if it is not a results file
        elif run_dir.is_dir():
            files += [path for path in sorted(run_dir.rglob("*.json")) if path.is_file() and _is_results_file(path)]
        else:
            raise UsageError(f"{run_dir}: no such file or folder")
    if not files:
        raise UsageError(f"no results files (results.json of training, eval_fewshot.py --output) under "
                         f"{', '.join(run_dirs)}")
    return files


def _is_results_file(path: Path) -> bool:
    try:
        return is_results(json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        if path.name == "results.json" or path.name.startswith("results_"):
            raise UsageError(f"{path}: not readable JSON") from None  # a results file gone wrong, not foreign JSON
        return False


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{path}: not readable JSON ({e})") from None


def training_args(data: dict, path: Path) -> dict:
    """The arguments of the training run behind a results file: its own `args` when training wrote it
    (they have --epochs), else (eval_fewshot.py) the args.json of the checkpoint's run folder, which
    the results file may also sit in when the checkpoint path was relative to another folder."""
    args = data.get("args") if isinstance(data.get("args"), dict) else {}
    if "epochs" in args:
        return args
    folders = [Path(data["checkpoint"]).parent] if data.get("checkpoint") else []
    for args_file in (folder / "args.json" for folder in [*folders, path.parent]):
        if args_file.is_file():
            return _read_json(args_file)
    return {}


def method_of(data: dict, train_args: dict, path: Path) -> str:
    """`method` when the file names it (the reproduction driver), else from the training script's args."""
    if data.get("method"):
        return str(data["method"])
    if "epochs" in train_args:  # written by a training script
        try:
            return published.card_of_training_args(train_args).name
        except KeyError as e:
            raise UsageError(f"{path}: its training arguments select no method ({e})") from None
    raise UsageError(f"{path}: cannot tell the method: no `method` key and no training arguments "
                     f"(args.json beside the checkpoint {data.get('checkpoint')})")


def load_entries(path: Path, split: str, embedding: str, classifier: str) -> list[Entry]:
    data = _read_json(path)
    if not is_results(data):
        raise UsageError(f"{path}: not a results file (no `results` list of evaluations)")
    chosen = [r for r in data["results"]
              if (r.get("split"), r.get("embedding"), r.get("classifier")) == (split, embedding, classifier)]
    if not chosen:
        return []
    train_args = training_args(data, path)
    method = method_of(data, train_args, path)
    generation = published.generation_of(train_args)
    if generation > 1:  # a born-again chain's later generation: a row of its own
        method = f"{method}{GENERATION_MARK}{generation}"
    dataset = data.get("dataset") or train_args.get("dataset")
    if not dataset:
        raise UsageError(f"{path}: names no dataset")
    source, target = data.get("source_domain"), data.get("target_domain")
    if source and target and source != target:  # evaluated on another domain than it trained on: its own column
        dataset = f"{target} (from {source})"
    entries = []
    for r in chosen:
        if "accuracies" not in r:
            raise UsageError(f"{path}: has no per-episode accuracies (written before they were recorded); "
                             f"evaluate the checkpoint again with eval_fewshot.py --output")
        # Files written before checkpoint choices were recorded hold last-epoch weights. Best-by-val
        # runs of different seeds pick different epochs and still share one protocol.
        choice = re.sub(r" \(epoch \d+\)$", "", data.get("checkpoint_choice", "last epoch"))
        protocol = {**{k: r.get(k) for k in PROTOCOL[:4]},
                    "image_size": r.get("image_size") or (data.get("args") or {}).get("image_size"),
                    "checkpoint_choice": choice, "model": architecture_of(train_args)}
        entries.append(Entry(path, method, dataset, int(r["n_shots"]), train_args.get("seed"),
                             protocol, np.asarray(r["accuracies"], dtype=np.float64), r.get("fingerprint")))
    return entries


# ----------------------------------------------------------------------------- aggregation

NETWORK_MARK = "@"  # a row of one method on one network, when the results are of several: skd_gen0@convnet4
GENERATION_MARK = ":gen"  # a row of a chain's later generation: skd_gen1:gen2


def rows_by_network(entries: list[Entry]) -> list[Entry]:
    """Results of several networks: each method's row split by network (`METHOD@NETWORK`, the --baseline name
    of such a row), so that networks compare row against row, on the same episodes; one network: unchanged."""
    if len({e.protocol["model"] for e in entries}) < 2:
        return entries
    return [replace(e, method=f"{e.method}{NETWORK_MARK}{e.protocol['model']}",
                                protocol={**e.protocol, "model": "per row"}) for e in entries]


def check_protocols(entries: list[Entry]) -> dict[tuple[str, int], dict[str, Any]]:
    """Every column's protocol; refuse a column whose results were evaluated differently."""
    first: dict[tuple[str, int], Entry] = {}
    for e in entries:
        ref = first.setdefault((e.dataset, e.shots), e)
        for name in PROTOCOL:
            if e.protocol[name] != ref.protocol[name]:
                raise UsageError(f"{e.dataset} {e.shots}-shot: {name} differs ({ref.protocol[name]} in {ref.path}, "
                                 f"{e.protocol[name]} in {e.path}); results of different protocols are never averaged")
    return {column: e.protocol for column, e in first.items()}


def by_seed(entries: list[Entry]) -> dict[tuple[str, str, int], dict[int | None, Entry]]:
    """(method, dataset, shots) -> seed -> its evaluation. The same evaluation found twice (one file
    copied, or results.json and an eval of the same checkpoint) counts once; two different
    evaluations of one method and seed cannot both be the table's number."""
    cells: dict[tuple[str, str, int], dict[int | None, Entry]] = {}
    for e in entries:
        seeds = cells.setdefault((e.method, e.dataset, e.shots), {})
        other = seeds.setdefault(e.seed, e)
        if other is not e and not (other.fingerprint == e.fingerprint
                                   and np.array_equal(other.accuracies, e.accuracies)):
            raise UsageError(f"{e.method} seed {e.seed}, {e.dataset} {e.shots}-shot: two different results "
                             f"({other.path} and {e.path}); pass the run folders of one evaluation each")
    return cells


def cell_stats(seeds: dict[int | None, Entry]) -> Cell:
    seed_means = [100 * e.accuracies.mean() for e in seeds.values()]
    pooled = np.concatenate([e.accuracies for e in seeds.values()])
    _, ci = mean_confidence_interval(pooled)
    std = float(np.std(seed_means, ddof=1)) if len(seed_means) > 1 else float("nan")
    return Cell(float(np.mean(seed_means)), ci, std, len(seed_means), len(pooled))


def paired_stats(method: dict[int | None, Entry], baseline: dict[int | None, Entry]) -> Paired | None:
    """Per-episode differences over the seeds where both saw identical episodes; None if there are none."""
    diffs = [method[s].accuracies - baseline[s].accuracies for s in method
             if s in baseline and method[s].fingerprint is not None
             and method[s].fingerprint == baseline[s].fingerprint]
    if not diffs:
        return None
    mean, ci = mean_confidence_interval(np.concatenate(diffs))
    return Paired(mean, ci, len(diffs))


def build_table(entries: list[Entry], baseline: str | None) -> Table:
    if not entries:
        raise UsageError("no results match the chosen split, embedding and classifier")
    protocols = check_protocols(entries)
    grouped = by_seed(entries)
    present = {m for m, _, _ in grouped}
    registered = [c.name for c in published.cards()]
    rows = sorted(present, key=lambda m: (registered.index(_method(m)) if _method(m) in registered
                                          else len(registered), m))
    if baseline is not None and baseline not in present:
        raise UsageError(f"--baseline {baseline}: no results of it; found {', '.join(rows)}")
    # Default: the first row, the paper's baseline (RFS-simple) when present; one row has nothing to pair with.
    baseline = (baseline or rows[0]) if len(rows) > 1 else None
    order = {d: i for i, d in enumerate(DATASET_ORDER)}
    columns = sorted(protocols, key=lambda c: (order.get(c[0], len(order)), c[0], c[1]))
    paired = {}
    if baseline is not None:  # pair every other row with the baseline, column by column
        for (m, d, k), seeds in grouped.items():
            if m != baseline and (baseline, d, k) in grouped:
                result = paired_stats(seeds, grouped[(baseline, d, k)])
                if result is not None:
                    paired[(m, d, k)] = result
    cells = {key: cell_stats(seeds) for key, seeds in grouped.items()}
    return Table(columns, rows, cells, protocols, baseline, paired)


def _method(row: str) -> str:
    """The method of a table row (its name less a network and a generation mark)."""
    return row.split(NETWORK_MARK)[0].split(GENERATION_MARK)[0]


def paper_value(method: str, dataset: str, shots: int, model: str = published.PAPER_NETWORK) -> float | None:
    """The paper's accuracy of `method` (a registered one) on `dataset` at `shots`, if it reports one, for runs
    of the paper's network (`model`; another network's runs have nothing of the paper's to compare with)."""
    known = {c.name: c for c in published.cards()}
    method = _method(method)
    paper = known[method].paper.get(dataset) if method in known and model == published.PAPER_NETWORK else None
    return paper[PAPER_SHOTS.index(shots)] if paper and shots in PAPER_SHOTS else None


def reported_value(method: str, dataset: str, shots: int, model: str) -> tuple[float, str] | None:
    """What another group reports for `method` with our network `model` on `dataset` at `shots` (the method
    card's `reported`), and who: the first such report."""
    known = {c.name: c for c in published.cards()}
    method = _method(method)
    for report in known[method].reported if method in known else ():
        if report.network == model and dataset in report.results and shots in PAPER_SHOTS:
            return report.results[dataset][PAPER_SHOTS.index(shots)], report.source
    return None


def _model(table: Table, row: str, dataset: str, shots: int) -> str:
    """The network a cell's runs trained: the row's, when rows are split by network, else the column's."""
    return row.split(NETWORK_MARK)[1] if NETWORK_MARK in row else table.protocols[(dataset, shots)]["model"]


# ----------------------------------------------------------------------------- output

def _label(row: str) -> str:
    known = {c.name: c for c in published.cards()}
    label = known[_method(row)].label if _method(row) in known else _method(row)
    head = row.split(NETWORK_MARK)[0]
    if GENERATION_MARK in head:
        label += f", generation {head.split(GENERATION_MARK)[1]}"
    return f"{label} ({row.split(NETWORK_MARK)[1]})" if NETWORK_MARK in row else label


def _num(x: float | None, signed: bool = False) -> str:
    if x is None or np.isnan(x):
        return "—"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def _grid(table: Table, cell_text) -> list[str]:
    """A markdown table in the paper's layout, each cell written by cell_text(method, dataset, shots)."""
    head = ["method", *(f"{d} {k}-shot" for d, k in table.columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in table.methods:
        lines.append("| " + " | ".join([_label(m), *(cell_text(m, d, k) for d, k in table.columns)]) + " |")
    return lines


def markdown(table: Table, what: str) -> str:
    def ours(m: str, d: str, k: int) -> str:
        c = table.cells.get((m, d, k))
        seeds = f"{c.seeds} seed{'s' if c.seeds != 1 else ''}" if c is not None else ""
        return "—" if c is None else f"{c.mean:.2f} ± {_num(c.ci95)} (sd {_num(c.seed_std)}, {seeds})"

    def paper(m: str, d: str, k: int) -> str:
        return _num(paper_value(m, d, k, _model(table, m, d, k)))

    def diff(m: str, d: str, k: int) -> str:
        c, p = table.cells.get((m, d, k)), paper_value(m, d, k, _model(table, m, d, k))
        return "—" if c is None or p is None else _num(c.mean - p, signed=True)

    def reported(m: str, d: str, k: int) -> str:
        found = reported_value(m, d, k, _model(table, m, d, k))
        return "—" if found is None else _num(found[0])

    protocol = "; ".join(f"{d} {k}-shot: {p['n_ways']}-way, {p['n_queries']} queries, {p['n_episodes']} episodes, "
                         f"{p['n_aug']} support augmentations, {p['image_size']}px, {p['checkpoint_choice']}, "
                         f"{p['model']}"
                         for (d, k), p in ((c, table.protocols[c]) for c in table.columns))
    lines = [f"# Few-shot accuracy (%): {what}", "",
             f"Protocol: {protocol}.", "",
             "## Ours", "",
             "Mean over seeds ± 95% interval over all seeds' episodes pooled (t.ppf(0.975, N-1) * sem); "
             "sd: standard deviation of the per-seed means.", "", *_grid(table, ours), "",
             f"## Paper ({PAPER_SOURCE})", "", *_grid(table, paper), "",
             "## Ours − paper", "", *_grid(table, diff)]
    sources = sorted({found[1] for m in table.methods for d, k in table.columns
                      if (found := reported_value(m, d, k, _model(table, m, d, k))) is not None})
    if sources:
        lines += ["", f"## Reported by others for the same network ({'; '.join(sources)})", "",
                  *_grid(table, reported)]
    if table.baseline is not None:
        def vs(m: str, d: str, k: int) -> str:
            p = table.paired.get((m, d, k))
            if m == table.baseline:
                return "baseline"
            if p is None:
                return "—"
            return f"{p.mean:+.2f} ± {_num(p.ci95)} ({p.seeds} seed{'s' if p.seeds != 1 else ''})"

        lines += ["", f"## Paired difference vs {_label(table.baseline)}", "",
                  "Same episodes (equal fingerprints) per seed: mean ± 95% t interval over the per-episode "
                  "differences, seeds pooled; — where no seed shares its episodes with the baseline.", "",
                  *_grid(table, vs)]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- studies

@dataclass(frozen=True)
class Selection:
    """One selection of a study (scripts/study.py's record): its candidates' run folders, the one chosen for
    each shot count, and the one that teaches."""
    path: Path
    record: dict[str, Any]
    folders: list[Path]  # each candidate's run folder, resolved
    chosen: dict[int, Path]  # shots -> the chosen candidate's run folder
    teacher: Path


def find_selections(run_dirs: list[str]) -> list[Selection]:
    """The selection records under each RUN_DIR (selections/*.json of a study's output)."""
    found = []
    for run_dir in map(Path, run_dirs):
        if not run_dir.is_dir():
            continue
        for path in sorted(run_dir.rglob("selections/*.json")):
            record = _read_json(path)
            if not (isinstance(record, dict) and {"candidates", "chosen", "seed", "method"} <= record.keys()):
                continue
            output = path.parent.parent
            by_checkpoint = {c["checkpoint"]: (output / c["folder"]).resolve() for c in record["candidates"]}
            found.append(Selection(path, record, list(by_checkpoint.values()),
                                   {int(k): by_checkpoint[v] for k, v in record["chosen"].items()},
                                   by_checkpoint[record["teacher"]]))
    return found


def apply_selections(entries: list[Entry], selections: list[Selection]) -> list[Entry]:
    """A candidate's results count only for the shot count val chose it for, under its selection's table seed
    (a teacher candidate trained with another); results of runs that no selection decides are kept."""
    owner = {folder: s for s in selections for folder in s.folders}
    kept = []
    for e in entries:
        selection = owner.get(e.path.parent.resolve())
        if selection is None:
            kept.append(e)
        elif selection.chosen.get(e.shots) == e.path.parent.resolve():
            kept.append(replace(e, seed=int(selection.record["seed"])))
    return kept


def study_section(selections: list[Selection], split_files: dict[Path, dict[str, float]]) -> str:
    """Every candidate of every selection: its configuration, val and test accuracy, chosen marked."""
    if not selections:
        return ""
    lines = ["", "## Study: candidates decided on val, never test", "",
             "| selection | candidate | configuration | val 1-shot | val 5-shot | test 1-shot | test 5-shot | chosen |",
             "|---|---|---|---|---|---|---|---|"]
    for s in selections:
        r = s.record
        generation = int(r.get("generation", 1))
        name = f"{_label(r['method'])}{f', generation {generation}' if generation > 1 else ''}, seed {r['seed']}"
        for c, folder in zip(r["candidates"], s.folders):
            found = split_files.get(folder, {})
            configuration = ", ".join(f"{k} {v}" for k, v in c.get("configuration", {}).items()) or "—"
            if c.get("seed") is not None and c["seed"] != r["seed"]:
                configuration += f" (seed {c['seed']})"
            marks = [f"{k}-shot" for k in sorted(s.chosen) if s.chosen[k] == folder]
            marks += ["teaches"] if folder == s.teacher and len(s.folders) > 1 else []
            lines.append(f"| {name} | {c['folder']} | {configuration} | "
                         + " | ".join(_num(found.get(f"{split} {k}")) for split in ("val", "test") for k in (1, 5))
                         + f" | {', '.join(marks) or '—'} |")
    return "\n".join(lines) + "\n"


def split_accuracies(selections: list[Selection]) -> dict[Path, dict[str, float]]:
    """Each candidate folder's mean accuracy per split and shot count, from the results files in it."""
    found: dict[Path, dict[str, float]] = {}
    for folder in {f for s in selections for f in s.folders}:
        for path in sorted(folder.glob("results_*shot.json")):
            data = _read_json(path)
            for r in data.get("results", []) if isinstance(data, dict) else []:
                if r.get("embedding", "feature") == "feature" and "mean" in r:
                    found.setdefault(folder, {})[f"{r['split']} {r['n_shots']}"] = float(r["mean"])
    return found


def csv_text(table: Table) -> str:
    """One line per cell, every number unrounded."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["method", "dataset", "shots", "mean", "ci95", "seed_std", "seeds", "episodes", "paper",
                     "diff_vs_paper", "baseline", "paired_diff", "paired_ci95", "paired_seeds", *PROTOCOL])
    for m in table.methods:
        for d, k in table.columns:
            c = table.cells.get((m, d, k))
            if c is None:
                continue
            p, pair = paper_value(m, d, k, _model(table, m, d, k)), table.paired.get((m, d, k))
            paired = [None] * 4 if pair is None else [table.baseline, pair.mean, pair.ci95, pair.seeds]
            writer.writerow([m, d, k, c.mean, c.ci95, c.seed_std, c.seeds, c.episodes, p,
                             None if p is None else c.mean - p, *paired,
                             *(table.protocols[(d, k)][name] for name in PROTOCOL)])
    return out.getvalue()


def _tex(text: str) -> str:
    return text.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("&", r"\&").replace("%", r"\%")


def latex(table: Table) -> str:
    """Ours as a LaTeX tabular (no packages needed): a dataset header over its shots."""
    datasets = list(dict.fromkeys(d for d, _ in table.columns))
    spans = [sum(1 for d2, _ in table.columns if d2 == d) for d in datasets]
    lines = [r"\begin{tabular}{l" + "".join("|" + "c" * n for n in spans) + "}", r"\hline",
             " & " + " & ".join(rf"\multicolumn{{{n}}}{{c}}{{{_tex(d)}}}" for d, n in zip(datasets, spans)) + r" \\",
             "method & " + " & ".join(f"{k}-shot" for _, k in table.columns) + r" \\", r"\hline"]
    for m in table.methods:
        cells = [table.cells.get((m, d, k)) for d, k in table.columns]
        lines.append(_tex(_label(m)) + " & " + " & ".join(
            "--" if c is None else rf"${c.mean:.2f} \pm {_num(c.ci95)}$" for c in cells) + r" \\")
    return "\n".join([*lines, r"\hline", r"\end{tabular}"]) + "\n"


def log_wandb(table: Table, mode: str, project: str, what: str, prefix: Path, group: str | None) -> None:
    """A W&B Table of the cells and a bar chart of ours vs the paper, in the runs' W&B group; W&B trouble is only
    a warning. One W&B run per table (its id in PREFIX.wandb_id): building the table again logs the new one to the
    same run, as its next step, instead of opening another."""
    from runtime.logger import RunLogger  # mode 'auto', the online -> offline fallback and a failing init

    id_file = prefix.with_name(prefix.name + ".wandb_id")
    run_id = id_file.read_text().strip() if id_file.is_file() else None
    logger = RunLogger(None, mode=mode, project=project, config={"what": what, "baseline": table.baseline},
                       wandb_dir=prefix.parent, tags=["table"], run_id=run_id or None, group=group, job_type="table",
                       name=f"table_{prefix.name}")
    if logger.wandb_run is None:
        return
    if logger.wandb_id and logger.wandb_id != run_id:
        with atomic_write(id_file) as tmp:
            tmp.write_text(logger.wandb_id + "\n")
    try:
        import wandb

        rows = list(csv.reader(io.StringIO(csv_text(table))))
        bars = wandb.Table(columns=["cell", "accuracy"])
        for m in table.methods:
            for d, k in table.columns:
                c, p = table.cells.get((m, d, k)), paper_value(m, d, k, _model(table, m, d, k))
                if c is not None:
                    bars.add_data(f"{_label(m)} {d} {k}-shot (ours)", c.mean)
                    if p is not None:
                        bars.add_data(f"{_label(m)} {d} {k}-shot (paper)", p)
        logger.wandb_run.log({"results_table": wandb.Table(columns=rows[0], data=rows[1:]),
                              "ours_vs_paper": wandb.plot.bar(bars, "cell", "accuracy", title="ours vs paper")})
    except Exception as e:  # the files are written; W&B is a copy
        print(f"warning: W&B table failed ({type(e).__name__}: {e})", file=sys.stderr)
    logger.finish()


# ----------------------------------------------------------------------------- command line

def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser("python -m eval.table", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="folders searched recursively for results files (or such files)")
    parser.add_argument("--baseline", default=None,
                        help="the row every other row is paired with (default: the first row); with results of "
                             "several networks a row is METHOD@NETWORK, e.g. skd_gen0@resnet12_ssl")
    parser.add_argument("--out", default=None,
                        help="writes PREFIX.md, PREFIX.csv and PREFIX.tex (default: RUN_DIR/results_table of the "
                             "first RUN_DIR, never the current folder)")
    parser.add_argument("--split", default="test", choices=["val", "test"], help="which results to tabulate")
    parser.add_argument("--embedding", default="feature", choices=EMBEDDINGS, help="which embedding's results")
    parser.add_argument("--classifier", default="LR", help="which classifier's results")
    # Off unless asked: a table is rebuilt often, from runs that W&B already holds, and each logged table
    # is a W&B run of its own (an offline one is a folder beside the table's files).
    parser.add_argument("--wandb", default="disabled", choices=["auto", "online", "offline", "disabled"],
                        help="log the table to a W&B run of its own (default: disabled, no run); auto: online when "
                             "logged in, otherwise offline")
    parser.add_argument("--wandb_project", default=None,
                        help="default: the first RUN_DIR's name, the training scripts' project for that --model_path")
    return parser


def main(argv: list[str] | None = None) -> Table:
    args = get_args_parser().parse_args(argv)
    selections = find_selections(args.run_dirs)
    entries = apply_selections([e for path in find_results(args.run_dirs)
                                for e in load_entries(path, args.split, args.embedding, args.classifier)], selections)
    table = build_table(rows_by_network(entries), args.baseline)
    what = f"{args.split} split, {args.embedding}, {args.classifier}"
    text = markdown(table, what) + study_section(selections, split_accuracies(selections))
    first = Path(args.run_dirs[0])
    prefix = Path(args.out) if args.out else (first if first.is_dir() else first.parent) / "results_table"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for suffix, content in ((".md", text), (".csv", csv_text(table)), (".tex", latex(table))):
        with atomic_write(prefix.with_name(prefix.name + suffix)) as tmp:
            tmp.write_text(content)
    print(text, end="")
    print(f"table: {prefix}.md, .csv, .tex")
    if args.wandb != "disabled":
        groups = sorted({str(g) for e in entries if (g := training_args(_read_json(e.path), e.path)
                                                       .get("wandb_group"))})
        log_wandb(table, args.wandb, args.wandb_project or Path(args.run_dirs[0]).resolve().name, what, prefix,
                  groups[0] if len(groups) == 1 else None)
    return table


if __name__ == "__main__":
    run_cli(main)
