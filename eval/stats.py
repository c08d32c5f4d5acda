"""Mean accuracy and its 95% confidence interval over episodes, as the paper reports them."""
from __future__ import annotations

import math

import numpy as np


def mean_confidence_interval(accuracies: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """(mean, half-width) in percent: t.ppf((1 + confidence) / 2, n - 1) * standard error."""
    from scipy import stats  # here, not at the top: importing scipy.stats costs every command 0.6 s at start-up

    a = 100.0 * np.asarray(accuracies, dtype=np.float64)
    if len(a) < 2:
        return float(a.mean()), math.nan
    half_width = stats.t.ppf((1 + confidence) / 2, len(a) - 1) * stats.sem(a)
    return float(a.mean()), float(half_width)
