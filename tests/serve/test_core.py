"""The Serve layer's pure parts, without Ray: input limits, request models, the retriever core."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from ray_cora.configs.serve import ServeAppOptions
from ray_cora.demo import DEMO_PASSAGES
from ray_cora.errors import ConfigError
from ray_cora.index.fusion import FusionSetting, FusionWeights
from ray_cora.index.sharded import commit_index, merge_pid_arrays, write_shard
from ray_cora.serve.core import (CopyRotation, RetrieverCore, build_index, fan_out, open_passages, pivot_response,
                                 shard_group)
from ray_cora.serve.schemas import AnswerRequest, ClientError, Limits, RetrieveRequest, describe_validation_errors

# --- input limits -------------------------------------------------------------------------------

LIMITS = Limits(max_question_chars=20, max_k=50, default_k=7)


@pytest.mark.parametrize("question", ["", "   ", "\n\t"])
def test_empty_question_is_refused(question):
    with pytest.raises(ClientError) as err:
        LIMITS.question(question)
    assert err.value.status == 422 and err.value.field == "question"


def test_question_length_limit_counts_characters_after_stripping():
    assert LIMITS.question("  " + "富" * 20 + "  ") == "富" * 20
    with pytest.raises(ClientError, match="21 characters long; the limit is 20") as err:
        LIMITS.question("富" * 21)
    assert err.value.status == 422


def test_language_is_normalised_or_refused_with_close_matches():
    assert LIMITS.lang("zh-CN") == "zh_cn" and LIMITS.lang(None) is None
    with pytest.raises(ClientError, match="unknown language code 'jp'") as err:
        LIMITS.lang("jp")
    assert err.value.field == "lang" and err.value.status == 422
    with pytest.raises(ClientError, match="lang is required"):
        LIMITS.lang(None, required=True)


@pytest.mark.parametrize("k", [0, -1, 51, 10**9])
def test_k_out_of_range_is_refused(k):
    with pytest.raises(ClientError, match="between 1 and 50") as err:
        LIMITS.k(k)
    assert err.value.field == "k"


@pytest.mark.parametrize("name,value,limit", [("nprobe", 0, 1024), ("nprobe", 1025, 1024),
                                              ("ef_search", 5000, 4096)])
def test_search_parameters_out_of_range_are_refused_naming_the_field(name, value, limit):
    with pytest.raises(ClientError, match=f"{name} must be between 1 and {limit}") as err:
        Limits().search_param(name, value)
    assert err.value.field == name and err.value.status == 422
    assert Limits().search_param(name, None) is None and Limits().search_param(name, limit) == limit


def test_k_defaults_and_bounds_are_inclusive():
    assert LIMITS.k(None) == 7 and LIMITS.k(1) == 1 and LIMITS.k(50) == 50


def test_client_error_survives_pickling_as_ray_ships_it():
    import pickle

    err = pickle.loads(pickle.dumps(ClientError(503, "no pivot database configured", field=None,
                                                code="not_configured", headers={"Retry-After": "5"})))
    assert (err.status, err.body(), err.headers) == (503, {"error": "no pivot database configured", "field": None,
                                                           "type": "unavailable_error", "code": "not_configured"},
                                                     {"Retry-After": "5"})


@pytest.mark.parametrize("field, call", [("question", lambda text: LIMITS.question(text)),
                                         ("lang", lambda text: LIMITS.lang(text))])
@pytest.mark.parametrize("text", ["a\ud800b", "\udfff", "ok \udbff"])
def test_lone_surrogates_are_refused_at_the_edge_naming_the_field(field, call, text):
    """A JSON escape like "\\ud800" decodes to a str no encoder can read (issue 19 #2: a 500 that took
    its whole batch down): refused before any model sees it, with an error body that is valid UTF-8."""
    with pytest.raises(ClientError, match="lone UTF-16 surrogate") as err:
        call(text)
    assert (err.value.status, err.value.field, err.value.code) == (422, field, "invalid_text")
    json.dumps(err.value.body(), ensure_ascii=False).encode("utf-8")  # what the response sends
    assert LIMITS.question("a\U0001F600b") == "a\U0001F600b"  # a real pair (an emoji) is text


def test_error_bodies_of_unencodable_input_are_still_utf8():
    with pytest.raises(ValidationError) as exc:  # FastAPI decodes with json.loads, which keeps surrogates
        RetrieveRequest.model_validate(json.loads('{"\\ud800": 1, "question": "a"}'))
    err = describe_validation_errors(exc.value.errors())
    assert (err.status, err.code) == (422, "invalid_text") and "lone UTF-16 surrogate" in err.message
    json.dumps(err.body(), ensure_ascii=False).encode("utf-8")


def test_an_error_inside_a_deployment_is_answered_without_its_traceback():
    """Issue 19 #8: errors raised in deployments reach the Ingress wrapped by Ray (with the remote
    traceback); the response names the class only, and a deployment's ClientError keeps its status."""
    from ray.exceptions import ActorDiedError, RayTaskError
    from ray.serve.exceptions import BackPressureError

    from ray_cora.serve.app import error_for_exception

    secret = "Traceback (most recent call last):\n  File \"/srv/models/secret.py\", line 3"
    wrapped = RayTaskError("search", secret, ValueError("/srv/models/secret.py")).as_instanceof_cause()
    error = error_for_exception(wrapped, "/v1/retrieve")
    assert (error.status, error.code, error.body()["type"]) == (500, "internal_error", "server_error")
    assert "ValueError" in error.message and "secret" not in json.dumps(error.body())
    refused = RayTaskError("search", secret, ClientError(422, "question is empty", field="question")
                           ).as_instanceof_cause()
    assert error_for_exception(refused, "/v1/retrieve").body() == {
        "error": "question is empty", "field": "question", "type": "invalid_request_error", "code": "invalid_value"}
    assert error_for_exception(ActorDiedError(), "/v1/pivot").status == 503
    shed = error_for_exception(BackPressureError(num_queued_requests=9, max_queued_requests=8), "/v1/retrieve")
    assert (shed.status, shed.code, shed.body()["type"]) == (503, "overloaded", "unavailable_error")


# --- request models: strict types, unknown fields refused -------------------------------------

def _error_for(body: str, model=RetrieveRequest) -> ClientError:
    with pytest.raises(ValidationError) as exc:
        model.model_validate_json(body)
    return describe_validation_errors(exc.value.errors())


@pytest.mark.parametrize("body, status, field, message", [
    ('{"question": "a", "k": "3"}', 422, "k", "valid integer"),
    ('{"question": "a", "k": true}', 422, "k", "valid integer"),
    ('{"question": "a", "k": 2.5}', 422, "k", "valid integer"),
    ('{"question": 3}', 422, "question", "valid string"),
    ('{"question": "a", "lang": 5}', 422, "lang", "valid string"),
    ('{"question": "a", "extra": 1}', 422, "extra", "unknown field"),
    ('{"k": 3}', 422, "question", "question is required"),
    ('[1, 2]', 422, None, "must be a JSON object"),
    ('{"question": "a",', 400, None, "not valid JSON"),
])
def test_malformed_requests_name_what_is_wrong(body, status, field, message):
    err = _error_for(body)
    assert (err.status, err.field) == (status, field)
    assert message in err.message


def test_answer_request_needs_a_language():
    err = _error_for(json.dumps({"question": "a"}), AnswerRequest)
    assert err.field == "lang" and "required" in err.message


def test_well_formed_request_parses():
    assert RetrieveRequest.model_validate_json('{"question": "q", "lang": "ja", "k": 3}').k == 3


# --- options ------------------------------------------------------------------------------------

def test_app_options_reject_default_k_above_max_k_and_unknown_encoders():
    with pytest.raises(ValidationError, match="default_k"):
        ServeAppOptions(default_k=20, max_k=10)
    with pytest.raises(ConfigError, match="unknown encoder spec"):
        ServeAppOptions(encoder="word2vec")
    with pytest.raises(ValidationError, match="extra"):
        ServeAppOptions.model_validate({"indx": "s3://b/i"})


def test_serve_command_parses_into_its_config():
    from ray_cora.cli import JOBS, build_parser
    from ray_cora.configs.arguments import config_from_args

    args = build_parser().parse_args(["serve", "--port", "8123", "--pivot-db", "demo", "--max-k", "20"])
    config = config_from_args(JOBS["serve"].config, args)
    assert (config.host, config.port, config.max_k) == ("127.0.0.1", 8123, 20)
    assert config.app_options().pivot_db == "demo"
    args = build_parser().parse_args(["serve", "--lexical-index", "/bm25", "--fusion", "/f.json", "--retriever", "bm25"])
    options = config_from_args(JOBS["serve"].config, args).app_options()
    assert (options.lexical_index, options.fusion, options.default_retriever) == ("/bm25", "/f.json", "bm25")


def test_app_refuses_to_start_when_its_api_key_variable_is_unset(monkeypatch):
    from ray_cora.serve.app import build_app

    monkeypatch.delenv("RAY_CORA_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="RAY_CORA_TEST_KEY is not set"):
        build_app({"api_key_env": "RAY_CORA_TEST_KEY"})


# --- the retriever core (real mUSE over the demo corpus) ----------------------------------------

def _demo_rows() -> dict[str, dict]:
    rows = [json.loads(line) for line in DEMO_PASSAGES.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {r["pid"]: r for r in rows}


@pytest.fixture(scope="module")
def demo_core():
    """Serve's default: no index given, so the demo corpus is embedded at load. Kept as its own build
    (not the session's demo_index): it is what tests RetrieverCore.load(index=None) without Ray."""
    return RetrieverCore.load(index=None)


def test_retriever_core_ranks_like_brute_force_inner_product(demo_core):
    rows = _demo_rows()
    pids = list(rows)
    passages = demo_core.encoder.encode_passages([rows[p]["title"] for p in pids],
                                                 [rows[p]["text"] for p in pids])
    questions = ["How tall is Mount Fuji?", "富士山の高さは？", "¿Quién escribió Don Quijote?"]
    expected = np.argsort(-(demo_core.encoder.encode_queries(questions) @ passages.T), axis=1)
    results = demo_core.retrieve(questions, [5, 1, 3])
    assert [len(r) for r in results] == [5, 1, 3]
    for result, order in zip(results, expected):
        assert [p["pid"] for p in result] == [pids[i] for i in order[:len(result)]]
        assert all(a["score"] >= b["score"] for a, b in zip(result, result[1:]))
    fuji = results[0][0]
    assert "fuji" in fuji["pid"] and fuji["text"] == rows[fuji["pid"]]["text"]
    assert fuji["lang"] == rows[fuji["pid"]]["lang"] and fuji["title"] == rows[fuji["pid"]]["title"]


def test_retriever_core_batches_give_the_same_answer_as_single_questions(demo_core):
    questions = ["How tall is Mount Fuji?", "Wer hat die Relativitätstheorie entwickelt?", "首尔是哪个国家的首都？"]
    together = demo_core.retrieve(questions, [4, 4, 4])
    alone = [demo_core.retrieve([q], [4])[0] for q in questions]
    assert [[p["pid"] for p in r] for r in together] == [[p["pid"] for p in r] for r in alone]


def test_retriever_refuses_an_index_built_by_another_encoder(tmp_path):
    pids = list(_demo_rows())[:3]
    shard = write_shard(str(tmp_path), 0, pids, np.eye(3, 512, dtype="float32"))
    commit_index(str(tmp_path), [shard], encoder={"spec": "hf:other-model", "dim": 512, "normalized": True})
    with pytest.raises(ConfigError, match="differs from the one that built"):
        RetrieverCore.load(index=str(tmp_path), passages=str(DEMO_PASSAGES), encoder="muse")


@pytest.mark.parametrize("manifest_dim, message", [
    (512, "records 512-d vectors .* but its FAISS shards hold 8-d vectors"),
    (8, "records 8-d vectors .* the query encoder makes 512-d vectors")])
def test_retriever_refuses_an_index_whose_manifest_dimension_does_not_match(tmp_path, manifest_dim, message):
    """Issue 19 #8: such an index started, and every /v1/retrieve then failed with a 500. Refused at
    load (a replica's start), as ray-cora retrieve refuses it."""
    pids = list(_demo_rows())[:3]
    shard = write_shard(str(tmp_path), 0, pids, np.eye(3, 8, dtype="float32"))
    commit_index(str(tmp_path), [shard], encoder={"spec": "muse", "dim": manifest_dim, "normalized": True})
    with pytest.raises(ConfigError, match=message):
        RetrieverCore.load(index=str(tmp_path), passages=str(DEMO_PASSAGES), encoder="muse")


def test_serve_refuses_a_busy_port_in_one_line_naming_it():
    import socket

    from ray_cora.serve.run import ServeStartError, check_port_free

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ServeStartError, match=f"port {port} on 127.0.0.1 is in use .*--port") as err:
            check_port_free("127.0.0.1", port)
        assert "\n" not in str(err.value)
    check_port_free("127.0.0.1", port)  # free again


def _tiny_corpus(tmp_path) -> str:
    rows = [("e", "Eiffel Tower", "The Eiffel Tower is in Paris."), ("f", "Faust", "Goethe wrote Faust."),
            ("t", "", "Tokyo is the capital of Japan.")]
    corpus = tmp_path / "tiny.jsonl"
    corpus.write_text("".join(json.dumps({"pid": p, "lang": "en", "title": t, "text": x}) + "\n" for p, t, x in rows))
    return str(corpus)


def test_retriever_accepts_another_spelling_of_the_model_that_built_the_index(tmp_path, tiny_bert, tiny_cpt):
    from ray_cora.encoders import load_encoder

    corpus = _tiny_corpus(tmp_path)
    uri = build_index(load_encoder(f"dpr:{tiny_cpt}", device="cpu"), corpus, str(tmp_path / "index"))
    manifest_path = tmp_path / "index" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["encoder"]["identity"]["checkpoint_sha256"]  # recorded by build_index
    for recorded in (manifest["encoder"], {k: manifest["encoder"][k] for k in ("spec", "dim", "normalized")}):
        # ... and as an index written before identities were recorded has it
        manifest_path.write_text(json.dumps({**manifest, "encoder": recorded}))
        core = RetrieverCore.load(index=uri, encoder=f"dpr:{tiny_cpt}?config={tiny_bert}&max_length=64",
                                  passages=corpus)
        assert sorted(p["pid"] for p in core.retrieve(["Who wrote Faust?"], [3])[0]) == ["e", "f", "t"]
    # With languages, questions are written in the encoder's query format (dpr: CORA's tagged form).
    np.testing.assert_array_equal(core.encode(["Who wrote Faust?"], ["de"]),
                                  core.encoder.encode_queries(["Who wrote Faust? [de]"]))


def test_retriever_refuses_other_weights_at_the_path_that_built_the_index(tmp_path, tiny_bert):
    from ray_cora.encoders import encoder_record, load_encoder
    from ray_cora.encoders.tiny import build_tiny_dpr_checkpoint

    corpus, cpt = _tiny_corpus(tmp_path), build_tiny_dpr_checkpoint(tmp_path / "model.cpt", tiny_bert)
    encoder = load_encoder(f"dpr:{cpt}", device="cpu")
    pids = ["e", "f", "t"]
    shard = write_shard(str(tmp_path / "index"), 0, pids, encoder.encode_passages(["", "", ""], pids))
    commit_index(str(tmp_path / "index"), [shard], encoder=encoder_record(encoder))
    RetrieverCore.load(index=str(tmp_path / "index"), encoder=f"dpr:{cpt}?config={tiny_bert}", passages=corpus)
    build_tiny_dpr_checkpoint(cpt, tiny_bert, ctx_seed=2)  # retrained into the same file: same spec, another model
    refusal = (r"encoder 'dpr:.*model.cpt' differs from the one that built index .* \('dpr:.*model.cpt'\): "
               r"checkpoint_sha256 \w+… \(recorded\) vs \w+… \(now\)")
    with pytest.raises(ConfigError, match=refusal):
        RetrieverCore.load(index=str(tmp_path / "index"), encoder=f"dpr:{cpt}", passages=corpus)


def test_retriever_names_a_pid_missing_from_the_passages(demo_core, tmp_path):
    class OneHot:
        spec, dim, normalized = "muse", 512, True

        def encode_passages(self, titles, texts):
            return np.eye(len(texts), 512, dtype="float32")

    corpus = tmp_path / "ab.jsonl"
    corpus.write_text("".join(json.dumps({"pid": p, "lang": "en", "title": p.upper(), "text": p}) + "\n"
                              for p in "ab"))
    uri = build_index(OneHot(), str(corpus), str(tmp_path / "index"))
    core = RetrieverCore.load(index=uri, passages=str(DEMO_PASSAGES))  # the wrong corpus
    with pytest.raises(ConfigError, match="pid '[ab]' .* is not in the passages"):
        core.retrieve(["anything"], [1])


def test_pivot_response_hides_the_answer_when_the_pipeline_abstains():
    result = {"prediction": "", "abstained": True, "matched_question": "How tall is Mount Fuji?",
              "matched_qid": "en-db-001", "score": 0.2, "english_answer": "3,776 metres",
              "translation_source": None}
    body = pivot_response("¿Altura del Fuji?", "es", result)
    assert body["answer"] is None and body["abstained"] is True and body["score"] == 0.2
    answered = pivot_response("q", "es", {**result, "abstained": False, "prediction": "3776 m"})
    assert answered["answer"] == "3776 m"


def test_retriever_reads_texts_from_a_committed_passage_store_like_from_its_own(demo_core, tmp_path):
    from ray_cora.data.passage_store import PassageStore, build_passage_store

    assert isinstance(demo_core.passages, PassageStore)  # the retrieval job's store, built at load
    build_passage_store(str(DEMO_PASSAGES), str(tmp_path / "store"), num_buckets=3)
    from_store = RetrieverCore.load(index=demo_core.index_uri, passage_store=str(tmp_path / "store"),
                                    cache_buckets=1)
    assert from_store.passages.artifact.root.path == str(tmp_path / "store")
    questions = ["How tall is Mount Fuji?", "서울은 어느 나라의 수도입니까?"]
    assert from_store.retrieve(questions, [6, 6]) == demo_core.retrieve(questions, [6, 6])


def test_passages_default_to_the_corpus_the_index_manifest_names(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"pid": "x1", "lang": "fr", "title": "X", "text": "texte"}) + "\n")
    store = open_passages(passage_store=None, passages=None, index_manifest={"passages": str(corpus)})
    assert store.lookup(["x1", "nope"]) == {"x1": {"pid": "x1", "lang": "fr", "title": "X", "text": "texte"}}
    with pytest.raises(ConfigError, match="does not name the corpus"):
        open_passages(passage_store=None, passages=None, index_manifest={})
    with pytest.raises(Exception, match="never committed"):
        open_passages(passage_store=str(tmp_path / "no-store"), passages=None, index_manifest={})


def test_passage_store_without_an_index_is_refused():
    with pytest.raises(ValidationError, match="passage_store needs index"):
        ServeAppOptions(passage_store="s3://b/store")


def test_generator_adapter_answers_from_retrieved_passages(demo_core, tiny_t5):
    from ray_cora.models.mgen import format_source
    from ray_cora.serve.core import load_generator

    generator = load_generator(tiny_t5, top_k=2)
    passages = demo_core.retrieve(["How tall is Mount Fuji?", "富士山の高さは？"], [3, 3])
    answers = generator.answer(["How tall is Mount Fuji?", "富士山の高さは？"], ["en", "ja"], passages)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    # top_k from answer_passages reaches the model's input: only 2 of the 3 passages are read.
    assert generator.top_k == 2 and "<2:" not in format_source("q", "en", passages[0], top_k=generator.top_k)


# --- shard groups: the index split over several searchers, merged exactly -----------------------

def test_shard_groups_cover_every_shard_once():
    for shards, groups in [(5, 2), (7, 3), (4, 4), (1, 1)]:
        members = [shard_group(shards, groups, g) for g in range(groups)]
        assert sorted(s for m in members for s in m) == list(range(shards)) and all(members)
    with pytest.raises(ConfigError, match="only 3 shard"):
        shard_group(3, 4, 0)


@pytest.fixture
def split_index(demo_index):
    """The demo corpus embedded into 5 shards (176 passages, 40 a shard): the session's demo_index."""
    return demo_index


def test_shard_group_merge_equals_one_index_over_all_shards(split_index, demo_core):
    from ray_cora.index.sharded import ShardedIndex

    whole = ShardedIndex.open(split_index)
    assert len(whole.shards) == 5
    groups = [ShardedIndex.open(split_index, shards=shard_group(5, 2, g)) for g in range(2)]
    queries = demo_core.encode(["How tall is Mount Fuji?", "首尔是哪个国家的首都？", "Qui a peint la Joconde ?"])
    rng = np.random.default_rng(0)
    queries = np.concatenate([queries, rng.standard_normal((5, queries.shape[1])).astype("float32")])
    for k in (1, 7, 50, 200):  # 200 > every group's size and the corpus: all slots, no padding pids
        scores, pids = merge_pid_arrays([g.search_pid_arrays(queries, k) for g in groups], k)
        expected_scores, expected_pids = whole.search(queries, k)
        assert pids == expected_pids
        np.testing.assert_array_equal(scores, expected_scores)


def test_retriever_core_without_the_index_gives_the_same_passages(split_index, demo_core):
    from ray_cora.index.sharded import ShardedIndex

    holder = RetrieverCore.load(index=split_index)
    front = RetrieverCore.load(index=split_index, hold_index=False)
    assert front.index is None
    questions, ks = ["How tall is Mount Fuji?", "¿Quién escribió Don Quijote?"], [4, 9]
    vectors = front.encode(questions)
    partials = [ShardedIndex.open(split_index, shards=shard_group(5, 3, g)).search_pid_arrays(vectors, 9)
                for g in range(3)]
    assert front.attach(*merge_pid_arrays(partials, 9), ks) == holder.retrieve(questions, ks)
    with pytest.raises(ConfigError, match="holds no index"):
        front.retrieve(questions, ks)


def test_shard_groups_need_an_index_and_are_the_retrievers_deployment_actors():
    from ray.serve._private.build_app import build_app as serve_build

    from ray_cora.serve.app import IndexShardGroup, build_app, deployment_names, shard_group_names

    with pytest.raises(ValidationError, match="shard_groups=2 needs index"):
        ServeAppOptions(shard_groups=2)
    opts = ServeAppOptions(index="s3://b/index", shard_groups=3, pivot_db="demo", search_gpus=0.5,
                           shard_group_memory=2**30)
    deployments = {d.name: d for d in serve_build(build_app(opts), name="ray_cora").deployments}
    # No Serve hop to the groups: they are actors the controller keeps for the Retriever's replicas,
    # one per group, each told its group number and given the search GPUs.
    actors = deployments["Retriever"]._deployment_config.deployment_actors
    assert [a.name for a in actors] == shard_group_names(opts) == ["IndexShardGroup0", "IndexShardGroup1",
                                                                   "IndexShardGroup2"]
    assert [a.init_args[1] for a in actors] == [0, 1, 2] and all(a.init_args[0] == opts.to_dict() for a in actors)
    assert all(a.actor_options["num_gpus"] == 0.5 and a.actor_options["max_concurrency"] > 1 for a in actors)
    assert all((a.actor_options["num_cpus"], a.actor_options["memory"]) == (opts.replica_cpus, 2**30) for a in actors)
    assert actors[0].get_actor_class().__ray_actor_class__.__name__ == IndexShardGroup.__name__
    assert "num_gpus" not in deployments["Retriever"].ray_actor_options or \
        deployments["Retriever"].ray_actor_options["num_gpus"] == opts.replica_gpus  # the groups hold the index
    assert set(deployments) == set(deployment_names(opts)) == {"Ingress", "Retriever", "PivotReranker"}
    assert set(deployment_names(ServeAppOptions())) == {"Ingress", "Retriever"}
    one = {d.name: d for d in serve_build(build_app(ServeAppOptions()), name="ray_cora").deployments}
    assert not one["Retriever"]._deployment_config.deployment_actors and shard_group_names(ServeAppOptions()) == []


def test_shard_group_copies_are_more_actors_of_each_group_and_need_shard_groups():
    from ray.serve._private.build_app import build_app as serve_build

    from ray_cora.serve.app import build_app, shard_group_names

    with pytest.raises(ValidationError, match="shard_group_copies=2 needs shard_groups above 1"):
        ServeAppOptions(index="s3://b/index", shard_group_copies=2)
    opts = ServeAppOptions(index="s3://b/index", shard_groups=2, shard_group_copies=3, shard_group_memory=2**30)
    deployments = {d.name: d for d in serve_build(build_app(opts), name="ray_cora").deployments}
    actors = deployments["Retriever"]._deployment_config.deployment_actors
    # Every copy is an actor of its own (Serve health-checks and recreates each), told its group;
    # each reserves a group's memory: the index's memory times the copies in all.
    assert [a.name for a in actors] == shard_group_names(opts) == [
        f"IndexShardGroup{g}-{c}" for g in range(2) for c in range(3)]
    assert [a.init_args[1:] for a in actors] == [(g, c) for g in range(2) for c in range(3)]
    assert all(a.actor_options["memory"] == 2**30 for a in actors)
    assert set(deployments) == {"Ingress", "Retriever"}  # still no deployment (and Serve hop) per copy


def test_copy_rotation_takes_turns_and_rests_a_failed_copy_until_its_recheck():
    now = [0.0]
    rotation = CopyRotation(3, start=1, recheck_s=5, clock=lambda: now[0])
    assert [rotation.order() for _ in range(4)] == [[1, 2, 0], [2, 0, 1], [0, 1, 2], [1, 2, 0]]
    rotation.failed(2)
    assert rotation.is_down(2)
    # Copy 2 is tried last (only when the others fail) while it rests; the rotation goes on.
    assert [rotation.order() for _ in range(3)] == [[0, 1, 2], [1, 0, 2], [0, 1, 2]]
    now[0] = 5.0  # its recheck is due: it takes its turn again (the caller looks it up first)
    assert [rotation.order() for _ in range(3)] == [[1, 2, 0], [2, 0, 1], [0, 1, 2]]
    assert rotation.is_down(2)
    rotation.answered(2)
    assert not rotation.is_down(2)
    with pytest.raises(ValueError, match="at least 1"):
        CopyRotation(0)


def test_fan_out_searches_every_group_once_per_setting_and_merges_exactly(split_index):
    from ray_cora.index.sharded import ShardedIndex

    groups = [ShardedIndex.open(split_index, shards=shard_group(5, 2, g)) for g in range(2)]
    whole = ShardedIndex.open(split_index)
    vectors = np.random.default_rng(1).standard_normal((4, whole.dim)).astype("float32")
    submitted = []

    def submit(v, k, nprobe, ef_search):
        submitted.append((len(v), k, nprobe))
        return [g.search_pid_arrays(v, k, nprobe=nprobe, ef_search=ef_search) for g in groups]

    scores, pids = fan_out(vectors, [3, 12, 2, 1], [(None, None), (None, None), (7, None), (None, None)],
                           submit, lambda partials: partials)
    assert submitted == [(3, 12, None), (1, 2, 7)]  # one search per distinct setting, all before any wait
    expected_scores, expected_pids = whole.search(vectors, 12)
    assert [row[:k] for row, k in zip(pids, [3, 12, 2, 1])] == [row[:k] for row, k in zip(expected_pids,
                                                                                          [3, 12, 2, 1])]
    # Equal up to float rounding: FAISS's SIMD kernels batch database vectors four at a time, so a
    # vector's score may round differently in a group's index than in the whole one (seen: 1e-6).
    np.testing.assert_allclose(scores[1], expected_scores[1], rtol=1e-5, atol=1e-6)


_DIED = object()  # what a killed actor's call gives: ray.get raises


class _Group:
    """Stands in for a shard group's ActorHandle: ``handle.search.remote(...)`` returns the result
    itself (the test's ray.get is the identity), a dead one a reference whose ray.get raises."""

    def __init__(self, index, calls: list, dead: bool = False) -> None:
        self.index, self.calls, self.dead = index, calls, dead
        self._actor_id = object()
        self.search = self.ping = self

    def remote(self, vectors=None, k=None, nprobe=None, ef_search=None):
        self.calls.append(None if vectors is None else (len(vectors), k, nprobe))
        if self.dead:
            return _DIED
        return True if vectors is None else self.index.search_pid_arrays(vectors, k, nprobe=nprobe,
                                                                          ef_search=ef_search)


def _get(ref):
    from ray.exceptions import ActorDiedError

    if ref is _DIED:
        raise ActorDiedError()
    return ref


def _retriever_over(split_index, monkeypatch, handles: dict, copies: int = 1, **options):
    import ray_cora.serve.app as app

    monkeypatch.setattr(app.ray, "get", _get)
    monkeypatch.setattr(app.serve, "get_deployment_actor", lambda name: handles[name]())
    return app.Retriever.func_or_class({"index": split_index, "shard_groups": 2, "shard_group_copies": copies,
                                        **options})


def test_retriever_deployment_fans_each_batch_out_to_every_group_and_merges(split_index, monkeypatch):
    """The Retriever's batch body (outside Serve: the Batcher's wrapped function) with stand-in
    group actors: one search per group per batch, and the same passages as one whole index."""
    import asyncio

    from ray_cora.index.sharded import ShardedIndex
    from ray_cora.serve.app import Retriever

    calls = []
    groups = [_Group(ShardedIndex.open(split_index, shards=shard_group(5, 2, g)), calls) for g in range(2)]
    body = _retriever_over(split_index, monkeypatch, {f"IndexShardGroup{g}": lambda g=g: groups[g] for g in range(2)})
    assert body.core.index is None  # the index lives in the groups only
    batch = [("How tall is Mount Fuji?", 3, "en", None, None, None), ("富士山の高さは？", 12, "ja", None, None, None),
             ("Who wrote Don Quixote?", 1, None, None, None, None)]
    got = asyncio.run(Retriever.func_or_class.search.__wrapped__(body, batch))
    assert calls == [(3, 12, None), (3, 12, None)]
    whole = RetrieverCore.load(index=split_index)
    assert got == whole.retrieve([q[0] for q in batch], [q[1] for q in batch])

    # A request asking for its own nprobe shares the batch but gets its own search on every group.
    calls.clear()
    mixed = [batch[0], ("Who wrote Don Quixote?", 2, None, 7, None, None), batch[1]]
    got = asyncio.run(Retriever.func_or_class.search.__wrapped__(body, mixed))
    assert calls == [(2, 12, None), (2, 12, None), (1, 2, 7), (1, 2, 7)]
    assert got == whole.retrieve([q[0] for q in mixed], [q[1] for q in mixed])

    # Vectors over the inline limit go to the object store once per search, not once per group.
    import ray_cora.serve.app as app

    put = []
    monkeypatch.setattr(app, "INLINE_VECTOR_BYTES", 0)
    monkeypatch.setattr(app.ray, "put", lambda value: put.append(value.shape) or value)
    assert asyncio.run(Retriever.func_or_class.search.__wrapped__(body, mixed)) == got
    assert put == [(2, 512), (1, 512)]


def test_a_dead_group_is_looked_up_again_else_a_503_names_it(split_index, monkeypatch):
    """Serve recreates a dead deployment actor under the same name: the Retriever asks the new one
    once; while there is none (or only the dead one), the request is a 503 naming the group."""
    import asyncio

    from ray_cora.index.sharded import ShardedIndex
    from ray_cora.serve.app import Retriever

    calls = []
    indexes = [ShardedIndex.open(split_index, shards=shard_group(5, 2, g)) for g in range(2)]
    live, dead = _Group(indexes[1], calls), _Group(indexes[1], calls, dead=True)
    current = {"IndexShardGroup0": _Group(indexes[0], calls), "IndexShardGroup1": dead}
    body = _retriever_over(split_index, monkeypatch, {name: lambda name=name: current[name] for name in current})
    batch = [("How tall is Mount Fuji?", 3, None, None, None, None)]
    with pytest.raises(ClientError, match="IndexShardGroup1 .*unavailable.*retry") as err:  # not recreated yet
        asyncio.run(Retriever.func_or_class.search.__wrapped__(body, batch))
    assert (err.value.status, err.value.code) == (503, "unavailable")
    with pytest.raises(ClientError, match="IndexShardGroup1"):
        asyncio.run(body.ping())
    current["IndexShardGroup1"] = live  # Serve recreated it
    got = asyncio.run(Retriever.func_or_class.search.__wrapped__(body, batch))
    assert got == RetrieverCore.load(index=split_index).retrieve(["How tall is Mount Fuji?"], [3])
    assert body.groups[1][0] is live and asyncio.run(body.ping()) is True


def test_batches_take_turns_over_a_groups_copies_and_a_dead_copy_is_skipped(split_index, monkeypatch):
    """2 groups x 2 copies of stand-in actors: every batch is answered as one whole index answers it;
    the batches alternate between the copies of each group; a dead copy (not recreated) is skipped
    without an error while the other copy of its group answers, and rests instead of being asked
    again each batch; /readyz's ping says which copy is down; with both copies of a group dead, a 503
    names the group."""
    import asyncio

    from ray_cora.index.sharded import ShardedIndex
    from ray_cora.serve.app import Retriever

    indexes = [ShardedIndex.open(split_index, shards=shard_group(5, 2, g)) for g in range(2)]
    calls = {(g, c): [] for g in range(2) for c in range(2)}
    current = {f"IndexShardGroup{g}-{c}": _Group(indexes[g], calls[g, c]) for g in range(2) for c in range(2)}
    body = _retriever_over(split_index, monkeypatch, {name: lambda name=name: current[name] for name in current},
                           copies=2)
    whole = RetrieverCore.load(index=split_index)
    search = Retriever.func_or_class.search.__wrapped__
    questions = ["How tall is Mount Fuji?", "富士山の高さは？", "Who wrote Don Quixote?", "首尔是哪个国家的首都？"]
    for question in questions:
        assert asyncio.run(search(body, [(question, 5, None, None, None, None)])) == whole.retrieve([question], [5])
    # Each batch searched one copy of each group, the copies taking turns: 2 batches each.
    assert {copy: len(made) for copy, made in calls.items()} == {copy: 2 for copy in calls}
    assert asyncio.run(body.ping()) is True

    for made in calls.values():
        made.clear()
    current["IndexShardGroup1-0"] = body.groups[1][0] = _Group(indexes[1], calls[1, 0], dead=True)
    for question in questions:  # no error: group 1 answers from copy 1
        assert asyncio.run(search(body, [(question, 5, None, None, None, None)])) == whole.retrieve([question], [5])
    assert len(calls[0, 0]) == len(calls[0, 1]) == 2 and len(calls[1, 1]) == 4
    assert len(calls[1, 0]) == 1  # asked once; then it rests (re-looked up, not called, when due)
    assert asyncio.run(body.ping()) == ("degraded: IndexShardGroup1-0 did not answer (another copy of each "
                                        "of their groups did)")

    current["IndexShardGroup1-1"] = body.groups[1][1] = _Group(indexes[1], calls[1, 1], dead=True)
    with pytest.raises(ClientError, match="shard group 1 of the index is unavailable: none of its 2 copies "
                                          r"\(IndexShardGroup1-0, IndexShardGroup1-1\)") as err:
        asyncio.run(search(body, [(questions[0], 5, None, None, None, None)]))
    assert (err.value.status, err.value.code) == (503, "unavailable")
    with pytest.raises(ClientError, match="shard group 1"):
        asyncio.run(body.ping())
    current["IndexShardGroup1-1"] = _Group(indexes[1], calls[1, 1])  # Serve recreated one copy
    assert asyncio.run(search(body, [(questions[0], 5, None, None, None, None)])) == whole.retrieve(questions[:1], [5])


def test_a_replica_starts_while_serve_recreates_a_copy_but_not_without_any_copy_of_a_group(split_index,
                                                                                         monkeypatch):
    """A Retriever replica added while one copy is being recreated (its name not registered yet)
    starts and searches the other copy; with no copy of a group to be found it fails to start."""
    import asyncio

    from ray_cora.index.sharded import ShardedIndex
    from ray_cora.serve.app import Retriever

    indexes = [ShardedIndex.open(split_index, shards=shard_group(5, 2, g)) for g in range(2)]
    calls = {(g, c): [] for g in range(2) for c in range(2)}
    current = {f"IndexShardGroup{g}-{c}": _Group(indexes[g], calls[g, c]) for g in range(2) for c in range(2)}

    def lookup(name):
        if name not in current:
            raise ValueError(f"Failed to look up actor with name '{name}'")
        return current[name]

    handles = {name: lambda name=name: lookup(name) for name in list(current)}
    del current["IndexShardGroup1-0"]
    body = _retriever_over(split_index, monkeypatch, handles, copies=2)
    question = [("How tall is Mount Fuji?", 4, None, None, None, None)]
    for _ in range(2):
        got = asyncio.run(Retriever.func_or_class.search.__wrapped__(body, question))
        assert got == RetrieverCore.load(index=split_index).retrieve(["How tall is Mount Fuji?"], [4])
    assert (len(calls[1, 0]), len(calls[1, 1])) == (0, 2)
    del current["IndexShardGroup1-1"]
    with pytest.raises(ValueError, match="IndexShardGroup1-1"):
        _retriever_over(split_index, monkeypatch, handles, copies=2)


def test_requests_in_one_batch_are_searched_with_their_own_nprobe(demo_ivf_index):
    """On an IVF index: a batch mixing nprobe values gives each question what a search with its own
    value gives, and a request without one gets the app's default (else the index's)."""
    from ray_cora.index.sharded import ShardedIndex

    core = RetrieverCore.load(index=demo_ivf_index, default_params=(None, None))
    questions = ["How tall is Mount Fuji?", "富士山の高さは？", "Who wrote Don Quixote?", "首尔是哪个国家的首都？"]
    params = [(1, None), (4, None), (None, None), (4, None)]
    got = core.retrieve(questions, [10] * 4, params=params)
    index = ShardedIndex.open(demo_ivf_index)
    vectors = core.encode(questions)
    for question, result, (nprobe, _) in zip(range(4), got, params):
        _, pids = index.search(vectors[[question]], 10, nprobe=nprobe)
        assert [p["pid"] for p in result] == pids[0]
    # nprobe matters on this index (else the test would prove nothing): 1 list and 4 lists differ.
    one, four = (index.search(vectors, 10, nprobe=n)[1] for n in (1, 4))
    assert one != four


def test_index_query_format_is_the_recorded_one_unless_the_encoder_spec_says(tmp_path, tiny_cpt):
    """An index of CORA's mDPR records the query format "{question} [{lang}]": the Ingress then asks
    /v1/retrieve clients for lang (422 without it); a plain format (mUSE, the demo) does not, and
    an encoder spec's own query_format wins."""
    from ray_cora.encoders import PLAIN, TAGGED, encoder_record
    from ray_cora.serve.core import index_query_format

    shard = write_shard(str(tmp_path), 0, ["a"], np.ones((1, 32), dtype="float32"))
    commit_index(str(tmp_path), [shard], encoder=encoder_record(f"dpr:{tiny_cpt}", dim=32))
    assert index_query_format(str(tmp_path), None) == TAGGED
    assert index_query_format(str(tmp_path), f"dpr:{tiny_cpt}?query_format=plain") == PLAIN
    assert index_query_format(None, None) == PLAIN


# --- hybrid retrieval: dense + BM25, fused per question language ---------------------------------

# A tuned language (convex, shallow), the pooled fallback for the others, and the cross-lingual rule
# for a language the lexical index has no parts in: each of the three paths is taken below.
HYBRID_WEIGHTS = FusionWeights(languages={"en": FusionSetting("convex", 0.3, normalization="minmax", depth=20,
                                                              rule="tuned", dev_questions=60)},
                               fallback=FusionSetting("rrf", 0.6, rrf_k=20, depth=30, rule="pooled"),
                               no_lexical=FusionSetting("rrf", 0.8, rrf_k=60, depth=40, rule="no-lexical"))
HYBRID_QUESTIONS = [("How tall is Mount Fuji?", "en", 5), ("富士山の高さは？", "ja", 4),
                    ("Wer entwickelte die Relativitätstheorie?", "de", 3), ("Mount Fuji 3776 ni urefu gani?", "sw", 6),
                    ("首尔是哪个国家的首都？", "zh_cn", 2)]


@pytest.fixture(scope="module")
def hybrid_core(demo_index, demo_lexical, tmp_path_factory):
    """The demo index with the demo corpus's BM25 index and HYBRID_WEIGHTS (a fusion.json given as
    ``fusion``); hybrid is then its default retriever."""
    from ray_cora.index.fusion import save_weights

    fusion = str(tmp_path_factory.mktemp("fusion") / "fusion.json")
    save_weights(HYBRID_WEIGHTS, fusion)
    return RetrieverCore.load(index=demo_index, lexical_index=demo_lexical, fusion=fusion)


def _lists(core, question: str, lang: str, depth: int):
    from ray_cora.index.fusion import merge_by_rank, neutral_terms

    scores, pids = core.index.search(core.encode([question]), depth)
    dense = list(zip(pids[0], map(float, scores[0])))
    if lang in core.lexical.languages:
        found_scores, found_pids = core.lexical.search_one(question, lang, depth)
        return dense, list(zip(found_pids, found_scores))
    terms = " ".join(neutral_terms(question))  # the cross-lingual case: neutral terms in every language
    return dense, merge_by_rank([list(zip(*reversed(core.lexical.search_one(terms, other, depth))))
                                 for other in core.lexical.languages], depth)


def test_hybrid_ranks_equal_fuse_of_the_dense_and_bm25_lists(hybrid_core):
    """Each question's hybrid passages (pids, fused scores, ranks in both lists) are exactly
    ``fuse`` of its dense and BM25 lists with its language's setting: tuned (en), fallback (ja, de,
    zh_cn) and no lexical parts (sw: dense + its language-neutral terms' hits)."""
    from ray_cora.index.fusion import fuse

    assert "sw" not in hybrid_core.lexical.languages and hybrid_core.default_retriever == "hybrid"
    assert hybrid_core.weights == HYBRID_WEIGHTS
    questions, langs, ks = zip(*[(q, lang, k) for q, lang, k in HYBRID_QUESTIONS])
    got = hybrid_core.retrieve(questions, ks, langs)  # the default retriever, one batch
    both = 0
    for (question, lang, k), passages in zip(HYBRID_QUESTIONS, got):
        setting = HYBRID_WEIGHTS.setting_for(lang, has_lexical=lang != "sw")
        expected = fuse(*_lists(hybrid_core, question, lang, setting.depth), setting, k)
        assert [p["pid"] for p in passages] == [h.pid for h in expected]
        # (the batch encodes and searches 5 questions at once: the last bits of a score may differ)
        assert [p["score"] for p in passages] == pytest.approx([h.score for h in expected], abs=1e-6)
        assert [p["retrievers"] for p in passages] == [h.sources for h in expected]
        both += sum(None not in p["retrievers"].values() for p in passages)
    assert both  # some passages were found by both retrievers
    assert got[0][0]["pid"] == "en-mount_fuji-1" and got[0][0]["text"]
    # A batch mixing retrievers gives each question what it gives alone.
    mixed = hybrid_core.retrieve(questions[:3], ks[:3], langs[:3], retrievers=["dense", "hybrid", "bm25"])
    alone = [hybrid_core.retrieve([q], [k], [lang], retrievers=[r])[0]
             for q, lang, k, r in zip(questions, langs, ks, ["dense", "hybrid", "bm25"])]
    assert [[(p["pid"], p["retrievers"]) for p in r] for r in mixed] == \
        [[(p["pid"], p["retrievers"]) for p in r] for r in alone]
    assert [p["retrievers"] for p in mixed[0]] == [{"dense": r, "bm25": None} for r in range(1, 6)]
    assert [p["retrievers"] for p in mixed[2]] == [{"dense": None, "bm25": r} for r in range(1, 4)]


def test_hybrid_without_a_language_is_the_dense_list_alone(hybrid_core):
    dense = hybrid_core.retrieve(["How tall is Mount Fuji?"], [5], retrievers=["dense"])[0]
    hybrid = hybrid_core.retrieve(["How tall is Mount Fuji?"], [5], [None])[0]
    assert hybrid == dense and [p["retrievers"] for p in dense] == [{"dense": r, "bm25": None} for r in range(1, 6)]
    with pytest.raises(ConfigError, match="bm25 needs the question's language"):
        hybrid_core.retrieve(["How tall is Mount Fuji?"], [5], [None], retrievers=["bm25"])


def test_bm25_mode_is_the_lexical_index_top_k_without_a_dense_search(hybrid_core):
    """bm25: the question's own language's top-k of the lexical index, BM25 scores, no dense rank;
    the dense index is not searched (here it is taken away); a language without parts gets nothing."""
    import dataclasses

    no_dense = dataclasses.replace(hybrid_core, index=None)
    questions, langs = ["How tall is Mount Fuji?", "富士山の高さは？", "Mount Fuji 3776?"], ["en", "ja", "sw"]
    got = no_dense.retrieve(questions, [4, 2, 3], langs, retrievers=["bm25"] * 3)
    for question, lang, k, passages in zip(questions, langs, [4, 2, 3], got):
        scores, pids = hybrid_core.lexical.search_one(question, lang, k)
        assert [p["pid"] for p in passages] == pids and [p["score"] for p in passages] == scores
        assert [p["retrievers"] for p in passages] == [{"dense": None, "bm25": r} for r in range(1, len(pids) + 1)]
        assert all(p["lang"] == lang for p in passages)
    assert got[0][0]["pid"] == "en-mount_fuji-1" and got[2] == []
    with pytest.raises(ConfigError, match="holds no index"):  # the dense side does need it
        no_dense.retrieve(questions[:1], [4], langs[:1], retrievers=["hybrid"])


def test_bm25_and_hybrid_need_a_lexical_index_and_a_request_asking_gets_422_naming_the_field(demo_core):
    assert demo_core.retrievers == ("dense",) and demo_core.default_retriever == "dense"
    with pytest.raises(ConfigError, match="needs a lexical index"):
        demo_core.retrieve(["How tall is Mount Fuji?"], [3], ["en"], retrievers=["hybrid"])
    # The Ingress's check, before the request reaches the Retriever.
    plain = Limits()
    assert plain.retriever(None) == plain.retriever("dense") == "dense"
    for name in ("bm25", "hybrid"):
        with pytest.raises(ClientError) as err:
            plain.retriever(name)
        error = err.value.body()
        assert (err.value.status, error["field"], error["code"]) == (422, "retriever", "no_lexical_index")
        assert "lexical_index=" in error["error"]
    offered = Limits(retrievers=("dense", "bm25", "hybrid"), default_retriever="hybrid")
    assert offered.retriever(None) == "hybrid" and offered.retriever("bm25") == "bm25"
    # A retriever that does not exist is the request model's 422.
    error = _error_for('{"question": "q", "retriever": "splade"}')
    assert (error.status, error.field) == (422, "retriever")
    assert RetrieveRequest.model_validate_json('{"question": "q", "retriever": "bm25"}').retriever == "bm25"


def test_app_options_default_to_hybrid_with_a_lexical_index_and_refuse_it_without():
    assert ServeAppOptions().default_retriever == "dense"
    assert ServeAppOptions(lexical_index="/bm25").default_retriever == "hybrid"
    assert ServeAppOptions(lexical_index="/bm25", retriever="dense").default_retriever == "dense"
    with pytest.raises(ValidationError, match="retriever=bm25 needs lexical_index"):
        ServeAppOptions(retriever="bm25")
    with pytest.raises(ValidationError, match="fusion needs lexical_index"):
        ServeAppOptions(fusion="/fusion.json")
    with pytest.raises(ValidationError, match="retriever"):
        ServeAppOptions(lexical_index="/bm25", retriever="splade")


def test_retriever_core_finds_the_fusion_weights_beside_the_lexical_index(demo_index, demo_lexical, tmp_path):
    """Without ``fusion``: the fusion.json in the lexical index, else the untuned default; /v1/info's
    description names the source and each language's setting."""
    import shutil

    from ray_cora.index.fusion import FUSION_FILE, save_weights

    lexical = shutil.copytree(demo_lexical, tmp_path / "bm25")
    untuned = RetrieverCore.load(index=demo_index, lexical_index=str(lexical))
    assert untuned.weights == FusionWeights() and untuned.fusion_source is None
    save_weights(HYBRID_WEIGHTS, str(lexical / FUSION_FILE))
    tuned = RetrieverCore.load(index=demo_index, lexical_index=str(lexical), retriever="dense")
    assert tuned.weights == HYBRID_WEIGHTS and tuned.fusion_source == str(lexical)
    described = tuned.describe_retrievers()
    assert described["retriever"] == {"default": "dense", "available": ["dense", "bm25", "hybrid"]}
    assert described["lexical_index"]["passages"] == 176 and "sw" not in described["lexical_index"]["languages"]
    assert described["fusion"]["languages"] == {"en": "convex minmax w=0.30"}
    assert described["fusion"]["source"] == str(lexical) and described["fusion"]["no_lexical"] == "rrf k=60 w=0.80"


def test_the_retriever_deployment_with_shard_groups_searches_bm25_itself_and_fuses(split_index, demo_lexical,
                                                                                   monkeypatch):
    """shard_groups=2 and a lexical index: the groups search the dense shards (one search per group,
    at the fusion's depth), the Retriever the BM25 index; the passages equal one core's over the
    whole index, per retriever."""
    import asyncio

    from ray_cora.index.sharded import ShardedIndex
    from ray_cora.serve.app import Retriever

    calls = []
    groups = [_Group(ShardedIndex.open(split_index, shards=shard_group(5, 2, g)), calls) for g in range(2)]
    body = _retriever_over(split_index, monkeypatch, {f"IndexShardGroup{g}": lambda g=g: groups[g] for g in range(2)},
                           lexical_index=demo_lexical)
    assert body.core.index is None and body.core.default_retriever == "hybrid"
    batch = [("How tall is Mount Fuji?", 3, "en", None, None, None), ("富士山の高さは？", 4, "ja", None, None, "bm25"),
             ("Who wrote Don Quixote?", 2, "en", None, None, "dense")]
    got = asyncio.run(Retriever.func_or_class.search.__wrapped__(body, batch))
    assert calls == [(2, 100, None), (2, 100, None)]  # no dense search for the bm25 request
    whole = RetrieverCore.load(index=split_index, lexical_index=demo_lexical)
    assert got == whole.retrieve(*zip(*[(q, k, lang) for q, k, lang, *_ in batch]),
                                 retrievers=["hybrid", "bm25", "dense"])
    assert [p["retrievers"]["bm25"] for p in got[1]] == [1, 2, 3, 4]


# --- the batcher: a lone request runs at once, overlapping ones share a batch -------------------

def _run(coro):
    import asyncio

    return asyncio.run(asyncio.wait_for(coro, 30))  # every wait bounded


def test_a_lone_request_runs_at_once_without_waiting_for_a_batch_to_fill():
    """Under @serve.batch(batch_wait_timeout_s=5) this takes 5 s; the Batcher has no fill wait."""
    import asyncio
    import time

    from ray_cora.serve.core import Batcher

    async def echo(items):
        return list(items)

    async def main():
        batcher = Batcher(echo, max_batch_size=16)
        started = time.monotonic()
        answer = await asyncio.wait_for(batcher("only"), 1.0)
        return answer, time.monotonic() - started, dict(batcher.batch_sizes)

    answer, seconds, sizes = _run(main())
    assert (answer, sizes) == ("only", {1: 1}) and seconds < 1.0


def test_requests_arriving_while_a_batch_runs_form_the_next_batches():
    import asyncio

    from ray_cora.serve.core import Batcher

    gate, seen = asyncio.Event(), []

    async def square(items):
        seen.append(list(items))
        if len(seen) == 1:
            await gate.wait()  # the first batch runs until 10 more requests queued behind it
        return [x * x for x in items]

    async def main():
        batcher = Batcher(square, max_batch_size=4)
        first = asyncio.ensure_future(batcher(1))
        while not seen:
            await asyncio.sleep(0)
        rest = [asyncio.ensure_future(batcher(x)) for x in range(2, 12)]
        await asyncio.sleep(0.01)
        assert seen == [[1]]  # nothing else started while the first batch holds the slot
        gate.set()
        return await first, await asyncio.gather(*rest), dict(batcher.batch_sizes)

    first, rest, sizes = _run(main())
    assert first == 1 and rest == [x * x for x in range(2, 12)]
    assert seen == [[1], [2, 3, 4, 5], [6, 7, 8, 9], [10, 11]] and sizes == {1: 1, 4: 2, 2: 1}


def test_each_request_gets_its_own_exception_and_the_batcher_keeps_serving():
    import asyncio

    from ray_cora.serve.core import Batcher

    async def picky(items):
        if "boom" in items:
            raise ValueError("batch failed")
        return [KeyError(x) if x.startswith("bad") else x.upper() for x in items]

    async def main():
        batcher = Batcher(picky, max_batch_size=8)
        same_batch = await asyncio.gather(batcher("a"), batcher("boom"), return_exceptions=True)
        mixed = await asyncio.gather(batcher("b"), batcher("bad1"), batcher("c"), return_exceptions=True)
        return same_batch, mixed, await batcher("after"), dict(batcher.batch_sizes)

    same_batch, mixed, after, sizes = _run(main())
    # The batch that raised is run again one by one: only the request that fails alone fails.
    assert same_batch[0] == "A" and isinstance(same_batch[1], ValueError) and str(same_batch[1]) == "batch failed"
    assert mixed[0] == "B" and mixed[2] == "C" and isinstance(mixed[1], KeyError)       # that request only
    assert after == "AFTER" and sizes == {2: 1, 1: 3, 3: 1}


def test_a_poisoned_request_fails_alone_and_its_batch_mates_succeed():
    """Issue 19 #2: 4 bad requests among 24 concurrent ones failed 71 of 100 good ones, because one
    exception failed the whole batch. Here the batch function raises whenever a poisoned item is in
    its batch; every good request must still get its own answer."""
    import asyncio

    from ray_cora.serve.core import Batcher

    async def encode(items):
        await asyncio.sleep(0.001)
        if any(x < 0 for x in items):
            raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
        return [x * 10 for x in items]

    async def main():
        batcher = Batcher(encode, max_batch_size=8)
        items = [-1 if i % 6 == 3 else i for i in range(24)]
        return items, await asyncio.gather(*(batcher(x) for x in items), return_exceptions=True)

    items, results = _run(main())
    for item, result in zip(items, results):
        if item < 0:
            assert isinstance(result, UnicodeEncodeError)
        else:
            assert result == item * 10


def test_a_wrong_number_of_results_fails_that_batch_saying_so():
    import asyncio

    from ray_cora.serve.core import Batcher

    async def double(items):
        return items + items

    async def main():
        batcher = Batcher(double, name="double")
        return await asyncio.gather(batcher(1), batcher(2), return_exceptions=True)

    errors = _run(main())  # the batch of 2 fails, and so does each request alone
    assert all(isinstance(e, RuntimeError) and "'double' returned 2 results for 1 requests" in str(e)
               for e in errors)


def test_a_cancelled_caller_is_dropped_and_the_others_are_answered():
    import asyncio

    from ray_cora.serve.core import Batcher

    gate, seen = asyncio.Event(), []

    async def echo(items):
        seen.extend(items)
        await gate.wait()
        return list(items)

    async def main():
        batcher = Batcher(echo, max_batch_size=8)
        running = asyncio.ensure_future(batcher("running"))
        await asyncio.sleep(0.01)
        gone, kept = asyncio.ensure_future(batcher("gone")), asyncio.ensure_future(batcher("kept"))
        await asyncio.sleep(0.01)
        gone.cancel()  # the client went away while queued
        gate.set()
        return await running, await kept, gone.cancelled()

    assert _run(main()) == ("running", "kept", True)
    assert seen == ["running", "kept"]


def test_under_random_concurrency_every_request_is_answered_once_with_its_own_result():
    """300 callers at random times, batches of at most 5, 2 at a time: the function sees every
    item exactly once, no batch is larger than 5 or runs beside more than one other, every caller
    gets its own result, and some batches hold more than one request."""
    import asyncio
    import random

    from ray_cora.serve.core import Batcher

    rng, seen, active, most_active = random.Random(7), [], [0], [0]

    async def work(items):
        active[0] += 1
        most_active[0] = max(most_active[0], active[0])
        seen.extend(items)
        await asyncio.sleep(rng.random() * 0.004)
        active[0] -= 1
        return [(x, "done") for x in items]

    async def caller(batcher, x):
        await asyncio.sleep(rng.random() * 0.2)
        return await batcher(x)

    async def main():
        batcher = Batcher(work, max_batch_size=5, max_concurrent_batches=2)
        return await asyncio.gather(*(caller(batcher, x) for x in range(300))), batcher.batch_sizes

    answers, sizes = _run(main())
    assert answers == [(x, "done") for x in range(300)]
    assert sorted(seen) == list(range(300))
    assert max(sizes) <= 5 and max(sizes) > 1 and sum(n * c for n, c in sizes.items()) == 300
    assert most_active[0] <= 2


def test_batched_methods_get_one_batcher_per_instance_reconfigurable_at_run_time():
    import asyncio

    from ray import cloudpickle

    from ray_cora.serve.core import Batcher, batched

    class Model:
        def __init__(self, factor: int) -> None:
            self.factor = factor

        @batched(max_batch_size=2)
        async def times(self, items):
            return [self.factor * x for x in items]

    assert Model.times.__wrapped__.__name__ == "times"
    Shipped = cloudpickle.loads(cloudpickle.dumps(Model))  # as Serve ships the class to its replicas
    a, b = Model(2), Shipped(10)
    assert isinstance(a.times, Batcher) and a.times is a.times and a.times is not b.times
    a.times.set_max_batch_size(3)

    async def main():
        return await asyncio.gather(*(a.times(x) for x in range(4))), await b.times(1)

    assert _run(main()) == ([0, 2, 4, 6], 10)
    assert dict(a.times.batch_sizes) == {3: 1, 1: 1}
    with pytest.raises(ValueError, match="at least 1"):
        a.times.set_max_batch_size(0)


def test_the_retriever_deployment_batches_overlapping_requests_and_answers_each(demo_core):
    """The Retriever class body (outside Serve) over the demo core: concurrent retrieve() calls share
    encoder batches and each gets what the core gives for its question alone."""
    import asyncio

    from ray_cora.serve.app import Retriever

    body = Retriever.func_or_class.__new__(Retriever.func_or_class)
    body.core, body.groups = demo_core, []
    questions = [("How tall is Mount Fuji?", 3), ("富士山の高さは？", 5), ("Who wrote Don Quixote?", 1)] * 4

    async def main():
        return await asyncio.gather(*(body.retrieve(q, k) for q, k in questions))

    got = _run(main())
    alone = [demo_core.retrieve([q], [k])[0] for q, k in questions]
    assert [[p["pid"] for p in r] for r in got] == [[p["pid"] for p in r] for r in alone]
    assert all(p["score"] == pytest.approx(a["score"], abs=1e-5) for r, ra in zip(got, alone) for p, a in zip(r, ra))
    assert max(body.search.batch_sizes) > 1
