"""Model families. Importing this package registers every family in ``base.MODELS``."""

from recsearch.models import (  # noqa: F401
    blend,
    deepcf,
    ease,
    knn,
    lstm,
    mf,
    multvae,
    ncf,
    pop,
    rp3beta,
    sasrec,
    segpop,
)
from recsearch.models.base import MODELS, IterativeRecommender, Recommender, model_class

__all__ = ["MODELS", "IterativeRecommender", "Recommender", "model_class"]
