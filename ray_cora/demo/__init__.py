"""The offline demo's files, shipped in the package: a small multilingual corpus, its questions, a
pivot database and Wikidata labels (see ``assets/README.md``)."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
DEMO_PASSAGES = ASSETS / "passages.jsonl"
DEMO_QUESTIONS = ASSETS / "questions.jsonl"
DEMO_PIVOT_DB = ASSETS / "pivot_db.jsonl"
DEMO_WIKIDATA_LABELS = ASSETS / "wikidata_labels.jsonl"
