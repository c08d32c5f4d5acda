"""The evaluator: embed a split once, batched classifiers, few-shot episodes with mean and 95%
interval, sharding that work over ranks, the per-episode reference, the end-of-training report, and
`python -m eval.table` (results files into the paper's table; it reads method cards in published/,
never the training code). It sits beneath the training run (engine/ calls it) and above the process
plumbing (runtime/)."""
from eval.classifiers import CLASSIFIERS, DEFAULT_CLASSIFIER, classify, logistic_regression_scores
from eval.fewshot import EMBEDDINGS, EpisodeSetting, FewShotResult, evaluate
from eval.report import final_report, summary_metrics, write_results
from eval.stats import mean_confidence_interval

__all__ = ["CLASSIFIERS", "DEFAULT_CLASSIFIER", "EMBEDDINGS", "EpisodeSetting", "FewShotResult", "classify",
           "evaluate", "final_report", "logistic_regression_scores", "mean_confidence_interval", "summary_metrics",
           "write_results"]
