"""ray_cora's ``dpr:`` encoder against CORA's own code path, written out here from AkariAsai/CORA
``mDPR/`` (and facebookresearch/DPR ``generate_dense_embeddings.py``, which CORA's mDPR follows):
checkpoints saved as ``_save_checkpoint`` saves them, loaded as ``dense_retriever.py`` loads them,
tensorized by ``BertTensorizer`` and encoded by ``HFBertEncoder.forward``.

CORA builds a slow ``BertTokenizer`` (``use_fast=False``); the tiny model here has only a fast one,
so this is the parity of the checkpoint, tensorizer and model path under one tokenizer.
"""

from __future__ import annotations

import pytest
import torch

from ray_cora.encoders import TAGGED, format_query, load_encoder
from ray_cora.encoders.tiny import build_tiny_dpr_checkpoint, cora_checkpoint_state

CHECKPOINT_KEYS = {"model_dict", "optimizer_dict", "scheduler_dict", "offset", "epoch", "encoder_params"}
QUESTIONS = [("Where is the Eiffel Tower?", "en"), ("Wo steht der Eiffelturm?", "de"),
             ("東京はどこの首都ですか?", "ja"), ("  Who wrote Faust?  ", "en")]
LONG_TEXT = " ".join(["The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris."] * 12)
PASSAGES = [("Eiffel Tower", "The Eiffel Tower is in Paris."),
            ("", "Tokyo is the capital of Japan."),  # an empty title: the text alone
            ("Eiffel Tower", LONG_TEXT),  # truncated at sequence_length
            ("Faust", "  Goethe wrote Faust.  ")]


@pytest.fixture(scope="module", params=[0, 8], ids=["no-projection", "projection-8"])
def cora_cpt(request, tmp_path_factory, tiny_bert) -> str:
    path = tmp_path_factory.mktemp("cora-cpt") / "dpr_biencoder.0"
    return build_tiny_dpr_checkpoint(path, tiny_bert, projection_dim=request.param, cora_format=True)


# ---------------------------------------------------------------- CORA's code path, written out

class CoraHFBertEncoder(torch.nn.Module):
    """``HFBertEncoder``: a ``BertModel`` (CORA subclasses it; composition here) with ``encode_proj``
    when ``projection_dim`` is set; ``forward`` returns ``sequence_output[:, 0, :]`` through it."""

    def __init__(self, config, project_dim: int = 0) -> None:
        from transformers import BertModel

        super().__init__()
        self.bert = BertModel(config)
        self.encode_proj = torch.nn.Linear(config.hidden_size, project_dim) if project_dim != 0 else None

    def load_cora_state(self, state: dict) -> None:
        """``model_to_load.load_state_dict(question_encoder_state)`` (strict), on HFBertEncoder's names."""
        body = {k: v for k, v in state.items() if not k.startswith("encode_proj.")
                # a persistent buffer in transformers 4.2 (CORA's), not in current transformers
                and not k.endswith("embeddings.position_ids")}
        self.bert.load_state_dict(body, strict=True)
        proj = {k[len("encode_proj."):]: v for k, v in state.items() if k.startswith("encode_proj.")}
        assert bool(proj) == (self.encode_proj is not None)
        if self.encode_proj is not None:
            self.encode_proj.load_state_dict(proj, strict=True)

    def forward(self, input_ids, token_type_ids, attention_mask):
        sequence_output = self.bert(input_ids=input_ids, token_type_ids=token_type_ids,
                                    attention_mask=attention_mask, return_dict=False)[0]
        pooled_output = sequence_output[:, 0, :]
        if self.encode_proj is not None:
            pooled_output = self.encode_proj(pooled_output)
        return sequence_output, pooled_output, None


def cora_text_to_tensor(tokenizer, max_length: int, text: str, title: str | None = None):
    """``BertTensorizer.text_to_tensor`` (``pad_to_max=True``)."""
    text = text.strip()
    if title:
        token_ids = tokenizer.encode(title, text_pair=text, add_special_tokens=True, max_length=max_length,
                                     truncation=True)
    else:
        token_ids = tokenizer.encode(text, add_special_tokens=True, max_length=max_length, truncation=True)
    if len(token_ids) < max_length:
        token_ids = token_ids + [tokenizer.pad_token_id] * (max_length - len(token_ids))
    if len(token_ids) > max_length:
        token_ids = token_ids[0:max_length]
        token_ids[-1] = tokenizer.sep_token_id
    return torch.tensor(token_ids)


def cora_tower(cpt: str, prefix: str):
    """What ``dense_retriever.py`` (``question_model.``) and ``generate_dense_embeddings.py``
    (``ctx_model.``) build: ``load_states_from_checkpoint``, ``set_encoder_params_from_state``, the
    encoder of ``pretrained_model_cfg`` with ``projection_dim``, then the prefixed weights."""
    from transformers import AutoConfig, AutoTokenizer

    saved = torch.load(cpt, map_location="cpu", weights_only=True)
    params = saved["encoder_params"]
    encoder = CoraHFBertEncoder(AutoConfig.from_pretrained(params["pretrained_model_cfg"]), params["projection_dim"])
    encoder.load_cora_state({k[len(prefix):]: v for k, v in saved["model_dict"].items() if k.startswith(prefix)})
    return encoder.eval(), AutoTokenizer.from_pretrained(params["pretrained_model_cfg"]), params["sequence_length"]


def cora_vectors(cpt: str, prefix: str, texts: list[str], titles: list[str | None]) -> torch.Tensor:
    encoder, tokenizer, max_length = cora_tower(cpt, prefix)
    ids = torch.stack([cora_text_to_tensor(tokenizer, max_length, text, title) for text, title in zip(texts, titles)])
    segments = torch.zeros_like(ids)
    attention_mask = ids != tokenizer.pad_token_type_id  # BertTensorizer.get_attn_mask
    with torch.no_grad():
        _, out, _ = encoder(ids, segments, attention_mask)
    return out


# ---------------------------------------------------------------- the checks

def test_a_checkpoint_as_cora_saves_it_loads_safely(cora_cpt):
    saved = torch.load(cora_cpt, map_location="cpu", weights_only=True)
    assert set(saved) == CHECKPOINT_KEYS  # CheckpointState._asdict(): optimizer and scheduler states too
    assert saved["optimizer_dict"]["state"] and "lr_lambdas" in saved["scheduler_dict"]
    assert sorted(saved["encoder_params"]) == ["do_lower_case", "encoder_model_type", "pretrained_file",
                                               "pretrained_model_cfg", "projection_dim", "sequence_length"]
    encoder = load_encoder(f"dpr:{cora_cpt}", device="cpu")
    assert encoder.dim == (saved["encoder_params"]["projection_dim"] or 32) and encoder.max_length == 64


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_both_torch_file_formats_of_a_cora_checkpoint_load(tmp_path, tiny_bert, zip_format):
    path = tmp_path / "dpr_biencoder.best"  # legacy: what torch < 1.6 wrote
    torch.save(cora_checkpoint_state(tiny_bert), path, _use_new_zipfile_serialization=zip_format)
    assert load_encoder(f"dpr:{path}", device="cpu").dim == 32


def test_questions_encode_as_cora_encodes_them(cora_cpt):
    """``dense_retriever.py``: ``parse_qa_jsonlines_file(add_lang=True)`` writes ``"{q} [{lang}]"``,
    ``generate_question_vectors`` tensorizes it without a title through the question tower. ray_cora:
    the caller writes the question in ``encoder.query_format``, ``encode_queries`` encodes it."""
    encoder = load_encoder(f"dpr:{cora_cpt}", device="cpu")
    assert encoder.query_format == TAGGED  # CORA's mDPR is evaluated with --add_lang
    cora_texts = ["{0} [{1}]".format(q, lang) for q, lang in QUESTIONS]  # noqa: UP030, UP032 (CORA verbatim)
    ours = encoder.encode_queries([format_query(encoder.query_format, q, lang) for q, lang in QUESTIONS])
    expected = cora_vectors(cora_cpt, "question_model.", cora_texts, [None] * len(cora_texts))
    torch.testing.assert_close(torch.from_numpy(ours), expected, atol=1e-5, rtol=1e-5)
    plain = cora_vectors(cora_cpt, "question_model.", [q for q, _ in QUESTIONS], [None] * len(QUESTIONS))
    torch.testing.assert_close(torch.from_numpy(encoder.encode_queries([q for q, _ in QUESTIONS])), plain,
                               atol=1e-5, rtol=1e-5)


def test_passages_encode_as_cora_encodes_them(cora_cpt, tiny_bert):
    """``gen_ctx_vectors``: ``text_to_tensor(text, title=title)`` through the ctx tower, an empty
    title meaning the text alone, a long text truncated at ``sequence_length``."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    assert len(tokenizer.encode(PASSAGES[2][0], text_pair=PASSAGES[2][1])) > 64  # it does need truncation
    encoder = load_encoder(f"dpr:{cora_cpt}", device="cpu")
    titles, texts = [t for t, _ in PASSAGES], [x for _, x in PASSAGES]
    expected = cora_vectors(cora_cpt, "ctx_model.", texts, titles)
    torch.testing.assert_close(torch.from_numpy(encoder.encode_passages(titles, texts)), expected,
                               atol=1e-5, rtol=1e-5)
    # The towers differ (ctx_model is another BERT), so this is not passing by accident.
    assert not torch.allclose(expected, cora_vectors(cora_cpt, "question_model.", texts, titles), atol=1e-3)
