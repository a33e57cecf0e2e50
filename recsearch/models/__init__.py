"""Model families. Importing this package registers every family in ``base.MODELS``."""

from recsearch.models import pop  # noqa: F401
from recsearch.models.base import MODELS, IterativeRecommender, Recommender, model_class

__all__ = ["MODELS", "IterativeRecommender", "Recommender", "model_class"]
