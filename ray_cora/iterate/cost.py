"""What one round of ``iterate`` costs (pure arithmetic): work per stage divided by throughput.

The throughputs are per device (GPU, or CPU worker) and come from the benchmarks
(``jobs/benchmarks/embed_throughput.py``, ``train_throughput.py``) run on the hardware in question;
the work comes from the corpus and data sizes. Stages run one after another; inside a stage the
work spreads evenly over the devices (Ray Data actor pools, Ray Train DDP), so time = work /
(rate × devices). Fixed costs (actor start, model load, Ray Train start: tens of seconds per stage)
are added once per stage.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RoundWork:
    passages: int  # corpus size (CORA: 43.6M)
    train_examples: int  # B_t records (mDPR training examples)
    questions: int  # training questions retrieved for and given to mGEN
    mdpr_epochs: int = 1
    mgen_epochs: int = 1
    mine_k: int = 10  # candidates labelled per question (plus language-link candidates)
    link_candidates: int = 0


@dataclass(frozen=True)
class Rates:
    """Per-device throughputs (items per second); None = not measured."""

    embed_passages: float | None
    mdpr_train_samples: float | None
    mgen_train_samples: float | None
    generate_questions: float | None
    query_encode: float | None = None
    fixed_seconds_per_stage: float = 60.0


def round_cost(work: RoundWork, rates: Rates, devices: int) -> dict[str, float | None]:
    """Seconds per stage and in total (None where a rate is missing).

    >>> w = RoundWork(passages=1000, train_examples=100, questions=50, mine_k=2)
    >>> r = Rates(embed_passages=100, mdpr_train_samples=10, mgen_train_samples=5, generate_questions=25,
    ...           fixed_seconds_per_stage=0)
    >>> round_cost(w, r, devices=2)
    {'mdpr': 5.0, 'embed': 5.0, 'retrieve': None, 'mgen': 5.0, 'mine': 2.0, 'total': None}
    """
    if devices < 1:
        raise ValueError("devices must be at least 1")

    def stage(items: float, rate: float | None) -> float | None:
        if rate is None or rate <= 0:
            return None
        return items / (rate * devices) + rates.fixed_seconds_per_stage

    cost = {
        "mdpr": stage(work.train_examples * work.mdpr_epochs, rates.mdpr_train_samples),
        "embed": stage(work.passages, rates.embed_passages),
        "retrieve": stage(work.questions, rates.query_encode),
        "mgen": stage(work.questions * work.mgen_epochs, rates.mgen_train_samples),
        "mine": stage(work.questions * work.mine_k + work.link_candidates, rates.generate_questions),
    }
    parts = list(cost.values())
    cost["total"] = None if any(p is None for p in parts) else sum(parts)  # type: ignore[arg-type]
    return cost
