"""Training throughput (samples/s) of `train-mdpr` and `train-mgen` on Ray Train. Not a test.

CPU (always): a tiny BERT bi-encoder (mDPR) and a tiny T5 (mGEN), 1 vs 2 Ray Train workers (DDP,
gloo), same global batch. GPU (when CUDA is present, or --gpu): an mBERT-base-sized bi-encoder
(hidden 768, 12 layers, 12 heads) and an mT5-base-sized seq2seq model (d_model 768, 12+12 layers,
12 heads, its 250,112-token vocabulary; the project's T5 builder gives d_ff 1536 with ReLU where mT5
has 2048 with gated GELU) with random weights, bf16 autocast, one worker per GPU;
figures are samples/s per GPU at CORA's sequence lengths (mDPR 256 tokens, mGEN source 1000 /
target 25).

Each figure is the job's own `samples_per_s` over the second half of a one-epoch run (the last
checkpoint interval): training steps only, after data-pipeline and model start-up, without
checkpoint uploads. Ray, data scanning and export are not timed.

    python jobs/benchmarks/train_throughput.py                # CPU: ~2-4 min; + GPU rows with CUDA
    python jobs/benchmarks/train_throughput.py --quick        # smallest setting (a smoke run)
    python jobs/benchmarks/train_throughput.py --models mdpr --workers 1,2 --steps 32

Writes docs/results/train_throughput.json and .md (or --results PATH.json and PATH.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results" / "train_throughput.json"
MT5_VOCAB = 250_112  # mT5's vocabulary: its output layer is a large share of mGEN's compute


def synthetic_dpr(n: int, *, words: int) -> list[dict]:
    """DPR-format training rows with passages of about ``words`` words."""
    return [{"question": f"question number {i} about topic {i % 17}?", "answers": [str(i)],
             "positive_ctxs": [{"title": f"Topic {i % 17}", "text": f"passage {i} " + "word " * words}],
             "hard_negative_ctxs": [{"title": f"Topic {(i + 3) % 17}", "text": f"other {i} " + "text " * words}],
             "negative_ctxs": []} for i in range(n)]


def synthetic_retrieval(n: int, *, words: int, top_k: int) -> list[dict]:
    """Retrieval-JSONL rows (the mGEN training input) with ``top_k`` passages of ``words`` words."""
    langs = ["en", "ja", "fi"]
    return [{"qid": f"q{i}", "lang": langs[i % 3], "question": f"question number {i} about topic {i % 17}?",
             "answers": [f"answer {i % 11}"],
             "ctxs": [{"title": f"Topic {(i + j) % 17}", "text": f"passage {i} {j} " + "word " * words}
                      for j in range(top_k)]} for i in range(n)]


def _texts(rows: list[dict]) -> list[str]:
    return [json.dumps(r, ensure_ascii=False) for r in rows]


def setups(*, gpu: bool, quick: bool) -> list[dict[str, Any]]:
    """What to measure: model kind, size, sequence lengths, per-worker batch."""
    if gpu:
        return [
            {"name": "gpu_mbert_base_sized_mdpr", "model": "mdpr", "size": "base", "max_length": 256,
             "words": 180, "batch_per_worker": 16, "use_gpu": True},
            {"name": "gpu_mt5_base_sized_mgen", "model": "mgen", "size": "base", "max_source_length": 1000,
             "max_target_length": 25, "top_k": 10, "words": 90, "batch_per_worker": 4, "use_gpu": True},
        ]
    words = 20 if quick else 60
    return [
        {"name": "cpu_tiny_mdpr", "model": "mdpr", "size": "tiny", "max_length": 64 if quick else 128,
         "words": words, "batch_per_worker": 8, "use_gpu": False},
        {"name": "cpu_tiny_mgen", "model": "mgen", "size": "tiny", "max_source_length": 128 if quick else 256,
         "max_target_length": 8, "top_k": 3, "words": words // 2, "batch_per_worker": 8, "use_gpu": False},
    ]


def build_model(setup: dict[str, Any], folder: str) -> str:
    """A random model of the setup's size (the project's tiny-model builders), as an ``init`` value."""
    from ray_cora.encoders.tiny import build_tiny_bert, build_tiny_t5

    base = setup["size"] == "base"
    if setup["model"] == "mdpr":
        texts = _texts(synthetic_dpr(200, words=20))
        dims = {"hidden": 768, "layers": 12, "heads": 12} if base else {"hidden": 128, "layers": 2, "heads": 2}
        return "hf:" + build_tiny_bert(folder, texts, vocab_size=2000, **dims)
    texts = _texts(synthetic_retrieval(100, words=10, top_k=2))
    dims = {"d_model": 768, "layers": 12, "heads": 12} if base else {"d_model": 128, "layers": 2, "heads": 4}
    path = build_tiny_t5(folder, texts, **dims)
    if base:  # mT5's vocabulary size, so the output layer costs what it costs in mT5-base
        from transformers import AutoModelForSeq2SeqLM

        model = AutoModelForSeq2SeqLM.from_pretrained(path)
        model.resize_token_embeddings(MT5_VOCAB)
        model.save_pretrained(path)
    return path


def measure(setup: dict[str, Any], workers: int, *, init: str, steps: int, tmp: str) -> dict[str, Any]:
    """One training run; samples/s (global) over its last checkpoint interval, and per worker."""
    batch = setup["batch_per_worker"] * workers
    examples = batch * steps
    common = {"out": os.path.join(tmp, f"out-{setup['name']}-{workers}-{time.time_ns()}"), "init": init,
              "batch_size": batch, "epochs": 1, "warmup_steps": 1, "checkpoint_every": max(1, steps // 2),
              "num_workers": workers, "use_gpu": setup["use_gpu"], "cpus_per_worker": 1 if setup["use_gpu"] else 0.5,
              "max_failures": 0}
    if setup["model"] == "mdpr":
        from ray_cora.configs.train import TrainMDPRConfig
        from ray_cora.train.jobs import train_mdpr

        path = os.path.join(tmp, f"{setup['name']}.json")
        Path(path).write_text(json.dumps(synthetic_dpr(examples, words=setup["words"])))
        manifest = train_mdpr(TrainMDPRConfig(train=[path], max_length=setup["max_length"], **common))
    else:
        from ray_cora.configs.train import TrainMGENConfig
        from ray_cora.train.jobs import train_mgen

        path = os.path.join(tmp, f"{setup['name']}.jsonl")
        rows = synthetic_retrieval(examples, words=setup["words"], top_k=setup["top_k"])
        Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))
        manifest = train_mgen(TrainMGENConfig(train=[path], top_k=setup["top_k"], grad_accumulation=1,
                                                  max_source_length=setup["max_source_length"],
                                                  max_target_length=setup["max_target_length"], **common))
    rate = float(manifest["final"]["samples_per_s"])
    return {"workers": workers, "global_batch": batch, "steps": manifest["steps"], "samples_per_s": round(rate, 2),
            "samples_per_s_per_worker": round(rate / workers, 2)}


def to_markdown(results: dict[str, Any]) -> str:
    lines = ["# Training throughput (Ray Train)", "",
             f"{results['machine']}; {results['steps']} steps per run, samples/s over the last "
             f"{results['steps'] - max(1, results['steps'] // 2)} (training steps only).", "",
             "| setup | workers | global batch | samples/s | per worker | vs 1 worker |",
             "|---|---|---|---|---|---|"]
    for name, rows in results["setups"].items():
        one = next((r["samples_per_s"] for r in rows if r["workers"] == 1), None)
        for r in rows:
            ratio = f"{r['samples_per_s'] / one:.2f}x" if one else "–"
            lines.append(f"| {name} | {r['workers']} | {r['global_batch']} | {r['samples_per_s']:.1f} | "
                         f"{r['samples_per_s_per_worker']:.1f} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smallest setting: short sequences, 4 steps")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 16; 4 with --quick)")
    parser.add_argument("--models", default="mdpr,mgen", help="comma list of mdpr, mgen")
    parser.add_argument("--workers", default="1,2", help="comma list of CPU worker counts")
    parser.add_argument("--gpu", action="store_true", help="fail unless CUDA is present (GPU rows are added "
                                                           "automatically when it is)")
    parser.add_argument("--results", default=str(RESULTS), help="where to write the .json (and .md beside it)")
    args = parser.parse_args(argv)
    import torch

    from ray_cora.runtime import ray_session

    cuda = torch.cuda.is_available()
    if args.gpu and not cuda:
        parser.error("--gpu: no CUDA device is visible")
    steps = args.steps or (4 if args.quick else 16)
    models = {m.strip() for m in args.models.split(",") if m.strip()}
    workers = [int(w) for w in args.workers.split(",")]
    plan = [(s, workers) for s in setups(gpu=False, quick=args.quick) if s["model"] in models]
    if cuda:
        plan += [(s, [1]) for s in setups(gpu=True, quick=args.quick) if s["model"] in models]
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs" + (f", {torch.cuda.get_device_name(0)}" if cuda else "")
    results: dict[str, Any] = {"machine": machine, "steps": steps, "quick": args.quick, "setups": {}}
    with tempfile.TemporaryDirectory() as tmp, ray_session(num_cpus=os.cpu_count()):
        for setup, counts in plan:
            init = build_model(setup, os.path.join(tmp, setup["name"]))
            results["setups"][setup["name"]] = [measure(setup, n, init=init, steps=steps, tmp=tmp) for n in counts]
            print(json.dumps({setup["name"]: results["setups"][setup["name"]]}))
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(to_markdown(results))
    print(to_markdown(results))
    return results


if __name__ == "__main__":
    main()
