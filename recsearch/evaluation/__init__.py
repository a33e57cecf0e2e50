"""Full-ranking and rating evaluation: the metric registry and the ``Evaluator``."""

from recsearch.evaluation.evaluator import Evaluator
from recsearch.evaluation.metrics import (
    METRICS,
    Metric,
    RankedLists,
    metric_mode,
    ranked_items,
    ranking_metrics,
    rating_metrics,
    valid_key,
    valid_metrics,
)

__all__ = ["METRICS", "Evaluator", "Metric", "RankedLists", "metric_mode", "ranked_items", "ranking_metrics",
           "rating_metrics", "valid_key", "valid_metrics"]
