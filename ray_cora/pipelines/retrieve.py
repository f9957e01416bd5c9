"""Batch retrieval on Ray Data: question blocks → query-encoder actors → search/write actors → JSONL parts.

The work is cut into *blocks*: up to ``block_size`` consecutive questions of one language, named
``<lang>-<n>`` (the n-th block of that language, in input order, so the cut is the same on every
run). Ray Data sends pending blocks through an actor pool of query encoders, then through an actor
pool that searches the index — whose shards are spread over :class:`ShardSearcher` actors
(:class:`~ray_cora.pipelines.search.DistributedIndex`) — attaches passage texts and writes
``parts/<block>.jsonl`` and then the marker ``parts/<block>.json``: a block exists once its marker
does. The driver holds the questions, never questions × k passages; ``manifest.json`` (every part
with its sha256) is written last. A rerun skips every block whose marker and checksum verify, so a
killed job resumes where it stopped. Each marker records the sha256 of the block's questions as the
driver sent them (``questions_sha256``); the driver reads the whole questions file on every run, so
a block whose questions changed since it was written (an edited input) is retrieved again rather
than kept: the output always answers the questions file as it is now, each question once.

``--retriever bm25`` replaces the encoder and shard-searcher actors by BM25 searcher actors
(:class:`SearchLexicalBlocks`, each memory-mapping the lexical index of ``ray-cora index-bm25``);
``hybrid`` runs both and the writer fuses the two lists per question language
(:func:`~ray_cora.index.fusion.fuse_block`, weights from :mod:`ray_cora.index.fusion`). Their records
give each passage ``retrievers``: its rank in each list.

Passage texts: the index stores only pids. They come from a *passage store*
(:mod:`ray_cora.data.passage_store`), built once from the corpus by one streaming pass, laid out
for random access: a writer actor memory-maps the buckets a block's pids fall into and reads only
the rows it returns, so neither memory nor reads grow with the corpus.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Iterable

import numpy as np
import ray
from ray.data import ActorPoolStrategy

from ray_cora import faults, storage
from ray_cora.configs.retrieve import RetrieveConfig
from ray_cora.data.bookkeeping import (
    check_job_settings,
    error_row,
    iter_entries,
    refuse_stale_blocks,
    require_all_blocks,
)
from ray_cora.data.passage_store import PassageStore, open_or_build_store
from ray_cora.data.retrieval import (
    RETRIEVAL_KIND,
    answers_in_all_languages,
    format_block,
    iter_questions,
    part_paths,
    question_blocks,
)
from ray_cora.encoders import check_same_encoder, format_query, load_encoder, query_format_for
from ray_cora.errors import ConfigError, RayCoraError, StorageError
from ray_cora.index.fusion import FusionWeights, fallback_languages, find_weights, fuse_block, lexical_lists
from ray_cora.index.lexical import LexicalIndex, read_manifest
from ray_cora.index.plan import absolute_uri
from ray_cora.index.sharded import INDEX_KIND, iter_index_langs
from ray_cora.languages import parse_langs
from ray_cora.pipelines.search import DistributedIndex, search_on_actors
from ray_cora.progress import JobProgress
from ray_cora.runtime import check_resources_fit, ray_session, worker_runtime_env

JOB_FILE = "retrieve-job.json"


# --- questions and blocks (pure) -------------------------------------------------------------


# --- Ray Data actor bodies -------------------------------------------------------------------


class EncodeQuestionBlocks:
    """``{block, questions}`` → adds ``vectors`` (float32 bytes) and ``queries`` (what the encoder
    read); the encoder loads once per actor and must be the model that built the index.

    Questions are written in ``query_format`` when given (``--add-lang``, or what the index records
    for its encoder), else in the encoder's own (``dpr:``: CORA's ``"{question} [{lang}]"``)."""

    def __init__(self, *, encoder: str, expected_dim: int, index: str, threads: int = 1,
                 query_format: str | None = None, recorded: dict | None = None) -> None:
        self.encoder = load_encoder(encoder, threads=threads)
        self.query_format = query_format or self.encoder.query_format
        self.problem = None
        if self.encoder.dim != expected_dim:
            self.problem = ConfigError(
                f"query encoder {encoder!r} makes {self.encoder.dim}-d vectors but the index {index} holds "
                f"{expected_dim}-d vectors: pass the --encoder the index was built with (its manifest "
                "records it), or leave --encoder out to use that one")
        elif recorded is not None:
            try:
                check_same_encoder(recorded, self.encoder, what=f"index {index}")
            except ConfigError as exc:
                self.problem = exc

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        block = str(batch["block"][0])
        if self.problem is not None:
            return {**error_row("block", block, self.problem), "questions": batch["questions"],
                    "vectors": np.array([b""], dtype=object), "queries": np.array([""], dtype=object)}
        questions = json.loads(batch["questions"][0])["questions"]
        texts = [format_query(self.query_format, q["question"], q["lang"]) for q in questions]
        vectors = self.encoder.encode_queries(texts).astype(np.float32)
        return {"block": batch["block"], "questions": batch["questions"],
                "vectors": np.array([vectors.tobytes()], dtype=object),
                "queries": np.array([json.dumps({"format": self.query_format, "texts": texts}, ensure_ascii=False)],
                                    dtype=object),
                "entry": np.array([""], dtype=object), "error": np.array([b""], dtype=object)}


class SearchLexicalBlocks:
    """Adds ``lexical``: each question's BM25 top ``depth`` (its own language's parts of the lexical
    index, memory-mapped once per actor) and, with ``neutral``, the hits of its language-neutral
    terms (names, numbers) in the other languages' parts, for questions whose language has no parts.
    Every other column passes through; without a dense side it also adds the columns the writer reads."""

    def __init__(self, *, lexical_index: str, depth: int, neutral: bool = False, dense: bool = True) -> None:
        self.index = LexicalIndex.open(lexical_index)
        self.depth, self.neutral, self.dense = depth, neutral, dense

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = dict(batch)
        if not self.dense:
            out |= {"vectors": np.array([b""], dtype=object), "entry": np.array([""], dtype=object),
                    "queries": np.array([json.dumps({"format": None, "texts": None})], dtype=object),
                    "error": np.array([b""], dtype=object)}
        if out["error"][0]:
            return out | {"lexical": np.array([""], dtype=object)}
        questions = json.loads(batch["questions"][0])["questions"]
        rows = [lexical_lists(self.index, q["question"], q["lang"], self.depth, neutral=self.neutral)
                for q in questions]
        return out | {"lexical": np.array([json.dumps(rows)], dtype=object)}


def add_retrievers(data: bytes, sources: list[list[dict]]) -> bytes:
    """A part file's records with each passage's rank in each list added as ``retrievers``."""
    lines = []
    for line, row in zip(data.decode("utf-8").splitlines(), sources):
        record = json.loads(line)
        for ctx, src in zip(record["ctxs"], row):
            ctx["retrievers"] = src
        lines.append(json.dumps(record, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode("utf-8")


class SearchAndWriteBlocks:
    """Searches a block's vectors on the shard-searcher actors, attaches passage texts and writes
    the block's part file, then its marker."""

    def __init__(self, *, searchers: list, store: str, out: str, k: int, dim: int,
                 timeout_s: float, cache_buckets: int = 64, fault_plan: faults.FaultPlan = faults.EMPTY,
                 retriever: str = "dense", fusion: dict | None = None, depth: int | None = None) -> None:
        self.searchers = searchers
        self.retriever, self.depth = retriever, depth or k
        self.weights = FusionWeights.from_dict(fusion) if fusion is not None else None
        self.store = PassageStore(store, cache_buckets=cache_buckets)
        self.out, self.k, self.dim, self.timeout_s = out, k, dim, timeout_s
        # The driver's fault plan (tests only), as in FAISS's big_batch_search: die once at a given
        # block to prove recovery.
        self.faults = fault_plan

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        block = str(batch["block"][0])
        if batch["error"][0]:
            return {"block": batch["block"], "entry": batch["entry"], "error": batch["error"]}
        try:
            raw = batch["questions"][0]
            lexical = json.loads(batch["lexical"][0]) if "lexical" in batch else None
            entry = self.write_block(block, json.loads(raw), batch["vectors"][0], json.loads(batch["queries"][0]),
                                     questions_sha256=block_sha256(raw), lexical=lexical)
        except RayCoraError as exc:
            return error_row("block", block, exc)
        return {"block": batch["block"], "entry": np.array([json.dumps(entry)], dtype=object),
                "error": np.array([b""], dtype=object)}

    def write_block(self, block: str, payload: dict, vector_bytes: bytes, queries: dict, *,
                    questions_sha256: str | None = None, lexical: list[dict] | None = None) -> dict:
        questions, answers_all = payload["questions"], payload.get("answers_all")
        sources = None
        if self.retriever == "dense":
            vectors = np.frombuffer(vector_bytes, dtype=np.float32).reshape(len(questions), self.dim)
            scores, ranked = search_on_actors(self.searchers, vectors, self.k, timeout_s=self.timeout_s)
        else:
            dense = None
            if self.retriever == "hybrid":
                vectors = np.frombuffer(vector_bytes, dtype=np.float32).reshape(len(questions), self.dim)
                dense = search_on_actors(self.searchers, vectors, self.depth, timeout_s=self.timeout_s)
            ranked, scores, sources = fuse_block(questions, dense, lexical, retriever=self.retriever,
                                                 weights=self.weights, k=self.k)
        passages = self.store.lookup(pid for row in ranked for pid in row)
        source = self.store.artifact.manifest.get("passages", self.store.artifact.root.uri)
        data = format_block(questions, ranked, scores, passages, answers_all=answers_all,
                            queries=queries["texts"], source=source)
        if sources is not None:
            data = add_retrievers(data, sources)
        part, marker = part_paths(block)
        root = storage.resolve(self.out)
        storage.write_bytes(root.join(part), data)
        self.faults.die_once_here(faults.RETRIEVE_WRITER_BLOCK, block)  # part written, marker not: redo it

        entry = {"block": block, "path": part, "lang": questions[0]["lang"], "count": len(questions),
                 "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "query_format": queries["format"],
                 "questions_sha256": questions_sha256}
        storage.write_bytes(root.join(marker), json.dumps(entry).encode("utf-8"))
        return entry


# --- the job ---------------------------------------------------------------------------------


def block_sha256(questions_json: str) -> str:
    """sha256 of a block's payload JSON as the driver sends it: what a marker was written for."""
    return hashlib.sha256(questions_json.encode("utf-8")).hexdigest()


def _job_key(config: RetrieveConfig) -> dict:
    return {key: getattr(config, key) for key in
            ("index", "questions", "dataset", "lang", "langs", "k", "block_size", "add_lang")} | \
        {"encoder": config.encoder}


def finished_blocks(out: storage.Location) -> dict[str, dict]:
    """Markers of blocks already written whose part file matches its checksum."""
    done: dict[str, dict] = {}
    parts = out.join("parts")
    if not parts.exists():
        return done
    for marker in storage.list_files(parts, suffix=".json"):
        entry = json.loads(storage.read_bytes(marker))
        try:
            if storage.sha256_of(out.join(entry["path"])) == (entry["sha256"], entry["size"]):
                done[entry["block"]] = entry
        except StorageError:
            continue  # marker without its part: redo the block
    return done


def run_retrieval(config: RetrieveConfig) -> dict:
    """Run the job of a :class:`~ray_cora.configs.retrieve.RetrieveConfig`; returns a summary.

    Fault point ``retrieve.writer_block`` (:mod:`ray_cora.faults`): one writer actor dies once there.
    """

    started = time.perf_counter()
    out = storage.resolve(config.out)
    dense, lexical = config.retriever != "bm25", config.retriever != "dense"
    index_manifest = storage.Artifact(config.index, kind=INDEX_KIND).manifest if dense else {}
    lexical_manifest = read_manifest(config.lexical_index) if lexical else {}
    index_encoder = index_manifest.get("encoder") or {}
    encoder = (config.encoder or index_encoder["spec"]) if dense else None
    dim = int(index_encoder["dim"]) if dense else 0
    # The format the model needs (recorded with the index's encoder), unless --add-lang says otherwise.
    query_format = query_format_for(config.encoder, index_encoder, add_lang=config.add_lang) if dense else None
    langs = parse_langs(config.langs) if config.langs else (parse_langs(config.lang) if config.lang else None)
    key = _job_key(config) | {"encoder": encoder}
    # Search settings join the key only when set, so runs from before they existed still resume.
    key |= {name: value for name, value in config.search_kwargs().items() if value is not None}
    if lexical:
        key |= {"retriever": config.retriever, "lexical_index": config.lexical_index, "fusion": config.fusion}
    check_job_settings(out, JOB_FILE, key, "retrieval run")
    # The hybrid's fusion weights: --fusion, else the fusion.json beside the lexical index, else beside
    # the dense index, else the untuned default (equal-weight RRF; dense alone without lexical parts).
    weights, fusion_source = (find_weights(config.fusion, config.lexical_index, config.index)
                              if config.retriever == "hybrid" else (None, None))
    depth = max([config.k] + ([s.depth for s in (*weights.languages.values(), weights.fallback, weights.no_lexical)
                               if s is not None] if weights else []))

    passages = config.passages or index_manifest.get("passages") or lexical_manifest.get("passages")
    store_uri = config.passage_store or out.join("passage-store").uri
    langs_from = config.passage_langs or config.index
    # Passages the corpus gives no language (CORA's all_w100.tsv) take the one the index recorded.
    store = open_or_build_store(passages, store_uri, num_buckets=config.store_buckets, format=config.passage_format,
                                known_langs=lambda: iter_index_langs(langs_from) if langs_from else iter(()))

    answers_all = (answers_in_all_languages(config.questions, dataset=config.dataset)
                   if config.answers_all else None)
    done = finished_blocks(out)
    items, counts, changed, question_langs = [], {}, 0, set()
    for block, questions in question_blocks(
            iter_questions(config.questions, dataset=config.dataset, langs=langs), config.block_size):
        counts[block] = len(questions)
        question_langs.update(q["lang"] for q in questions)
        payload = {"questions": questions}
        if answers_all is not None:
            payload["answers_all"] = [answers_all.get(q["qid"], q["answers"]) for q in questions]
        text = json.dumps(payload, ensure_ascii=False)
        if block in done:
            if done[block].get("questions_sha256") == block_sha256(text):
                continue
            del done[block]  # written for other questions (the input was edited): retrieve it again
            changed += 1
        items.append({"block": block, "questions": text})
    if not counts:
        raise ConfigError(f"{config.questions}: no questions"
                          + (f" in {', '.join(langs)}" if langs else "") + " to retrieve for")
    refuse_stale_blocks(out, done, counts)
    print(f"retrieve: {sum(counts.values())} questions in {len(counts)} blocks; {len(done)} already "
          f"written, {len(items)} to retrieve"
          + (f" ({changed} of them written before for questions that have changed since)" if changed else ""))
    if weights is not None:
        warning = fusion_fallback_line(weights, question_langs, lexical_langs=lexical_manifest.get("languages"),
                                       source=fusion_source)
        if warning:
            print(warning, flush=True)
    progress = JobProgress("retrieve", unit="block", total=len(counts), items="questions", already_done=len(done),
                           already_items=sum(counts[block] for block in done),
                           todo_items=sum(counts[item["block"]] for item in items))
    progress.start()
    if items:
        with ray_session(address=config.ray_address, num_cpus=config.num_cpus):
            check_resources_fit({"--actor-cpus/--actor-gpus": (config.actor_cpus, config.actor_gpus),
                                 "--search-actor-cpus/--search-gpus": (config.search_actor_cpus, config.search_gpus)})
            index = DistributedIndex(config.index, num_actors=config.search_actors,
                                     actor_cpus=config.search_actor_cpus, actor_gpus=config.search_gpus,
                                     gpu_fp16=config.gpu_fp16, timeout_s=config.timeout_s,
                                     **config.search_kwargs()) if dense else None
            try:
                if dense and config.search_gpus:
                    for number, where in enumerate(index.placements()):
                        print(f"retrieve: searcher {number}: {where['vectors']} vectors in {where['shards']} "
                              f"shards on {where['device']} as {where.get('form', 'FAISS CPU')} "
                              f"({where.get('storage', 'as built')})")
                results = ray.data.from_items(items, override_num_blocks=len(items))
                if dense:
                    results = results.map_batches(
                        EncodeQuestionBlocks, batch_size=1, batch_format="numpy",
                        compute=ActorPoolStrategy(size=config.encoder_actors), num_cpus=config.actor_cpus,
                        num_gpus=config.actor_gpus, runtime_env=worker_runtime_env(),
                        fn_constructor_kwargs={"encoder": encoder, "expected_dim": dim, "index": config.index,
                                               "threads": config.threads, "query_format": query_format,
                                               "recorded": index_encoder if config.check_encoder else None})
                if lexical:
                    results = results.map_batches(
                        SearchLexicalBlocks, batch_size=1, batch_format="numpy",
                        compute=ActorPoolStrategy(size=config.lexical_actors), num_cpus=config.search_actor_cpus,
                        runtime_env=worker_runtime_env(),
                        fn_constructor_kwargs={"lexical_index": absolute_uri(storage.resolve(config.lexical_index)),
                                               "depth": depth, "dense": dense,
                                               "neutral": bool(weights and weights.no_lexical)})
                results = results.map_batches(
                    SearchAndWriteBlocks, batch_size=1, batch_format="numpy",
                    compute=ActorPoolStrategy(size=config.writer_actors), num_cpus=config.actor_cpus,
                    runtime_env=worker_runtime_env(),
                    fn_constructor_kwargs={"searchers": index.actors if dense else [], "store": store_uri,
                                           "out": config.out, "k": config.k, "dim": dim,
                                           "timeout_s": config.timeout_s, "fault_plan": faults.current(),
                                           "retriever": config.retriever, "depth": depth,
                                           "fusion": weights.to_dict() if weights else None})
                for entry in iter_entries(results.iter_rows()):
                    done[entry["block"]] = entry
                    progress.add(items=entry["count"], bytes=entry["size"])
            finally:
                if index is not None:
                    index.shutdown()
    require_all_blocks(out, done, counts)
    summary = commit_retrieval(out, done, counts, config=config, encoder=encoder, started=started,
                               search_params=effective_search_params(config, index_manifest) if dense else None,
                               passage_languages=store.get("languages"))
    progress.finish()
    return summary


def fusion_fallback_line(weights: FusionWeights, langs: Iterable[str], *, lexical_langs: Iterable[str] | None,
                         source: str | None) -> str | None:
    """The one warning line of a hybrid run whose question languages include some without a fusion
    setting of their own (:func:`~ray_cora.index.fusion.fallback_languages`), or None: which
    languages, the fallback rule they get, and how to calibrate them. Untuned, that rule is
    equal-weight RRF, which loses to BM25 alone at rank 1 on XQuAD (docs/retrieval_and_evaluation.md).

    >>> print(fusion_fallback_line(FusionWeights(), ["sw", "en"], lexical_langs=None, source=None))
    retrieve: warning: hybrid fusion has no setting for en, sw (no --fusion, and no fusion.json beside the lexical \
or dense index): they use the fallback, equal-rrf (rrf k=60 w=0.50), untuned equal-weight RRF, worse than BM25 \
alone at @1 on XQuAD; run `ray-cora tune fusion` on labelled dev questions and retrieve with its fusion.json
    """
    fallback = fallback_languages(weights, langs, lexical_langs=lexical_langs)
    if not fallback:
        return None
    where = (f"{source} has none for them" if source
             else "no --fusion, and no fusion.json beside the lexical or dense index")
    setting = weights.fallback
    cost = (", untuned equal-weight RRF, worse than BM25 alone at @1 on XQuAD" if setting.rule == "equal-rrf"
            else "")
    return (f"retrieve: warning: hybrid fusion has no setting for {', '.join(fallback)} ({where}): they use the "
            f"fallback, {setting.rule} ({setting.describe()}){cost}; run `ray-cora tune fusion` on labelled dev "
            "questions and retrieve with its fusion.json")


def effective_search_params(config: RetrieveConfig, index_manifest: dict) -> dict:
    """The nprobe/efSearch the searches ran with: the job's, else the index's ``search_params``."""
    recorded = index_manifest.get("search_params") or {}
    return {"nprobe": config.nprobe or recorded.get("nprobe"), "efSearch": config.ef_search or recorded.get("efSearch")}


def commit_retrieval(out: storage.Location, done: dict[str, dict], counts: dict[str, int], *, config: RetrieveConfig,
                     encoder: str, started: float, search_params: dict | None = None,
                     passage_languages: dict | None = None) -> dict:
    writer = storage.ArtifactWriter(out, kind=RETRIEVAL_KIND, config=config.to_dict())
    per_language: dict[str, int] = {}
    for block in sorted(counts):
        entry = done[block]
        writer.add_existing(entry["path"], size=entry["size"], sha256=entry["sha256"])
        per_language[entry["lang"]] = per_language.get(entry["lang"], 0) + entry["count"]
    query_formats = sorted({done[b].get("query_format") for b in counts} - {None})
    writer.commit({"k": config.k, "encoder": encoder, "index": config.index, "dataset": config.dataset,
                   **({"retriever": config.retriever, "lexical_index": config.lexical_index}
                      if config.retriever != "dense" else {}),
                   **({"search_params": search_params} if search_params else {}),
                   **({"query_format": query_formats[0] if len(query_formats) == 1 else query_formats}
                      if query_formats else {}),
                   "questions": config.questions, "num_questions": sum(counts.values()),
                   "per_language": dict(sorted(per_language.items())),
                   # Where the passages' languages came from (corpus column, --lang, the index, unknown).
                   **({"passage_languages": passage_languages} if passage_languages else {}),
                   "parts": [done[b]["path"] for b in sorted(counts)]})
    summary = {"questions": sum(counts.values()), "blocks": len(counts), "languages": len(per_language),
               "seconds": round(time.perf_counter() - started, 1), "manifest": out.join("manifest.json").uri}
    print(f"retrieval: {summary['questions']} questions in {summary['languages']} languages, top-{config.k} "
          f"→ {out.uri}/parts/*.jsonl ({summary['seconds']} s); manifest: {summary['manifest']}")
    return summary


# --- reading retrieval output (pure) ---------------------------------------------------------


