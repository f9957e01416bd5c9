"""The pivot's pure core: database build/open, answer translation fallbacks, calibration, the
single-query pipeline (muse on the demo assets; no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from ray_cora.demo import DEMO_PIVOT_DB, DEMO_QUESTIONS, DEMO_WIKIDATA_LABELS
from ray_cora.errors import BadRecordError, ConfigError
from ray_cora.pivot import (
    AnswerTranslator,
    LabelTable,
    PivotDatabase,
    PivotPipeline,
    build_database,
    iter_db_records,
    pick_threshold,
)


@pytest.fixture
def demo_db(demo_pivot_db):
    """The session's demo database (tests/conftest.py): 91 questions in shards of 40, 40, 11."""
    return demo_pivot_db


@pytest.fixture(scope="module")
def labels():
    return LabelTable.load(str(DEMO_WIKIDATA_LABELS))


# ------------------------------------------------------------------ database

def test_database_round_trip_and_mips_matches_exact_numpy(demo_db, muse):
    db = PivotDatabase.open(demo_db)
    records = list(iter_db_records(str(DEMO_PIVOT_DB), dataset="jsonl"))
    assert len(db) == 91 and len(db.index.shards) == 3
    assert db.rows["en-db-001"]["answer"] == "3,776 metres" and db.rows["en-db-001"]["source_qid"] == "q-fuji-height"
    assert sum(1 for r in db.rows.values() if r["answer_qid"]) == db.manifest["with_answer_qid"] > 0
    # The sharded search equals brute force over all question vectors.
    matrix = muse.encode_queries([r["question"] for r in records])
    query = muse.encode_queries(["¿Qué altura tiene el monte Fuji?"])
    scores, pids = db.index.search(query, 5)
    order = np.argsort(-(matrix @ query[0]))[:5]
    assert pids[0] == [records[i]["qid"] for i in order]
    assert pids[0][0] == "en-db-001"


def test_database_records_bad_line_and_duplicate_ids(tmp_path, muse):
    src = tmp_path / "db.jsonl"
    src.write_text('{"qid": "a", "question": "Who?", "answer": "Me"}\n{"qid": "b", "question": "What?"}\n')
    with pytest.raises(BadRecordError, match=r"db\.jsonl:2: .*'answer'"):
        list(iter_db_records(str(src), dataset="jsonl"))
    src.write_text('{"qid": "a", "question": "Who?", "answer": "Me"}\n{"qid": "a", "question": "Why?", "answers": ["So"]}\n')
    with pytest.raises(ConfigError, match="'a' appears twice"):
        build_database(list(iter_db_records(str(src), dataset="jsonl")), muse, str(tmp_path / "db"))


@pytest.mark.parametrize("n,size", [(1, 1), (5, 2), (7, 7), (8, 3), (40, 17)])
def test_split_records_covers_every_record_once_in_order(n, size):
    from ray_cora.pivot.database import split_records

    chunks = list(split_records(({"qid": str(i)} for i in range(n)), size))
    assert [number for number, _ in chunks] == list(range(len(chunks)))
    assert [r["qid"] for _, c in chunks for r in c] == [str(i) for i in range(n)]
    assert all(len(c) == size for _, c in chunks[:-1]) and 0 < len(chunks[-1][1]) <= size


def test_duplicate_ids_in_different_shards_are_found_by_the_streaming_check(tmp_path):
    from ray_cora import storage
    from ray_cora.pivot.database import prepare_parts

    records = [{"qid": f"q{i}", "question": f"Q{i}?", "answer": "A", "answers": ["A"], "answer_qid": None,
                "source_qid": None} for i in range(7)] + [{"qid": "q1", "question": "Again?", "answer": "B",
                                                            "answers": ["B"], "answer_qid": None, "source_qid": None}]
    with pytest.raises(ConfigError, match="'q1' appears twice"):
        prepare_parts(iter(records), storage.resolve(str(tmp_path)), shard_size=3, source="in.jsonl",
                      reread=lambda: iter(records))
    parts, done = prepare_parts(iter(records[:7]), storage.resolve(str(tmp_path / "ok")), shard_size=3, source="x")
    assert [p["count"] for p in parts] == [3, 3, 1] and done == {}


def test_single_process_build_resumes_only_missing_or_damaged_shards(tmp_path, muse, demo_db):
    import os
    import shutil

    out = tmp_path / "db"
    shutil.copytree(demo_db, out)
    markers = {n: out / "index" / "shards" / f"shard-0000{n}.json" for n in range(3)}
    mtimes = {n: os.path.getmtime(m) for n, m in markers.items()}
    (out / "answers" / "part-00002.parquet").unlink()  # a lost answer part: shard 2 is redone
    build_database(iter_db_records(str(DEMO_PIVOT_DB), dataset="jsonl"), muse, str(out), shard_size=40)
    assert os.path.getmtime(markers[0]) == mtimes[0] and os.path.getmtime(markers[1]) == mtimes[1]
    assert os.path.getmtime(markers[2]) != mtimes[2]
    rebuilt, original = PivotDatabase.open(str(out)), PivotDatabase.open(demo_db)
    assert dict(rebuilt.rows) == dict(original.rows)
    assert rebuilt.index.manifest["shards"] == original.index.manifest["shards"]


def test_database_with_a_single_answer_table_still_opens(tmp_path, demo_db):
    """Databases written before the answer table was sharded hold one answers.parquet."""
    import json
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from ray_cora import storage

    out = tmp_path / "old"
    shutil.copytree(demo_db, out)
    manifest = json.loads((out / "manifest.json").read_text())
    table = pa.concat_tables([pq.read_table(out / p) for p in manifest.pop("answers")])
    pq.write_table(table, out / "answers.parquet")
    sha, size = storage.sha256_of(str(out / "answers.parquet"))
    manifest["files"] = {"answers.parquet": {"size": size, "sha256": sha}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert dict(PivotDatabase.open(str(out)).rows) == dict(PivotDatabase.open(demo_db).rows)


def test_database_from_xquad_english(tmp_path, muse):
    from tests.support import shared_data

    xquad = shared_data("xquad", "xquad.en.json")
    records = list(iter_db_records(str(xquad), dataset="xquad"))
    assert len(records) == 1190 and all(r["answer"] for r in records)


# ------------------------------------------------------------------ answer translation

class FakeMT:
    """A translator object through the same interface as HFTranslator: covers German only."""

    def __init__(self):
        self.calls = []

    def supports(self, lang):
        return lang == "de"

    def translate(self, texts, target_lang):
        self.calls.append((list(texts), target_lang))
        return [f"<{target_lang}>{t}" for t in texts]


def test_translation_fallback_order(labels):
    mt = FakeMT()
    tr = AnswerTranslator(labels, mt)
    # (1) the answer's QID → its label in the target language.
    assert tr.translate("Mount Fuji", "Q39231", "ja") == ("富士山", "wikidata_qid")
    # (2) no QID: the English answer matched to an English label, or an alias, → QID → label.
    assert tr.translate("Mount Fuji", None, "ko") == ("후지산", "wikidata_en_match")
    assert tr.translate("the Fujiyama", None, "ru") == ("Фудзи", "wikidata_en_match")
    # (3) no label to be found → machine translation, for a language the model covers.
    assert tr.translate("3,776 metres", None, "de") == ("<de>3,776 metres", "mt")
    # (4) the MT model does not cover French → the English answer, marked.
    assert tr.translate("3,776 metres", None, "fr") == ("3,776 metres", "untranslated")
    # English questions get the English answer; a QID without a label in the language falls through.
    assert tr.translate("Mount Fuji", "Q39231", "en") == ("Mount Fuji", "english")
    assert tr.translate("Don Quixote", "Q480", "th") == ("Don Quixote", "untranslated")
    assert mt.calls == [(["3,776 metres"], "de")]


def test_qid_label_wins_over_english_match_and_mt_is_batched(labels):
    mt = FakeMT()
    tr = AnswerTranslator(labels, mt)
    # The QID is trusted over the string: "Mount Fuji" with the Eiffel Tower's QID → its label.
    assert tr.translate("Mount Fuji", "Q243", "de") == ("Eiffelturm", "wikidata_qid")
    out = tr.translate_many([("1889", None), ("Mount Fuji", None), ("1707", None)], "de")
    assert [s for _, s in out] == ["mt", "wikidata_en_match", "mt"]
    assert mt.calls == [(["1889", "1707"], "de")]  # one MT call for what labels could not translate
    assert AnswerTranslator(None, None).translate("Mount Fuji", "Q39231", "ja") == ("Mount Fuji", "untranslated")


def _entity(qid: str, labels: dict, aliases: dict | None = None) -> dict:
    return {"type": "item", "id": qid, "labels": {k: {"language": k, "value": v} for k, v in labels.items()},
            "aliases": {k: [{"language": k, "value": v} for v in vs] for k, vs in (aliases or {}).items()},
            "sitelinks": {}}


def test_labels_loaded_for_a_databases_answers_translate_like_the_full_table(tmp_path):
    import json

    from ray_cora import storage
    from ray_cora.pipelines.wikidata_labels import commit_tables, plan_parts, write_part

    entities = [
        _entity("Q1", {"en": "The Beatles", "ja": "ビートルズ"}),
        _entity("Q2", {"en": "Straße", "de": "Straße", "ja": "通り"}),
        _entity("Q3", {"en": "Paris", "ja": "パリ"}, {"en": ["City of Light"]}),
        _entity("Q4", {"en": "Paris", "ja": "パリ (テキサス州)"}),      # same name later: Q3 keeps "paris"
        _entity("Q5", {"en": "Fab Four", "ja": "ファブ・フォー"}, {"en": ["Beatles"]}),  # alias shadowed by Q1
        _entity("Q6", {"en": "London", "ja": "ロンドン"}),
        _entity("Q7", {"ja": "東京"}),
        _entity("Q8", {"en": "ΣΑΣ", "el": "ΣΑΣ"}),
    ]
    dump = tmp_path / "dump.json"
    dump.write_text("[\n" + ",\n".join(json.dumps(e, ensure_ascii=False) for e in entities) + "\n]\n",
                    encoding="utf-8")
    out = tmp_path / "labels"
    langs = ("en", "ja", "de", "el")
    markers = [write_part(dump=str(dump), out=str(out), part=part, langs=langs, on_bad_record="error")
               for part in plan_parts(str(dump), 3)]
    assert len(markers) > 1  # entities spread over several parts
    commit_tables(storage.resolve(str(out)), markers, config={}, langs=langs)

    answers = ["Beatles", "strasse", "city of light!", "PARIS", "σας", "nothing like it"]
    full = LabelTable.load(str(out))
    kept = LabelTable.load(str(out), answers=answers, qids=["Q7", None])
    for answer in answers:
        assert kept.match_english(answer) == full.match_english(answer)
    assert [kept.match_english(a) for a in answers] == ["Q1", "Q2", "Q3", "Q3", "Q8", None]
    assert all(kept.label(qid, lang) == full.label(qid, lang) for qid in ("Q1", "Q2", "Q3", "Q7", "Q8")
               for lang in langs)
    kept_qids = {qid for qid, _ in kept.labels}
    assert "Q6" not in kept_qids and "Q7" in kept_qids and len(kept.labels) < len(full.labels)
    translator = AnswerTranslator(kept)
    assert translator.translate("The Beatles", None, "ja") == ("ビートルズ", "wikidata_en_match")
    assert translator.translate("anything", "Q7", "ja") == ("東京", "wikidata_qid")


def test_demo_labels_kept_for_the_demo_database_serve_every_answer(demo_db, labels):
    db = PivotDatabase.open(demo_db)
    answers, qids = db.rows.table.column("answer").to_pylist(), db.rows.table.column("answer_qid").to_pylist()
    kept = LabelTable.load(str(DEMO_WIKIDATA_LABELS), answers=answers, qids=qids)
    assert 0 < len(kept.labels) <= len(labels.labels)
    for answer, qid in zip(answers, qids):
        for lang in ("ja", "es", "ar", "zh_cn"):
            assert AnswerTranslator(kept).translate(answer, qid, lang) == AnswerTranslator(labels).translate(answer, qid, lang)


def test_unknown_target_language_is_a_clear_error(labels):
    with pytest.raises(ConfigError, match="unknown language code 'xx'"):
        AnswerTranslator(labels).translate("Mount Fuji", None, "xx")


def test_hf_translator_marian_prefix_and_language_coverage(tmp_path):
    """A tiny config-built seq2seq model behind the hf: spec: language prefix, coverage, output."""
    import torch
    from transformers import BartConfig, BartForConditionalGeneration

    from ray_cora.encoders.tiny import train_wordpiece
    from ray_cora.pivot.translate import HFTranslator

    tok = train_wordpiece(["mount fuji", "der berg fuji", ">>de<< >>fr<<"], vocab_size=80)
    config = BartConfig(vocab_size=len(tok), d_model=16, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                        decoder_ffn_dim=32, max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                        bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
                        decoder_start_token_id=tok.cls_token_id)
    torch.manual_seed(0)
    BartForConditionalGeneration(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    mt = HFTranslator(f"hf:{tmp_path}?style=marian&langs=de&max_length=8")
    assert mt.model_inputs(["Mount Fuji"], "de")[0] == [">>de<< Mount Fuji"]
    assert mt.supports("de") and not mt.supports("fr") and not mt.supports("en")
    out = mt.translate(["Mount Fuji", "1707"], "de")
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
    tr = AnswerTranslator(None, mt)
    assert tr.translate("1707", None, "fr") == ("1707", "untranslated")
    text, source = tr.translate("1707", None, "de")
    assert (text, source) == ((out[1].strip(), "mt") if out[1].strip() else ("1707", "untranslated"))


# ------------------------------------------------------------------ calibration

def test_calibration_picks_smallest_threshold_reaching_precision():
    scores = [0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4]
    correct = [True, True, True, False, True, False, False, True]
    # precision at each cut: 1, 1, 1, .75, .8, .667, .571, .625
    cal = pick_threshold(scores, correct, target_precision=0.8)
    assert cal.threshold == 0.7 and cal.precision == pytest.approx(0.8) and cal.coverage == pytest.approx(5 / 8)
    assert pick_threshold(scores, correct, target_precision=0.6).threshold == 0.4
    assert pick_threshold(scores, correct, target_precision=1.0).threshold == 0.85
    shuffled = np.random.default_rng(0).permutation(len(scores))
    assert pick_threshold(np.array(scores)[shuffled], np.array(correct)[shuffled],
                          target_precision=0.8).threshold == 0.7


def test_calibration_ties_and_unreachable_target():
    # Two examples share 0.9, one of them wrong: a threshold answers both or neither.
    cal = pick_threshold([0.99, 0.9, 0.9, 0.1], [True, True, False, False], target_precision=0.8)
    assert cal.threshold == 0.99 and cal.coverage == 0.25
    none = pick_threshold([0.9, 0.8], [False, False], target_precision=0.5)
    assert none.threshold is None and none.precision_without_threshold == 0.0


def test_prediction_reader_takes_a_run_folder_or_a_folder_of_files(tmp_path):
    import hashlib
    import json

    from ray_cora.data.predictions import read_predictions
    from ray_cora.errors import ChecksumError

    out = tmp_path / "run"
    (out / "parts").mkdir(parents=True)
    lines = {"parts/es-00000.jsonl": '{"qid": "1", "lang": "es", "prediction": "uno"}\n',
             "parts/ja-00000.jsonl": '{"qid": "1", "lang": "ja", "prediction": "一"}\n'}
    files = {}
    for path, text in lines.items():
        (out / path).write_text(text, encoding="utf-8")
        data = text.encode("utf-8")
        files[path] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (out / "manifest.json").write_text(json.dumps({"format_version": 1, "kind": "pivot-predictions",
                                                   "files": files, "parts": list(lines)}))
    got = read_predictions(str(out))
    assert {k: v.prediction for k, v in got.items()} == {("1", "es"): "uno", ("1", "ja"): "一"}
    (out / "parts" / "ja-00000.jsonl").write_text('{"qid": "1", "lang": "ja", "prediction": "二"}\n')
    with pytest.raises(ChecksumError):
        read_predictions(str(out))  # a part changed after the run committed it
    (out / "manifest.json").unlink()  # a plain folder: every *.jsonl, sorted by path
    assert read_predictions(str(out))[("1", "ja")].prediction == "二"


# ------------------------------------------------------------------ pipeline

def test_pipeline_answers_in_the_question_language(demo_db, muse, labels):
    pipe = PivotPipeline(PivotDatabase.open(demo_db), muse, AnswerTranslator(labels))
    result = pipe.answer("¿Quién escribió Don Quijote de la Mancha?", "es")
    assert result["english_answer"] == "Miguel de Cervantes"
    assert result["prediction"] == "Miguel de Cervantes" and result["translation_source"] == "wikidata_qid"
    ja = pipe.answer("『ドン・キホーテ』の作者は誰ですか？", "ja")
    assert ja["prediction"] == "ミゲル・デ・セルバンテス" and not ja["abstained"]
    assert ja["score"] == ja["mips_score"]  # no reranker: the score is the MIPS inner product
    with pytest.raises(ConfigError, match="unknown language code"):
        pipe.answer("¿Quién escribió Don Quijote?", "klingon")


def test_pipeline_mips_accuracy_on_demo_questions(demo_db, muse, labels):
    from ray_cora.data.qa import iter_qa

    pipe = PivotPipeline(PivotDatabase.open(demo_db), muse, AnswerTranslator(labels))
    questions = [q for q in iter_qa(str(DEMO_QUESTIONS), dataset="jsonl") if q["lang"] != "en"]
    results = pipe.answer_batch([q["question"] for q in questions], [q["lang"] for q in questions])
    linked = [(q, r) for q, r in zip(questions, results)
              if any(row["source_qid"] == q["qid"] for row in pipe.db.rows.values())]
    accuracy = sum(r["source_qid"] == q["qid"] for q, r in linked) / len(linked)
    assert accuracy > 0.8, accuracy  # mUSE maps the translations onto their English source question


def test_pipeline_abstains_below_threshold(demo_db, muse, labels):
    pipe = PivotPipeline(PivotDatabase.open(demo_db), muse, AnswerTranslator(labels))
    questions = ["How tall is Mount Fuji?", "Quel est le meilleur fromage pour une raclette ?"]
    free = pipe.answer_batch(questions, ["en", "fr"])
    pipe.threshold = (free[0]["score"] + free[1]["score"]) / 2
    gated = pipe.answer_batch(questions, ["en", "fr"])
    assert [g["abstained"] for g in gated] == [False, True]
    assert gated[1]["prediction"] == "" and gated[1]["translation_source"] is None
    assert gated[1]["matched_qid"] == free[1]["matched_qid"]  # the match is still reported


class PreferQuestion:
    """A reranker object (same ``score`` interface as CrossEncoder) that prefers one question."""

    def __init__(self, wanted):
        self.wanted = wanted
        self.seen = []

    def score(self, queries, candidates):
        self.seen.append(list(candidates))
        return np.array([0.9 if c == self.wanted else 0.1 for c in candidates], dtype=np.float32)


def test_reranker_reorders_the_mips_candidates(demo_db, muse, labels):
    db = PivotDatabase.open(demo_db)
    plain = PivotPipeline(db, muse, AnswerTranslator(labels), k=5).answer("How tall is Mount Fuji?", "en")
    _, pids = db.index.search(muse.encode_queries(["How tall is Mount Fuji?"]), 5)
    third = db.rows[pids[0][2]]["question"]
    reranker = PreferQuestion(third)
    reranked = PivotPipeline(db, muse, AnswerTranslator(labels), reranker=reranker, k=5).answer(
        "How tall is Mount Fuji?", "en")
    assert plain["matched_qid"] == pids[0][0] and reranked["matched_qid"] == pids[0][2]
    assert reranker.seen == [[db.rows[p]["question"] for p in pids[0]]]  # exactly the k MIPS candidates
    assert reranked["score"] == pytest.approx(0.9) and reranked["mips_score"] < plain["mips_score"]


def test_database_on_local_and_s3_storage(storage_root, muse, labels):
    records = list(iter_db_records(str(DEMO_PIVOT_DB), dataset="jsonl"))[:12]
    uri = storage_root.rstrip("/") + "/pivot-db"
    build_database(records, muse, uri, shard_size=5)
    pipe = PivotPipeline(PivotDatabase.open(uri), muse, AnswerTranslator(labels))
    assert pipe.answer(records[7]["question"], "en")["matched_qid"] == records[7]["qid"]


def test_pipeline_accepts_another_spelling_of_the_database_encoder_and_refuses_another_model(
        tmp_path, tiny_bert, tiny_cpt, tiny_bert_factory):
    from ray_cora.encoders import load_encoder

    other_bert = tiny_bert_factory(seed=1)  # same tokenizer, other weights

    records = [{"qid": q, "question": question, "answer": answer, "answers": [answer], "answer_qid": None,
                "source_qid": None}
               for q, question, answer in (("q1", "How tall is Mount Fuji?", "3,776 metres"),
                                           ("q2", "Who wrote Faust?", "Goethe"))]
    db = str(tmp_path / "db")
    build_database(records, load_encoder(f"dpr:{tiny_cpt}", device="cpu"), db)
    pipe = PivotPipeline.load(db, encoder=f"dpr:{tiny_cpt}?config={tiny_bert}&tokenizer={tiny_bert}", k=2)
    assert pipe.encoder.spec.endswith(f"tokenizer={tiny_bert}")
    with pytest.raises(ConfigError, match=r"differs from the one that built pivot database .*: config "):
        PivotPipeline.load(db, encoder=f"dpr:{tiny_cpt}?config={other_bert}")


# ------------------------------------------------------------------ hostile inputs, driver-side checks

def test_database_records_with_lone_surrogates_or_deep_json_are_bad_records(tmp_path):
    import json

    src = tmp_path / "db.jsonl"
    good = '{"qid": "a", "question": "Who?", "answer": "Me"}\n'
    src.write_text(good + json.dumps({"qid": "b", "question": "Wh\ud800o?", "answer": "Me"}) + "\n")
    with pytest.raises(BadRecordError, match=r"db\.jsonl:2: field 'question' holds a lone surrogate"):
        list(iter_db_records(str(src), dataset="jsonl"))
    src.write_text(good + json.dumps({"qid": "c", "question": "Who?", "answers": ["x\udc00"]}) + "\n")
    with pytest.raises(BadRecordError, match=r"db\.jsonl:2: field 'answers' holds a lone surrogate"):
        list(iter_db_records(str(src), dataset="jsonl"))
    src.write_text(good + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(BadRecordError, match=r"db\.jsonl:2: JSON nested too deeply"):
        list(iter_db_records(str(src), dataset="jsonl"))


@pytest.mark.parametrize("content, message", [
    (b"{not json", r"calibration\.json:1: not a calibration file \(Expecting property name"),
    (b"[1, 2]", r"calibration\.json: not a calibration file \(no 'threshold' field\)"),
    (b'{"threshold": "high"}', r"field 'threshold' must be a finite number, got 'high'"),
    (b'{"threshold": NaN}', r"field 'threshold' must be a finite number, got nan"),
    (b'{"threshold": null, "target_precision": 0.9}', r"found no threshold reaching precision 0.9"),
])
def test_a_broken_calibration_file_is_one_line_naming_it(content, message):
    from ray_cora.pivot.calibrate import calibrated_threshold

    with pytest.raises(ConfigError, match=message):
        calibrated_threshold(content, "calibration.json")
    assert calibrated_threshold(b'{"threshold": 0.25}', "calibration.json") == 0.25


def test_what_pivot_actors_load_is_checked_on_the_driver(tmp_path, demo_db):
    from ray_cora.errors import StorageError

    with pytest.raises(StorageError, match=r"nodb/manifest\.json: not found"):
        PivotPipeline.check_sources(str(tmp_path / "nodb"))
    with pytest.raises(StorageError, match=r"nolabels: no such label table"):
        PivotPipeline.check_sources(demo_db, labels=str(tmp_path / "nolabels"))
    with pytest.raises(ConfigError, match=r"cannot load the cross-encoder \(--reranker\) from .*: no such folder"):
        PivotPipeline.check_sources(demo_db, reranker=f"hf:{tmp_path / 'noreranker'}")
    with pytest.raises(ConfigError, match=r"cannot load the translation model \(--translator\)"):
        PivotPipeline.check_sources(demo_db, translator=f"hf:{tmp_path / 'nomt'}?style=marian")
    PivotPipeline.check_sources(demo_db, labels=str(DEMO_WIKIDATA_LABELS), k=5)


@pytest.mark.parametrize("change, message", [
    (lambda m: m.pop("encoder"), "has no 'encoder.spec'"),
    (lambda m: m.update(index=None), "has no 'index' folder name"),
    (lambda m: m.update(answers="answers.parquet"), "field 'answers' must be a list of file names"),
    # The index folder lies inside the database: a crafted manifest cannot point a reader elsewhere.
    (lambda m: m.update(index="/etc"), "field 'index' '/etc' is an absolute path"),
    (lambda m: m.update(index="../other-db/index"), "field 'index' '../other-db/index' leaves the artifact's folder"),
])
def test_a_malformed_database_manifest_is_one_line_not_a_key_error(tmp_path, demo_db, change, message):
    import json
    import shutil

    from ray_cora.errors import StorageError

    db = tmp_path / "db"
    shutil.copytree(demo_db, db)
    manifest = json.loads((db / "manifest.json").read_text())
    change(manifest)
    (db / "manifest.json").write_text(json.dumps(manifest))
    for open_it in (lambda: PivotDatabase.open(str(db)), lambda: PivotPipeline.check_sources(str(db))):
        with pytest.raises(StorageError, match=rf"db/manifest\.json: the pivot database manifest {message}"):
            open_it()
