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
from recsearch.data.preprocess import check_fold, check_ratios, preprocess, split
from recsearch.errors import ConfigError, DataError, RecsearchError

__all__ = ["Dataset", "Feature", "Interactions", "Split", "Prepared", "check_config", "instantiate_source",
           "load_dataset", "load_split", "prepare"]


def check_config(data_cfg: Mapping[str, Any]) -> None:
    """A ``data`` config's keys and types: the source's arguments against its reader's
    signature, ``preprocess`` and ``split`` against those functions'; no file is read."""
    from recsearch.schema import DataConfig, check, check_arguments

    check(DataConfig, data_cfg, "data")
    check_source(data_cfg["source"])
    check_arguments(preprocess, data_cfg.get("preprocess") or {}, "data.preprocess",
                    skip=("dataset", "implicit_threshold"))
    split_cfg = check_arguments(split, data_cfg.get("split") or {}, "data.split", skip=("dataset", "seed"))
    if "ratios" in split_cfg:
        check_ratios(split_cfg["ratios"])
    check_fold(split_cfg.get("fold", 0), split_cfg.get("folds", 5))


def check_source(source: Mapping[str, Any], where: str = "data.source") -> None:
    """A source's arguments against its reader's signature; an argument that is itself a source
    (``read_given``'s parts) is checked the same way."""
    from hydra.utils import get_method

    from recsearch.schema import check_arguments

    target = source.get("_target_")
    try:
        reader = get_method(target)
    except Exception as err:  # hydra raises ImportError or ValueError, wrapped variously
        raise ConfigError(f"{where}._target_: {target!r} is not a reader that can be imported: {err}") from None
    arguments = {k: v for k, v in source.items() if not k.startswith("_")}
    check_arguments(reader, arguments, where)
    for name, value in arguments.items():
        if isinstance(value, Mapping) and "_target_" in value:
            check_source(value, f"{where}.{name}")


def load_dataset(data_cfg: Mapping[str, Any]) -> Dataset:
    """Build the dataset that ``data_cfg["source"]`` describes."""
    check_config(data_cfg)
    return instantiate_source(data_cfg["source"])


def instantiate_source(source: Mapping[str, Any], where: str = "data.source") -> Dataset:
    """Call the reader a source config names (``hydra.utils.instantiate``; a source inside it,
    such as ``read_given``'s parts, is passed on as a config, for that reader to read)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    source = dict(source)
    try:
        dataset = instantiate(source, _convert_="all", _recursive_=False)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, (RecsearchError, FileNotFoundError)):
            raise cause from None  # already names the file and line: no Hydra wrapping
        raise ConfigError(f"{where} ({source['_target_']}) failed: {cause or err}") from None
    if not isinstance(dataset, Dataset):
        raise ConfigError(f"{where}._target_ {source['_target_']!r} returned a {type(dataset).__name__}, "
                          "not a recsearch Dataset")
    return dataset


@dataclass
class Prepared:
    """Every stage of :func:`prepare`, for reports such as ``recsearch data info``."""

    loaded: Dataset
    cleaned: Dataset  # after de-duplication, implicit threshold, k-core, re-indexing
    split: Split
    dropped: dict[str, int]  # what each step removed (also logged to ``recsearch.data``)


def prepare(data_cfg: Mapping[str, Any], seed: int, implicit_threshold: float | None = None) -> Prepared:
    """Load, preprocess and split, keeping every stage."""
    loaded = load_dataset(data_cfg)
    cleaned, dropped = preprocess(loaded, **(data_cfg.get("preprocess") or {}), implicit_threshold=implicit_threshold)
    if len(cleaned.interactions) == 0:
        raise ConfigError(f"{loaded.name}: no interactions left after preprocessing (dropped: {dropped})")
    result, held_out_dropped = split(cleaned, **(data_cfg.get("split") or {}), seed=seed)
    for part in ("valid", "test"):
        if len(getattr(result, part)) == 0:
            source = data_cfg["source"]
            where = source.get("path") or source.get("directory") or loaded.name
            raise DataError(f"{where}: the {part} part is empty: {len(cleaned.interactions)} interactions of "
                            f"{cleaned.n_users} users are too few to split with {dict(data_cfg.get('split') or {})}")
    return Prepared(loaded, cleaned, result, {**dropped, **held_out_dropped})


def load_split(data_cfg: Mapping[str, Any], seed: int, implicit_threshold: float | None = None) -> Split:
    """Load, preprocess per ``data_cfg["preprocess"]``, keep ratings ``>= implicit_threshold``
    as implicit positives (when not None), and split per ``data_cfg["split"]`` with ``seed``."""
    return prepare(data_cfg, seed, implicit_threshold).split
