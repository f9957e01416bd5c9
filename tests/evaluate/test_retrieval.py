"""Retrieval metrics pinned by hand, `ray-cora evaluate retrieval` end to end (no Ray), and the
pure parts of batch retrieval (passage store, question blocks, retrieval file reader)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest

from ray_cora.errors import ConfigError
from ray_cora.metrics.retrieval import retrieval_metrics, score_retrieval_row


def _ctx(pid: str, lang: str, text: str) -> dict:
    return {"pid": pid, "lang": lang, "title": pid, "text": text, "score": 0.0}


# Three Japanese questions and one English one, built so every rank is known by hand.
ROWS = [
    # ja-1: ja answer at rank 2, English answer at rank 1, gold at rank 2.
    {"qid": "1", "lang": "ja", "answers": ["東京"], "answers_all": ["東京", "Tokyo"], "gold_pids": ["b"],
     "ctxs": [_ctx("a", "en", "Tokyo is the capital"), _ctx("b", "ja", "首都は東京です"), _ctx("c", "ja", "大阪")]},
    # ja-2: nothing in Japanese; the English alias only at rank 3; no gold retrieved.
    {"qid": "2", "lang": "ja", "answers": ["富士山"], "answers_all": ["富士山", "Mount Fuji"], "gold_pids": ["z"],
     "ctxs": [_ctx("d", "ja", "山"), _ctx("e", "zh_cn", "火山"), _ctx("f", "en", "mount fuji is high")]},
    # ja-3: full-width digits match after NFKC at rank 1; no answers_all given (falls back to answers).
    {"qid": "3", "lang": "ja", "answers": ["3776"], "gold_pids": ["g"],
     "ctxs": [_ctx("g", "ja", "標高３７７６メートル"), _ctx("h", "en", "x"), _ctx("i", "en", "y")]},
    # en-1: no gold pids known; English answer at rank 3, the Japanese one at rank 1.
    {"qid": "1", "lang": "en", "answers": ["Tokyo"], "answers_all": ["東京", "Tokyo"],
     "ctxs": [_ctx("b", "ja", "首都東京"), _ctx("j", "en", "capital"), _ctx("a", "en", "TOKYO!")]},
]


def test_ranks_of_each_row_by_hand():
    scored = [score_retrieval_row(r, heatmap_k=2) for r in ROWS]
    assert [(s["rank_lang"], s["rank_multi"], s["rank_gold"]) for s in scored] == [
        (2, 1, 2), (None, 3, None), (1, 1, 1), (3, 1, None)]
    assert scored[0]["ctx_langs"] == {"en": 1, "ja": 1}  # only the top 2 counted
    assert scored[3]["has_gold"] is False


def test_metrics_per_language_macro_and_language_counts_by_hand():
    metrics = retrieval_metrics([score_retrieval_row(r, heatmap_k=3) for r in ROWS], ks=(1, 2, 3))
    ja, en = metrics["per_language"]["ja"], metrics["per_language"]["en"]
    assert ja["count"] == 3 and en["count"] == 1
    assert ja["R^L@1"] == pytest.approx(100 / 3) and ja["R^L@2"] == pytest.approx(200 / 3)
    assert ja["R^multi@1"] == pytest.approx(200 / 3) and ja["R^multi@3"] == 100.0
    assert ja["R^gold@1"] == pytest.approx(100 / 3) and ja["R^gold@2"] == pytest.approx(200 / 3)
    assert en["R^L@2"] == 0.0 and en["R^L@3"] == 100.0 and en["R^multi@1"] == 100.0
    assert "R^gold@1" not in en  # no gold passages known for English
    # macro: languages weigh equally; R^gold only over languages that have it
    assert metrics["macro"]["R^L@3"] == pytest.approx((200 / 3 + 100) / 2)
    assert metrics["macro"]["R^gold@2"] == pytest.approx(200 / 3)
    assert metrics["retrieved_languages"] == {"en": {"en": 2, "ja": 1},
                                              "ja": {"en": 4, "ja": 4, "zh_cn": 1}}


def _write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ray_cora", *args], capture_output=True, text=True, timeout=120)


def test_evaluate_retrieval_command_writes_metrics_report_and_plots(tmp_path):
    _write_jsonl(tmp_path / "retrieval.jsonl", ROWS)
    result = _cli("evaluate", "retrieval", "--retrieval", str(tmp_path / "retrieval.jsonl"),
                  "--out", str(tmp_path / "eval"), "--ks", "1,2,3,100")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["mode"] == "retrieval" and metrics["ks"] == [1, 2, 3] and metrics["ks_left_out"] == [100]
    assert metrics["per_language"]["ja"]["R^multi@1"] == pytest.approx(200 / 3)
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "| metric | en | ja | macro |" in report and "| R^L@3 | 100.0 | 66.7 | 83.3 |" in report
    assert "k = 100 left out" in report
    for name in ("per_language.png", "retrieved_languages.png"):
        assert (tmp_path / "eval" / name).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("line, message", [
    ('{"qid": "1", "lang": "ja", "answers": [], "ctxs": [', "not valid JSON"),
    ('{"qid": "1", "lang": "ja", "answers": []}', "missing field 'ctxs'"),
    ('{"qid": "1", "lang": "xx", "answers": [], "ctxs": []}', "unknown language code 'xx'"),
    ('{"qid": "1", "lang": "ja", "answers": [], "ctxs": [{"text": "no pid"}]}', "ctxs[0].pid"),
])
def test_bad_retrieval_records_are_one_line_errors_naming_file_and_line(tmp_path, line, message):
    good = json.dumps(ROWS[0], ensure_ascii=False)
    (tmp_path / "r.jsonl").write_text(good + "\n" + line + "\n", encoding="utf-8")
    result = _cli("evaluate", "retrieval", "--retrieval", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()
    assert len(error) == 1 and "r.jsonl:2: " in error[0] and message in error[0], result.stderr
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_bad_generator_and_bad_options_are_clear_errors(tmp_path, tiny_bert):
    result = _cli("evaluate", "all", "--index", str(tmp_path), "--questions", "q", "--dataset", "jsonl",
                  "--out", str(tmp_path / "o"), "--generator", str(tmp_path / "no-model"))
    assert result.returncode == 2 and "no-model: no such folder; pass an mGEN model folder" in result.stderr
    bert = tiny_bert
    result = _cli("evaluate", "all", "--index", str(tmp_path), "--questions", "q", "--dataset", "jsonl",
                  "--out", str(tmp_path / "o"), "--generator", bert)
    assert result.returncode == 2 and "is a bert model, not a seq2seq" in result.stderr
    assert not (tmp_path / "o").exists()  # failed before any work
    result = _cli("retrieve", "--index", "i", "--questions", "q", "--dataset", "mkqa", "--out", "o",
                  "--langs", "ja,klingon")
    assert result.returncode == 2 and "unknown language code 'klingon'" in result.stderr


# --- pure parts of batch retrieval -------------------------------------------------------------


def test_passage_store_finds_every_passage_across_buckets(tmp_path):
    from ray_cora.data.passage_store import PassageStore, build_passage_store

    passages = [{"pid": f"p{i}", "lang": "en" if i % 2 else "ja", "title": f"t{i}", "text": f"text {i}"}
                for i in range(50)]
    _write_jsonl(tmp_path / "corpus.jsonl", passages)
    manifest = build_passage_store(str(tmp_path / "corpus.jsonl"), str(tmp_path / "store"), num_buckets=7,
                                   flush_rows=3)
    assert manifest["num_passages"] == 50 and len(manifest["files"]) == 7
    store = PassageStore(str(tmp_path / "store"), cache_buckets=2)
    found = store.lookup(["p49", "p0", "missing", "p17", "p0"])
    assert found == {p["pid"]: p for p in passages if p["pid"] in ("p49", "p0", "p17")}
    assert len(store.lookup(p["pid"] for p in passages)) == 50 and len(store._open) == 2


def test_missing_passage_text_is_a_clear_error():
    import numpy as np

    from ray_cora.data.retrieval import make_ctxs
    from ray_cora.errors import StorageError

    with pytest.raises(StorageError, match="'p9' is in the index but not in the corpus c.jsonl"):
        make_ctxs(["p9"], np.array([1.0]), {}, source="c.jsonl")
    ctx = make_ctxs(["a"], np.array([0.5]), {"a": {"pid": "a", "lang": "ja", "title": "T", "text": "本文"}},
                    source="c")
    assert ctx == [{"pid": "a", "lang": "ja", "title": "T", "text": "本文", "score": 0.5}]


def test_add_lang_tags_the_question_as_cora_mdpr_does_and_keeps_the_plain_question():
    from ray_cora.data.retrieval import retrieval_record
    from ray_cora.encoders import PLAIN, TAGGED, format_query

    question = {"qid": "7", "lang": "ja", "question": "日本の首都は？", "answers": ["東京"]}
    # CORA mDPR/dense_retriever.py: "{0} [{1}]".format(question, lang), fed to the query encoder
    assert format_query(TAGGED, question["question"], question["lang"]) == "日本の首都は？ [ja]"
    assert format_query(PLAIN, question["question"], question["lang"]) == "日本の首都は？"
    tagged = retrieval_record(question, [], answers_all=None, query=format_query(TAGGED, "日本の首都は？", "ja"))
    assert tagged["question"] == "日本の首都は？" and tagged["query"] == "日本の首都は？ [ja]"
    plain = retrieval_record(question, [], answers_all=None, query=format_query(PLAIN, "日本の首都は？", "ja"))
    assert "query" not in plain


@pytest.mark.parametrize("query_format", ["{question} [{lang}]", "{question}", None])
def test_query_encoder_actor_encodes_the_question_in_the_query_format(tiny_bert, query_format):
    """The actor writes questions as told (--add-lang, or what the index records), else in its
    encoder's own format (hf: plain), and hands the texts on for the records' `query`."""
    import numpy as np

    from ray_cora.encoders import encoder_record, load_encoder
    from ray_cora.pipelines.retrieve import EncodeQuestionBlocks

    bert = tiny_bert  # its vocabulary holds the tagged questions' words and the tags' characters
    questions = [{"qid": "1", "lang": "ja", "question": "日本の首都は？"},
                 {"qid": "2", "lang": "en", "question": "who wrote faust?"}]
    actor = EncodeQuestionBlocks(encoder=f"hf:{bert}", expected_dim=32, index="i", query_format=query_format,
                                 recorded=encoder_record(f"hf:{bert}", dim=32))
    batch = {"block": np.array(["ja-00000"], dtype=object),
             "questions": np.array([json.dumps({"questions": questions})], dtype=object)}
    out = actor(batch)
    assert not out["error"][0]
    vectors = np.frombuffer(out["vectors"][0], dtype=np.float32).reshape(2, 32)
    tagged = query_format == "{question} [{lang}]"
    texts = [f"{q['question']} [{q['lang']}]" if tagged else q["question"] for q in questions]
    np.testing.assert_allclose(vectors, load_encoder(f"hf:{bert}").encode_queries(texts), atol=1e-5)
    assert json.loads(out["queries"][0]) == {"format": query_format or "{question}", "texts": texts}


def test_query_encoder_actor_refuses_an_encoder_that_did_not_build_the_index(tiny_bert, tiny_cpt):
    import numpy as np

    from ray_cora.encoders import encoder_record
    from ray_cora.pipelines.retrieve import EncodeQuestionBlocks

    actor = EncodeQuestionBlocks(encoder=f"hf:{tiny_bert}", expected_dim=32, index="idx",
                                 recorded=encoder_record(f"dpr:{tiny_cpt}", dim=32))
    out = actor({"block": np.array(["en-00000"], dtype=object),
                 "questions": np.array([json.dumps({"questions": []})], dtype=object)})
    error = pickle.loads(out["error"][0])
    assert isinstance(error, ConfigError) and "differs from the one that built index idx" in str(error)


@pytest.mark.parametrize("block_size", [1, 2, 3, 7])
def test_question_blocks_keep_every_question_once_in_order(block_size):
    from ray_cora.data.retrieval import question_blocks

    records = [{"qid": str(i), "lang": "ja" if i % 3 else "en"} for i in range(20)]
    blocks = list(question_blocks(records, block_size))
    assert all(0 < len(b) <= block_size and len({r["lang"] for r in b}) == 1 for _, b in blocks)
    flat = [r for _, b in blocks for r in b]
    assert sorted(flat, key=lambda r: int(r["qid"])) == records
    for lang in ("ja", "en"):
        names = [name for name, b in blocks if b[0]["lang"] == lang]
        assert names == [f"{lang}-{n:05d}" for n in range(len(names))]
        assert [r for name, b in blocks if name in names for r in b] == [r for r in records if r["lang"] == lang]


def test_answers_in_all_languages_unites_mkqa_answers(tmp_path):
    from ray_cora.data.retrieval import answers_in_all_languages

    mkqa = {"example_id": 7, "query": "who?", "queries": {"en": "who?", "ja": "誰？"},
            "answers": {"en": [{"type": "entity", "text": "Dave", "aliases": ["D."]}],
                        "ja": [{"type": "entity", "text": "デイヴ"}]}}
    _write_jsonl(tmp_path / "mkqa.jsonl", [mkqa])
    with pytest.raises(Exception):  # an example missing 24 of MKQA's languages is malformed
        answers_in_all_languages(str(tmp_path / "mkqa.jsonl"), dataset="mkqa")
    jsonl = [{"qid": "7", "lang": "en", "question": "who?", "answers": ["Dave", "D."]},
             {"qid": "7", "lang": "ja", "question": "誰？", "answers": ["デイヴ"]},
             {"qid": "8", "lang": "ja", "question": "何？", "answers": ["何か"]}]
    _write_jsonl(tmp_path / "qa.jsonl", jsonl)
    assert answers_in_all_languages(str(tmp_path / "qa.jsonl"), dataset="jsonl") == {
        "7": ["Dave", "D.", "デイヴ"], "8": ["何か"]}


@pytest.mark.parametrize("line, message", [
    (json.dumps({**ROWS[0], "answers_all": "Tokyo"}), "field 'answers_all' must be a list of strings, got a string"),
    (json.dumps({**ROWS[0], "answers": [1, 2]}), "field 'answers' must be a list of strings"),
    (json.dumps({**ROWS[0], "ctxs": [{"pid": "a", "lang": "en", "text": 5}]}), "field 'ctxs[0].text' must be a string"),
    ("[" * 100_000 + "]" * 100_000, "JSON nested too deeply"),
    (b'{"qid": "1", "lang": "ja", "answers": ["\xff"], "ctxs": []}', "invalid UTF-8"),
])
def test_hostile_retrieval_records_are_one_line_errors_naming_file_and_line(tmp_path, capsys, line, message):
    from ray_cora.cli import main

    good = json.dumps(ROWS[0], ensure_ascii=False).encode("utf-8")
    (tmp_path / "r.jsonl").write_bytes(good + b"\n" + (line if isinstance(line, bytes) else line.encode()) + b"\n")
    assert main(["evaluate", "retrieval", "--retrieval", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "r.jsonl:2: " in error[0] and message in error[0], error
    assert not (tmp_path / "o").exists()


def test_a_retrieval_output_without_any_passage_is_refused_before_anything_is_written(tmp_path, capsys):
    from ray_cora.cli import main

    _write_jsonl(tmp_path / "r.jsonl", [{**row, "ctxs": []} for row in ROWS])
    assert main(["evaluate", "retrieval", "--retrieval", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "every one of its 4 records has an empty 'ctxs' list" in error[0]
    assert not (tmp_path / "o").exists()


def test_a_report_that_cannot_be_drawn_leaves_no_partial_output(tmp_path, monkeypatch):
    from ray_cora.evaluate.retrieval import score_retrieval_file
    from ray_cora.reports import evaluation

    _write_jsonl(tmp_path / "r.jsonl", ROWS)
    metrics = score_retrieval_file(str(tmp_path / "r.jsonl"), ks=[1, 2], heatmap_k=2)

    def broken_heatmap(*args, **kwargs):
        raise ValueError("cannot draw")

    monkeypatch.setattr(evaluation, "language_heatmap", broken_heatmap)
    with pytest.raises(ValueError, match="cannot draw"):
        evaluation.write_evaluation(metrics, str(tmp_path / "o"))
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_a_retrieval_manifest_whose_parts_are_not_a_list_is_one_line(tmp_path, capsys):
    from ray_cora.cli import main
    from ray_cora.data.retrieval import RETRIEVAL_KIND
    from ray_cora.storage import ArtifactWriter

    writer = ArtifactWriter(str(tmp_path / "run"), kind=RETRIEVAL_KIND)
    writer.write_bytes("parts/en-00000.jsonl", (json.dumps(ROWS[3]) + "\n").encode())
    writer.commit({"parts": "parts/en-00000.jsonl"})
    assert main(["evaluate", "retrieval", "--retrieval", str(tmp_path / "run"), "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "run/manifest.json: field 'parts' must be a list of part file names" in error[0]


# --- evaluate retrieval --compare: dense / BM25 / hybrid side by side --------------------------


def _retrieve_folder(path, rows, retriever=None) -> str:
    """A committed `ray-cora retrieve` folder as the retriever writes it (dense runs record no retriever)."""
    from ray_cora.data.retrieval import RETRIEVAL_KIND
    from ray_cora.storage import ArtifactWriter

    writer = ArtifactWriter(str(path), kind=RETRIEVAL_KIND)
    for lang in sorted({r["lang"] for r in rows}):
        part = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows if r["lang"] == lang)
        writer.write_bytes(f"parts/{lang}-00000.jsonl", part.encode("utf-8"))
    writer.commit({"k": max(len(r["ctxs"]) for r in rows), "parts": [f"parts/{l}-00000.jsonl" for l in
                                                                     sorted({r["lang"] for r in rows})],
                   **({"retriever": retriever} if retriever else {})})
    return str(path)


def _ranked(ctx: dict, dense: int | None, bm25: int | None) -> dict:
    return {**ctx, "retrievers": {"dense": dense, "bm25": bm25}}


# The same four questions retrieved three ways: BM25 reverses the dense order; the hybrid keeps
# two passages per question (so its k=3 is left out) with each passage's rank in both lists.
BM25_ROWS = [{**r, "ctxs": [_ranked(c, 3 - i, i + 1) for i, c in enumerate(r["ctxs"][::-1])]} for r in ROWS]
HYBRID_ROWS = [{**r, "ctxs": [_ranked(c, i + 2, 2 - i) for i, c in enumerate(r["ctxs"][1:])]} for r in ROWS]


def _table(report: str, metric: str) -> dict[str, list[str]]:
    """The side-by-side table of one metric: row name → cells (header under "language")."""
    block = report.split(f"### {metric}:", 1)[1].split("###", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in block.splitlines()
            if line.startswith("|") and not line.startswith("|---")]
    return {row[0].strip("*"): row[1:] for row in rows}


def test_compare_scores_each_run_as_alone_side_by_side_with_best_in_bold_and_a_plot(tmp_path, capsys):
    from ray_cora.cli import main
    from ray_cora.evaluate.retrieval import score_retrieval_file

    dense = _retrieve_folder(tmp_path / "dense", ROWS)
    bm25 = _retrieve_folder(tmp_path / "bm25", BM25_ROWS, retriever="bm25")
    hybrid = _retrieve_folder(tmp_path / "hybrid-run", HYBRID_ROWS, retriever="hybrid")
    out = tmp_path / "cmp"
    assert main(["evaluate", "retrieval", "--retrieval", dense, "--compare", f"{bm25},{hybrid}",
                 "--out", str(out), "--ks", "1,2,3"]) == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mode"] == "retrieval_comparison" and metrics["labels"] == ["dense", "bm25", "hybrid"]
    assert metrics["questions"] == {"scored": 4, "left_out": {"dense": 0, "bm25": 0, "hybrid": 0}}
    alone = {label: score_retrieval_file(uri, ks=[1, 2, 3], heatmap_k=10)
             for label, uri in (("dense", dense), ("bm25", bm25), ("hybrid", hybrid))}
    for label, expected in alone.items():
        run = dict(metrics["runs"][label])
        assert run.pop("retriever") == label and run == json.loads(json.dumps(expected))
    assert alone["hybrid"]["ks"] == [1, 2] and alone["dense"] != alone["bm25"]  # the runs do differ

    report = (out / "report.md").read_text()
    for metric in ("R^L@1", "R^L@3", "R^multi@2", "R^gold@1"):
        table = _table(report, metric)
        assert table["language"] == ["dense", "bm25", "hybrid"]
        rows = {lang: {label: alone[label]["per_language"][lang].get(metric) for label in alone}
                for lang in ("en", "ja")} | {"macro": {label: alone[label]["macro"].get(metric) for label in alone}}
        rows = {name: values for name, values in rows.items() if any(v is not None for v in values.values())}
        assert set(table) == {"language", *rows}  # no R^gold row for English: it has no gold passages
        for name, values in rows.items():
            shown = [f"{v:.1f}" if v is not None else "–" for v in values.values()]
            best = max(float(v) for v in shown if v != "–")
            assert table[name] == [f"**{v}**" if v != "–" and float(v) == best else v for v in shown], (metric, name)
    assert _table(report, "R^L@3")["ja"][2] == "–"  # hybrid has two passages per question
    assert "k = 3 left out for hybrid" in report
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "per_language.png").exists()


def test_compare_refuses_runs_of_different_questions_or_scores_those_they_share(tmp_path, capsys):
    from ray_cora.cli import main
    from ray_cora.evaluate.retrieval import score_retrieval_file

    dense = _retrieve_folder(tmp_path / "dense", ROWS)
    bm25 = _retrieve_folder(tmp_path / "bm25", BM25_ROWS[1:], retriever="bm25")  # ja qid 1 is missing
    args = ["evaluate", "retrieval", "--retrieval", dense, "--compare", f"sparse={bm25}", "--ks", "1,3"]
    assert main([*args, "--out", str(tmp_path / "refused")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "dense" in error[0] and "has 4 questions and sparse" in error[0], error
    assert "ja qid 1, only in dense" in error[0] and "--common-questions true" in error[0]
    assert not (tmp_path / "refused").exists()

    out = tmp_path / "shared"
    assert main([*args, "--out", str(out), "--common-questions", "true"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["questions"] == {"scored": 3, "left_out": {"dense": 1, "sparse": 0}}
    _write_jsonl(tmp_path / "dense_shared.jsonl", ROWS[1:])
    assert metrics["runs"]["dense"]["per_language"] == score_retrieval_file(
        str(tmp_path / "dense_shared.jsonl"), ks=[1, 3], heatmap_k=10)["per_language"]
    assert "1 of dense" in (out / "report.md").read_text()


def test_compare_labels_come_from_the_option_the_manifest_or_the_folder(tmp_path, capsys):
    from ray_cora.cli import main
    from ray_cora.configs.evaluate import split_labelled_run
    from ray_cora.evaluate.retrieval import run_labels

    one = _retrieve_folder(tmp_path / "mdpr", ROWS)
    two = _retrieve_folder(tmp_path / "muse", ROWS)  # two dense runs: named by their folders
    _write_jsonl(tmp_path / "cora out.jsonl", ROWS)
    assert run_labels([(None, one), (None, two), (None, str(tmp_path / "cora out.jsonl"))]) == [
        ("mdpr", "dense"), ("muse", "dense"), ("cora_out", None)]
    assert run_labels([("mine", one), (None, two)]) == [("mine", "dense"), ("dense", "dense")]
    assert split_labelled_run("s3://bucket/k=v") == (None, "s3://bucket/k=v")
    assert split_labelled_run("bm25=s3://bucket/k=v") == ("bm25", "s3://bucket/k=v")
    for extra, message in ((["--compare", f"x={one},x={two}"], "the label 'x' names two runs"),
                           (["--label", "dense"], "--label only applies with --compare"),
                           (["--compare", one], "would both be labelled 'mdpr'")):
        assert main(["evaluate", "retrieval", "--retrieval", one, "--out", str(tmp_path / "o"), *extra]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and message in error[0], error
