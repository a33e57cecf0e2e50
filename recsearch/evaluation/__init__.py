"""Full-ranking and rating evaluation: the metric registry and the ``Evaluator``."""

from recsearch.evaluation.evaluator import Evaluator
from recsearch.evaluation.metrics import (
    METRICS,
    Metric,
    TopK,
    ranked_items,
    ranking_metrics,
    rating_metrics,
)

__all__ = ["METRICS", "Evaluator", "Metric", "TopK", "ranked_items", "ranking_metrics", "rating_metrics"]
