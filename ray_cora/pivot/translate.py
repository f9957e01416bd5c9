"""Translating an English answer into the question's language, with four fallbacks in order:

1. ``wikidata_qid``: the answer carries a Wikidata QID → that entity's label in the target language;
2. ``wikidata_en_match``: no QID (or no label for it) → the English answer matched against English
   labels, then aliases → QID → its target-language label;
3. ``mt``: a machine-translation model (``hf:`` seq2seq, Marian/M2M-style) that covers the language;
4. ``untranslated``: the English answer itself, marked as such.

An English question gets the English answer (source ``english``).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from ray_cora import storage
from ray_cora.data.wikidata import iter_entities, iter_label_parts
from ray_cora.encoders.hf import parse_spec
from ray_cora.errors import ConfigError
from ray_cora.languages import LANGUAGES, normalize_lang
from ray_cora.models.hf import load_hf_model

# torch / transformers are imported inside the functions that use them (3.4 s + 2.0 s cold here):
# label-only translation (no MT model) must not load them.

SOURCES = ("english", "wikidata_qid", "wikidata_en_match", "mt", "untranslated")


def normalize_label(text: str) -> str:
    """Key for matching an English answer to labels: NFKC, case-folded, punctuation and a leading
    article dropped, spaces collapsed.

    >>> normalize_label("The  Eiffel Tower.")
    'eiffel tower'
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    text = " ".join(text.split())
    return re.sub(r"^(the|a|an) ", "", text)


@dataclass
class LabelTable:
    """Wikidata labels per (QID, language) and an index from English labels/aliases to QIDs.

    >>> t = LabelTable.from_entities([{"qid": "Q90", "labels": {"en": "Paris", "ja": "パリ"},
    ...                                "aliases": {"en": ["City of Light"]}}])
    >>> t.label("Q90", "ja"), t.match_english("city of light")
    ('パリ', 'Q90')
    """

    labels: dict[tuple[str, str], str] = field(default_factory=dict)
    english: dict[str, str] = field(default_factory=dict)  # normalized label -> qid (labels win)

    @classmethod
    def from_entities(cls, entities: Iterable[dict[str, Any]]) -> "LabelTable":
        table = cls()
        aliases: list[tuple[str, str]] = []
        for ent in entities:
            for lang, label in (ent.get("labels") or {}).items():
                if label:
                    table.labels[(ent["qid"], lang)] = label
                    if lang == "en":
                        table.english.setdefault(normalize_label(label), ent["qid"])
            aliases.extend((alias, ent["qid"]) for alias in (ent.get("aliases") or {}).get("en", []))
        for alias, qid in aliases:  # after every label, so a label is never shadowed by an alias
            table.english.setdefault(normalize_label(alias), qid)
        return table

    @classmethod
    def load(cls, uri: str, *, answers: Iterable[str] | None = None,
             qids: Iterable[str] | None = None) -> "LabelTable":
        """From the output of ``ray-cora wikidata labels`` (a folder with manifest.json), or a
        JSONL file of entities (dump lines, or the demo's ``wikidata_labels.jsonl``).

        With ``answers`` (English answer strings) or ``qids``, only the entities that can serve
        them are kept: those QIDs and the entities with an English label or alias matching an
        answer. That is what a pivot database needs from a full Wikidata table (~100M entities,
        far more than memory as Python dicts); the folder is then read one part at a time.
        """
        keep_qids = None if answers is None and qids is None else {q for q in (qids or ()) if q}
        answers = [a for a in answers or () if a]
        wanted = {normalize_label(a) for a in answers} if answers else None
        loc = storage.resolve(uri)
        if loc.join(storage.MANIFEST_NAME).is_file():
            folded = _folded_answers(answers) if answers else None
            entities: dict[str, dict[str, Any]] = {}
            for part in iter_label_parts(uri):
                if keep_qids is not None:
                    part = part.filter(_part_mask(part, keep_qids, folded))
                for row in part.to_pylist():
                    ent = entities.setdefault(row["qid"], {"qid": row["qid"], "labels": {}, "aliases": {}})
                    if row["label"]:
                        ent["labels"][row["lang"]] = row["label"]
                    if row["aliases"]:
                        ent["aliases"][row["lang"]] = row["aliases"]
            return cls.from_entities(entities.values())

        with storage.open_input(loc) as stream:
            lines = enumerate(storage.iter_lines(stream), start=1)
            entities_iter = (e.__dict__ for e in iter_entities(lines, source=uri, langs=list(LANGUAGES)))
            if keep_qids is not None:
                entities_iter = (e for e in entities_iter if e["qid"] in keep_qids
                                 or (wanted is not None and _matches_english(e, wanted)))
            return cls.from_entities(entities_iter)

    def label(self, qid: str, lang: str) -> str | None:
        return self.labels.get((qid, lang))

    def match_english(self, answer: str) -> str | None:
        return self.english.get(normalize_label(answer))


def _matches_english(entity: dict[str, Any], wanted: set[str]) -> bool:
    names = [(entity.get("labels") or {}).get("en") or "", *(entity.get("aliases") or {}).get("en", [])]
    return any(normalize_label(name) in wanted for name in names if name)


def _arrow_fold(values: Any) -> Any:
    """A vectorised, looser :func:`normalize_label` (lower-case instead of case-fold, ß → ss) used
    to pre-select rows; the kept rows are matched with :func:`normalize_label` itself."""
    values = pc.utf8_lower(pc.utf8_normalize(values, "NFKC"))
    values = pc.replace_substring(pc.replace_substring(values, "ß", "ss"), "ς", "σ")
    values = pc.replace_substring_regex(values, r"[\p{P}\p{Z}\s]+", " ")
    values = pc.utf8_trim_whitespace(values)
    return pc.replace_substring_regex(values, r"^(the|a|an) ", "")


def _folded_answers(answers: list[str]) -> Any:
    """The answers as :func:`_arrow_fold` writes them, raw and after :func:`normalize_label`."""
    both = pa.array(answers + [normalize_label(a) for a in answers], pa.string())
    return pc.unique(_arrow_fold(both))


def _part_mask(part: Any, keep_qids: set[str], folded: Any | None) -> Any:
    """Rows of a labels part whose entity is in ``keep_qids`` or has an English label or alias
    that may match an answer (``folded``: :func:`_folded_answers`)."""
    qids = set(keep_qids)
    if folded is not None:
        english = part.filter(pc.equal(part.column("lang"), "en"))
        label_hit = pc.fill_null(pc.is_in(_arrow_fold(english.column("label")), value_set=folded), False)
        aliases = english.column("aliases").combine_chunks()
        alias_hit = pc.is_in(_arrow_fold(pc.list_flatten(aliases)), value_set=folded)
        alias_rows = pc.filter(pc.list_parent_indices(aliases), alias_hit)
        candidates = set(english.column("qid").filter(label_hit).to_pylist())
        candidates |= set(pc.take(english.column("qid"), alias_rows).to_pylist())
        qids |= {q for q in candidates if q}
    return pc.is_in(part.column("qid"), value_set=pa.array(sorted(qids), pa.string()))


class Translator(Protocol):
    """Machine translation from English: the interface the fallback uses (and tests fake)."""

    def supports(self, lang: str) -> bool: ...

    def translate(self, texts: Sequence[str], target_lang: str) -> list[str]: ...


@dataclass
class AnswerTranslator:
    """Applies the four fallbacks; ``labels`` and ``mt`` are optional (missing ones are skipped)."""

    labels: LabelTable | None = None
    mt: Translator | None = None

    def translate(self, answer: str, answer_qid: str | None, lang: str) -> tuple[str, str]:
        return self.translate_many([(answer, answer_qid)], lang)[0]

    def translate_many(self, items: Sequence[tuple[str, str | None]], lang: str) -> list[tuple[str, str]]:
        """``(text, source)`` for each ``(english_answer, answer_qid)``; one MT call for the rest."""
        lang = normalize_lang(lang)  # unknown code → ConfigError naming close matches
        results: list[tuple[str, str] | None] = []
        for answer, qid in items:
            results.append(self._from_labels(answer, qid, lang))
        pending = [i for i, r in enumerate(results) if r is None]
        if pending and self.mt is not None and self.mt.supports(lang):
            translated = self.mt.translate([items[i][0] for i in pending], lang)
            for i, text in zip(pending, translated):
                if text and text.strip():
                    results[i] = (text.strip(), "mt")
        return [r if r is not None else (items[i][0], "untranslated") for i, r in enumerate(results)]

    def _from_labels(self, answer: str, qid: str | None, lang: str) -> tuple[str, str] | None:
        if lang == "en":
            return answer, "english"
        if self.labels is None:
            return None
        if qid and (label := self.labels.label(qid, lang)):
            return label, "wikidata_qid"
        matched = self.labels.match_english(answer)
        if matched and matched != qid and (label := self.labels.label(matched, lang)):
            return label, "wikidata_en_match"
        return None


MT_STYLES = ("marian", "m2m", "plain")
MT_OPTIONS = ("style", "langs", "codes", "max_length", "batch_size", "num_beams")


class HFTranslator:
    """``hf:<name-or-path>[?style=marian|m2m|plain&langs=de,es&codes=zh_cn:zh&max_length=64]``:
    a transformers seq2seq model translating from English.

    ``style=marian`` prefixes the source with ``>>code<<`` (multi-target opus-mt models),
    ``m2m`` sets ``src_lang=en`` and forces the target language token (M2M100/NLLB), ``plain``
    (a single-pair model such as opus-mt-en-de) adds nothing. ``langs`` lists the target languages
    the model covers (others fall through to ``untranslated``); ``codes`` maps ray_cora codes to the
    model's (default: ``zh_cn`` → ``zh``, i.e. the part before ``_``).
    """

    def __init__(self, spec: str, *, threads: int = 1, device: Any = None) -> None:
        import torch
        from transformers import AutoModelForSeq2SeqLM


        _, options = parse_spec(spec, "hf", MT_OPTIONS)  # options are checked before any weights load
        self.spec = spec
        self.style = options.get("style", "plain")
        if self.style not in MT_STYLES:
            raise ConfigError(f"translator spec {spec!r}: style must be one of {', '.join(MT_STYLES)}")
        self.langs = {normalize_lang(l) for l in options["langs"].split(",")} if options.get("langs") else None
        self.codes = dict(pair.split(":", 1) for pair in options["codes"].split(",")) if options.get("codes") else {}
        loaded = load_hf_model(spec, AutoModelForSeq2SeqLM, options=MT_OPTIONS,
                               what="seq2seq translation model", threads=threads, device=device)
        self.tokenizer, self.model, self.device = loaded.tokenizer, loaded.model, loaded.device
        self.max_length = loaded.option_int("max_length", 64)
        self.batch_size = loaded.option_int("batch_size", 16)
        self.num_beams = loaded.option_int("num_beams", 1)
        self._torch = torch

    def code(self, lang: str) -> str:
        return self.codes.get(lang, lang.split("_")[0])

    def supports(self, lang: str) -> bool:
        return lang != "en" and (self.langs is None or lang in self.langs)

    def model_inputs(self, texts: Sequence[str], lang: str) -> tuple[list[str], dict[str, Any]]:
        """The source strings and extra ``generate`` arguments for ``lang`` (style-dependent)."""
        code = self.code(lang)
        if self.style == "marian":
            return [f">>{code}<< {t}" for t in texts], {}
        if self.style == "m2m":
            self.tokenizer.src_lang = "en"
            get_id = getattr(self.tokenizer, "get_lang_id", None)
            bos = get_id(code) if get_id else self.tokenizer.convert_tokens_to_ids(code)
            return list(texts), {"forced_bos_token_id": bos}
        return list(texts), {}

    def translate(self, texts: Sequence[str], target_lang: str) -> list[str]:
        out: list[str] = []
        for start in range(0, len(texts), self.batch_size):
            sources, extra = self.model_inputs(texts[start:start + self.batch_size], target_lang)
            batch = self.tokenizer(sources, return_tensors="pt", padding=True, truncation=True,
                                   max_length=self.max_length).to(self.device)
            # Seq2seq models take no token_type_ids, which BERT-style tokenizers also return.
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}
            with self._torch.inference_mode():
                generated = self.model.generate(**inputs, max_new_tokens=self.max_length,
                                                num_beams=self.num_beams, **extra)
            out.extend(self.tokenizer.batch_decode(generated, skip_special_tokens=True))
        return out
