"""``ray-cora tune fusion``: learn the hybrid retriever's fusion per question language from two dev
retrieval outputs (dense and BM25) with gold passages, and write ``fusion.json`` beside an index
(the fusion math and its tuning are :mod:`ray_cora.index.fusion`)."""

from __future__ import annotations

from ray_cora import storage
from ray_cora.configs.fusion import TuneFusionConfig
from ray_cora.data.retrieval import iter_retrieval
from ray_cora.errors import BadRecordError, ConfigError
from ray_cora.index.fusion import (CROSS_LINGUAL_DEFAULT, FUSION_FILE, FusionGrid, FusionQuestion, evaluate_setting, tune_setting,
                                   tune_weights)
from ray_cora.languages import normalize_lang

Key = tuple[str, str]


def ranked_lists(uri: str) -> dict[Key, tuple[list[tuple[str, float]], frozenset[str]]]:
    """(qid, lang) → (``[(pid, score), …]`` best first, gold pids) of every record of a retrieval
    output. A context without a score gets ``-rank`` (only RRF and rank normalisation use ranks)."""
    out: dict[Key, tuple[list[tuple[str, float]], frozenset[str]]] = {}
    for source, line, record in iter_retrieval(uri):
        try:
            lang = normalize_lang(record["lang"])
        except ConfigError as exc:
            raise BadRecordError(source, line, f"field 'lang': {exc}",
                                 hint="use a code of ray_cora/languages.py") from None
        key = (str(record["qid"]), lang)
        if key in out:
            raise BadRecordError(source, line, f"question {key[0]!r} ({lang}) appears twice",
                                 hint="give one retrieval record per question")
        hits = [(c["pid"], float(c["score"]) if isinstance(c.get("score"), (int, float)) else -float(r))
                for r, c in enumerate(record["ctxs"], start=1)]
        out[key] = (hits, frozenset(record.get("gold_pids") or ()))
    if not out:
        raise ConfigError(f"{uri}: no retrieval records")
    return out


def paired_questions(dense: str, lexical: str) -> dict[str, list[FusionQuestion]]:
    """Per language, the labelled questions present in both outputs (gold from either file)."""
    d, b = ranked_lists(dense), ranked_lists(lexical)
    missing = sorted(set(d) - set(b))
    if missing:
        qid, lang = missing[0]
        raise ConfigError(f"{lexical}: has no record for question {qid!r} ({lang}) of {dense} "
                          f"({len(missing)} missing): run both retrievers on the same dev questions")
    by_lang: dict[str, list[FusionQuestion]] = {}
    for key in sorted(d):
        gold = d[key][1] | b[key][1]
        if gold:
            by_lang.setdefault(key[1], []).append(FusionQuestion(d[key][0], b[key][0], gold))
    if not by_lang:
        raise ConfigError(f"{dense}: no record has 'gold_pids', so there is nothing to tune on: retrieve "
                          "for a dev set with gold passages (e.g. --dataset xquad)")
    return by_lang


def grid_of(config: TuneFusionConfig) -> FusionGrid:
    steps = int(round(1 / config.weight_step))
    weights = tuple(sorted({*(round(min(i * config.weight_step, 1.0), 4) for i in range(steps + 1)), 0.0, 1.0}))
    return FusionGrid(weights=weights, methods=tuple(config.methods), rrf_ks=tuple(config.rrf_ks),
                      normalizations=tuple(config.normalizations), depth=config.depth)


def tune_fusion(config: TuneFusionConfig) -> dict:
    grid = grid_of(config)
    by_lang = paired_questions(config.dense, config.bm25)
    no_lexical = CROSS_LINGUAL_DEFAULT if config.cross_lingual else None
    if config.neutral and config.cross_lingual:
        pooled = [q for qs in paired_questions(config.dense, config.neutral).values() for q in qs]
        no_lexical = tune_setting(pooled, grid, rule="cross-lingual")[0]
    weights = tune_weights(by_lang, grid, min_dev_questions=config.min_dev_questions, no_lexical=no_lexical)
    print(f"tune fusion: {sum(map(len, by_lang.values()))} labelled dev questions in {len(by_lang)} languages")
    print("| lang | dev questions | setting | gold@1 | gold@10 |")
    print("|---|---:|---|---:|---:|")
    for lang, qs in sorted(by_lang.items()):
        setting = weights.setting_for(lang)
        score = evaluate_setting(qs, setting)
        print(f"| {lang} | {len(qs)} | {setting.rule}: {setting.describe()} | {score['gold@1']:.1f} | "
              f"{score['gold@10']:.1f} |")
    print(f"fallback (no or too few dev questions): {weights.fallback.rule}: {weights.fallback.describe()}")
    print("no lexical index: " + (f"{no_lexical.describe()} over language-neutral terms" if no_lexical
                                  else "the dense list alone"))
    data = weights.to_json()
    summary = {"weights": weights.to_dict(), "questions": {l: len(q) for l, q in sorted(by_lang.items())}}
    if config.dry_run:
        print("dry run: nothing written")
    elif config.index:
        artifact = storage.Artifact(config.index)
        artifact.amend({FUSION_FILE: data}, {"fusion": {
            "path": FUSION_FILE, "version": weights.version, "objective": weights.objective,
            "languages": sorted(weights.languages)}})
        summary["written"] = artifact.location(FUSION_FILE).uri
    else:
        storage.write_bytes(config.out, data)
        summary["written"] = storage.resolve(config.out).uri
    if "written" in summary:
        print(f"wrote {summary['written']}")
    return summary
