"""The val evaluation a training run makes every few epochs (--eval_freq) to keep best.pth: cheap enough to
repeat because the episodes are fixed and each image is embedded once."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dataset.imageset import ImageSet
from dataset.transforms import Normalization
from eval.classifiers import DEFAULT_CLASSIFIER
from eval.fewshot import EvalConfig, evaluate

VAL_SHOTS = (1, 5)


@dataclass
class ValEvaluation:
    """The val split on the same episodes every time (episode i drawn from seed i, support crops from the
    run's seed), 1- and 5-shot, features and logistic regression; "val_acc" is their mean."""

    images: ImageSet
    norm: Normalization
    episodes: EvalConfig  # n_episodes: the run's --val_episodes
    amp: str = "off"

    def __call__(self, model: nn.Module, device: torch.device) -> dict[str, float | None]:
        e = self.episodes
        metrics: dict[str, float | None] = {}
        for shots in VAL_SHOTS:
            (result,) = evaluate(model, self.images, "val", e.setting(shots), self.norm, device,
                                 classifiers=(DEFAULT_CLASSIFIER,), embeddings=("feature",), batch_size=e.batch_size,
                                 seed=e.seed, amp=self.amp, progress=False)
            summary = result.to_dict()  # ci95 is None for a single episode, as in results.json
            metrics[f"val_{shots}shot_acc"], metrics[f"val_{shots}shot_ci95"] = summary["mean"], summary["ci95"]
        metrics["val_acc"] = sum(metrics[f"val_{shots}shot_acc"] for shots in VAL_SHOTS) / len(VAL_SHOTS)
        return metrics
