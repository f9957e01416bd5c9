"""The demo job: Ray Data reads and embeds the demo corpus on an actor pool, FAISS indexes it,
every demo question is retrieved for, and a per-language recall table is written and printed."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.data import ActorPoolStrategy

from ray_cora import storage
from ray_cora.configs.demo import DemoConfig
from ray_cora.data.qa import iter_qa
from ray_cora.index.flat import FlatIndex
from ray_cora.metrics.retrieval import first_answer_rank, first_gold_rank, recall_by_language
from ray_cora.pipelines.encode import EncodePassages, EncodeQueries
from ray_cora.pipelines.passage_source import PassageDatasource
from ray_cora.reports.tables import retrieval_markdown
from ray_cora.runtime import check_resources_fit, ray_session, worker_runtime_env

KS = (1, 5, 10)


def _embed(dataset, udf, *, config: DemoConfig, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    embedded = dataset.map_batches(
        udf, fn_constructor_kwargs={"spec": config.encoder}, batch_size=config.batch_size,
        batch_format="numpy", compute=ActorPoolStrategy(size=config.actors),
        num_cpus=config.actor_cpus, num_gpus=config.actor_gpus or None, runtime_env=worker_runtime_env())
    parts: dict[str, list] = {c: [] for c in columns + ("embedding",)}
    for batch in embedded.iter_batches(batch_size=1024, batch_format="numpy"):
        for column in parts:
            parts[column].append(batch[column])
    return {c: np.concatenate(v) if v else np.zeros((0,)) for c, v in parts.items()}


def run_demo(config: DemoConfig) -> dict:
    """Run the demo end to end; returns the metrics written to ``metrics.json``."""

    started = time.perf_counter()
    out = storage.resolve(config.out)
    questions = list(iter_qa(config.questions, dataset="jsonl"))
    with ray_session(address=config.ray_address, num_cpus=config.num_cpus):
        check_resources_fit({"--actor-cpus/--actor-gpus": (config.actor_cpus, config.actor_gpus)})
        passages = ray.data.read_datasource(PassageDatasource(config.passages),
                                            runtime_env=worker_runtime_env())
        corpus = _embed(passages, EncodePassages, config=config, columns=("pid", "lang"))
        text_by_pid = {row["pid"]: row for row in passages.iter_rows()}
        queries = ray.data.from_items([{k: q[k] for k in ("qid", "lang", "question")} for q in questions])
        encoded = _embed(queries, EncodeQueries, config=config, columns=("qid", "lang"))
    embed_seconds = time.perf_counter() - started

    pids = [str(p) for p in corpus["pid"]]
    index = FlatIndex(corpus["embedding"], pids)
    _write_index(out.join("index"), index, corpus, config)

    by_key = {(str(qid), str(lang)): vec for qid, lang, vec in
              zip(encoded["qid"], encoded["lang"], encoded["embedding"])}
    query_vectors = np.stack([by_key[(q["qid"], q["lang"])] for q in questions])
    scores, ranked = index.search(query_vectors, config.k)

    rows, lines = [], []
    for question, score_row, pid_row in zip(questions, scores, ranked):
        ctxs = [{"pid": pid, "lang": text_by_pid[pid]["lang"], "title": text_by_pid[pid]["title"],
                 "score": float(s)} for pid, s in zip(pid_row, score_row)]
        texts = [text_by_pid[pid]["text"] for pid in pid_row]
        gold_langs = {text_by_pid[p]["lang"] for p in question["gold_pids"] if p in text_by_pid}
        rows.append({"lang": question["lang"],
                     "gold_rank": first_gold_rank(pid_row, question["gold_pids"]),
                     "answer_rank": first_answer_rank(texts, question["answers"]),
                     "cross_lingual": bool(gold_langs) and question["lang"] not in gold_langs})
        lines.append(json.dumps({**{k: question[k] for k in ("qid", "lang", "question", "answers",
                                                              "gold_pids")}, "ctxs": ctxs},
                                ensure_ascii=False))
    table = recall_by_language(rows, KS)
    markdown = _report(config, table, len(pids), len(questions), embed_seconds)
    metrics = {"encoder": config.encoder, "num_passages": len(pids), "num_questions": len(questions),
               "ks": list(KS), "per_language": table, "seconds": round(time.perf_counter() - started, 1)}
    storage.write_bytes(out.join("retrieval.jsonl"), ("\n".join(lines) + "\n").encode("utf-8"))
    storage.write_bytes(out.join("metrics.json"), json.dumps(metrics, indent=2).encode("utf-8"))
    storage.write_bytes(out.join("report.md"), markdown.encode("utf-8"))
    print(markdown)
    print(f"wrote {out.uri}/report.md, metrics.json, retrieval.jsonl and index/ "
          f"in {metrics['seconds']} s")
    return metrics


def _write_index(root: storage.Location, index: FlatIndex, corpus: dict, config: DemoConfig) -> None:
    writer = storage.ArtifactWriter(root, kind="flat-index", config=config.to_dict())
    writer.write_bytes("index.faiss", index.to_bytes())
    ids = io.BytesIO()
    pq.write_table(pa.table({"pid": index.pids, "lang": [str(l) for l in corpus["lang"]]}), ids)
    writer.write_bytes("ids.parquet", ids.getvalue())
    writer.commit({"encoder": {"spec": config.encoder, "dim": index.dim, "normalized": True},
                   "metric": "inner_product", "num_vectors": len(index)})


def _report(config: DemoConfig, table: dict, num_passages: int, num_questions: int,
            embed_seconds: float) -> str:
    return (
        "# ray_cora demo: cross-lingual retrieval\n\n"
        f"{num_passages} passages and {num_questions} questions from `{config.passages}`, encoder "
        f"`{config.encoder}`, exact inner-product search (FAISS flat), top-{config.k}. "
        f"Reading and embedding on Ray Data took {embed_seconds:.1f} s.\n\n"
        "R@k: a gold passage (any language) is among the top k. A@k: an answer string in the "
        "question's language occurs in a top-k passage (cross-lingual questions cannot score here: "
        "their evidence is in another language). Percentages.\n\n"
        + retrieval_markdown(table, KS)
    )
