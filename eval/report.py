"""The end-of-training report: val and test, 1 and 5 shots, features and logits (as the official
scripts end), printed, written to results.json and put in the W&B summary."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

from dataset.imageset import ImageSet
from dataset.transforms import Normalization
from eval.fewshot import EMBEDDINGS, EpisodeSetting, FewShotResult, evaluate
from util import atomic_write

REPORT_SHOTS = (1, 5)


def write_results(results: list[FewShotResult], path: Path, extra: dict | None = None, *,
                  source_domain: str | None = None, target_domain: str | None = None) -> None:
    """results.json, written atomically. `source_domain`: what the network was trained on; `target_domain`:
    what its episodes came from (a dataset's name, or a folder dataset's folder name); top-level keys
    when given, so that a table tells a cross-domain result from an in-domain one."""
    domains = {k: v for k, v in (("source_domain", source_domain), ("target_domain", target_domain)) if v is not None}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps({**(extra or {}), **domains, "results": [r.to_dict() for r in results]}, indent=2)
                       + "\n")


def summary_metrics(results: list[FewShotResult]) -> dict[str, float | str]:
    out = {}
    for r in results:
        mean, ci = r.mean_ci
        out[f"fewshot/{r.key}_acc"] = mean
        out[f"fewshot/{r.key}_ci95"] = ci
        out[f"fewshot/{r.key}_precision"] = r.precision
    return out


def final_report(model: nn.Module, splits: dict[str, ImageSet], norm: Normalization, device: torch.device,
                 args: argparse.Namespace, amp: str = "off", logger=None, output: Path | None = None,
                 extra: dict | None = None) -> list[FewShotResult]:
    """Evaluate on every split given (val, test), 1 and 5 shots, with features and logits, embedding
    under `amp` (recorded in every result and printed beside every accuracy); print each line, write
    `output` (results.json, with `extra`) and the W&B summary of `logger` when given."""
    results = []
    for split, images in splits.items():
        for shots in REPORT_SHOTS:
            setting = EpisodeSetting(args.n_ways, shots, args.n_queries, args.n_test_runs, args.n_aug_support_samples)
            for result in evaluate(model, images, split, setting, norm, device, ("LR",), EMBEDDINGS,
                                   args.eval_batch_size, args.seed, amp):
                print(result.line(), flush=True)
                results.append(result)
    if output is not None:
        write_results(results, output, extra)
        print(f"results: {output}")
    if logger is not None:
        logger.summary(summary_metrics(results))
    return results
