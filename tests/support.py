"""Helpers the tests share (paths, free ports, stopping servers, loading benchmark scripts, the texts
and training rows the tiny models are made of): plain functions, imported as
``from tests.support import ...``; the fixtures are in the conftest files."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ray_cora.demo import DEMO_PASSAGES, DEMO_QUESTIONS

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

S3_ACCESS_KEY = "ray-cora-test"
S3_SECRET_KEY = "ray-cora-test-secret"
S3_BUCKET = "ray-cora-test"


def load_benchmark(name: str):
    """Import ``jobs/benchmarks/<name>.py`` (a script, not a package) so tests can call its functions."""
    path = REPO_ROOT / "jobs" / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data; the test is skipped (with the reason) when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not found at {path} (the project's shared/data folder sits beside "
                    "the repository in CI; a user's clone does not have it)")
    return path


def free_port_pair() -> int:
    """A port P such that P and P + 10000 (SeaweedFS puts gRPC there) are both free on 127.0.0.1."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair on 127.0.0.1")


def stop_process(proc: subprocess.Popen, terminate, *, grace_s: float) -> None:
    """Stop a server we started: ``terminate()``, then SIGKILL its process group after ``grace_s``."""
    terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- texts and rows the tiny models are made of
# The shared tiny models (tests/conftest.py: tiny_bert, tiny_t5) are built once a session from these.

def read_jsonl(path) -> list[dict]:
    """Every record of a JSON-lines file (blank lines skipped)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# Multilingual sentences the hf:/dpr: encoder tests encode (tests/encoders).
SENTENCES = [
    "The Eiffel Tower is in Paris, the capital of France.",
    "La tour Eiffel se trouve à Paris, la capitale de la France.",
    "Der Eiffelturm steht in Paris, der Hauptstadt Frankreichs.",
    "La Torre Eiffel está en París, la capital de Francia.",
    "Эйфелева башня находится в Париже, столице Франции.",
    "埃菲尔铁塔位于法国首都巴黎。",
    "エッフェル塔はフランスの首都パリにあります。",
    "에펠탑은 프랑스의 수도 파리에 있습니다.",
    "برج إيفل يقع في باريس عاصمة فرنسا.",
    "Mount Everest is the highest mountain on Earth.",
    "Der Mount Everest ist der höchste Berg der Erde.",
    "El monte Everest es la montaña más alta de la Tierra.",
    "Эверест — самая высокая гора на Земле.",
    "エベレストは地球で最も高い山です。",
    "Goethe wrote Faust, a tragic play in two parts.",
    "Goethe schrieb den Faust, eine Tragödie in zwei Teilen.",
    "Gœthe a écrit Faust, une pièce tragique en deux parties.",
    "Helsinki on Suomen pääkaupunki.",
    "Helsinki is the capital of Finland.",
    "Tokyo is the capital of Japan and its largest city.",
    "東京は日本の首都であり、最大の都市です。",
    "The Amazon is the largest rainforest in the world.",
    "A Amazônia é a maior floresta tropical do mundo.",
    "Marie Curie won two Nobel Prizes, in physics and chemistry.",
    "Marie Curie a reçu deux prix Nobel, en physique et en chimie.",
    "Мария Кюри получила две Нобелевские премии.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "Das Wasser kocht auf Meereshöhe bei hundert Grad Celsius.",
    "The Nile flows north into the Mediterranean Sea.",
    "النيل يتدفق شمالا إلى البحر الأبيض المتوسط.",
]

CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Peru", "Lima"),
            ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Chile", "Santiago"), ("Cuba", "Havana"),
            ("Iran", "Tehran"), ("Mali", "Bamako"), ("Oman", "Muscat"), ("Fiji", "Suva"), ("Laos", "Vientiane"),
            ("Nepal", "Kathmandu"), ("Qatar", "Doha")]


# A toy paraphrase set (pivot reranker and encoder tests): each question and its paraphrase; the
# other questions' paraphrases are its non-paraphrases.
PARAPHRASES = [
    ("how tall is mount fuji", "what is the height of mount fuji"),
    ("who wrote don quixote", "who is the author of don quixote"),
    ("when was the eiffel tower built", "in what year was the eiffel tower completed"),
    ("what is the capital of japan", "which city is the capital of japan"),
    ("how long is the nile river", "what is the length of the nile river"),
    ("who painted the mona lisa", "which artist painted the mona lisa"),
    ("where is the great wall", "in which country is the great wall"),
    ("what language is spoken in brazil", "which language do people in brazil speak"),
    ("how many people live in tokyo", "what is the population of tokyo"),
    ("who discovered penicillin", "which scientist discovered penicillin"),
]


def mdpr_examples(n: int = 16) -> list[dict]:
    """``n`` mDPR training examples ("what is the capital of X?"), cycling over CAPITALS; every fourth
    has no hard negative."""
    out = []
    for i in range(n):
        country, city = CAPITALS[i % len(CAPITALS)]
        other_country, other_city = CAPITALS[(i + 5) % len(CAPITALS)]
        hard = ([] if i % 4 == 3 else
                [{"title": other_country, "text": f"{other_city} is the capital of {other_country}."}])
        out.append({"question": f"what is the capital of {country}?", "answers": [city],
                    "positive": {"title": country, "text": f"{city} is the capital of {country}."},
                    "hard_negatives": hard, "negatives": []})
    return out


def dpr_rows(n: int = 16) -> list[dict]:
    """The same examples as DPR-format training rows (what ``ray-cora train-mdpr --train`` reads)."""
    return [{"question": ex["question"], "answers": ex["answers"], "positive_ctxs": [ex["positive"]],
             "hard_negative_ctxs": ex["hard_negatives"], "negative_ctxs": []} for ex in mdpr_examples(n)]


# Large enough for every word of tiny_bert_texts(): the tokenizer keeps whole words, not only characters.
TINY_BERT_VOCAB = 6000


def tiny_bert_texts() -> list[str]:
    """What the shared tiny BERT's tokenizer is trained on: the union of the texts its tests encode
    (the encoder tests' sentences, the capitals of the mDPR examples, the demo corpus and questions,
    language-tagged questions)."""
    return [*SENTENCES,
            *(f"{ex['question']} {ex['positive']['title']} {ex['positive']['text']}" for ex in mdpr_examples()),
            *(f"{p['title']} {p['text']}" for p in read_jsonl(DEMO_PASSAGES)),
            *(q["question"] for q in read_jsonl(DEMO_QUESTIONS)),
            "日本の首都は？ [ja]", "who wrote faust? [en]", "a tiny encoder"]


QA_CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Peru", "Lima"),
               ("Chile", "Santiago"), ("Egypt", "Cairo")]
QA_CAPITALS_JA = [("フランス", "パリ"), ("日本", "東京"), ("イタリア", "ローマ"), ("スペイン", "マドリード"),
                  ("ペルー", "リマ"), ("エジプト", "カイロ")]


def qa_pairs() -> list[dict]:
    """20 mGEN examples (retrieval records with one passage) in English, French and Japanese."""
    items = []
    for i, (c, a) in enumerate(QA_CAPITALS):
        items.append({"qid": f"en{i}", "lang": "en", "question": f"What is the capital of {c}?", "answers": [a],
                      "ctxs": [{"title": c, "text": f"The capital of {c} is {a}."}]})
        items.append({"qid": f"fr{i}", "lang": "fr", "question": f"Quelle est la capitale de {c} ?", "answers": [a],
                      "ctxs": [{"title": c, "text": f"La capitale de {c} est {a}."}]})
    for i, (c, a) in enumerate(QA_CAPITALS_JA):
        items.append({"qid": f"ja{i}", "lang": "ja", "question": f"{c}の首都は？", "answers": [a],
                      "ctxs": [{"title": c, "text": f"{c}の首都は{a}です。"}]})
    return items


def tiny_t5_texts() -> list[str]:
    """What the shared tiny T5's tokenizer is trained on: the union of the texts its tests feed it (the
    mGEN inputs and answers of qa_pairs(); the demo corpus, the demo questions and their answers)."""
    from ray_cora.models.mgen import format_source  # 0.4 s of imports: only when a T5 is built

    questions = read_jsonl(DEMO_QUESTIONS)
    return [*(f"{format_source(x['question'], x['lang'], x['ctxs'], top_k=1)} {x['answers'][0]}" for x in qa_pairs()),
            *(f"{p['title']} {p['text']}" for p in read_jsonl(DEMO_PASSAGES)), *(q["question"] for q in questions),
            *(a for q in questions for a in q["answers"])]
