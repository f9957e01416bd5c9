"""Wikipedia -> passages: split math, segmentation, filters, and the Ray job against the pure splitter."""

from __future__ import annotations

import bz2
import gzip
import json
import logging
import os
import random
import unicodedata

import pyarrow.parquet as pq
import pytest

from ray_cora import storage
from ray_cora.cli import main
from ray_cora.configs.passages import PassagesConfig
from ray_cora.data import segment as seg
from ray_cora.data.records import BadRecords
from ray_cora.data.segment import normalize_whitespace, segment, segmenter_name
from ray_cora.data.wiki import (
    WikiOptions,
    drop_reason,
    is_disambiguation,
    iter_wiki_passages,
    list_inputs,
    passage_ranges,
    process_article,
    split_article,
)
from ray_cora.errors import BadRecordError, ConfigError

JA = "東京は日本の首都であり、世界有数の大都市である。人口は約1400万人。"
ZH = "北京是中华人民共和国的首都，也是全国的政治和文化中心。"
TH = "กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย และเป็นเมืองที่มีประชากรมากที่สุด"
KM = "ភ្នំពេញជារាជធានីនៃប្រទេសកម្ពុជា"


def _words(n: int, prefix: str = "w") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


# --------------------------------------------------------------------------------------------
# Splitting math


@pytest.mark.parametrize("size, tail", [(100, 20), (7, 0), (10, 3), (1, 0)])
def test_passage_ranges_on_every_size(size, tail):
    for n in range(1, 251):
        ranges = passage_ranges(n, passage_tokens=size, min_tail_tokens=tail)
        full, rest = divmod(n, size)
        assert len(ranges) == full + (1 if rest and (full == 0 or rest > tail) else 0), n
        assert ranges[0][0] == 0 and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert all(b - a == size for a, b in ranges[:-1]) and 0 < ranges[-1][1] - ranges[-1][0] <= size
        lost = n - ranges[-1][1]
        assert lost == (rest if full and rest <= tail else 0), n


def test_split_article_keeps_every_token_but_the_dropped_tail():
    for n in range(1, 251):
        words = _words(n)
        text = "T\n\n" + "\n".join(" ".join(words[i:i + 9]) for i in range(0, n, 9))
        passages = split_article("T", text, "en")
        kept = [w for p in passages for w in p.split(" ")]
        assert kept == words[:len(kept)], n
        assert [len(p.split()) for p in passages[:-1]] == [100] * (len(passages) - 1)
        tail = n % 100
        assert len(kept) == (n - tail if n > 100 and 0 < tail <= 20 else n), n


def test_cjk_split_on_every_size_inserts_no_space():
    rng = random.Random(1)
    for n in range(1, 251):
        chars = "".join(rng.choice("東京大阪あいうえおカタカナ") for _ in range(n))
        text = "。\n".join(chars[i:i + 13] for i in range(0, n, 13))  # '。' adds tokens too
        passages = split_article("題", "題\n" + text, "ja", backend="chars")
        joined = "".join(passages)
        assert " " not in joined and "\n" not in joined
        assert text.replace("\n", "").startswith(joined) and joined, n
        assert all(len(p) == 100 for p in passages[:-1])


# --------------------------------------------------------------------------------------------
# Segmentation


def test_character_rule_tokens():
    assert segment("東京タワー2024年、Tokyo Tower。", "ja", backend="chars") == \
        ["東", "京", "タ", "ワ", "ー", "2024", "年", "、", "Tokyo", "Tower", "。"]
    assert segment("ที่นี่", "th", backend="chars") == ["ที่", "นี่"]  # marks stay on their letter
    assert segment("ភ្នំ", "km", backend="chars") == ["ភ្នំ"]  # coeng stacks stay together
    for text, lang in [(KM, "km"), (TH, "th")]:
        tokens = segment(text, lang, backend="chars")
        assert all(not unicodedata.category(t[0]).startswith("M") for t in tokens)


@pytest.mark.parametrize("text, lang", [(JA, "ja"), (ZH, "zh_cn"), (ZH, "zh_tw"), (TH, "th"), (KM, "km")])
@pytest.mark.parametrize("backend", ["auto", "chars"])
def test_segmentation_is_lossless_with_sensible_counts(text, lang, backend):
    tokens = segment(text, lang, backend=backend)
    visible = "".join(text.split())
    assert "".join(tokens) == visible
    if segmenter_name(lang, backend) == "chars" and lang in ("ja", "zh_cn", "zh_tw"):
        assert len(tokens) == len(visible) - 3 * (lang == "ja")  # "1400" is one token
    assert len(visible) / 6 <= len(tokens) <= len(visible)
    [passage] = split_article("t", text, lang, backend=backend, passage_tokens=1000)
    assert passage == normalize_whitespace(text, lang)


def test_joined_passages_read_naturally():
    assert normalize_whitespace("東京は首都。\n\n大阪 Osaka も\n大都市。\nOsaka\n市", "ja") == \
        "東京は首都。大阪 Osaka も大都市。 Osaka 市"
    assert normalize_whitespace("ภาษาไทย\nภาษา", "th") == "ภาษาไทย ภาษา"
    assert normalize_whitespace("  a\n\n b\tc ", "en") == "a b c"


def test_word_segmenters_are_used_when_installed():
    for lang, module in [("zh_cn", "jieba"), ("ja", "fugashi"), ("th", "pythainlp")]:
        text = {"zh_cn": ZH, "ja": JA, "th": TH}[lang]
        if segmenter_name(lang) == "chars":
            continue
        assert segmenter_name(lang) == module
        assert len(segment(text, lang)) < len(segment(text, lang, backend="chars"))
    if all(segmenter_name(lang) == "chars" for lang in ("zh_cn", "ja", "th")):
        pytest.skip("no optional segmenter installed (jieba, fugashi+unidic-lite, pythainlp)")


def test_missing_segmenter_falls_back_to_characters_and_says_so_once(monkeypatch, caplog):
    def missing():
        raise ImportError("No module named 'jieba'")

    monkeypatch.setitem(seg._LOADERS, "jieba", missing)
    seg._optional.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger="ray_cora.data.segment"):
            assert segmenter_name("zh_cn") == segmenter_name("zh_tw") == "chars"
            assert segment("北京大学", "zh_cn") == ["北", "京", "大", "学"]
        assert sum("jieba unavailable" in r.getMessage() for r in caplog.records) == 1
    finally:
        seg._optional.cache_clear()


# --------------------------------------------------------------------------------------------
# Filters, pids, bad lines, config


@pytest.mark.parametrize("title, lang", [
    ("Mercury (disambiguation)", "en"), ("富士 (曖昧さ回避)", "ja"), ("富士（曖昧さ回避）", "ja"),
    ("北京 (消歧义)", "zh_cn"), ("北京 (消歧義)", "zh_tw"), ("Москва (значения)", "ru"),
    ("Bank (Begriffsklärung)", "de"), ("Mercurio (desambiguación)", "es"), ("Paris (homonymie)", "fr"),
    ("Mercury (Disambiguation)", "ja"),
])
def test_disambiguation_titles(title, lang):
    body = " ".join(_words(80))
    assert is_disambiguation(title, body, lang)
    assert drop_reason(title, f"{title}\n{body}", lang) == "disambiguation"
    assert drop_reason(title, f"{title}\n{body}", lang, drop_disambiguation=False) is None


def test_disambiguation_bodies():
    long_line = "It is the smallest planet in the Solar System and the closest to the Sun, " * 3
    assert is_disambiguation("Mercury", "Mercury may refer to:\nMercury (planet)\nMercury (element)", "en")
    assert is_disambiguation("Bank", "Bank steht für:\n- Bank (Möbel)", "de")
    assert is_disambiguation("Mercury", "Mercury may refer to\nthe planet\nthe element\nthe god", "en")
    assert not is_disambiguation("Mercury", "Mercury is a planet.\nThe name may refer to: a god.", "en")
    assert not is_disambiguation("Mercury", f"The word may refer to a god.\n{long_line}\n{long_line}", "en")
    assert not is_disambiguation("Mercury (planet)", long_line, "en")


def test_short_articles_are_dropped_by_token_count():
    assert drop_reason("T", "T\n" + " ".join(_words(19)), "en") == "short"
    assert drop_reason("T", "T\n" + " ".join(_words(20)), "en") is None
    assert drop_reason("題", "題\n" + "東" * 19, "ja", backend="chars") == "short"
    assert drop_reason("題", "題\n" + "東" * 20, "ja", backend="chars") is None
    assert process_article("T", "T\n   ", "en", WikiOptions(min_article_tokens=0)).dropped == "short"


def _article(i: int, n: int, lang: str, rng: random.Random) -> dict:
    if lang == "ja":
        chars = "".join(rng.choice("東京大阪日本語あいうえおカタカナ") for _ in range(n))
        body = "。\n".join(chars[k:k + 37] for k in range(0, n, 37))
        title = f"記事{i}"
    else:
        words = _words(n, f"a{i}x")
        body = "\n\n".join(" ".join(words[k:k + 23]) for k in range(0, n, 23))
        title = f"Article {i}"
    if i % 11 == 5:  # a disambiguation page now and then
        title += " (曖昧さ回避)" if lang == "ja" else " (disambiguation)"
    return {"id": str(1000 + i), "url": f"https://example.org/?curid={1000 + i}", "title": title,
            "text": f"{title}\n\n{body}"}


def _write_tree(root: str, lang: str, layout: list[tuple[str, int]], seed: int) -> list[str]:
    """A wikiextractor --json tree: files (relpath, articles), article lengths 0..330 tokens."""
    rng = random.Random(seed)
    uris, start = [], 0
    for relpath, count in layout:
        lines = [json.dumps(_article(start + i, rng.randint(0, 330), lang, rng), ensure_ascii=False)
                 for i in range(count)]
        data = ("\n".join(lines) + "\n").encode("utf-8")
        if relpath.endswith((".bz2", ".gz")):
            data = bz2.compress(data) if relpath.endswith(".bz2") else gzip.compress(data)
        loc = storage.resolve(root).join(relpath)
        storage.write_bytes(loc, data)
        uris.append(loc.uri)
        start += count
    return uris


EN_LAYOUT = [("AA/wiki_00", 25), ("AA/wiki_01.bz2", 30), ("AB/wiki_00.gz", 17)]
JA_LAYOUT = [("AA/wiki_00.bz2", 23), ("AA/wiki_01", 19)]


def test_pids_are_unique_and_follow_the_article(tmp_path):
    passages = []
    for lang, layout in [("en", EN_LAYOUT), ("ja", JA_LAYOUT)]:
        for uri in _write_tree(str(tmp_path / lang), lang, layout, seed=3):
            stats: dict[str, int] = {}
            got = list(iter_wiki_passages(uri, lang, stats=stats))
            kept = {p["pid"].rsplit("-", 1)[0] for p in got}
            assert stats["articles"] == stats["dropped_disambiguation"] + stats["dropped_short"] + len(kept)
            assert stats["passages"] == len(got)
            passages += got
    pids = [p["pid"] for p in passages]
    assert len(pids) == len(set(pids)) > 100
    by_article: dict[str, list[int]] = {}
    for pid in pids:
        article, n = pid.rsplit("-", 1)
        by_article.setdefault(article, []).append(int(n))
    assert all(ns == list(range(len(ns))) for ns in by_article.values())
    assert {p["lang"] for p in passages} == {"en", "ja"} and all(p["pid"].startswith(p["lang"] + "-") for p in passages)


def test_bad_line_is_located_or_quarantined(tmp_path):
    path = tmp_path / "wiki_07"
    good = json.dumps({"id": "1", "url": "", "title": "T", "text": "T\n" + " ".join(_words(30))})
    path.write_text(f"{good}\n\n{{broken\n" + json.dumps({"id": "2", "title": "X"}) + "\n" + good + "\n")
    with pytest.raises(BadRecordError, match=r"wiki_07:3: invalid JSON"):
        list(iter_wiki_passages(str(path), "en"))
    bad = BadRecords("skip")
    stats: dict[str, int] = {}
    assert len(list(iter_wiki_passages(str(path), "en", bad_records=bad, stats=stats))) == 1
    assert [(r["line"], r["reason"].split(":")[0].split(" (")[0]) for r in bad.records] == [
        (3, "invalid JSON"), (4, "missing field 'text'"), (5, "duplicate article id '1'")]
    assert stats["bad_records"] == 3 and stats["articles"] == 1


def test_config_checks_inputs_and_tail(capsys):
    with pytest.raises(ConfigError, match="more than once"):
        PassagesConfig.load(overrides={"inputs": ["en=/a", "EN=/b"], "out": "/o"})
    with pytest.raises(ConfigError, match="LANG=URI"):
        PassagesConfig.load(overrides={"inputs": ["/data/enwiki"], "out": "/o"})
    with pytest.raises(ConfigError, match="min_tail_tokens"):
        PassagesConfig.load(overrides={"inputs": ["en=/a"], "out": "/o", "min_tail_tokens": "100"})
    config = PassagesConfig.load(overrides={"inputs": ["zh-Hans=/a", "ja=s3://b/jawiki"], "out": "/o"})
    assert config.input_pairs() == [("zh_cn", "/a"), ("ja", "s3://b/jawiki")]
    assert main(["passages", "--inputs", "xx=/a", "--out", "/nonexistent/out"]) == 2
    assert "unknown language code 'xx'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# The Ray job


def _config(root: str, **overrides) -> PassagesConfig:
    return PassagesConfig.load(overrides={
        "inputs": [f"en={root}/enwiki", f"ja={root}/jawiki"], "out": f"{root}/out",
        "rows_per_shard": 40, "num_cpus_per_task": 0.5, **overrides})


def _make_inputs(root: str) -> None:
    _write_tree(f"{root}/enwiki", "en", EN_LAYOUT, seed=7)
    _write_tree(f"{root}/jawiki", "ja", JA_LAYOUT, seed=8)


def _pure(config: PassagesConfig, bad: BadRecords | None = None) -> list[dict]:
    return [p for file in list_inputs(config.input_pairs())
            for p in iter_wiki_passages(file.uri, file.lang, options=config.wiki_options(), bad_records=bad)]


def _committed(out: str) -> list[dict]:
    artifact = storage.Artifact(out, kind="wiki-passages")
    artifact.verify_all()
    rows = []
    for name, entry in artifact.files.items():
        if name.endswith(".parquet"):
            with artifact.location(name).fs.open_input_file(artifact.location(name).path) as f:
                table = pq.read_table(f)
            assert table.num_rows == entry["rows"]
            rows += table.to_pylist()
    return rows


@pytest.mark.slow
def test_job_equals_the_pure_splitter(ray_local, storage_root):
    from ray_cora.pipelines.build_passages import build_passages

    _make_inputs(storage_root)
    config = _config(storage_root)
    summary = build_passages(config)
    expected = _pure(config)
    assert _committed(config.out) == expected  # same passages, same order (manifest order = file order)
    assert summary["passages"] == len(expected) and summary["files_processed"] == 5
    assert summary["languages"]["en"]["dropped_disambiguation"] > 0
    assert summary["languages"]["ja"]["dropped_short"] > 0
    names = sorted(storage.Artifact(config.out).files)
    assert "part-en-00001-000.parquet" in names and "part-en-00001-001.parquet" in names  # > 40 rows


@pytest.mark.slow
def test_rerun_redoes_only_a_deleted_shard(ray_local, tmp_path):
    from ray_cora.pipelines.build_passages import build_passages

    root = str(tmp_path)
    _make_inputs(root)
    config = _config(root)
    build_passages(config)
    out = tmp_path / "out"
    shards = sorted(p.name for p in out.glob("*.parquet"))
    before = {name: ((out / name).stat().st_mtime_ns, storage.sha256_of(str(out / name))[0]) for name in shards}
    os.remove(out / "part-ja-00000-000.parquet")

    summary = build_passages(config)
    assert (summary["files_processed"], summary["files_skipped"]) == (1, 4)
    after = {name: ((out / name).stat().st_mtime_ns, storage.sha256_of(str(out / name))[0]) for name in shards}
    changed = {name for name in shards if after[name] != before[name]}
    assert changed <= {"part-ja-00000-000.parquet", "part-ja-00000-001.parquet"}
    assert "part-ja-00000-000.parquet" in changed
    assert all(after[n][1] == before[n][1] for n in shards)  # the redone shard is byte-identical
    assert _committed(config.out) == _pure(config)

    assert build_passages(config)["files_processed"] == 0
    other = _config(root, passage_tokens=50, min_tail_tokens=10)  # new options: every file is redone
    assert build_passages(other)["files_processed"] == 5 and _committed(other.out) == _pure(other)


@pytest.mark.slow
def test_bad_line_stops_the_job_at_file_and_line_or_is_quarantined(ray_local, tmp_path):
    from ray_cora.pipelines.build_passages import build_passages

    root = str(tmp_path)
    _make_inputs(root)
    with open(tmp_path / "jawiki" / "AA" / "wiki_01", "a", encoding="utf-8") as f:
        f.write('{"id": "9", "title": "壊れた"\n')
    config = _config(root)
    with pytest.raises(BadRecordError, match=r"jawiki/AA/wiki_01:20: invalid JSON"):
        build_passages(config)
    assert not (tmp_path / "out" / "manifest.json").exists()

    config = _config(root, on_bad_record="skip")
    summary = build_passages(config)
    assert summary["quarantined"] == 1
    bad = BadRecords("skip")
    assert _committed(config.out) == _pure(config, bad) and bad.count == 1
    [line] = storage.Artifact(config.out).read_bytes("_quarantine/part-ja-00001.jsonl").decode().splitlines()
    assert json.loads(line)["line"] == 20


@pytest.mark.slow
def test_passage_datasource_streams_the_same_passages(ray_local, tmp_path):
    from ray_cora.pipelines.build_passages import WikiPassageDatasource

    root = str(tmp_path)
    _make_inputs(root)
    config = _config(root)
    ds = ray_local.data.read_datasource(WikiPassageDatasource(config.inputs, batch_size=16))
    assert sorted(r["pid"] for r in ds.iter_rows()) == sorted(p["pid"] for p in _pure(config))
