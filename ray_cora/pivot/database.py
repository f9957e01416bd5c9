"""The English question→answer database: a sharded index of question embeddings plus an answer table.

Layout under the database URI::

    manifest.json        kind "pivot-database", written last: the commit point
    answers.parquet      qid, question, answer, answers, answer_qid, source_qid
    index/               a sharded index (ray_cora.index.sharded) whose pids are the qids

Records come from NQ-open, SQuAD/XQuAD (English file) or JSONL lines
``{"qid", "question", "answer" | "answers", "answer_qid"?, "source_qid"?}`` (the demo's
``pivot_db.jsonl`` and ray_cora's QA JSONL both read).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ray_cora import storage
from ray_cora.data.records import BadRecords
from ray_cora.errors import ConfigError, StorageError
from ray_cora.index.sharded import IndexSpec, ShardedIndex, commit_index, plan_shards, write_shard

KIND = "pivot-database"
DB_DATASETS = ("jsonl", "nq", "squad", "xquad")
ANSWERS_FILE = "answers.parquet"
INDEX_DIR = "index"
ANSWER_SCHEMA = pa.schema([("qid", pa.string()), ("question", pa.string()), ("answer", pa.string()),
                           ("answers", pa.list_(pa.string())), ("answer_qid", pa.string()),
                           ("source_qid", pa.string())])


def iter_db_records(uri: str, *, dataset: str, bad_records: BadRecords | None = None) -> Iterator[dict[str, Any]]:
    """English QA records ``{qid, question, answer, answers, answer_qid, source_qid}``."""
    if dataset not in DB_DATASETS:
        raise ConfigError(f"unknown pivot database dataset {dataset!r}; accepted: {', '.join(DB_DATASETS)}")
    bad = bad_records if bad_records is not None else BadRecords("error")
    if dataset != "jsonl":
        from ray_cora.data.qa import iter_qa

        lang = "en" if dataset in ("xquad", "squad") else None
        for rec in iter_qa(uri, dataset=dataset, lang=lang, bad_records=bad):
            yield {"qid": rec["qid"], "question": rec["question"], "answer": rec["answers"][0],
                   "answers": rec["answers"], "answer_qid": None, "source_qid": None}
        return
    with storage.open_input(uri) as stream:
        for number, raw in enumerate(storage.iter_lines(stream), start=1):
            if not raw.strip():
                continue
            try:
                yield _jsonl_record(json.loads(raw.decode("utf-8")))
            except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
                bad.report(uri, number, f"{exc}", raw=raw)


def _jsonl_record(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    for key in ("qid", "question"):
        if not isinstance(obj.get(key), (str, int)) or not str(obj[key]).strip():
            raise ValueError(f"missing or empty field '{key}'")
    answers = obj.get("answers")
    if answers is None and obj.get("answer") is not None:
        answers = [obj["answer"]]
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        raise ValueError("field 'answer' (a string) or 'answers' (a non-empty list of strings) is required")
    for key in ("answer_qid", "source_qid"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise ValueError(f"field '{key}' must be a string or null")
    answers = [a.strip() for a in answers]
    return {"qid": str(obj["qid"]).strip(), "question": str(obj["question"]).strip(), "answer": answers[0],
            "answers": answers, "answer_qid": obj.get("answer_qid") or None,
            "source_qid": obj.get("source_qid") or None}


def answer_table_bytes(records: Sequence[dict[str, Any]]) -> bytes:
    table = pa.table({name: [r[name] for r in records] for name in ANSWER_SCHEMA.names}, schema=ANSWER_SCHEMA)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def check_unique_qids(records: Sequence[dict[str, Any]], source: str) -> None:
    seen: set[str] = set()
    for rec in records:
        if rec["qid"] in seen:
            raise ConfigError(f"{source}: question id {rec['qid']!r} appears twice; database ids must be "
                              "unique (they are the index pids)")
        seen.add(rec["qid"])


def write_database(out: str, records: Sequence[dict[str, Any]], batches: Iterator[tuple[list[str], np.ndarray]],
                   *, encoder: dict[str, Any], spec: IndexSpec = IndexSpec(), config: dict | None = None) -> dict:
    """Write index shards from ``batches`` of ``(qids, vectors)`` (one shard each), the answer
    table, then the two manifests; returns the database manifest."""
    root = storage.resolve(out)
    index_root = root.join(INDEX_DIR)
    shards = []
    for number, (qids, vectors) in enumerate(batches):
        shards.append(write_shard(index_root, number, qids, vectors, spec, langs=["en"] * len(qids)))
    if not shards:
        raise ConfigError("the pivot database has no questions: check --questions and --dataset")
    index_manifest = commit_index(index_root, shards, encoder=encoder, spec=spec, config=config)
    writer = storage.ArtifactWriter(root, kind=KIND, config=config)
    writer.write_bytes(ANSWERS_FILE, answer_table_bytes(records))
    return writer.commit({"encoder": encoder, "index": INDEX_DIR, "num_questions": len(records),
                          "num_vectors": index_manifest["num_vectors"],
                          "with_answer_qid": sum(1 for r in records if r["answer_qid"])})


def build_database(records: Sequence[dict[str, Any]], encoder, out: str, *, shard_size: int = 100_000,
                   batch_size: int = 256, spec: IndexSpec = IndexSpec(), config: dict | None = None) -> dict:
    """Single-process build (tests, small databases); ``ray-cora pivot build`` encodes on Ray Data."""
    check_unique_qids(records, "pivot database")

    def batches():
        for _, start, end in plan_shards(len(records), shard_size):
            chunk = records[start:end]
            vectors = np.concatenate([encoder.encode_queries([r["question"] for r in chunk[i:i + batch_size]])
                                      for i in range(0, len(chunk), batch_size)])
            yield [r["qid"] for r in chunk], vectors

    return write_database(out, records, batches(), spec=spec, config=config,
                          encoder={"spec": encoder.spec, "dim": encoder.dim, "normalized": encoder.normalized})


@dataclass
class PivotDatabase:
    """An opened database: the index and the answer rows by qid.

    >>> db = PivotDatabase.open("pivot-db/")  # doctest: +SKIP
    >>> db.index.search(vectors, k=10)  # doctest: +SKIP
    """

    manifest: dict[str, Any]
    index: ShardedIndex
    rows: dict[str, dict[str, Any]] = field(repr=False)

    @classmethod
    def open(cls, uri: str, *, mmap: bool = False, verify: bool = True) -> "PivotDatabase":
        artifact = storage.Artifact(uri, kind=KIND)
        index = ShardedIndex.open(artifact.root.join(artifact.manifest["index"]).uri, mmap=mmap, verify=verify)
        table = pq.read_table(io.BytesIO(artifact.read_bytes(ANSWERS_FILE, verify=verify)))
        rows = {row["qid"]: row for row in table.to_pylist()}
        if len(rows) != len(index):
            raise StorageError(f"{artifact.root.uri}: the answer table has {len(rows)} questions, the "
                               f"index {len(index)}: rebuild the database")
        return cls(artifact.manifest, index, rows)

    @property
    def encoder_spec(self) -> str:
        return self.manifest["encoder"]["spec"]

    def __len__(self) -> int:
        return len(self.rows)
