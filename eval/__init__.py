"""Few-shot evaluation: embed once, batched classifiers, mean and 95% interval, the final report;
`python -m eval.table` gathers many runs' results into the paper's table."""
from eval.classifiers import CLASSIFIERS, classify, logistic_regression, logistic_regression_scores
from eval.fewshot import EMBEDDINGS, EpisodeSetting, FewShotResult, evaluate
from eval.report import final_report, summary_metrics, write_results
from eval.stats import mean_confidence_interval

__all__ = ["CLASSIFIERS", "EMBEDDINGS", "EpisodeSetting", "FewShotResult", "classify", "evaluate", "final_report",
           "logistic_regression", "logistic_regression_scores", "mean_confidence_interval", "summary_metrics",
           "write_results"]
