"""``recsearch data info``: what a data config loads, keeps and splits, as a table and JSON."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from recsearch.data.dataset import Interactions


def describe(interactions: Interactions, n_users: int, n_items: int) -> dict[str, Any]:
    """Distinct users and items present, interactions, and the density of the catalogue:
    ``interactions / (n_users * n_items)``."""
    n = len(interactions)
    return {
        "users": int(np.unique(interactions.user).size),
        "items": int(np.unique(interactions.item).size),
        "interactions": n,
        "density": n / (n_users * n_items) if n_users and n_items else 0.0,
    }


def info_command(cfg) -> dict[str, Any]:
    """Load, preprocess and split ``cfg.data`` exactly as training does (same seed, same
    implicit threshold), print the sizes at each stage and write ``{cfg.out}/data_info.json``."""
    from recsearch.config import to_container
    from recsearch.data import prepare
    from recsearch.output import check_writable, format_table, write_json

    threshold = cfg.task.implicit_threshold
    check_writable(cfg.out)
    start = time.perf_counter()
    prepared = prepare(to_container(cfg.data), seed=cfg.seed, implicit_threshold=threshold)
    seconds = time.perf_counter() - start
    loaded, cleaned, split = prepared.loaded, prepared.cleaned, prepared.split
    stages = {
        "loaded": describe(loaded.interactions, loaded.n_users, loaded.n_items),
        "preprocessed": describe(cleaned.interactions, cleaned.n_users, cleaned.n_items),
        **{part: describe(inter, cleaned.n_users, cleaned.n_items)
           for part, inter in (("train", split.train.interactions), ("valid", split.valid), ("test", split.test))},
    }
    ratings = loaded.interactions.rating
    info = {
        "name": cfg.data.name,
        "source": cfg.data.source._target_,
        "explicit": loaded.explicit,
        "ratings": {"min": float(ratings.min()), "max": float(ratings.max()), "mean": float(ratings.mean())},
        "implicit_threshold": threshold,
        "split": {"scheme": split.scheme, "seed": cfg.seed, **split.sizes()},
        "stages": stages,
        "dropped": prepared.dropped,
        "features": {kind: {name: len(f.vocabulary) - 1 for name, f in feats.items()}
                     for kind, feats in (("user", loaded.user_features), ("item", loaded.item_features))},
        "titles": loaded.item_titles is not None,
        "seconds": seconds,
    }
    print(f"{info['name']} ({info['source']}): loaded, preprocessed and split in {seconds:.2f}s")
    print(format_table([{"stage": name, **row} for name, row in stages.items()],
                       ["stage", "users", "items", "interactions", "density"]))
    features = ", ".join(f"{kind} {name} ({size} values)" for kind, feats in info["features"].items()
                         for name, size in feats.items())
    print(f"features: {features or 'none'}; titles: {'yes' if info['titles'] else 'no'}; ratings "
          f"{info['ratings']['min']:g} to {info['ratings']['max']:g}, mean {info['ratings']['mean']:.2f}")
    print("dropped: " + (", ".join(f"{k} {v}" for k, v in prepared.dropped.items() if v) or "nothing"))
    print(f"wrote {write_json(f'{cfg.out}/data_info.json', info)}")
    return info
