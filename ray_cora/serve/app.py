"""The Serve application: Retriever, Generator and PivotReranker deployments behind a FastAPI Ingress.

Run it with any of::

    ray-cora serve --config serve.yaml                       # starts Ray + Serve on 127.0.0.1
    serve run ray_cora.serve.app:build_app pivot_db=demo     # Serve CLI, args = ServeAppOptions
    serve deploy cluster/serve_config.yaml                   # a running cluster

Routes: ``POST /v1/retrieve``, ``POST /v1/answer``, ``POST /v1/pivot``, ``POST /v1/detect-language``,
``GET /v1/info``, ``GET /healthz`` (liveness: the Ingress answers), ``GET /readyz`` (readiness: every
model deployment answers), the OpenAPI schema at ``/openapi.json`` and its docs at ``/docs``, and the
browser page: ``GET /`` with its files ``GET /page/page.css``, ``/page/page.js`` and its settings
``GET /page/config.json`` (static, so open; the page sends the key on its own /v1 calls; not in the
OpenAPI schema). With an API key, every route but /healthz, /readyz, /docs, /openapi.json and the
page needs ``Authorization: Bearer <key>`` (or
``X-API-Key: <key>``). Every error response — client mistakes, unknown routes and methods, bodies
that are too large or not JSON, and failures inside the deployments — has the JSON body
``{"error", "field", "type", "code"}`` (:class:`~ray_cora.serve.schemas.ErrorResponse`), never a
traceback.

The encoder (Retriever), generator and pivot deployments batch concurrent requests with
:class:`~ray_cora.serve.core.Batcher` (``@batched``), not ``@serve.batch``: a lone request runs at
once instead of waiting ``batch_wait_timeout_s`` for a batch to fill, and requests that arrive
while a batch runs form the next one (why Serve's own cannot do this: the Batcher's docstring).
``max_batch_size`` comes from their ``user_config`` (so ``serve deploy`` can change it without
restarting replicas), and ``max_ongoing_requests`` is kept above it so a batch can fill.

Hops: HTTP proxy -> Ingress -> Retriever | Generator | PivotReranker (Serve hops), and with
``shard_groups`` > 1 Retriever -> IndexShardGroup<g> (direct Ray actor calls, not Serve hops; with 1
the Retriever holds the index: no hop). The Ingress -> model hops are kept: the models scale on
their own (GPU replicas for the encoder and generator in ``cluster/serve_config.yaml``, CPU-only
Ingress replicas in front).

With ``shard_groups=N`` (N > 1) the index's shards are split over N ``IndexShardGroup<g>`` actors
(for an index larger than one replica's memory); the Retriever keeps the encoder and the passage
store, sends each batch's vectors to every group and merges their top-k exactly.

With ``lexical_index`` the Retriever also memory-maps a sharded BM25 index and answers each request
by its ``retriever`` (dense, bm25 or hybrid: the two lists fused per question language; the logic is
:class:`~ray_cora.serve.core.RetrieverCore`'s). The BM25 search runs in the Retriever itself, also
with shard groups (they hold dense shards only).

Why the groups are Serve *deployment-scoped actors* (``DeploymentActorConfig`` on the Retriever,
Ray Serve >= 2.60) and not deployments of their own: a Serve hop (router, replica queue, the
replica's request wrapper and event loop) cost about 2 ms more per fan-out than a direct call to a
threaded actor, measured here (a caller replica, 2 no-op groups, throughput-optimized mode, loaded
2-core machine: 5.3-6.9 ms vs 3.6-5.0 ms at p50; 10.6 vs 4.5 ms in Serve's default mode), and the
fan-out is on every request's path. The controller owns these actors: it starts them before the
Retriever's replicas, shares them among all of its replicas, health-checks them (``__ray_ready__``
every ``RAY_SERVE_DEPLOYMENT_ACTOR_HEALTH_CHECK_PERIOD_S``, 10 s by default) and recreates one that
died under the same name, and deletes them with the app (``serve.shutdown``, a redeploy with new
code). Plain named detached actors would leave that lifetime to us; calling the replicas of Serve
deployments directly would need Serve's private request protocol. What it costs: a fixed number of
actors, not an autoscaled set: ``shard_group_copies=C`` copies of each group
(``IndexShardGroup<g>-<c>``; with 1, ``IndexShardGroup<g>``), each searching up to
``SHARD_GROUP_CONCURRENCY`` batches at once in threads (FAISS releases the GIL), each holding its
group's shards (the index takes C times its memory); their resources are the app's args
``shard_group_cpus`` (default ``replica_cpus``), ``shard_group_memory`` and ``search_gpus``.
Each Retriever replica sends its searches to the copies of a group in turn
(:class:`~ray_cora.serve.core.CopyRotation` says why not "fewest in flight"). A copy whose actor
died is looked up again by name (``serve.get_deployment_actor``) and asked once more, else the
group's next copy is asked and the dead one rests a while; only when no copy of a group answers
does a request get a 503 naming the group. ``/readyz`` pings every copy and stays ready while each
group has one that answers (naming the ones down), so a probe does not take the app out of service
for a lost copy.
"""

# No "from __future__ import annotations": FastAPI must resolve the route annotations at import.

import asyncio
import hmac
import logging
import os
import random
import threading
from typing import Any

import numpy as np
import ray
from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.config import DeploymentActorConfig
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException

from ray_cora import __version__, storage
from ray_cora.configs.serve import ServeAppOptions
from ray_cora.encoders import format_query
from ray_cora.errors import ConfigError
from ray_cora.index.fusion import RETRIEVERS
from ray_cora.index.gpu import placement_line
from ray_cora.index.sharded import INDEX_KIND, ShardedIndex
from ray_cora.serve.core import (
    PAGE_ASSETS,
    PAGE_HEADERS,
    CopyRotation,
    RetrieverCore,
    batched,
    check_index_dims,
    detected_language,
    fan_out,
    index_query_format,
    load_generator,
    load_pivot,
    page_config,
    page_file,
    pivot_response,
    shard_group,
    shard_group_copy_names,
)
from ray_cora.serve.schemas import (
    AnswerRequest,
    AnswerResponse,
    ClientError,
    DetectLanguageRequest,
    DetectLanguageResponse,
    ErrorResponse,
    Limits,
    PivotRequest,
    PivotResponse,
    RetrieveRequest,
    RetrieveResponse,
    describe_validation_errors,
)

logger = logging.getLogger("ray.serve")

APP_NAME = "ray_cora"
API_KEY_HEADER = "X-API-Key"
DEPLOYMENTS = ("Ingress", "Retriever", "Generator", "PivotReranker")
SHARD_GROUP = "IndexShardGroup"
# Batches one shard group's actor searches at once (threads: FAISS releases the GIL), from all
# Retriever replicas together; more wait in the actor's queue.
SHARD_GROUP_CONCURRENCY = 16
# Query vectors above this size go to the object store once per batch and every group reads that
# copy (zero-copy on its node); below it Ray inlines them in each call (its own limit, 100 KiB).
INLINE_VECTOR_BYTES = 100 * 1024


def deployment_names(opts: ServeAppOptions) -> list[str]:
    """The deployments :func:`build_app` makes for ``opts`` (a ``serve deploy`` config's
    ``deployments:`` entries refer to these names). Shard groups are not deployments: they are
    the Retriever's deployment-scoped actors (:func:`shard_group_names`)."""
    return (["Ingress", "Retriever"] + (["Generator"] if opts.generator else [])
            + (["PivotReranker"] if opts.pivot_db else []))


def shard_group_names(opts: ServeAppOptions) -> list[str]:
    """The Retriever's shard-group actors for ``opts``, group by group, every copy of each (none
    with ``shard_groups=1``; see :func:`~ray_cora.serve.core.shard_group_copy_names`).

    >>> shard_group_names(ServeAppOptions(index="s3://b/i", shard_groups=2))
    ['IndexShardGroup0', 'IndexShardGroup1']
    >>> shard_group_names(ServeAppOptions(index="s3://b/i", shard_groups=2, shard_group_copies=2))
    ['IndexShardGroup0-0', 'IndexShardGroup0-1', 'IndexShardGroup1-0', 'IndexShardGroup1-1']
    """
    return [name for names in _copy_names(opts) for name in names]


def _copy_names(opts: ServeAppOptions) -> list[list[str]]:
    if opts.shard_groups == 1:
        return []
    return shard_group_copy_names(SHARD_GROUP, opts.shard_groups, opts.shard_group_copies)


_ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 413, 415, 422, 500, 503)}
OPEN_PATHS = ("/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/")
PAGE_PREFIX = "/page/"  # the page's files and settings: open too (static; nothing secret)
ROUTES = ("POST /v1/retrieve, /v1/answer, /v1/pivot, /v1/detect-language; GET /v1/info, /healthz, /readyz, /docs, "
          "/openapi.json, / (the page)")
REALM = 'Bearer realm="ray_cora"'  # the 401's WWW-Authenticate challenge (RFC 6750)
# Seconds after which a client may retry a 503 (a replica being replaced, load being shed).
RETRY_AFTER_S = "5"

# No trailing-slash redirects: "/v1/retrieve/" is a 404 naming the route, not a 307 a client may not follow.
api = FastAPI(title="ray_cora", version=__version__, redirect_slashes=False,
              description="Multilingual open-domain QA: cross-lingual retrieval (mDPR/mUSE), answer "
                          "generation (mGEN) and the RM-MIPS English pivot. Every error response has "
                          "the body ErrorResponse: {error, field, type, code}.")


def _error(exc: ClientError) -> JSONResponse:
    headers = dict(exc.headers)
    if exc.status == 401:
        headers.setdefault("WWW-Authenticate", REALM)
    if exc.status == 503 and exc.code != "not_configured":  # a retry can succeed
        headers.setdefault("Retry-After", RETRY_AFTER_S)
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers or None)


@api.exception_handler(ClientError)
async def _client_error(request: Request, exc: ClientError) -> JSONResponse:
    return _error(exc)


@api.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    return _error(describe_validation_errors(list(exc.errors())))


@api.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's and FastAPI's own errors (unknown route, wrong method, a body that cannot be
    parsed, the body limit) in the API's error body instead of ``{"detail": ...}``."""
    return _error(http_error(exc.status_code, str(exc.detail), request.method, request.url.path, exc.headers))


def http_error(status: int, detail: str, method: str, path: str, headers: dict[str, str] | None = None
               ) -> ClientError:
    """The API's error for a Starlette/FastAPI ``HTTPException`` (``detail``) on ``method path``."""
    if status == 404:
        hint = f"; did you mean {path.rstrip('/')}" if path.endswith("/") and len(path) > 1 else ""
        return ClientError(404, f"no route {path}{hint} (routes: {ROUTES})", code="not_found")
    if status == 405:
        allowed = (headers or {}).get("Allow", "")
        return ClientError(405, f"{method} is not allowed on {path}: use {allowed}", code="method_not_allowed",
                           headers=headers)
    if status == 400:  # FastAPI could not decode the body: not UTF-8, or nested too deeply for json
        return ClientError(400, f"request body could not be parsed ({detail}): send a UTF-8 JSON object, "
                           "nested at most a few levels", code="invalid_json")
    return ClientError(status, detail, headers=headers)


@api.exception_handler(Exception)
async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    """Anything else: a deployment's failure, in the error body; the traceback goes to the replica's
    log, never to the client."""
    error = error_for_exception(exc, request.url.path)
    if error.status == 500:
        logger.error("ray_cora: %s %s failed", request.method, request.url.path, exc_info=exc)
    return _error(error)


def error_for_exception(exc: Exception, path: str) -> ClientError:
    """The error response for an exception raised while answering ``path``: a :class:`ClientError`
    (also one a deployment raised, which Ray re-raises as a subclass) as it is; a full model queue
    or a dead replica a 503 to retry; anything else a 500 that names only the exception's class.

    >>> error_for_exception(ValueError("/secret/path"), "/v1/retrieve").body()["error"]
    "internal error (ValueError) while answering /v1/retrieve: the server's log has the details"
    """
    if isinstance(exc, ClientError):  # Ray's RayTaskError(ClientError) holds the original as .cause
        cause = getattr(exc, "cause", None)
        return cause if isinstance(cause, ClientError) else exc
    if isinstance(exc, BackPressureError):  # a model deployment's queue is full (max_queued_requests)
        after = getattr(exc, "retry_after_s", None)  # set by Ray >= 2.55
        retry = {"Retry-After": str(max(1, round(after)))} if after else None
        return ClientError(getattr(exc, "status_code", 503), "overloaded: too many requests are queued; "
                           "retry shortly", code="overloaded", headers=retry)
    if isinstance(exc, RayActorError):
        return ClientError(503, f"a model replica is unavailable ({type(exc).__name__}): retry shortly",
                           code="unavailable")
    return ClientError(500, f"internal error ({_exception_name(exc)}) while answering {path}: the server's log "
                       "has the details", code="internal_error")


def _exception_name(exc: Exception) -> str:
    # Ray wraps a deployment's exception in RayTaskError(<its class>): name the original.
    cause = getattr(exc, "cause", None)
    return type(cause if isinstance(cause, BaseException) else exc).__name__


_bearer = HTTPBearer(auto_error=False, description="The API key as `Authorization: Bearer <key>` (when the "
                     "app has one: ray-cora serve --api-key-env VAR)")
_api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="The API key, the older "
                               "header (an alias of the Bearer token)")


async def _api_key_schemes(bearer: HTTPAuthorizationCredentials | None = Security(_bearer),
                           api_key: str | None = Security(_api_key_header)) -> None:
    """Declares the two ways to send the key, so /openapi.json and /docs show them. The key itself is
    checked by :class:`_Guard` from the headers, before the body is read (a dependency runs after)."""


AUTHENTICATED = [Depends(_api_key_schemes)]


def presented_key(headers) -> str | None:
    """The API key a request carries: its ``Authorization: Bearer`` token, else its ``X-API-Key``.

    >>> presented_key({"authorization": "bearer abc"}), presented_key({"x-api-key": "k"}), presented_key({})
    ('abc', 'k', None)
    """
    scheme, _, token = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get(API_KEY_HEADER.lower()) or None


def _refusal(request: Request) -> JSONResponse | None:
    """The 401/415/413 answer for a request that fails the API key, Content-Type or body-size check
    (headers only: the body is not read), else None."""
    key, limits = getattr(request.app.state, "api_key", None), getattr(request.app.state, "limits", None)
    path = request.url.path
    if key and path not in OPEN_PATHS and not path.startswith(PAGE_PREFIX):
        given = presented_key(request.headers)
        if given is None:
            return _error(ClientError(401, f"missing API key: send Authorization: Bearer <key> (or the "
                                      f"{API_KEY_HEADER} header)", field="Authorization", code="unauthorized"))
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), key.encode()):
            return _error(ClientError(401, "wrong API key", field="Authorization", code="unauthorized",
                                      headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'}))
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if request.method == "POST" and media_type != "application/json":
        return _error(ClientError(415, f"send the body as JSON with the header Content-Type: "
                                  f"application/json (got {media_type or 'no Content-Type'})", field=None))
    length = request.headers.get("content-length")
    if limits and length and length.isdigit() and int(length) > limits.max_body_bytes:
        return _error(_too_large(f"{length} bytes", limits.max_body_bytes))
    return None


def _too_large(size: str, limit: int) -> ClientError:
    return ClientError(413, f"request body is {size}; the limit is {limit} bytes", code="body_too_large")


class _BodyTooLarge(HTTPException):
    """Raised by the guarded ``receive`` once a body passes the limit: an HTTPException, so FastAPI
    passes it on while it reads the body (it turns other errors there into a 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _too_large(f"over {limit} bytes (stopped reading there)", limit).message)


class _Guard:
    """:func:`_refusal` on every HTTP request, before the body is read or parsed, and the body
    limit on the bytes as they arrive (a chunked body has no Content-Length to check): past the
    limit, reading stops with a 413. A plain ASGI middleware rather than
    ``@api.middleware("http")``: Starlette's BaseHTTPMiddleware behind that decorator runs each
    request's app in an extra task and pipes the response through a stream."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            request = Request(scope)
            refusal = _refusal(request)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
            limits = getattr(request.app.state, "limits", None)
            if limits is not None:
                receive = _counting(receive, limits.max_body_bytes)
        await self.app(scope, receive, send)


def _counting(receive, limit: int):
    """``receive`` that raises :class:`_BodyTooLarge` once the body's bytes pass ``limit``."""
    received = 0

    async def guarded():
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _BodyTooLarge(limit)
        return message

    return guarded


api.add_middleware(_Guard)


def _set_batching(batcher, config: dict[str, Any]) -> None:
    # batch_wait_timeout_s may still be in a user_config (cluster/*.yaml): the Batcher never waits
    # for a batch to fill, so it is accepted and has no effect.
    if "max_batch_size" in config:
        batcher.set_max_batch_size(int(config["max_batch_size"]))


class IndexShardGroup:
    """One group of the index's shards (``shard_group(num_shards, groups, group)``), so the index
    need not fit in one process's memory. Hosted as the Retriever's deployment-scoped actor
    :data:`ShardGroupActor` (threaded: up to :data:`SHARD_GROUP_CONCURRENCY` searches at once).
    ``search(vectors, k)`` → partial top-k (scores, pids) for the Retriever to merge."""

    def __init__(self, options: dict[str, Any], group: int, copy: int = 0) -> None:
        opts = ServeAppOptions.model_validate(options)
        num_shards = len(storage.Artifact(opts.index, kind=INDEX_KIND).manifest["shards"])
        self.shards = shard_group(num_shards, opts.shard_groups, group)
        self.index = ShardedIndex.open(opts.index, shards=self.shards, use_gpu=opts.search_gpus > 0,
                                       gpu_fp16=opts.gpu_fp16)
        check_index_dims(self.index, opts.index)
        self.defaults = {"nprobe": opts.nprobe, "ef_search": opts.ef_search}
        self.searches = 0  # this copy's share of its group's load (searched())
        self._count = threading.Lock()
        name = shard_group_copy_names(SHARD_GROUP, opts.shard_groups, opts.shard_group_copies)[group][copy]
        print(f"{name}: {len(self.index)} vectors in shards {self.shards} on "
              f"{placement_line(self.index.placement)}")

    def search(self, vectors: np.ndarray, k: int, nprobe: int | None = None,
               ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        with self._count:
            self.searches += 1
        return self.index.search_pid_arrays(
            vectors, k, nprobe=self.defaults["nprobe"] if nprobe is None else nprobe,
            ef_search=self.defaults["ef_search"] if ef_search is None else ef_search)

    def placement(self) -> dict[str, Any]:
        return {**self.index.placement, "shards": self.shards, "vectors": len(self.index)}

    def searched(self) -> int:
        """Searches this actor has run since it started (how the Retriever spreads them over copies)."""
        return self.searches

    def ping(self) -> bool:
        return True


ShardGroupActor = ray.remote(IndexShardGroup)


@serve.deployment(name="Retriever", max_ongoing_requests=64)
class Retriever:
    """Question encoder + sharded index (+ lexical index) + passage store: ``retrieve(question, k,
    lang, nprobe, ef_search, retriever)`` → passages.

    With ``shard_groups`` > 1 the index lives in the deployment's ``IndexShardGroup<g>`` actors
    instead: each batch of question vectors goes to every group by a direct actor call and their
    partial top-k lists are merged exactly (:func:`~ray_cora.serve.core.fan_out`). With
    ``shard_group_copies`` > 1 each search goes to one copy per group, in turn
    (:class:`~ray_cora.serve.core.CopyRotation`), and to another copy when that one is dead."""

    def __init__(self, options: dict[str, Any]) -> None:
        opts = ServeAppOptions.model_validate(options)
        self.group_names = _copy_names(opts)  # [group][copy]
        # Each replica starts its rotation at a random copy, so replicas started together do not all
        # send their first batches to copy 0.
        self.rotations = [CopyRotation(len(names), start=random.randrange(len(names)))
                          for names in self.group_names]
        # Started by the controller before this replica, shared with the deployment's other replicas.
        self.groups = [self._find_copies(g) for g in range(len(self.group_names))]
        self.core = RetrieverCore.load(index=opts.index, passages=opts.passages,
                                       passage_store=opts.passage_store, encoder=opts.encoder,
                                       hold_index=not self.groups, cache_buckets=opts.passage_cache_buckets,
                                       default_params=(opts.nprobe, opts.ef_search),
                                       use_gpu=opts.search_gpus > 0 and not self.groups, gpu_fp16=opts.gpu_fp16,
                                       lexical_index=opts.lexical_index, fusion=opts.fusion,
                                       retriever=opts.default_retriever)
        if self.core.index is not None:
            print(f"Retriever: {len(self.core.index)} vectors on {placement_line(self.core.index.placement)}")

    def _find_copies(self, g: int) -> list:
        """Group ``g``'s copies at replica start. A copy Serve is recreating just now (a replica added
        while a copy was lost) is left out until it answers a look-up; a group with none found fails
        the replica's start (Serve retries it)."""
        found, missing = [], None
        for c, name in enumerate(self.group_names[g]):
            try:
                found.append(serve.get_deployment_actor(name))
            except ValueError as exc:
                found.append(None)
                missing = exc
                self.rotations[g].failed(c)
        if all(handle is None for handle in found):
            raise missing
        return found

    def reconfigure(self, config: dict[str, Any]) -> None:
        _set_batching(self.search, config)

    @batched(max_batch_size=16)
    async def search(self, requests: list[tuple[str, int, str | None, int | None, int | None, str | None]]
                     ) -> list[list[dict[str, Any]]]:
        """One batch of (question, k, lang, nprobe, ef_search, retriever) requests: each question is
        encoded in the encoder's query format (a plain format needs no language; the Ingress asks
        for lang when the format writes it) and ranked by its retriever (None: the app's default)."""
        questions, ks, langs, nprobes, ef_searches, retrievers = zip(*requests)
        params = list(zip(nprobes, ef_searches))
        # In a thread, so requests keep arriving (and queue for the next batch) while this one runs;
        # with shard groups the whole batch (encode, fan-out, merge, BM25, fusion, texts) is one thread hop.
        if not self.groups:
            return await asyncio.to_thread(self.core.retrieve, questions, ks, langs, params, retrievers)
        return await asyncio.to_thread(self.core.retrieve, questions, ks, langs, params, retrievers,
                                       search=self._search_groups)

    def _search_groups(self, vectors: np.ndarray, ks, params) -> tuple[list, list]:
        # Unset values stay None: each group applies the app's defaults (IndexShardGroup.defaults).
        # The BM25 side is searched by the core, here in the Retriever: the groups hold dense shards only.
        return fan_out(vectors, ks, params, self._submit, self._wait)

    def _submit(self, vectors: np.ndarray, k: int, nprobe: int | None, ef_search: int | None) -> list:
        """Start one search on one copy of every group: [(group, copy order, call args, (copy, ObjectRef))]."""
        shared = ray.put(vectors) if vectors.nbytes > INLINE_VECTOR_BYTES else vectors
        args = (shared, k, nprobe, ef_search)
        calls = []
        for g, rotation in enumerate(self.rotations):
            order = rotation.order()
            calls.append((g, order, args, self._start(g, order, "search", args)))
        return calls

    def _wait(self, calls: list) -> list[tuple[np.ndarray, np.ndarray]]:
        """The groups' partial results; a copy whose actor died is looked up again (Serve recreates
        it under the same name), else the group's next copy is asked."""
        return [self._on_group(g, "search", args, order, started) for g, order, args, started in calls]

    def _start(self, g: int, order: list[int], method: str, args: tuple) -> tuple[int, Any] | None:
        """``method(*args)`` started on the first copy of group ``g`` in ``order`` with a live handle:
        (copy, ObjectRef), or None when no copy has one."""
        for c in order:
            handle = self._handle(g, c)
            if handle is not None:
                return c, getattr(handle, method).remote(*args)
        return None

    def _on_group(self, g: int, method: str, args: tuple, order: list[int],
                  started: tuple[int, Any] | None = None) -> Any:
        """The result of ``method(*args)`` from the first copy of group ``g`` in ``order`` that
        answers (``started``: the call already made on one of them), else a 503 naming the group."""
        started = started or self._start(g, order, method, args)
        if started is not None:
            first, ref = started
            for c in order[order.index(first):]:
                answered, value = self._on_copy(g, c, method, args, ref if c == first else None)
                if answered:
                    return value
        raise self._unavailable(g)

    def _on_copy(self, g: int, c: int, method: str, args: tuple = (), ref: Any = None) -> tuple[bool, Any]:
        """(True, the result of ``method(*args)`` on copy ``c`` of group ``g``) (``ref``: the call
        already made), or (False, None) when its actor died and Serve has not recreated it yet; a
        stale handle (the actor was recreated since) is looked up again and asked once more."""
        rotation = self.rotations[g]
        for _ in range(2):
            if ref is None:
                handle = self._handle(g, c)
                if handle is None:
                    return False, None
                ref = getattr(handle, method).remote(*args)
            try:
                value = ray.get(ref)
            except RayActorError:
                rotation.failed(c)
                ref = None
                continue
            rotation.answered(c)
            return True, value
        return False, None

    def _handle(self, g: int, c: int):
        """Copy ``c`` of group ``g``: the cached handle, or for a copy whose last call failed the
        actor Serve has recreated under its name (None while there is none)."""
        rotation, dead = self.rotations[g], self.groups[g][c]
        if not rotation.is_down(c):
            return dead
        try:
            fresh = serve.get_deployment_actor(self.group_names[g][c])
        except ValueError:  # not recreated yet: the name is free until Serve's next health check
            fresh = None
        if fresh is None or (dead is not None and fresh._actor_id == dead._actor_id):
            rotation.failed(c)  # rest again before the next look-up
            return None
        self.groups[g][c] = fresh
        rotation.answered(c)
        return fresh

    def _unavailable(self, g: int) -> ClientError:
        names = self.group_names[g]
        if len(names) == 1:
            what = f"{names[0]} (shard group {g} of the index) is unavailable: its actor died"
        else:
            what = (f"shard group {g} of the index is unavailable: none of its {len(names)} copies "
                    f"({', '.join(names)}) answers; their actors died")
        return ClientError(503, f"{what} and Serve is recreating it (within its health-check period); retry "
                           "shortly", code="unavailable")

    async def _group_call(self, g: int, method: str) -> Any:
        """``method()`` of one copy of group ``g`` (placement), in a thread as the searches are."""
        return await asyncio.to_thread(self._on_group, g, method, (), self.rotations[g].order())

    async def retrieve(self, question: str, k: int, lang: str | None = None, nprobe: int | None = None,
                       ef_search: int | None = None, retriever: str | None = None) -> list[dict[str, Any]]:
        return await self.search((question, k, lang, nprobe, ef_search, retriever))

    async def info(self) -> dict[str, Any]:
        """The encoder and the index (size, dimension, shards, search defaults, placement), the
        retrievers offered and the default, the lexical index and the fusion weights."""
        manifest = storage.Artifact(self.core.index_uri, kind=INDEX_KIND).manifest
        described = await self.describe()
        recorded = manifest["encoder"]
        return {"encoder": {"spec": recorded.get("spec"), "dim": int(recorded["dim"]),
                            "query_format": self.core.query_format},
                "index": {"vectors": sum(int(s["count"]) for s in manifest["shards"]),
                          "shards": len(manifest["shards"]), "dim": int(recorded["dim"]),
                          "factory": manifest.get("index_factory", manifest.get("index_type")),
                          "shard_groups": len(self.groups) or 1,
                          "shard_group_copies": len(self.groups[0]) if self.groups else 1, **described},
                **self.core.describe_retrievers()}

    async def ping(self) -> bool | str:
        """Readiness: True when this replica and every copy of every shard group answer; while each
        group still has a copy that answers, a phrase naming the copies that do not (the app
        answers every request, with less throughput); a 503 naming a group none of whose copies
        answers (its requests would fail)."""
        copies = [(g, c) for g, names in enumerate(self.group_names) for c in range(len(names))]
        answers = await asyncio.gather(*(asyncio.to_thread(self._on_copy, g, c, "ping") for g, c in copies))
        down: dict[int, list[str]] = {}
        for (g, c), (answered, _) in zip(copies, answers):
            if not answered:
                down.setdefault(g, []).append(self.group_names[g][c])
        for g, names in down.items():
            if len(names) == len(self.group_names[g]):
                raise self._unavailable(g)
        if not down:
            return True
        return (f"degraded: {', '.join(name for names in down.values() for name in names)} did not answer "
                "(another copy of each of their groups did)")

    async def describe(self) -> dict[str, Any]:
        """The index's default search parameters and where its shards are searched."""
        if self.core.index is not None:
            index = self.core.index
            return {"search_params": index.search_defaults, "placement": [index.placement]}
        placements = await asyncio.gather(*(self._group_call(g, "placement") for g in range(len(self.groups))))
        return {"search_params": storage.Artifact(self.core.index_uri, kind=INDEX_KIND).manifest.get("search_params"),
                "placement": list(placements)}


@serve.deployment(name="Generator", max_ongoing_requests=32)
class Generator:
    """mGEN over retrieved passages: ``generate(question, lang, passages)`` → answer in ``lang``."""

    def __init__(self, options: dict[str, Any]) -> None:
        opts = ServeAppOptions.model_validate(options)
        self.model = load_generator(opts.generator, tokenizer=opts.generator_tokenizer,
                                    top_k=opts.answer_passages, decoding=opts.decoding, num_beams=opts.num_beams,
                                    max_source_length=opts.max_source_length,
                                    max_target_length=opts.max_target_length)

    def reconfigure(self, config: dict[str, Any]) -> None:
        _set_batching(self.batch, config)

    @batched(max_batch_size=8)
    async def batch(self, requests: list[tuple[str, str, list[dict[str, Any]], str | None]]) -> list[str]:
        questions, langs, passages, queries = zip(*requests)
        return await asyncio.to_thread(self.model.answer, list(questions), list(langs), list(passages),
                                       list(queries))

    async def ping(self) -> bool:
        return True

    async def generate(self, question: str, lang: str, passages: list[dict[str, Any]],
                       query: str | None = None) -> str:
        """The answer; ``query`` is what the retriever read (as ``ray-cora generate`` gets it from a
        retrieval record), CORA's question field for the cora preset."""
        return await self.batch((question, lang, passages, query))


@serve.deployment(name="PivotReranker", max_ongoing_requests=64)
class PivotReranker:
    """The RM-MIPS pipeline (MIPS over English questions, rerank, translate the answer back)."""

    def __init__(self, options: dict[str, Any]) -> None:
        opts = ServeAppOptions.model_validate(options)
        self.pipeline = load_pivot(opts.pivot_db, labels=opts.pivot_labels, reranker=opts.pivot_reranker,
                                   threshold=opts.pivot_threshold)

    def reconfigure(self, config: dict[str, Any]) -> None:
        _set_batching(self.batch, config)

    @batched(max_batch_size=16)
    async def batch(self, requests: list[tuple[str, str]]) -> list[dict[str, Any]]:
        questions, langs = zip(*requests)
        results = await asyncio.to_thread(self.pipeline.answer_batch, list(questions), list(langs))
        return [pivot_response(q, lang, r) for q, lang, r in zip(questions, langs, results)]

    async def answer(self, question: str, lang: str) -> dict[str, Any]:
        return await self.batch((question, lang))

    async def ping(self) -> bool:
        return True


@serve.deployment(name="Ingress", max_ongoing_requests=256)
@serve.ingress(api)
class Ingress:
    """The HTTP front door: validates every request, then calls the model deployments."""

    def __init__(self, retriever, generator, pivot, options: dict[str, Any], api_key: str | None) -> None:
        opts = ServeAppOptions.model_validate(options)
        self.retriever, self.generator, self.pivot = retriever, generator, pivot
        self.limits = Limits(opts.max_question_chars, opts.max_k, opts.default_k, opts.max_nprobe, opts.max_ef_search,
                             retrievers=RETRIEVERS if opts.lexical_index else ("dense",),
                             default_retriever=opts.default_retriever)
        self.answer_passages = opts.answer_passages
        self.readiness_timeout_s = opts.readiness_timeout_s
        self.models = {"generator": opts.generator, "pivot_db": opts.pivot_db, "pivot_reranker": opts.pivot_reranker}
        self.index_info: dict[str, Any] | None = None
        # Whether questions need their language: the encoder's query format writes it (CORA's mDPR
        # reads "{question} [{lang}]"); read from the index manifest, without loading the model.
        self.query_format = index_query_format(opts.index, opts.encoder)
        self.needs_lang = "{lang}" in self.query_format
        # The FastAPI app object lives once per replica process; the middleware reads these.
        api.state.api_key = api_key
        api.state.limits = self.limits

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        """Liveness: the Ingress answers (what the app serves and its index; /readyz checks the models)."""
        if self.index_info is None:  # asked once: it does not change while the replicas live
            self.index_info = await self.retriever.describe.remote()
        return {"status": "ok", "retriever": True, "generator": self.generator is not None,
                "pivot": self.pivot is not None, "index": self.index_info}

    @api.get("/", include_in_schema=False)
    async def page(self) -> Response:
        """The browser page: a question box over the same /v1 routes any client calls."""
        return Response(page_file("index.html"), media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    @api.get("/page/config.json", include_in_schema=False)
    async def page_settings(self) -> dict[str, Any]:
        """What the page needs to know of this app (:func:`~ray_cora.serve.core.page_config`)."""
        limits = self.limits
        return page_config(needs_lang=self.needs_lang, retrievers=limits.retrievers,
                           default_retriever=limits.default_retriever, generator=self.generator is not None,
                           pivot=self.pivot is not None, max_question_chars=limits.max_question_chars,
                           default_k=limits.default_k, max_k=limits.max_k)

    @api.get("/page/{name}", include_in_schema=False)
    async def page_asset(self, name: str) -> Response:
        """The page's stylesheet and script, and nothing else (a 404 names what there is)."""
        if name not in PAGE_ASSETS:
            raise ClientError(404, f"no page file {name!r} (the page's files: {', '.join(sorted(PAGE_ASSETS))}, "
                              "config.json)", code="not_found")
        return Response(page_file(name), media_type=PAGE_ASSETS[name], headers=PAGE_HEADERS)

    @api.post("/v1/detect-language", response_model=DetectLanguageResponse, responses=_ERRORS,
              dependencies=AUTHENTICATED)
    async def detect_language(self, body: DetectLanguageRequest) -> dict[str, Any]:
        """The language of a question among ray_cora's language table, told by its script and, for
        Latin-script text, by its function words; null when unsure (the page then asks the user)."""
        return detected_language(self.limits.question(body.text, field="text"))

    @api.get("/v1/info", responses=_ERRORS, dependencies=AUTHENTICATED)
    async def info(self) -> dict[str, Any]:
        """What this app serves: version, models, the index (size, dimension, shards, search
        defaults, placement) and the request limits."""
        limits = self.limits
        return {"version": __version__, **await self.retriever.info.remote(), "models": self.models,
                "limits": {"max_question_chars": limits.max_question_chars, "max_k": limits.max_k,
                           "default_k": limits.default_k, "max_nprobe": limits.max_nprobe,
                           "max_ef_search": limits.max_ef_search, "max_body_bytes": limits.max_body_bytes}}

    @api.get("/readyz", responses={503: {"model": ErrorResponse}})
    async def readyz(self) -> dict[str, Any]:
        """Readiness: every model deployment answers a ping within ``readiness_timeout_s``; else 503
        naming the ones that did not. Each deployment's state is "ok", or for a Retriever whose
        shard groups each answer but not from every copy, "degraded: <the copies that did not>"
        (still ready: every request is answered, so a probe must not take the app out of service)."""
        handles = {"Retriever": self.retriever, "Generator": self.generator, "PivotReranker": self.pivot}
        checked = {name: handle for name, handle in handles.items() if handle is not None}
        answers = await asyncio.gather(*(self._ping(handle) for handle in checked.values()))
        failed = {name: why for name, (why, _) in zip(checked, answers) if why is not None}
        if failed:
            raise ClientError(503, "not ready: " + "; ".join(f"{name} {why}" for name, why in failed.items()),
                              field=None, code="not_ready")
        return {"status": "ready", "deployments": {name: state for name, (_, state) in zip(checked, answers)}}

    async def _ping(self, handle) -> tuple[str | None, str]:
        """(None, its state: "ok" or what its ping says) when the deployment answers in time, else
        (why not, one phrase; "")."""
        try:
            answer = await asyncio.wait_for(self._call_ping(handle), self.readiness_timeout_s)
        except asyncio.TimeoutError:
            return f"did not answer within {self.readiness_timeout_s:g} s", ""
        except Exception as exc:  # a dead or failing replica: readiness reports it, never raises
            cause = getattr(exc, "cause", None)
            if isinstance(cause, ClientError):  # the deployment said what is wrong (a dead shard group)
                return f"failed: {cause.message}", ""
            return f"failed ({_exception_name(exc)})", ""
        return None, answer if isinstance(answer, str) else "ok"

    @staticmethod
    async def _call_ping(handle) -> bool | str:
        return await handle.ping.remote()

    @api.post("/v1/retrieve", response_model=RetrieveResponse, responses=_ERRORS, dependencies=AUTHENTICATED)
    async def retrieve(self, body: RetrieveRequest) -> dict[str, Any]:
        """Top-k passages, in any language, for a question in any language, by the dense, BM25 or
        hybrid retriever (``retriever``; BM25 searches the question's language, so needs ``lang``)."""
        question, k = self.limits.question(body.question), self.limits.k(body.k)
        retriever = self.limits.retriever(body.retriever)
        if retriever == "bm25" and body.lang is None:
            raise ClientError(422, "lang is required by retriever bm25: it searches the BM25 index in the question's "
                              "language", field="lang", code="missing_field")
        lang = self.limits.lang(body.lang, required=self.needs_lang)
        nprobe = self.limits.search_param("nprobe", body.nprobe)
        ef_search = self.limits.search_param("ef_search", body.ef_search)
        passages = await self.retriever.retrieve.remote(question, k, lang, nprobe, ef_search, retriever)
        return {"question": question, "lang": lang, "k": k, "retriever": retriever, "passages": passages}

    @api.post("/v1/answer", response_model=AnswerResponse, responses=_ERRORS, dependencies=AUTHENTICATED)
    async def answer(self, body: AnswerRequest) -> dict[str, Any]:
        """An answer in ``lang`` generated by mGEN from the retrieved passages, with that evidence."""
        question, lang = self.limits.question(body.question), self.limits.lang(body.lang, required=True)
        if self.generator is None:
            raise ClientError(503, "no generator configured: start the app with generator=<mGEN "
                              "checkpoint> (ray-cora serve --generator PATH)", code="not_configured")
        passages = await self.retriever.retrieve.remote(question, self.answer_passages, lang)
        # The retriever's input rides along: mGEN's cora preset reads it as CORA's question field.
        answer = await self.generator.generate.remote(question, lang, passages,
                                                      format_query(self.query_format, question, lang))
        return {"question": question, "lang": lang, "answer": answer, "passages": passages}

    @api.post("/v1/pivot", response_model=PivotResponse, responses=_ERRORS, dependencies=AUTHENTICATED)
    async def pivot(self, body: PivotRequest) -> dict[str, Any]:
        """The closest English question in the pivot database, its score, and its answer translated
        into ``lang`` (null when the pipeline abstains)."""
        question, lang = self.limits.question(body.question), self.limits.lang(body.lang, required=True)
        if self.pivot is None:
            raise ClientError(503, "no pivot database configured: start the app with pivot_db=<URI> "
                              "(ray-cora pivot build --out), or pivot_db=demo", code="not_configured")
        return await self.pivot.answer.remote(question, lang)


def build_app(args: dict[str, Any] | ServeAppOptions | None = None) -> serve.Application:
    """The application for ``serve run ray_cora.serve.app:build_app key=value ...``, ``serve
    deploy`` (``import_path`` + ``args``) and ``ray-cora serve``; ``args`` are
    :class:`ServeAppOptions` fields. Deployment settings given here (autoscaling, resources,
    batching) are defaults that a ``serve deploy`` config's ``deployments:`` section overrides.
    """
    opts = args if isinstance(args, ServeAppOptions) else ServeAppOptions.model_validate(args or {})
    options = opts.to_dict()
    api_key = None
    if opts.api_key_env:
        api_key = os.environ.get(opts.api_key_env)
        if not api_key:
            raise ConfigError(f"api_key_env: the environment variable {opts.api_key_env} is not set (or "
                              "empty); set it to the API key, or drop api_key_env to serve without one")
    batching = {"max_batch_size": opts.max_batch_size}

    def model_options(target: int) -> dict[str, Any]:
        return {"autoscaling_config": _autoscaling(opts.max_replicas, target),
                "ray_actor_options": {"num_cpus": opts.replica_cpus, "num_gpus": opts.replica_gpus},
                "max_ongoing_requests": max(4 * opts.max_batch_size, 2 * target),
                # Past this many waiting calls the Ingress gets BackPressureError at once: a 503
                # with Retry-After (_server_error), not a queue without bound.
                "max_queued_requests": opts.max_queued_requests,
                "user_config": batching, "health_check_period_s": opts.health_check_period_s}

    retriever_options = model_options(opts.max_batch_size)
    groups = shard_group_names(opts)
    if groups:
        # Deployment-scoped actors: shard_group_copies per group, shared by every Retriever replica
        # (the module docstring says why not deployments). A group whose index cannot be opened fails
        # the same way each time: Serve gives up after max_constructor_retry_count tries (default 20), so 3.
        retriever_options["deployment_actors"] = [DeploymentActorConfig(
            name=name, actor_class=ShardGroupActor, init_args=(options, g, c),
            actor_options={"num_cpus": opts.shard_group_cpus or opts.replica_cpus, "num_gpus": opts.search_gpus,
                           "max_concurrency": SHARD_GROUP_CONCURRENCY,
                           **({"memory": opts.shard_group_memory} if opts.shard_group_memory else {})})
            for g, names in enumerate(_copy_names(opts)) for c, name in enumerate(names)]
        retriever_options["max_constructor_retry_count"] = 3
    elif opts.search_gpus:  # the Retriever holds the index: its GPU too
        retriever_options["ray_actor_options"]["num_gpus"] = max(opts.replica_gpus, opts.search_gpus)
    retriever = Retriever.options(**retriever_options).bind(options)
    generator = (Generator.options(**model_options(opts.max_batch_size)).bind(options)
                 if opts.generator else None)
    pivot = (PivotReranker.options(**model_options(opts.max_batch_size)).bind(options)
             if opts.pivot_db else None)
    return Ingress.options(
        autoscaling_config=_autoscaling(opts.max_replicas, 64),
        ray_actor_options={"num_cpus": opts.replica_cpus},
        health_check_period_s=opts.health_check_period_s,
    ).bind(retriever, generator, pivot, options, api_key)


def _autoscaling(max_replicas: int, target_ongoing_requests: int) -> dict[str, Any]:
    return {"min_replicas": 1, "initial_replicas": 1, "max_replicas": max_replicas,
            "target_ongoing_requests": target_ongoing_requests}


# The demo application with default options, for ``serve build ray_cora.serve.app:app`` (which
# needs an Application, not a builder). Binding loads nothing: models load in the replicas.
app = build_app()
