"""mDPR training throughput (samples/s) on Ray Train: 1 vs 2 workers on CPU with a tiny BERT, and,
with --gpu, an mBERT-base-sized bi-encoder with random weights under bf16 autocast.

    python jobs/benchmarks/train_throughput.py [--examples 512] [--gpu]

Prints the figures and saves them to docs/results/train_throughput.json. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results" / "train_throughput.json"


def synthetic(n: int) -> list[dict]:
    return [{"question": f"question number {i} about topic {i % 17}?", "answers": [str(i)],
             "positive_ctxs": [{"title": f"Topic {i % 17}", "text": f"passage {i} " + "word " * 60}],
             "hard_negative_ctxs": [{"title": f"Topic {(i + 3) % 17}", "text": f"other {i} " + "text " * 60}],
             "negative_ctxs": []} for i in range(n)]


def run(workers: int, *, init: str, examples: int, use_gpu: bool, tmp: str) -> float:
    from ray_cora.train_mdpr_job import TrainMDPRConfig, run_train_mdpr

    train = os.path.join(tmp, "train.json")
    with open(train, "w") as handle:
        json.dump(synthetic(examples), handle)
    config = TrainMDPRConfig(train=[train], out=os.path.join(tmp, f"out-{workers}-{time.time_ns()}"), init=init,
                             batch_size=16 * workers, max_length=128, epochs=1, warmup_steps=1,
                             num_workers=workers, use_gpu=use_gpu, cpus_per_worker=0.5 if not use_gpu else 1)
    manifest = run_train_mdpr(config)
    return float(manifest["final"]["samples_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--gpu", action="store_true")
    args = parser.parse_args()
    from ray_cora.encoders.tiny import build_tiny_bert
    from ray_cora.runtime import ray_session

    results: dict = {"examples": args.examples}
    with tempfile.TemporaryDirectory() as tmp, ray_session(num_cpus=os.cpu_count()):
        bert = build_tiny_bert(os.path.join(tmp, "bert"), [json.dumps(r) for r in synthetic(200)],
                               hidden=128, layers=2, heads=2, vocab_size=2000)
        for workers in (1, 2):
            results[f"cpu_tiny_{workers}_workers_samples_per_s"] = run(
                workers, init=f"hf:{bert}", examples=args.examples, use_gpu=False, tmp=tmp)
        if args.gpu:
            base = build_tiny_bert(os.path.join(tmp, "base"), [json.dumps(r) for r in synthetic(200)],
                                   hidden=768, layers=12, heads=12, vocab_size=2000)
            results["gpu_mbert_base_sized_samples_per_s_per_gpu"] = run(
                1, init=f"hf:{base}", examples=args.examples, use_gpu=True, tmp=tmp)
    print(json.dumps(results, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
