"""Cross-lingual data mining of CORA's Algorithm 1 (pure: no Ray, no models).

One round of mining turns the round's retrieval results and the corpus' language links into
labelled (question, passage) pairs:

- **candidates from retrieval**: the top ``mine_k`` passages retrieved for every training question
  (any language);
- **candidates from language links**: for an English example whose positive passage comes from an
  English article, the passages of the *same entity's* articles in the other corpus languages,
  found through Wikidata sitelinks (``enwiki`` title → QID → ``jawiki`` title → passages); the
  English answer is first translated into each article's language through the answer entity's
  labels (:mod:`ray_cora.pivot.translate`), and articles whose language has no translation are
  dropped and counted (CORA §2.2.2);
- **labels**: mGEN answers the question from that one passage (in the candidate's ``target_lang``);
  the candidate is a positive when the prediction matches a gold (or translated) answer after the
  evaluation scorer's normalisation
  (:func:`label_is_positive`), a negative otherwise;
- ``B_{t+1} = B_t +`` the new pairs, as DPR records (:func:`dpr_records`): mined positives with the
  question's mined negatives as hard negatives, and mined negatives of questions without a mined
  positive beside the positive B_t already has for them;
- **synthetic mGEN data** (CORA A.2, :class:`SyntheticPlan`): English questions answered in up to 10
  of the 15 mining languages through the answer entity's labels, half of them kept, seeded.

Every record here is a plain dict, so the loop can stream them to JSONL and the tests can build
them by hand.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

from ray_cora.metrics.qa import exact_match

SOURCES = ("retrieval", "language_link")


# Wikipedia editions are named by language code, except where one Wikipedia serves several of
# our codes (Chinese in all scripts) or the code differs (Norwegian Bokmål is "no").
_WIKI_OF_LANG = {"zh_cn": "zh", "zh_tw": "zh", "zh_hk": "zh", "nb": "no"}


def wiki_site(lang: str) -> str:
    """The Wikidata sitelink site of a language's Wikipedia.

    >>> wiki_site("ja"), wiki_site("zh_cn")
    ('jawiki', 'zhwiki')
    """
    return f"{_WIKI_OF_LANG.get(lang, lang)}wiki"


def label_is_positive(prediction: str, answers: Sequence[str], lang: str) -> bool:
    """The labelling rule: mGEN's answer from one passage equals a gold answer, compared as the
    XOR-TyDi / CORA scorer compares them (case, punctuation, the counters 年 歳 人 년, MeCab for
    Japanese; that scorer keeps articles).

    >>> label_is_positive("eiffel tower.", ["Eiffel Tower"], "en")
    True
    >>> label_is_positive("Paris", ["Eiffel Tower"], "en")
    False
    """
    golds = [a for a in answers if a and a.strip()]
    if not golds or not prediction or not prediction.strip():
        return False
    return exact_match(prediction, golds, lang, mode="xor") == 1.0


def in_dev_split(qid: str, dev_fraction: float) -> bool:
    """A stable split by question id (every translation of a question lands on the same side).

    >>> in_dev_split("q-1", 0.0), in_dev_split("q-1", 1.0)
    (False, True)
    """
    if dev_fraction <= 0:
        return False
    bucket = int(hashlib.sha256(qid.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF
    return bucket < dev_fraction


def ctx_of(passage: Mapping[str, Any]) -> dict[str, Any]:
    """A passage as a DPR ctx, keeping its id and language (extra fields DPR readers ignore)."""
    return {"title": passage.get("title") or "", "text": passage["text"],
            "passage_id": str(passage["pid"]), "lang": passage.get("lang")}


def initial_examples(questions: Iterable[Mapping[str, Any]], passages: Mapping[str, Mapping[str, Any]], *,
                     same_language_only: bool = True) -> Iterator[dict[str, Any]]:
    """B_1 from QA records with gold passage ids: one DPR record per (question, gold passage).

    ``same_language_only`` keeps the gold passages written in the question's language, the
    supervision CORA starts from (XOR-TyDi's in-language gold paragraphs, NQ's English ones); the
    questions whose evidence is only in other languages are left for mining to find.
    """
    for q in questions:
        if not q.get("answers"):
            continue
        for pid in q.get("gold_pids") or []:
            passage = passages.get(str(pid))
            if passage is None or (same_language_only and passage.get("lang") != q["lang"]):
                continue
            yield {"qid": str(q["qid"]), "lang": q["lang"], "question": q["question"],
                   "answers": list(q["answers"]), "positive_ctxs": [ctx_of(passage)],
                   "negative_ctxs": [], "hard_negative_ctxs": [], "source": "initial"}


def pair_key(record: Mapping[str, Any], ctx: Mapping[str, Any]) -> tuple[str, str, str]:
    return str(record.get("qid", record["question"])), str(record.get("lang", "")), str(ctx.get("passage_id", ""))


def known_pairs(records: Iterable[Mapping[str, Any]]) -> set[tuple[str, str, str]]:
    """(qid, lang, pid) of every positive and hard negative already in the training data."""
    seen = set()
    for record in records:
        for name in ("positive_ctxs", "hard_negative_ctxs"):
            for ctx in record.get(name) or []:
                if ctx.get("passage_id"):
                    seen.add(pair_key(record, ctx))
    return seen


def positive_language_pairs(records: Iterable[Mapping[str, Any]]) -> Counter[tuple[str, str]]:
    """(question language, passage language) → positives, over DPR records with ``lang`` fields; a
    passage without ``lang`` is taken to be in its question's language (DPR's NQ gold paragraphs
    are English Wikipedia's, as CORA's initial in-language supervision is)."""
    pairs: Counter[tuple[str, str]] = Counter()
    for record in records:
        for ctx in record.get("positive_ctxs") or []:
            pairs[(str(record.get("lang")), str(ctx.get("lang") or record.get("lang")))] += 1
    return pairs


def retrieval_candidates(retrieved: Iterable[Mapping[str, Any]], *, mine_k: int,
                         known: set[tuple[str, str, str]]) -> Iterator[dict[str, Any]]:
    """The top ``mine_k`` passages of every retrieved training question not labelled before."""
    for row in retrieved:
        if not row.get("answers"):
            continue
        for ctx in list(row.get("ctxs") or [])[:mine_k]:
            passage = {"pid": ctx["pid"], "lang": ctx.get("lang"), "title": ctx.get("title"), "text": ctx["text"]}
            if (str(row["qid"]), row["lang"], str(ctx["pid"])) in known:
                continue
            yield {"qid": str(row["qid"]), "lang": row["lang"], "question": row["question"],
                   "answers": list(row["answers"]), "passage": passage, "source": "retrieval"}


@dataclass
class LanguageLinks:
    """Wikidata sitelinks: which article of each Wikipedia is about the same entity.

    >>> links = LanguageLinks.from_sitelinks([("Q243", "enwiki", "Eiffel Tower"), ("Q243", "frwiki", "Tour Eiffel")])
    >>> links.linked_titles("en", "Eiffel Tower", ["fr", "ja"])
    {'fr': 'Tour Eiffel'}
    """

    by_qid: dict[str, dict[str, str]] = field(default_factory=dict)  # qid -> site -> title
    qid_of: dict[tuple[str, str], str] = field(default_factory=dict)  # (site, title) -> qid

    @classmethod
    def from_sitelinks(cls, rows: Iterable[tuple[str, str, str]]) -> "LanguageLinks":
        links = cls()
        for qid, site, title in rows:
            links.by_qid.setdefault(qid, {})[site] = title
            links.qid_of.setdefault((site, title), qid)
        return links

    def entity(self, lang: str, title: str) -> str | None:
        return self.qid_of.get((wiki_site(lang), title))

    def linked_titles(self, lang: str, title: str, targets: Sequence[str]) -> dict[str, str]:
        """Titles of the same entity's articles in the ``targets`` languages that have one."""
        qid = self.entity(lang, title)
        if qid is None:
            return {}
        sites = self.by_qid[qid]
        return {t: sites[wiki_site(t)] for t in targets if t != lang and wiki_site(t) in sites}


def _english_positive_titles(record: Mapping[str, Any]) -> Iterator[str]:
    if record.get("lang") != "en":
        return
    for ctx in record.get("positive_ctxs") or []:
        if ctx.get("lang") in (None, "en") and ctx.get("title"):
            yield ctx["title"]


def with_record_defaults(record: Mapping[str, Any], *, lang: str) -> dict[str, Any]:
    """``record`` with ``lang`` where it has none, and a stable ``qid`` from its question where it has
    none: DPR's NQ training records (CORA's initial mDPR data) carry neither, but the dataset is
    English, and mining keys questions by qid. Passages without a ``lang`` are left as they are
    (an English record's positives are taken as English by :func:`english_positive_titles`).

    >>> with_record_defaults({"question": "who wrote faust?", "answers": ["Goethe"]}, lang="en")["lang"]
    'en'
    >>> record = {"question": "q", "lang": "ja", "qid": "7"}
    >>> with_record_defaults(record, lang="en") == record
    True
    """
    out = dict(record)
    if not out.get("lang"):
        out["lang"] = lang
    if out.get("qid") in (None, ""):
        digest = hashlib.sha1(str(out.get("question", "")).encode("utf-8")).hexdigest()[:16]
        out["qid"] = str(out["id"]) if out.get("id") not in (None, "") else f"dpr-{digest}"
    return out


def english_positive_titles(records: Iterable[Mapping[str, Any]]) -> set[str]:
    """Titles of the English articles that English records' positives come from: the articles
    :func:`language_link_requests` looks up."""
    return {title for record in records for title in _english_positive_titles(record)}


def language_link_requests(records: Iterable[Mapping[str, Any]], links: LanguageLinks,
                           target_langs: Sequence[str]) -> Iterator[tuple[dict[str, Any], dict[str, str]]]:
    """For every English record whose positive passage is from an English article: the record and
    ``{lang: title}`` of the same entity's articles in the other languages (deduplicated by qid)."""
    seen: set[tuple[str, str]] = set()
    for record in records:
        for title in _english_positive_titles(record):
            key = (str(record.get("qid")), title)
            if key in seen:
                continue
            seen.add(key)
            linked = links.linked_titles("en", title, target_langs)
            if linked:
                yield dict(record), linked


def language_link_candidates(requests: Iterable[tuple[Mapping[str, Any], Mapping[str, str]]],
                             passages_by_title: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]], *,
                             known: set[tuple[str, str, str]], translate: Any = None,
                             dropped: Counter[str] | None = None) -> Iterator[dict[str, Any]]:
    """Candidates: the passages of the linked articles, for the English question.

    As CORA's §2.2.2 mines them: the English answer is first translated into the article's
    language L through the answer entity's labels (``translate(answer, L)`` → label or None), and a
    passage is later labelled by whether mGEN, asked to answer in L, produces that translated
    answer (``target_lang`` and ``answers``; ``record_answers`` keeps the English ones for the DPR
    record). An article whose language has no translation of any answer (a non-entity answer) gives
    no candidate; ``dropped`` counts them per language. Without ``translate`` the English answer
    is kept and mGEN is asked in English (the earlier behaviour).
    """
    for record, titles in requests:
        for lang, title in titles.items():
            passages = passages_by_title.get((lang, title), ())
            if not passages:
                continue
            answers = list(record["answers"])
            target = "en"
            if translate is not None:
                translated = next((label for label in (translate(a, lang) for a in answers) if label), None)
                if translated is None:
                    if dropped is not None:
                        dropped[lang] += 1
                    continue
                answers, target = [translated], lang
            for passage in passages:
                if (str(record["qid"]), "en", str(passage["pid"])) in known:
                    continue
                yield {"qid": str(record["qid"]), "lang": "en", "target_lang": target, "question": record["question"],
                       "answers": answers, "record_answers": list(record["answers"]), "passage": dict(passage),
                       "source": "language_link"}


def candidate_request(candidate_id: str, candidate: Mapping[str, Any]) -> dict[str, Any]:
    """The retrieval-JSONL row the generate job answers: the question with this one passage."""
    passage = candidate["passage"]
    # The language mGEN answers in: a language-link candidate's article language (its answer is
    # translated), else the question's.
    return {"qid": candidate_id, "lang": candidate.get("target_lang", candidate["lang"]),
            "question": candidate["question"], "answers": candidate["answers"],
            "ctxs": [{"pid": passage["pid"], "lang": passage.get("lang"), "title": passage.get("title") or "",
                      "text": passage["text"], "score": 0.0}]}


@dataclass
class MiningStats:
    """Counts of one mining round, keyed by (question language → passage language) and source."""

    labels: Counter[tuple[str, str, str, bool]] = field(default_factory=Counter)  # (q lang, p lang, source, positive)
    dropped_no_translation: Counter[str] = field(default_factory=Counter)  # link articles per language
    candidates: int = 0

    def add(self, candidate: Mapping[str, Any], positive: bool) -> None:
        self.labels[(candidate["lang"], str(candidate["passage"].get("lang")), candidate["source"], positive)] += 1
        self.candidates += 1

    def count(self, *, pair: tuple[str, str] | None = None, source: str | None = None,
              positive: bool | None = None) -> int:
        return sum(n for (q, p, src, pos), n in self.labels.items()
                   if (pair is None or (q, p) == pair) and (source is None or src == source)
                   and (positive is None or pos == positive))

    def to_dict(self, *, initial_pairs: Iterable[tuple[str, str]] = ()) -> dict[str, Any]:
        initial = set(initial_pairs)
        pairs = sorted({(q, p) for q, p, _, _ in self.labels})
        rows = []
        for pair in pairs:
            row = {"question_lang": pair[0], "passage_lang": pair[1],
                   "positives": self.count(pair=pair, positive=True),
                   "negatives": self.count(pair=pair, positive=False), "new_pair": pair not in initial}
            row["by_source"] = {src: {"positives": self.count(pair=pair, source=src, positive=True),
                                      "negatives": self.count(pair=pair, source=src, positive=False)}
                                for src in SOURCES}
            rows.append(row)
        return {
            "candidates": self.candidates,
            "positives": self.count(positive=True),
            "negatives": self.count(positive=False),
            "by_source": {src: {"positives": self.count(source=src, positive=True),
                                "negatives": self.count(source=src, positive=False)} for src in SOURCES},
            "by_language_pair": rows,
            "new_positive_pairs": sorted(f"{row['question_lang']}->{row['passage_lang']}" for row in rows
                                         if row["positives"] and row["new_pair"]),
            "language_link_dropped_no_translation": dict(sorted(self.dropped_no_translation.items())),
        }


def positives_by_question(records: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The positive passages B_t already has per question, keyed by ``(qid, lang)`` and by
    ``(lang, question text)`` (DPR records from --train get a qid of their own, not the
    questions file's): where a question with mined negatives only finds its positive."""
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        positives = [dict(ctx) for ctx in record.get("positive_ctxs") or []]
        if not positives:
            continue
        lang = str(record.get("lang", ""))
        for key in ((str(record.get("qid", "")), lang), (lang, " ".join(str(record.get("question", "")).split()))):
            found.setdefault(key, []).extend(p for p in positives if p not in found.get(key, []))
    return found


def dpr_records(labelled: Iterable[tuple[Mapping[str, Any], bool]],
                existing_positives: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]] | None = None,
                ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """New DPR records from labelled candidates, and counts of what became of the negatives.

    - One record per mined positive, with the question's mined negatives as its hard negatives.
    - A question with mined negatives only (CORA §2.2.2 adds negatives too): one record with the
      positive B_t already has for it (``existing_positives``, from :func:`positives_by_question`)
      and the new negatives as hard negatives; DPR needs a positive per record, so a question
      without any positive cannot use its negatives (counted as ``negatives_without_positive``).
    """
    existing = existing_positives or {}
    by_question: dict[tuple[str, str], dict[str, Any]] = {}
    for candidate, positive in labelled:
        key = (candidate["qid"], candidate["lang"])
        answers = candidate.get("record_answers", candidate["answers"])  # the question's own answers
        entry = by_question.setdefault(key, {"question": candidate["question"], "answers": answers,
                                             "positives": [], "negatives": [], "sources": []})
        (entry["positives"] if positive else entry["negatives"]).append(ctx_of(candidate["passage"]))
        if positive:
            entry["sources"].append(candidate["source"])
    out: list[dict[str, Any]] = []
    counts = {"records_with_mined_positive": 0, "records_with_mined_negatives_only": 0,
              "negatives_without_positive": 0}
    for (qid, lang), entry in by_question.items():
        base = {"qid": qid, "lang": lang, "question": entry["question"], "answers": entry["answers"],
                "negative_ctxs": [], "hard_negative_ctxs": entry["negatives"]}
        for ctx, source in zip(entry["positives"], entry["sources"]):
            out.append({**base, "positive_ctxs": [ctx], "source": f"mined:{source}"})
            counts["records_with_mined_positive"] += 1
        if entry["positives"] or not entry["negatives"]:
            continue
        known = existing.get((qid, lang)) or existing.get((lang, " ".join(entry["question"].split())))
        if known:
            out.append({**base, "positive_ctxs": [dict(known[0])], "source": "mined:negatives"})
            counts["records_with_mined_negatives_only"] += 1
        else:
            counts["negatives_without_positive"] += len(entry["negatives"])
    return out, counts


def _draw(seed: int, *parts: Any) -> random.Random:
    """A generator seeded by ``seed`` and ``parts`` alone: the same draw on every run and machine."""
    text = ":".join(str(p) for p in (seed, *parts))
    return random.Random(int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:16], 16))


@dataclass
class SyntheticPlan:
    """Which (English question, language) pairs become synthetic mGEN examples (CORA A.2).

    Per English question, at most ``max_langs`` of ``langs`` are sampled (seeded by question id);
    a sampled language whose answer entity has a label there is a *candidate*; then exactly
    ``round(keep_fraction × candidates)`` candidates are kept, drawn with ``seed``. Build it with
    :meth:`from_rows` (one pass over the rows), then :meth:`examples` (a second pass) writes them.
    """

    kept: dict[tuple[str, str], str]  # (qid, lang) -> translated answer
    stats: dict[str, Any]

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]], translate: Any, langs: Sequence[str], *,
                  max_langs: int = 10, keep_fraction: float = 0.5, seed: int = 0) -> "SyntheticPlan":
        targets = [lang for lang in dict.fromkeys(langs) if lang != "en"]
        candidates: list[tuple[tuple[str, str], str]] = []
        sampled: Counter[str] = Counter()
        untranslated: Counter[str] = Counter()
        questions = 0
        for row in rows:
            if row.get("lang") != "en" or not row.get("answers"):
                continue
            questions += 1
            qid = str(row["qid"])
            for lang in _draw(seed, "langs", qid).sample(targets, min(max_langs, len(targets))):
                sampled[lang] += 1
                label = next((t for t in (translate(a, lang) for a in row["answers"]) if t), None)
                if label:
                    candidates.append(((qid, lang), label))
                else:
                    untranslated[lang] += 1
        keep = round(keep_fraction * len(candidates))
        chosen = sorted(_draw(seed, "subsample").sample(range(len(candidates)), keep))
        kept = dict(candidates[i] for i in chosen)
        kept_per_lang = Counter(lang for _, lang in kept)
        per_language = {lang: {"sampled": sampled[lang], "no_translation": untranslated[lang],
                               "candidates": sampled[lang] - untranslated[lang], "kept": kept_per_lang[lang]}
                        for lang in targets if sampled[lang]}
        stats = {"english_questions": questions, "languages": targets, "max_langs": max_langs,
                 "keep_fraction": keep_fraction, "seed": seed, "sampled": sum(sampled.values()),
                 "candidates": len(candidates), "kept": len(kept), "per_language": per_language}
        return cls(kept, stats)

    def examples(self, rows: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
        """The kept examples: the English question and its retrieved (English-question) passages,
        answered in the sampled language; the language tag makes mGEN answer in it."""
        by_qid: dict[str, list[tuple[str, str]]] = {}
        for (qid, lang), label in self.kept.items():
            by_qid.setdefault(qid, []).append((lang, label))
        for row in rows:
            if row.get("lang") != "en":
                continue
            qid = str(row["qid"])
            for lang, label in by_qid.get(qid, ()):
                yield {"qid": f"{qid}@{lang}", "lang": lang, "question": row["question"],
                       "answers": [label], "ctxs": list(row.get("ctxs") or []), "synthetic": True}


def mgen_phases(epochs: int, switch_epoch: int, has_synthetic: bool) -> list[tuple[bool, int]]:
    """``(with_synthetic, epochs)`` per mGEN training run: the translated-answer examples join after
    ``switch_epoch`` epochs (CORA: 3), so training is split in two runs, the second continuing from
    the first's model.

    >>> mgen_phases(5, 3, True), mgen_phases(5, 0, True), mgen_phases(2, 3, True), mgen_phases(5, 3, False)
    ([(False, 3), (True, 2)], [(True, 5)], [(False, 2)], [(False, 5)])
    """
    if not has_synthetic or switch_epoch >= epochs:
        return [(False, epochs)]
    if switch_epoch == 0:
        return [(True, epochs)]
    return [(False, switch_epoch), (True, epochs - switch_epoch)]
