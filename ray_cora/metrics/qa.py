"""Answer scoring exactly as the official scorers do it (pure Python, no Ray).

Two modes, each mirroring one published script rule by rule:

``xor`` — the XOR-TyDi QA / CORA scorer (AkariAsai/XORQA ``evals/eval_xor_full.py``):

- normalisation: lower-case, drop ASCII punctuation (``string.punctuation``), drop the counter
  characters 年 歳 人 년, collapse whitespace. The script does *not* remove English articles.
- Japanese only: prediction and golds are segmented by MeCab ``-Owakati`` first (the prediction
  after ``・`` → space and ``、`` → ``,``). Chinese, Thai, Khmer are whitespace-split as written
  (an unspaced answer is one token), as in the script.
- F1 / EM: SQuAD token overlap, max over the gold answers; an empty overlap scores 0.
- BLEU: NLTK ``sentence_bleu(golds, prediction)`` with its defaults (4-gram, uniform weights, no
  smoothing) on the *raw* prediction string against the (for ja: MeCab-segmented) gold strings —
  NLTK iterates strings, so this is a character n-gram BLEU, exactly what the script computes.
- per language: sum / count, a missing prediction counting 0; the average is over languages.

``mkqa`` — the official MKQA scorer (apple/ml-mkqa ``mkqa_eval.py`` + ``mkqa_eval_util.py``):

- normalisation: lower-case, drop ASCII punctuation, replace the language's articles
  (:data:`MKQA_ARTICLES`, the script's regex table) by a space, then tokenise: for
  ``zh_cn, zh_hk, zh_tw, ja, th, km`` every non-space character is a token (the script's
  ``mixed_segmentation`` never buffers a run, so Latin letters and digits are single-character
  tokens too), otherwise whitespace split.
- golds: every answer text (``None`` → ``""``: No Answer) and all its aliases; a question whose
  only gold is ``""`` is unanswerable. F1 is 1 when prediction and gold are both empty, 0 when
  only one is; the prediction text is ``binary_answer`` (yes/no) when given, else ``prediction``.
- summaries: the default-threshold figures (``f1``, ``em``, answerable / unanswerable split) and
  the best-threshold ones over ``no_answer_prob`` (``best_f1`` …), each rounded to 2 decimals
  per language, the macro average being the rounded mean of the rounded per-language values.

>>> f1("東京都", ["東京"], "zh_cn", mode="mkqa")
0.8
>>> exact_match("the Beatles!", ["Beatles"], "en", mode="mkqa")
1.0
"""

from __future__ import annotations

import math
import re
import string
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ray_cora.errors import ConfigError

__all__ = [
    "MIXED_SEGMENTATION_LANGS",
    "MKQA_ARTICLES",
    "MODES",
    "Prediction",
    "XOR_COUNTERS",
    "exact_match",
    "f1",
    "mkqa_tokens",
    "normalize_mkqa",
    "normalize_xor",
    "sacrebleu_tokenizer",
    "score_predictions",
    "xor_bleu",
]

MODES: tuple[str, ...] = ("xor", "mkqa")
XOR_COUNTERS: tuple[str, ...] = ("年", "歳", "人", "년")
MIXED_SEGMENTATION_LANGS: frozenset[str] = frozenset({"zh_cn", "zh_hk", "zh_tw", "ja", "th", "km"})

# The MKQA scorer's article table, verbatim in meaning: note that fr and it have no closing \b
# (so "lemon" loses its "le"), and ar removes every "ال", wherever it is.
MKQA_ARTICLES: dict[str, str] = {
    "en": r"\b(a|an|the)\b",
    "es": r"\b(un|una|unos|unas|el|la|los|las)\b",
    "vi": r"\b(của|là|cái|chiếc|những)\b",
    "de": r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b",
    "ar": r"\sال^|ال",
    "nl": r"\b(de|het|een|des|der|den)\b",
    "sv": r"\b(en|ett)\b",
    "da": r"\b(en|et)\b",
    "no": r"\b(en|et|ei)\b",
    "fr": r"\b(le|la|l'|les|du|de|d'|des|un|une|des)",
    "pt": r"\b(o|a|os|as|um|uma|uns|umas)\b",
    "it": r"\b(il|lo|la|l'|i|gli|le|del|dello|della|dell'|dei|degli|degl'|delle|un'|uno|una|un)",
    "fi": r"\b(se|yks|yksi)\b",
    "hu": r"\b(a|az|egy)\b",
}
_ARTICLE_RE = {lang: re.compile(pattern) for lang, pattern in MKQA_ARTICLES.items()}
_PUNCTUATION = frozenset(string.punctuation)


@dataclass(frozen=True)
class Prediction:
    """One system answer. ``binary_answer`` ("yes"/"no") wins over ``prediction`` in mkqa mode;
    ``no_answer_prob`` only moves the mkqa best-threshold figures.

    >>> Prediction("Paris", binary_answer="YES").text
    'yes'
    """

    prediction: str
    binary_answer: str | None = None
    no_answer_prob: float = 0.0

    @property
    def text(self) -> str:
        return (self.binary_answer or "").lower() or self.prediction


# --- normalisation -----------------------------------------------------------------------------


def _strip_punctuation(text: str) -> str:
    return "".join(ch for ch in text if ch not in _PUNCTUATION)


def normalize_xor(text: str) -> str:
    """XOR-TyDi normalisation (no tokenisation; see :func:`_xor_segment` for Japanese).

    >>> normalize_xor("  The 1990年, (Tokyo)! ")
    'the 1990 tokyo'
    """
    text = _strip_punctuation(text.lower())
    for counter in XOR_COUNTERS:
        text = text.replace(counter, "")
    return " ".join(text.split())


def mkqa_tokens(text: str, lang: str) -> list[str]:
    """MKQA-normalised tokens of ``text`` in language ``lang``.

    >>> mkqa_tokens("Die Ärzte", "de"), mkqa_tokens("東京 Tower", "ja")
    (['ärzte'], ['東', '京', 't', 'o', 'w', 'e', 'r'])
    """
    text = _strip_punctuation(text.lower())
    article = _ARTICLE_RE.get(lang)
    if article is not None:
        text = article.sub(" ", text)
    if lang in MIXED_SEGMENTATION_LANGS:
        return [ch for ch in text if ch.strip()]
    return text.split()


def normalize_mkqa(text: str, lang: str) -> str:
    """MKQA normalisation as one string (tokens joined by a space), what its EM compares."""
    return " ".join(mkqa_tokens(text, lang))


@lru_cache(maxsize=1)
def _wakati():
    try:
        import MeCab
    except ImportError:
        raise ConfigError("xor-mode scoring of Japanese needs MeCab: pip install 'ray-cora[eval]' "
                          "(mecab-python3 and unidic-lite)") from None
    try:
        return MeCab.Tagger("-Owakati")
    except RuntimeError as exc:
        raise ConfigError(f"MeCab could not start ({exc}); install a dictionary: "
                          "pip install unidic-lite") from None


def _xor_segment(text: str, lang: str, *, is_prediction: bool) -> str:
    """The string the XOR scorer normalises: MeCab ``-Owakati`` output for Japanese."""
    if lang != "ja":
        return text
    if is_prediction:
        text = text.replace("・", " ").replace("、", ",")
    return _wakati().parse(text)


# --- per-answer scores -------------------------------------------------------------------------


def _golds(answers: str | Sequence[str]) -> list[str]:
    if isinstance(answers, str):
        return [answers]
    return list(dict.fromkeys(a if isinstance(a, str) else "" for a in answers)) or [""]


def _xor_f1_one(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _mkqa_f1_one(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)  # No Answer agrees only with No Answer
    return _xor_f1_one(pred_tokens, gold_tokens)


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"unknown scoring mode {mode!r}; accepted: {', '.join(MODES)}")
    return mode


def f1(prediction: str, answers: str | Sequence[str], lang: str, mode: str = "xor") -> float:
    """Token F1 (0..1) of ``prediction`` against the best of ``answers``, as the ``mode``'s
    official scorer computes it (an empty ``answers`` list means No Answer).

    >>> f1("Barack Obama", ["Obama"], "en")
    0.6666666666666666
    """
    _check_mode(mode)
    golds = _golds(answers)
    if mode == "xor":
        pred = normalize_xor(_xor_segment(prediction, lang, is_prediction=True)).split()
        return max(_xor_f1_one(pred, normalize_xor(_xor_segment(g, lang, is_prediction=False)).split())
                   for g in golds)
    pred = mkqa_tokens(prediction, lang) if prediction else []
    return max(_mkqa_f1_one(pred, mkqa_tokens(g, lang) if g else []) for g in golds)


def exact_match(prediction: str, answers: str | Sequence[str], lang: str, mode: str = "xor") -> float:
    """1.0 when the normalised ``prediction`` equals a normalised answer, else 0.0.

    >>> exact_match("Tokyo.", ["tokyo"], "en"), exact_match("the Tokyo", ["Tokyo"], "en")
    (1.0, 0.0)
    """
    _check_mode(mode)
    golds = _golds(answers)
    if mode == "xor":
        pred = normalize_xor(_xor_segment(prediction, lang, is_prediction=True))
        return float(any(pred == normalize_xor(_xor_segment(g, lang, is_prediction=False))
                         for g in golds))
    pred = normalize_mkqa(prediction, lang)
    return float(any(pred == normalize_mkqa(g, lang) for g in golds))


def xor_bleu(prediction: str, answers: str | Sequence[str], lang: str) -> float:
    """The XOR scorer's BLEU (0..1): NLTK ``sentence_bleu`` of the raw prediction string against
    the gold strings (MeCab-segmented for Japanese), default weights, no smoothing — character
    n-grams, since NLTK iterates the strings.

    >>> round(xor_bleu("Barack Obama", ["Barack Obama"], "en"), 6)
    1.0
    """
    from nltk.translate.bleu_score import sentence_bleu

    references = [_xor_segment(g, lang, is_prediction=False) for g in _golds(answers)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NLTK warns on every zero n-gram count
        return float(sentence_bleu(references, prediction))


# --- corpus-level extra: sacreBLEU -------------------------------------------------------------


def sacrebleu_tokenizer(lang: str) -> str:
    """The sacreBLEU tokenizer used for ``lang`` (offline ones only: no MeCab dictionary download).

    >>> sacrebleu_tokenizer("zh_tw"), sacrebleu_tokenizer("th"), sacrebleu_tokenizer("de")
    ('zh', 'char', '13a')
    """
    if lang.startswith("zh_"):
        return "zh"
    if lang in ("ja", "th", "km", "lo", "my"):
        return "char"
    return "13a"


def _sacrebleu(hypotheses: list[str], references: list[list[str]], lang: str) -> float | None:
    if not hypotheses:
        return None
    from sacrebleu.metrics import BLEU

    width = max(len(r) for r in references)
    streams = [[r[i] if i < len(r) else None for r in references] for i in range(width)]
    return float(BLEU(tokenize=sacrebleu_tokenizer(lang)).corpus_score(hypotheses, streams).score)


# --- aggregation -------------------------------------------------------------------------------


def _mean_pct(values: Iterable[float]) -> float | None:
    values = list(values)
    return 100.0 * math.fsum(values) / len(values) if values else None


def _round2(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _mkqa_best_threshold(rows: list[dict[str, Any]], order: list[int]) -> dict[str, float | None]:
    """The MKQA scorer's threshold search: start with every answer suppressed (all unanswerable
    right), release predictions in increasing ``no_answer_prob``, keep the best running F1;
    then suppress answers whose probability is above that threshold."""
    best_threshold = 0.0
    current = best = float(sum(1 for r in rows if not r["answerable"]))
    for i in order:
        row = rows[i]
        if row["answerable"]:
            current += row["f1"]
        elif row["answered"]:
            current -= 1
        if current > best:
            best, best_threshold = current, row["no_answer_prob"]

    def thresholded(key: str, subset: list[dict[str, Any]]) -> float | None:
        return _mean_pct(float(not r["answerable"]) if r["no_answer_prob"] > best_threshold else r[key]
                         for r in subset)

    answerable = [r for r in rows if r["answerable"]]
    unanswerable = [r for r in rows if not r["answerable"]]
    return {
        "best_em": _round2(thresholded("em", rows)),
        "best_f1": _round2(100.0 * best / len(rows)),
        "best_answerable_em": _round2(thresholded("em", answerable)),
        "best_answerable_f1": _round2(thresholded("f1", answerable)),
        "best_unanswerable_em": _round2(thresholded("em", unanswerable)),
        "best_f1_threshold": _round2(best_threshold),
    }


def _as_prediction(value: Any) -> Prediction:
    if isinstance(value, Prediction):
        return value
    if isinstance(value, str):
        return Prediction(value)
    if value is None:
        return Prediction("")
    raise TypeError(f"a prediction must be a str or Prediction, got {type(value).__name__}")


def score_rows(
    gold_rows: Iterable[dict], predictions: Mapping[tuple[str, str], Any], *, mode: str
) -> Iterator[dict[str, Any]]:
    """Score each gold row; yields ``{qid, lang, prediction, f1, em, bleu, missing, answerable,
    answered, no_answer_prob, answers}`` (scores 0..1; ``bleu`` None in mkqa mode)."""
    _check_mode(mode)
    for row in gold_rows:
        qid, lang = str(row["qid"]), row["lang"]
        golds = _golds(row.get("answers") or [])
        answerable = golds != [""]
        value = predictions.get((qid, lang))
        missing = value is None
        pred = Prediction("") if missing else _as_prediction(value)
        text = pred.text if mode == "mkqa" else pred.prediction
        if missing:
            scores = {"f1": 0.0, "em": 0.0, "bleu": 0.0 if mode == "xor" else None}
        else:
            scores = {"f1": f1(text, golds, lang, mode), "em": exact_match(text, golds, lang, mode),
                      "bleu": xor_bleu(text, golds, lang) if mode == "xor" else None}
        yield {"qid": qid, "lang": lang, "prediction": None if missing else text, **scores,
               "missing": missing, "answerable": answerable, "answered": missing or bool(text),
               "no_answer_prob": float(pred.no_answer_prob), "answers": golds}


def score_predictions(
    gold_rows: Iterable[dict],
    predictions: Mapping[tuple[str, str], str | Prediction],
    *,
    mode: str,
    sacrebleu: bool = True,
    per_question: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Score ``predictions`` (keyed by ``(qid, lang)``) against gold rows from
    :func:`ray_cora.data.qa.iter_qa`; returns the ``metrics.json`` layout, scores in percent::

        {"mode", "per_language": {lang: {"count", "f1", "em", "bleu", "sacrebleu", ...}},
         "macro": {"f1", "em", "bleu", "sacrebleu", ...}, "missing": {...}, "unknown": {...},
         "skipped_no_answer": int}

    A gold row without a prediction scores 0 and is listed under ``missing``; a prediction
    without a gold row is listed under ``unknown``. In xor mode rows without any gold answer are
    skipped (the XOR scorer has none; counted in ``skipped_no_answer``). ``per_question``, when
    given, receives every scored row.

    >>> m = score_predictions([{"qid": "1", "lang": "en", "answers": ["Paris"]}],
    ...                       {("1", "en"): "Paris"}, mode="mkqa", sacrebleu=False)
    >>> m["per_language"]["en"]["f1"], m["macro"]["f1"]
    (100.0, 100.0)
    """
    _check_mode(mode)
    by_lang: dict[str, list[dict[str, Any]]] = defaultdict(list)
    seen: set[tuple[str, str]] = set()
    skipped = 0
    rows_in = []
    for row in gold_rows:
        key = (str(row["qid"]), row["lang"])
        if key in seen:
            raise ConfigError(f"gold has question {key[0]!r} in language {key[1]!r} twice; "
                              "each (qid, lang) must be unique")
        seen.add(key)
        if mode == "xor" and not any(a for a in row.get("answers") or []):
            skipped += 1
            continue
        rows_in.append(row)
    for scored in score_rows(rows_in, predictions, mode=mode):
        by_lang[scored["lang"]].append(scored)
        if per_question is not None:
            per_question.append(scored)

    order_of = {key: i for i, key in enumerate(predictions)}  # the prediction file's order
    per_language: dict[str, dict[str, Any]] = {}
    for lang, rows in by_lang.items():
        stats: dict[str, Any] = {"count": len(rows), "missing": sum(r["missing"] for r in rows)}
        if mode == "xor":
            stats |= {"f1": _mean_pct(r["f1"] for r in rows), "em": _mean_pct(r["em"] for r in rows),
                      "bleu": _mean_pct(r["bleu"] for r in rows)}
        else:
            answerable = [r for r in rows if r["answerable"]]
            unanswerable = [r for r in rows if not r["answerable"]]
            order = sorted(range(len(rows)), key=lambda i: (rows[i]["no_answer_prob"],
                                                            order_of.get((rows[i]["qid"], lang), len(order_of))))
            stats |= {
                "f1": _round2(_mean_pct(r["f1"] for r in rows)),
                "em": _round2(_mean_pct(r["em"] for r in rows)),
                "bleu": None,
                "answerable_count": len(answerable),
                "unanswerable_count": len(unanswerable),
                "answerable_f1": _round2(_mean_pct(r["f1"] for r in answerable)),
                "answerable_em": _round2(_mean_pct(r["em"] for r in answerable)),
                "unanswerable_em": _round2(_mean_pct(r["em"] for r in unanswerable)),
                **_mkqa_best_threshold(rows, order),
            }
        if sacrebleu:
            stats["sacrebleu"] = _sacrebleu([r["prediction"] or "" for r in rows],
                                            [[a for a in r["answers"]] for r in rows], lang)
            stats["sacrebleu_tokenize"] = sacrebleu_tokenizer(lang)
        per_language[lang] = stats

    macro: dict[str, Any] = {}
    numeric = [k for k in (next(iter(per_language.values()), {})) if k not in ("sacrebleu_tokenize",)]
    for key in numeric:
        values = [s[key] for s in per_language.values() if isinstance(s.get(key), (int, float))]
        if key in ("count", "missing", "answerable_count", "unanswerable_count"):
            macro[key] = sum(values)
        elif values:
            mean = math.fsum(values) / len(values)
            macro[key] = round(mean, 2) if mode == "mkqa" else mean
        else:
            macro[key] = None
    missing_keys = [(r["qid"], r["lang"]) for rows in by_lang.values() for r in rows if r["missing"]]
    unknown_keys = [key for key in predictions if key not in seen]
    return {
        "mode": mode,
        "per_language": dict(sorted(per_language.items())),
        "macro": macro,
        "languages": sorted(per_language),
        "missing": _key_summary(missing_keys),
        "unknown": _key_summary(unknown_keys),
        "skipped_no_answer": skipped,
    }


def _key_summary(keys: list[tuple[str, str]], limit: int = 100) -> dict[str, Any]:
    by_lang = Counter(lang for _, lang in keys)
    return {"count": len(keys), "by_language": dict(sorted(by_lang.items())),
            "examples": [{"qid": q, "lang": lang} for q, lang in keys[:limit]]}
