"""Passage embedding rate and DPR training step time of an mBERT-base-sized encoder on one GPU, against
the card's bf16 matrix rate.

    python jobs/benchmarks/gpu_embed.py --out /tmp/gpu_out/gpu_embed.json     # on a CUDA GPU
    python jobs/benchmarks/gpu_embed.py --quick                               # tiny config, CPU smoke run

The encoder is ``transformers.BertModel`` built from a config with random weights (no download):
mBERT-base's shape, hidden 768, 12 layers, 12 heads, intermediate 3072, vocabulary 119,547, no pooler
(DPR takes the [CLS] vector of the last layer). On CUDA it runs under bf16 autocast with fp32 weights,
as ray_cora's ``hf:``/``dpr:`` encoders and its training loop do; on CPU in float32.

Figures, and how to read them:

- **matmul**: an 8192 x 8192 x 8192 bf16 product (torch, random data, median of 10 after 3 warm-ups):
  the matrix rate this card reaches here (KINDS.md recorded 769-798 TFLOP/s on an H200), the
  practical ceiling beside the datasheet's.
- **embed** (one row per ``--batch-sizes``, default 128/256/512, sequences of ``--seq`` 256 tokens,
  all unpadded): passages/s on one GPU = batch / median forward time (``torch.inference_mode``,
  CUDA events, median of ``--iters`` after ``--warmup``); ``TFLOP/s`` = FLOPs per passage x
  passages/s; ``% of peak`` = that over the **H200 SXM dense bf16 datasheet figure, 989 TFLOP/s**
  (``--peak-tflops``), and ``% of matmul`` over the measured product above.
  FLOPs per passage of s tokens (forward), counted from the model itself:

      2 x P_linear x s          every Linear of the encoder layers (Q, K, V, attention output,
                                FFN in and out), P_linear = 12 x (4 h^2 + 2 h f) = 84.9M weights
    + 4 x s^2 x h x L           attention scores Q K^T (2 s^2 h) and their product with V (2 s^2 h)
                                in each of the L layers

  = 43.5 + 2.4 = 45.9 GFLOP at s = 256, h = 768, f = 3072, L = 12. Embedding lookups, LayerNorm,
  softmax, GELU and biases are left out (no matrix work; under 1%). This is the usual model-FLOPs
  count, so "% of peak" is model FLOPs utilisation: what the run does with the tensor cores,
  not how busy they are.
- **train** (``--train-questions`` 64 questions x ``--passages-per-question`` 2 passages, one positive
  and one negative each, all 128 passages shared as in-batch negatives): separate question and passage
  encoders as CORA's mDPR has them, questions padded to ``--question-tokens`` 256 (DPR's tensorizer pads
  every text to the maximum length) and passages to ``--seq`` 256, bf16 autocast, the project's
  ``dpr_nll_loss``, gradient clipping at 2.0 and ``torch.optim.AdamW``; step time = median of
  ``--train-steps`` 20 after ``--train-warmup`` 5 (forward, backward, clip, optimizer step, zero grad).
  Step FLOPs = 3 x forward FLOPs (forward + backward's two products) of the 64 + 128 sequences;
  ``% of peak`` likewise (the optimizer and embedding gradients are not counted).
- **ddp1**: the same step with both encoders in ``torch.nn.parallel.DistributedDataParallel`` over a
  world of one process (NCCL on CUDA, gloo on CPU): the per-GPU step time of DDP training less the
  all-reduce wait of a real multi-GPU run; its ratio to ``train`` is DDP's own overhead.

On a CPU (``--quick``, or no CUDA) the same code runs on a tiny config (hidden 64, 2 layers) as a
smoke test; its figures say nothing about a GPU and have no "% of peak". Every section is guarded
(errors are recorded in the JSON, the next section runs), and the JSON is rewritten after each.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import socket
import statistics
import time
import traceback
from pathlib import Path
from typing import Any, Callable

H200_BF16_DENSE_TFLOPS = 989.0  # H200 SXM dense bf16 tensor-core rate, vendor datasheet (1979 with sparsity)
MBERT_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
              "vocab_size": 119_547, "max_position_embeddings": 512}
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 256,
        "vocab_size": 1000, "max_position_embeddings": 64}


def build_encoder(dims: dict[str, int], device: Any) -> Any:
    """A random-weight BertModel of ``dims`` (no pooler), made directly on ``device``."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(**dims)
    with torch.device(device):
        model = BertModel(config, add_pooling_layer=False)
    return model


def linear_weights(model: Any) -> int:
    """Weights of every Linear inside the encoder layers (not the embeddings)."""
    import torch

    return sum(m.weight.numel() for m in model.encoder.modules() if isinstance(m, torch.nn.Linear))


def forward_flops(model: Any, seq: int) -> int:
    """FLOPs of one forward pass over one sequence of ``seq`` tokens (module docstring)."""
    config = model.config
    return 2 * linear_weights(model) * seq + 4 * seq ** 2 * config.hidden_size * config.num_hidden_layers


def timer(device: Any) -> Callable[[Callable[[], Any]], float]:
    """Seconds one call of ``fn`` takes: CUDA events on a GPU, a synchronised host clock otherwise."""
    import torch

    def cuda(fn: Callable[[], Any]) -> float:
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        return start.elapsed_time(stop) / 1e3

    def host(fn: Callable[[], Any]) -> float:
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started

    return cuda if device.type == "cuda" else host


def median_time(fn: Callable[[], Any], device: Any, *, warmup: int, iters: int) -> tuple[float, list[float]]:
    measure = timer(device)
    for _ in range(warmup):
        fn()
    times = [measure(fn) for _ in range(iters)]
    return statistics.median(times), times


def autocast(device: Any) -> Any:
    import torch

    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()  # float32 on CPU, as ray_cora's encoders run there


def token_batch(count: int, seq: int, vocab: int, device: Any, seed: int) -> dict[str, Any]:
    import torch

    gen = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.randint(1000 if vocab > 2000 else 5, vocab, (count, seq), generator=gen)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones(count, seq, dtype=torch.long, device=device),
            "token_type_ids": torch.zeros(count, seq, dtype=torch.long, device=device)}


def percent(flops_per_s: float, ceiling_flops: float | None) -> float | None:
    return round(100 * flops_per_s / ceiling_flops, 1) if ceiling_flops else None


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        self.args = args
        self.device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
        self.cuda = self.device.type == "cuda"
        self.dims = TINY if args.quick or not self.cuda else MBERT_BASE
        self.peak = args.peak_tflops * 1e12 if self.cuda else None
        self.matmul_flops: float | None = None
        self.results: dict[str, Any] = {"meta": {}, "sections": {}}
        self.started = time.perf_counter()

    def write(self) -> None:
        self.results["meta"]["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        out = Path(self.args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.results, indent=2, default=str) + "\n")

    def section(self, name: str, fn: Callable[[], Any]) -> None:
        started = time.perf_counter()
        try:
            value = fn()
            entry = value if isinstance(value, dict) else {"rows": value}
            entry.setdefault("status", "ok")
        except Exception as error:  # noqa: BLE001 - recorded; the next section runs
            entry = {"status": "error", "error": f"{type(error).__name__}: {error}",
                     "traceback": traceback.format_exc()[-2500:]}
        entry["section_s"] = round(time.perf_counter() - started, 1)
        self.results["sections"][name] = entry
        if self.cuda:
            import torch

            torch.cuda.empty_cache()
        self.write()
        print(json.dumps({name: {k: v for k, v in entry.items() if k != "traceback"}}, default=str), flush=True)

    # -- sections

    def meta(self) -> dict[str, Any]:
        import torch
        import transformers

        meta = self.results["meta"]
        meta.update({"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "python": platform.python_version(),
                     "torch": torch.__version__, "transformers": transformers.__version__,
                     "device": torch.cuda.get_device_name(0) if self.cuda else "cpu", "quick": self.args.quick,
                     "config": self.dims, "seq": self.seq, "precision": "bf16 autocast, fp32 weights" if self.cuda
                     else "float32 (CPU)",
                     "peak_tflops": self.args.peak_tflops if self.cuda else None,
                     "peak_source": "H200 SXM dense bf16 datasheet (989 TFLOP/s)" if self.cuda else "no GPU: no peak",
                     "flops_formula": "forward FLOPs/sequence = 2 x linear weights of the encoder layers x s "
                                      "+ 4 x s^2 x hidden x layers; train step = 3 x forward"})
        model = build_encoder(self.dims, "meta")  # shapes only: no memory, no init cost
        meta["linear_weights"] = linear_weights(model)
        meta["total_weights"] = sum(p.numel() for p in model.parameters())
        meta["forward_flops_per_passage"] = forward_flops(model, self.seq)
        return {"status": "ok"}

    def matmul(self) -> dict[str, Any]:
        import torch

        size = 8192 if self.cuda else 256
        dtype = torch.bfloat16 if self.cuda else torch.float32
        a = torch.randn(size, size, device=self.device, dtype=dtype)
        b = torch.randn(size, size, device=self.device, dtype=dtype)
        seconds, _ = median_time(lambda: a @ b, self.device, warmup=3, iters=10)
        self.matmul_flops = 2 * size ** 3 / seconds
        return {"size": size, "dtype": str(dtype).replace("torch.", ""), "tflops": round(self.matmul_flops / 1e12, 1),
                "pct_of_peak": percent(self.matmul_flops, self.peak)}

    def embed(self) -> list[dict[str, Any]]:
        import torch

        model = build_encoder(self.dims, self.device).eval()
        flops = forward_flops(model, self.seq)
        attention = getattr(model.config, "_attn_implementation", None)
        rows = []
        for batch in self.batch_sizes:
            inputs = [token_batch(batch, self.seq, self.dims["vocab_size"], self.device, seed) for seed in range(2)]
            turn = {"i": 0}

            def forward() -> Any:
                turn["i"] += 1
                with torch.inference_mode(), autocast(self.device):
                    return model(**inputs[turn["i"] % 2]).last_hidden_state[:, 0]

            if self.cuda:
                torch.cuda.reset_peak_memory_stats()
            seconds, times = median_time(forward, self.device, warmup=self.args.warmup, iters=self.args.iters)
            rate = batch / seconds
            achieved = flops * rate
            rows.append({"batch": batch, "seq": self.seq, "median_s": round(seconds, 5),
                         "min_s": round(min(times), 5), "max_s": round(max(times), 5),
                         "passages_per_s": round(rate, 1), "tflops": round(achieved / 1e12, 1),
                         "pct_of_peak": percent(achieved, self.peak), "pct_of_matmul": percent(achieved,
                                                                                               self.matmul_flops),
                         "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if self.cuda else None,
                         "attention": attention})
            print(json.dumps(rows[-1]), flush=True)
        return rows

    def train(self, ddp: bool) -> dict[str, Any]:
        import torch

        try:
            from ray_cora.models.mdpr import dpr_nll_loss  # the project's own loss
            loss_from = "ray_cora.models.mdpr.dpr_nll_loss"
        except Exception:  # noqa: BLE001 - the figure does not depend on where the loss comes from
            import torch.nn.functional as F

            def dpr_nll_loss(q: Any, c: Any, positive: Any, mask: Any = None) -> Any:
                return F.cross_entropy((q @ c.T).float(), positive)
            loss_from = "local copy (ray_cora did not import)"

        args = self.args
        group_started = False
        if ddp:
            import torch.distributed as dist

            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            dist.init_process_group("nccl" if self.cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                                    rank=0, world_size=1, timeout=datetime.timedelta(seconds=60))
            group_started = True
        try:
            pair = bi_encoder(build_encoder(self.dims, self.device), build_encoder(self.dims, self.device)).train()
            model = torch.nn.parallel.DistributedDataParallel(pair) if ddp else pair
            optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.0,
                                          **({"fused": True} if self.cuda else {}))
            nq, per = args.train_questions, args.passages_per_question
            questions = token_batch(nq, self.question_tokens, self.dims["vocab_size"], self.device, 10)
            ctxs = token_batch(nq * per, self.seq, self.dims["vocab_size"], self.device, 11)
            positive = torch.arange(nq, device=self.device) * per  # question i's positive: passage i * per

            def step() -> Any:
                with autocast(self.device):
                    q, c = model(questions, ctxs)  # through the DDP wrapper when there is one, so its hooks run
                    loss = dpr_nll_loss(q, c, positive)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                return loss

            if self.cuda:
                torch.cuda.reset_peak_memory_stats()
            seconds, times = median_time(step, self.device, warmup=args.train_warmup, iters=args.train_steps)
            ctx_flops = forward_flops(pair.ctx, self.seq)
            flops = 3 * (nq * forward_flops(pair.question, self.question_tokens) + nq * per * ctx_flops)
            achieved = flops / seconds
            return {"ddp_world_size": 1 if ddp else None, "questions": nq, "passages": nq * per,
                    "question_tokens": self.question_tokens, "passage_tokens": self.seq,
                    "median_step_s": round(seconds, 4), "min_step_s": round(min(times), 4),
                    "max_step_s": round(max(times), 4), "steps_timed": len(times), "warmup_steps": args.train_warmup,
                    "step_flops": flops, "forward_flops_per_passage": ctx_flops, "tflops": round(achieved / 1e12, 1),
                    "pct_of_peak": percent(achieved, self.peak), "pct_of_matmul": percent(achieved, self.matmul_flops),
                    "samples_per_s": round(nq / seconds, 1), "loss": loss_from, "optimizer": "AdamW" + (
                        " (fused)" if self.cuda else ""),
                    "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if self.cuda else None}
        finally:
            if group_started:
                import torch.distributed as dist

                dist.destroy_process_group()

    def run(self) -> dict[str, Any]:
        args = self.args
        quick = args.quick or not self.cuda
        self.seq = args.seq or (32 if quick else 256)
        self.question_tokens = args.question_tokens or self.seq
        self.batch_sizes = [int(b) for b in (args.batch_sizes or ("2,4" if quick else "128,256,512")).split(",")]
        if quick:
            args.train_questions = min(args.train_questions, 4)
            args.iters, args.warmup = min(args.iters, 3), min(args.warmup, 1)
            args.train_steps, args.train_warmup = min(args.train_steps, 3), min(args.train_warmup, 1)
        self.section("meta", self.meta)
        self.section("matmul", self.matmul)
        self.section("embed", self.embed)
        if not args.no_train:
            self.section("train", lambda: self.train(ddp=False))
            if not args.no_ddp:
                self.section("ddp1", lambda: self.train(ddp=True))
        self.results["meta"]["done"] = True
        self.write()
        return self.results


def bi_encoder(question: Any, ctx: Any) -> Any:
    """Separate question and passage encoders whose forward gives their [CLS] vectors (DPR's pooling)."""
    import torch

    class BiEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.question, self.ctx = question, ctx

        def forward(self, questions: dict[str, Any], ctxs: dict[str, Any]) -> tuple[Any, Any]:
            return (self.question(**questions).last_hidden_state[:, 0],
                    self.ctx(**ctxs).last_hidden_state[:, 0])

    return BiEncoder()


def _v(value: Any) -> str:
    return "–" if value is None else str(value)


def to_markdown(results: dict[str, Any]) -> str:
    """Every figure of a gpu_embed.json as Markdown tables."""
    meta, sections = results.get("meta", {}), results.get("sections", {})
    lines = ["## Encoder on one GPU (jobs/benchmarks/gpu_embed.py)", "",
             f"{meta.get('device')}; torch {meta.get('torch')}, transformers {meta.get('transformers')}; "
             f"{meta.get('precision')}; config {meta.get('config')} ({meta.get('total_weights', 0):,} weights, "
             f"{meta.get('linear_weights', 0):,} in the layers' Linear modules); forward FLOPs per "
             f"{meta.get('seq')}-token passage {meta.get('forward_flops_per_passage', 0) / 1e9:.2f} G "
             f"({meta.get('flops_formula')}). Peak: {meta.get('peak_source')}.", ""]
    if meta.get("device") == "cpu":
        lines += ["**No CUDA GPU: a tiny-config CPU smoke run; none of these figures is a GPU figure.**", ""]
    lines += ["| figure | batch | seq | median s | rate | TFLOP/s | % of peak | % of measured matmul | notes |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name in ("matmul", "embed", "train", "ddp1"):
        entry = sections.get(name)
        if entry is None:
            lines.append(f"| {name} | – | – | – | – | – | – | – | not run |")
            continue
        if entry.get("status") == "error":
            lines.append(f"| {name} | – | – | – | – | – | – | – | error: {entry.get('error', '')[:200]} |")
            continue
        if name == "matmul":
            lines.append(f"| {entry['size']}³ {entry['dtype']} matmul | – | – | – | – | {entry['tflops']} | "
                         f"{_v(entry['pct_of_peak'])} | 100 | the measured ceiling |")
        elif name == "embed":
            for r in entry["rows"]:
                lines.append(f"| embed passages/s | {r['batch']} | {r['seq']} | {r['median_s']} | "
                             f"{r['passages_per_s']:,} passages/s | {r['tflops']} | {_v(r['pct_of_peak'])} | "
                             f"{_v(r['pct_of_matmul'])} | attention {r['attention']}, peak mem "
                             f"{_v(r['peak_mem_gib'])} GiB |")
        else:
            label = "DDP (world 1) step" if name == "ddp1" else "train step (1 GPU)"
            ratio = ""
            if name == "ddp1" and sections.get("train", {}).get("median_step_s"):
                ratio = f"; {entry['median_step_s'] / sections['train']['median_step_s']:.3f}x the plain step"
            lines.append(f"| {label} | {entry['questions']} q x {entry['passages'] // entry['questions']} p | "
                         f"{entry['question_tokens']}/{entry['passage_tokens']} | {entry['median_step_s']} | "
                         f"{entry['samples_per_s']} questions/s | {entry['tflops']} | {_v(entry['pct_of_peak'])} | "
                         f"{_v(entry['pct_of_matmul'])} | median of {entry['steps_timed']} after "
                         f"{entry['warmup_steps']}, {entry['optimizer']}, peak mem {_v(entry['peak_mem_gib'])} GiB"
                         f"{ratio} |")
    lines += ["", f"Whole run {meta.get('elapsed_s')} s{'' if meta.get('done') else ' (did not finish)'}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny config, 32 tokens, batches 2/4, 3 steps "
                        "(implied without CUDA)")
    parser.add_argument("--cpu", action="store_true", help="run on CPU even when CUDA is there")
    parser.add_argument("--batch-sizes", default=None, help="embedding batches (default 128,256,512)")
    parser.add_argument("--seq", type=int, default=None, help="passage tokens (default 256; 32 when quick)")
    parser.add_argument("--question-tokens", type=int, default=None, help="question tokens (default: --seq)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--train-questions", type=int, default=64)
    parser.add_argument("--passages-per-question", type=int, default=2)
    parser.add_argument("--train-warmup", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--no-train", action="store_true")
    parser.add_argument("--no-ddp", action="store_true", help="skip the DDP (world 1) step")
    parser.add_argument("--peak-tflops", type=float, default=H200_BF16_DENSE_TFLOPS,
                        help="the '%% of peak' reference (default: H200 SXM dense bf16, 989)")
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", "/tmp/gpu_out"), "gpu_embed.json"),
                        help="the JSON (default: $OUT/gpu_embed.json, OUT defaulting to /tmp/gpu_out)")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available() or args.cpu:
        torch.set_num_threads(min(2, os.cpu_count() or 1))  # a smoke run: stay light
    results = Bench(args).run()
    print()
    print(to_markdown(results))
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
