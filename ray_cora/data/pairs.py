"""Paraphrase pairs as PAWS-X and QQP ship them, and the reranker's training mixture (pure).

Formats (tab-separated, one header line, no quoting):

- **PAWS-X** (``x-final/<lang>/train.tsv``, ``translated_train.tsv``, ``dev_2k.tsv``,
  ``test_2k.tsv``): ``id  sentence1  sentence2  label``;
- **QQP** (GLUE ``QQP/train.tsv``, ``dev.tsv``; Quora's ``quora_duplicate_questions.tsv``):
  ``id  qid1  qid2  question1  question2  is_duplicate``.

:func:`iter_pawsx` / :func:`iter_qqp` check the header (a file of the other format is refused at
``file:1``), and hand every malformed line (wrong number of fields, an empty text, a label that is
not 0 or 1 — PAWS-X's machine-translated files have some) to a :class:`BadRecords` policy, which
stops at ``file:line`` or counts and quarantines it.

:func:`paper_mixture` is Montero et al.'s reranker mixture: *all* the PAWS-X pairs given, and QQP
pairs drawn (seeded, without replacement) so that they are 25% of the mixture — shares of the data
used, not of the datasets' sizes.
"""

from __future__ import annotations

import random
from typing import Any, Iterator, Sequence

from ray_cora import storage
from ray_cora.data.records import BadRecords
from ray_cora.errors import ConfigError

PAWSX_HEADER = ("id", "sentence1", "sentence2", "label")
QQP_HEADER = ("id", "qid1", "qid2", "question1", "question2", "is_duplicate")
# Montero et al.: PAWS-X is 75% of the reranker's training mixture, QQP 25%.
PAPER_PAWSX_SHARE = 0.75


def iter_pawsx(uri: str, *, bad_records: BadRecords | None = None) -> Iterator[dict[str, Any]]:
    """``{"a", "b", "label", "id", "source": "pawsx"}`` per line of a PAWS-X TSV file.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "train.tsv")
    >>> _ = open(path, "w").write("id\\tsentence1\\tsentence2\\tlabel\\n7\\tA cat .\\tThe cat .\\t1\\n")
    >>> next(iter_pawsx(path))["label"]
    1
    """
    yield from _iter_tsv(uri, PAWSX_HEADER, "PAWS-X", ("sentence1", "sentence2", "label"), bad_records)


def iter_qqp(uri: str, *, bad_records: BadRecords | None = None) -> Iterator[dict[str, Any]]:
    """``{"a", "b", "label", "id", "source": "qqp"}`` per line of a QQP TSV file."""
    yield from _iter_tsv(uri, QQP_HEADER, "QQP", ("question1", "question2", "is_duplicate"), bad_records)


def _iter_tsv(uri: str, header: Sequence[str], name: str, keys: tuple[str, str, str],
              bad_records: BadRecords | None) -> Iterator[dict[str, Any]]:
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
            yield {"a": a, "b": b, "label": int(label), "id": fields[0].strip(), "source": source}


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
