"""Stage bookkeeping of the iterative job: ``<out>/round-<t>/<stage>/`` folders with a marker.

A stage's marker ``_stage.json`` is written last and records the checksums of the stage's key
outputs (the manifests of the artifacts it made, which checksum their own files) and the digest
of the stage it depends on. On a rerun a stage is skipped when its marker verifies; otherwise it
runs again:

- no marker, and the ``_started.json`` note names the same upstream digest: a crash in the middle
  of it; the stage runs again *in place*, so the job inside resumes (train from its checkpoint,
  embed and retrieve from their finished shards and blocks);
- a marker whose checksums fail, or an upstream that changed since the stage started: its folder
  is cleared first, so nothing stale is resumed.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ray_cora import faults, storage

MARKER = "_stage.json"
STARTED = "_started.json"


@dataclass(frozen=True)
class StageResult:
    name: str  # "round-2/mdpr"
    uri: str  # its folder
    digest: str  # of its marker's outputs: what downstream stages record
    result: dict[str, Any]
    skipped: bool


def _digest(outputs: dict[str, str], upstream: str) -> str:
    text = json.dumps({"outputs": outputs, "upstream": upstream}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _clear(loc: storage.Location) -> None:
    if loc.exists():
        loc.fs.delete_dir_contents(loc.path, missing_dir_ok=True)


class StageRunner:
    """Runs named stages under ``out``, skipping the ones a previous run finished.

    >>> import tempfile
    >>> runner = StageRunner(tempfile.mkdtemp(), log=lambda *_: None)
    >>> first = runner.run("round-1/data", lambda folder: ({"n": 1}, []))
    >>> runner.run("round-1/data", lambda folder: ({"n": 2}, [])).result
    {'n': 1}
    """

    def __init__(self, out: str, *, log: Callable[[str], None] = print) -> None:
        self.root = storage.resolve(out)
        self.log = log
        # Fault point ``iterate.after_stage`` (tests only): stop right after that stage's marker.
        self.faults = faults.current()
        self.ran: list[str] = []
        self.skipped: list[str] = []

    def folder(self, name: str) -> storage.Location:
        return self.root.join(name)

    def finished(self, name: str, upstream: str = "") -> StageResult | None:
        """The stage's result when its marker exists, its outputs verify and its upstream matches."""
        folder = self.folder(name)
        marker = folder.join(MARKER)
        if not marker.is_file():
            return None
        record = json.loads(storage.read_bytes(marker))
        if record.get("upstream") != upstream:
            self.log(f"iterate: {name}: made from an older {record.get('upstream_name') or 'input'}; redoing it")
            return None
        for rel, sha in record["outputs"].items():
            loc = folder.join(rel)
            if not loc.is_file() or storage.sha256_of(loc)[0] != sha:
                self.log(f"iterate: {name}: {rel} is missing or changed since the stage finished; redoing it")
                return None
        return StageResult(name, folder.uri, record["digest"], record["result"], skipped=True)

    def run(self, name: str, work: Callable[[storage.Location], tuple[dict[str, Any], Sequence[str]]], *,
            upstream: StageResult | None = None, outputs: tuple[str, ...] = ()) -> StageResult:
        """Run ``work(folder) -> (result, more_outputs)`` unless finished; ``outputs`` and
        ``more_outputs`` (paths relative to the stage folder) are checksummed into the marker."""
        up_digest = upstream.digest if upstream else ""
        done = self.finished(name, up_digest)
        if done is not None:
            self.log(f"iterate: {name}: finished before, skipped (checksums verified)")
            self.skipped.append(name)
            return done
        folder = self.folder(name)
        started = folder.join(STARTED)
        if folder.join(MARKER).is_file() or (
                started.is_file() and json.loads(storage.read_bytes(started)).get("upstream") != up_digest):
            _clear(folder)
        elif started.is_file():
            self.log(f"iterate: {name}: resuming an interrupted run")
        storage.write_bytes(started, json.dumps({"upstream": up_digest, "started": time.time()}).encode("utf-8"))
        began = time.perf_counter()
        result, extra = work(folder)
        files = {rel: storage.sha256_of(folder.join(rel))[0] for rel in (*outputs, *extra)}
        digest = _digest(files, up_digest)
        seconds = round(time.perf_counter() - began, 1)
        record = {"stage": name, "upstream": up_digest, "upstream_name": upstream.name if upstream else None,
                  "outputs": files, "digest": digest, "seconds": seconds, "result": result}
        storage.write_bytes(folder.join(MARKER), json.dumps(record, indent=2, ensure_ascii=False,
                                                            default=str).encode("utf-8"))
        self.ran.append(name)
        self.log(f"iterate: {name}: done in {seconds:.1f} s")
        self.faults.raise_at(faults.ITERATE_AFTER_STAGE, name, f"crashed after {name}")
        return StageResult(name, folder.uri, digest, result, skipped=False)
