"""The encoder tests' own artefact: a second tiny BERT (tiny_bert, tiny_cpt: tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def other_bert(tiny_bert_factory) -> str:
    """Same tokenizer as tiny_bert (same texts), different weights (seed 1)."""
    return tiny_bert_factory(seed=1)
