"""Tiny, deterministic BERT encoders for tests and benchmarks: built offline, in a second.

:func:`build_tiny_bert` trains a WordPiece tokenizer on the given texts and saves it with a
seeded random ``BertModel`` so that ``hf:<dir>`` loads it; :func:`build_tiny_dpr_checkpoint`
writes a CORA/DPR-style ``.cpt`` so that ``dpr:<path>`` loads it. The same call always gives the
same tokenizer and weights.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any, Iterable

# torch / transformers are imported inside the functions that use them (3.4 s + 2.0 s cold here):
# the tiny-model builders are imported by tests and the iterate config, which only sometimes build one.

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MAX_POSITIONS = 512


def train_wordpiece(texts: Iterable[str], *, vocab_size: int = 500) -> Any:
    """A BERT-style (lowercasing) WordPiece tokenizer whose vocabulary is learnt from ``texts``,
    wrapped as a ``transformers.PreTrainedTokenizerFast`` that returns token type ids.

    The vocabulary is the special tokens, then characters (each also as a ``##`` continuation),
    then whole words, each by falling frequency with ties broken alphabetically, cut at
    ``vocab_size``. ``tokenizers``' own ``WordPieceTrainer`` is not used because its result varies
    from run to run (hash-map order decides ties), and these models must be reproducible.

    >>> tok = train_wordpiece(["hello world", "bonjour le monde"], vocab_size=100)
    >>> tok("hello", "world")["token_type_ids"]
    [0, 0, 0, 1, 1]
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for text in texts:
        words.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars: Counter[str] = Counter()
    for word, count in words.items():
        for ch in word:
            chars[ch] += count

    def by_frequency(counts: Counter[str]) -> list[str]:
        return sorted(counts, key=lambda item: (-counts[item], item))

    vocab: dict[str, int] = {}
    for token in [*SPECIAL_TOKENS,
                  *(piece for ch in by_frequency(chars) for piece in (ch, "##" + ch)),
                  *(w for w in by_frequency(words) if len(w) > 1)]:
        if len(vocab) >= vocab_size:
            break
        vocab.setdefault(token, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    tok.decoder = decoders.WordPiece()
    # transformers 5 wrappers default to input_ids + attention_mask only: ask for token types too.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
        cls_token="[CLS]", mask_token="[MASK]", model_max_length=MAX_POSITIONS,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"])


def tiny_bert_config(vocab_size: int, *, hidden: int = 32, layers: int = 2, heads: int = 2) -> Any:
    """A small ``BertConfig`` (intermediate size 4 × hidden, 512 positions, 2 token types)."""
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, intermediate_size=4 * hidden,
                      max_position_embeddings=MAX_POSITIONS, type_vocab_size=2)


def seeded_model(model_cls: Any, config: Any, seed: int) -> Any:
    """``model_cls(config)`` whose random weights depend only on ``seed`` (global RNG untouched)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_cls(config)


def seeded_bert(config: Any, seed: int) -> Any:
    """``BertModel(config)`` whose random weights depend only on ``seed`` (global RNG untouched)."""
    from transformers import BertModel

    return seeded_model(BertModel, config, seed).eval()


def build_tiny_bert(dir: str | os.PathLike, texts: Iterable[str], *, hidden: int = 32, layers: int = 2,
                    heads: int = 2, vocab_size: int = 500, seed: int = 0) -> str:
    """Save a tokenizer trained on ``texts`` and a seeded random BERT into ``dir``; return ``dir``.

    >>> import tempfile
    >>> path = build_tiny_bert(tempfile.mkdtemp(), ["hello world", "hallo welt"], vocab_size=60)
    >>> from ray_cora.encoders import load_encoder
    >>> load_encoder(f"hf:{path}").dim
    32
    """
    path = os.fspath(dir)
    os.makedirs(path, exist_ok=True)
    tokenizer = train_wordpiece(texts, vocab_size=vocab_size)
    config = tiny_bert_config(len(tokenizer), hidden=hidden, layers=layers, heads=heads)
    seeded_bert(config, seed).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_dpr_state(bert_dir: str | os.PathLike, *, ctx_seed: int = 1, projection_dim: int = 0,
                   projection_seed: int = 2) -> dict[str, Any]:
    """The dict :func:`build_tiny_dpr_checkpoint` saves, for tests that edit it before saving.

    ``question_model.*`` are the weights saved in ``bert_dir``; ``ctx_model.*`` those of
    ``seeded_bert(config, ctx_seed)``; with ``projection_dim`` both towers get a seeded
    ``encode_proj`` (``projection_seed`` for the question, ``projection_seed + 1`` for ctx).
    ``embeddings.position_ids`` is left out, like old DPR checkpoints.
    """
    import torch
    from transformers import BertConfig, BertModel

    bert_dir = os.fspath(bert_dir)
    question = BertModel.from_pretrained(bert_dir)
    config = BertConfig.from_pretrained(bert_dir)
    ctx = seeded_bert(config, ctx_seed)
    model_dict: dict[str, Any] = {}
    for prefix, model, proj_seed in (("question_model.", question, projection_seed),
                                     ("ctx_model.", ctx, projection_seed + 1)):
        for key, value in model.state_dict().items():
            if not key.endswith("position_ids"):
                model_dict[prefix + key] = value.detach().clone()
        if projection_dim:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(proj_seed)
                proj = torch.nn.Linear(config.hidden_size, projection_dim)
            model_dict[prefix + "encode_proj.weight"] = proj.weight.detach().clone()
            model_dict[prefix + "encode_proj.bias"] = proj.bias.detach().clone()
    return {
        "model_dict": model_dict,
        "encoder_params": {"pretrained_model_cfg": bert_dir, "encoder_model_type": "hf_bert",
                           "pretrained_file": None, "projection_dim": projection_dim,
                           "sequence_length": 64, "do_lower_case": True},
        "epoch": 0,
        "offset": 0,
    }


def cora_checkpoint_state(bert_dir: str | os.PathLike, *, ctx_seed: int = 1, projection_dim: int = 0,
                          seed: int = 0) -> dict[str, Any]:
    """What CORA's ``_save_checkpoint`` (AkariAsai/CORA ``mDPR/train_dense_encoder.py``) writes, for
    the towers of :func:`tiny_dpr_state`: ``CheckpointState(model_dict, optimizer_dict,
    scheduler_dict, offset, epoch, encoder_params)._asdict()``.

    The model is a bi-encoder module (``question_model`` / ``ctx_model``, each a ``BertModel`` with
    ``encode_proj`` when ``projection_dim``, as CORA's ``HFBertEncoder``) after one real AdamW step
    (``get_optimizer``'s two weight-decay groups; ``torch.optim.AdamW`` standing in for the removed
    ``transformers.AdamW``) on seeded gradients, with DPR's linear-warmup ``LambdaLR`` stepped once.
    As in DPR, that first step runs at warmup's learning rate 0, so ``model_dict`` (the module's
    ``state_dict()``, ``embeddings.position_ids`` included as transformers 4.2 saved them) holds the
    weights of :func:`tiny_dpr_state`; ``encoder_params`` is the plain dict of ``get_encoder_params_state``.
    """
    import collections

    import torch
    from transformers import BertConfig, BertModel

    flat = tiny_dpr_state(bert_dir, ctx_seed=ctx_seed, projection_dim=projection_dim)
    config = BertConfig.from_pretrained(os.fspath(bert_dir))
    towers = {}
    for prefix in ("question_model", "ctx_model"):
        weights = {k[len(prefix) + 1:]: v for k, v in flat["model_dict"].items() if k.startswith(prefix + ".")}
        with torch.random.fork_rng(devices=[]):  # initial values are overwritten; the global RNG is left alone
            tower = BertModel(config)
            if projection_dim:
                tower.encode_proj = torch.nn.Linear(config.hidden_size, projection_dim)
        tower.load_state_dict(weights, strict=True)
        towers[prefix] = tower
    biencoder = torch.nn.ModuleDict(towers)  # state_dict keys question_model.* / ctx_model.*, as BiEncoder's
    no_decay = ["bias", "LayerNorm.weight"]
    named = list(biencoder.named_parameters())
    groups = [{"params": [p for n, p in named if not any(nd in n for nd in no_decay)], "weight_decay": 0.0},
              {"params": [p for n, p in named if any(nd in n for nd in no_decay)], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=2e-5, eps=1e-8)
    warmup, total = 300, 1000

    def lr_lambda(step: int) -> float:  # DPR's get_schedule_linear
        if step < warmup:
            return float(step) / float(max(1, warmup))
        return max(0.0, float(total - step) / float(max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    generator = torch.Generator().manual_seed(seed)
    for _, param in named:
        param.grad = torch.randn(param.shape, generator=generator) * 1e-2
    optimizer.step()
    scheduler.step()
    model_dict = biencoder.state_dict()
    for prefix in ("question_model.", "ctx_model."):  # a saved buffer in transformers 4.2, not in 5
        model_dict.setdefault(prefix + "embeddings.position_ids", torch.arange(config.max_position_embeddings)[None])
    state = collections.namedtuple("CheckpointState", ["model_dict", "optimizer_dict", "scheduler_dict", "offset",
                                                       "epoch", "encoder_params"])
    return state(model_dict, optimizer.state_dict(), scheduler.state_dict(), 0, 0,
                 dict(flat["encoder_params"]))._asdict()


def build_tiny_dpr_checkpoint(path: str | os.PathLike, bert_dir: str | os.PathLike, *, ctx_seed: int = 1,
                              projection_dim: int = 0, cora_format: bool = False) -> str:
    """Write a CORA/DPR-style bi-encoder ``.cpt`` built from the tiny BERT in ``bert_dir``.

    The question tower is the BERT in ``bert_dir``, the passage tower a differently seeded BERT of
    the same config (:func:`seeded_bert` with ``ctx_seed``); ``encoder_params.pretrained_model_cfg``
    points at ``bert_dir``. With ``cora_format`` the file holds all that CORA's trainer saves
    (:func:`cora_checkpoint_state`: the same weights, with optimizer and scheduler states).
    Returns ``path``.

    >>> import tempfile
    >>> d = build_tiny_bert(tempfile.mkdtemp(), ["hello world"], vocab_size=40)
    >>> cpt = build_tiny_dpr_checkpoint(os.path.join(d, "tiny.cpt"), d)
    >>> from ray_cora.encoders import load_encoder
    >>> load_encoder(f"dpr:{cpt}").dim
    32
    """
    import torch

    out = os.fspath(path)
    state = (cora_checkpoint_state(bert_dir, ctx_seed=ctx_seed, projection_dim=projection_dim) if cora_format
             else tiny_dpr_state(bert_dir, ctx_seed=ctx_seed, projection_dim=projection_dim))
    torch.save(state, out)
    return out


# ---------------------------------------------------------------- tiny seq2seq (mGEN tests)

T5_SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")


def train_char_unigram(texts: Iterable[str], *, max_words: int = 300) -> Any:
    """A T5-style tokenizer (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, ``</s>`` appended) whose pieces
    are every character of ``texts`` plus its ``max_words`` most frequent words, so any text made
    of those characters — any script — decodes back exactly. Deterministic (ties alphabetical).

    >>> tok = train_char_unigram(["東京 Tokyo"])
    >>> tok.decode(tok("東京 Tokyo")["input_ids"], skip_special_tokens=True)
    '東京 Tokyo'
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    words: Counter[str] = Counter()
    chars: Counter[str] = Counter()
    for text in texts:
        for word, _ in pre.pre_tokenize_str(text):
            words[word] += 1
            chars.update(word)
    ordered_chars = sorted(chars, key=lambda c: (-chars[c], c))
    ordered_words = [w for w in sorted(words, key=lambda w: (-words[w], w)) if len(w) > 1][:max_words]
    vocab = [(t, 0.0) for t in T5_SPECIAL_TOKENS]
    vocab += [(c, -10.0) for c in ordered_chars]
    vocab += [(w, -1.0) for w in ordered_words]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=4096)


def build_tiny_t5(dir: str | os.PathLike, texts: Iterable[str], *, d_model: int = 64, layers: int = 2,
                  heads: int = 4, dropout: float = 0.0, seed: int = 0) -> str:
    """Save a :func:`train_char_unigram` tokenizer and a seeded random ``T5ForConditionalGeneration``
    into ``dir`` (a stand-in for mT5 in tests); return ``dir``."""
    from transformers import T5Config, T5ForConditionalGeneration

    path = os.fspath(dir)
    os.makedirs(path, exist_ok=True)
    tokenizer = train_char_unigram(texts)
    config = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=d_model // heads, d_ff=2 * d_model,
                      num_layers=layers, num_decoder_layers=layers, num_heads=heads, dropout_rate=dropout,
                      feed_forward_proj="relu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                      relative_attention_num_buckets=16, tie_word_embeddings=False)
    model = seeded_model(T5ForConditionalGeneration, config, seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
