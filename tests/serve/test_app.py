"""The Serve application over real HTTP on 127.0.0.1: routes, every validation case, the API key,
concurrent requests, and recovery after a replica is killed. One app per module (demo corpus with
mUSE, demo pivot database, no generator)."""

from __future__ import annotations

import json
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support import free_port

pytestmark = pytest.mark.slow

API_KEY_ENV = "RAY_CORA_TEST_API_KEY"
API_KEY = "test-key-5f2c"
HEADERS = {"X-API-Key": API_KEY}
MAX_CHARS, MAX_K = 200, 20




@pytest.fixture(scope="module")
def app_url(ray_local):
    from ray import serve

    from ray_cora.configs.serve import ServeConfig
    from ray_cora.serve.run import start_app

    os.environ[API_KEY_ENV] = API_KEY  # read by build_app in this process, handed to the Ingress
    config = ServeConfig(port=free_port(), pivot_db="demo", max_question_chars=MAX_CHARS, max_k=MAX_K,
                         default_k=5, api_key_env=API_KEY_ENV, max_replicas=1, replica_cpus=0.25,
                         health_check_period_s=1, batch_wait_timeout_s=5)  # must not delay anything
    try:
        yield start_app(config)
    finally:
        serve.shutdown()
        os.environ.pop(API_KEY_ENV, None)


def _post(url: str, path: str, body, *, headers=HEADERS, timeout: float = 60) -> requests.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(url + path, data=data, timeout=timeout,
                         headers={"Content-Type": "application/json", **headers})


def test_proxy_binds_loopback_only(app_url):
    port = int(app_url.rsplit(":", 1)[1])
    assert requests.get(app_url + "/healthz", timeout=10).status_code == 200
    with pytest.raises(OSError), socket.create_connection(("127.0.0.2", port), timeout=5):
        pass  # a proxy bound to 0.0.0.0 would accept this


def test_health_and_openapi_are_open_and_describe_the_routes(app_url):
    health = requests.get(app_url + "/healthz", timeout=10).json()
    index = health.pop("index")
    assert health == {"status": "ok", "retriever": True, "generator": False, "pivot": True}
    # Where the index is searched and with what defaults (the demo index: flat, on CPU).
    assert index["placement"] == [{"device": "cpu"}] and set(index["search_params"]) == {"nprobe", "efSearch"}
    schema = requests.get(app_url + "/openapi.json", timeout=10).json()
    assert {"/v1/retrieve", "/v1/answer", "/v1/pivot", "/healthz"} <= set(schema["paths"])
    body = schema["paths"]["/v1/retrieve"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("/RetrieveRequest")
    assert requests.get(app_url + "/docs", timeout=10).status_code == 200


def test_retrieve_finds_the_passages_across_languages(app_url):
    response = _post(app_url, "/v1/retrieve", {"question": "富士山の高さは？", "lang": "ja", "k": 4})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["lang"], body["k"], len(body["passages"])) == ("ja", 4, 4)
    top = body["passages"][0]
    assert "mount_fuji" in top["pid"] and set(top) == {"pid", "lang", "title", "text", "score"}
    assert "3776" in top["text"].replace(",", "")
    default_k = _post(app_url, "/v1/retrieve", {"question": "How tall is Mount Fuji?"}).json()
    assert default_k["k"] == 5 and len(default_k["passages"]) == 5 and default_k["lang"] is None
    # A request's own nprobe travels to the search (a flat index has no lists: same passages).
    tuned = _post(app_url, "/v1/retrieve", {"question": "How tall is Mount Fuji?", "nprobe": 3, "ef_search": 40})
    assert tuned.status_code == 200 and tuned.json()["passages"] == default_k["passages"]


def test_pivot_matches_the_english_question_and_answers(app_url):
    response = _post(app_url, "/v1/pivot", {"question": "¿Qué altura tiene el monte Fuji?", "lang": "es"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["matched_question"] == "How tall is Mount Fuji?"
    assert body["abstained"] is False and "3" in body["answer"] and body["lang"] == "es"


def test_answer_without_a_generator_says_so(app_url):
    response = _post(app_url, "/v1/answer", {"question": "How tall is Mount Fuji?", "lang": "en"})
    assert response.status_code == 503
    assert "no generator configured" in response.json()["error"]


LONG = "q" * (MAX_CHARS + 1)


@pytest.mark.parametrize("path, body, status, field", [
    ("/v1/retrieve", {"question": ""}, 422, "question"),
    ("/v1/retrieve", {"question": "   "}, 422, "question"),
    ("/v1/retrieve", {"question": LONG}, 422, "question"),
    ("/v1/retrieve", {"question": "a", "lang": "xx"}, 422, "lang"),
    ("/v1/retrieve", {"question": "a", "k": 0}, 422, "k"),
    ("/v1/retrieve", {"question": "a", "k": MAX_K + 1}, 422, "k"),
    ("/v1/retrieve", {"question": "a", "k": "3"}, 422, "k"),
    ("/v1/retrieve", {"question": "a", "k": True}, 422, "k"),
    ("/v1/retrieve", {"question": 3}, 422, "question"),
    ("/v1/retrieve", {"question": "a", "lang": 5}, 422, "lang"),
    ("/v1/retrieve", {"question": "a", "top_k": 3}, 422, "top_k"),
    ("/v1/retrieve", {"question": "a", "nprobe": 0}, 422, "nprobe"),
    ("/v1/retrieve", {"question": "a", "nprobe": "8"}, 422, "nprobe"),
    ("/v1/retrieve", {"question": "a", "ef_search": 10**6}, 422, "ef_search"),
    ("/v1/retrieve", {}, 422, "question"),
    ("/v1/retrieve", [{"question": "a"}], 422, None),
    ("/v1/retrieve", '{"question": "a",', 400, None),
    ("/v1/retrieve", "", 422, None),
    ("/v1/retrieve", json.dumps({"question": "a" * 100_000}), 413, None),
    ("/v1/pivot", {"question": "a"}, 422, "lang"),
    ("/v1/pivot", {"question": "a", "lang": "klingon"}, 422, "lang"),
    ("/v1/pivot", {"question": "", "lang": "es"}, 422, "question"),
    ("/v1/answer", {"question": "a", "lang": "xx"}, 422, "lang"),
    ("/v1/answer", {"question": LONG, "lang": "en"}, 422, "question"),
])
def test_client_mistakes_get_a_4xx_naming_what_is_wrong(app_url, path, body, status, field):
    response = _post(app_url, path, body)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["field"] == field and error["error"]


def test_a_body_that_is_not_declared_json_gets_415(app_url):
    response = requests.post(app_url + "/v1/retrieve", data=b'{"question": "a"}', headers=HEADERS, timeout=10)
    assert response.status_code == 415 and "Content-Type: application/json" in response.json()["error"]


def test_unknown_routes_and_methods_are_4xx(app_url):
    assert requests.get(app_url + "/v1/retrieve", headers=HEADERS, timeout=10).status_code == 405
    assert _post(app_url, "/v2/retrieve", {"question": "a"}).status_code == 404


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}])
def test_api_key_is_required_when_configured(app_url, headers):
    for path in ("/v1/retrieve", "/v1/pivot"):
        response = _post(app_url, path, {"question": "", "lang": "es"}, headers=headers)
        assert response.status_code == 401  # before the body is even validated
        assert response.json()["field"] == "X-API-Key"


QUESTIONS = [("How tall is Mount Fuji?", 3), ("富士山の高さは？", 5), ("Wer entwickelte die Relativitätstheorie?", 2),
             ("¿Cuál es la capital de Corea del Sur?", 4), ("Какая самая длинная река в Африке?", 1),
             ("ما هي عاصمة مصر؟", 6), ("Quelle est la hauteur de la tour Eiffel ?", 3), ("首尔是哪个国家的首都？", 2)]


def _pids(url: str, question: str, k: int) -> list[str]:
    response = _post(url, "/v1/retrieve", {"question": question, "k": k})
    assert response.status_code == 200, response.text
    return [p["pid"] for p in response.json()["passages"]]


def test_a_lone_request_does_not_wait_for_a_batch_to_fill(app_url):
    """batch_wait_timeout_s=5 above: a lone request must still come back at once (under
    @serve.batch it would wait the 5 s out), on every batched deployment it passes."""
    for path, body in (("/v1/retrieve", {"question": "How tall is Mount Fuji?", "k": 3}),
                       ("/v1/pivot", {"question": "¿Qué altura tiene el monte Fuji?", "lang": "es"})):
        assert _post(app_url, path, body).status_code == 200  # warm
        started = time.monotonic()
        response = _post(app_url, path, body, timeout=10)
        assert response.status_code == 200 and time.monotonic() - started < 1.0, path


def test_concurrent_requests_are_each_answered_correctly(app_url):
    expected = {(q, k): _pids(app_url, q, k) for q, k in QUESTIONS}  # one at a time
    jobs = [QUESTIONS[i % len(QUESTIONS)] for i in range(48)]
    with ThreadPoolExecutor(16) as pool:  # batched together by the deployments' Batcher
        got = list(pool.map(lambda qk: _pids(app_url, *qk), jobs))
    assert got == [expected[qk] for qk in jobs]
    pivots = [("¿Qué altura tiene el monte Fuji?", "es"), ("富士山の高さは？", "ja")] * 8
    with ThreadPoolExecutor(16) as pool:
        matched = list(pool.map(lambda ql: _post(app_url, "/v1/pivot", {"question": ql[0], "lang": ql[1]}).json(),
                                pivots))
    assert all(m["matched_question"] == "How tall is Mount Fuji?" for m in matched)


def _replicas(deployment: str) -> set[str]:
    import ray

    prefix = f"SERVE_REPLICA::ray_cora#{deployment}#"
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)}


def test_killed_replica_is_replaced_and_requests_succeed_again(app_url):
    import ray

    expected = _pids(app_url, "How tall is Mount Fuji?", 3)
    (victim,) = _replicas("Retriever")
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    _wait_for(app_url, "How tall is Mount Fuji?", 3, expected, f"killing {victim}")
    replacement = _replicas("Retriever")
    assert replacement and victim not in replacement


def _wait_for(url: str, question: str, k: int, expected: list[str], what: str, timeout_s: float = 90) -> None:
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        try:
            response = _post(url, "/v1/retrieve", {"question": question, "k": k}, timeout=20)
            last = response.status_code
            if last == 200 and [p["pid"] for p in response.json()["passages"]] == expected:
                return
        except requests.RequestException as exc:
            last = repr(exc)
        time.sleep(0.5)
    pytest.fail(f"no successful request within {timeout_s} s after {what} (last: {last})")


def test_index_split_over_two_shard_groups_answers_like_one_index(app_url, muse, demo_index, tmp_path_factory):
    """Redeploys the app with the demo corpus in a 5-shard index split over 2 IndexShardGroup
    deployments and texts from a committed passage store: /v1/retrieve must return exactly what one
    ShardedIndex over all shards returns (pids and scores); a killed group replica is replaced."""
    import ray
    from ray import serve

    from ray_cora.data.passage_store import build_passage_store
    from ray_cora.demo import DEMO_PASSAGES
    from ray_cora.index.sharded import ShardedIndex
    from ray_cora.serve.app import APP_NAME, build_app

    folder = tmp_path_factory.mktemp("shard-groups")
    encoder, index = muse, demo_index  # the demo corpus in 5 shards of 40
    build_passage_store(str(DEMO_PASSAGES), str(folder / "store"), num_buckets=3)
    os.environ[API_KEY_ENV] = API_KEY
    serve.run(build_app({"index": index, "passage_store": str(folder / "store"), "shard_groups": 2,
                         "api_key_env": API_KEY_ENV, "max_k": MAX_K, "max_replicas": 1,
                         "health_check_period_s": 1}),
              name=APP_NAME, route_prefix="/", blocking=False)
    assert _replicas("IndexShardGroup0") and _replicas("IndexShardGroup1")
    whole = ShardedIndex.open(index)
    assert len(whole.shards) == 5  # groups hold shards {0, 2, 4} and {1, 3}
    rows = {row["pid"]: row for row in map(json.loads, DEMO_PASSAGES.read_text(encoding="utf-8").splitlines())}
    shard_of = {pid: n for n, shard in enumerate(whole.shards) for pid in shard.pids}
    groups_used = set()
    for question, k in QUESTIONS + [("How tall is Mount Fuji?", MAX_K)]:
        response = _post(app_url, "/v1/retrieve", {"question": question, "k": k})
        assert response.status_code == 200, response.text
        passages = response.json()["passages"]
        scores, pids = whole.search(encoder.encode_queries([question]), k)
        assert [p["pid"] for p in passages] == pids[0]
        assert [p["score"] for p in passages] == [float(s) for s in scores[0]]
        assert all(p["text"] == rows[p["pid"]]["text"] and p["lang"] == rows[p["pid"]]["lang"] for p in passages)
        groups_used |= {shard_of[p["pid"]] % 2 for p in passages}
    assert groups_used == {0, 1}  # both groups' shards made it into the answers

    expected = _pids(app_url, "How tall is Mount Fuji?", 3)
    (victim,) = _replicas("IndexShardGroup1")
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    _wait_for(app_url, "How tall is Mount Fuji?", 3, expected, f"killing {victim}")
    assert victim not in _replicas("IndexShardGroup1")


def test_answer_with_a_generator_returns_its_answer_and_the_evidence(app_url, tiny_t5):
    """Last: redeploys the app with a (tiny, random) mGEN checkpoint; /v1/answer must return exactly
    what that generator says for the passages it returns as evidence."""
    from ray import serve

    from ray_cora.models.mgen import Generator
    from ray_cora.serve.app import APP_NAME, build_app

    checkpoint = tiny_t5
    os.environ[API_KEY_ENV] = API_KEY
    serve.run(build_app({"generator": checkpoint, "answer_passages": 3, "api_key_env": API_KEY_ENV,
                         "max_replicas": 1, "health_check_period_s": 1}),
              name=APP_NAME, route_prefix="/", blocking=False)
    assert requests.get(app_url + "/healthz", timeout=10).json()["generator"] is True
    response = _post(app_url, "/v1/answer", {"question": "富士山の高さは？", "lang": "ja"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["passages"]) == 3 and "mount_fuji" in body["passages"][0]["pid"]
    expected = Generator.load(checkpoint, top_k=3).answer(["富士山の高さは？"], ["ja"], [body["passages"]])
    assert body["answer"] == expected[0] and body["lang"] == "ja"
