"""The Serve application: Retriever, Generator and PivotReranker deployments behind a FastAPI Ingress.

Run it with any of::

    ray-cora serve --config serve.yaml                       # starts Ray + Serve on 127.0.0.1
    serve run ray_cora.serve.app:build_app pivot_db=demo     # Serve CLI, args = ServeAppOptions
    serve deploy cluster/serve_config.yaml                   # a running cluster

Routes: ``POST /v1/retrieve``, ``POST /v1/answer``, ``POST /v1/pivot``, ``GET /healthz``, the
OpenAPI schema at ``/openapi.json`` and its docs at ``/docs``. Every client mistake is a 4xx with
the JSON body ``{"error": ..., "field": ...}``.

The encoder (Retriever), generator and pivot deployments batch concurrent requests with
:class:`~ray_cora.serve.core.Batcher` (``@batched``), not ``@serve.batch``: a lone request runs at
once instead of waiting ``batch_wait_timeout_s`` for a batch to fill, and requests that arrive
while a batch runs form the next one (why Serve's own cannot do this: the Batcher's docstring).
``max_batch_size`` comes from their ``user_config`` (so ``serve deploy`` can change it without
restarting replicas), and ``max_ongoing_requests`` is kept above it so a batch can fill.

Hops: HTTP proxy -> Ingress -> Retriever | Generator | PivotReranker, and Retriever ->
IndexShardGroup<g> only with ``shard_groups`` > 1 (with 1 the Retriever holds the index: no hop).
The Ingress -> model hops are kept: the models scale on their own (GPU replicas for the encoder and
generator in ``cluster/serve_config.yaml``, CPU-only Ingress replicas in front).

With ``shard_groups=N`` (N > 1) the index's shards are split over N ``IndexShardGroup<g>``
deployments (for an index larger than one replica's memory); the Retriever keeps the encoder and
the passage store, sends each batch's vectors to every group and merges their top-k exactly.
"""

# No "from __future__ import annotations": FastAPI must resolve the route annotations at import.

import asyncio
import hmac
import os
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve

from ray_cora import __version__, storage
from ray_cora.configs.serve import ServeAppOptions
from ray_cora.encoders import format_query
from ray_cora.errors import ConfigError
from ray_cora.index.gpu import placement_line
from ray_cora.index.sharded import INDEX_KIND, ShardedIndex, merge_pid_arrays
from ray_cora.languages import UNKNOWN_LANG
from ray_cora.serve.core import (
    RetrieverCore,
    batched,
    group_by_search_params,
    rows_in_request_order,
    index_query_format,
    load_generator,
    load_pivot,
    pivot_response,
    shard_group,
)
from ray_cora.serve.schemas import (
    AnswerRequest,
    AnswerResponse,
    ClientError,
    ErrorResponse,
    Limits,
    PivotRequest,
    PivotResponse,
    RetrieveRequest,
    RetrieveResponse,
    describe_validation_errors,
)

APP_NAME = "ray_cora"
API_KEY_HEADER = "X-API-Key"
DEPLOYMENTS = ("Ingress", "Retriever", "Generator", "PivotReranker")
SHARD_GROUP = "IndexShardGroup"


def deployment_names(opts: ServeAppOptions) -> list[str]:
    """The deployments :func:`build_app` makes for ``opts`` (a ``serve deploy`` config's
    ``deployments:`` entries refer to these names)."""
    names = ["Ingress", "Retriever"]
    if opts.shard_groups > 1:
        names += [f"{SHARD_GROUP}{g}" for g in range(opts.shard_groups)]
    return names + (["Generator"] if opts.generator else []) + (["PivotReranker"] if opts.pivot_db else [])

_ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 413, 415, 422, 503)}

api = FastAPI(title="ray_cora", version=__version__,
              description="Multilingual open-domain QA: cross-lingual retrieval (mDPR/mUSE), answer "
                          "generation (mGEN) and the RM-MIPS English pivot.")


def _error(exc: ClientError) -> JSONResponse:
    headers = {"WWW-Authenticate": API_KEY_HEADER} if exc.status == 401 else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


@api.exception_handler(ClientError)
async def _client_error(request: Request, exc: ClientError) -> JSONResponse:
    return _error(exc)


@api.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    return _error(describe_validation_errors(list(exc.errors())))


def _refusal(request: Request) -> JSONResponse | None:
    """The 401/415/413 answer for a request that fails the API key, Content-Type or body-size check
    (headers only: the body is not read), else None."""
    key, limits = getattr(request.app.state, "api_key", None), getattr(request.app.state, "limits", None)
    open_paths = ("/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")
    if key and request.url.path not in open_paths:
        given = request.headers.get(API_KEY_HEADER, "")
        if not hmac.compare_digest(given.encode(), key.encode()):
            return _error(ClientError(401, f"missing or wrong API key: send it in the {API_KEY_HEADER} "
                                      "header", field=API_KEY_HEADER))
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if request.method == "POST" and media_type != "application/json":
        return _error(ClientError(415, f"send the body as JSON with the header Content-Type: "
                                  f"application/json (got {media_type or 'no Content-Type'})", field=None))
    length = request.headers.get("content-length")
    if limits and length and length.isdigit() and int(length) > limits.max_body_bytes:
        return _error(ClientError(413, f"request body is {length} bytes; the limit is "
                                  f"{limits.max_body_bytes}", field=None))
    return None


class _Guard:
    """:func:`_refusal` on every HTTP request, before the body is read or parsed. A plain ASGI
    middleware rather than ``@api.middleware("http")``: Starlette's BaseHTTPMiddleware behind that
    decorator runs each request's app in an extra task and pipes the response through a stream."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            refusal = _refusal(Request(scope))
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


api.add_middleware(_Guard)


def _set_batching(batcher, config: dict[str, Any]) -> None:
    # batch_wait_timeout_s may still be in a user_config (cluster/*.yaml): the Batcher never waits
    # for a batch to fill, so it is accepted and has no effect.
    if "max_batch_size" in config:
        batcher.set_max_batch_size(int(config["max_batch_size"]))


@serve.deployment(name="IndexShardGroup", max_ongoing_requests=16)
class IndexShardGroup:
    """One group of the index's shards (``shard_group(num_shards, groups, group)``): every replica
    of deployment ``IndexShardGroup<g>`` holds the same shards, so the index need not fit in one
    replica's memory. ``search(vectors, k)`` → partial top-k (scores, pids) for the Retriever to merge."""

    def __init__(self, options: dict[str, Any], group: int) -> None:
        opts = ServeAppOptions.model_validate(options)
        num_shards = len(storage.Artifact(opts.index, kind=INDEX_KIND).manifest["shards"])
        self.shards = shard_group(num_shards, opts.shard_groups, group)
        self.index = ShardedIndex.open(opts.index, shards=self.shards, use_gpu=opts.search_gpus > 0,
                                       gpu_fp16=opts.gpu_fp16)
        self.defaults = {"nprobe": opts.nprobe, "ef_search": opts.ef_search}
        print(f"{SHARD_GROUP}{group}: {len(self.index)} vectors in shards {self.shards} on "
              f"{placement_line(self.index.placement)}")

    async def search(self, vectors: np.ndarray, k: int, nprobe: int | None = None,
                     ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        return await asyncio.to_thread(
            self.index.search_pid_arrays, vectors, k,
            nprobe=self.defaults["nprobe"] if nprobe is None else nprobe,
            ef_search=self.defaults["ef_search"] if ef_search is None else ef_search)

    async def placement(self) -> dict[str, Any]:
        return {**self.index.placement, "shards": self.shards, "vectors": len(self.index)}


@serve.deployment(name="Retriever", max_ongoing_requests=64)
class Retriever:
    """Question encoder + sharded index + passage store: ``retrieve(question, k)`` → passages.

    Given shard-group handles, the index lives in those deployments instead: each batch of question
    vectors goes to every group and their partial top-k lists are merged exactly."""

    def __init__(self, options: dict[str, Any], shard_groups: list | None = None) -> None:
        opts = ServeAppOptions.model_validate(options)
        self.groups = list(shard_groups or [])
        self.core = RetrieverCore.load(index=opts.index, passages=opts.passages,
                                       passage_store=opts.passage_store, encoder=opts.encoder,
                                       hold_index=not self.groups, cache_buckets=opts.passage_cache_buckets,
                                       default_params=(opts.nprobe, opts.ef_search),
                                       use_gpu=opts.search_gpus > 0 and not self.groups, gpu_fp16=opts.gpu_fp16)
        if self.core.index is not None:
            print(f"Retriever: {len(self.core.index)} vectors on {placement_line(self.core.index.placement)}")

    def reconfigure(self, config: dict[str, Any]) -> None:
        _set_batching(self.search, config)

    @batched(max_batch_size=16)
    async def search(self, requests: list[tuple[str, int, str | None, int | None, int | None]]
                     ) -> list[list[dict[str, Any]]]:
        questions, ks, langs, nprobes, ef_searches = zip(*requests)
        params = list(zip(nprobes, ef_searches))
        # Each question in the encoder's query format; a plain format needs no language (the Ingress
        # asks for lang when the format writes it).
        query_langs = [lang or UNKNOWN_LANG for lang in langs] if self.core.needs_lang else None
        # In a thread, so requests keep arriving (and queue for the next batch) while this one runs.
        if not self.groups:
            return await asyncio.to_thread(self.core.retrieve, questions, ks, query_langs, params)
        vectors = await asyncio.to_thread(self.core.encode, questions, query_langs)
        found = []
        # Unset values stay None: each group applies the app's defaults (IndexShardGroup.defaults).
        for (nprobe, ef_search), positions in group_by_search_params(params).items():
            k = max(ks[i] for i in positions)
            partials = await asyncio.gather(*(g.search.remote(vectors[positions], k, nprobe, ef_search)
                                              for g in self.groups))
            found.append((positions, *merge_pid_arrays(partials, k)))
        return await asyncio.to_thread(self.core.attach, *rows_in_request_order(found, len(questions)), ks)

    async def retrieve(self, question: str, k: int, lang: str | None = None, nprobe: int | None = None,
                       ef_search: int | None = None) -> list[dict[str, Any]]:
        return await self.search((question, k, lang, nprobe, ef_search))

    async def describe(self) -> dict[str, Any]:
        """The index's default search parameters and where its shards are searched."""
        if self.core.index is not None:
            index = self.core.index
            return {"search_params": index.search_defaults, "placement": [index.placement]}
        placements = await asyncio.gather(*(g.placement.remote() for g in self.groups))
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


@serve.deployment(name="Ingress", max_ongoing_requests=256)
@serve.ingress(api)
class Ingress:
    """The HTTP front door: validates every request, then calls the model deployments."""

    def __init__(self, retriever, generator, pivot, options: dict[str, Any], api_key: str | None) -> None:
        opts = ServeAppOptions.model_validate(options)
        self.retriever, self.generator, self.pivot = retriever, generator, pivot
        self.limits = Limits(opts.max_question_chars, opts.max_k, opts.default_k, opts.max_nprobe, opts.max_ef_search)
        self.answer_passages = opts.answer_passages
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
        if self.index_info is None:  # asked once: it does not change while the replicas live
            self.index_info = await self.retriever.describe.remote()
        return {"status": "ok", "retriever": True, "generator": self.generator is not None,
                "pivot": self.pivot is not None, "index": self.index_info}

    @api.post("/v1/retrieve", response_model=RetrieveResponse, responses=_ERRORS)
    async def retrieve(self, body: RetrieveRequest) -> dict[str, Any]:
        """Top-k passages, in any language, for a question in any language."""
        question, k = self.limits.question(body.question), self.limits.k(body.k)
        lang = self.limits.lang(body.lang, required=self.needs_lang)
        nprobe = self.limits.search_param("nprobe", body.nprobe)
        ef_search = self.limits.search_param("ef_search", body.ef_search)
        passages = await self.retriever.retrieve.remote(question, k, lang, nprobe, ef_search)
        return {"question": question, "lang": lang, "k": k, "passages": passages}

    @api.post("/v1/answer", response_model=AnswerResponse, responses=_ERRORS)
    async def answer(self, body: AnswerRequest) -> dict[str, Any]:
        """An answer in ``lang`` generated by mGEN from the retrieved passages, with that evidence."""
        question, lang = self.limits.question(body.question), self.limits.lang(body.lang, required=True)
        if self.generator is None:
            raise ClientError(503, "no generator configured: start the app with generator=<mGEN "
                              "checkpoint> (ray-cora serve --generator PATH)")
        passages = await self.retriever.retrieve.remote(question, self.answer_passages, lang)
        # The retriever's input rides along: mGEN's cora preset reads it as CORA's question field.
        answer = await self.generator.generate.remote(question, lang, passages,
                                                      format_query(self.query_format, question, lang))
        return {"question": question, "lang": lang, "answer": answer, "passages": passages}

    @api.post("/v1/pivot", response_model=PivotResponse, responses=_ERRORS)
    async def pivot(self, body: PivotRequest) -> dict[str, Any]:
        """The closest English question in the pivot database, its score, and its answer translated
        into ``lang`` (null when the pipeline abstains)."""
        question, lang = self.limits.question(body.question), self.limits.lang(body.lang, required=True)
        if self.pivot is None:
            raise ClientError(503, "no pivot database configured: start the app with pivot_db=<URI> "
                              "(ray-cora pivot build --out), or pivot_db=demo")
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
                "user_config": batching, "health_check_period_s": opts.health_check_period_s}

    groups = None
    if opts.shard_groups > 1:
        # One deployment per group: Serve routes a call to any replica of a deployment, so a query
        # reaches every shard only if each group is its own deployment (replicas = copies of it).
        groups = [IndexShardGroup.options(
            name=f"{SHARD_GROUP}{g}", autoscaling_config=_autoscaling(opts.max_replicas, 4),
            ray_actor_options={"num_cpus": opts.replica_cpus, "num_gpus": opts.search_gpus}, max_ongoing_requests=16,
            health_check_period_s=opts.health_check_period_s).bind(options, g)
            for g in range(opts.shard_groups)]
    retriever_options = model_options(opts.max_batch_size)
    if groups is None and opts.search_gpus:  # the Retriever holds the index: its GPU too
        retriever_options["ray_actor_options"]["num_gpus"] = max(opts.replica_gpus, opts.search_gpus)
    retriever = Retriever.options(**retriever_options).bind(options, groups)
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
