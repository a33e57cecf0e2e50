"""The Ray Serve application: a FastAPI ingress (OpenAPI docs at ``/docs``) over ``ModelService``.

The model directory sits in the deployment's ``user_config`` (see ``ServeSettings``). Serve
calls ``reconfigure`` when that config changes on a running app (``serve deploy`` with a new
``model_dir``): the new model is loaded in a worker thread while the old one keeps answering,
then one reference is swapped. Each batch takes the reference once, so a request never sees
half of one model and half of another.

With a token (``RECSEARCH_SERVE_TOKEN`` where the replicas start), ``BearerTokenGuard`` refuses
every request but ``/health`` before routing: before the body is read or validated, and before
the docs (``/docs``, ``/redoc``, ``/openapi.json``). ``/health`` shows no file paths.

Users' recent events (``POST /events``) live in the application's one ``EventStore`` replica
(events.py), which every replica asks, once per batch of ``/recommend/user``, for the events of
the batch's users: an event sent to any replica shows in the next answer of every replica.
Without the store (``build_app(events=False)``, ``recsearch serve --no-events``) ``/events`` answers
409 and ``/recommend/user`` skips that call.

``serve run serve/config.yaml`` and ``serve deploy`` import ``app`` from here;
``recsearch serve`` builds one with ``build_app``.
"""

import asyncio
import logging
import time
from typing import Annotated, Any

from fastapi import FastAPI, Path, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from recsearch import __version__, telemetry
from recsearch.runtime import configure_threads
from recsearch.serving import DEFAULT_BATCH_WAIT_S, DEFAULT_MAX_BATCH_SIZE, TOKEN_ENV
from recsearch.serving.events import EventLimits, EventStore
from recsearch.serving.schemas import (
    BatchingStats,
    ErrorBody,
    EventsRequest,
    EventsStored,
    Health,
    HistoryRecommendationRequest,
    ModelInfo,
    RatingPrediction,
    RatingRequest,
    RecentHistory,
    Recommendations,
    ServeSettings,
    SimilarItems,
    SimilarItemsRequest,
    UserRecommendationRequest,
    UserRecommendations,
)
from recsearch.serving.service import (
    ModelService,
    ServingError,
    check_bearer,
    configured_token,
    describe_validation_errors,
    read_description,
    resolve_model_dir,
    without_paths,
)

logger = logging.getLogger("ray.serve")

api = FastAPI(
    title="recsearch",
    version=__version__,
    description="Recommendations from a model trained by recsearch. Raw user and item ids as in the "
                "dataset. Errors are JSON `{error, field}`.",
)
bearer = HTTPBearer(auto_error=False, description=f"needed when the server has {TOKEN_ENV} set")
# Documents the scheme in the OpenAPI schema (the docs' Authorize button); the check itself is
# BearerTokenGuard's, which runs before any of this.
GUARDED = [Security(bearer)]
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (401, 409, 422, 500, 503)
}
OPEN_PATHS = frozenset({"/health"})  # what answers without the token


class BearerTokenGuard:
    """ASGI middleware: with a token configured, a request for anything but ``OPEN_PATHS``
    without ``Authorization: Bearer <token>`` gets a 401 at once: before routing, before its
    body is read or validated (no 422 that describes the API to a stranger), docs included."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self.token = configured_token()  # built in the replica, on its first request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.token and _route_path(scope) not in OPEN_PATHS:
            try:
                check_bearer(_bearer_credentials(scope), self.token)
            except ServingError as refused:
                await JSONResponse(refused.body(), status_code=refused.status, headers=refused.headers)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path below the application's route prefix (Serve may leave the prefix in ``path``)."""
    path, prefix = scope.get("path", ""), scope.get("root_path", "")
    return (path[len(prefix):] or "/") if prefix and path.startswith(prefix) else path


def _bearer_credentials(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            return credentials.strip() if scheme.lower() == "bearer" else None
    return None


api.add_middleware(BearerTokenGuard)  # added first: innermost, inside the error handler below


@api.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    return JSONResponse(describe_validation_errors(list(error.errors())).model_dump(), status_code=422)


@api.exception_handler(ServingError)
async def _serving_error(request: Request, error: ServingError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


@api.exception_handler(HTTPException)
async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    body = ErrorBody(error=str(error.detail)).model_dump()
    return JSONResponse(body, status_code=error.status_code, headers=getattr(error, "headers", None))


@api.middleware("http")
async def _no_bare_server_errors(request: Request, call_next):
    """Whatever a model raises reaches the client as JSON, with the details in the replica log."""
    try:
        return await call_next(request)
    except Exception as error:
        logger.exception("unexpected error serving %s", request.url.path)
        body = ErrorBody(error=f"internal error ({type(error).__name__}); see the server log").model_dump()
        return JSONResponse(body, status_code=500)


@api.middleware("http")
async def _record_metrics(request: Request, call_next):
    """Requests by endpoint and status, and their latency, for Prometheus (recsearch.telemetry).
    Added last, so it is the outermost middleware: it sees every response the client gets."""
    start = time.perf_counter()
    response = await call_next(request)
    route = getattr(request.scope.get("route"), "path", None)
    telemetry.record_request(route, response.status_code, time.perf_counter() - start)
    return response


def _batched(method=None, *, concurrent: int = 1):
    def wrap(method):
        return serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S,
                           max_concurrent_batches=concurrent)(method)

    return wrap(method) if method else wrap


def _answer(result):
    """A batch slot holds either the response or the request's own error."""
    if isinstance(result, ServingError):
        raise result
    return result


@serve.deployment(name="Recommender", max_ongoing_requests=2 * DEFAULT_MAX_BATCH_SIZE,
                  ray_actor_options={"num_cpus": 1})
@serve.ingress(api)
class RecommenderServer:
    def __init__(self, events: DeploymentHandle | None = None):
        configure_threads()
        self.events = events
        self.service: ModelService | None = None
        self.settings: ServeSettings | None = None
        self.reload_error: str | None = None
        self.token = configured_token()
        self.batching = BatchingStats(max_batch_size=DEFAULT_MAX_BATCH_SIZE)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Load the configured model, then swap it in. A failed hot swap keeps the old model
        serving and reports why in /health; a failed first load fails the deployment."""
        try:
            settings = ServeSettings.model_validate(user_config)
            if self._needs_reload(settings):
                replaced = self.service
                self.service = await asyncio.to_thread(ModelService.load, settings.model_dir)
                telemetry.record_model(self.service, replaced)
                logger.info("serving model %s from %s", self.service.model_id, self.service.directory)
        except Exception as error:  # anything: a broken new model must not take the old one down
            if self.service is None:
                raise
            self.reload_error = f"{type(error).__name__}: {error}"
            logger.error("hot swap failed, still serving model %s: %s", self.service.model_id, self.reload_error)
            return
        self.settings, self.reload_error = settings, None
        self.batching.max_batch_size = settings.max_batch_size
        for handler in (self._user_batch, self._history_batch, self._similar_batch):
            handler.set_max_batch_size(settings.max_batch_size)
            handler.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)

    def _needs_reload(self, settings: ServeSettings) -> bool:
        if self.service is None or self.settings is None or settings.revision != self.settings.revision:
            return True
        directory = resolve_model_dir(settings.model_dir)
        return directory != self.service.directory or read_description(directory) != self.service.description

    def _event_store(self) -> DeploymentHandle:
        if self.events is None:
            raise ServingError(409, "real-time events are off on this server (started with --no-events)")
        return self.events

    def _loaded(self) -> ModelService:
        service = self.service
        if service is None:
            raise ServingError(503, "no model loaded: give the deployment a user_config with model_dir")
        return service

    # -- endpoints ----------------------------------------------------------------------------
    @api.get("/health", response_model=Health, responses={503: {"model": Health}})
    async def health(self):
        """Liveness and which model is loaded; never needs the token, so it shows no paths."""
        service, auth = self.service, "bearer" if self.token else "none"
        if service is None:
            return JSONResponse(Health(status="no_model", auth=auth).model_dump(), status_code=503)
        reload_error = without_paths(self.reload_error) if self.reload_error else None
        return Health(status="ok", model_id=service.model_id, family=service.model.family, auth=auth,
                      reload_error=reload_error, batching=self.batching)

    @api.get("/model", response_model=ModelInfo, responses=ERRORS, dependencies=GUARDED)
    async def model_info(self):
        """Family, hyperparameters, validation/test metrics and provenance of the loaded model."""
        return self._loaded().info()

    @api.post("/recommend/user", response_model=UserRecommendations, responses=ERRORS, dependencies=GUARDED)
    async def recommend_user(self, body: UserRecommendationRequest):
        """Top-k items for a user of the training data; unknown users are answered from their
        profile (models with a feature path) or get popular items."""
        self._loaded()
        return _answer(await self._user_batch(body))

    @api.post("/recommend/history", response_model=Recommendations, responses=ERRORS, dependencies=GUARDED)
    async def recommend_history(self, body: HistoryRecommendationRequest):
        """Top-k items for an anonymous user known by recent items (oldest first)."""
        self._loaded()
        return _answer(await self._history_batch(body))

    @api.post("/similar-items", response_model=SimilarItems, responses=ERRORS, dependencies=GUARDED)
    async def similar_items(self, body: SimilarItemsRequest):
        """Items most often consumed by the same users (cosine over the training matrix), or
        closest to a new item's features in the model's item space."""
        self._loaded()
        return _answer(await self._similar_batch(body))

    @api.post("/predict-rating", response_model=RatingPrediction, responses=ERRORS, dependencies=GUARDED)
    async def predict_rating(self, body: RatingRequest):
        """Predicted rating of (user, item); only for models trained with task=rating (else 409)."""
        return self._loaded().predict_rating(body)

    @api.post("/events", response_model=EventsStored, responses=ERRORS, dependencies=GUARDED)
    async def add_events(self, body: EventsRequest):
        """Append items a user just interacted with to the user's recent events (bounded: the
        oldest are dropped); ``/recommend/user`` reflects them at once, on every replica."""
        items, timestamps = self._loaded().check_events(body, time.time())
        stored = await self._event_store().append.remote(body.user, items, timestamps)
        return EventsStored(user=body.user, accepted=len(items), held=stored.held, dropped=stored.dropped)

    @api.get("/events/{user}", response_model=RecentHistory, responses=ERRORS, dependencies=GUARDED)
    async def recent_events(self, user: Annotated[str, Path(min_length=1, max_length=256)]):
        """A user's held events, oldest first (none: empty lists)."""
        items, timestamps = await self._event_store().history.remote(user)
        return RecentHistory(user=user, items=items, timestamps=timestamps)

    # -- batches: one forward pass for all concurrent requests of a kind ----------------------
    @_batched(concurrent=2)  # while one batch waits for the event store, the next one can score
    async def _user_batch(self, requests: list[UserRecommendationRequest]) -> list:
        self._count(requests)
        recent = await self.events.recent.remote([r.user for r in requests]) if self.events else None
        return self._recorded("/recommend/user", await asyncio.to_thread(self.service.recommend_users, requests, recent))

    @_batched
    async def _history_batch(self, requests: list[HistoryRecommendationRequest]) -> list:
        self._count(requests)
        return self._recorded("/recommend/history", await asyncio.to_thread(self.service.recommend_histories, requests))

    @_batched
    async def _similar_batch(self, requests: list[SimilarItemsRequest]) -> list:
        self._count(requests)
        return self._recorded("/similar-items", await asyncio.to_thread(self.service.similar_items, requests))

    def _count(self, requests: list) -> None:
        stats = self.batching
        stats.batches += 1
        stats.requests += len(requests)
        stats.largest = max(stats.largest, len(requests))

    def _recorded(self, route: str, answers: list) -> list:
        telemetry.record_batch(route, answers)
        return answers


app = RecommenderServer.bind(EventStore.bind())


def build_app(settings: ServeSettings, *, replicas: int = 1, max_replicas: int | None = None,
              num_cpus: float = 1.0, num_gpus: float = 0.0, env_vars: dict[str, str] | None = None,
              events: bool = True, event_limits: EventLimits | None = None):
    """The application for ``serve.run``: fixed ``replicas``, or autoscaling between ``replicas``
    and ``max_replicas`` aiming at one full batch in flight per replica, and unless ``events`` is
    false its event store, holding at most ``event_limits`` (default: ``EventLimits()``)."""
    actor_options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus}
    if env_vars:
        actor_options["runtime_env"] = {"env_vars": dict(env_vars)}
    if max_replicas and max_replicas > replicas:
        scaling: dict[str, Any] = {"autoscaling_config": {
            "min_replicas": replicas, "max_replicas": max_replicas,
            "target_ongoing_requests": settings.max_batch_size}}
    else:
        scaling = {"num_replicas": replicas}
    return RecommenderServer.options(
        user_config=settings.model_dump(), ray_actor_options=actor_options,
        max_ongoing_requests=max(2 * settings.max_batch_size, 8), **scaling,
    ).bind(EventStore.options(user_config=(event_limits or EventLimits()).model_dump()).bind() if events else None)
