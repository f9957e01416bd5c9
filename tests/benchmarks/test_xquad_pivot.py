"""The report of jobs/benchmarks/xquad_pivot.py, built from a synthetic result dict (no encoder, no
data): every language carries its resource group, and the group table holds each metric column's
macro over that group's languages, computed here from the per-language figures given."""

from __future__ import annotations

import random

import pytest

from tests.support import load_benchmark

bench = load_benchmark("xquad_pivot")
METRICS = [key for key, _ in bench.METRIC_COLUMNS]


def _report(rows: dict[str, dict]) -> dict:
    growth = {size: {lang: round(90.0 - size / 10 - i, 1) for i, lang in enumerate(bench.QUERY_LANGS)}
              for size in (0, 20)}
    return {"database_questions": 12, "encoder": "muse", "repeated_english_questions": 0,
            "reranker": "hf:/tmp/tiny-reranker", "translator": None, "labels": None, "limit": 3,
            "per_language": rows,
            "language_groups": {"source": bench.GROUP_SOURCE,
                                "groups": {g: list(m) for g, m in bench.LANGUAGE_GROUPS.items()}},
            "group_macros": bench.group_macros(rows, METRICS), "distractors_added": 20,
            "distractor_sources": {"templated questions": 20},
            "distractor_growth": {str(k): v for k, v in growth.items()}, "seconds": 0.5}


def _rows(seed: int) -> dict[str, dict]:
    rng = random.Random(seed)
    rows = {}
    for lang in bench.QUERY_LANGS:
        rows[lang] = {"group": bench.group_of(lang), "questions": 3,
                      **{key: round(rng.uniform(0, 100), 1) for key in METRICS},
                      "translation_sources": {"untranslated": 3}, "muse_language": lang != "vi"}
    return rows


def _table_line(page: str, first_cell: str) -> list[str]:
    [line] = [l for l in page.splitlines() if l.startswith(f"| {first_cell} |")]
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_groups_cover_every_query_language_once():
    placed = [lang for members in bench.LANGUAGE_GROUPS.values() for lang in members]
    assert sorted(placed) == sorted(bench.QUERY_LANGS)
    assert list(bench.LANGUAGE_GROUPS) == ["high", "medium", "low"]
    assert all(bench.LANGUAGE_GROUPS.values())
    assert bench.group_of("xx") == "other"


def test_report_has_a_group_column_and_group_macros_of_the_given_figures():
    rows = _rows(seed=5)
    rows["th"]["rm_mips_top1"] = None  # one language without a reranked figure
    report = _report(rows)
    page = bench.markdown(report)

    header = _table_line(page, "lang")
    assert header[:3] == ["lang", "group", "mUSE language"]
    for lang, row in rows.items():
        cells = _table_line(page, lang)
        assert cells[1] == bench.group_of(lang) and cells[3] == str(row["mips_top1"])

    macros = report["group_macros"]
    assert list(macros) == ["high", "medium", "low", "all"]
    for group in macros:
        members = list(rows) if group == "all" else [l for l in rows if bench.group_of(l) == group]
        assert macros[group]["languages"] == members
        label = "**all**" if group == "all" else group
        cells = _table_line(page, label)
        assert cells[1] == ", ".join(members)
        for column, key in enumerate(METRICS, start=2):
            values = [rows[l][key] for l in members]
            if None in values:
                assert macros[group][key] is None and cells[column] == "n/a"
                continue
            expected = sum(values) / len(values)
            assert macros[group][key] == pytest.approx(expected, abs=0.0051)  # stored and printed to 2 decimals
            assert float(cells[column]) == pytest.approx(expected, abs=0.0051)  # stored and printed to 2 decimals
    # th is the low group's only member, so only the low and all macros lose RM-MIPS.
    assert macros["low"]["rm_mips_top1"] is None and macros["all"]["rm_mips_top1"] is None
    assert macros["high"]["rm_mips_top1"] is not None
    assert "## By resource group" in page and "not the paper's" in page
    assert "**Quick check** (`--limit 3`)" in page and "reranked by `hf:/tmp/tiny-reranker`" in page


def test_macros_follow_the_rows_they_are_given():
    rows = {"de": {"e2e_f1": 40.0}, "es": {"e2e_f1": 30.0}, "vi": {"e2e_f1": 10.0}, "xx": {"e2e_f1": 1.0}}
    macros = bench.group_macros(rows, ["e2e_f1"])
    assert {g: m["languages"] for g, m in macros.items()} == {
        "high": ["de", "es"], "medium": ["vi"], "other": ["xx"], "all": ["de", "es", "vi", "xx"]}
    assert macros["high"]["e2e_f1"] == 35.0 and macros["all"]["e2e_f1"] == 20.25
