"""What one round of `ray-cora iterate` costs on N devices, from measured per-device throughputs.

    python jobs/benchmarks/iterate_cost.py --devices 8 --embed-rate 2500 --mdpr-rate 400 \
        --mgen-rate 60 --generate-rate 150 --query-rate 3000

Rates not given on the command line are read from the benchmark results when those hold GPU
figures (docs/results/train_throughput.json: the gpu_* setups, per GPU); with --cpu the measured
CPU figures of this repository's benchmarks are used instead (per worker). A stage whose rate is
unknown is printed as "not measured" rather than guessed. Writes docs/results/iterate_cost.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ray_cora.iterate.cost import Rates, RoundWork, round_cost

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


def _read(name: str) -> dict:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else {}


def measured_rates(*, cpu: bool) -> dict[str, float | None]:
    train = _read("train_throughput.json").get("setups", {})
    embed = _read("embed_throughput.json")

    def per_device(setup: str) -> float | None:
        rows = train.get(setup) or []
        one = [r for r in rows if r.get("workers") == 1]
        return (one or rows or [{}])[0].get("samples_per_s_per_worker")

    if cpu:
        return {"embed": embed.get("ray_1_actor_passages_per_s"), "mdpr": per_device("cpu_tiny_mdpr"),
                "mgen": per_device("cpu_tiny_mgen"), "generate": None, "query": embed.get("ray_1_actor_passages_per_s")}
    return {"embed": None, "mdpr": per_device("gpu_mbert_base_sized_mdpr"),
            "mgen": per_device("gpu_mt5_base_sized_mgen"), "generate": None, "query": None}


def hours(seconds: float | None) -> str:
    return "not measured" if seconds is None else f"{seconds / 3600:.2f} h"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=8, help="GPUs (or CPU workers with --cpu)")
    parser.add_argument("--cpu", action="store_true", help="use this repository's measured CPU figures")
    parser.add_argument("--passages", type=int, default=43_600_000, help="corpus size (CORA: 43.6M, 13 languages)")
    parser.add_argument("--train-examples", type=int, default=75_000, help="B_t records (set to your data)")
    parser.add_argument("--questions", type=int, default=75_000, help="training questions (set to your data)")
    parser.add_argument("--mdpr-epochs", type=int, default=1)
    parser.add_argument("--mgen-epochs", type=int, default=1)
    parser.add_argument("--mine-k", type=int, default=10)
    for name in ("embed", "mdpr", "mgen", "generate", "query"):
        parser.add_argument(f"--{name}-rate", type=float, default=None, help=f"{name}: items/s per device")
    parser.add_argument("--fixed-seconds", type=float, default=60.0, help="start-up cost per stage")
    parser.add_argument("--out", default=str(RESULTS / "iterate_cost.md"))
    args = parser.parse_args(argv)

    rates = measured_rates(cpu=args.cpu)
    for name in rates:
        if getattr(args, f"{name}_rate") is not None:
            rates[name] = getattr(args, f"{name}_rate")
    work = RoundWork(passages=args.passages, train_examples=args.train_examples, questions=args.questions,
                     mdpr_epochs=args.mdpr_epochs, mgen_epochs=args.mgen_epochs, mine_k=args.mine_k)
    cost = round_cost(work, Rates(embed_passages=rates["embed"], mdpr_train_samples=rates["mdpr"],
                                  mgen_train_samples=rates["mgen"], generate_questions=rates["generate"],
                                  query_encode=rates["query"], fixed_seconds_per_stage=args.fixed_seconds),
                      devices=args.devices)
    unit = "CPU worker" if args.cpu else "GPU"
    lines = [f"# One round of `ray-cora iterate` on {args.devices} {unit}(s)\n",
             f"Work: {args.passages:,} passages, {args.train_examples:,} mDPR examples, {args.questions:,} "
             f"questions, mine_k {args.mine_k}. Rates are per {unit}, items/s.\n",
             "| stage | rate per device | time |", "|---|---:|---:|"]
    names = {"mdpr": "mdpr", "embed": "embed", "retrieve": "query", "mgen": "mgen", "mine": "generate"}
    for stage, seconds in cost.items():
        rate = rates.get(names.get(stage, ""))
        lines.append(f"| {stage} | {rate if rate is not None else '–'} | {hours(seconds)} |")
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)
    return {"cost_seconds": cost, "rates": rates}


if __name__ == "__main__":
    main()
