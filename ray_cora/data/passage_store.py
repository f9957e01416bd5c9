"""Passage store: pid → ``{pid, lang, title, text}`` for a corpus far larger than memory (pure, no Ray).

A FAISS index holds only pids; retrieval results need the passages' texts. Loading CORA's 26 GB
TSV into a dict is what runs out of memory, and reading whole files per lookup is what makes
retrieval slow: a block of 256 questions × top-100 asks for ~25k pids spread over every file. So
the store is laid out for random access::

    manifest.json                  kind passage-store, store_format 2, num_buckets, num_passages
    buckets/bucket-00000.arrow     Arrow IPC file, uncompressed, one record batch
    ...

A passage goes to bucket ``crc32(pid) % num_buckets``; inside it rows are sorted by ``key``, a
64-bit blake2b of the pid. A lookup memory-maps the bucket and binary-searches ``key``, so it reads
a few pages of keys and the rows it returns, not the bucket. Remote (``s3://``) buckets are copied
once per machine into a local cache folder private to the user, named by their sha256, so a
changed store never reads a stale copy. Every bucket is checked against its sha256 before it is
first read (once per process and file signature, :func:`ray_cora.storage.verify_local_file`), and
a mapped bucket whose file changes afterwards (an edit in place) is checked again before the next
lookup reads it.

Building streams the corpus once into per-bucket staging files on local disk (zstd Arrow IPC
streams, which keep nothing per batch in memory; memory: about ``buffer_passages`` passages over
all buckets; disk: about the compressed corpus), then sorts one bucket at a time into its Arrow file: pick ``num_buckets`` so a bucket sorts comfortably in memory (1024 for
CORA's 43.6M passages is ~25 MB a bucket).
"""

from __future__ import annotations

import hashlib
import os
import resource
import tempfile
import time
import zlib
from collections import Counter, OrderedDict
from contextlib import ExitStack
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ray_cora import storage
from ray_cora.data.passages import PASSAGE_FIELDS, PASSAGE_SCHEMA, iter_passages, passage_files
from ray_cora.errors import ConfigError, StorageError
from ray_cora.languages import UNKNOWN_LANG

STORE_KIND = "passage-store"
STORE_FORMAT = 2
# 64-bit offsets: a bucket may hold more than 2 GB of text when --store-buckets is set low.
STORE_SCHEMA = pa.schema([("key", pa.uint64()), *(pa.field(f.name, pa.large_string()) for f in PASSAGE_SCHEMA)])


def bucket_of(pid: str, num_buckets: int) -> int:
    """Stable bucket of a pid (crc32, not Python's salted ``hash``)."""
    return zlib.crc32(pid.encode("utf-8")) % num_buckets


def pid_keys(pids: Sequence[str]) -> np.ndarray:
    """The sort key of each pid inside its bucket: 64 bits of blake2b (equal keys are possible, so
    a lookup also compares the pid).

    >>> pid_keys(["a", "a", "b"]).dtype, len(set(pid_keys(["a", "a", "b"]).tolist()))
    (dtype('uint64'), 2)
    """
    return np.fromiter((int.from_bytes(hashlib.blake2b(p.encode("utf-8"), digest_size=8).digest(), "little")
                        for p in pids), dtype=np.uint64, count=len(pids))


BUCKET_TARGET_BYTES = 64 << 20


def default_num_buckets(passages: str, *, format: str | None = None) -> int:
    """One bucket per ~64 MB of corpus files (compressed ones count ×3), at least 16 and at most
    4096: building sorts one bucket in memory at a time (CORA's 26 GB TSV → 416 buckets)."""
    total = 0
    for loc in passage_files(passages, format=format):
        size = loc.info().size or 0
        total += size * 3 if loc.path.endswith((".gz", ".bz2", ".zst", ".parquet")) else size
    return max(16, min(4096, -(-total // BUCKET_TARGET_BYTES)))


def _bucket_path(number: int) -> str:
    return f"buckets/bucket-{number:05d}.arrow"


LANG_MAP_SCHEMA = pa.schema([("pid", pa.string()), ("lang", pa.string())])


def build_passage_store(passages: str, out: str, *, num_buckets: int = 16, format: str | None = None,
                        lang: str | None = None, known_langs: Callable[[], Iterable[pa.Table]] | None = None,
                        flush_rows: int | None = None, buffer_passages: int = 50_000,
                        staging_dir: str | None = None) -> dict:
    """Stream a corpus into a committed passage store at ``out``; returns its manifest.

    A pid given twice keeps its first passage (corpus order). Each bucket's buffer is written out
    at ``flush_rows`` passages (default: ``buffer_passages`` shared by all buckets, so 1024 buckets
    hold ~50k passages, not millions). ``staging_dir`` holds the temporary per-bucket files
    (default: the system temp folder).

    Languages: a passage's own ``lang``, else ``lang``, else — when ``known_langs`` is given and the
    corpus left some passages ``und`` — the language ``known_langs()`` records for its pid (Arrow
    tables of ``pid, lang``, e.g. an index's ids, :func:`ray_cora.index.sharded.iter_index_langs`),
    staged into the same buckets so each bucket joins only its own pids. The manifest's
    ``languages`` says how many passages got their language from where, and ``per_language``.
    """
    flush_rows = flush_rows or max(16, buffer_passages // num_buckets)
    root = storage.resolve(out)
    writer = storage.ArtifactWriter(root, kind=STORE_KIND, config={"passages": passages, "num_buckets": num_buckets})
    count = 0
    stats: dict[str, int] = {}
    _allow_open_files(num_buckets + 64)  # the language map is staged after the passages are closed
    options = pa.ipc.IpcWriteOptions(compression="zstd" if pa.Codec.is_available("zstd") else None)
    with tempfile.TemporaryDirectory(prefix="ray_cora_store_", dir=staging_dir) as staging:
        staged = [os.path.join(staging, f"{b:05d}.arrows") for b in range(num_buckets)]
        buffers: list[list[dict]] = [[] for _ in range(num_buckets)]
        with ExitStack() as stack:
            streams = [stack.enter_context(pa.ipc.new_stream(stack.enter_context(pa.OSFile(path, "wb")),
                                                             PASSAGE_SCHEMA, options=options)) for path in staged]

            def flush(b: int) -> None:
                if buffers[b]:
                    streams[b].write_batch(pa.RecordBatch.from_pylist(buffers[b], schema=PASSAGE_SCHEMA))
                    buffers[b].clear()

            for file in passage_files(passages, format=format):
                for passage in iter_passages(file, format=format, lang=lang, stats=stats):
                    b = bucket_of(passage["pid"], num_buckets)
                    buffers[b].append(passage)
                    count += 1
                    if len(buffers[b]) >= flush_rows:
                        flush(b)
            for b in range(num_buckets):
                flush(b)
        if not count:
            raise ConfigError(f"{passages}: no passages found, nothing to look texts up in")
        lang_maps = (_stage_lang_map(known_langs(), staging, num_buckets, options)
                     if known_langs is not None and stats.get("lang_unknown") else None)
        from_map, per_language = 0, Counter()
        for b, path in enumerate(staged):
            with pa.OSFile(path) as source:
                table = pa.ipc.open_stream(source).read_all()
            if lang_maps is not None:
                table, filled = _fill_languages(table, lang_maps[b])
                from_map += filled
            per_language.update(dict(zip(*(c.to_pylist() for c in pc.value_counts(table.column("lang")).flatten()))))
            keys = pid_keys(table.column("pid").to_pylist())
            order = np.argsort(keys, kind="stable")
            columns = [column.cast(pa.large_string()) for column in table.take(order).columns]
            table = pa.Table.from_arrays([pa.array(keys[order], type=pa.uint64()), *columns],
                                         schema=STORE_SCHEMA).combine_chunks()
            with writer.open(_bucket_path(b)) as stream, pa.ipc.new_file(stream, STORE_SCHEMA) as ipc:
                ipc.write_table(table, max_chunksize=max(table.num_rows, 1))
            os.remove(path)
    languages = {"lang_column": stats.get("lang_column", 0), "lang_given": stats.get("lang_given", 0),
                 "known_langs": from_map, "unknown": per_language.get(UNKNOWN_LANG, 0)}
    return writer.commit({"num_buckets": num_buckets, "num_passages": count, "passages": passages,
                          "store_format": STORE_FORMAT, "languages": languages,
                          "per_language": dict(sorted(per_language.items()))})


def _stage_lang_map(tables: Iterable[pa.Table], staging: str, num_buckets: int,
                    options: pa.ipc.IpcWriteOptions) -> list[str]:
    """Write ``pid, lang`` rows (``und`` ones dropped) into one staging file per bucket."""
    paths = [os.path.join(staging, f"{b:05d}.langs.arrows") for b in range(num_buckets)]
    with ExitStack() as stack:
        streams = [stack.enter_context(pa.ipc.new_stream(stack.enter_context(pa.OSFile(path, "wb")),
                                                         LANG_MAP_SCHEMA, options=options)) for path in paths]
        for table in tables:
            table = table.select(["pid", "lang"]).cast(LANG_MAP_SCHEMA)
            table = table.filter(pc.not_equal(table.column("lang"), UNKNOWN_LANG))
            if not table.num_rows:
                continue
            buckets = np.fromiter((bucket_of(p, num_buckets) for p in table.column("pid").to_pylist()),
                                  dtype=np.int64, count=table.num_rows)
            order = np.argsort(buckets, kind="stable")
            bounds = np.searchsorted(buckets[order], np.arange(num_buckets + 1))
            for b in np.flatnonzero(np.diff(bounds)):
                rows = table.take(order[bounds[b]:bounds[b + 1]])
                for batch in rows.to_batches():
                    streams[b].write_batch(batch)
    return paths


def _fill_languages(table: pa.Table, lang_map_path: str) -> tuple[pa.Table, int]:
    """``table`` with its ``und`` passages given the language the bucket's map records for their pid."""
    with pa.OSFile(lang_map_path) as source:
        known = pa.ipc.open_stream(source).read_all()
    os.remove(lang_map_path)
    langs = table.column("lang")
    unknown = pc.equal(langs, UNKNOWN_LANG)
    if not known.num_rows or not pc.any(unknown).as_py():
        return table, 0
    found = pc.take(known.column("lang"), pc.index_in(table.column("pid"), value_set=known.column("pid")))
    fill = pc.and_(unknown, pc.is_valid(found))
    filled = pc.sum(fill).as_py() or 0
    merged = pc.if_else(fill, found, langs)
    return table.set_column(table.schema.get_field_index("lang"), "lang", merged), filled


def _allow_open_files(needed: int) -> None:
    """Building keeps one staging file per bucket open: raise the soft open-file limit toward the
    hard one when the default (often 1024) is too low, else say what to do."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < needed:
            raise ConfigError(f"building a passage store with {needed - 64} buckets keeps that many files open, "
                              f"but the open-file limit is {hard}: use fewer --store-buckets or raise `ulimit -n`")


def _check_format(manifest: dict, uri: str) -> None:
    if manifest.get("store_format") != STORE_FORMAT:
        raise ConfigError(f"{uri} holds a passage store in an older layout (store_format "
                          f"{manifest.get('store_format', 1)}, this ray_cora reads {STORE_FORMAT}); delete that "
                          "folder and run again to rebuild it from the corpus")


def open_or_build_store(passages: str | None, store: str, *, num_buckets: int | None = None,
                        format: str | None = None, lang: str | None = None,
                        known_langs: Callable[[], Iterable[pa.Table]] | None = None) -> dict:
    """The committed store at ``store`` when it was built from ``passages``, else build it (with
    ``num_buckets``, default :func:`default_num_buckets`; ``lang``/``known_langs`` as
    :func:`build_passage_store` takes them)."""
    loc = storage.resolve(store)
    if loc.join(storage.MANIFEST_NAME).is_file():
        manifest = storage.Artifact(loc, kind=STORE_KIND).manifest
        if passages is not None and manifest.get("passages") != passages:
            raise ConfigError(f"{loc.uri} holds a passage store of {manifest.get('passages')}, not {passages}: "
                              "pass another --passage-store, or delete that folder to rebuild it")
        _check_format(manifest, loc.uri)
        return manifest
    if passages is None:
        raise ConfigError("no passage texts: pass --passages (the corpus the index was built from); the "
                          "index manifest does not name it")
    started = time.perf_counter()
    num_buckets = num_buckets or default_num_buckets(passages, format=format)
    manifest = build_passage_store(passages, store, num_buckets=num_buckets, format=format, lang=lang,
                                   known_langs=known_langs)
    print(f"passage store: {manifest['num_passages']} passages in {num_buckets} buckets at {loc.uri} "
          f"({time.perf_counter() - started:.1f} s); languages: {describe_languages(manifest)}")
    return manifest


def describe_languages(manifest: dict) -> str:
    """One line saying where a store's passage languages came from.

    >>> describe_languages({"num_passages": 3, "languages": {"lang_column": 0, "lang_given": 0,
    ...                     "known_langs": 2, "unknown": 1}})
    "2 from the index's per-pid languages, 1 unknown ('und')"
    """
    counts = manifest.get("languages")
    if not counts:
        return "from the corpus"
    names = {"lang_column": "from the corpus's lang column", "lang_given": "given (--lang)",
             "known_langs": "from the index's per-pid languages", "unknown": f"unknown ({UNKNOWN_LANG!r})"}
    return ", ".join(f"{counts[key]} {label}" for key, label in names.items() if counts.get(key))


class PassageStore:
    """pid → ``{pid, lang, title, text}`` from a committed store; keeps up to ``cache_buckets``
    buckets memory-mapped (opening one is cheap: a map and the file's footer).

    >>> import tempfile, os, json
    >>> d = tempfile.mkdtemp(); src = os.path.join(d, "p.jsonl")
    >>> _ = open(src, "w").write(json.dumps({"pid": "a", "lang": "en", "title": "T", "text": "x"}) + "\\n")
    >>> _ = build_passage_store(src, os.path.join(d, "store"), num_buckets=3)
    >>> PassageStore(os.path.join(d, "store")).lookup(["a", "nope"])
    {'a': {'pid': 'a', 'lang': 'en', 'title': 'T', 'text': 'x'}}
    """

    def __init__(self, uri: str, *, cache_buckets: int = 64, cache_dir: str | None = None) -> None:
        self.artifact = storage.Artifact(uri, kind=STORE_KIND)
        _check_format(self.artifact.manifest, self.artifact.root.uri)
        self.num_buckets = int(self.artifact.manifest["num_buckets"])
        self.cache_buckets = max(1, cache_buckets)
        self.cache_dir = cache_dir or storage.default_cache_dir("passage_cache")
        # bucket -> (keys, table, path, file signature when verified)
        self._open: OrderedDict[int, tuple[np.ndarray, pa.Table, str, tuple[int, ...]]] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_open": OrderedDict()}  # maps stay behind; the copy reopens its own

    def _bucket(self, number: int) -> tuple[np.ndarray, pa.Table]:
        if number in self._open:
            keys, table, path, signature = self._open[number]
            # One stat per bucket and lookup (microseconds): a mapped file edited in place shows its
            # new bytes through the map, so it must be checked again before it is read.
            if storage.still_verified(path, signature):
                self._open.move_to_end(number)
                return keys, table
            del self._open[number]
        path, signature = self.artifact.verified_local_path(_bucket_path(number), cache_dir=self.cache_dir)
        try:
            table = pa.ipc.open_file(pa.memory_map(path)).read_all()
        except (pa.ArrowInvalid, OSError) as exc:
            raise StorageError(f"{path}: not a readable passage-store bucket ({exc}); rebuild the store") from exc
        column = table.column("key")
        keys = (column.chunk(0).to_numpy() if column.num_chunks == 1
                else column.to_numpy() if column.num_chunks else np.empty(0, dtype=np.uint64))
        self._open[number] = (keys, table, path, signature)
        while len(self._open) > self.cache_buckets:
            self._open.popitem(last=False)
        return keys, table

    def lookup(self, pids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Rows for the pids found (a pid missing from the corpus is absent from the result)."""
        by_bucket: dict[int, list[str]] = {}
        for pid in dict.fromkeys(pids):
            by_bucket.setdefault(bucket_of(pid, self.num_buckets), []).append(pid)
        found: dict[str, dict[str, Any]] = {}
        for number, wanted in sorted(by_bucket.items()):
            keys, table = self._bucket(number)
            wanted_keys = pid_keys(wanted)
            starts = np.searchsorted(keys, wanted_keys, side="left")
            pid_column = table.column("pid")
            rows = []
            for pid, key, row in zip(wanted, wanted_keys, starts.tolist()):
                while row < len(keys) and keys[row] == key:
                    if pid_column[row].as_py() == pid:
                        rows.append(row)
                        break
                    row += 1
            if rows:
                for record in table.take(rows).select(list(PASSAGE_FIELDS)).to_pylist():
                    found[record["pid"]] = record
        return found

    def iter_passages(self) -> Iterator[dict[str, Any]]:
        """Every passage, bucket by bucket (not corpus order), with the languages the store
        filled in — one pass over a corpus whose file carries no languages."""
        for number in range(self.num_buckets):
            _, table = self._bucket(number)
            for batch in table.select(list(PASSAGE_FIELDS)).to_batches(max_chunksize=8192):
                yield from batch.to_pylist()
