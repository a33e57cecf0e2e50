"""What the HTTP API does, as plain classes with no Ray or HTTP in them.

``ModelService`` wraps one loaded model. Its batched methods take a list of requests and
answer them with one forward pass; per-request problems (an unknown item id) come back as a
``ServingError`` in that request's slot, so one bad request never fails its batch-mates.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsearch.errors import ConfigError
from recsearch.evaluation.metrics import ranked_items
from recsearch.models.base import READABLE_FORMATS, Recommender, UnsupportedOperation, model_class
from recsearch.serving import MAX_CLOCK_SKEW_S, TOKEN_ENV
from recsearch.serving.fallback import ItemSimilarity, PopularItems
from recsearch.serving.schemas import (
    ErrorBody,
    EventsRequest,
    HistoryRecommendationRequest,
    ModelInfo,
    RatingPrediction,
    RatingRequest,
    Recommendations,
    ScoredItem,
    SimilarItems,
    SimilarItemsRequest,
    UserRecommendationRequest,
    UserRecommendations,
)


class ServingError(Exception):
    """A request the service cannot answer: HTTP status, message and the field at fault."""

    def __init__(self, status: int, message: str, field: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = headers

    def body(self) -> dict[str, Any]:
        """``{error, field}``, the error led by the field as validation errors are."""
        error = f"{self.field}: {self.message}" if self.field else self.message
        return ErrorBody(error=error, field=self.field).model_dump()


def resolve_model_dir(path: str | Path) -> Path:
    """A model directory (with ``model.json``) as is, a sweep directory's ``best/``, or a
    ``recsearch train`` output directory's ``model/``."""
    path = Path(path).expanduser().resolve()
    for candidate in (path, path / "best", path / "model"):
        if (candidate / "model.json").is_file():
            return candidate
    raise ConfigError(f"{path} is not a model directory (no model.json), nor a sweep directory with "
                      "best/model.json, nor a `recsearch train` output with model/model.json")


def read_description(directory: Path) -> dict[str, Any]:
    """``model.json``, checked enough that loading cannot fail on its account."""
    path = directory / "model.json"
    try:
        description = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: cannot read model description: {err}") from None
    if not isinstance(description, dict) or description.get("format") not in READABLE_FORMATS:
        raise ConfigError(f"{path}: not a recsearch model description of format "
                          f"{' or '.join(map(str, READABLE_FORMATS))}")
    try:
        model_class(str(description.get("family")))
    except ValueError as err:
        raise ConfigError(f"{path}: {err}") from None
    return description


def configured_token() -> str | None:
    """The bearer token the replicas require, from their environment; None: open."""
    return os.environ.get(TOKEN_ENV) or None


QUOTED_PATH = re.compile(r"""(['"])~?/[^'"]*\1""")  # may hold spaces
ABSOLUTE_PATH = re.compile(r"(?<![\w.-])~?(?:/[^\s/'\",:;()]+)+/?")


def without_paths(message: str) -> str:
    """``message`` with every absolute file path replaced by ``<path>``: for what anyone may read."""
    return ABSOLUTE_PATH.sub("<path>", QUOTED_PATH.sub(r"\1<path>\1", message))


def check_bearer(presented: str | None, expected: str | None) -> None:
    """Raise a 401 unless ``presented`` equals the configured token (no token: everyone passes).
    Compared in constant time so the token cannot be guessed from response times."""
    if not expected:
        return
    if presented is None or not hmac.compare_digest(presented.encode(), expected.encode()):
        raise ServingError(401, "missing or wrong bearer token: send the header 'Authorization: Bearer <token>'",
                           headers={"WWW-Authenticate": "Bearer"})


def describe_validation_errors(errors: list[dict[str, Any]]) -> ErrorBody:
    """One readable message from pydantic/FastAPI validation errors, naming each field."""
    parts, fields = [], []
    for error in errors:
        path = [str(p) for p in error.get("loc", ()) if p != "body"]
        if error.get("type") == "json_invalid":
            field, message = "body", f"is not valid JSON ({error.get('ctx', {}).get('error', 'decode error')})"
        elif not path:
            field = "body"
            message = "a JSON object is required" if error.get("type") == "missing" else error.get("msg", "invalid")
        else:
            field, message = ".".join(path), error.get("msg", "invalid")
        fields.append(field)
        parts.append(f"{field}: {message}")
    return ErrorBody(error="; ".join(parts) or "invalid request", field=fields[0] if fields else None)


class ModelService:
    """One loaded model with its id maps and fallbacks, answering batches of requests."""

    def __init__(self, model: Recommender, directory: Path, description: dict[str, Any]):
        data = model.serving_data
        if data is None:
            raise ValueError("the model has no serving data attached: load it with Recommender.load")
        self.model = model
        self.directory = directory
        self.description = description
        self.model_id = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:12]
        self.loaded_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.user_index = data.user_index()
        self.seen = data.seen
        self.item_index = data.item_index()
        self.item_ids = data.item_ids.astype(str)
        self.titles = None if data.item_titles is None else data.item_titles.astype(str)
        self.popularity = PopularItems(data.item_counts)
        self.similarity = ItemSimilarity(data.seen)
        self.has_history = np.diff(data.seen.indptr) > 0  # per user: any training interaction
        self.tiebreak = self.popularity.tiebreak()

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> ModelService:
        directory = resolve_model_dir(path)
        description = read_description(directory)
        return cls(Recommender.load(directory, device=device), directory, description)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def info(self) -> ModelInfo:
        d = self.description
        return ModelInfo(
            model_id=self.model_id, path=str(self.directory), family=d["family"], task=d.get("task", "ranking"),
            hparams=d.get("hparams", {}), seed=d.get("seed", 0), n_users=len(self.user_index),
            n_items=self.n_items, saved_at=d.get("saved_at"), loaded_at=self.loaded_at,
            metadata=d.get("metadata", {}),
        )

    # -- batched endpoints ------------------------------------------------------------------
    def recommend_users(self, requests: list[UserRecommendationRequest],
                        recent: dict[str, list[str]] | None = None) -> list[UserRecommendations | ServingError]:
        """Model scores for known users, one forward pass for the whole batch. Users with
        ``recent`` events (raw user id -> raw item ids, oldest first: ``POST /events``) are
        answered from their training history and those events (``_with_events``); unknown users
        with a ``profile`` are scored from it by a model with a feature path (``fallback=
        "profile"``, a value outside its vocabulary is a 422 naming ``profile.<feature>``), as
        are users the data kept for their profile alone; the others get the most popular items,
        marked ``fallback="popularity"``."""
        answers: list[UserRecommendations | ServingError | None] = self._with_events(requests, recent or {})
        ids = [self.user_index.get(r.user) for r in requests]
        # a user the data kept for its profile alone (no training interaction): the feature path
        # speaks for it, a model without one would answer from an untrained vector: popularity
        profile_only = {i for i, u in enumerate(ids) if u is not None and not self.has_history[u]}
        if not self.model.feature_path:
            ids = [None if i in profile_only else u for i, u in enumerate(ids)]
        known = [i for i, u in enumerate(ids) if u is not None and answers[i] is None]
        self._recommend_profiles(requests, ids, answers)
        if known:
            users = torch.tensor([ids[i] for i in known], dtype=torch.long)
            scores = self.model.score(users).float()
            masked = torch.tensor([requests[i].exclude_seen for i in known])
            if masked.any():
                positions = torch.nonzero(masked).ravel()
                row, item = self.model.seen.rows(users[positions].to(self.model.device))
                scores[positions.to(scores.device)[row.to(scores.device)], item.to(scores.device)] = float("-inf")
            items, values = self._top(scores, max(requests[i].k for i in known))
            for row_number, i in enumerate(known):
                answers[i] = UserRecommendations(
                    user=requests[i].user, fallback="profile" if i in profile_only else None, model_id=self.model_id,
                    items=self._scored(items[row_number], values[row_number], values[row_number], requests[i].k))
        for i, answer in enumerate(answers):
            if answer is None:
                items, counts = self.popularity.top(requests[i].k)
                answers[i] = UserRecommendations(user=requests[i].user, fallback="popularity", model_id=self.model_id,
                                                 items=self._scored(items, counts, counts, requests[i].k))
            if requests[i].new_items and isinstance(answers[i], UserRecommendations):
                try:
                    answers[i] = self._with_new_items(requests[i], answers[i], ids[i])
                except ServingError as err:
                    answers[i] = err
        return answers

    def _with_new_items(self, request: UserRecommendationRequest, answer: UserRecommendations,
                        user: int | None) -> UserRecommendations:
        """``answer`` with the request's new items ranked in, scored by the feature path for the
        user (or its profile). A popularity answer leaves them out: counts and scores differ."""
        clash = next((item for item in request.new_items if item in self.item_index), None)
        if clash is not None:
            raise ServingError(422, f"{clash!r} is in the catalogue already: it is ranked as such", f"new_items.{clash}")
        codes = [self._checked_codes(self.model.item_codes, features, f"new_items.{item}")
                 for item, features in request.new_items.items()]
        if answer.fallback == "popularity":
            return answer
        if user is not None:
            scores = self.model.score_new_items(codes, user=user)
        else:
            scores = self.model.score_new_items(codes, profile=self.model.profile_codes(request.profile))
        new = [ScoredItem(item=item, score=float(score)) for item, score in zip(request.new_items, scores.tolist(),
                                                                                strict=True)]
        ranked = sorted([*answer.items, *new], key=lambda scored: -scored.score)  # stable: ties keep the catalogue first
        return answer.model_copy(update={"items": ranked[: request.k]})

    def _recommend_profiles(self, requests: list[UserRecommendationRequest], ids: list[int | None],
                            answers: list) -> None:
        """Fill the answers of unknown users who sent a profile the model can read, one forward
        pass for all of them; a bad profile answers its own request with a 422."""
        if not self.model.feature_path:
            return  # profiles are ignored: popularity, as for any unknown user
        profiled, codes = [], []
        for i, request in enumerate(requests):
            if ids[i] is None and request.profile is not None and answers[i] is None:
                try:
                    codes.append(self._checked_codes(self.model.profile_codes, request.profile, "profile"))
                    profiled.append(i)
                except ServingError as err:
                    answers[i] = err
        if profiled:
            scores = self.model.score_profiles(codes).float()
            items, values = self._top(scores, max(requests[i].k for i in profiled))
            for row, i in enumerate(profiled):
                answers[i] = UserRecommendations(user=requests[i].user, fallback="profile", model_id=self.model_id,
                                                 items=self._scored(items[row], values[row], values[row], requests[i].k))

    def recommend_histories(self, requests: list[HistoryRecommendationRequest]) -> list[Recommendations | ServingError]:
        """Recommendations from recent items: the model's own history scoring where it has one
        (sequential models, EASE, ItemKNN, RP3beta, Mult-VAE; MF by fold-in), else summed
        item-item cosine similarity; popularity when the history says nothing."""
        answers: list[Recommendations | ServingError | None] = [None] * len(requests)
        histories: dict[int, np.ndarray] = {}
        for i, request in enumerate(requests):
            try:
                histories[i] = self._item_ids(request.items, "items")
            except ServingError as err:
                answers[i] = err
        rows = list(histories)
        if rows:
            batch = [histories[i] for i in rows]
            hidden = [batch[n] if requests[i].exclude_seen else batch[n][:0] for n, i in enumerate(rows)]
            ranked = self._rank_histories(batch, hidden, [requests[i].k for i in rows])
            for i, (fallback, items) in zip(rows, ranked, strict=True):
                answers[i] = Recommendations(fallback=fallback, model_id=self.model_id, items=items)
        return answers

    def check_events(self, request: EventsRequest, now: float) -> tuple[list[str], list[float]]:
        """The (items, timestamps) of ``POST /events`` once every field is valid: known items, one
        timestamp per item, none beyond ``now`` + ``MAX_CLOCK_SKEW_S``; without timestamps, all
        at ``now``. Raises a 422 naming the first bad field."""
        self._item_ids(request.items, "items")
        if request.timestamps is None:
            return list(request.items), [now] * len(request.items)
        if len(request.timestamps) != len(request.items):
            raise ServingError(422, f"has {len(request.timestamps)} values for {len(request.items)} items: give "
                                    "one per item, or none for the time they arrive", "timestamps")
        for n, timestamp in enumerate(request.timestamps):
            if timestamp > now + MAX_CLOCK_SKEW_S:
                raise ServingError(422, f"{timestamp} lies in the future (server time {now:.0f})", f"timestamps.{n}")
        return list(request.items), list(request.timestamps)

    def similar_items(self, requests: list[SimilarItemsRequest]) -> list[SimilarItems | ServingError]:
        """Items by cosine similarity of their training columns; only positive similarities. A
        new item given by its ``features`` is compared with the catalogue in the model's item
        space instead (models with a feature path; else a 409)."""
        answers: list[SimilarItems | ServingError | None] = [None] * len(requests)
        targets: dict[int, np.ndarray] = {}
        described: dict[int, list[list[int]]] = {}
        for i, request in enumerate(requests):
            try:
                if request.features is not None:
                    described[i] = self._checked_codes(self.model.item_codes, request.features, "features")
                else:
                    targets[i] = self._item_ids([request.item], "item")
            except ServingError as err:
                answers[i] = err
        if described:
            rows = list(described)
            sims = self.model.similar_to_items([described[i] for i in rows]).float().cpu()
            sims[sims <= 0] = float("-inf")
            items, values = self._top(sims, max(requests[i].k for i in rows))
            for n, i in enumerate(rows):
                answers[i] = SimilarItems(item=None, model_id=self.model_id,
                                          items=self._scored(items[n], values[n], values[n], requests[i].k))
        rows = list(targets)
        if rows:
            sims = torch.from_numpy(self.similarity.scores([targets[i] for i in rows]))
            sims[torch.arange(len(rows)), torch.as_tensor([int(targets[i][0]) for i in rows])] = float("-inf")
            sims[sims <= 0] = float("-inf")
            items, values = self._top(sims, max(requests[i].k for i in rows))
            for n, i in enumerate(rows):
                answers[i] = SimilarItems(item=requests[i].item, model_id=self.model_id,
                                          items=self._scored(items[n], values[n], values[n], requests[i].k))
        return answers

    def predict_rating(self, request: RatingRequest) -> RatingPrediction:
        if self.model.task != "rating":
            raise ServingError(409, f"this {self.model.family!r} model was trained for ranking and does not "
                                    "predict ratings: serve a model trained with task=rating")
        user = self.user_index.get(request.user)
        if user is None:
            raise ServingError(422, f"unknown user {request.user!r}: ratings are predicted only for users "
                                    "seen in training", "user")
        item = self._item_ids([request.item], "item")
        rating = self.model.predict(torch.tensor([user]), torch.as_tensor(item))
        return RatingPrediction(user=request.user, item=request.item, rating=float(rating[0]),
                                model_id=self.model_id)

    # -- helpers ----------------------------------------------------------------------------
    def _checked_codes(self, encode, given: dict, where: str) -> list[list[int]]:
        """``encode`` (the model's ``profile_codes`` or ``item_codes``) of a request's feature
        values: a model without that feature path is a 409, a bad value a 422 naming it."""
        try:
            return encode(given, where)
        except UnsupportedOperation as err:
            raise ServingError(409, f"{err}: serve a model with a feature path (deepcf)", where.split(".")[0]) from None
        except ValueError as err:
            field, _, message = str(err).partition(": ")
            raise ServingError(422, message, field) from None

    def _item_ids(self, raw: list[str], field: str) -> np.ndarray:
        ids = [self.item_index.get(x) for x in raw]
        unknown = [x for x, i in zip(raw, ids, strict=True) if i is None]
        if unknown:
            shown = ", ".join(repr(x) for x in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            raise ServingError(422, f"unknown item id{'s' if len(unknown) > 1 else ''} {shown}", field)
        return np.asarray(ids, dtype=np.int64)

    def _with_events(self, requests: list[UserRecommendationRequest],
                     recent: dict[str, list[str]]) -> list[UserRecommendations | None]:
        """Answers for the requests whose user has recent events (None for the others): the
        user's training history (``Recommender.user_history``; none for a user unknown to the
        model) followed by the events, scored as ``/recommend/history`` scores a history. Events
        on items this model does not know (left from a model swapped out) are skipped."""
        answers: list[UserRecommendations | None] = [None] * len(requests)
        events = {i: [self.item_index[x] for x in recent.get(r.user, ()) if x in self.item_index]
                  for i, r in enumerate(requests)}
        rows = [i for i in events if events[i]]
        if not rows:
            return answers
        users = [self.user_index.get(requests[i].user) for i in rows]
        past = [self.model.user_history(u) if u is not None else np.empty(0, np.int64) for u in users]
        histories = [np.concatenate([p, events[i]]).astype(np.int64) for p, i in zip(past, rows, strict=True)]
        seen = [self.seen.indices[self.seen.indptr[u]:self.seen.indptr[u + 1]] if u is not None else [] for u in users]
        hidden = [np.concatenate([s, events[i]]).astype(np.int64) if requests[i].exclude_seen else np.empty(0, np.int64)
                  for s, i in zip(seen, rows, strict=True)]
        ranked = self._rank_histories(histories, hidden, [requests[i].k for i in rows])
        for i, (fallback, items) in zip(rows, ranked, strict=True):
            answers[i] = UserRecommendations(user=requests[i].user, fallback=fallback, model_id=self.model_id,
                                             items=items, recent_events=len(events[i]))
        return answers

    def _rank_histories(self, histories: list[np.ndarray], hidden: list[np.ndarray],
                        ks: list[int]) -> list[tuple[str | None, list[ScoredItem]]]:
        """(fallback, top ``k`` items) per history, the ``hidden`` items of each left out."""
        key, reported, fallbacks = self._history_scores(histories)
        lengths = [len(h) for h in hidden]
        if sum(lengths):
            key[np.repeat(np.arange(len(hidden)), lengths), np.concatenate(hidden)] = float("-inf")
        items, ranked = self._top(key, max(ks))
        values = reported.gather(1, torch.as_tensor(items).clamp(min=0)).numpy()
        return [(fallbacks[n], self._scored(items[n], values[n], ranked[n], k)) for n, k in enumerate(ks)]

    def _history_scores(self, histories: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, list[str | None]]:
        """(ranking key, reported score, fallback) per history, float64 rows over all items.
        Rows start as popularity; rows the model (or, for families that cannot score a history,
        item similarity) can speak for are replaced, equal scores ordered by popularity."""
        counts = torch.as_tensor(self.popularity.counts)
        reported = counts.repeat(len(histories), 1)
        key = reported.clone()
        fallbacks: list[str | None] = ["popularity"] * len(histories)
        nonempty = [n for n, h in enumerate(histories) if len(h)]
        if not nonempty:
            return key, reported, fallbacks
        if self.model.scores_history or self.model.folds_in:
            scores = self.model.score_history([histories[n].tolist() for n in nonempty]).double().cpu()
            signal = (scores != scores[:, :1]).any(dim=1)  # a constant row (no neighbour known) says nothing
            source = None
        else:
            scores = torch.from_numpy(self.similarity.scores([histories[n] for n in nonempty]))
            signal = (scores > 0).any(dim=1)
            source = "item_similarity"
        for row, n in enumerate(nonempty):
            if signal[row]:
                reported[n] = scores[row]
                key[n] = scores[row] + self.tiebreak
                fallbacks[n] = source
        return key, reported, fallbacks

    def _top(self, scores: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(item ids, their scores) of the ``k`` best per row, equal scores in ascending item id
        (an answer does not depend on its batch-mates); empty slots: item -1, score -inf."""
        items = ranked_items(scores, min(k, self.n_items))
        values = scores.gather(1, items.clamp(min=0)).masked_fill(items < 0, float("-inf"))
        return items.cpu().numpy(), values.cpu().numpy()

    def _scored(self, items: np.ndarray, values: np.ndarray, ranked: np.ndarray, k: int) -> list[ScoredItem]:
        """The first ``k`` items whose ranking key is finite (masked items carry -inf)."""
        keep = np.isfinite(ranked[:k])
        items, values = items[:k][keep], values[:k][keep]
        titles = self.titles[items].tolist() if self.titles is not None else [None] * len(items)
        return [ScoredItem(item=i, score=s, title=t)
                for i, s, t in zip(self.item_ids[items].tolist(), values.tolist(), titles, strict=True)]
