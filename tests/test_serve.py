"""The Ray Serve application end to end on a local Ray behind the HAProxy ingress, as
``recsearch serve`` runs it: deployed with ``serve deploy`` from the shipped serve/config.yaml,
every endpoint and error path over HTTP, batching, hot swaps (good, broken, to a compressed
export) under concurrent load, the bearer token on an app started with ``serve.run``, and every
endpoint fuzzed from the OpenAPI schema with and without the token. Then ``recsearch serve``
itself: falling back to Serve's proxy when HAProxy cannot start, and restarting on its port.
One Ray cluster and one Serve instance for the module's API tests; before each test the ranking
model is put back in place if a test before swapped it out, so that every test passes alone
and in any order."""

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import schemathesis
import yaml
from helpers.ports import EXCLUSIVE_SERVE_PORTS, with_free_port
from helpers.serve_process import ServeProcess
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from recsearch.models.deepcf import DeepCF
from recsearch.models.knn import ItemKNN
from recsearch.models.mf import MatrixFactorization
from recsearch.models.pop import Popularity
from recsearch.serving import TOKEN_ENV, ingress
from recsearch.serving.app import build_app
from recsearch.serving.export import export_model
from recsearch.serving.schemas import ServeSettings
from recsearch.serving.service import resolve_model_dir

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parent.parent
SERVE_CLI = Path(sys.executable).parent / "serve"
TOKEN = "test-token-123"
CONFIG = ROOT / "serve" / "config.yaml"


class Server:
    """The running cluster: where to reach it and how to (re)deploy the declarative app."""

    def __init__(self, url: str, dashboard: str, workdir: Path, env: dict[str, str]):
        self.url, self.dashboard, self.workdir, self.env = url, dashboard, workdir, env
        self.deploys = 0

    def deploy(self, model_dir: str, timeout: float = 120) -> None:
        """``serve deploy`` of serve/config.yaml with this model, as an operator would."""
        config = yaml.safe_load(CONFIG.read_text())
        config["http_options"]["port"] = int(self.url.rsplit(":", 1)[1])  # the port Serve listens on
        deployment = config["applications"][0]["deployments"][0]
        deployment.pop("autoscaling_config")  # one replica: the swap must happen under load, in place
        deployment["num_replicas"] = 1
        deployment["ray_actor_options"]["num_cpus"] = 0.5
        deployment["user_config"].update(model_dir=model_dir, batch_wait_timeout_s=0.05)
        self.deploys += 1
        path = self.workdir / f"config-{self.deploys}.yaml"
        path.write_text(yaml.safe_dump(config))
        deadline = time.monotonic() + timeout
        while True:  # the dashboard's Serve API can lag behind ray.init by a few seconds
            done = subprocess.run([str(SERVE_CLI), "deploy", str(path), "--address", self.dashboard],
                                  env=self.env, capture_output=True, text=True, timeout=timeout)
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"serve deploy failed: {done.stdout}\n{done.stderr}")
            time.sleep(1)

    def health(self, prefix: str = "") -> dict:
        return httpx.get(f"{self.url}{prefix}/health", timeout=30).json()

    def wait_for(self, condition, timeout: float = 180, prefix: str = "") -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                health = self.health(prefix)
                if condition(health):
                    return health
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the server did not reach the expected state within {timeout}s")

    def post(self, path: str, body, **kwargs) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, timeout=30, **kwargs)

    def serving(self, model_dir: Path) -> dict:
        """Make ``model_dir`` the model served, with no failed hot swap reported: deploy it
        again if a test before left another model (or a reload error) in place."""
        directory = str(resolve_model_dir(model_dir))

        def in_place(health: dict) -> bool:
            return (health["status"] == "ok" and health["reload_error"] is None
                    and httpx.get(f"{self.url}/model", timeout=30).json()["path"] == directory)

        try:
            health = self.health()
            if in_place(health):
                return health
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        self.deploy(str(model_dir))
        return self.wait_for(in_place)


@pytest.fixture(scope="module")
def models(planted_split, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("served")
    ranking = Popularity(task="ranking").fit(planted_split.train).save(
        root / "pop-ranking", metadata={"valid": {"ndcg@10": 0.3}, "test": {"ndcg@10": 0.25}, "sweep": "unit"})
    Popularity(task="rating", shrinkage=1.0).fit(planted_split.train).save(root / "sweep" / "best")
    mf = MatrixFactorization(seed=0, device="cpu", dim=8).fit(planted_split.train, 2).save(root / "mf")
    export_model(mf, root / "mf-int8", precision="int8")
    itemknn = ItemKNN(k=20).fit(planted_split.train).save(root / "itemknn")
    features = DeepCF(seed=0, device="cpu", dim=16, lr=0.01, l2=0.0, user_id_dropout=0.5, item_id_dropout=0.5,
                      batch_size=256).fit(planted_split.train, 10).save(root / "deepcf")
    return {"ranking": ranking, "rating_sweep": root / "sweep", "int8": root / "mf-int8", "itemknn": itemknn,
            "features": features}


@pytest.fixture(scope="module")
def serve_instance(models, tmp_path_factory):
    """Ray with its dashboard, and Serve's HAProxy ingress started with serve/config.yaml's
    options on a free port (the dashboard binds one itself and reports it)."""
    import ray
    from ray import serve

    # RAY_AUTH_MODE explicit, so the test does not depend on whether a Ray token file exists on
    # this machine; Serve's one ingress binds its port exclusively (see helpers.ports); HAProxy
    # as `recsearch serve` starts it, its side listeners on ports of their own.
    env = {"RAY_AUTH_MODE": "disabled", **EXCLUSIVE_SERVE_PORTS, **ingress.haproxy_environment()}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    context = ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
                       dashboard_port=0, object_store_memory=100 * 2**20)
    config = yaml.safe_load(CONFIG.read_text())

    def start_serve(port: int) -> int:
        try:
            serve.start(http_options={**config["http_options"], "port": port}, proxy_location=config["proxy_location"])
        except Exception:
            serve.shutdown()  # the controller outlives a proxy that could not bind
            raise
        return port

    try:
        http_port = with_free_port(start_serve)
        yield Server(f"http://127.0.0.1:{http_port}", f"http://{context.dashboard_url}",
                     tmp_path_factory.mktemp("serve-config"), {**os.environ, **env})
    finally:
        ray.shutdown()  # stops Serve with it, without HAProxy's 30 s of draining
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def server(serve_instance, models) -> Server:
    """The Serve instance serving the ranking model, whatever a test before deployed."""
    serve_instance.serving(models["ranking"])
    return serve_instance


def test_health_model_and_docs(server):
    health = server.health()
    assert health["status"] == "ok" and health["family"] == "pop" and health["auth"] == "none"
    info = httpx.get(f"{server.url}/model", timeout=30).json()
    assert info["model_id"] == health["model_id"] and info["task"] == "ranking"
    assert info["metadata"]["sweep"] == "unit" and info["metadata"]["valid"] == {"ndcg@10": 0.3}
    assert info["hparams"] == {"shrinkage": 10.0} and info["saved_at"]
    assert httpx.get(f"{server.url}/docs", timeout=30).status_code == 200
    paths = httpx.get(f"{server.url}/openapi.json", timeout=30).json()["paths"]
    assert {"/recommend/user", "/recommend/history", "/similar-items", "/predict-rating", "/model", "/events"} <= set(paths)


def test_endpoints(server):
    known = server.post("/recommend/user", {"user": "u5", "k": 4}).json()
    assert known["fallback"] is None and len(known["items"]) == 4 and known["items"][0]["title"]
    unknown = server.post("/recommend/user", {"user": "new-user"}).json()
    assert unknown["fallback"] == "popularity" and len(unknown["items"]) == 10
    history = server.post("/recommend/history", {"items": ["i0", "i4"], "k": 3}).json()
    assert history["fallback"] == "item_similarity" and len(history["items"]) == 3
    similar = server.post("/similar-items", {"item": "i0", "k": 3}).json()
    assert similar["item"] == "i0" and all(int(s["item"][1:]) % 4 == 0 for s in similar["items"])
    refused = server.post("/predict-rating", {"user": "u5", "item": "i0"})
    assert refused.status_code == 409 and "ranking" in refused.json()["error"]


@pytest.mark.parametrize("path, body, status, field", [
    ("/recommend/user", {"user": "u1", "k": 0}, 422, "k"),
    ("/recommend/user", {"user": "u1", "k": 1001}, 422, "k"),
    ("/recommend/user", {"user": "u1", "k": "ten"}, 422, "k"),
    ("/recommend/user", {"user": 17}, 422, "user"),
    ("/recommend/user", {"user": "u1", "exclude_seen": "no"}, 422, "exclude_seen"),
    ("/recommend/user", {"user": "u1", "limit": 3}, 422, "limit"),
    ("/recommend/user", None, 422, "body"),
    ("/recommend/user", "{not json", 422, "body"),
    ("/recommend/user", [1, 2], 422, "body"),
    ("/recommend/history", {"items": ["i1", "nope"]}, 422, "items"),
    ("/recommend/history", {"items": ["i1"] * 1001}, 422, "items"),
    ("/recommend/history", {"items": "i1"}, 422, "items"),
    ("/similar-items", {"item": "nope"}, 422, "item"),
    ("/similar-items", {"item": "i1", "k": -1}, 422, "k"),
    ("/predict-rating", {"user": "u1"}, 422, "item"),
    ("/recommend/user", {"user": "x", "profile": ["g1"]}, 422, "profile"),
    ("/similar-items", {"k": 3}, 422, "body"),
    ("/similar-items", {"features": {"genre": "g1"}}, 409, "features"),  # pop: no feature path
])
def test_bad_requests_get_a_4xx_naming_the_field(server, path, body, status, field):
    if isinstance(body, str):  # malformed JSON is sent raw
        response = httpx.post(f"{server.url}{path}", content=body,
                              headers={"content-type": "application/json"}, timeout=30)
    elif body is None:
        response = httpx.post(f"{server.url}{path}", timeout=30)
    else:
        response = server.post(path, body)
    assert response.status_code == status
    assert response.json()["field"] == field and field in response.json()["error"]


BAD_EVENTS = [  # (body, the field named)
    ({"user": "u100", "items": ["i1", "nope"]}, "items"),
    ({"user": "u100", "items": ["i1"] * 101}, "items"),
    ({"user": "u100", "items": []}, "items"),
    ({"user": "u100", "items": ["i1", "i2"], "timestamps": [1.0]}, "timestamps"),
    ({"user": "u100", "items": ["i1", "i2"], "timestamps": [1.0, -5.0]}, "timestamps.1"),
    ({"user": "u100", "items": ["i1"], "timestamps": [4.0e10]}, "timestamps.0"),  # year 3237
    ({"items": ["i1"]}, "user"),
    ('{"user": "u100", "items": [', "body"),
]


def test_events_over_http_are_validated_whole_and_reflected_at_once(server):
    """Good events show in the user's next answer; a bad request gets a 422 naming the field
    and leaves the stored events as they were (nothing of it is stored)."""
    plain = server.post("/recommend/user", {"user": "u100", "k": 5}).json()
    stored = server.post("/events", {"user": "u100", "items": ["i2", "i6"], "timestamps": [1.0e9, 1.0e9 + 60]})
    assert stored.status_code == 200 and stored.json() == {"user": "u100", "accepted": 2, "held": 2, "dropped": 0}
    held = httpx.get(f"{server.url}/events/u100", timeout=30).json()
    assert held == {"user": "u100", "items": ["i2", "i6"], "timestamps": [1.0e9, 1.0e9 + 60]}
    after = server.post("/recommend/user", {"user": "u100", "k": 5}).json()
    assert after["recent_events"] == 2 and after["fallback"] == "item_similarity"  # pop scores no history
    assert after["items"] != plain["items"] and not {"i2", "i6"} & {s["item"] for s in after["items"]}
    for body, field in BAD_EVENTS:
        response = (httpx.post(f"{server.url}/events", content=body, headers={"content-type": "application/json"},
                               timeout=30) if isinstance(body, str) else server.post("/events", body))
        assert response.status_code == 422 and response.json()["field"] == field, (body, response.json())
        assert httpx.get(f"{server.url}/events/u100", timeout=30).json() == held
    assert server.post("/recommend/user", {"user": "u100", "k": 5}).json()["items"] == after["items"]


def test_events_change_a_history_familys_answers(serve_instance, models):
    """ItemKNN scores a user's training items and events together; a user the model never saw
    gets a history from its events alone, answered as /recommend/history answers it."""
    serve_instance.serving(models["itemknn"])
    other_group = [f"i{i}" for i in range(1, 60, 4)]  # planted items of a group other than u101's
    plain = serve_instance.post("/recommend/user", {"user": "u101", "k": 5}).json()
    assert serve_instance.post("/events", {"user": "u101", "items": other_group}).status_code == 200
    after = serve_instance.post("/recommend/user", {"user": "u101", "k": 5}).json()
    assert plain["fallback"] is None and after["fallback"] is None and after["recent_events"] == len(other_group)
    assert after["items"] != plain["items"]
    assert serve_instance.post("/events", {"user": "newcomer", "items": ["i3", "i7"]}).json()["held"] == 2
    new = serve_instance.post("/recommend/user", {"user": "newcomer", "k": 5}).json()
    history = serve_instance.post("/recommend/history", {"items": ["i3", "i7"], "k": 5}).json()
    assert new["fallback"] is None and new["items"] == history["items"]


def test_profiles_and_new_items_over_http(server, models, planted):
    """A model with a feature path answers a new user from the profile and places a new item by
    its features; values outside its vocabulary are 422s naming the feature."""
    _, _, item_group = planted
    server.serving(models["features"])
    new = server.post("/recommend/user", {"user": "profiled-newcomer", "k": 5, "profile": {"group": "g2"}})
    assert new.status_code == 200 and new.json()["fallback"] == "profile"
    assert all(item_group[int(s["item"][1:])] == 2 for s in new.json()["items"])
    assert server.post("/recommend/user", {"user": "u3", "profile": {"group": "g2"}}).json()["fallback"] is None
    ranked = server.post("/recommend/user", {"user": "u3", "k": 60, "new_items": {"new-1": {"genre": ["g1", "all"]}}})
    assert ranked.status_code == 200 and "new-1" in [s["item"] for s in ranked.json()["items"]]
    similar = server.post("/similar-items", {"features": {"genre": ["g1", "all"]}, "k": 5})
    assert similar.status_code == 200 and similar.json()["item"] is None
    assert all(item_group[int(s["item"][1:])] == 1 for s in similar.json()["items"])
    for path, body, field in (("/recommend/user", {"user": "x", "profile": {"group": "g7"}}, "profile.group"),
                              ("/recommend/user", {"user": "x", "profile": {"age": "30"}}, "profile.age"),
                              ("/recommend/user", {"user": "x", "profile": {"group": 2}}, "profile.group"),
                              ("/similar-items", {"features": {"genre": ["g1", "zz"]}}, "features.genre"),
                              ("/recommend/user", {"user": "u3", "new_items": {"i1": {"genre": "g1"}}}, "new_items.i1")):
        response = server.post(path, body)
        assert response.status_code == 422 and response.json()["field"] == field, response.text


def test_unknown_routes_and_methods_are_json_errors(server):
    assert httpx.get(f"{server.url}/nowhere", timeout=30).json()["error"] == "Not Found"
    assert httpx.get(f"{server.url}/recommend/user", timeout=30).status_code == 405


def test_concurrent_requests_share_forward_passes(server):
    users = [f"u{u}" for u in range(48)]
    alone = {u: server.post("/recommend/user", {"user": u, "k": 5}).json()["items"] for u in users[:4]}
    before = server.health()["batching"]

    async def burst():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/recommend/user", json={"user": u, "k": 5}) for u in users))

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses)
    after = server.health()["batching"]
    assert after["requests"] - before["requests"] == len(users)
    assert after["batches"] - before["batches"] < len(users) and after["largest"] > 1
    for u, response in zip(users, responses, strict=True):
        assert response.json()["user"] == u
        if u in alone:
            assert response.json()["items"] == alone[u]


async def _load_during(server: Server, action, workers: int = 6, answers: int = 3,
                      timeout: float = 120) -> list[list[tuple[int, str]]]:
    """Run ``action`` (blocking) while ``workers`` clients post recommendations back to back; each
    client's (status, model_id) answers in order. The action starts once every client has had
    ``answers`` answers, and the load goes on after it until every client has had that many
    more: requests sent before, during and after the action, whatever the machine's speed."""
    stop = asyncio.Event()
    seen: list[list[tuple[int, str]]] = [[] for _ in range(workers)]

    async def every_client_has(counts: list[int]) -> None:
        deadline = time.monotonic() + timeout
        while not all(len(got) >= count for got, count in zip(seen, counts, strict=True)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"clients got {[len(a) for a in seen]} answers, not {counts}, within {timeout}s")
            await asyncio.sleep(0.02)

    async def client_loop(n: int, client: httpx.AsyncClient):
        while not stop.is_set():
            try:
                response = await client.post("/recommend/user", json={"user": f"u{n}", "k": 5})
                seen[n].append((response.status_code, response.json().get("model_id", "")))
            except httpx.HTTPError as error:
                seen[n].append((0, repr(error)))

    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        tasks = [asyncio.create_task(client_loop(n, client)) for n in range(workers)]
        try:
            await every_client_has([answers] * workers)
            await asyncio.to_thread(action)
            await every_client_has([len(got) + answers for got in seen])
        finally:
            stop.set()
            await asyncio.gather(*tasks)
    return seen


def test_hot_swap_under_load_fails_no_request(server, models):
    old = server.health()["model_id"]

    def swap():
        server.deploy(str(models["rating_sweep"]))  # a sweep directory: its best/ is loaded
        server.wait_for(lambda h: h["model_id"] != old)

    seen = asyncio.run(_load_during(server, swap))
    new = server.health()["model_id"]
    answers = [a for worker in seen for a in worker]
    assert answers and all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:3]
    assert {model for _, model in answers} == {old, new}
    for worker in seen:  # one replica: once a client got the new model it never gets the old one back
        ids = [model for _, model in worker]
        if new in ids:
            assert old not in ids[ids.index(new):]
    rating = server.post("/predict-rating", {"user": "u1", "item": "i2"})
    assert rating.status_code == 200 and 1.0 <= rating.json()["rating"] <= 5.0
    assert httpx.get(f"{server.url}/model", timeout=30).json()["path"].endswith("best")


def test_broken_hot_swap_keeps_serving_the_old_model(server, tmp_path):
    before = server.health()

    def swap():
        server.deploy(str(tmp_path / "no-such-model"))
        server.wait_for(lambda h: h["reload_error"] is not None)

    seen = asyncio.run(_load_during(server, swap, workers=2))
    assert all(status == 200 and model == before["model_id"] for worker in seen for status, model in worker)
    after = server.health()
    assert after["model_id"] == before["model_id"] and "not a model directory" in after["reload_error"]
    assert str(tmp_path) not in after["reload_error"] and "<path>" in after["reload_error"]  # /health is open


def test_hot_swap_to_an_int8_export(server, models):
    before = server.health()["model_id"]
    server.deploy(str(models["int8"]))
    health = server.wait_for(lambda h: h["model_id"] != before)
    assert health["family"] == "mf" and health["reload_error"] is None
    info = httpx.get(f"{server.url}/model", timeout=30).json()
    assert info["metadata"]["compression"]["precision"] == "int8"
    answer = server.post("/recommend/user", {"user": "u5", "k": 4}).json()
    assert answer["fallback"] is None and len(answer["items"]) == 4


@pytest.fixture(scope="module")
def secured(serve_instance, models) -> str:
    """The ranking model as a second application at /secured whose replicas require TOKEN:
    deployed once (a second ``serve.run`` is a rolling update, about half a minute here)."""
    from ray import serve

    settings = ServeSettings(model_dir=str(models["ranking"]))
    serve.run(build_app(settings, num_cpus=0.5, env_vars={TOKEN_ENV: TOKEN}), name="secured",
              route_prefix="/secured")
    assert serve_instance.wait_for(lambda h: h["status"] == "ok", prefix="/secured")["auth"] == "bearer"
    return f"{serve_instance.url}/secured"


def test_bearer_token_guards_all_but_health_before_any_parsing(server, secured):
    body = {"user": "u1", "k": 2}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        refused = httpx.post(f"{secured}/recommend/user", json=body, headers=headers, timeout=30)
        assert refused.status_code == 401 and "token" in refused.json()["error"]
        for path in ("/model", "/docs", "/redoc", "/openapi.json"):
            assert httpx.get(f"{secured}{path}", headers=headers, timeout=30).status_code == 401
        events = httpx.post(f"{secured}/events", json={"user": "u1", "items": ["i1"]}, headers=headers, timeout=30)
        assert events.status_code == 401 and httpx.get(f"{secured}/events/u1", headers=headers, timeout=30).status_code == 401
        malformed = httpx.post(f"{secured}/recommend/user", content="{not json", headers=headers, timeout=30)
        assert malformed.status_code == 401 and malformed.json()["field"] is None  # not a 422 naming a field
    granted = {"Authorization": f"Bearer {TOKEN}"}
    answer = httpx.post(f"{secured}/recommend/user", json=body, headers=granted, timeout=30)
    assert answer.status_code == 200 and len(answer.json()["items"]) == 2
    assert httpx.post(f"{secured}/events", json={"user": "u1", "items": ["i1"]}, headers=granted, timeout=30).status_code == 200
    assert httpx.post(f"{secured}/recommend/user", json={"k": 0}, headers=granted, timeout=30).status_code == 422
    assert httpx.get(f"{secured}/openapi.json", headers=granted, timeout=30).json()["paths"]
    assert server.health()["auth"] == "none"  # the other app stays open


# -- fuzzing every endpoint from the OpenAPI schema ------------------------------------------------
FUZZ_EXAMPLES = 25  # per operation and generation mode: a few hundred requests per scenario


def fuzz(base_url: str, schema: dict, headers: dict[str, str], check) -> None:
    """Requests that schemathesis generates from ``schema``, valid and invalid ones, sent to
    every operation with ``headers``; ``check(case, response)`` judges each answer."""
    api = schemathesis.openapi.from_dict(schema)
    for result in api.get_all_operations():
        operation = result.ok()
        for mode in schemathesis.GenerationMode:
            @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def send(case):
                response = case.call(base_url=base_url, headers=headers, timeout=30)
                assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text[:200]}"
                check(case, response)

            try:
                send()
            except Unsatisfiable:  # an operation that takes no input has no invalid request to send
                assert mode is schemathesis.GenerationMode.NEGATIVE and case_free(operation)


def case_free(operation) -> bool:
    return not (operation.body or operation.query or operation.path_parameters or operation.headers)


@pytest.mark.parametrize("served", ["ranking", "features"])
def test_fuzzing_the_open_api_never_gets_a_5xx(server, models, served):
    """Against popularity and against a model with a feature path (profiles, new items)."""
    server.serving(models[served])
    schema = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    fuzz(server.url, schema, {}, lambda case, response: None)


def test_fuzzing_with_a_token_401_before_any_422(server, secured):
    granted = {"Authorization": f"Bearer {TOKEN}"}
    schema = httpx.get(f"{secured}/openapi.json", headers=granted, timeout=30).json()
    assert schema["components"]["securitySchemes"]  # the docs say how to authenticate

    def refused_unless_health(case, response):
        assert response.status_code == (200 if case.path == "/health" else 401), f"{case.method} {case.path}"

    fuzz(secured, schema, {}, refused_unless_health)
    fuzz(secured, schema, {"Authorization": "Bearer not-the-token"}, refused_unless_health)
    fuzz(secured, schema, granted, lambda case, response: None)


# -- recsearch serve ---------------------------------------------------------------------------------
def test_recsearch_serve_falls_back_without_haproxy_and_restarts_on_its_port(models, tmp_path):
    """A HAProxy that cannot start (here: no binary) leaves Serve's own proxy answering, with a
    message saying so; once stopped, a new `recsearch serve` starts on the same port at once,
    this time behind HAProxy. Stopped by a signal to its whole process group (as `timeout` and
    systemd stop it), which kills Ray's processes before they can stop HAProxy, it still leaves
    no HAProxy holding its ports."""
    inherited = {k: v for k, v in os.environ.items() if k not in ingress.HAPROXY_PORTS}  # the module's Serve's
    env = {**inherited, "RAY_AUTH_MODE": "disabled", **EXCLUSIVE_SERVE_PORTS}
    broken = ServeProcess(models["ranking"], {**env, "RAY_SERVE_HAPROXY_BINARY_PATH": str(tmp_path / "no-haproxy")},
                          tmp_path / "first.log", "--num-cpus", "0.5")
    output = with_free_port(broken.start)
    port = broken.port
    try:
        assert "HAProxy did not start" in output and "falling back to Serve's default proxy" in output
        assert "\ningress: Serve proxy" in output
        answer = httpx.post(f"http://127.0.0.1:{port}/recommend/user", json={"user": "u1", "k": 3}, timeout=30)
        assert answer.status_code == 200 and len(answer.json()["items"]) == 3
    finally:
        assert broken.stop() == 0
    again = ServeProcess(models["ranking"], env, tmp_path / "second.log", "--num-cpus", "0.5")
    output = again.start(port)  # the same port, right after the first one exited
    try:
        assert "\ningress: HAProxy, throughput-optimised" in output
        answer = httpx.post(f"http://127.0.0.1:{port}/recommend/user", json={"user": "u1", "k": 3}, timeout=30)
        assert answer.status_code == 200 and len(answer.json()["items"]) == 3
    finally:
        assert again.stop(whole_group=True) == 0
    ingress_line = output.split("\ningress: ")[1].splitlines()[0]
    side_ports = [int(part.split(" on port ")[1]) for part in ingress_line.split("; ")[1:]]
    assert len(side_ports) == 3
    for listened in (port, *side_ports):  # a HAProxy left behind would still listen on them all
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", listened), timeout=5).close()
