"""The Serve application over real HTTP on 127.0.0.1: routes, every validation case, the API key,
concurrent requests, the error body on every error (fuzzed with Hypothesis), batch poisoning, the
body limit on chunked uploads, readiness, and recovery after a replica is killed. One app per module
(demo corpus with mUSE, its BM25 index with fusion weights but dense by default, demo pivot database,
no generator)."""

from __future__ import annotations

import json
import os
import select
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import free_port

pytestmark = pytest.mark.slow

API_KEY_ENV = "RAY_CORA_TEST_API_KEY"
API_KEY = "test-key-5f2c"
HEADERS = {"X-API-Key": API_KEY}
MAX_CHARS, MAX_K = 200, 20




# The app's fusion weights: English tuned (convex, top 20 of each list), the other languages equal-weight RRF.
APP_FUSION = {"en": {"method": "convex", "dense_weight": 0.3, "normalization": "minmax", "depth": 20,
                     "rule": "tuned", "dev_questions": 60}}


@pytest.fixture(scope="module")
def app_fusion(tmp_path_factory) -> str:
    from ray_cora.index.fusion import FusionSetting, FusionWeights, save_weights

    path = str(tmp_path_factory.mktemp("app-fusion") / "fusion.json")
    save_weights(FusionWeights({lang: FusionSetting(**s) for lang, s in APP_FUSION.items()}), path)
    return path


@pytest.fixture(scope="module")
def app_url(ray_local, demo_lexical, app_fusion):
    from ray import serve

    from ray_cora.configs.serve import ServeConfig
    from ray_cora.serve.run import start_app

    os.environ[API_KEY_ENV] = API_KEY  # read by build_app in this process, handed to the Ingress
    # With a lexical index but retriever=dense: every test here gets dense answers unless it asks.
    config = ServeConfig(port=free_port(), pivot_db="demo", max_question_chars=MAX_CHARS, max_k=MAX_K,
                         default_k=5, api_key_env=API_KEY_ENV, max_replicas=1, replica_cpus=0.25,
                         health_check_period_s=1, batch_wait_timeout_s=5,  # must not delay anything
                         readiness_timeout_s=3, lexical_index=demo_lexical, fusion=app_fusion, retriever="dense")
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
    assert "mount_fuji" in top["pid"] and set(top) == {"pid", "lang", "title", "text", "score", "retrievers"}
    assert body["retriever"] == "dense" and top["retrievers"] == {"dense": 1, "bm25": None}
    assert "3776" in top["text"].replace(",", "")
    default_k = _post(app_url, "/v1/retrieve", {"question": "How tall is Mount Fuji?"}).json()
    assert default_k["k"] == 5 and len(default_k["passages"]) == 5 and default_k["lang"] is None
    # A request's own nprobe travels to the search (a flat index has no lists: same passages).
    tuned = _post(app_url, "/v1/retrieve", {"question": "How tall is Mount Fuji?", "nprobe": 3, "ef_search": 40})
    assert tuned.status_code == 200 and tuned.json()["passages"] == default_k["passages"]


def test_retrieve_answers_in_hybrid_and_bm25_mode_with_each_passage_rank_in_both_lists(app_url, muse, demo_index,
                                                                                       demo_lexical):
    """Issue 18: the app's BM25 index (the demo corpus's, built in the test session) and fusion
    weights. hybrid == fuse(dense list, BM25 list) with the question language's setting, each passage
    with its rank in both lists; bm25 == the lexical index's top-k in the question's language."""
    from ray_cora.index.fusion import FusionSetting, FusionWeights, fuse
    from ray_cora.index.lexical import LexicalIndex
    from ray_cora.index.sharded import ShardedIndex

    dense_index, lexical = ShardedIndex.open(demo_index), LexicalIndex.open(demo_lexical)
    weights = FusionWeights({lang: FusionSetting(**s) for lang, s in APP_FUSION.items()})
    both = 0
    for question, lang, k in [("How tall is Mount Fuji?", "en", 5), ("富士山の高さは？", "ja", 4),
                              ("Wer entwickelte die Relativitätstheorie?", "de", 3)]:
        response = _post(app_url, "/v1/retrieve", {"question": question, "lang": lang, "k": k, "retriever": "hybrid"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["retriever"], body["lang"], body["k"]) == ("hybrid", lang, k)
        setting = weights.setting_for(lang)
        scores, pids = dense_index.search(muse.encode_queries([question]), setting.depth)
        bm25_scores, bm25_pids = lexical.search_one(question, lang, setting.depth)
        expected = fuse(list(zip(pids[0], map(float, scores[0]))), list(zip(bm25_pids, bm25_scores)), setting, k)
        assert [(p["pid"], p["retrievers"]) for p in body["passages"]] == [(h.pid, h.sources) for h in expected]
        assert [p["score"] for p in body["passages"]] == pytest.approx([h.score for h in expected], abs=1e-5)
        both += sum(None not in p["retrievers"].values() for p in body["passages"])
    assert both

    response = _post(app_url, "/v1/retrieve", {"question": "富士山の高さは？", "lang": "ja", "k": 3, "retriever": "bm25"})
    assert response.status_code == 200, response.text
    scores, pids = lexical.search_one("富士山の高さは？", "ja", 3)
    passages = response.json()["passages"]
    assert [p["pid"] for p in passages] == pids and pids[0] == "ja-mount_fuji-1"
    assert [p["score"] for p in passages] == pytest.approx(scores, abs=1e-5)
    assert [p["retrievers"] for p in passages] == [{"dense": None, "bm25": r} for r in (1, 2, 3)]

    info = requests.get(app_url + "/v1/info", headers=HEADERS, timeout=30).json()
    assert info["retriever"] == {"default": "dense", "available": ["dense", "bm25", "hybrid"]}
    assert info["lexical_index"]["uri"] == demo_lexical and info["lexical_index"]["passages"] == 176
    assert info["fusion"]["languages"] == {"en": "convex minmax w=0.30"} and info["fusion"]["source"].endswith(
        "fusion.json")


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
    ("/v1/retrieve", {"question": "a", "retriever": "splade"}, 422, "retriever"),
    ("/v1/retrieve", {"question": "a", "retriever": "bm25"}, 422, "lang"),
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
    error = _error_body(response)
    assert error["field"] == field and error["error"]


ERROR_TYPES = {"invalid_request_error", "authentication_error", "unavailable_error", "server_error"}


def _error_body(response: requests.Response) -> dict:
    """The API's one error body, checked: JSON {error, field, type, code}, nothing else."""
    assert response.headers.get("content-type", "").startswith("application/json"), response.text
    error = response.json()
    assert set(error) == {"error", "field", "type", "code"}, error
    assert isinstance(error["error"], str) and error["error"] and "Traceback" not in error["error"]
    assert error["type"] in ERROR_TYPES and isinstance(error["code"], str) and error["code"]
    assert error["field"] is None or isinstance(error["field"], str)
    return error


DEEP = "[" * 4000 + "]" * 4000  # inside the body limit; json.loads overflows Python's recursion limit


@pytest.mark.parametrize("method, path, data, status, code", [
    ("POST", "/v1/retrieve", b'{"question": "caf\xe9"}', 400, "invalid_json"),        # Latin-1, not UTF-8
    ("POST", "/v1/retrieve", b'{"question": "\xff\xfe"}', 400, "invalid_json"),
    ("POST", "/v1/retrieve", DEEP, 400, "invalid_json"),
    ("POST", "/v1/retrieve", json.dumps({"question": "a", "k": json.loads("[" * 500 + "]" * 500)}), 422,
     "invalid_value"),
    ("POST", "/v1/retrieve", '{"question": "a\\ud800b", "lang": "en"}', 422, "invalid_text"),
    ("POST", "/v1/pivot", '{"question": "a\\ud800b", "lang": "en"}', 422, "invalid_text"),
    ("POST", "/v1/pivot", '{"question": "a", "lang": "e\\udfffn"}', 422, "invalid_text"),
    ("POST", "/v1/retrieve", '{"question": "a", "\\ud800": 1}', 422, "invalid_text"),
    ("POST", "/v1/retrieve/", '{"question": "a"}', 404, "not_found"),   # no 307 redirect
    ("GET", "/healthz/", None, 404, "not_found"),
    ("POST", "/v2/retrieve", '{"question": "a"}', 404, "not_found"),
    ("GET", "/v1/retrieve", None, 405, "method_not_allowed"),
    ("DELETE", "/healthz", None, 405, "method_not_allowed"),
    ("POST", "/v1/answer", '{"question": "a", "lang": "en"}', 503, "not_configured"),
])
def test_every_error_has_the_api_error_body(app_url, method, path, data, status, code):
    """Issue 19 #8: these answered FastAPI's {"detail": ...}, a 307, or a 500."""
    response = requests.request(method, app_url + path, data=data, timeout=30, allow_redirects=False,
                                headers={"Content-Type": "application/json", **HEADERS})
    assert response.status_code == status, response.text
    assert _error_body(response)["code"] == code
    if status == 405:
        assert response.headers["Allow"]


# --- fuzz: whatever arrives, no 5xx and the one error body ---------------------------------------

_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                 max_size=4),
                     max_leaves=12)
_TEXT = st.one_of(st.text(max_size=60), st.sampled_from(["", " ", "How tall is Mount Fuji?", "富士山の高さは？",
                                                         "a\ud800b", "\udfff", "q" * (MAX_CHARS + 1), "\x00"]))
_REQUEST_BODY = st.fixed_dictionaries({"question": _TEXT}, optional={
    "lang": st.one_of(_TEXT, st.sampled_from(["en", "ja", "es", "xx", "zh-CN"]), st.integers()),
    "k": st.one_of(st.integers(-5, MAX_K + 5), st.text(max_size=3), st.floats(allow_nan=False)),
    "nprobe": st.integers(-2, 5000), "ef_search": st.integers(-2, 5000), "extra": _JSON})


def _encode(value) -> bytes:
    # ensure_ascii: lone surrogates travel as JSON escapes, as a client's json.dumps sends them
    return json.dumps(value).encode()


_BODY = st.one_of(
    _REQUEST_BODY.map(_encode),
    _JSON.map(_encode),
    st.binary(max_size=200),
    st.binary(max_size=40).map(lambda b: b'{"question": "' + b + b'", "lang": "en"}'),   # bytes inside a string
    st.integers(1, 4200).map(lambda n: ("[" * n + "]" * n).encode()),
    st.integers(1, 2000).map(lambda n: ('{"question":' * n + '"a"' + "}" * n).encode()),
    st.just(b""), st.just(b"x" * 20_000))
_PATH = st.one_of(st.sampled_from(["/v1/retrieve", "/v1/pivot", "/v1/answer", "/healthz", "/readyz", "/v1/retrieve/",
                                   "/", "/v2/retrieve", "/openapi.json", "/docs", "/v1//retrieve", "/v1/retrieve?k=3",
                                   "/%ff", "/v1/retrieve%00"]),
                  st.text("abcdefv1/._-~%", max_size=20).map(lambda p: "/" + p))
_HEADERS = st.fixed_dictionaries({}, optional={
    "Content-Type": st.sampled_from(["application/json", "application/json; charset=utf-8", "APPLICATION/JSON",
                                     "text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                     "", ";;;", "application/json; charset=latin-1"]),
    "X-API-Key": st.sampled_from([API_KEY, "", "wrong", API_KEY + " ", API_KEY.upper()]),
    "Authorization": st.sampled_from(["Bearer " + API_KEY, "Bearer", "Basic Og==", ""]),
    "Accept": st.sampled_from(["*/*", "text/html", "application/xml", ""]),
    "Content-Encoding": st.sampled_from(["gzip", "br", "identity"]),
    "X-Forwarded-For": st.sampled_from(["1.2.3.4", "::1", "garbage"]),
    "Expect": st.sampled_from(["100-continue"])})


@settings(derandomize=True, max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS"]),
       path=_PATH, body=_BODY, headers=_HEADERS, with_key=st.booleans())
def test_fuzzed_requests_never_get_a_5xx_and_every_error_has_the_error_body(app_url, method, path, body, headers,
                                                                           with_key):
    """Issue 19 #8 / issue 17: random bodies (JSON, bytes, invalid UTF-8, deep nesting, surrogates),
    methods, paths and headers, against the running app. 503 is allowed only as /v1/answer's 'no
    generator configured'."""
    sent = {**(HEADERS if with_key else {}), **headers}
    response = requests.request(method, app_url + path, data=body, headers=sent, timeout=60, allow_redirects=False)
    assert response.status_code < 500 or (response.status_code == 503 and path.startswith("/v1/answer")), \
        (response.status_code, response.text)
    assert response.status_code not in (301, 302, 307, 308), response.headers.get("location")
    if response.status_code >= 400:
        _error_body(response)


# --- one bad request never fails another ---------------------------------------------------------

def test_bad_requests_mixed_into_concurrent_good_ones_fail_alone(app_url):
    """Issue 19 #2: 4 lone-surrogate requests among 24 concurrent ones failed 71 of 100 good ones."""
    good = [(path, body) for path, body in [("/v1/retrieve", {"question": q, "k": k}) for q, k in QUESTIONS]
            + [("/v1/pivot", {"question": "¿Qué altura tiene el monte Fuji?", "lang": "es"})]]
    bad = [("/v1/retrieve", '{"question": "a\\ud800b", "lang": "en"}'),
           ("/v1/pivot", '{"question": "\\udfffb", "lang": "en"}')]
    expected = {json.dumps(body): _answer(_post(app_url, path, body).json()) for path, body in good}
    jobs = [bad[i % 2] if i % 6 == 5 else good[i % len(good)] for i in range(120)]  # 20 bad, 100 good

    def call(job):
        path, body = job
        return _post(app_url, path, body)

    with ThreadPoolExecutor(24) as pool:
        responses = list(pool.map(call, jobs))
    for (path, body), response in zip(jobs, responses):
        if isinstance(body, str):
            assert response.status_code == 422 and _error_body(response)["field"] == "question"
        else:
            assert response.status_code == 200, response.text
            assert _answer(response.json()) == expected[json.dumps(body)]


def _answer(body: dict) -> tuple:
    # What a request asked for: the passages found (scores may differ in the last bits between a
    # batch and a lone request), or the pivot's match and answer.
    return tuple(p["pid"] for p in body["passages"]) if "passages" in body else (body["matched_qid"], body["answer"])


# --- the body limit counts bytes as they arrive ---------------------------------------------------

def test_a_chunked_body_over_the_limit_is_refused_before_it_is_all_sent(app_url):
    """Issue 19 #3: a chunked body has no Content-Length; 100 MB was read and parsed, then answered
    422. Here 32 MB is offered in 64 KiB chunks, 10 ms apart (at least 5 s for all): the 413 must
    come before a quarter of it is sent (the limit is a few KiB)."""
    host, port = urlsplit(app_url).hostname, urlsplit(app_url).port
    chunk, total = b"[" + b" " * (64 * 1024 - 1), 32 * 1024 * 1024
    head = (f"POST /v1/retrieve HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"X-API-Key: {API_KEY}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    sent, reply = 0, b""
    with socket.create_connection((host, port), timeout=30) as conn:
        conn.sendall(head)
        try:
            while sent < total:
                if select.select([conn], [], [], 0)[0]:
                    break  # the server answered: stop sending
                conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                time.sleep(0.01)
            else:
                conn.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed its side after answering
        conn.settimeout(30)
        try:
            while piece := conn.recv(65536):
                reply += piece
        except (ConnectionResetError, socket.timeout):
            pass
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line.split()[1:2] == [b"413"], reply[:300]
    assert b'"body_too_large"' in rest
    assert sent < total // 4, f"{sent} of {total} bytes were sent before the 413"


# --- readiness ------------------------------------------------------------------------------------

def test_readiness_reports_a_killed_replica_until_it_is_replaced(app_url):
    """Issue 19 #8: /healthz stayed 200 with the Retriever's replica SIGKILLed. /healthz stays the
    Ingress's liveness; /readyz pings every model deployment and says 503, naming it, until a new
    replica answers."""
    import ray

    ready = requests.get(app_url + "/readyz", timeout=30)
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready", "deployments": {"Retriever": "ok", "PivotReranker": "ok"}}
    (victim,) = _replicas("Retriever")
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    response = requests.get(app_url + "/readyz", timeout=30)
    assert response.status_code == 503, response.text
    error = _error_body(response)
    assert error["code"] == "not_ready" and "Retriever" in error["error"] and "PivotReranker" not in error["error"]
    assert response.headers["Retry-After"]
    assert requests.get(app_url + "/healthz", timeout=30).status_code == 200  # liveness: the Ingress lives
    deadline, statuses = time.monotonic() + 120, []
    while time.monotonic() < deadline:
        statuses.append(requests.get(app_url + "/readyz", timeout=30).status_code)
        if statuses[-1] == 200:
            break
        time.sleep(0.5)
    assert statuses[-1] == 200 and set(statuses) <= {200, 503}, statuses
    assert victim not in _replicas("Retriever")
    assert _post(app_url, "/v1/retrieve", {"question": "How tall is Mount Fuji?", "k": 3}).status_code == 200


def test_a_body_that_is_not_declared_json_gets_415(app_url):
    response = requests.post(app_url + "/v1/retrieve", data=b'{"question": "a"}', headers=HEADERS, timeout=10)
    assert response.status_code == 415 and "Content-Type: application/json" in response.json()["error"]


def test_unknown_routes_and_methods_are_4xx(app_url):
    assert requests.get(app_url + "/v1/retrieve", headers=HEADERS, timeout=10).status_code == 405
    assert _post(app_url, "/v2/retrieve", {"question": "a"}).status_code == 404
    assert _error_body(_post(app_url, "/v2/retrieve", {"question": "a"}))["code"] == "not_found"


@pytest.mark.parametrize("headers, challenge", [
    ({}, 'Bearer realm="ray_cora"'), ({"X-API-Key": ""}, 'Bearer realm="ray_cora"'),
    ({"Authorization": "Bearer"}, 'Bearer realm="ray_cora"'),
    ({"Authorization": f"Basic {API_KEY}"}, 'Bearer realm="ray_cora"'),
    ({"X-API-Key": "wrong"}, 'Bearer realm="ray_cora", error="invalid_token"'),
    ({"Authorization": "Bearer wrong", "X-API-Key": API_KEY}, 'Bearer realm="ray_cora", error="invalid_token"')])
def test_api_key_is_required_when_configured(app_url, headers, challenge):
    for path in ("/v1/retrieve", "/v1/pivot"):
        response = _post(app_url, path, {"question": "", "lang": "es"}, headers=headers)
        assert response.status_code == 401  # before the body is even validated
        error = _error_body(response)
        assert (error["field"], error["type"], error["code"]) == ("Authorization", "authentication_error",
                                                                  "unauthorized")
        assert response.headers["WWW-Authenticate"] == challenge  # RFC 6750's challenge
    assert requests.get(app_url + "/v1/info", headers=headers, timeout=10).status_code == 401


def test_the_key_goes_as_a_bearer_token_or_x_api_key_both_in_the_openapi_schema(app_url):
    """Issue 17: auth through FastAPI's security schemes, Authorization: Bearer as OpenAI/vLLM/TEI."""
    body = {"question": "How tall is Mount Fuji?", "k": 2}
    bearer = _post(app_url, "/v1/retrieve", body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert bearer.status_code == 200 and bearer.json() == _post(app_url, "/v1/retrieve", body).json()
    schema = requests.get(app_url + "/openapi.json", timeout=10).json()
    schemes = schema["components"]["securitySchemes"]
    assert {(s["type"], s.get("scheme"), s.get("name")) for s in schemes.values()} == {
        ("http", "bearer", None), ("apiKey", None, "X-API-Key")}
    for path, method in (("/v1/retrieve", "post"), ("/v1/pivot", "post"), ("/v1/answer", "post"), ("/v1/info", "get")):
        security = schema["paths"][path][method]["security"]
        assert {name for requirement in security for name in requirement} == set(schemes)
    assert "security" not in schema["paths"]["/healthz"]["get"] and "security" not in schema["paths"]["/readyz"]["get"]
    error = schema["components"]["schemas"]["ErrorResponse"]
    assert set(error["properties"]) == {"error", "field", "type", "code"}


class OpenAPIClient:
    """A client made from the app's /openapi.json at run time, as a generated client is: operations
    by (path, method), each request body built from the schema the operation declares (its required
    fields, from their ``examples``), the key sent as its declared HTTP bearer scheme, and every
    response checked against the schema declared for its status code (an undeclared status fails)."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url, self.token = url, token
        self.schema = requests.get(url + "/openapi.json", timeout=10).json()
        schemes = self.schema["components"]["securitySchemes"]
        (self.bearer,) = [n for n, s in schemes.items() if s["type"] == "http" and s.get("scheme") == "bearer"]

    def resolve(self, schema: dict) -> dict:
        while "$ref" in schema:
            schema = self.schema["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        return schema

    def example_body(self, path: str, method: str) -> dict:
        body_schema = self.resolve(self.schema["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"])
        return {name: body_schema["properties"][name]["examples"][0] for name in body_schema.get("required", [])}

    def validate(self, instance, schema: dict) -> None:
        import jsonschema

        # OpenAPI 3.1 schemas are JSON Schema 2020-12; $refs point into this same document.
        jsonschema.Draft202012Validator({**schema, "components": self.schema["components"]}).validate(instance)

    def call(self, path: str, method: str, body=None, *, content_type: str | None = None) -> requests.Response:
        operation = self.schema["paths"][path][method]
        headers = {}
        if self.token and any(self.bearer in requirement for requirement in operation.get("security", [])):
            headers["Authorization"] = f"Bearer {self.token}"
        if "requestBody" in operation:
            headers["Content-Type"] = content_type or next(iter(operation["requestBody"]["content"]))
        data = None if body is None else body if isinstance(body, (str, bytes)) else json.dumps(body)
        response = requests.request(method.upper(), self.url + path, data=data, headers=headers, timeout=60)
        declared = operation["responses"].get(str(response.status_code))
        assert declared is not None, f"{method} {path} answered {response.status_code}, which its schema does not declare"
        self.validate(response.json(), declared["content"]["application/json"]["schema"])
        return response


def test_a_client_generated_from_the_openapi_schema_authenticates_and_parses_every_error(app_url):
    """Issue 17: the schema alone is enough to call the API with a Bearer token and to read every
    answer it gives, errors included (one declared ErrorResponse body)."""
    client = OpenAPIClient(app_url, API_KEY)
    body = client.example_body("/v1/retrieve", "post")
    client.validate(body, client.schema["paths"]["/v1/retrieve"]["post"]["requestBody"]["content"]
                    ["application/json"]["schema"])
    ok = client.call("/v1/retrieve", "post", body)
    assert ok.status_code == 200 and ok.json()["passages"]
    assert client.call("/v1/pivot", "post", client.example_body("/v1/pivot", "post")).status_code == 200
    assert client.call("/v1/info", "get").status_code == 200
    errors = {
        401: OpenAPIClient(app_url, None).call("/v1/retrieve", "post", body),
        415: client.call("/v1/retrieve", "post", json.dumps(body), content_type="text/plain"),
        422: client.call("/v1/retrieve", "post", {**body, "k": "many"}),
        400: client.call("/v1/retrieve", "post", b"{not json"),
        413: client.call("/v1/retrieve", "post", {**body, "question": "x" * (2 * 1024 * 1024)}),
    }
    for status, response in errors.items():
        assert response.status_code == status, (status, response.text)
        error = response.json()
        assert error["error"] and error["type"] and error["code"]
    assert errors[401].json()["type"] == "authentication_error"
    assert errors[422].json()["field"] == "k"
    # A path the schema does not have: still the declared error body.
    unknown = requests.get(app_url + "/v1/nowhere", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
    assert unknown.status_code == 404
    client.validate(unknown.json(), {"$ref": "#/components/schemas/ErrorResponse"})


def test_info_describes_the_models_the_index_and_the_limits(app_url):
    from ray_cora import __version__
    from ray_cora.demo import DEMO_PASSAGES

    response = requests.get(app_url + "/v1/info", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    assert response.status_code == 200, response.text
    info = response.json()
    assert info["version"] == __version__
    assert info["encoder"]["spec"] == "muse" and info["encoder"]["dim"] == info["index"]["dim"] == 512
    assert info["index"]["vectors"] == len(DEMO_PASSAGES.read_text(encoding="utf-8").splitlines())
    assert info["index"]["placement"] == [{"device": "cpu"}] and info["index"]["shard_groups"] == 1
    assert info["models"]["generator"] is None and info["models"]["pivot_db"] == "demo"
    assert (info["limits"]["max_question_chars"], info["limits"]["max_k"]) == (MAX_CHARS, MAX_K)


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


def _group_actor(group: str):
    """The live actor of shard group ``group``: a deployment-scoped actor of the app's Retriever
    (Serve names it SERVE_DEPLOYMENT_ACTOR::<app>::Retriever::<code version>::<group>)."""
    import ray

    prefix = "SERVE_DEPLOYMENT_ACTOR::ray_cora::Retriever::"
    (name,) = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
               if a["name"].startswith(prefix) and a["name"].endswith("::" + group)]
    return ray.get_actor(name, namespace="serve")


def test_index_split_over_two_shard_groups_answers_like_one_index(app_url, muse, demo_index, tmp_path_factory):
    """Redeploys the app with the demo corpus in a 5-shard index split over 2 IndexShardGroup actors
    and texts from a committed passage store: /v1/retrieve must return exactly what one ShardedIndex
    over all shards returns (pids and scores). A killed group actor is recreated by Serve: until
    then a request is a 503 naming the group (never a 500), /readyz says which, then answers return."""
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
    assert not _replicas("IndexShardGroup0")  # no Serve deployment (and hop) per group ...
    groups = [_group_actor(f"IndexShardGroup{g}") for g in range(2)]  # ... but the Retriever's actors
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
    info = requests.get(app_url + "/v1/info", headers=HEADERS, timeout=30).json()["index"]
    assert info["shard_groups"] == 2 and [p["shards"] for p in info["placement"]] == [[0, 2, 4], [1, 3]]

    expected = _pids(app_url, "How tall is Mount Fuji?", 3)
    ray.kill(groups[1], no_restart=True)
    deadline, seen, ready = time.monotonic() + 120, [], []
    while time.monotonic() < deadline:
        response = _post(app_url, "/v1/retrieve", {"question": "How tall is Mount Fuji?", "k": 3}, timeout=30)
        if response.status_code == 200 and [p["pid"] for p in response.json()["passages"]] == expected:
            break
        error = _error_body(response)
        seen.append((response.status_code, error["code"], "IndexShardGroup1" in error["error"]))
        readiness = requests.get(app_url + "/readyz", timeout=30)
        ready.append((readiness.status_code, "IndexShardGroup1" in readiness.text))
        time.sleep(0.5)
    else:
        pytest.fail(f"no right answer within 120 s of killing IndexShardGroup1 (seen: {seen[-3:]})")
    assert set(seen) <= {(503, "unavailable", True)}, seen
    assert set(ready) <= {(503, True), (200, False)}, ready
    assert _group_actor("IndexShardGroup1")._actor_id != groups[1]._actor_id  # a new actor, same name
    assert requests.get(app_url + "/readyz", timeout=30).status_code == 200


def test_copies_of_each_shard_group_share_the_searches_and_a_dead_copy_costs_no_error(app_url, muse, demo_index,
                                                                                       tmp_path_factory):
    """2 shard groups x 2 copies (IndexShardGroup<g>-<c>): answers are the whole index's; every copy
    gets searches (the Retriever takes turns); a killed copy is skipped at once, with no 5xx, while
    the other copy of its group lives, and /readyz stays ready, naming the copy as down."""
    import ray
    from ray import serve

    from ray_cora.data.passage_store import build_passage_store
    from ray_cora.demo import DEMO_PASSAGES
    from ray_cora.index.sharded import ShardedIndex
    from ray_cora.serve.app import APP_NAME, build_app

    store = tmp_path_factory.mktemp("shard-group-copies") / "store"
    build_passage_store(str(DEMO_PASSAGES), str(store), num_buckets=3)
    os.environ[API_KEY_ENV] = API_KEY
    serve.run(build_app({"index": demo_index, "passage_store": str(store), "shard_groups": 2,
                         "shard_group_copies": 2, "shard_group_cpus": 0.1, "api_key_env": API_KEY_ENV,
                         "max_k": MAX_K, "max_replicas": 1, "health_check_period_s": 1}),
              name=APP_NAME, route_prefix="/", blocking=False)
    copies = {(g, c): _group_actor(f"IndexShardGroup{g}-{c}") for g in range(2) for c in range(2)}
    whole = ShardedIndex.open(demo_index)

    def check_answers() -> None:
        for question, k in QUESTIONS:
            response = _post(app_url, "/v1/retrieve", {"question": question, "k": k})
            assert response.status_code == 200, response.text
            scores, pids = whole.search(muse.encode_queries([question]), k)
            assert [(p["pid"], p["score"]) for p in response.json()["passages"]] == \
                list(zip(pids[0], map(float, scores[0])))

    check_answers()  # one request at a time: one batch, one search per group each
    searched = {copy: ray.get(actor.searched.remote()) for copy, actor in copies.items()}
    # The copies of each group took turns: half the searches each.
    assert searched == {copy: len(QUESTIONS) // 2 for copy in copies}, searched
    info = requests.get(app_url + "/v1/info", headers=HEADERS, timeout=30).json()["index"]
    assert (info["shard_groups"], info["shard_group_copies"]) == (2, 2)

    ray.kill(copies[1, 0], no_restart=True)
    check_answers()  # every answer a 200 from copy 1 of group 1: no wait for Serve to recreate copy 0
    assert ray.get(copies[1, 1].searched.remote()) == searched[1, 1] + len(QUESTIONS)  # all of group 1's
    ready = requests.get(app_url + "/readyz", timeout=30)
    assert ready.status_code == 200, ready.text
    state = ready.json()["deployments"]["Retriever"]
    # Down until Serve's health check recreates it (then "ok" again).
    assert state == "ok" or (state.startswith("degraded: IndexShardGroup1-0 ") and "IndexShardGroup0" not in state)


def test_answer_with_a_generator_returns_its_answer_and_the_evidence(app_url, tiny_t5):
    """Last but one: redeploys the app with a (tiny, random) mGEN checkpoint; /v1/answer must return exactly
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
    # This app has no lexical index: a request for bm25 or hybrid is a 422 naming the field.
    refused = _post(app_url, "/v1/retrieve", {"question": "富士山の高さは？", "lang": "ja", "retriever": "hybrid"})
    assert refused.status_code == 422 and (_error_body(refused)["field"], refused.json()["code"]) == (
        "retriever", "no_lexical_index")
    info = requests.get(app_url + "/v1/info", headers=HEADERS, timeout=30).json()
    assert info["retriever"] == {"default": "dense", "available": ["dense"]} and info["lexical_index"] is None


def test_serve_start_says_why_in_one_line_for_a_busy_port_and_a_damaged_index(app_url, tmp_path):
    """Last (it leaves the app failed): issue 19 #8 — on a busy port `serve` printed a traceback, and
    on a damaged index only "Failed to update the deployments". Here an index whose manifest says
    512-d vectors over 8-d shards: refused at the Retriever's start, and the replica's error comes
    out as the one line of ServeStartError."""
    import numpy as np

    from ray_cora.configs.serve import ServeConfig
    from ray_cora.demo import DEMO_PASSAGES
    from ray_cora.index.sharded import commit_index, write_shard
    from ray_cora.serve.run import ServeStartError, start_app

    busy = int(app_url.rsplit(":", 1)[1])  # the module's proxy listens there
    with pytest.raises(ServeStartError, match=f"port {busy} on 127.0.0.1 is in use .*--port"):
        start_app(ServeConfig(port=busy))

    pids = [json.loads(line)["pid"] for line in DEMO_PASSAGES.read_text(encoding="utf-8").splitlines()[:3]]
    shard = write_shard(str(tmp_path), 0, pids, np.eye(3, 8, dtype="float32"))
    commit_index(str(tmp_path), [shard], encoder={"spec": "muse", "dim": 512, "normalized": True})
    with pytest.raises(ServeStartError) as err:
        start_app(ServeConfig(port=free_port(), index=str(tmp_path), passages=str(DEMO_PASSAGES), max_replicas=1,
                              replica_cpus=0.25, health_check_period_s=1))
    message = str(err.value)
    assert "\n" not in message and "Failed to update the deployments" not in message
    assert "Retriever: ConfigError: index" in message and "records 512-d vectors" in message and "8-d" in message

    # Split over shard groups, the same shards are refused by the group actors (started before the
    # Retriever's replicas): Serve reports them on the Retriever, the same one line comes out.
    shards = [write_shard(str(tmp_path / "split"), n, pids[n:n + 1], np.eye(1, 8, dtype="float32")) for n in range(2)]
    commit_index(str(tmp_path / "split"), shards, encoder={"spec": "muse", "dim": 512, "normalized": True})
    with pytest.raises(ServeStartError) as err:
        start_app(ServeConfig(port=free_port(), index=str(tmp_path / "split"), passages=str(DEMO_PASSAGES),
                              shard_groups=2, max_replicas=1, replica_cpus=0.25, health_check_period_s=1))
    message = str(err.value)
    assert "\n" not in message and "Retriever: ConfigError: index" in message and "8-d" in message
