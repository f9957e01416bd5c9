"""Paraphrase pairs as PAWS-X and QQP ship them, and the reranker's training mixture (pure).

Formats (tab-separated, one header line, no quoting):

- **PAWS-X** (``x-final/<lang>/train.tsv``, ``translated_train.tsv``, ``dev_2k.tsv``,
  ``test_2k.tsv``): ``id  sentence1  sentence2  label``;
- **QQP** (GLUE ``QQP/train.tsv``, ``dev.tsv``; Quora's ``quora_duplicate_questions.tsv``):
  ``id  qid1  qid2  question1  question2  is_duplicate``.

PAWS-X ships one folder per language (``x-final/en``, ``de``, ``es``, ``fr``, ``ja``, ``ko``, ``zh``)
and the same ``id`` in every language's file: row ``id`` of ``de/translated_train.tsv`` is the
German machine translation of row ``id`` of ``en/train.tsv`` (``dev_2k.tsv``/``test_2k.tsv``:
human translations). :func:`cross_lingual_pawsx` joins them by ``id`` into cross-lingual pairs.

:func:`iter_pawsx` / :func:`iter_qqp` check the header (a file of the other format is refused at
``file:1``), and hand every malformed line (wrong number of fields, an empty text, a label that is
not 0 or 1 — PAWS-X's machine-translated files have some) to a :class:`BadRecords` policy, which
stops at ``file:line`` or counts and quarantines it.

:func:`paper_mixture` is Montero et al.'s reranker mixture: *all* the PAWS-X pairs given, and QQP
pairs drawn (seeded, without replacement) so that they are 25% of the mixture — shares of the data
used, not of the datasets' sizes. Given cross-lingual PAWS-X pairs, those are the PAWS-X part.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from ray_cora import storage
from ray_cora.data.records import BadRecords
from ray_cora.errors import ConfigError

PAWSX_HEADER = ("id", "sentence1", "sentence2", "label")
QQP_HEADER = ("id", "qid1", "qid2", "question1", "question2", "is_duplicate")
# Montero et al.: PAWS-X is 75% of the reranker's training mixture, QQP 25%.
PAPER_PAWSX_SHARE = 0.75
# The languages PAWS-X ships besides English, one folder each under x-final/.
PAWSX_LANGS = ("de", "es", "fr", "ja", "ko", "zh")
# Per split: the English file, and every other language's file (train: machine-translated).
PAWSX_SPLITS = {"train": ("train.tsv", "translated_train.tsv"), "dev": ("dev_2k.tsv", "dev_2k.tsv"),
                "test": ("test_2k.tsv", "test_2k.tsv")}


def iter_pawsx(uri: str, *, bad_records: BadRecords | None = None) -> Iterator[dict[str, Any]]:
    """``{"a", "b", "label", "id", "source": "pawsx"}`` per line of a PAWS-X TSV file.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "train.tsv")
    >>> _ = open(path, "w").write("id\\tsentence1\\tsentence2\\tlabel\\n7\\tA cat .\\tThe cat .\\t1\\n")
    >>> next(iter_pawsx(path))["label"]
    1
    """
    for _, record in _numbered_pawsx(uri, bad_records):
        yield record


def iter_qqp(uri: str, *, bad_records: BadRecords | None = None) -> Iterator[dict[str, Any]]:
    """``{"a", "b", "label", "id", "source": "qqp"}`` per line of a QQP TSV file."""
    for _, record in _iter_tsv(uri, QQP_HEADER, "QQP", ("question1", "question2", "is_duplicate"), bad_records):
        yield record


def _numbered_pawsx(uri: str, bad_records: BadRecords | None) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` per well-formed line of a PAWS-X file."""
    return _iter_tsv(uri, PAWSX_HEADER, "PAWS-X", ("sentence1", "sentence2", "label"), bad_records)


def _iter_tsv(uri: str, header: Sequence[str], name: str, keys: tuple[str, str, str],
              bad_records: BadRecords | None) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` per well-formed line."""
    bad = bad_records if bad_records is not None else BadRecords("error")
    source = name.lower().replace("-", "")
    first, second, label_key = (header.index(k) for k in keys)
    seen_header = False
    with storage.open_input(uri) as stream:
        for number, raw in enumerate(storage.iter_lines(stream), start=1):
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                bad.report(uri, number, f"not UTF-8 ({exc})", raw=raw)
                continue
            if not seen_header:
                found = tuple(h.strip().strip('"').lower() for h in text.lstrip("\ufeff").split("\t"))
                if found != tuple(header):
                    raise ConfigError(f"{uri}:{number}: not a {name} file: the header is {'  '.join(found)!r}, "
                                      f"expected {'  '.join(header)!r} (tab-separated); give {name} files here")
                seen_header = True
                continue
            if not text.strip():
                continue
            fields = text.split("\t")
            if len(fields) != len(header):
                bad.report(uri, number, f"expected {len(header)} tab-separated fields ({', '.join(header)}), "
                           f"found {len(fields)}", raw=raw)
                continue
            a, b, label = fields[first].strip(), fields[second].strip(), fields[label_key].strip()
            if label not in ("0", "1"):
                bad.report(uri, number, f"{header[label_key]} is {label!r}, not 0 or 1", raw=raw)
                continue
            if not a or not b:
                bad.report(uri, number, f"empty {header[first] if not a else header[second]}", raw=raw)
                continue
            yield number, {"a": a, "b": b, "label": int(label), "id": fields[0].strip(), "source": source}


def pawsx_files(root: str, langs: Sequence[str] = PAWSX_LANGS, *,
                split: str = "train") -> tuple[str, list[tuple[str, str]]]:
    """The English file and ``(lang, file)`` per other language of one PAWS-X split, in the layout
    Google ships (``root`` is the ``x-final`` folder or URI).

    >>> english, others = pawsx_files("x-final", ["de", "ja"])
    >>> english.endswith("x-final/en/train.tsv"), [(l, f.split("x-final/")[1]) for l, f in others]
    (True, [('de', 'de/translated_train.tsv'), ('ja', 'ja/translated_train.tsv')])
    """
    if split not in PAWSX_SPLITS:
        raise ConfigError(f"option 'pawsx_split': {split!r} is not one of {', '.join(PAWSX_SPLITS)}")
    english_name, other_name = PAWSX_SPLITS[split]
    base = storage.resolve(root)
    others = []
    for lang in langs:
        if lang == "en":
            raise ConfigError("option 'pawsx_langs': en is the pivot side of every pair; name the other languages "
                              f"({', '.join(PAWSX_LANGS)})")
        others.append((lang, base.join(lang, other_name).uri))
    return base.join("en", english_name).uri, others


def pawsx_source(spec: str) -> tuple[str, str]:
    """``(lang, uri)`` of a non-English PAWS-X file given as ``LANG=PATH``, or as a path in PAWS-X's
    layout, whose folder names the language (``x-final/<lang>/...``).

    >>> pawsx_source("x-final/de/translated_train.tsv"), pawsx_source("ko=/data/ko_train.tsv")
    (('de', 'x-final/de/translated_train.tsv'), ('ko', '/data/ko_train.tsv'))
    """
    head, sep, tail = spec.partition("=")
    if sep and head.strip() and "/" not in head and ":" not in head:
        lang, uri = head.strip(), tail.strip()
    else:
        uri = spec.strip()
        parts = uri.rstrip("/").split("/")
        lang = parts[-2] if len(parts) >= 2 else ""
        if lang not in (*PAWSX_LANGS, "en"):
            raise ConfigError(f"{uri}: cannot tell its language from its folder {lang!r} (PAWS-X ships "
                              f"x-final/<lang>/..., lang one of {', '.join(PAWSX_LANGS)}): give it as LANG={uri}")
    if lang == "en":
        raise ConfigError(f"{uri}: an English file joined with English: give the other languages' files here, "
                          "the English one as the English side")
    return lang, uri


@dataclass
class _EnglishRow:
    line: int
    a: str
    b: str
    label: int


def cross_lingual_pawsx(english: str, others: Sequence[str | tuple[str, str]], *, bad_records: BadRecords | None = None
                        ) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]:
    """Cross-lingual PAWS-X pairs: each other-language file (``(lang, uri)``, or a spec for
    :func:`pawsx_source`) joined with the English file by ``id``; and per language, the counts.

    Montero et al. (A.2–A.3, as issue 18 reports them: the appendix itself could not be read here,
    see docs/pivot.md) train the reranker on pairs of an English question and a lower-resource one.
    PAWS-X's row ``id`` holds the same two sentences (s1, s2) in every language, so for every ``id``
    present in both files this yields **both directions** of the paired sentences across languages:

    - ``(English s1, other s2)`` — ``langs: "en-xx"``, and
    - ``(other s1, English s2)`` — ``langs: "xx-en"``,

    each with the English row's label. Both, because the reranker (a cross-encoder, order-sensitive)
    is asked with the user's question first and an English candidate second (``pivot run``), but
    should not learn that English is always on one side. ``(s1, its own translation)`` is not built:
    PAWS-X labels (s1, s2), and those labels are what the reranker learns. An ``id`` whose label differs between the
    files (or repeats within one) is a bad record at the other file's ``file:line`` (stop, or count
    under ``--on-bad-record skip``). An ``id`` in only one file is counted, not an error (PAWS-X's
    translated files miss some rows, and bad lines are skipped): ``missing`` — English ids the
    other file lacks; ``not_in_english`` — the reverse.

    >>> import os, tempfile
    >>> root = tempfile.mkdtemp()
    >>> def write(lang, *rows):
    ...     os.makedirs(os.path.join(root, lang))
    ...     text = "\\n".join(["id\\tsentence1\\tsentence2\\tlabel", *("\\t".join(r) for r in rows)]) + "\\n"
    ...     return open(os.path.join(root, lang, "train.tsv"), "w").write(text)
    >>> _ = write("en", ("1", "A cat .", "The cat .", "1"), ("2", "X", "Y", "0"))
    >>> _ = write("de", ("1", "Eine Katze .", "Die Katze .", "1"))
    >>> pairs, counts = cross_lingual_pawsx(f"{root}/en/train.tsv", [f"{root}/de/train.tsv"])
    >>> [(p["a"], p["b"], p["label"], p["langs"]) for p in pairs]
    [('A cat .', 'Die Katze .', 1, 'en-de'), ('Eine Katze .', 'The cat .', 1, 'de-en')]
    >>> counts
    {'de': {'ids': 1, 'pairs': 2, 'missing': 1, 'not_in_english': 0, 'label_conflicts': 0}}
    """
    bad = bad_records if bad_records is not None else BadRecords("error")
    sources = [pawsx_source(o) if isinstance(o, str) else (o[0], o[1]) for o in others]
    langs = [lang for lang, _ in sources]
    twice = sorted({lang for lang in langs if langs.count(lang) > 1})
    if twice:
        raise ConfigError(f"PAWS-X languages given twice: {', '.join(twice)}")
    rows: dict[str, _EnglishRow] = {}
    for line, record in _numbered_pawsx(english, bad):
        if record["id"] in rows:
            bad.report(english, line, f"id {record['id']} repeats line {rows[record['id']].line}")
            continue
        rows[record["id"]] = _EnglishRow(line, record["a"], record["b"], record["label"])
    pairs: list[dict[str, Any]] = []
    counts: dict[str, dict[str, int]] = {}
    for lang, uri in sources:
        seen: dict[str, int] = {}
        joined = not_in_english = conflicts = 0
        for line, record in _numbered_pawsx(uri, bad):
            key = record["id"]
            en = rows.get(key)
            if en is None:
                not_in_english += 1
                continue
            if key in seen:
                bad.report(uri, line, f"id {key} repeats line {seen[key]}")
                continue
            seen[key] = line
            if record["label"] != en.label:
                conflicts += 1
                bad.report(uri, line, f"id {key}: label {record['label']}, but {english}:{en.line} (English) has "
                           f"{en.label}")
                continue
            joined += 1
            common = {"label": en.label, "id": key, "source": "pawsx"}
            pairs.append({"a": en.a, "b": record["b"], "langs": f"en-{lang}", **common})
            pairs.append({"a": record["a"], "b": en.b, "langs": f"{lang}-en", **common})
        counts[lang] = {"ids": joined, "pairs": 2 * joined, "missing": len(rows) - len(seen),
                        "not_in_english": not_in_english, "label_conflicts": conflicts}
    return pairs, counts


def paper_mixture(pawsx: Sequence[dict[str, Any]], qqp: Sequence[dict[str, Any]], *,
                  pawsx_share: float = PAPER_PAWSX_SHARE, seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Every PAWS-X pair, plus ``round(len(pawsx) × (1 − share) / share)`` QQP pairs drawn without
    replacement (``random.Random(seed)``), shuffled; and the counts (read and used per source).
    With no QQP pairs the mixture is PAWS-X alone; with no PAWS-X pairs, QQP alone.

    >>> pairs, counts = paper_mixture([{"p": i} for i in range(6)], [{"q": i} for i in range(10)], seed=1)
    >>> counts
    {'pawsx_read': 6, 'qqp_read': 10, 'pawsx_used': 6, 'qqp_used': 2, 'total': 8}
    """
    if not 0 < pawsx_share <= 1:
        raise ConfigError(f"option 'pawsx_share': {pawsx_share} is not in (0, 1]")
    rng = random.Random(seed)
    if not pawsx or not qqp:
        chosen_qqp = list(qqp)
    else:
        want = round(len(pawsx) * (1 - pawsx_share) / pawsx_share)
        if want > len(qqp):
            raise ConfigError(f"the mixture needs {want} QQP pairs beside {len(pawsx)} PAWS-X pairs "
                              f"({1 - pawsx_share:.0%} of the mixture) but the QQP files hold {len(qqp)}: give more "
                              "QQP pairs or raise --pawsx-share")
        chosen_qqp = rng.sample(list(qqp), want)
    pairs = [*pawsx, *chosen_qqp]
    rng.shuffle(pairs)
    counts = {"pawsx_read": len(pawsx), "qqp_read": len(qqp), "pawsx_used": len(pawsx),
              "qqp_used": len(chosen_qqp), "total": len(pairs)}
    return pairs, counts
