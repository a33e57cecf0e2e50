"""Request and response bodies of the HTTP API, and the deployment's ``user_config``.

Requests are strict: ids are strings (raw ids as in the dataset), ``k`` an integer, flags
booleans, unknown keys rejected, so a typo or a wrong type is a 422 naming the field instead
of a silently different answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from recsearch.serving import (
    DEFAULT_BATCH_WAIT_S,
    DEFAULT_MAX_BATCH_SIZE,
    MAX_EVENTS_PER_REQUEST,
    MAX_HISTORY,
    MAX_K,
)

RawId = Annotated[str, StringConstraints(min_length=1, max_length=256)]
MAX_NEW_ITEMS = 100  # new items one request may describe (each costs a feature encoding)
ItemCount = Annotated[int, Field(ge=1, le=MAX_K, description=f"number of items to return, 1..{MAX_K}")]
Fallback = Literal["item_similarity", "popularity", "profile"]
FeatureName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
# raw feature values of a new user or item: one string, or a list of strings for a multi-valued
# feature (genres); the service checks each against the model's vocabulary, so that a wrong type
# or value is a 422 naming ``profile.<feature>`` (a union type here would name its members)
Features = Annotated[dict[FeatureName, Any], Field(max_length=64)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class UserRecommendationRequest(_Request):
    user: RawId = Field(description="raw user id as in the dataset; unknown users get popular items")
    k: ItemCount = 10
    exclude_seen: bool = Field(True, description="leave out items the user interacted with in training")
    profile: Features | None = Field(
        None, description="user features (e.g. {\"age\": \"25-34\", \"gender\": \"F\"}) for a user not in the "
                          "training data: a model with a feature path answers from them (fallback \"profile\"); "
                          "ignored for known users")
    new_items: Annotated[dict[RawId, Features], Field(max_length=MAX_NEW_ITEMS)] | None = Field(
        None, description="items not in the catalogue, by their features (e.g. {\"film-9\": {\"genre\": [\"Drama\"]}}), "
                          "ranked with the catalogue by a model with a feature path; left out of popularity answers")


class HistoryRecommendationRequest(_Request):
    items: list[RawId] = Field(max_length=MAX_HISTORY, description="recent raw item ids, oldest first")
    k: ItemCount = 10
    exclude_seen: bool = Field(True, description="leave out the items of the history")


class SimilarItemsRequest(_Request):
    item: RawId | None = Field(None, description="raw item id (or give features)")
    features: Features | None = Field(
        None, description="a new item's features (e.g. {\"genre\": [\"Drama\"]}) instead of an id: items closest "
                          "to it in the model's item space (models with a feature path)")
    k: ItemCount = 10

    @model_validator(mode="after")
    def _one_of(self):
        if (self.item is None) == (self.features is None):
            raise ValueError("give exactly one of item (a known item's id) and features (a new item's)")
        return self


class RatingRequest(_Request):
    user: RawId
    item: RawId


Timestamp = Annotated[float, Field(ge=0, allow_inf_nan=False, description="Unix time in seconds")]


class EventsRequest(_Request):
    user: RawId = Field(description="raw user id; a user unknown to the model gets a history of its own")
    items: list[RawId] = Field(min_length=1, max_length=MAX_EVENTS_PER_REQUEST,
                               description="raw ids of the items the user just interacted with, oldest first")
    timestamps: list[Timestamp] | None = Field(
        None, description="when each happened (one per item); by default when the server receives them")


class EventsStored(BaseModel):
    user: str
    accepted: int = Field(description="events of this request")
    held: int = Field(description="events now held for the user")
    dropped: int = Field(description="the user's oldest events dropped to stay within the per-user limit")


class RecentHistory(BaseModel):
    user: str
    items: list[str] = Field(description="the user's held events, oldest first")
    timestamps: list[float]


class ScoredItem(BaseModel):
    item: str
    score: float
    title: str | None = None


class Recommendations(BaseModel):
    items: list[ScoredItem]
    fallback: Fallback | None = Field(
        description="null when the model personalised the answer, else how it was made instead")
    model_id: str = Field(description="identifies the model that answered (changes on a hot swap)")


class UserRecommendations(Recommendations):
    user: str
    recent_events: int = Field(0, description="events of the user's (POST /events) the answer reflects")


class SimilarItems(BaseModel):
    item: str | None = Field(description="the item asked about; null when it was given by its features")
    items: list[ScoredItem] = Field(description="items with positive cosine similarity, best first")
    model_id: str


class RatingPrediction(BaseModel):
    user: str
    item: str
    rating: float
    model_id: str


class BatchingStats(BaseModel):
    max_batch_size: int
    batches: int = Field(0, description="forward passes run since the replica started")
    requests: int = Field(0, description="requests they answered")
    largest: int = Field(0, description="most requests answered by one forward pass")


class Health(BaseModel):
    status: Literal["ok", "no_model"]
    model_id: str | None = None
    family: str | None = None
    auth: Literal["bearer", "none"]
    reload_error: str | None = Field(None, description="why the last hot swap failed (old model kept)")
    batching: BatchingStats | None = None


class ModelInfo(BaseModel):
    model_id: str
    path: str
    family: str
    task: str
    hparams: dict[str, Any]
    seed: int
    n_users: int
    n_items: int
    saved_at: str | None
    loaded_at: str
    metadata: dict[str, Any] = Field(description="what the exporter recorded: metrics, sweep, split")


class ErrorBody(BaseModel):
    error: str
    field: str | None = Field(None, description="the request field at fault, when there is one")


class ServeSettings(BaseModel):
    """The deployment's ``user_config``; changing it on a running app is a hot swap."""

    model_config = ConfigDict(extra="forbid")

    model_dir: str = Field(min_length=1, description="absolute path of a model directory, or of a sweep "
                                                     "directory with best/")
    max_batch_size: int = Field(DEFAULT_MAX_BATCH_SIZE, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(DEFAULT_BATCH_WAIT_S, ge=0.0, le=1.0)
    revision: str | int | None = Field(
        None, description="change it to reload a model directory that was re-exported in place")

    @field_validator("model_dir")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not Path(value).expanduser().is_absolute():
            raise ValueError(f"must be an absolute path, got {value!r}: replicas do not run in the "
                             "directory you deploy from")
        return value
