"""Encoders compared by what they are (``identity``), not by how their spec is spelled, and the
query format each carries (tiny models: tests/conftest.py, other_bert: tests/encoders/conftest.py)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from ray_cora import storage
from ray_cora.encoders import (
    PLAIN,
    TAGGED,
    check_encoder_spec,
    check_same_encoder,
    encoder_identity,
    encoder_record,
    format_query,
    load_encoder,
)
from ray_cora.encoders.identity import QUERY_FORMAT_FILE
from ray_cora.encoders.tiny import build_tiny_dpr_checkpoint, tiny_dpr_state
from ray_cora.errors import ConfigError

# ---------------------------------------------------------------- dpr:


def test_dpr_spellings_of_one_model_have_one_identity(tiny_bert, tiny_cpt, monkeypatch):
    plain = encoder_identity(f"dpr:{tiny_cpt}")
    assert plain == {"kind": "dpr", "checkpoint_sha256": storage.sha256_of(tiny_cpt)[0], "config": tiny_bert,
                     "tokenizer": tiny_bert, "max_length": 64, "query_format": TAGGED}
    monkeypatch.chdir(os.path.dirname(tiny_bert))
    relative = os.path.join(".", os.path.basename(tiny_bert))
    for spec in (f"dpr:{tiny_cpt}?config={tiny_bert}",
                 f"dpr:{tiny_cpt}?config={relative}&tokenizer={tiny_bert}/&max_length=64&query_format=tagged",
                 f"dpr:file://{tiny_cpt}?config=file://{tiny_bert}"):
        assert encoder_identity(spec) == plain, spec
    loaded = load_encoder(f"dpr:{tiny_cpt}?config={relative}", device="cpu")
    assert loaded.identity == plain and loaded.query_format == TAGGED


def test_dpr_other_bytes_at_the_same_path_are_another_model(tmp_path, tiny_bert):
    path = tmp_path / "model.cpt"
    build_tiny_dpr_checkpoint(path, tiny_bert)
    before = encoder_record(load_encoder(f"dpr:{path}", device="cpu"))
    build_tiny_dpr_checkpoint(path, tiny_bert, ctx_seed=2)  # retrained: same path, other weights
    after = encoder_identity(f"dpr:{path}")
    assert {k for k in after if after[k] != before["identity"][k]} == {"checkpoint_sha256"}
    with pytest.raises(ConfigError, match=r"differs from the one that built index /i .*checkpoint_sha256 \w+…"):
        check_same_encoder(before, {"spec": f"dpr:{path}", "identity": after}, what="index /i")


def test_dpr_identity_reads_encoder_params_without_loading_weights(tiny_cpt, monkeypatch):
    calls = []
    load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("mmap"))
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    encoder_identity(f"dpr:{tiny_cpt}")
    assert calls == [True]  # memory-mapped: the weights are not read


def test_legacy_format_checkpoints_load_without_mmap(tmp_path, tiny_bert, tiny_cpt):
    legacy = tmp_path / "legacy.cpt"  # what torch < 1.6 wrote (CORA's era); such files cannot be mapped
    torch.save(tiny_dpr_state(tiny_bert), legacy, _use_new_zipfile_serialization=False)
    identity = encoder_identity(f"dpr:{legacy}")
    assert identity["checkpoint_sha256"] == storage.sha256_of(legacy)[0]
    questions = ["Where is the Eiffel Tower?"]
    assert torch.equal(torch.from_numpy(load_encoder(f"dpr:{legacy}", device="cpu").encode_queries(questions)),
                       torch.from_numpy(load_encoder(f"dpr:{tiny_cpt}", device="cpu").encode_queries(questions)))


# ---------------------------------------------------------------- hf: and muse


def test_hf_spellings_of_one_model_have_one_identity(tiny_bert, other_bert, monkeypatch):
    base = encoder_identity(f"hf:{tiny_bert}")
    assert base["source"] == tiny_bert and base["tokenizer"] == tiny_bert and base["fingerprint"]
    monkeypatch.chdir(os.path.dirname(tiny_bert))
    relative = os.path.join(".", os.path.basename(tiny_bert))
    spelled = f"hf:{relative}/?pooling=cls&max_length=256&normalize=false&tokenizer={tiny_bert}&query_format=plain"
    assert encoder_identity(spelled) == base
    assert load_encoder(f"hf:{relative}", device="cpu").identity == base
    assert encoder_identity(f"hf:{tiny_bert}?pooling=mean")["pooling"] == "mean"
    assert encoder_identity(f"hf:{other_bert}")["fingerprint"] != base["fingerprint"]
    assert encoder_identity("hf:some-org/some-model") == {  # a Hugging Face cache name: nothing is read
        "kind": "hf", "source": "some-org/some-model", "fingerprint": None, "pooling": "cls", "max_length": 256,
        "normalize": False, "query_prefix": "", "passage_prefix": "", "tokenizer": "some-org/some-model",
        "query_format": PLAIN}


def test_hf_weights_saved_over_a_folder_change_its_fingerprint(tmp_path, tiny_bert, other_bert):
    folder = shutil.copytree(tiny_bert, tmp_path / "model")
    before = encoder_identity(f"hf:{folder}")
    shutil.copy(os.path.join(other_bert, "model.safetensors"), folder / "model.safetensors")
    after = encoder_identity(f"hf:{folder}")
    assert {k for k in after if after[k] != before[k]} == {"fingerprint"}


def test_query_format_defaults_per_kind_and_the_spec_overrides(tmp_path, tiny_bert, tiny_cpt):
    assert encoder_identity("muse")["query_format"] == PLAIN
    assert encoder_identity(f"dpr:{tiny_cpt}")["query_format"] == TAGGED  # CORA evaluates mDPR with --add_lang
    assert encoder_identity(f"dpr:{tiny_cpt}?query_format=plain")["query_format"] == PLAIN
    assert encoder_identity(f"hf:{tiny_bert}")["query_format"] == PLAIN
    folder = shutil.copytree(tiny_bert, tmp_path / "tagged-model")
    (folder / QUERY_FORMAT_FILE).write_text(json.dumps({"query_format": "tagged"}))
    assert load_encoder(f"hf:{folder}", device="cpu").query_format == TAGGED  # what the folder records
    assert encoder_identity(f"hf:{folder}?query_format=plain")["query_format"] == PLAIN
    (folder / QUERY_FORMAT_FILE).write_text(json.dumps({"query_format": "loud"}))
    with pytest.raises(ConfigError, match=rf"{QUERY_FORMAT_FILE}: query_format='loud' is not one of plain, tagged"):
        encoder_identity(f"hf:{folder}")
    with pytest.raises(ConfigError, match="query_format='lang' is not one of plain, tagged"):
        check_encoder_spec(f"dpr:{tiny_cpt}?query_format=lang")


def test_format_query_writes_cora_add_lang_tag():
    # CORA mDPR/dense_retriever.py parse_qa_jsonlines_file: "{0} [{1}]".format(question, lang)
    assert format_query(TAGGED, "日本の首都は？", "ja") == "{0} [{1}]".format("日本の首都は？", "ja")
    assert format_query(PLAIN, "日本の首都は？", "ja") == "日本の首都は？"
    assert format_query(TAGGED, "a {b} c", "en") == "a {b} c [en]"  # braces in a question stay as they are


# ---------------------------------------------------------------- records and the same-encoder check


def test_encoder_record_of_a_spec_and_of_a_loaded_encoder_agree(tiny_bert, tiny_cpt):
    loaded = encoder_record(load_encoder(f"dpr:{tiny_cpt}", device="cpu"))
    assert loaded == {"spec": f"dpr:{tiny_cpt}", "dim": 32, "normalized": False, "query_format": TAGGED,
                      "identity": encoder_identity(f"dpr:{tiny_cpt}")}
    assert encoder_record(f"dpr:{tiny_cpt}", dim=32) == loaded
    assert encoder_record(f"hf:{tiny_bert}?normalize=true")["normalized"] is True
    assert encoder_record("muse")["dim"] == 512


def test_old_manifests_without_identity_compare_the_model_their_spec_names(tiny_bert, tiny_cpt, other_bert):
    current = encoder_record(f"dpr:{tiny_cpt}?config={tiny_bert}", dim=32)
    check_same_encoder({"spec": f"dpr:{tiny_cpt}", "dim": 32, "normalized": False}, current, what="index /i")
    check_same_encoder({"spec": f"dpr:{tiny_cpt}?config={tiny_bert}", "dim": 32}, current, what="index /i")
    with pytest.raises(ConfigError, match=rf"encoder 'dpr:{tiny_cpt}' differs from the one that built index /i "
                                          rf"\('dpr:{tiny_cpt}\?config={other_bert}'\): config '{other_bert}'"):
        check_same_encoder({"spec": f"dpr:{tiny_cpt}?config={other_bert}"}, encoder_record(f"dpr:{tiny_cpt}"),
                           what="index /i")
    with pytest.raises(ConfigError, match=r"records no identity to compare, nor can that encoder be read"):
        check_same_encoder({"spec": "dpr:/gone/model.cpt"}, current, what="index /i")
    check_same_encoder({"spec": "dpr:/gone/model.cpt"}, {"spec": "dpr:/gone/model.cpt"}, what="index /i")


def test_same_encoder_check_ignores_the_query_format_and_compares_dims(tiny_cpt):
    recorded = encoder_record(f"dpr:{tiny_cpt}", dim=32)
    check_same_encoder(recorded, encoder_record(f"dpr:{tiny_cpt}?query_format=plain", dim=32), what="index /i")
    with pytest.raises(ConfigError, match=r"dim 32 \(recorded\) vs 8 \(now\)"):
        check_same_encoder(recorded, {**recorded, "dim": 8}, what="index /i")
    with pytest.raises(ConfigError, match=r"kind 'dpr' \(recorded\) vs 'muse' \(now\); questions must be encoded"):
        check_same_encoder(recorded, encoder_record("muse"), what="index /i")


@pytest.mark.s3
def test_a_checkpoint_copied_to_s3_is_the_same_model(s3_env, tiny_bert, tiny_cpt):
    client, bucket = s3_env["client"], s3_env["bucket"]
    client.upload_file(tiny_cpt, bucket, "identity-test/biencoder.cpt")
    for name in os.listdir(tiny_bert):
        client.upload_file(os.path.join(tiny_bert, name), bucket, f"identity-test/bert/{name}")
    remote = f"dpr:s3://{bucket}/identity-test/biencoder.cpt?config={tiny_bert}"
    assert encoder_identity(remote) == encoder_identity(f"dpr:{tiny_cpt}")  # bytes, not where they are
    assert load_encoder(remote, device="cpu").identity == encoder_identity(f"dpr:{tiny_cpt}")
    hf_remote = encoder_identity(f"hf:s3://{bucket}/identity-test/bert/")
    assert hf_remote["source"] == f"s3://{bucket}/identity-test/bert"
    assert hf_remote["fingerprint"] == encoder_identity(f"hf:{tiny_bert}")["fingerprint"]
