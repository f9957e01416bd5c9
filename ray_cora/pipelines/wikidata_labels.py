"""``ray-cora wikidata labels``: a Wikidata JSON dump → label and sitelink Parquet tables, on Ray Data.

One pass over the dump writes both tables (labels + aliases per language, and sitelinks: the
language links the iterative-training job follows). An uncompressed dump is cut into parts of
``part_lines`` lines found by one scan for byte offsets, so every part is read by its own task
with a seek; a ``.gz``/``.bz2`` dump cannot seek and is one part. Each task writes
``labels/part-NNNNN.parquet`` and ``sitelinks/part-NNNNN.parquet`` and then its marker
``parts/part-NNNNN.json``; ``manifest.json`` is written last. A rerun skips parts whose marker and
checksums verify.

The dump is planned again on every run (one scan, which an uncompressed dump needs for its offsets
anyway) and a part is kept only when its marker was written for the same lines with the same
content: an uncompressed part by the sha256 of its lines (from that scan; the part's reader checks it
as it reads), a compressed dump — one part, never scanned at planning, since a full decompression
pass just to plan would double the job's reading — by the file's size, mtime and the sha256 of its
first and last MiB. So an edited dump redoes the parts it changed, never keeps stale rows.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from ray_cora import storage
from ray_cora.configs.wikidata import WikidataLabelsConfig
from ray_cora.data.passages import Segment, decoded_lines, detect_compression
from ray_cora.data.records import BadRecords
from ray_cora.data.wikidata import (
    LABELS_KIND,
    LABELS_SCHEMA,
    SITELINKS_SCHEMA,
    DumpStats,
    check_langs,
    iter_entities,
    label_rows,
)
from ray_cora.errors import StorageError
from ray_cora.index.plan import file_state, shard_offsets
from ray_cora.progress import JobProgress
from ray_cora.runtime import check_resources_fit, ray_session, worker_runtime_env


_EDGE_BYTES = 1 << 20


def plan_parts(dump: str, part_lines: int) -> list[dict[str, Any]]:
    """``{part, first_line, num_lines, start_byte, source}`` covering every line of the dump once;
    ``source`` identifies the content the part was planned from (see the module docstring)."""
    loc = storage.resolve(dump)
    if detect_compression(loc.path) is not None:
        return [{"part": 0, "first_line": 1, "num_lines": None, "start_byte": 0, "source": compressed_identity(loc)}]
    offsets, total, digests = shard_offsets(loc, 1, part_lines, digests=True)
    # shard_offsets also reports the (empty) line after a final newline: no part starts there.
    return [{"part": n, "first_line": 1 + n * part_lines,
             "num_lines": min(part_lines, total - n * part_lines), "start_byte": offset,
             "source": {"sha256": digest}}
            for n, (offset, digest) in enumerate(zip(offsets, digests)) if n * part_lines < total]


def compressed_identity(loc: storage.Location) -> dict[str, Any]:
    """Size, mtime and the sha256 of the first and last MiB of a compressed dump: a cheap identity
    (no full read) that any rewrite of the file changes."""
    state = file_state(loc)
    digest = hashlib.sha256()
    with loc.fs.open_input_file(loc.path) as handle:
        digest.update(handle.read(_EDGE_BYTES))
        handle.seek(max(0, state["size"] - _EDGE_BYTES))
        digest.update(handle.read(_EDGE_BYTES))
    return {"size": state["size"], "mtime_ns": state["mtime_ns"], "edges_sha256": digest.hexdigest()}


def part_paths(part: int) -> dict[str, str]:
    return {"labels": f"labels/part-{part:05d}.parquet", "sitelinks": f"sitelinks/part-{part:05d}.parquet",
            "marker": f"parts/part-{part:05d}.json", "bad": f"bad/part-{part:05d}.jsonl"}


def write_part(*, dump: str, out: str, part: dict[str, Any], langs: tuple[str, ...],
               on_bad_record: str) -> dict[str, Any]:
    """Parse one part of the dump and write its two tables, then its marker (pure of Ray)."""
    loc = storage.resolve(dump)
    root = storage.resolve(out)
    bad = BadRecords(on_bad_record)
    stats = DumpStats()
    segment = Segment(part["first_line"], part["num_lines"], part["start_byte"])
    digest = hashlib.sha256()
    lines = ((number, raw) for number, _, raw in decoded_lines(loc, segment, digest=digest))
    labels, links = label_rows(iter_entities(lines, source=dump, langs=langs, bad_records=bad,
                                             stats=stats))
    expected = part.get("source", {}).get("sha256")
    if expected is not None and digest.hexdigest() != expected:
        raise StorageError(f"{dump}: lines {part['first_line']}-{part['first_line'] + part['num_lines'] - 1} "
                           "changed while the job ran (content sha256 differs from the plan's); rerun to replan")
    paths = part_paths(part["part"])
    writer = storage.ArtifactWriter(root, kind=LABELS_KIND)
    for name, columns, schema in (("labels", labels, LABELS_SCHEMA), ("sitelinks", links, SITELINKS_SCHEMA)):
        buffer = io.BytesIO()
        pq.write_table(pa.table(columns, schema=schema), buffer)
        writer.write_bytes(paths[name], buffer.getvalue())
    if bad.count:
        writer.write_bytes(paths["bad"], bad.to_jsonl())
    marker = {**part, "files": writer.files, "stats": stats.to_dict(),
              "rows": {"labels": len(labels["qid"]), "sitelinks": len(links["qid"])}}
    storage.write_bytes(root.join(paths["marker"]), json.dumps(marker).encode("utf-8"))
    return marker


def finished_part(root: storage.Location, part: dict[str, Any]) -> dict[str, Any] | None:
    """The part's marker when it describes this same part and its files verify, else None."""
    marker_loc = root.join(part_paths(part["part"])["marker"])
    if not marker_loc.is_file():
        return None
    try:
        marker = json.loads(storage.read_bytes(marker_loc))
        if any(marker.get(k) != part[k] for k in ("first_line", "num_lines", "start_byte", "source")):
            return None
        for relpath, entry in marker["files"].items():
            if storage.member_path_problem(relpath):  # a marker names files of its own folder only
                return None
            sha, size = storage.sha256_of(root.join(relpath))
            if sha != entry["sha256"] or size != entry["size"]:
                return None
    except (StorageError, ValueError, KeyError):
        return None
    return marker


class WritePart:
    """Ray Data ``map`` callable: one planned part in, its marker (as a JSON string) out."""

    def __init__(self, dump: str, out: str, langs: tuple[str, ...], on_bad_record: str) -> None:
        self.dump, self.out, self.langs, self.on_bad_record = dump, out, langs, on_bad_record

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        part = json.loads(row["part"])
        marker = write_part(dump=self.dump, out=self.out, part=part, langs=self.langs,
                            on_bad_record=self.on_bad_record)
        return {"marker": json.dumps(marker)}


def build_label_tables(config: WikidataLabelsConfig) -> dict[str, Any]:
    """Run the job; returns the manifest written (or found, when everything was done before)."""

    langs = check_langs(config.langs)
    root = storage.resolve(config.out)
    parts = plan_parts(config.dump, config.part_lines)
    done = {p["part"]: m for p in parts if (m := finished_part(root, p)) is not None}
    todo = [p for p in parts if p["part"] not in done]
    print(f"wikidata labels: {len(parts)} part(s), {len(done)} already written, {len(todo)} to parse")
    progress = JobProgress("wikidata labels", unit="part", total=len(parts), items="entities",
                           already_done=len(done), already_items=sum(m["stats"]["entities"] for m in done.values()))
    progress.start()
    if todo:
        with ray_session(address=config.ray_address, num_cpus=config.num_cpus):
            check_resources_fit({"--task-cpus": (config.task_cpus, 0.0)})
            items = ray.data.from_items([{"part": json.dumps(p)} for p in todo],
                                        override_num_blocks=len(todo))
            written = items.map(WritePart, fn_constructor_kwargs={
                "dump": config.dump, "out": config.out, "langs": langs,
                "on_bad_record": config.on_bad_record},
                concurrency=min(config.tasks or len(todo), len(todo)), num_cpus=config.task_cpus,
                runtime_env=worker_runtime_env())
            for row in written.iter_rows():
                marker = json.loads(row["marker"])
                done[marker["part"]] = marker
                progress.add(items=marker["stats"]["entities"],
                             bytes=sum(entry["size"] for entry in marker["files"].values()))
    manifest = commit_tables(root, [done[p["part"]] for p in parts], config=config.to_dict(), langs=langs)
    progress.finish()
    return manifest


def commit_tables(root: storage.Location, markers: list[dict[str, Any]], *, config: dict,
                  langs: tuple[str, ...]) -> dict[str, Any]:
    writer = storage.ArtifactWriter(root, kind=LABELS_KIND, config=config)
    totals = DumpStats()
    rows = {"labels": 0, "sitelinks": 0}
    for marker in markers:
        for relpath, entry in marker["files"].items():
            writer.add_existing(relpath, size=entry["size"], sha256=entry["sha256"])
        totals.add(DumpStats(**marker["stats"]))
        for key in rows:
            rows[key] += marker["rows"][key]
    manifest = writer.commit({"langs": list(langs), "stats": totals.to_dict(), "rows": rows,
                              "labels": [part_paths(m["part"])["labels"] for m in markers],
                              "sitelinks": [part_paths(m["part"])["sitelinks"] for m in markers]})
    print(f"wikidata labels: {totals.entities} entities ({totals.without_labels} without a label in "
          f"{','.join(langs)}), {totals.redirects} redirects skipped, {totals.bad} bad lines; "
          f"{rows['labels']} label rows, {rows['sitelinks']} sitelinks → {root.uri}")
    return manifest


