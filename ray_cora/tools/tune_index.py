"""``ray-cora tune-index``: choose a committed index's default search-time parameter on held-out
questions (the sweep is :mod:`ray_cora.index.autotune`)."""

from __future__ import annotations

import io
import json

import numpy as np

from ray_cora import storage
from ray_cora.configs.tune_index import TuneIndexConfig
from ray_cora.data.retrieval import iter_questions
from ray_cora.encoders import check_same_encoder, format_query, load_encoder, query_format_for
from ray_cora.errors import ConfigError
from ray_cora.index.autotune import TuneTarget, record_tuning, tune
from ray_cora.index.sharded import INDEX_KIND, ShardedIndex


def held_out_queries(config: TuneIndexConfig, recorded_encoder: dict) -> np.ndarray:
    """The queries, (n, dim) float32: --query-vectors as given, or --questions encoded as
    ``retrieve`` encodes them; at most --max-queries, a seeded sample."""
    rng = np.random.default_rng(config.seed)
    if config.query_vectors:
        try:
            vectors = np.load(io.BytesIO(storage.read_bytes(config.query_vectors, decompress=False)),
                              allow_pickle=False)
        except ValueError as exc:
            raise ConfigError(f"{config.query_vectors}: not a .npy array of query vectors ({exc})") from exc
        if vectors.ndim != 2:
            raise ConfigError(f"{config.query_vectors}: query vectors must be 2-d (n, dim), got {vectors.shape}")
        if len(vectors) > config.max_queries:
            vectors = vectors[np.sort(rng.choice(len(vectors), config.max_queries, replace=False))]
        return np.ascontiguousarray(vectors, dtype=np.float32)
    questions = list(iter_questions(config.questions, dataset=config.dataset, langs=None))
    if not questions:
        raise ConfigError(f"{config.questions}: no questions")
    if len(questions) > config.max_queries:
        questions = [questions[i] for i in np.sort(rng.choice(len(questions), config.max_queries, replace=False))]
    encoder = load_encoder(config.encoder or recorded_encoder["spec"])
    if config.encoder:
        check_same_encoder(recorded_encoder, encoder, what=f"index {config.index}")
    query_format = query_format_for(config.encoder, recorded_encoder)
    texts = [format_query(query_format, q["question"], q["lang"]) for q in questions]
    return encoder.encode_queries(texts).astype(np.float32)


def tune_index(config: TuneIndexConfig) -> dict:
    import faiss

    if config.threads:
        faiss.omp_set_num_threads(config.threads)
    manifest = storage.Artifact(config.index, kind=INDEX_KIND).manifest
    queries = held_out_queries(config, manifest["encoder"])
    index = ShardedIndex.open(config.index)
    if queries.shape[1] != index.dim:
        raise ConfigError(f"the queries are {queries.shape[1]}-d but {config.index} holds {index.dim}-d vectors")
    target = TuneTarget(k=config.k, recall=config.recall, max_ms_per_query=config.max_ms_per_query,
                        batch_size=config.batch_size, repeats=config.repeats)
    tuning = tune(index, queries, target)
    tuning.extra["index_factory"] = manifest.get("index_factory")
    tuning.extra["faiss_threads"] = faiss.omp_get_max_threads()
    print(f"tune-index: {len(queries)} held-out queries, {manifest.get('index_factory')}, "
          f"{faiss.omp_get_max_threads()} FAISS threads")
    print(tuning.table())
    print(("target met: " if tuning.met else "target NOT met: ") + tuning.reason)
    summary = tuning.to_dict()
    if config.dry_run:
        print("dry run: the index is unchanged")
    elif tuning.knob is None:
        print("nothing to record: the index has no search-time parameter")
    else:
        new = record_tuning(config.index, tuning)
        summary["search_params"] = new["search_params"]
        print(f"{config.index}: search_params now {json.dumps(new['search_params'])} (tuning.json has the sweep)")
    return summary
