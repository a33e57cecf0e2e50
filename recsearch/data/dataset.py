"""The in-memory dataset: interactions with contiguous integer ids, id maps back to raw ids,
optional user/item features and item titles.

Everything is a numpy array so a dataset pickles cheaply into Ray's object store and saves to
an ``.npz`` that loads with ``allow_pickle=False`` (strings are stored as fixed-width unicode).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

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

    def of(self, entity: int) -> list[str]:
        """The raw values of one entity."""
        return [str(self.vocabulary[c]) for c in self.values[self.offsets[entity] : self.offsets[entity + 1]]]


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

    def matrix(self, n_users: int, n_items: int, values: str = "ones") -> sp.csr_matrix:
        """User x item CSR matrix of ones (``values="ones"``) or of ratings (duplicates summed)."""
        data = np.ones(len(self), np.float32) if values == "ones" else self.rating
        return sp.csr_matrix((data, (self.user, self.item)), shape=(n_users, n_items), dtype=np.float32)


@dataclass
class Dataset:
    """A named dataset: interactions plus what is needed to map ids back and describe entities."""

    name: str
    interactions: Interactions
    user_ids: np.ndarray  # str raw id per contiguous user id
    item_ids: np.ndarray  # str raw id per contiguous item id
    user_features: dict[str, Feature] = field(default_factory=dict)
    item_features: dict[str, Feature] = field(default_factory=dict)
    item_titles: np.ndarray | None = None  # str per item
    explicit: bool = True  # ratings are real 1-5 scores, not implicit ones

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def matrix(self, values: str = "ones") -> sp.csr_matrix:
        return self.interactions.matrix(self.n_users, self.n_items, values)

    def with_interactions(self, interactions: Interactions) -> Dataset:
        """The same users, items and features with other interactions (e.g. the training part)."""
        return replace(self, interactions=interactions)

    def item_popularity(self) -> np.ndarray:
        """Interaction count per item."""
        return np.bincount(self.interactions.item, minlength=self.n_items)

    def user_index(self) -> dict[str, int]:
        return {str(u): i for i, u in enumerate(self.user_ids)}

    def item_index(self) -> dict[str, int]:
        return {str(it): i for i, it in enumerate(self.item_ids)}

    # -- persistence: one .npz of plain arrays plus a small json, no pickles -----------------
    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
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
        features = {}
        for kind, feats in (("user", self.user_features), ("item", self.item_features)):
            for name, feat in feats.items():
                key = f"{kind}.{name}"
                features[key] = feat.multi
                arrays[f"{key}.vocabulary"] = feat.vocabulary.astype(str)
                arrays[f"{key}.offsets"] = feat.offsets
                arrays[f"{key}.values"] = feat.values
        np.savez_compressed(directory / "dataset.npz", **arrays)
        meta = {"name": self.name, "explicit": self.explicit, "features": features}
        (directory / "dataset.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> Dataset:
        directory = Path(directory)
        meta = json.loads((directory / "dataset.json").read_text())
        with np.load(directory / "dataset.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        feats: dict[str, dict[str, Feature]] = {"user": {}, "item": {}}
        for key, multi in meta["features"].items():
            kind, name = key.split(".", 1)
            feats[kind][name] = Feature(
                arrays[f"{key}.vocabulary"], arrays[f"{key}.offsets"], arrays[f"{key}.values"], multi
            )
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
class Split:
    """Train/valid/test parts of one dataset. Models only ever see ``train``."""

    train: Dataset
    valid: Interactions
    test: Interactions
    scheme: str  # "random", "loo" (temporal leave-one-out), "temporal" (global time cut), "kfold" or "given"

    @property
    def n_users(self) -> int:
        return self.train.n_users

    @property
    def n_items(self) -> int:
        return self.train.n_items

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train.interactions), "valid": len(self.valid), "test": len(self.test)}
