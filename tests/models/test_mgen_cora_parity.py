"""mGEN decodes as CORA's eval_mgen.py: CORA's own pipeline, written out here from its code
(AkariAsai/CORA ``mGEN/convert_dpr_retrieval_results_to_seq2seq.py`` + ``mGEN/eval_mgen.py``), and
``ray-cora generate --decoding cora`` give the same answer strings for every question; the ``greedy``
preset keeps ray_cora's earlier decoding; a folder's recorded preset is the default.

The model is a tiny T5 whose random weights are drawn wide (``initializer_factor``), so that its
answers change with the input: ray_cora's own source string, or an input cut at 1000 tokens, changes
some of them (checked below, so equal answers prove something); the ``generate()`` calls themselves
are compared too, tensor by tensor and keyword by keyword."""

# ruff: noqa: UP030, UP032 -- CORA's str.format calls below are kept as CORA wrote them
from __future__ import annotations

import json
import shutil

import pytest
import torch

from ray_cora.cli import main
from ray_cora.errors import ConfigError
from ray_cora.models.mgen import (
    DECODING_PRESETS,
    GENERATOR_FILE,
    MODEL_KIND,
    Generator,
    MGENTask,
    cora_source,
    format_source,
    recorded_decoding,
)

TOP_N = 4
LONG_AT = (1, 9)  # one long record in each of CORA's batches of 8


# ----------------------------------------------------------------------------- CORA's code, as it is
def cora_convert(records: list[dict], top_n: int) -> list[str]:
    """convert_dpr_retrieval_results_to_seq2seq.py, load_dpr_results(split="dev") and main() with
    --add_lang: the lines of val.source. CORA's item["question"] is its retriever's query (what
    dense_retriever.py --add_lang wrote), which ray_cora keeps in "query" when it differs."""
    lines = []
    for item in records:
        question = item.get("query", item["question"])
        paragraphs = [para for para in item["ctxs"][:top_n]]
        context = ""
        for idx, para in enumerate(paragraphs):
            if len(context) > 0 and context[-1] != " ":
                context += " "
            context += "<{0}: {1}> ".format(idx, para["title"])
            context += para["text"]
        lang = item["lang"]
        if top_n == 0:
            lines.append("<Q>: {0} [{1}]".format(question, lang).replace("\n", "") + "\n")
        else:
            lines.append("<Q>: {0} [{1}] <P>:{2}".format(question, lang, context).replace("\n", "") + "\n")
    return lines


def cora_eval(model, tokenizer, evaluation_set: str, *, eval_batch_size: int = 8,
              max_source: int | None = None) -> list[str]:
    """eval_mgen.py main() + evaluate_batch_e2e() with README's --max_length 20 and its defaults
    (--num_beams 4, --min_length 1). ``max_source`` only to show what the test catches."""
    def evaluate_batch_e2e(questions):
        with torch.no_grad():
            # tokenizer.batch_encode_plus(questions, return_tensors="pt", padding=True, truncation=True):
            # transformers 5 removed batch_encode_plus; calling the tokenizer is the same call.
            limit = {} if max_source is None else {"max_length": max_source}
            inputs_dict = tokenizer(questions, return_tensors="pt", padding=True, truncation=True, **limit)
            outputs = model.generate(inputs_dict.input_ids, attention_mask=inputs_dict.attention_mask, num_beams=4,
                                     min_length=1, max_length=20, early_stopping=False, num_return_sequences=1,
                                     bad_words_ids=[[0, 0]])
            # batch_decode(outputs, skip_special_tokens=True): transformers 4.2.1 (CORA's) cleaned up
            # tokenization spaces by default.
            return tokenizer.batch_decode(outputs, skip_special_tokens=True, clean_up_tokenization_spaces=True)

    answers = []
    with open(evaluation_set) as eval_file:
        questions = []
        for line in eval_file:
            questions.append(line.strip())
            if len(questions) == eval_batch_size:
                answers += evaluate_batch_e2e(questions)
                questions = []
        if len(questions) > 0:
            answers += evaluate_batch_e2e(questions)
    return answers


def greedy_before(model, tokenizer, records: list[dict], *, top_k: int) -> list[str]:
    """ray_cora's Generator.answer before the presets: format_source, cut at 1000 tokens, greedy, 25 new
    tokens, no clean-up, stripped."""
    sources = [format_source(r["question"], r["lang"], r["ctxs"], top_k=top_k) for r in records]
    enc = tokenizer(sources, max_length=1000, truncation=True, padding=True, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                             max_new_tokens=25, num_beams=1, do_sample=False)
    texts = tokenizer.batch_decode(out, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return [t.strip() for t in texts]


# ----------------------------------------------------------------------------- data and model
def _records() -> list[dict]:
    """12 retrieval records in 3 languages (CORA's batches: 8 + 4): with and without a query, awkward
    titles and texts (a text ending in a space, newlines in titles and texts, a tab, an empty title),
    more passages than the top-n, one without passages, and two whose inputs are over 1000 tokens."""
    capitals = [("France", "Paris"), ("Japan", "Tokyo"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Peru", "Lima")]
    questions = {"en": "What is the capital of {c}?", "fr": "Quelle est la capitale de {c} ?",
                 "ja": "{c}の首都は？"}
    long_text = " ".join(f"{c} has {a} as its capital, year {i}." for i in range(24) for c, a in capitals[:2])
    records = []
    for i in range(12):
        country, city = capitals[i % len(capitals)]
        lang = ("en", "fr", "ja")[i % 3]
        ctxs = [{"pid": f"p{i}a", "lang": lang, "title": country, "text": f"The capital of {country} is {city}. ",
                 "score": 3.0},
                {"pid": f"p{i}b", "lang": "en", "title": f"{city}\n", "text": f"{city} is\na city\tof {country}",
                 "score": 2.0},
                {"pid": f"p{i}c", "lang": "en", "title": "", "text": f" {country} ends with a space ", "score": 1.0},
                {"pid": f"p{i}d", "lang": "en", "title": "Rome", "text": "Rome is in Italy.", "score": 0.5},
                {"pid": f"p{i}e", "lang": "en", "title": "never read", "text": "Beyond the top-n.", "score": 0.1}]
        if i in LONG_AT:
            ctxs.insert(1, {"pid": f"p{i}L", "lang": "en", "title": "Capitals", "text": long_text, "score": 2.5})
        if i == 6:
            ctxs = []
        record = {"qid": f"q{i}", "lang": lang, "question": questions[lang].format(c=country), "answers": [city],
                  "ctxs": ctxs[:4] if i % 4 == 3 else ctxs}
        if i % 2:  # retrieved with --add-lang: the encoder's input, as CORA's retriever writes it
            record["query"] = f"{record['question']} [{lang}]"
        records.append(record)
    return records


@pytest.fixture(scope="module")
def cora_model(tmp_path_factory, tiny_t5) -> str:
    """A folder like CORA's mGEN_model: weights, config and tokenizer files, no ray_cora record; the
    tokenizer has mT5's unbounded model_max_length (so truncation=True cuts nothing)."""
    from transformers import AutoConfig, AutoTokenizer, T5ForConditionalGeneration
    from transformers.tokenization_utils_base import VERY_LARGE_INTEGER

    from ray_cora.encoders.tiny import seeded_model

    folder = tmp_path_factory.mktemp("cora-mgen") / "mGEN_model"
    config = AutoConfig.from_pretrained(tiny_t5)
    config.initializer_factor = 10.0  # peaked attention: answers that depend on the whole input
    seeded_model(T5ForConditionalGeneration, config, 0).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_t5, model_max_length=VERY_LARGE_INTEGER).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def cora_run(cora_model, tmp_path_factory) -> dict:
    """CORA's pipeline on the records: val.source written and read back, answers of eval_mgen.py."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    root = tmp_path_factory.mktemp("cora-run")
    records = _records()
    retrieval = root / "retrieval.jsonl"
    retrieval.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    source = root / "val.source"
    with open(source, "w") as stream:
        stream.writelines(cora_convert(records, TOP_N))
    model = AutoModelForSeq2SeqLM.from_pretrained(cora_model)  # MT5ForConditionalGeneration in CORA
    tokenizer = AutoTokenizer.from_pretrained(cora_model, local_files_only=True)
    assert tokenizer.model_max_length > 10**20
    return {"records": records, "retrieval": retrieval, "source": source, "model": model, "tokenizer": tokenizer,
            "answers": cora_eval(model, tokenizer, str(source))}


# ----------------------------------------------------------------------------- tests
def test_cora_source_is_the_line_cora_writes_and_reads_back(cora_run):
    records = cora_run["records"]
    lines = cora_convert(records, TOP_N)
    assert [cora_source(r.get("query", r["question"]), r["lang"], r["ctxs"], top_k=TOP_N) + "\n"
            for r in records] == lines
    assert [cora_source(r.get("query", r["question"]), r["lang"], r["ctxs"], top_k=0) + "\n"
            for r in records] == cora_convert(records, 0)
    # what the generator feeds the model: eval_mgen.py's line.strip() of the file it reads back
    generator = Generator(cora_run["model"], cora_run["tokenizer"], top_k=TOP_N, decoding="cora", device="cpu")
    sources = generator.sources([r["question"] for r in records], [r["lang"] for r in records],
                                [r["ctxs"] for r in records], queries=[r.get("query") for r in records])
    with open(cora_run["source"]) as stream:
        assert sources == [line.strip() for line in stream]
    # the edge cases are there: the tag twice where the query has it (CORA issue #3), no space added
    # after a text ending in one, newlines dropped (not folded), the trailing space stripped
    assert sources[1].startswith("<Q>: Quelle est la capitale de Japan ? [fr] [fr] <P>:<0: Japan> ")
    assert sources[0].startswith("<Q>: What is the capital of France? [en] <P>:<0: France> The capital of France "
                                 "is Paris. <1: Paris> Paris isa city\tof France <2: >  France ends with a space <3: ")
    assert sources[6] == "<Q>: What is the capital of Japan? [en] <P>:"  # no passages
    assert not any(s.endswith(" ") for s in sources) and "never read" not in " ".join(sources)


class GenerateRecorder:
    """The model, with every ``generate`` call recorded (inputs and keywords)."""

    def __init__(self, model) -> None:
        self.model, self.calls = model, []

    def eval(self):
        return self

    def to(self, device):
        return self

    def generate(self, *args, **kwargs):
        call = dict(kwargs)
        call["input_ids"] = args[0] if args else call["input_ids"]
        self.calls.append(call)
        return self.model.generate(*args, **kwargs)


def test_the_cora_preset_answers_exactly_as_eval_mgen(cora_run):
    records, expected = cora_run["records"], cora_run["answers"]
    model, tokenizer, source = cora_run["model"], cora_run["tokenizer"], str(cora_run["source"])
    # answers worth comparing: non-empty and many different
    assert sum(bool(a) for a in expected) >= 10 and len(set(expected)) >= 8
    # the same generate() calls, batch by batch (CORA's batches of 8), and the same answers
    cora_model, ours = GenerateRecorder(model), GenerateRecorder(model)
    assert cora_eval(cora_model, tokenizer, source) == expected
    generator = Generator(ours, tokenizer, top_k=TOP_N, decoding="cora", device="cpu")
    answers = []
    for start in range(0, len(records), 8):
        batch = records[start:start + 8]
        answers += generator.answer([r["question"] for r in batch], [r["lang"] for r in batch],
                                    [r["ctxs"] for r in batch], queries=[r.get("query") for r in batch])
    assert answers == expected
    assert len(ours.calls) == len(cora_model.calls) == 2
    for mine, theirs in zip(ours.calls, cora_model.calls):
        assert torch.equal(mine.pop("input_ids"), theirs.pop("input_ids"))
        assert torch.equal(mine.pop("attention_mask"), theirs.pop("attention_mask"))
        assert mine == {**theirs, "do_sample": False}  # CORA leaves do_sample to the config: False
    assert not model.generation_config.do_sample  # unset: greedy or beam search, no sampling
    assert max(len(ids) for ids in tokenizer(generator.sources(
        [r["question"] for r in records], [r["lang"] for r in records], [r["ctxs"] for r in records],
        [r.get("query") for r in records]))["input_ids"]) > 1000  # nothing cut at ray_cora's old 1000
    # what the equality rules out, on this model: a cut at 1000 tokens, ray_cora's own input string
    cut = cora_eval(model, tokenizer, source, max_source=1000)
    assert any(cut[i] != expected[i] for i in LONG_AT) and all(
        cut[i] == expected[i] for i in range(len(records)) if i not in LONG_AT)
    assert Generator(model, tokenizer, top_k=TOP_N, decoding="greedy", num_beams=4, max_target_length=19,
                     device="cpu").answer([r["question"] for r in records], [r["lang"] for r in records],
                                          [r["ctxs"] for r in records]) != expected
    # CORA's decode: tokenization spaces cleaned up (transformers 4.2.1's default), nothing stripped;
    # the greedy preset: no clean-up, stripped
    ids = torch.tensor([tokenizer("Paris . Lima , Rome")["input_ids"][:-1] + [tokenizer.convert_tokens_to_ids("▁"),
                                                                             tokenizer.eos_token_id]])
    assert generator.decode(ids) == ["Paris. Lima, Rome "]
    assert Generator(model, tokenizer, decoding="greedy", device="cpu").decode(ids) == ["Paris . Lima , Rome"]


def test_generate_reads_each_records_query_for_the_cora_question(cora_run):
    from ray_cora.pipelines.generate import _read_rows

    examples = [json.loads(row["example"]) for row in _read_rows({"uri": str(cora_run["retrieval"])})]
    assert [e.get("query") for e in examples] == [r.get("query") for r in cora_run["records"]]
    assert [e["question"] for e in examples] == [r["question"] for r in cora_run["records"]]


@pytest.mark.slow
def test_ray_cora_generate_decoding_cora_gives_cora_answers(ray_local, cora_run, cora_model, tmp_path):
    from ray_cora.configs.generate import GenerateConfig
    from ray_cora.pipelines.generate import run_generate

    out = tmp_path / "pred.jsonl"
    argv = ["generate", "--model", cora_model, "--retrieval", str(cora_run["retrieval"]), "--out", str(out),
            "--top-k", str(TOP_N), "--batch-size", "8", "--actor-cpus", "0.5"]
    assert main([*argv, "--decoding", "cora"]) == 0
    rows = {row["qid"]: row for row in map(json.loads, out.read_text(encoding="utf-8").splitlines())}
    assert [rows[r["qid"]]["prediction"] for r in cora_run["records"]] == cora_run["answers"]
    marker = json.loads((tmp_path / "pred.jsonl.done.json").read_text())
    assert marker["config"]["decoding"] == "cora" and marker["config"]["max_source_length"] is None
    # CORA's folder records no preset, so cora is the default: the same settings, nothing redone
    done = run_generate(GenerateConfig.load(overrides={"model": cora_model, "retrieval": [str(cora_run["retrieval"])],
                                                       "out": str(out), "top_k": TOP_N}))
    assert done["sha256"] == marker["sha256"]
    with pytest.raises(ConfigError, match=r"other settings \(decoding differ\)"):
        run_generate(GenerateConfig.load(overrides={"model": cora_model, "retrieval": [str(cora_run["retrieval"])],
                                                    "out": str(out), "top_k": TOP_N, "decoding": "greedy"}))


def test_the_greedy_preset_is_the_earlier_decoding(cora_run):
    records, model, tokenizer = cora_run["records"], cora_run["model"], cora_run["tokenizer"]
    generator = Generator(model, tokenizer, top_k=TOP_N, decoding="greedy", device="cpu")
    answers = generator.answer([r["question"] for r in records], [r["lang"] for r in records],
                               [r["ctxs"] for r in records], queries=[r.get("query") for r in records])
    assert answers == greedy_before(model, tokenizer, records, top_k=TOP_N)
    assert len(set(answers)) >= 8 and answers != cora_run["answers"]
    assert (generator.max_source_length, generator.num_beams, generator.max_target_length) == (1000, 1, 25)


def test_the_folder_decides_the_default_preset_and_settings_override_it(cora_model, tmp_path):
    assert recorded_decoding(cora_model) is None
    assert Generator.load(cora_model, device="cpu").decoding == DECODING_PRESETS["cora"]
    # ray-cora train-mgen's export records greedy (its models are trained on format_source inputs)
    task = MGENTask(init=cora_model, top_k=2)
    task.export(task.build(), str(tmp_path / "trained"))
    record = json.loads((tmp_path / "trained" / GENERATOR_FILE).read_text())
    assert record["kind"] == MODEL_KIND and record["decoding"] == "greedy"
    trained = Generator.load(str(tmp_path / "trained"), num_beams=3, device="cpu")
    assert (trained.decoding.name, trained.num_beams, trained.max_source_length) == ("greedy", 3, 1000)
    assert Generator.load(str(tmp_path / "trained"), decoding="cora", device="cpu").decoding.name == "cora"
    # a model published before the record existed: its manifest says it is ray_cora's
    older = shutil.copytree(cora_model, tmp_path / "older")
    (older / "manifest.json").write_text(json.dumps({"kind": MODEL_KIND}))
    assert recorded_decoding(str(older)) == "greedy"
    (older / GENERATOR_FILE).write_text(json.dumps({"decoding": "beam"}))
    with pytest.raises(ConfigError, match="decoding 'beam' is not one of cora, greedy"):
        recorded_decoding(str(older))
    cora = Generator.load(cora_model, max_source_length=64, max_target_length=5, device="cpu").decoding
    assert (cora.max_source_length, cora.max_target_length, cora.num_beams) == (64, 5, 4)


def test_decoding_options_are_one_group_in_generate_evaluate_all_and_serve():
    from typing import get_args

    from ray_cora.configs.evaluate import EvaluateAllConfig
    from ray_cora.configs.generate import GENERATION_SETTINGS, GenerateConfig
    from ray_cora.configs.options import DecodingOptions
    from ray_cora.configs.serve import ServeAppOptions, ServeConfig
    from ray_cora.evaluate.all import generate_config

    assert set(get_args(get_args(DecodingOptions.model_fields["decoding"].annotation)[0])) == set(DECODING_PRESETS)
    for cls in (GenerateConfig, EvaluateAllConfig, ServeAppOptions, ServeConfig):
        for name, field in DecodingOptions.model_fields.items():
            mine = cls.model_fields[name]
            assert (mine.description, mine.metadata, mine.default) == (field.description, field.metadata, None)
    assert {"decoding", "num_beams", "max_source_length", "max_target_length"} <= set(GENERATION_SETTINGS)
    config = EvaluateAllConfig.load(overrides={"index": "i", "questions": "q", "dataset": "jsonl", "out": "o",
                                               "generator": "g", "decoding": "cora", "num_beams": "2"})
    generate = generate_config(config, "r", "p")
    assert (generate.decoding, generate.num_beams, generate.max_source_length) == ("cora", 2, None)
    with pytest.raises(ConfigError, match="'decoding'"):
        GenerateConfig.load(overrides={"model": "m", "retrieval": ["r"], "out": "o", "decoding": "beam"})
