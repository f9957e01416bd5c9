"""The English question→answer database: a sharded index of question embeddings plus an answer table.

Layout under the database URI::

    manifest.json                   kind "pivot-database", written last: the commit point
    answers/part-00000.parquet      shard 0's rows: qid, question, answer, answers, answer_qid, source_qid
    index/                          a sharded index (ray_cora.index.sharded) whose pids are the qids
    index/shards/shard-00000.faiss  shard 0's questions, in the order of its answer part
    index/shards/shard-00000.json   shard 0's marker, written after its files: the shard is done

A build streams: the records are cut into shards of ``shard_size`` as they are read (one shard
in memory), each shard's answer part is written, its questions are embedded and indexed, its
marker written; the manifests are written last. A rerun skips every shard whose marker and
files verify, so an interrupted build resumes and ends with the same files as an uninterrupted one.

Records come from NQ-open, SQuAD/XQuAD (English file) or JSONL lines
``{"qid", "question", "answer" | "answers", "answer_qid"?, "source_qid"?}`` (the demo's
``pivot_db.jsonl`` and ray_cora's QA JSONL both read).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ray_cora import faults, storage
from ray_cora.data.qa import iter_qa, lone_surrogate, numbered_lines
from ray_cora.data.records import BadRecords
from ray_cora.errors import ConfigError, StorageError
from ray_cora.index.sharded import IndexSpec, ShardedIndex, commit_index, write_shard

KIND = "pivot-database"
DB_DATASETS = ("jsonl", "nq", "squad", "xquad")
ANSWERS_FILE = "answers.parquet"  # the single answer table of databases built before it was sharded
ANSWERS_DIR = "answers"
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
        lang = "en" if dataset in ("xquad", "squad") else None
        for rec in iter_qa(uri, dataset=dataset, lang=lang, bad_records=bad):
            yield {"qid": rec["qid"], "question": rec["question"], "answer": rec["answers"][0],
                   "answers": rec["answers"], "answer_qid": None, "source_qid": None}
        return
    for number, raw in numbered_lines(uri):
        if not raw.strip():
            continue
        try:
            yield _jsonl_record(json.loads(raw.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
            bad.report(uri, number, f"{exc}", raw=raw)
        except RecursionError:
            bad.report(uri, number, "JSON nested too deeply to read", raw=raw)


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
    for name, values in (("qid", [str(obj["qid"])]), ("question", [str(obj["question"])]), ("answers", answers),
                         ("answer_qid", [obj.get("answer_qid") or ""]), ("source_qid", [obj.get("source_qid") or ""])):
        for value in values:
            problem = lone_surrogate(value, name)
            if problem:
                raise ValueError(problem)
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
            raise ConfigError(_duplicate_message(source, rec["qid"]))
        seen.add(rec["qid"])


def _duplicate_message(source: str, qid: str) -> str:
    return (f"{source}: question id {qid!r} appears twice; database ids must be unique (they are the "
            "index pids): fix the input, or give each record its own qid")


def qid_hash(qid: str) -> int:
    """A stable 63-bit hash of a question id (blake2b; Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(qid.encode("utf-8"), digest_size=8).digest(), "little") >> 1


class QidChecker:
    """Duplicate question ids over millions of records in 8 bytes per id: hashes are collected as
    the records stream past, sorted once at the end; only on a repeated hash is the input read
    again to name the id (and to rule out a hash collision).

    >>> c = QidChecker(); c.add_many(["a", "b"]); c.repeated_hashes().size
    0
    """

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []

    def add_many(self, qids: Sequence[str]) -> None:
        self._chunks.append(np.fromiter((qid_hash(q) for q in qids), dtype=np.int64, count=len(qids)))

    def repeated_hashes(self) -> np.ndarray:
        if not self._chunks:
            return np.zeros(0, np.int64)
        hashes = np.sort(np.concatenate(self._chunks))
        return np.unique(hashes[1:][hashes[1:] == hashes[:-1]])

    def check(self, source: str, records: Callable[[], Iterable[dict[str, Any]]]) -> None:
        """Raise :class:`ConfigError` naming a repeated id; ``records`` re-reads the input."""
        repeated = set(self.repeated_hashes().tolist())
        if not repeated:
            return
        seen: set[str] = set()
        for rec in records():
            if qid_hash(rec["qid"]) in repeated:
                if rec["qid"] in seen:
                    raise ConfigError(_duplicate_message(source, rec["qid"]))
                seen.add(rec["qid"])


# --- shards: answer part + index shard + marker (pure, no Ray) ------------------------------------


def answers_path(number: int) -> str:
    return f"{ANSWERS_DIR}/part-{number:05d}.parquet"


def marker_path(number: int) -> str:
    """The shard's marker, beside its FAISS files (named as ``ray-cora embed`` names its markers;
    not imported from there, which would bring Ray into this pure module)."""
    return f"{INDEX_DIR}/shards/shard-{number:05d}.json"


def split_records(records: Iterable[dict[str, Any]], shard_size: int) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """``(shard number, records)`` in input order, ``shard_size`` per shard, the last one shorter.

    >>> [(n, len(c)) for n, c in split_records(({"qid": str(i)} for i in range(5)), 2)]
    [(0, 2), (1, 2), (2, 1)]
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    chunk: list[dict[str, Any]] = []
    number = 0
    for record in records:
        chunk.append(record)
        if len(chunk) == shard_size:
            yield number, chunk
            number, chunk = number + 1, []
    if chunk:
        yield number, chunk


def finished_shard(root: storage.Location, number: int, answers_sha256: str | None = None) -> dict | None:
    """The marker of a shard whose three files verify (and whose answer part has
    ``answers_sha256`` when given), else None: a missing or damaged shard is redone."""
    marker = root.join(marker_path(number))
    if not marker.is_file():
        return None
    try:
        entry = json.loads(storage.read_bytes(marker))
        if answers_sha256 is not None and entry["answers"]["sha256"] != answers_sha256:
            return None  # the input changed under this shard
        checks = [(entry["answers"]["path"], entry["answers"]["sha256"], entry["answers"]["size"])]
        checks += [(f"{INDEX_DIR}/{entry[role]}", entry["sha256"][role], entry["size"][role])
                   for role in ("index", "ids")]
        for relpath, sha, size in checks:
            if storage.sha256_of(root.join(relpath)) != (sha, size):
                return None
    except (StorageError, ValueError, KeyError, TypeError):
        return None
    return entry


def prepare_parts(records: Iterable[dict[str, Any]], root: storage.Location, *, shard_size: int,
                  source: str, reread: Callable[[], Iterable[dict[str, Any]]] | None = None
                  ) -> tuple[list[dict], dict[int, dict]]:
    """The driver's one streaming pass: cut the records into shards and write each shard's answer
    part (skipped when an identical one is there). Holds one shard of records at a time.

    Returns ``(parts, done)``: every part ``{number, count, answers: {path, sha256, size}}`` and
    the markers of shards already finished with this very input. Fault point ``pivot.answer_parts``
    (:mod:`ray_cora.faults`): stop (as a crash would) after writing that many parts.
    """
    plan = faults.current()
    checker = QidChecker()
    parts: list[dict] = []
    done: dict[int, dict] = {}
    written = 0
    for number, chunk in split_records(records, shard_size):
        checker.add_many([r["qid"] for r in chunk])
        data = answer_table_bytes(chunk)
        sha = hashlib.sha256(data).hexdigest()
        part = {"number": number, "count": len(chunk),
                "answers": {"path": answers_path(number), "sha256": sha, "size": len(data)}}
        parts.append(part)
        entry = finished_shard(root, number, sha)
        if entry is not None:
            done[number] = entry
            continue
        loc = root.join(answers_path(number))
        try:
            same = storage.sha256_of(loc) == (sha, len(data))
        except StorageError:
            same = False
        if not same:
            storage.write_bytes(loc, data)
            written += 1
            plan.raise_after(faults.PIVOT_ANSWER_PARTS, written, f"stopped after writing {written} answer part(s)")
    if reread is not None:
        checker.check(source, reread)
    elif checker.repeated_hashes().size:
        raise ConfigError(f"{source}: a question id appears twice; database ids must be unique")
    if not parts:
        raise ConfigError(f"{source}: the pivot database has no questions: check --questions and --dataset")
    return parts, done


def embed_shard(root: storage.Location, part: dict, encoder, *, batch_size: int,
                spec: IndexSpec = IndexSpec()) -> dict:
    """Read one answer part, embed its questions, write the index shard, then the marker (the
    shard exists once its marker does); returns the marker entry."""
    data = storage.read_bytes(root.join(part["answers"]["path"]), decompress=False)
    if hashlib.sha256(data).hexdigest() != part["answers"]["sha256"]:
        raise StorageError(f"{root.join(part['answers']['path']).uri}: changed since this build planned it; "
                           "rerun the build")
    table = pq.read_table(io.BytesIO(data), columns=["qid", "question"])
    qids = table.column("qid").to_pylist()
    questions = table.column("question").to_pylist()
    vectors = [encoder.encode_queries(questions[i:i + batch_size]) for i in range(0, len(questions), batch_size)]
    matrix = np.concatenate(vectors).astype(np.float32) if vectors else np.zeros((0, encoder.dim), np.float32)
    return write_shard_entry(root, part, qids, matrix, spec=spec,
                             encoder={"dim": int(encoder.dim), "normalized": bool(encoder.normalized)})


def write_shard_entry(root: storage.Location, part: dict, qids: Sequence[str], vectors: np.ndarray, *,
                      spec: IndexSpec, encoder: dict[str, Any]) -> dict:
    entry = write_shard(root.join(INDEX_DIR), part["number"], qids, vectors, spec, langs=["en"] * len(qids))
    entry = {**entry, "number": part["number"], "answers": part["answers"], "encoder": encoder}
    storage.write_bytes(root.join(marker_path(part["number"])), json.dumps(entry).encode("utf-8"))
    return entry


def commit_database(root: storage.Location, parts: Sequence[dict], done: dict[int, dict], *,
                    encoder_spec: str, spec: IndexSpec = IndexSpec(), config: dict | None = None,
                    with_answer_qid: int | None = None) -> dict:
    """Check every part has its finished shard, then write the index manifest and the database
    manifest, last: the commit."""
    missing = [p["number"] for p in parts if p["number"] not in done]
    if missing:
        raise StorageError(f"{root.uri}: shards {missing[:10]} were not written; rerun the build to resume")
    entries = [done[p["number"]] for p in parts]
    encoder = {"spec": encoder_spec, **entries[0]["encoder"]}
    index_manifest = commit_index(root.join(INDEX_DIR), entries, encoder=encoder, spec=spec, config=config)
    if with_answer_qid is None:
        with_answer_qid = 0
        for p in parts:
            table = pq.read_table(io.BytesIO(storage.read_bytes(root.join(p["answers"]["path"]), decompress=False)),
                                  columns=["answer_qid"])
            with_answer_qid += table.num_rows - table.column("answer_qid").null_count
    writer = storage.ArtifactWriter(root, kind=KIND, config=config)
    for p in parts:
        writer.add_existing(p["answers"]["path"], size=p["answers"]["size"], sha256=p["answers"]["sha256"])
    return writer.commit({"encoder": encoder, "index": INDEX_DIR, "answers": [p["answers"]["path"] for p in parts],
                          "num_questions": sum(p["count"] for p in parts),
                          "num_vectors": index_manifest["num_vectors"], "num_shards": len(parts),
                          "with_answer_qid": with_answer_qid})


def write_database(out: str, records: Sequence[dict[str, Any]], batches: Iterator[tuple[list[str], np.ndarray]],
                   *, encoder: dict[str, Any], spec: IndexSpec = IndexSpec(), config: dict | None = None) -> dict:
    """Write a database from vectors computed elsewhere: ``batches`` of ``(qids, vectors)`` (one
    shard each, in the order of ``records``); returns the database manifest."""
    check_unique_qids(records, "pivot database")
    root = storage.resolve(out)
    by_qid = {r["qid"]: r for r in records}
    parts, done = [], {}
    for number, (qids, vectors) in enumerate(batches):
        data = answer_table_bytes([by_qid[q] for q in qids])
        part = {"number": number, "count": len(qids), "answers": {
            "path": answers_path(number), "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}}
        storage.write_bytes(root.join(answers_path(number)), data)
        shape = {"dim": int(encoder["dim"]), "normalized": bool(encoder["normalized"])}
        done[number] = write_shard_entry(root, part, qids, np.asarray(vectors, dtype=np.float32), spec=spec,
                                         encoder=shape)
        parts.append(part)
    if not parts:
        raise ConfigError("the pivot database has no questions: check --questions and --dataset")
    if sum(p["count"] for p in parts) != len(records):
        raise ValueError(f"the batches hold {sum(p['count'] for p in parts)} questions, the records {len(records)}")
    return commit_database(root, parts, done, encoder_spec=encoder["spec"], spec=spec, config=config,
                           with_answer_qid=sum(1 for r in records if r["answer_qid"]))


def build_database(records: Iterable[dict[str, Any]], encoder, out: str, *, shard_size: int = 100_000,
                   batch_size: int = 256, spec: IndexSpec = IndexSpec(), config: dict | None = None) -> dict:
    """Single-process build (tests, small databases, the demo); same layout and resume rules as
    ``ray-cora pivot build``, which embeds the shards on Ray Data actors.

    >>> records = iter_db_records("pivot_db.jsonl", dataset="jsonl")  # doctest: +SKIP
    >>> build_database(records, load_encoder("muse"), "db/", shard_size=40)["num_shards"]  # doctest: +SKIP
    3
    """
    records = list(records)
    check_unique_qids(records, "pivot database")
    root = storage.resolve(out)
    parts, done = prepare_parts(records, root, shard_size=shard_size, source="pivot database")
    for part in parts:
        if part["number"] not in done:
            done[part["number"]] = embed_shard(root, part, encoder, batch_size=batch_size, spec=spec)
    return commit_database(root, parts, done, encoder_spec=encoder.spec, spec=spec, config=config,
                           with_answer_qid=sum(1 for r in records if r["answer_qid"]))


class AnswerRows(Mapping[str, dict[str, Any]]):
    """qid → answer row, over the Arrow answer table (one dict per lookup, not one per question
    kept in memory: a million-question database stays a few columns of Arrow buffers)."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self._columns = {name: table.column(name) for name in table.column_names}
        self._position = {qid: i for i, qid in enumerate(table.column("qid").to_pylist())}
        if len(self._position) != table.num_rows:
            raise StorageError("the answer table repeats a question id: rebuild the database")

    def __getitem__(self, qid: str) -> dict[str, Any]:
        i = self._position[qid]
        return {name: column[i].as_py() for name, column in self._columns.items()}

    def __iter__(self) -> Iterator[str]:
        return iter(self._position)

    def __len__(self) -> int:
        return len(self._position)


def check_database_manifest(manifest: Any, where: str) -> dict[str, Any]:
    """``manifest`` if it has what opening a database reads (``index``, ``encoder.spec``, optional
    ``answers``), else a :class:`StorageError` naming the field (not a KeyError deep in a reader).

    >>> check_database_manifest({"index": "index", "encoder": {"spec": "muse"}}, "db")["index"]
    'index'
    """
    fix = "rebuild it with `ray-cora pivot build`"
    if not isinstance(manifest.get("index"), str) or not manifest["index"]:
        raise StorageError(f"{where}: the pivot database manifest has no 'index' folder name: {fix}")
    problem = storage.member_path_problem(manifest["index"].rstrip("/"))
    if problem:  # the index folder must lie inside the database, as every file of an artifact does
        raise StorageError(f"{where}: the pivot database manifest field 'index' {manifest['index']!r} {problem}: {fix}")
    encoder = manifest.get("encoder")
    if not isinstance(encoder, dict) or not isinstance(encoder.get("spec"), str):
        raise StorageError(f"{where}: the pivot database manifest has no 'encoder.spec': {fix}")
    answers = manifest.get("answers")
    if answers is not None and not (isinstance(answers, list) and all(isinstance(a, str) for a in answers)):
        raise StorageError(f"{where}: the pivot database manifest field 'answers' must be a list of file names: {fix}")
    return manifest


@dataclass
class PivotDatabase:
    """An opened database: the index and the answer rows by qid.

    >>> db = PivotDatabase.open("pivot-db/")  # doctest: +SKIP
    >>> db.index.search(vectors, k=10)  # doctest: +SKIP
    """

    manifest: dict[str, Any]
    index: ShardedIndex
    rows: Mapping[str, dict[str, Any]] = field(repr=False)

    @classmethod
    def open(cls, uri: str, *, mmap: bool = False, verify: bool = True) -> "PivotDatabase":
        artifact = storage.Artifact(uri, kind=KIND)
        check_database_manifest(artifact.manifest, artifact.root.join(storage.MANIFEST_NAME).uri)
        index = ShardedIndex.open(artifact.root.join(artifact.manifest["index"]).uri, mmap=mmap, verify=verify)
        # Databases from before the answer table was sharded hold one answers.parquet.
        paths = artifact.manifest.get("answers") or [ANSWERS_FILE]
        table = pa.concat_tables([pq.read_table(io.BytesIO(artifact.read_bytes(p, verify=verify)))
                                  for p in paths])
        rows = AnswerRows(table)
        if len(rows) != len(index):
            raise StorageError(f"{artifact.root.uri}: the answer table has {len(rows)} questions, the "
                               f"index {len(index)}: rebuild the database")
        return cls(artifact.manifest, index, rows)

    @property
    def encoder_spec(self) -> str:
        return self.manifest["encoder"]["spec"]

    def __len__(self) -> int:
        return len(self.rows)
