"""The contract every recommender implements, and the registry of model families.

A model is built from plain hyperparameters, ``prepare``d on a training dataset (which builds
its untrained parameters), then fitted: closed-form models (KNN, EASE, popularity) in one
``fit_prepared`` call, gradient models one ``train_epoch`` at a time so that the caller can
evaluate, report, checkpoint and stop between epochs.

A saved model is a self-describing directory, the bundle that serving loads (format 2)::

    model.json    family, hyperparameters, format version, free-form metadata (metrics, sweep)
    weights.pt    what inference needs of the model's state (``serving_state``: no optimiser),
                  a dict of tensors read with torch.load(weights_only=True), possibly compressed
                  (``compression``)
    data/         ``ServingData``: id maps, seen items, popularity, titles, features if used

A bundle holds no training state: training resumes from a sweep's checkpoints (``state``), never
from a bundle. Format 1 directories (the whole training set and the optimiser) still load.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from recsearch.data.dataset import Dataset, ServingData, encode_entity
from recsearch.models.compression import decode, encode
from recsearch.ranking import SeenItems
from recsearch.runtime import resolve_device

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)  # 1: data/ held the whole training set and weights.pt the optimiser
MODELS: dict[str, type[Recommender]] = {}


def register(family: str):
    """Class decorator: make a model loadable by its family name."""

    def add(cls: type[Recommender]) -> type[Recommender]:
        if family in MODELS:
            raise ValueError(f"model family {family!r} registered twice")
        cls.family = family
        MODELS[family] = cls
        return cls

    return add


def model_class(family: str) -> type[Recommender]:
    import recsearch.models  # noqa: F401  (fills the registry)

    try:
        return MODELS[family]
    except KeyError:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(sorted(MODELS))}") from None


class UnsupportedOperation(ValueError):
    """Asked a model for something its family cannot do (e.g. ratings from a ranking model)."""


class Recommender(ABC):
    family: ClassVar[str] = ""
    tasks: ClassVar[tuple[str, ...]] = ("ranking",)  # "ranking" and/or "rating"
    iterative: ClassVar[bool] = False  # trained by gradient, epoch by epoch
    scores_history: ClassVar[bool] = False  # can score a raw list of recent items natively
    # its state is each user's time-ordered training sequence, scored from its last items: the
    # evaluator scores the test part from the training then the validation items (score_history)
    reads_sequence: ClassVar[bool] = False
    # scores a list of recent items by solving a new user's parameters from it (fold-in): a known
    # user's own history then scores close to, not exactly as, the user
    folds_in: ClassVar[bool] = False
    feature_path: ClassVar[bool] = False  # can score a new user (an item) from its features alone

    def __init__(self, *, seed: int = 0, device: str = "auto", task: str = "ranking", **hparams: Any):
        if task not in self.tasks:
            raise UnsupportedOperation(f"model family {self.family!r} supports task {' or '.join(self.tasks)}, not {task!r}")
        self.hparams: dict[str, Any] = dict(hparams)
        self.task = task
        self.seed = int(seed)
        self.device = resolve_device(device)
        self.train_data: Dataset | None = None  # set by prepare: only a model being trained has it
        self.serving_data: ServingData | None = None
        self.metadata: dict[str, Any] = {}

    @property
    def reads_features(self) -> bool:
        """Whether the model reads the user/item features (then its bundle keeps them)."""
        return False

    # -- fitting --------------------------------------------------------------------------
    def prepare(self, train: Dataset) -> None:
        """Attach the training data and build untrained parameters. Subclasses extend it."""
        self.train_data = train
        self._attach(ServingData.of(train, features=self.reads_features))

    def _attach(self, data: ServingData) -> None:
        self.serving_data = data
        self.seen = SeenItems.from_matrix(data.seen, self.device)

    def fit(self, train: Dataset, epochs: int | None = None) -> Recommender:
        """Fit in one call (library use); the training loop drives the steps itself."""
        self.prepare(train)
        self.fit_prepared(epochs)
        return self

    @abstractmethod
    def fit_prepared(self, epochs: int | None = None) -> None:
        """Closed-form models: the whole fit. Iterative models: ``epochs`` training epochs."""

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """Everything learned, as a (nested) dict of tensors and plain values."""

    @abstractmethod
    def load_state(self, state: dict[str, Any]) -> None: ...

    def serving_state(self) -> dict[str, Any]:
        """What inference needs of the state, beyond ``ServingData``: what ``save`` writes.
        Families whose state holds training-only parts (optimisers) leave them out."""
        return self.state()

    def pruned_state(self, top_k: int) -> dict[str, Any]:
        """The serving state with its item-item matrix cut to ``top_k`` entries per item."""
        raise UnsupportedOperation(f"model family {self.family!r} has no item-item matrix to prune")

    def restore(self, data: ServingData, state: dict[str, Any]) -> None:
        """Rebuild a model for inference from a bundle: ``data`` and a ``serving_state``."""
        self._attach(data)
        self.load_state(state)

    # -- inference ------------------------------------------------------------------------
    @property
    def n_users(self) -> int:
        return self._require_data().n_users

    @property
    def n_items(self) -> int:
        return self._require_data().n_items

    def score(self, users) -> torch.Tensor:
        """Scores over all items for a batch of contiguous user ids: float tensor (b, n_items)."""
        users = self._check_ids(users, self.n_users, "user")
        with torch.no_grad():
            return self._score(users)

    @abstractmethod
    def _score(self, users: torch.Tensor) -> torch.Tensor: ...

    def recommend(self, users, k: int, exclude_seen: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` (item ids, scores) per user, best first; ``k`` above the catalogue is capped.
        With ``exclude_seen`` the user's training items never appear (rows may then hold fewer
        than ``k`` real items: those slots carry score ``-inf``)."""
        if not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        users = self._check_ids(users, self.n_users, "user")
        scores = self.score(users)
        if exclude_seen:
            self.seen.mask(scores, users)
        top = torch.topk(scores, min(int(k), self.n_items), dim=1)
        return top.indices, top.values

    def predict(self, users, items) -> torch.Tensor:
        """Predicted ratings for (user, item) pairs; only for families that model ratings."""
        if self.task != "rating":
            raise UnsupportedOperation(f"this {self.family!r} model was trained for ranking and does not predict ratings")
        users = self._check_ids(users, self.n_users, "user")
        items = self._check_ids(items, self.n_items, "item")
        if users.shape != items.shape:
            raise ValueError(f"users and items must have the same shape, got {tuple(users.shape)} and {tuple(items.shape)}")
        with torch.no_grad():
            return self._predict(users, items)

    def _predict(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        raise UnsupportedOperation(f"model family {self.family!r} does not predict ratings")

    def score_history(self, histories: list[list[int]]) -> torch.Tensor:
        """Scores ``(len(histories), n_items)`` for users known only by lists of contiguous item
        ids, oldest first: native for families with ``scores_history`` (sequential models read
        the order, item-based ones the set), by fold-in for those that ``folds_in``; others
        raise and the caller falls back to item similarity."""
        if not (self.scores_history or self.folds_in):
            raise UnsupportedOperation(f"model family {self.family!r} cannot score a list of recent items")
        rows = [np.asarray(history) for history in histories]
        for n, row in enumerate(rows):
            if row.ndim != 1 or (row.size and row.dtype.kind not in "iu"):
                raise ValueError(f"history {n} must be a flat list of integer item ids, got {histories[n]!r:.80}")
            if row.size and (row.min() < 0 or row.max() >= self.n_items):
                bad = int(row[(row < 0) | (row >= self.n_items)][0])
                raise ValueError(f"history {n}: unknown item id {bad}: the model knows items 0..{self.n_items - 1}")
        with torch.no_grad():
            return self._score_history([row.astype(np.int64) for row in rows])

    def _score_history(self, histories: list[np.ndarray]) -> torch.Tensor:
        raise NotImplementedError  # families with scores_history or folds_in implement it

    def user_history(self, user: int) -> np.ndarray:
        """A known user's training items as ``score_history`` reads a history: here the set of
        seen items (ascending ids); sequential models give their recent items in time order."""
        data = self._require_data()
        return data.seen.indices[data.seen.indptr[user]:data.seen.indptr[user + 1]].astype(np.int64)

    # -- the feature path: entities known only by their features (cold start) ------------------
    def profile_codes(self, profile: Mapping[str, str | list[str]], where: str = "profile") -> list[list[int]]:
        """A new user's raw feature values (``{"age": "25-34", "gender": "F"}``; a feature left
        out is unknown) as codes for ``score_profiles``. A name or a value outside the model's
        vocabulary raises ValueError naming ``where.<feature>``; families without a feature
        path (``feature_path``) raise UnsupportedOperation."""
        if not self.feature_path:
            raise UnsupportedOperation(f"model family {self.family!r} cannot score a user from a profile")
        return encode_entity(self._require_data().user_features, profile, where)

    def score_profiles(self, codes: list[list[list[int]]]) -> torch.Tensor:
        """Scores ``(len(codes), n_items)`` of new users given by ``profile_codes``."""
        with torch.no_grad():
            return self._score_user_codes(codes)

    def _score_user_codes(self, codes: list[list[list[int]]]) -> torch.Tensor:
        raise NotImplementedError  # families with feature_path implement it

    def item_codes(self, features: Mapping[str, str | list[str]], where: str = "features") -> list[list[int]]:
        """A new item's raw feature values as codes for ``similar_to_items``, checked as
        ``profile_codes`` checks a profile."""
        if not (self.feature_path and self._require_data().item_features):
            raise UnsupportedOperation(f"model family {self.family!r} cannot place an item by its features")
        return encode_entity(self._require_data().item_features, features, where)

    def similar_to_items(self, codes: list[list[list[int]]]) -> torch.Tensor:
        """Cosine similarity ``(len(codes), n_items)`` between new items given by ``item_codes``
        and every catalogue item, in the model's item space."""
        with torch.no_grad():
            return self._similar_to_item_codes(codes)

    def _similar_to_item_codes(self, codes: list[list[list[int]]]) -> torch.Tensor:
        raise NotImplementedError  # families with feature_path over items implement it

    def score_new_items(self, codes: list[list[list[int]]], user: int | None = None,
                        profile: list[list[int]] | None = None) -> torch.Tensor:
        """Scores ``(len(codes),)`` of new items given by ``item_codes`` for one user, known by
        its id (``user``) or by ``profile_codes`` (``profile``), on the scale of ``score``."""
        if (user is None) == (profile is None):
            raise ValueError("give exactly one of user and profile")
        with torch.no_grad():
            return self._score_new_items(codes, user, profile)

    def _score_new_items(self, codes: list[list[list[int]]], user: int | None,
                         profile: list[list[int]] | None) -> torch.Tensor:
        raise NotImplementedError  # families with feature_path over items implement it

    def _item_rows(self, users: torch.Tensor) -> torch.Tensor:
        """The binary training rows of ``users``: dense float ``(len(users), n_items)``."""
        rows = torch.zeros(len(users), self.n_items, device=self.device)
        seen_row, seen_item = self.seen.rows(users)
        rows[seen_row, seen_item] = 1.0
        return rows

    def _history_rows(self, histories: list[np.ndarray]) -> torch.Tensor:
        """Histories as binary item rows, as ``_item_rows`` holds users (a repeat counts once)."""
        rows = torch.zeros(len(histories), self.n_items, device=self.device)
        owner = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
        items = np.concatenate([*histories, np.empty(0, np.int64)])
        rows[torch.as_tensor(owner, device=self.device), torch.as_tensor(items, device=self.device)] = 1.0
        return rows

    # -- persistence ----------------------------------------------------------------------
    def save(self, directory: str | Path, metadata: dict[str, Any] | None = None,
             state: dict[str, Any] | None = None) -> Path:
        """Write the serving bundle; ``state``: an encoded ``serving_state`` (``recsearch export``),
        by default the serving state in fp32 (indices in int32: nothing lost)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._require_data().save(directory / "data")
        state = encode(self.serving_state(), "fp32") if state is None else state
        torch.save(_to_cpu(state), directory / "weights.pt")
        self.metadata.update(metadata or {})
        description = {
            "format": FORMAT_VERSION,
            "family": self.family,
            "task": self.task,
            "hparams": self.hparams,
            "seed": self.seed,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "metadata": self.metadata,
        }
        (directory / "model.json").write_text(json.dumps(description, indent=2, default=_json_default))
        return directory

    @staticmethod
    def load(directory: str | Path, device: str = "auto") -> Recommender:
        directory = Path(directory)
        path = directory / "model.json"
        if not path.is_file():
            raise FileNotFoundError(f"{directory} is not a model directory: it has no model.json")
        description = json.loads(path.read_text())
        if description.get("format") not in READABLE_FORMATS:
            raise ValueError(f"{path}: model format {description.get('format')!r}, this version reads "
                             f"{' and '.join(map(str, READABLE_FORMATS))}")
        from recsearch.models.factory import create

        model = create(model_class(description["family"]), description["hparams"], seed=description["seed"],
                       device=device, task=description["task"])
        state = decode(torch.load(directory / "weights.pt", map_location=model.device, weights_only=True))
        if description["format"] == 1:
            model.prepare(Dataset.load(directory / "data"))
            model.load_state(state)
        else:
            model.restore(ServingData.load(directory / "data"), state)
        model.metadata = description.get("metadata", {})
        return model

    # -- helpers --------------------------------------------------------------------------
    def _require_data(self) -> ServingData:
        if self.serving_data is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit() or prepare() first")
        return self.serving_data

    def _check_ids(self, ids, upper: int, what: str) -> torch.Tensor:
        ids = torch.as_tensor(ids, device=self.device)
        if ids.dim() != 1:
            raise ValueError(f"{what} ids must be a 1-d sequence, got shape {tuple(ids.shape)}")
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise ValueError(f"{what} ids must be integers, got {ids.dtype}")
        ids = ids.long()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= upper):
            bad = int(ids[(ids < 0) | (ids >= upper)][0])
            raise ValueError(f"unknown {what} id {bad}: the model knows {what}s 0..{upper - 1}")
        return ids


class IterativeRecommender(Recommender):
    """A model trained by gradient, one epoch per ``train_epoch`` call."""

    iterative = True
    default_epochs: ClassVar[int] = 20

    def fit_prepared(self, epochs: int | None = None) -> None:
        for _ in range(epochs or self.default_epochs):
            self.train_epoch()

    @abstractmethod
    def train_epoch(self) -> float:
        """One pass over the training data; returns the mean training loss."""


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
