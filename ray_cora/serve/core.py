"""What the Serve deployments host, without Serve: the retriever core and the generator and pivot
adapters. Everything here is plain Python, so it is tested (and benchmarked) without Ray."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Any, Iterable, Protocol, Sequence

import numpy as np

from ray_cora.data.passages import iter_passages, passage_files
from ray_cora.errors import ConfigError
from ray_cora.index.sharded import ShardedIndex, commit_index, plan_shards, write_shard


class PassageLookup(Protocol):
    """pid → ``{lang, title, text, ...}`` for the pids found (a missing pid is absent)."""

    def lookup(self, pids: Iterable[str]) -> dict[str, dict[str, str]]:
        ...


class InMemoryPassages:
    """Every passage of a (small) corpus held in memory, read once from its file or folder.

    For a large corpus serve a committed passage store instead (``passage_store=``, built by
    ``ray-cora retrieve``): :class:`ray_cora.pipelines.retrieve.PassageStore` reads one bucket
    at a time.
    """

    def __init__(self, rows: dict[str, dict[str, str]]) -> None:
        self.rows = rows

    @classmethod
    def load(cls, uri: str) -> "InMemoryPassages":
        rows: dict[str, dict[str, str]] = {}
        for loc in passage_files(uri):
            for p in iter_passages(loc):
                rows[p["pid"]] = {"lang": p["lang"], "title": p["title"], "text": p["text"]}
        if not rows:
            raise ConfigError(f"passages: no passages found under {uri}")
        return cls(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def lookup(self, pids: Iterable[str]) -> dict[str, dict[str, str]]:
        return {pid: self.rows[pid] for pid in pids if pid in self.rows}


def build_index(encoder, store: InMemoryPassages, out: str, *, shard_size: int = 100_000,
                batch_size: int = 64) -> str:
    """Embed every passage of ``store`` and write a committed sharded index under ``out``."""
    pids = list(store.rows)
    shards = []
    for number, start, end in plan_shards(len(pids), shard_size):
        chunk = pids[start:end]
        vectors = np.concatenate([
            encoder.encode_passages([store.rows[p]["title"] for p in chunk[i:i + batch_size]],
                                    [store.rows[p]["text"] for p in chunk[i:i + batch_size]])
            for i in range(0, len(chunk), batch_size)])
        shards.append(write_shard(out, number, chunk, vectors,
                                  langs=[store.rows[p]["lang"] for p in chunk]))
    commit_index(out, shards, encoder={"spec": encoder.spec, "dim": encoder.dim,
                                       "normalized": encoder.normalized})
    return out


@dataclass
class RetrieverCore:
    """Question encoder + sharded index + passage lookup: questions in, ranked passages out.

    >>> core = RetrieverCore.load(index=None)  # doctest: +SKIP  (embeds the demo corpus)
    >>> core.retrieve(["How tall is Mount Fuji?"], [3])[0][0]["title"]  # doctest: +SKIP
    'Mount Fuji'
    """

    encoder: Any
    index: ShardedIndex
    passages: PassageLookup
    index_uri: str

    @classmethod
    def load(cls, *, index: str | None, passages: str | None = None, passage_store: str | None = None,
             encoder: str = "muse", threads: int = 1, device: Any = None) -> "RetrieverCore":
        """Open ``index`` (its encoder must be ``encoder``) with texts from ``passage_store`` (a
        committed store, read bucket by bucket) or else ``passages`` (read into memory). Without
        an index, embed ``passages`` (default: the demo corpus) into a temporary index first."""
        from ray_cora.demo import DEMO_PASSAGES
        from ray_cora.encoders import load_encoder

        model = load_encoder(encoder, threads=threads, device=device)
        if passage_store and index:
            from ray_cora.pipelines.retrieve import PassageStore

            store: PassageLookup = PassageStore(passage_store)
        else:
            store = InMemoryPassages.load(passages or str(DEMO_PASSAGES))
        uri = index or build_index(model, store, tempfile.mkdtemp(prefix="ray_cora_serve_index_"))
        opened = ShardedIndex.open(uri)
        built_with = opened.manifest["encoder"]["spec"]
        if built_with != model.spec:
            raise ConfigError(f"encoder {model.spec!r} differs from the one that built {uri} "
                              f"({built_with!r}): questions and passages must share a space")
        return cls(model, opened, store, uri)

    def retrieve(self, questions: Sequence[str], ks: Sequence[int]) -> list[list[dict[str, Any]]]:
        """Top ``ks[i]`` passages for ``questions[i]``, one batched encode and search for all."""
        if not questions:
            return []
        vectors = self.encoder.encode_queries(list(questions))  # (n, dim)
        scores, pids = self.index.search(vectors, max(ks))
        found = self.passages.lookup(p for row in pids for p in row)
        missing = [p for row in pids for p in row if p not in found]
        if missing:
            raise ConfigError(f"pid {missing[0]!r} from {self.index_uri} is not in the passages: serve the "
                              "corpus (or passage store) the index was built from")
        return [[{"pid": pid, "lang": found[pid]["lang"], "title": found[pid]["title"],
                  "text": found[pid]["text"], "score": float(score)}
                 for pid, score in zip(row_pids[:k], row_scores[:k])]
                for row_pids, row_scores, k in zip(pids, scores, ks)]


class AnswerGenerator(Protocol):
    """mGEN: an answer in ``langs[i]`` to ``questions[i]`` from the passages retrieved for it."""

    def answer(self, questions: Sequence[str], langs: Sequence[str],
               passages: Sequence[Sequence[dict[str, Any]]]) -> list[str]:
        ...


def load_generator(path: str, *, tokenizer: str | None = None, top_k: int | None = None) -> AnswerGenerator:
    """The mGEN generator (any HF seq2seq folder) at ``path``; ``tokenizer`` for checkpoints that
    ship without one (CORA's ``mGEN_model``: mT5's)."""
    from ray_cora.train.mgen import Generator

    return Generator.load(path, tokenizer=tokenizer, **({"top_k": top_k} if top_k else {}))


class PivotAnswerer(Protocol):
    """RM-MIPS: ``answer_batch`` returns, per question, ``prediction``, ``abstained``, ``score``,
    ``matched_qid``, ``matched_question``, ``english_answer``, ``translation_source``."""

    def answer_batch(self, questions: Sequence[str], langs: Sequence[str]) -> list[dict[str, Any]]:
        ...


def load_pivot(db: str, *, labels: str | None = None, reranker: str | None = None,
               threshold: float | None = None) -> PivotAnswerer:
    """The RM-MIPS pipeline over the pivot database ``db``; ``db="demo"`` builds the demo database
    (and translates with the demo Wikidata labels unless ``labels`` is given)."""
    from ray_cora.demo import DEMO_WIKIDATA_LABELS
    from ray_cora.pivot import PivotPipeline

    if db == "demo":
        db, labels = build_demo_pivot_db(), labels or str(DEMO_WIKIDATA_LABELS)
    return PivotPipeline.load(db, labels=labels, reranker=reranker, threshold=threshold)


def pivot_response(question: str, lang: str, result: dict[str, Any]) -> dict[str, Any]:
    """A pivot pipeline result → the ``/v1/pivot`` body (answer null when it abstains)."""
    return {"question": question, "lang": lang,
            "answer": None if result["abstained"] else result["prediction"],
            "abstained": bool(result["abstained"]), "matched_question": result["matched_question"],
            "matched_qid": result["matched_qid"], "score": float(result["score"]),
            "english_answer": result["english_answer"], "translation_source": result["translation_source"]}


def build_demo_pivot_db(encoder: str = "muse") -> str:
    """Build the demo pivot database (``ray_cora/demo/assets/pivot_db.jsonl``) in a temporary folder."""
    from ray_cora.demo import DEMO_PIVOT_DB
    from ray_cora.encoders import load_encoder
    from ray_cora.pivot import build_database, iter_db_records

    out = tempfile.mkdtemp(prefix="ray_cora_serve_pivot_")
    build_database(list(iter_db_records(str(DEMO_PIVOT_DB), dataset="jsonl")), load_encoder(encoder), out)
    return out
