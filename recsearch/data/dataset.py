"""The in-memory dataset: interactions with contiguous integer ids, id maps back to raw ids,
optional user/item features and item titles.

Everything is a numpy array so a dataset pickles cheaply into Ray's object store and saves to
an ``.npz`` that loads with ``allow_pickle=False`` (strings are stored as fixed-width unicode).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

UNKNOWN = "<unk>"  # vocabulary entry 0 of every feature: a missing or unseen value
GIVEN_PARTS = ("train", "valid", "test")  # Interactions.part codes 0, 1, 2


@dataclass(frozen=True)
class Feature:
    """A categorical feature of users or items, single-valued (age bucket) or multi-valued (genres).

    Stored as CSR-like ragged lists so both kinds feed one ``nn.EmbeddingBag``: the codes of
    entity ``e`` are ``values[offsets[e]:offsets[e + 1]]``, indices into ``vocabulary``.
    """

    vocabulary: np.ndarray  # str, vocabulary[0] == UNKNOWN
    offsets: np.ndarray  # int64, shape (n_entities + 1,)
    values: np.ndarray  # int64 codes into vocabulary
    multi: bool = False

    @classmethod
    def from_lists(cls, lists: list[list[str]], multi: bool) -> Feature:
        """Build from one list of raw string values per entity (an empty list means missing)."""
        vocab = [UNKNOWN] + sorted({v for values in lists for v in values} - {UNKNOWN})
        index = {v: i for i, v in enumerate(vocab)}
        lengths = np.array([max(len(values), 1) for values in lists], dtype=np.int64)
        offsets = np.zeros(len(lists) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        codes = [index.get(v, 0) for values in lists for v in (values or [UNKNOWN])]
        return cls(np.array(vocab), offsets, np.array(codes, dtype=np.int64), multi)

    @classmethod
    def from_codes(cls, codes: np.ndarray, vocabulary: list[str]) -> Feature:
        """A single-valued feature from integer codes (0 = unknown) and its vocabulary."""
        codes = np.asarray(codes, dtype=np.int64)
        return cls(np.array(vocabulary), np.arange(len(codes) + 1, dtype=np.int64), codes, False)

    @property
    def n_entities(self) -> int:
        return len(self.offsets) - 1

    def positions(self) -> np.ndarray | None:
        """Each code's rank in numeric order when the vocabulary is of ranges, as the readers'
        ``bins`` label them ("<18", "18-24", "56+", "1990-1999"): the order a string sort of
        the labels loses; NaN for ``UNKNOWN``. None for any other feature (no order)."""
        bounds = [_range_floor(str(label)) for label in self.vocabulary[1:]]
        if self.multi or not bounds or None in bounds:
            return None
        return np.concatenate([[np.nan], np.argsort(np.argsort(bounds, kind="stable")).astype(np.float64)])

    def of(self, entity: int) -> list[str]:
        """The raw values of one entity."""
        return [str(self.vocabulary[c]) for c in self.values[self.offsets[entity] : self.offsets[entity + 1]]]

    def codes_of(self, given: str | list[str], where: str) -> list[int]:
        """Codes of raw values that describe a new entity: one string (or, for a multi-valued
        feature, a list of strings). A value outside the vocabulary is an error naming
        ``where`` rather than a silent ``UNKNOWN``: a typo would otherwise change the answer."""
        values = [given] if isinstance(given, str) else given
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values) or (
                len(values) != 1 and not self.multi):
            kind = "a string or a list of strings" if self.multi else "one string"
            raise ValueError(f"{where}: expected {kind}, got {given!r:.80}")
        index = {str(v): code for code, v in enumerate(self.vocabulary)}
        unknown = [v for v in values if v not in index]
        if unknown:
            labels = [str(v) for v in self.vocabulary[1:]]
            positions = self.positions()
            if positions is not None:  # ranges in their numeric order: "<18, 18-24, ..., 56+"
                labels = [labels[i] for i in np.argsort(positions[1:], kind="stable")]
            known = ", ".join(labels[:20]) + (", ..." if len(labels) > 20 else "")
            raise ValueError(f"{where}: unknown value {unknown[0]!r:.80}; known: {known}")
        return [index[v] for v in values] or [0]


def range_closeness(positions: np.ndarray, ours: np.ndarray, theirs: np.ndarray, bandwidth: float) -> np.ndarray:
    """How close codes ``ours`` and ``theirs`` of a feature of ranges are (broadcast together):
    exp(-(d / bandwidth)^2 / 2), d buckets apart by ``Feature.positions``; NaN where either is
    ``UNKNOWN``. The one kernel of ``segpop``'s pooled segments and ``deepcf``'s mixed buckets."""
    return np.exp(-0.5 * ((positions[ours] - positions[theirs]) / bandwidth) ** 2)


_RANGE = re.compile(r"(<)?(-?\d+(?:\.\d+)?)(?:-(-?\d+(?:\.\d+)?)|(\+))?")


def _range_floor(label: str) -> float | None:
    """Where a range label starts ("<18": -inf, "18-24": 18, "56+": 56), None if it is not one."""
    match = _RANGE.fullmatch(label)
    if match is None or bool(match[1]) + bool(match[3]) + bool(match[4]) != 1:
        return None
    return -np.inf if match[1] else float(match[2])


def encode_entity(features: Mapping[str, Feature], given: Mapping[str, str | list[str]], where: str
                  ) -> list[list[int]]:
    """Codes per feature (in ``features``' order) of an entity described by raw values, e.g. a
    new user's profile ``{"age": "25-34", "gender": "F"}``; a feature left out is ``UNKNOWN``,
    a name the model does not know is an error naming ``where.<name>``."""
    unknown = [name for name in given if name not in features]
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: not a feature of this model; known: {', '.join(features) or 'none'}")
    return [feature.codes_of(given[name], f"{where}.{name}") if name in given else [0]
            for name, feature in features.items()]


@dataclass
class Interactions:
    """Parallel arrays, one row per (user, item) event, ids contiguous from 0."""

    user: np.ndarray  # int64
    item: np.ndarray  # int64
    rating: np.ndarray  # float32; 1.0 for implicit data without ratings
    timestamp: np.ndarray  # int64 Unix seconds (or any increasing clock)
    part: np.ndarray | None = None  # int8 0/1/2 = train/valid/test when the data came split (GIVEN_PARTS)

    def __post_init__(self):
        self.user = np.asarray(self.user, dtype=np.int64)
        self.item = np.asarray(self.item, dtype=np.int64)
        self.rating = np.asarray(self.rating, dtype=np.float32)
        self.timestamp = np.asarray(self.timestamp, dtype=np.int64)
        if self.part is not None:
            self.part = np.asarray(self.part, dtype=np.int8)
        n = len(self.user)
        if not (len(self.item) == len(self.rating) == len(self.timestamp) == n) or (
                self.part is not None and len(self.part) != n):
            raise ValueError("interaction arrays must have equal lengths")

    def __len__(self) -> int:
        return len(self.user)

    def take(self, index: np.ndarray) -> Interactions:
        """The rows selected by a boolean mask or an index array."""
        return Interactions(self.user[index], self.item[index], self.rating[index], self.timestamp[index],
                            None if self.part is None else self.part[index])

    def joined(self, other: Interactions) -> Interactions:
        """These rows followed by ``other``'s (same id space); ``part`` only when both have it."""
        part = None if self.part is None or other.part is None else np.concatenate([self.part, other.part])
        return Interactions(*(np.concatenate([getattr(self, name), getattr(other, name)])
                              for name in ("user", "item", "rating", "timestamp")), part)

    def matrix(self, n_users: int, n_items: int, values: str = "ones") -> sp.csr_matrix:
        """User x item CSR matrix of ones (``values="ones"``) or of ratings (duplicates summed)."""
        data = np.ones(len(self), np.float32) if values == "ones" else self.rating
        return sp.csr_matrix((data, (self.user, self.item)), shape=(n_users, n_items), dtype=np.float32)


class IdMaps:
    """Contiguous user and item ids and the raw ids they stand for (``user_ids``, ``item_ids``):
    what a dataset and a model's serving data share."""

    user_ids: np.ndarray
    item_ids: np.ndarray

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def user_index(self) -> dict[str, int]:
        return index_of(self.user_ids)

    def item_index(self) -> dict[str, int]:
        return index_of(self.item_ids)


@dataclass
class Dataset(IdMaps):
    """A named dataset: interactions plus what is needed to map ids back and describe entities."""

    name: str
    interactions: Interactions
    user_ids: np.ndarray  # str raw id per contiguous user id
    item_ids: np.ndarray  # str raw id per contiguous item id
    user_features: dict[str, Feature] = field(default_factory=dict)
    item_features: dict[str, Feature] = field(default_factory=dict)
    item_titles: np.ndarray | None = None  # str per item
    explicit: bool = True  # ratings are real 1-5 scores, not implicit ones

    def matrix(self, values: str = "ones") -> sp.csr_matrix:
        return self.interactions.matrix(self.n_users, self.n_items, values)

    def with_interactions(self, interactions: Interactions) -> Dataset:
        """The same users, items and features with other interactions (e.g. the training part)."""
        return replace(self, interactions=interactions)

    def item_popularity(self) -> np.ndarray:
        """Interaction count per item."""
        return np.bincount(self.interactions.item, minlength=self.n_items)

    # -- persistence: one .npz of plain arrays plus a small json, no pickles -----------------
    def save(self, directory: str | Path) -> None:
        arrays = {
            "user": self.interactions.user,
            "item": self.interactions.item,
            "rating": self.interactions.rating,
            "timestamp": self.interactions.timestamp,
            "user_ids": self.user_ids.astype(str),
            "item_ids": self.item_ids.astype(str),
        }
        if self.item_titles is not None:
            arrays["item_titles"] = self.item_titles.astype(str)
        _save_arrays(directory, "dataset", arrays, {"name": self.name, "explicit": self.explicit},
                     self.user_features, self.item_features)

    @classmethod
    def load(cls, directory: str | Path) -> Dataset:
        meta, arrays, feats = _load_arrays(directory, "dataset")
        return cls(
            name=meta["name"],
            interactions=Interactions(arrays["user"], arrays["item"], arrays["rating"], arrays["timestamp"]),
            user_ids=arrays["user_ids"],
            item_ids=arrays["item_ids"],
            user_features=feats["user"],
            item_features=feats["item"],
            item_titles=arrays.get("item_titles"),
            explicit=meta["explicit"],
        )


@dataclass
class ServingData(IdMaps):
    """What a saved model keeps of its training data: only what answering requests needs.

    The id maps, each user's training items (a users x items pattern of ones: seen items are
    masked, and the item-similarity fallback reads it), each item's training interaction
    count (the popularity fallback), titles, and categorical features only for a model that
    reads them. No ratings, no timestamps, no interaction order: a model that needs something
    derived from those (a sequence model's recent items, a KNN rating model's ratings) keeps it
    in its own serving state."""

    name: str
    user_ids: np.ndarray  # str raw id per contiguous user id
    item_ids: np.ndarray  # str raw id per contiguous item id
    seen: sp.csr_matrix  # float32 ones, users x items, sorted indices
    item_counts: np.ndarray  # int64 training interactions per item (a repeated pair counts twice)
    item_titles: np.ndarray | None = None
    user_features: dict[str, Feature] = field(default_factory=dict)
    item_features: dict[str, Feature] = field(default_factory=dict)

    @classmethod
    def of(cls, train: Dataset, features: bool = False) -> ServingData:
        """The serving part of a training set; ``features`` for models that read them."""
        seen = train.matrix()
        seen.data[:] = 1.0  # a repeated (user, item) pair is still one seen item
        seen.sort_indices()
        return cls(train.name, train.user_ids.astype(str), train.item_ids.astype(str), seen,
                   train.item_popularity().astype(np.int64),
                   None if train.item_titles is None else train.item_titles.astype(str),
                   dict(train.user_features) if features else {}, dict(train.item_features) if features else {})

    def save(self, directory: str | Path) -> None:
        index_type = np.int32 if max(self.n_users, self.n_items, self.seen.nnz) < 2**31 else np.int64
        arrays = {
            "user_ids": self.user_ids,
            "item_ids": self.item_ids,
            "seen.indptr": self.seen.indptr.astype(index_type),
            "seen.indices": self.seen.indices.astype(index_type),
            "item_counts": self.item_counts,
        }
        if self.item_titles is not None:
            arrays["item_titles"] = self.item_titles
        _save_arrays(directory, "serving", arrays, {"name": self.name}, self.user_features, self.item_features)

    @classmethod
    def load(cls, directory: str | Path) -> ServingData:
        meta, arrays, feats = _load_arrays(directory, "serving")
        n_users, n_items = len(arrays["user_ids"]), len(arrays["item_ids"])
        indices = arrays["seen.indices"].astype(np.int64)
        seen = sp.csr_matrix((np.ones(len(indices), np.float32), indices, arrays["seen.indptr"].astype(np.int64)),
                             shape=(n_users, n_items))
        seen.check_format(full_check=True)  # indices read from a file must stay in bounds
        return cls(meta["name"], arrays["user_ids"], arrays["item_ids"], seen, arrays["item_counts"],
                   arrays.get("item_titles"), feats["user"], feats["item"])


def index_of(raw_ids: np.ndarray) -> dict[str, int]:
    """Raw id -> contiguous id."""
    return {str(raw): i for i, raw in enumerate(raw_ids)}


def _save_arrays(directory: str | Path, stem: str, arrays: dict[str, np.ndarray], meta: dict[str, Any],
                 user_features: dict[str, Feature], item_features: dict[str, Feature]) -> None:
    """``<stem>.npz``: ``arrays`` and the features' arrays; ``<stem>.json``: ``meta`` and which
    features there are. Plain arrays and JSON, no pickles."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "features": _feature_arrays(user_features, item_features, arrays)}
    np.savez_compressed(directory / f"{stem}.npz", **arrays)
    (directory / f"{stem}.json").write_text(json.dumps(meta, indent=2))


def _load_arrays(directory: str | Path, stem: str
                 ) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, dict[str, Feature]]]:
    """What ``_save_arrays`` wrote: (meta, arrays, {"user": features, "item": features})."""
    directory = Path(directory)
    meta = json.loads((directory / f"{stem}.json").read_text())
    with np.load(directory / f"{stem}.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return meta, arrays, _read_features(meta["features"], arrays)


def _feature_arrays(user_features: dict[str, Feature], item_features: dict[str, Feature],
                    arrays: dict[str, np.ndarray]) -> dict[str, bool]:
    """Add each feature's arrays to ``arrays`` under ``<kind>.<name>.*``; returns {key: multi}."""
    features = {}
    for kind, feats in (("user", user_features), ("item", item_features)):
        for name, feat in feats.items():
            key = f"{kind}.{name}"
            features[key] = feat.multi
            arrays[f"{key}.vocabulary"] = feat.vocabulary.astype(str)
            arrays[f"{key}.offsets"] = feat.offsets
            arrays[f"{key}.values"] = feat.values
    return features


def _read_features(features: dict[str, bool], arrays: dict[str, np.ndarray]) -> dict[str, dict[str, Feature]]:
    feats: dict[str, dict[str, Feature]] = {"user": {}, "item": {}}
    for key, multi in features.items():
        kind, name = key.split(".", 1)
        feats[kind][name] = Feature(arrays[f"{key}.vocabulary"], arrays[f"{key}.offsets"], arrays[f"{key}.values"], multi)
    return feats


@dataclass
class Split:
    """Train/valid/test parts of one dataset. Models only ever see ``train``."""

    train: Dataset
    valid: Interactions
    test: Interactions
    scheme: str  # "random", "loo" (temporal leave-one-out), "temporal" (global time cut), "kfold", "given",
    # "cold_users" or "cold_items"
    candidates: dict[str, np.ndarray] = field(default_factory=dict)  # part -> the only items it ranks (cold_items)

    @property
    def n_users(self) -> int:
        return self.train.n_users

    @property
    def n_items(self) -> int:
        return self.train.n_items

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train.interactions), "valid": len(self.valid), "test": len(self.test)}

    def train_and_valid(self) -> Split:
        """The split of a refit: the chosen configuration trained on train + valid (same users and
        items), with no validation left. Its test part is evaluated exactly as this split's: the
        test part's mask was train + valid already."""
        return replace(self, train=self.train.with_interactions(self.train.interactions.joined(self.valid)),
                       valid=self.valid.take(np.zeros(0, dtype=np.int64)))
