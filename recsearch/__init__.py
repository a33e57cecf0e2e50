"""recsearch: hyperparameter search for recommender models on Ray."""

__version__ = "0.1.0"
