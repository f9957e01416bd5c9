"""The Wikidata dump parser on a small dump in the official layout, and the Ray Data label job."""

from __future__ import annotations

import bz2
import gzip
import json

import pytest

from ray_cora.data.records import BadRecords
from ray_cora.data.wikidata import DumpStats, iter_entities, label_rows
from ray_cora.errors import BadRecordError


def _entity(qid, labels=None, aliases=None, sitelinks=None):
    return {"type": "item", "id": qid,
            "labels": {code: {"language": code, "value": v} for code, v in (labels or {}).items()},
            "aliases": {code: [{"language": code, "value": v} for v in vs] for code, vs in (aliases or {}).items()},
            "sitelinks": {site: {"site": site, "title": t, "badges": []} for site, t in (sitelinks or {}).items()},
            "claims": {"P31": [{"mainsnak": {"snaktype": "value"}}]}}


ENTITIES = [
    _entity("Q90", {"en": "Paris", "fr": "Paris", "ja": "パリ", "zh": "巴黎 (zh)", "zh-cn": "巴黎"},
            {"en": ["City of Light", "Paris, France"]}, {"enwiki": "Paris", "jawiki": "パリ"}),
    _entity("Q5582", {"en": "Vincent van Gogh", "zh-hans": "文森特·梵高"}, {}, {"enwiki": "Vincent van Gogh"}),
    # An entity with no label at all in the selected languages (only Welsh): kept for its sitelink.
    _entity("Q1000", {"cy": "Gabon"}, {}, {"cywiki": "Gabon"}),
]
REDIRECT = {"id": "Q404", "redirect": {"to": "Q90"}}


def write_dump(path, *, bad_line: bool = True, opener=open) -> dict[str, int]:
    """The official layout: '[' line, one entity per line ending with ',', the last without, ']'.
    Returns the 1-based line numbers of interesting records."""
    lines = ["["]
    for ent in ENTITIES[:2]:
        lines.append(json.dumps(ent, ensure_ascii=False) + ",")
    lines.append(json.dumps(REDIRECT) + ",")
    where = {"redirect": len(lines)}
    if bad_line:
        lines.append('{"type": "item", "id": "Q7", "labels": {"en": {"language": "en", "value": "trunc')
        where["bad"] = len(lines)
        lines.append(json.dumps({"type": "item", "id": "Q8", "labels": {"en": 5}}) + ",")
        where["bad_shape"] = len(lines)
    lines.append(json.dumps(ENTITIES[2], ensure_ascii=False))
    lines.append("]")
    with opener(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return where


def _numbered(path):
    with open(path, "rb") as handle:
        return list(enumerate(handle.read().splitlines(), start=1))


def test_parser_reads_labels_aliases_sitelinks_and_counts_what_it_skips(tmp_path):
    dump = tmp_path / "latest-all.json"
    where = write_dump(dump)
    bad = BadRecords("skip")
    stats = DumpStats()
    entities = {e.qid: e for e in iter_entities(_numbered(dump), source=str(dump), langs=["en", "ja", "zh_cn"],
                                                   bad_records=bad, stats=stats)}
    assert set(entities) == {"Q90", "Q5582", "Q1000"}
    paris = entities["Q90"]
    assert paris.labels == {"en": "Paris", "ja": "パリ", "zh_cn": "巴黎"}  # zh-cn wins over zh
    assert paris.aliases == {"en": ["City of Light", "Paris, France"]}
    assert paris.sitelinks == {"enwiki": "Paris", "jawiki": "パリ"}
    assert entities["Q5582"].labels["zh_cn"] == "文森特·梵高"  # zh-hans when there is no zh-cn
    assert entities["Q1000"].labels == {} and entities["Q1000"].sitelinks == {"cywiki": "Gabon"}
    assert (stats.entities, stats.redirects, stats.without_labels, stats.bad) == (3, 1, 1, 2)
    assert [r["line"] for r in bad.records] == [where["bad"], where["bad_shape"]]
    assert "labels.en" in bad.records[1]["reason"]


def test_bad_line_stops_with_file_and_line(tmp_path):
    dump = tmp_path / "dump.json"
    where = write_dump(dump)
    with pytest.raises(BadRecordError) as info:
        list(iter_entities(_numbered(dump), source=str(dump), langs=["en"]))
    assert f"dump.json:{where['bad']}:" in str(info.value)
    assert "--on-bad-record skip" in str(info.value)


def test_label_rows_one_row_per_entity_language_and_site():
    from ray_cora.data.wikidata import Entity

    labels, links = label_rows([Entity("Q1", {"en": "A"}, {"en": ["a1"], "de": ["a2"]}, {"enwiki": "A"})])
    assert list(zip(labels["lang"], labels["label"], labels["aliases"])) == [("de", None, ["a2"]), ("en", "A", ["a1"])]
    assert links == {"qid": ["Q1"], "site": ["enwiki"], "title": ["A"]}


def test_sitelinks_of_titles_reads_only_the_linked_entities(tmp_path):
    from ray_cora import storage
    from ray_cora.data.wikidata import sitelinks_of_titles
    from ray_cora.iterate.mining import LanguageLinks, english_positive_titles
    from ray_cora.pipelines.wikidata_labels import commit_tables, plan_parts, write_part

    write_dump(tmp_path / "dump.json", bad_line=False)
    out = tmp_path / "labels"
    markers = [write_part(dump=str(tmp_path / "dump.json"), out=str(out), part=part, langs=("en", "ja"),
                          on_bad_record="error") for part in plan_parts(str(tmp_path / "dump.json"), 2)]
    commit_tables(storage.resolve(str(out)), markers, config={}, langs=("en", "ja"))
    records = [{"lang": "en", "positive_ctxs": [{"title": "Paris", "lang": "en"}, {"title": "パリ", "lang": "ja"}]},
               {"lang": "ja", "positive_ctxs": [{"title": "Vincent van Gogh"}]}]
    titles = english_positive_titles(records)
    assert titles == {"Paris"}  # only English questions' English articles
    rows = sorted(sitelinks_of_titles(str(out), "enwiki", titles))
    assert rows == [("Q90", "enwiki", "Paris"), ("Q90", "jawiki", "パリ")]
    assert LanguageLinks.from_sitelinks(rows).linked_titles("en", "Paris", ["ja", "fr"]) == {"ja": "パリ"}
    assert list(sitelinks_of_titles(str(out), "enwiki", {"Nowhere"})) == []


@pytest.mark.slow
@pytest.mark.parametrize("compression", ["", ".gz", ".bz2"])
def test_label_job_on_plain_and_compressed_dumps(tmp_path, ray_local, compression):
    from ray_cora.configs.wikidata import WikidataLabelsConfig
    from ray_cora.data.wikidata import read_label_tables
    from ray_cora.pipelines.wikidata_labels import build_label_tables
    from ray_cora.pivot.translate import LabelTable

    opener = {"": open, ".gz": gzip.open, ".bz2": bz2.open}[compression]
    dump = tmp_path / f"latest-all.json{compression}"
    write_dump(dump, opener=opener)
    out = tmp_path / "labels"
    config = WikidataLabelsConfig.load(overrides={"dump": str(dump), "langs": ["en", "ja", "zh_cn"], "out": str(out),
                                                  "on_bad_record": "skip", "part_lines": 3})
    manifest = build_label_tables(config)
    assert manifest["stats"] == {"lines": 8, "entities": 3, "redirects": 1, "without_labels": 1, "bad": 2}
    assert len(manifest["labels"]) == (1 if compression else 3)  # 8 lines by 3; a compressed dump: one part
    labels, links = read_label_tables(str(out))
    rows = {(r["qid"], r["lang"]): r for r in labels.to_pylist()}
    assert rows[("Q90", "ja")]["label"] == "パリ" and rows[("Q90", "en")]["aliases"] == ["City of Light", "Paris, France"]
    assert sorted(zip(links.column("qid").to_pylist(), links.column("site").to_pylist())) == [
        ("Q1000", "cywiki"), ("Q5582", "enwiki"), ("Q90", "enwiki"), ("Q90", "jawiki")]
    table = LabelTable.load(str(out))  # what the pivot's answer translation reads
    assert table.label(table.match_english("city of light"), "zh_cn") == "巴黎"


@pytest.mark.slow
def test_label_job_rerun_skips_finished_parts(tmp_path, ray_local, capsys):
    from ray_cora.configs.wikidata import WikidataLabelsConfig
    from ray_cora.pipelines.wikidata_labels import build_label_tables, part_paths

    dump = tmp_path / "dump.json"
    write_dump(dump, bad_line=False)
    out = tmp_path / "labels"
    config = WikidataLabelsConfig.load(overrides={"dump": str(dump), "langs": ["en"], "out": str(out),
                                                  "part_lines": 2})
    first = build_label_tables(config)
    (out / "manifest.json").unlink()  # as if killed before the commit…
    (out / part_paths(1)["marker"]).unlink()  # …and before part 1 finished
    kept = (out / part_paths(0)["labels"]).stat().st_mtime_ns
    capsys.readouterr()
    second = build_label_tables(config)
    assert "3 part(s), 2 already written, 1 to parse" in capsys.readouterr().out
    assert (out / part_paths(0)["labels"]).stat().st_mtime_ns == kept
    assert second["files"] == first["files"] and second["stats"] == first["stats"]
