"""The data layer: readers and a synthetic generator that build a :class:`Dataset`, cleaning
and splitting into a :class:`Split`.

``data_cfg`` is the plain dict of a ``conf/data/*.yaml``: ``name``, ``source`` (a reader or
generator with its ``_target_``), ``preprocess`` and ``split``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from recsearch.data.dataset import Dataset, Feature, Interactions, Split
from recsearch.data.preprocess import check_config, preprocess, split
from recsearch.errors import ConfigError, RecsearchError

__all__ = ["Dataset", "Feature", "Interactions", "Split", "Prepared", "check_config", "load_dataset",
           "load_split", "prepare"]


def load_dataset(data_cfg: Mapping[str, Any]) -> Dataset:
    """Build the dataset that ``data_cfg["source"]`` describes (``hydra.utils.instantiate``)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    check_config(data_cfg)
    source = dict(data_cfg["source"])
    try:
        dataset = instantiate(source, _convert_="all")
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, (RecsearchError, FileNotFoundError)):
            raise cause from None  # already names the file and line: no Hydra wrapping
        raise ConfigError(f"data.source ({source['_target_']}) failed: {cause or err}") from None
    if not isinstance(dataset, Dataset):
        raise ConfigError(f"data.source._target_ {source['_target_']!r} returned a {type(dataset).__name__}, "
                          "not a recsearch Dataset")
    return dataset


@dataclass
class Prepared:
    """Every stage of :func:`prepare`, for reports such as ``recsearch data info``."""

    loaded: Dataset
    cleaned: Dataset  # after de-duplication, implicit threshold, k-core, re-indexing
    split: Split
    dropped: dict[str, int]  # what each step removed (also logged to ``recsearch.data``)


def prepare(data_cfg: Mapping[str, Any], seed: int, implicit_threshold: float | None) -> Prepared:
    """Load, preprocess and split, keeping every stage."""
    loaded = load_dataset(data_cfg)
    cleaned, dropped = preprocess(loaded, **(data_cfg.get("preprocess") or {}), implicit_threshold=implicit_threshold)
    if len(cleaned.interactions) == 0:
        raise ConfigError(f"{loaded.name}: no interactions left after preprocessing (dropped: {dropped})")
    result, held_out_dropped = split(cleaned, **(data_cfg.get("split") or {}), seed=seed)
    return Prepared(loaded, cleaned, result, {**dropped, **held_out_dropped})


def load_split(data_cfg: Mapping[str, Any], seed: int, implicit_threshold: float | None) -> Split:
    """Load, preprocess per ``data_cfg["preprocess"]``, keep ratings ``>= implicit_threshold``
    as implicit positives (when not None), and split per ``data_cfg["split"]`` with ``seed``."""
    return prepare(data_cfg, seed, implicit_threshold).split
