"""RM-MIPS pivot on XQuAD: regenerates docs/results/xquad_pivot.{md,json,png}.

    python jobs/benchmarks/xquad_pivot.py [--reranker hf:<cross-encoder>] [--translator hf:<seq2seq>] [--limit N]

Database: the 1,190 English XQuAD questions with their answers, built in the pivot database
format (sharded index + answer table). Queries: every other language's questions; a match is
correct when the matched English question has the query's id (XQuAD shares ids across
languages). Reported per language: (a) MIPS top-1 with mUSE; (b) RM-MIPS top-1 when a
cross-encoder is given; (c) end-to-end F1 of the translated answer against the gold answer in the
query's language, with the fallback that produced each answer; (d) MIPS top-1 as distractor
questions are added to the database. Each language carries a resource group (high / medium / low,
``LANGUAGE_GROUPS``), and every metric column is also averaged per group (``group_macros``).
Embeddings are cached (default ``build/xquad_pivot_cache``, gitignored), so reruns take seconds.
``--limit N`` keeps the first N questions of each language (the database stays whole): a quick
check of a path, e.g. ``--reranker``; its figures are not the benchmark's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from ray_cora.data.qa import iter_qa  # noqa: E402
from ray_cora.demo import DEMO_PIVOT_DB, DEMO_QUESTIONS, DEMO_WIKIDATA_LABELS  # noqa: E402
from ray_cora.languages import MUSE_LANGS  # noqa: E402
from ray_cora.metrics.qa import f1  # noqa: E402
from ray_cora.pivot import AnswerTranslator, LabelTable, PivotDatabase, PivotPipeline  # noqa: E402
from ray_cora.pivot.database import iter_db_records, write_database  # noqa: E402

QUERY_LANGS = ("ar", "de", "es", "ru", "th", "tr", "vi", "zh_cn")
FILE_CODE = {"zh_cn": "zh"}
# The paper's Table 7, mUSE column: MIPS top-1 with 100k SQuAD distractor questions.
PAPER_MUSE = {"ar": 87.4, "de": 96.4, "es": 98.1, "ru": 93.2, "th": 91.6, "tr": 94.1, "vi": 17.8, "zh_cn": 90.3}

# Resource groups of the query languages. NOT the paper's own grouping: all that could be read here of
# Montero et al. (arXiv 2012.14094v1, MIA 2022) is their opening (title, abstract, start of the
# introduction), which speaks of "lower resource languages (LRLs)" without listing them. The rule
# instead: the resource classes of Joshi et al., "The State and Fate of Linguistic Diversity and
# Inclusion in the NLP World" (ACL 2020; per language in its lang2tax.txt): class 5 ("the winners")
# = high, class 4 ("the underdogs") = medium, classes 0-3 = low. ar, de, es and Mandarin are class 5;
# ru, tr, vi class 4; th class 3 ("the rising stars").
LANGUAGE_GROUPS: dict[str, tuple[str, ...]] = {"high": ("ar", "de", "es", "zh_cn"), "medium": ("ru", "tr", "vi"),
                                               "low": ("th",)}
GROUP_SOURCE = ("Joshi et al. (ACL 2020) resource classes: high = class 5, medium = class 4, low = classes 0-3 "
                "(not the paper's table, which could not be read here)")
# The per-language metric columns that get a group macro (key in a row, column title).
METRIC_COLUMNS: tuple[tuple[str, str], ...] = (
    ("mips_top1", "(a) MIPS top-1"), ("mips_top1_distractors", "(a) + distractors"),
    ("paper_muse_mips", "paper MIPS"), ("rm_mips_top1", "(b) RM-MIPS top-1"), ("e2e_f1", "(c) end-to-end F1"),
    ("oracle_translation_f1", "F1, perfect translation"))


class CachedMuse:
    """mUSE with an on-disk cache of every text it has embedded (npz per text-list hash)."""

    spec, dim, normalized = "muse", 512, True

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.cache.mkdir(parents=True, exist_ok=True)
        self.memory: dict[str, np.ndarray] = {}
        self._model = None

    def embed(self, texts: list[str], name: str) -> np.ndarray:
        digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
        path = self.cache / f"{name}-{digest}.npy"
        if path.exists():
            vectors = np.load(path)
        else:
            if self._model is None:
                from ray_cora.encoders import load_encoder

                self._model = load_encoder("muse", threads=2)
            started = time.perf_counter()
            vectors = np.concatenate([self._model.encode_queries(texts[i:i + 256]) for i in range(0, len(texts), 256)])
            print(f"  embedded {len(texts)} texts ({name}) in {time.perf_counter() - started:.0f} s")
            np.save(path, vectors)
        self.memory.update(zip(texts, vectors))
        return vectors

    def encode_queries(self, texts):  # the TextEncoder interface the pipeline calls
        return np.stack([self.memory[t] for t in texts]).astype(np.float32)


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text) if len(s.split()) >= 5]


def template_questions(sentence: str) -> list[str]:
    """Topic-sharing but templated English questions from one context sentence: about its
    capitalised name spans and its years. They reuse the sentence's entities, not the wording of
    any XQuAD question."""
    out = []
    for name in re.findall(r"\b(?:[A-Z][a-z]+(?:\s+(?:of\s+)?[A-Z][a-z]+)+)\b", sentence):
        out += [f"What is known about {name}?", f"Where does the name {name} come from?"]
    for year in re.findall(r"\b(1[5-9]\d\d|20[0-2]\d)\b", sentence):
        out.append(f"What happened in the year {year}?")
    return out


def distractor_pool(xquad_dir: Path, db_questions: set[str]) -> dict[str, list[str]]:
    """English texts that are not XQuAD questions, by source (deduplicated, DB questions removed)."""
    real = [r["question"] for r in iter_db_records(str(DEMO_PIVOT_DB), dataset="jsonl")]
    real += [q["question"] for q in iter_qa(str(DEMO_QUESTIONS), dataset="jsonl", lang="en")]
    mkqa = REPO.parent / "shared" / "data" / "mkqa" / "mkqa_sample.jsonl.gz"
    if mkqa.exists():
        real += [q["question"] for q in iter_qa(str(mkqa), dataset="mkqa", lang="en")]
    contexts = [p["context"] for a in json.loads((xquad_dir / "xquad.en.json").read_text())["data"]
                for p in a["paragraphs"]]
    sentences = [s for c in contexts for s in split_sentences(c)]
    templated = [q for s in sentences for q in template_questions(s)]
    pool, seen = {}, set(db_questions)
    for name, texts in (("real English questions (demo assets, MKQA sample)", real),
                        ("templated questions from XQuAD English contexts", templated),
                        ("XQuAD English context sentences", sentences)):
        kept = []
        for t in texts:
            if t not in seen:
                seen.add(t)
                kept.append(t)
        pool[name] = kept
    return pool


def group_of(lang: str) -> str:
    """The resource group of a query language (``LANGUAGE_GROUPS``); ``other`` when it has none."""
    return next((name for name, members in LANGUAGE_GROUPS.items() if lang in members), "other")


def group_macros(rows: Mapping[str, Mapping], metrics: Sequence[str]) -> dict[str, dict]:
    """Macro average of each metric over the languages of each resource group present in ``rows``
    (then over all of them, ``all``): ``{group: {"languages": [...], metric: mean}}``.

    A macro is ``None`` when a member has no value for the metric (RM-MIPS without a reranker):
    averaging the members that have one would label a subset as the group.

    >>> group_macros({"de": {"f1": 40.0}, "es": {"f1": 30.0}, "th": {"f1": 10.0}}, ["f1"])
    {'high': {'languages': ['de', 'es'], 'f1': 35.0}, 'low': {'languages': ['th'], 'f1': 10.0}, \
'all': {'languages': ['de', 'es', 'th'], 'f1': 26.67}}
    """
    members: dict[str, list[str]] = {}
    for lang in rows:
        members.setdefault(group_of(lang), []).append(lang)
    order = [g for g in (*LANGUAGE_GROUPS, "other") if g in members]
    out = {}
    for name, langs in [*((g, members[g]) for g in order), ("all", list(rows))]:
        entry: dict = {"languages": langs}
        for metric in metrics:
            values = [rows[lang].get(metric) for lang in langs]
            entry[metric] = None if any(v is None for v in values) else round(sum(values) / len(values), 2)
        out[name] = entry
    return out


def top1(db_vectors: np.ndarray, db_ids: list[str], queries: np.ndarray) -> list[str]:
    return [db_ids[i] for i in np.argmax(queries @ db_vectors.T, axis=1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--xquad", default=str(REPO.parent / "shared" / "data" / "xquad"))
    parser.add_argument("--out", default=str(REPO / "docs" / "results"))
    parser.add_argument("--cache", default=str(REPO / "build" / "xquad_pivot_cache"))
    parser.add_argument("--reranker", default=None, help="hf:<cross-encoder> for RM-MIPS (none offline)")
    parser.add_argument("--translator", default=None, help="hf:<seq2seq> MT fallback (none offline)")
    parser.add_argument("--labels", default=str(DEMO_WIKIDATA_LABELS), help="Wikidata label table")
    parser.add_argument("--distractor-sizes", default="0,100,500,1000,2000,4000")
    parser.add_argument("--limit", type=int, default=None,
                        help="first N questions per language (a quick check; the database stays whole)")
    args = parser.parse_args()
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit: {args.limit} is not a positive number of questions")
    xquad, out, cache = Path(args.xquad), Path(args.out), Path(args.cache)
    started = time.perf_counter()
    encoder = CachedMuse(cache)

    db_records = list(iter_db_records(str(xquad / "xquad.en.json"), dataset="xquad"))
    db_ids = [r["qid"] for r in db_records]
    db_vectors = encoder.embed([r["question"] for r in db_records], "en")
    db_uri = cache / "pivot-db"
    write_database(str(db_uri), db_records, iter([(db_ids, db_vectors)]),
                   encoder={"spec": "muse", "dim": 512, "normalized": True})
    labels = LabelTable.load(args.labels) if args.labels else None
    mt = None
    if args.translator:
        from ray_cora.pivot.translate import HFTranslator

        mt = HFTranslator(args.translator, threads=2)
    db = PivotDatabase.open(str(db_uri))
    pipeline = PivotPipeline(db, encoder, AnswerTranslator(labels, mt), k=10)
    reranked = None
    if args.reranker:
        from ray_cora.pivot.rerank import CrossEncoder

        reranked = PivotPipeline(db, encoder, AnswerTranslator(labels, mt), CrossEncoder(args.reranker, threads=2), k=10)

    gold_by_lang = {}
    rows = {}
    for lang in QUERY_LANGS:
        every = list(iter_qa(str(xquad / f"xquad.{FILE_CODE.get(lang, lang)}.json"), dataset="xquad"))
        assert all(q["lang"] == lang for q in every), lang
        # The oracle column looks up the gold answer of whichever question was matched: all of them.
        gold_by_lang[lang] = {q["qid"]: q["answers"] for q in every}
        questions = every[:args.limit]
        vectors = encoder.embed([q["question"] for q in questions], lang)
        results = pipeline.answer_batch([q["question"] for q in questions], [lang] * len(questions))
        mips = np.mean([r["matched_qid"] == q["qid"] for q, r in zip(questions, results)])
        # The sharded search finds the brute-force best score for every query (which of two
        # identical English questions wins a tie may differ, so scores are compared, not ids).
        position = {qid: i for i, qid in enumerate(db_ids)}
        best = (vectors @ db_vectors.T).max(axis=1)
        found = np.array([vectors[i] @ db_vectors[position[r["matched_qid"]]] for i, r in enumerate(results)])
        assert np.allclose(found, best, atol=1e-5), lang
        rm = None
        if reranked is not None:
            rr = reranked.answer_batch([q["question"] for q in questions], [lang] * len(questions))
            rm = float(np.mean([r["matched_qid"] == q["qid"] for q, r in zip(questions, rr)]))
        e2e = np.mean([f1(r["prediction"], q["answers"], lang, mode="mkqa") for q, r in zip(questions, results)])
        # Upper bound for the answer step: a perfect translation, i.e. the matched English
        # question's own gold answer in this language (XQuAD gives it by the shared id).
        oracle = np.mean([f1(gold_by_lang[lang][r["matched_qid"]][0], q["answers"], lang, mode="mkqa")
                          for q, r in zip(questions, results)])
        rows[lang] = {"group": group_of(lang), "questions": len(questions),
                      "mips_top1": round(100 * float(mips), 1),
                      "rm_mips_top1": None if rm is None else round(100 * rm, 1),
                      "e2e_f1": round(100 * float(e2e), 1), "oracle_translation_f1": round(100 * float(oracle), 1),
                      "translation_sources": dict(Counter(r["translation_source"] for r in results)),
                      "muse_language": lang in MUSE_LANGS, "paper_muse_mips": PAPER_MUSE[lang]}
        print(f"{lang}: MIPS top-1 {rows[lang]['mips_top1']}%, e2e F1 {rows[lang]['e2e_f1']}")

    pool = distractor_pool(xquad, {r["question"] for r in db_records})
    pool_texts = [t for texts in pool.values() for t in texts]
    pool_vectors = encoder.embed(pool_texts, "distractors")
    order = random.Random(0).sample(range(len(pool_texts)), len(pool_texts))
    sizes = sorted({min(int(s), len(pool_texts)) for s in args.distractor_sizes.split(",")} | {len(pool_texts)})
    query_vectors = {}
    growth = {}
    for lang in QUERY_LANGS:
        questions = list(iter_qa(str(xquad / f"xquad.{FILE_CODE.get(lang, lang)}.json"), dataset="xquad"))
        questions = questions[:args.limit]
        query_vectors[lang] = (encoder.encode_queries([q["question"] for q in questions]), [q["qid"] for q in questions])
    for size in sizes:
        chosen = order[:size]
        vectors = np.concatenate([db_vectors, pool_vectors[chosen]]) if size else db_vectors
        ids = db_ids + [f"distractor-{i}" for i in chosen]
        growth[size] = {lang: round(100 * float(np.mean([m == qid for m, qid in zip(top1(vectors, ids, qv), qids)])), 1)
                        for lang, (qv, qids) in query_vectors.items()}
    texts = Counter(r["question"] for r in db_records)
    largest = max(growth)
    for lang, row in rows.items():
        row["mips_top1_distractors"] = growth[largest][lang]
    report = {"database_questions": len(db_records), "encoder": "muse",
              "repeated_english_questions": sum(1 for n in texts.values() if n > 1), "reranker": args.reranker,
              "translator": args.translator, "labels": args.labels, "limit": args.limit, "per_language": rows,
              "language_groups": {"source": GROUP_SOURCE, "groups": {g: list(m) for g, m in LANGUAGE_GROUPS.items()}},
              "group_macros": group_macros(rows, [key for key, _ in METRIC_COLUMNS]),
              "distractors_added": largest,
              "distractor_sources": {k: len(v) for k, v in pool.items()},
              "distractor_growth": {str(k): v for k, v in growth.items()},
              "seconds": round(time.perf_counter() - started, 1)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "xquad_pivot.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    (out / "xquad_pivot.png").write_bytes(growth_figure(growth))
    (out / "xquad_pivot.md").write_text(markdown(report))
    print(f"wrote {out}/xquad_pivot.md, .json, .png in {report['seconds']} s")


def growth_figure(growth: dict[int, dict[str, float]]) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(growth)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for lang in QUERY_LANGS:
        ax.plot([1190 + s for s in sizes], [growth[s][lang] for s in sizes], marker="o", label=lang)
    ax.set_xlabel("database size (1,190 XQuAD English questions + distractors)")
    ax.set_ylabel("MIPS top-1 accuracy (%)")
    ax.set_title("mUSE MIPS on XQuAD as the pivot database grows")
    ax.grid(alpha=0.3)
    ax.legend(ncol=4, fontsize=8)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def markdown(report: dict) -> str:
    """The results page from the JSON report (``per_language``, ``group_macros``, ``distractor_growth``, …)."""
    rows = report["per_language"]
    growth = {int(size): figures for size, figures in report["distractor_growth"].items()}
    largest = max(growth)
    counts = sorted({r["questions"] for r in rows.values()})
    asked = f"{counts[0]:,}" if len(counts) == 1 else "/".join(f"{n:,}" for n in counts)
    distractor_title = f"(a) + {largest:,} distractors"
    lines = [
        "# RM-MIPS pivot on XQuAD",
        "",
        "Regenerate: `python jobs/benchmarks/xquad_pivot.py` (embeddings cached in `build/xquad_pivot_cache`).",
        "",
        f"Database: the {report['database_questions']:,} English XQuAD questions with their answers (pivot database "
        f"format: sharded FAISS index + answer table). Queries: each language's {asked} questions; a match is "
        "correct when the matched English question has the query's id. Encoder: mUSE (`muse`).",
        "",
    ]
    if report.get("limit"):
        lines += [f"**Quick check** (`--limit {report['limit']}`): only the first {report['limit']} questions of each "
                  "language; these figures are not the benchmark's.", ""]
    lines += [
        "| lang | group | mUSE language | (a) MIPS top-1 | " + distractor_title + " | paper MIPS (mUSE, 100k SQuAD "
        "distractors) | (b) RM-MIPS top-1 | (c) end-to-end F1 | F1 with a perfect answer translation "
        "| answers by source |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for lang, r in rows.items():
        sources = ", ".join(f"{k} {v}" for k, v in sorted(r["translation_sources"].items()))
        rm = "n/a (no cross-encoder offline)" if r["rm_mips_top1"] is None else f"{r['rm_mips_top1']}"
        lines.append(f"| {lang} | {r['group']} | {'yes' if r['muse_language'] else '**no**'} | {r['mips_top1']} | "
                     f"{growth[largest][lang]} | {r['paper_muse_mips']} | {rm} | {r['e2e_f1']} | "
                     f"{r['oracle_translation_f1']} | {sources} |")
    titles = [distractor_title if key == "mips_top1_distractors" else title for key, title in METRIC_COLUMNS]
    lines += [
        "",
        "## By resource group",
        "",
        "Macro average (unweighted mean over the group's languages) of each column above. Groups: "
        f"{report['language_groups']['source']}.",
        "",
        "| group | languages | " + " | ".join(titles) + " |",
        "|---|---|" + "---:|" * len(titles),
    ]
    for name, macro in report["group_macros"].items():
        cells = ["n/a" if macro[key] is None else f"{macro[key]:.2f}" for key, _ in METRIC_COLUMNS]
        label = f"**{name}**" if name == "all" else name
        lines.append(f"| {label} | {', '.join(macro['languages'])} | " + " | ".join(cells) + " |")
    sizes = sorted(growth)
    lines += [
        "",
        "## Notes",
        "",
        f"- **Ties**: {report['repeated_english_questions']} English question texts appear twice in XQuAD under "
        "different ids; a query whose best match is such a text ties exactly, and which id wins is arbitrary. (a) "
        "counts the id the sharded index returns, the distractor table below the id of a brute-force argmax, so "
        "the two may differ by 0.1 for a language.",
        "- **vi is not a mUSE language** (mUSE v3 covers ar, de, en, es, fr, it, ja, ko, nl, pl, pt, ru, th, tr, "
        "zh): its questions are embedded by a model that never saw Vietnamese, hence the low figure, as in the "
        "paper (17.8).",
        "- **Resource groups are not the paper's.** The issue asks for the paper's high / medium / low resource "
        "groups, but all that could be read here of Montero et al. (arXiv 2012.14094v1 and the MIA 2022 "
        "version) is their opening (title, abstract, start of the introduction), which speaks of \"lower "
        "resource languages (LRLs)\" without listing them. The groups follow instead the resource classes of "
        "Joshi et al., \"The State and Fate of "
        "Linguistic Diversity and Inclusion in the NLP World\" (ACL 2020, its taxonomy `lang2tax.txt`): class 5 "
        "(ar, de, es, Mandarin zh) = high, class 4 (ru, tr, vi) = medium, classes 0-3 (th: class 3) = low. "
        "The medium macro is pulled down by vi, whose low figure comes from mUSE not covering Vietnamese, not "
        "from its resource class; th, the only low-resource language here, is a mUSE language.",
    ]
    if report["reranker"]:
        lines.append(f"- **(b) RM-MIPS**: the top 10 MIPS candidates reranked by `{report['reranker']}`; (c) and the "
                     "perfect-translation column score the MIPS top-1, not the reranked one.")
    else:
        lines.append("- **(b) RM-MIPS**: no multilingual cross-encoder (the paper's XLM-R large fine-tuned on PAWS-X "
                     "+ QQP) can be loaded offline here, so the column is empty. Pass `--reranker hf:<folder>` (a "
                     "model trained with `ray-cora pivot train-reranker`, or any sequence-classification paraphrase "
                     "model) to fill it.")
    lines += [
        "- **(c) end-to-end F1** (MKQA-style token F1 from `ray_cora.metrics.qa`, character-level for zh and th) "
        "scores the answer as the pipeline returns it. XQuAD answers carry no Wikidata QIDs, and the only label "
        f"table offline is the demo's ({Path(report['labels']).name if report['labels'] else 'none'}: 60 entities), "
        "so almost every answer falls through to the English answer marked `untranslated` (no MT model offline "
        "either; `--translator hf:<seq2seq>` adds one). The counts per source are in the last column. Untranslated "
        "English scores only where the answer is language-neutral (numbers, Latin-script names).",
        "- **F1 with a perfect answer translation** replaces the translation step by the gold answer of the "
        "matched question in the query's language (XQuAD gives it through the shared id): the ceiling the "
        "matching step leaves for a perfect translator.",
        "- **(d) distractors**: the paper adds 100k SQuAD questions, which are not available offline. Instead, "
        "English texts available here, shuffled (seed 0) and added in growing numbers:",
    ]
    for name, count in report["distractor_sources"].items():
        lines.append(f"  - {name}: {count}")
    lines += [
        "  The templated questions (\"What is known about Super Bowl 50?\") and context sentences share the "
        "XQuAD topics, so they are harder distractors per item than random SQuAD questions, but there are "
        "far fewer of them than the paper's 100k; they are not paraphrases of XQuAD questions.",
        "",
        "MIPS top-1 (%) by number of distractors:",
        "",
        "| distractors | " + " | ".join(QUERY_LANGS) + " |",
        "|---:|" + "---:|" * len(QUERY_LANGS),
    ]
    for size in sizes:
        lines.append(f"| {size:,} | " + " | ".join(str(growth[size][l]) for l in QUERY_LANGS) + " |")
    lines += ["", "![MIPS top-1 as the database grows](xquad_pivot.png)", "",
              f"Run time (2-core CPU, warm cache): {report['seconds']} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
