"""GPU vector search on one GPU: faiss-gpu flat and IVF, a plain torch brute force, and ray_cora's own
``ShardedIndex.open(use_gpu=True)`` path, against the memory and arithmetic ceilings of the card.

    python jobs/benchmarks/gpu_search.py --out /tmp/gpu_out/gpu_search.json          # 10M x 768 on the GPU
    python jobs/benchmarks/gpu_search.py --quick --out /tmp/gpu_search.json          # 200k, CPU code-path check

Data: ``--n`` synthetic unit vectors (default 10,000,000 x 768) around ``--clusters`` random unit
centres (Gaussian noise of norm ~``--spread``, as jobs/benchmarks/search_scale.py makes them), made on
the GPU with torch in chunks when CUDA is there (numpy otherwise) and kept on the host as float32;
``--queries`` fresh queries from the same centres with their own noise, searched in batches of
``--batch`` (1024). Every search returns to the host (faiss's ``search`` does), so a timing covers the
whole batch loop; each figure is the median of ``--repeats`` passes over all queries after one
warm-up batch.

Rows, and how to read them:

- **faiss_flat_fp16**: ``GpuIndexFlatIP`` with float16 storage (``GpuIndexFlatConfig.useFloat16``),
  k = 10 and 100. Its k=10/k=100 results are the reference ("truth") of the recall columns below.
  Two ceilings for one batch of B queries over N vectors of d dims:
  *memory*: the batch must read the N x d x 2 bytes once, so q/s <= B x HBM / (N x d x 2), with
  HBM = 4.8 TB/s (the H200 datasheet; the measured device-to-device copy rate is reported beside it);
  *arithmetic*: 2 x N x d FLOP per query on the fp16 tensor cores, so q/s <= 989 TFLOP/s / (2 N d)
  (H200 SXM dense fp16/bf16 datasheet figure). At B = 1024 the arithmetic ceiling is the lower one
  (1024 FLOP per byte against the card's ~206 FLOP/byte balance point), so ``vs roofline`` is
  measured / min(both), and ``vs memory roofline`` (what the memory-bandwidth argument alone allows)
  is reported too. k-selection is not counted in either ceiling.
- **torch_flat_fp16**: the same search as fp16 matrix products in torch (database chunks of 1M
  rows, ``topk`` per chunk, then a merge): what a framework reaches without faiss; on a machine without
  faiss-gpu it is the only GPU search figure. **exact_check**: recall@10 of both fp16 searches
  against an fp32 exact search for the first 1000 queries (fp16 rounding may swap near-ties).
- **ray_cora_sharded**: ``write_index`` of the first ``--sharded-n`` vectors (default 2M) as
  ``--sharded-shards`` Flat shards, opened with ``ShardedIndex.open(uri, use_gpu=True,
  gpu_fp16=True, verify=False)`` (shards merged, then moved with ``ray_cora.index.gpu.move_to_gpu``),
  and ``search_rows`` timed against a raw ``GpuIndexFlatIP`` fp16 over the same vectors, interleaved;
  ``ratio`` = ray_cora q/s / raw q/s per repeat (1.0 = no overhead), ``agreement@10`` = overlap of
  their top-10 rows; ``placement`` is what ray_cora says it did.
- **ivf_flat**, **ivf_pq**: ``IVF{nlist},Flat`` and ``IVF{nlist},PQ{pq}`` (``--nlist`` 4096, ``--pq``
  64) cloned to the GPU untrained (``GpuClonerOptions.useFloat16``: fp16 lookup tables for IVF-PQ,
  needed above 48 code bytes), trained on the GPU on a seeded sample of 256 x nlist vectors
  (``--train-per-list``, capped at N), then filled; q/s and recall@10 / recall@100 against
  faiss_flat_fp16 at nprobe 16/64/256, over the first ``--ivf-queries`` (5000) queries and
  max(1, repeats - 1) passes. The ``memory roofline`` of an IVF row is an estimate that
  assumes balanced lists: a query scans nprobe/nlist x N stored vectors (counted at 4 x d bytes for
  IVF-Flat, as if its GPU lists were fp32 -- ``gpu_bytes`` shows what they are; the PQ code size for
  IVF-PQ) and nothing is shared between queries. Clustered data makes lists unequal, so read it as
  an order of magnitude, not a bound.
- ``gpu_bytes``: free GPU memory before minus after building (torch's ``mem_get_info``) beside what
  ``ray_cora.index.gpu.plan_gpu_placement`` predicts for that index: a check of the sizes ray_cora
  uses to refuse indexes that do not fit.

Without faiss-gpu (or without a GPU) every faiss row is recorded as skipped with the reason
("faiss has no GPU support ..."), never a crash; with ``--quick`` (or ``--cpu-check``) the same code
runs on CPU faiss / CPU torch and the figures go under ``cpu_check``: they check the code path only,
they are not GPU figures. Every section is guarded: an error is recorded in its row (type, message,
traceback tail) and the next section runs. The JSON is rewritten after every section, so a run
stopped by a timeout keeps what it measured; ``--budget-s`` skips the sections that would start too
late. Prints a Markdown table (also :func:`to_markdown`, used by jobs/benchmarks/gpu_suite.sh).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

HBM_BYTES_PER_S = 4.8e12  # H200 HBM3e, vendor datasheet
FP16_PEAK_FLOPS = 989e12  # H200 SXM dense fp16/bf16 tensor-core rate, vendor datasheet (1979 with sparsity)
NO_GPU = "faiss has no GPU support"
CHUNK = 1_000_000  # rows per generation / add / torch-search chunk


# ---------------------------------------------------------------- setup


def faiss_gpu_status() -> tuple[bool, str]:
    """(usable, one line): whether faiss imports, is a GPU build, and sees a GPU."""
    try:
        import faiss
    except Exception as error:  # noqa: BLE001 - any import failure is a reason to skip
        return False, f"{NO_GPU}: faiss does not import ({type(error).__name__}: {error})"
    version = getattr(faiss, "__version__", "?")
    if not hasattr(faiss, "StandardGpuResources"):
        return False, f"{NO_GPU}: faiss {version} is a CPU-only build"
    gpus = faiss.get_num_gpus()
    if gpus == 0:
        return False, f"{NO_GPU} here: faiss {version} is a GPU build but sees no GPU"
    return True, f"faiss {version}, GPU build, {gpus} GPU(s)"


def torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def make_data(args: argparse.Namespace, on_gpu: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """(corpus (n, dim) float32, queries (q, dim) float32, seconds): clustered unit vectors."""
    started = time.perf_counter()
    n, dim, scale = args.n, args.dim, args.spread / math.sqrt(args.dim)
    xb = np.empty((n, dim), np.float32)
    if on_gpu:
        import torch

        gen = torch.Generator(device="cuda").manual_seed(args.seed)
        centres = torch.randn(args.clusters, dim, generator=gen, device="cuda")
        centres /= centres.norm(dim=1, keepdim=True)

        def draw(count: int) -> Any:
            x = centres[torch.randint(0, args.clusters, (count,), generator=gen, device="cuda")]
            x += torch.randn(count, dim, generator=gen, device="cuda") * scale
            return x / x.norm(dim=1, keepdim=True)

        for start in range(0, n, CHUNK):
            end = min(n, start + CHUNK)
            torch.from_numpy(xb[start:end]).copy_(draw(end - start))  # device -> host, straight into xb
        xq = draw(args.queries).cpu().numpy()
        torch.cuda.synchronize()
    else:
        rng = np.random.default_rng(args.seed)
        centres = rng.standard_normal((args.clusters, dim)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)

        def draw(count: int) -> np.ndarray:
            x = centres[rng.integers(0, args.clusters, count)]
            x += rng.standard_normal((count, dim), dtype=np.float32) * scale
            return x / np.linalg.norm(x, axis=1, keepdims=True)

        for start in range(0, n, CHUNK // 10):
            end = min(n, start + CHUNK // 10)
            xb[start:end] = draw(end - start)
        xq = draw(args.queries)
    return xb, np.ascontiguousarray(xq, dtype=np.float32), time.perf_counter() - started


def measured_copy_bandwidth() -> float | None:
    """Device-to-device copy rate in bytes/s (bytes read + written), median of 10 copies of 2 GiB."""
    if not torch_cuda():
        return None
    import torch

    src = torch.empty(2 ** 30, dtype=torch.float16, device="cuda").normal_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(10):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / 1e3)
    size = src.numel() * src.element_size()
    del src, dst
    torch.cuda.empty_cache()
    return 2 * size / statistics.median(times)


def free_gpu_bytes() -> int | None:
    if not torch_cuda():
        return None
    import torch

    gc.collect()
    torch.cuda.empty_cache()
    return int(torch.cuda.mem_get_info()[0])


def release() -> None:
    gc.collect()
    if torch_cuda():
        import torch

        torch.cuda.empty_cache()


# ---------------------------------------------------------------- measuring


def stats(values: list[float], digits: int = 1) -> dict[str, float]:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits)}


def time_search(search: Callable[[np.ndarray, int], np.ndarray], xq: np.ndarray, k: int, batch: int,
                repeats: int) -> tuple[list[float], np.ndarray]:
    """q/s of each pass over all queries in batches (after one warm-up batch) and the last pass' rows."""
    search(xq[:batch], k)
    rates, rows = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        parts = [search(xq[s:s + batch], k) for s in range(0, len(xq), batch)]
        rates.append(len(xq) / (time.perf_counter() - started))
        rows = np.concatenate(parts)
    return rates, rows


def recall(rows: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean share of each query's true top-k (``truth``) found in its top-k ``rows``."""
    hits = 0
    for s in range(0, len(rows), 1000):  # (1000, k, k) booleans at a time
        a, t = rows[s:s + 1000, :k], truth[s:s + 1000, :k]
        hits += int(((a[:, :, None] == t[:, None, :]) & (t[:, None, :] >= 0)).any(axis=2).sum())
    return round(hits / (len(rows) * k), 4)


def flat_rooflines(n: int, dim: int, batch: int, measured_bw: float | None) -> dict[str, Any]:
    """Ceilings of an exhaustive fp16 search of a batch (see the module docstring)."""
    batch_bytes = n * dim * 2
    memory = batch * HBM_BYTES_PER_S / batch_bytes
    compute = FP16_PEAK_FLOPS / (2 * n * dim)
    out = {"bytes_per_batch": batch_bytes, "memory_qps": round(memory, 1), "compute_qps": round(compute, 1),
           "roofline_qps": round(min(memory, compute), 1), "binding": "memory" if memory < compute else "arithmetic",
           "hbm_bytes_per_s": HBM_BYTES_PER_S, "peak_flops": FP16_PEAK_FLOPS}
    if measured_bw:
        out["memory_qps_measured_bw"] = round(batch * measured_bw / batch_bytes, 1)
    return out


def with_ratios(rates: list[float], roof: dict[str, Any]) -> dict[str, Any]:
    qps = statistics.median(rates)
    return {"qps": stats(rates), "vs_roofline": round(qps / roof["roofline_qps"], 3),
            "vs_memory_roofline": round(qps / roof["memory_qps"], 3)}


def add_in_chunks(index: Any, xb: np.ndarray) -> float:
    started = time.perf_counter()
    for start in range(0, len(xb), CHUNK):
        index.add(xb[start:start + CHUNK])
    return time.perf_counter() - started


def planned_bytes(kind: str, n: int, dim: int, per_vector: int) -> int | str:
    """What ray_cora's placement rule says the GPU form takes (plenty of memory assumed free)."""
    try:
        from ray_cora.index.gpu import plan_gpu_placement

        return plan_gpu_placement(kind, n, per_vector, dim, free_bytes=2 ** 50, fp16=True).bytes
    except Exception as error:  # noqa: BLE001
        return f"{type(error).__name__}: {error}"


class Suite:
    """Runs the sections in order, each guarded, rewriting the JSON after each."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.perf_counter()
        self.faiss_gpu, self.faiss_line = faiss_gpu_status()
        self.faiss_imports = "does not import" not in self.faiss_line
        self.cuda = torch_cuda()
        self.cpu_check = args.cpu_check or args.quick
        self.results: dict[str, Any] = {"meta": {}, "rows": {}}
        self.truth: dict[int, np.ndarray] = {}
        self.res = None  # one StandardGpuResources for the raw faiss-gpu indexes

    # -- bookkeeping

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def write(self) -> None:
        self.results["meta"]["elapsed_s"] = round(self.elapsed(), 1)
        out = Path(self.args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.results, indent=2, default=str) + "\n")

    def section(self, name: str, fn: Callable[[], dict[str, Any]]) -> None:
        started = time.perf_counter()
        if self.args.budget_s and self.elapsed() > 0.8 * self.args.budget_s:
            row: dict[str, Any] = {"status": "skipped", "reason": f"time budget: {self.elapsed():.0f} s of "
                                   f"{self.args.budget_s} s used before it started"}
        else:
            try:
                row = fn()
                row.setdefault("status", "ok")
            except Exception as error:  # noqa: BLE001 - recorded, and the next section runs
                row = {"status": "error", "error": f"{type(error).__name__}: {error}",
                       "traceback": traceback.format_exc()[-2500:]}
        row["section_s"] = round(time.perf_counter() - started, 1)
        self.results["rows"][name] = row
        release()
        self.write()
        print(json.dumps({name: {k: v for k, v in row.items() if k != "traceback"}}, default=str), flush=True)

    def backend(self) -> str | None:
        """'gpu' (faiss-gpu), 'cpu' (code-path check on CPU faiss) or None (skip)."""
        if self.faiss_gpu:
            return "gpu"
        return "cpu" if self.cpu_check and self.faiss_imports else None

    def skipped(self) -> dict[str, Any]:
        return {"status": "skipped", "reason": self.faiss_line}

    # -- sections

    def setup(self) -> dict[str, Any]:
        args = self.args
        meta = self.results["meta"]
        meta.update({"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "python": platform.python_version(),
                     "faiss": self.faiss_line, "faiss_gpu": self.faiss_gpu, "torch_cuda": self.cuda,
                     "quick": args.quick, "cpu_check": self.cpu_check, "n": args.n, "dim": args.dim,
                     "clusters": args.clusters, "spread": args.spread, "queries": args.queries, "batch": args.batch,
                     "repeats": args.repeats, "ivf_queries": min(args.ivf_queries, args.queries),
                     "nlist": args.nlist, "train_per_list": args.train_per_list,
                     "pq": args.pq, "nprobes": args.nprobes,
                     "seed": args.seed, "hbm_bytes_per_s": HBM_BYTES_PER_S, "fp16_peak_flops": FP16_PEAK_FLOPS,
                     "ceilings_source": "H200 SXM datasheet: 4.8 TB/s HBM3e, 989 TFLOP/s dense fp16/bf16"})
        try:
            import torch

            meta["torch"] = torch.__version__
            if self.cuda:
                meta["gpu"] = torch.cuda.get_device_name(0)
        except ImportError:
            meta["torch"] = "not installed"
        try:
            import faiss

            meta["faiss_omp_threads"] = faiss.omp_get_max_threads()
            if self.faiss_gpu:
                self.res = faiss.StandardGpuResources()
                warm = faiss.GpuIndexFlatIP(self.res, 8)  # allocate its scratch space before any size is read
                warm.add(np.eye(8, dtype=np.float32))
                warm.search(np.eye(8, dtype=np.float32), 2)
                del warm
        except Exception as error:  # noqa: BLE001
            meta["faiss_setup_error"] = f"{type(error).__name__}: {error}"
            if self.faiss_gpu:  # a GPU build that cannot make its resources: treat as no GPU support
                self.faiss_gpu = False
                self.faiss_line = f"{NO_GPU} usable here: faiss-gpu setup failed ({type(error).__name__}: {error})"
                meta.update({"faiss": self.faiss_line, "faiss_gpu": False})
        bw = measured_copy_bandwidth()
        meta["copy_bytes_per_s_measured"] = round(bw) if bw else None
        self.xb, self.xq, seconds = make_data(args, on_gpu=self.cuda)
        return {"made_on": "gpu (torch)" if self.cuda else "cpu (numpy)", "seconds": round(seconds, 1),
                "host_gib": round(self.xb.nbytes / 2 ** 30, 2)}

    def faiss_flat(self) -> dict[str, Any]:
        backend = self.backend()
        if backend is None:
            return self.skipped()
        import faiss

        args, n = self.args, len(self.xb)
        roof = flat_rooflines(n, args.dim, args.batch, self.results["meta"].get("copy_bytes_per_s_measured"))
        free_before = free_gpu_bytes() if backend == "gpu" else None
        if backend == "gpu":
            config = faiss.GpuIndexFlatConfig()
            config.useFloat16 = True
            config.device = 0
            index = faiss.GpuIndexFlatIP(self.res, args.dim, config)
        else:
            index = faiss.IndexFlatIP(args.dim)
        add_s = add_in_chunks(index, self.xb)
        entry: dict[str, Any] = {"device": backend, "storage": "fp16" if backend == "gpu" else "fp32 (CPU)",
                                 "add_s": round(add_s, 2), "roofline": roof, "k": {}}
        if backend == "gpu":
            entry["gpu_bytes"] = {"measured": free_before - free_gpu_bytes(),
                                  "planned": planned_bytes("flat", n, args.dim, 4 * args.dim)}
        for k in (10, 100):
            rates, rows = time_search(lambda q, kk: index.search(q, kk)[1], self.xq, k, args.batch, args.repeats)
            self.truth[k] = rows
            entry["k"][str(k)] = with_ratios(rates, roof)
        return entry if backend == "gpu" else {**self.skipped(), "cpu_check": entry}

    def torch_flat(self) -> dict[str, Any]:
        import torch

        args, n = self.args, len(self.xb)
        if not self.cuda and not self.cpu_check:
            return {"status": "skipped", "reason": "torch sees no CUDA GPU"}
        device = "cuda" if self.cuda else "cpu"
        dtype = torch.float16 if self.cuda else torch.float32  # fp16 matrix products are GPU-only in practice
        started = time.perf_counter()
        chunks = [torch.from_numpy(self.xb[s:s + CHUNK]).to(device=device, dtype=dtype) for s in range(0, n, CHUNK)]
        load_s = time.perf_counter() - started

        def search(q: np.ndarray, k: int) -> np.ndarray:
            qt = torch.from_numpy(q).to(device=device, dtype=dtype)
            best_s, best_i, offset = [], [], 0
            for chunk in chunks:
                s, i = torch.topk(qt @ chunk.T, min(k, len(chunk)), dim=1)
                best_s.append(s)
                best_i.append(i + offset)
                offset += len(chunk)
            s, i = torch.cat(best_s, 1), torch.cat(best_i, 1)
            pick = torch.topk(s.float(), k, dim=1).indices
            return torch.gather(i, 1, pick).cpu().numpy()

        roof = flat_rooflines(n, args.dim, args.batch, self.results["meta"].get("copy_bytes_per_s_measured"))
        entry: dict[str, Any] = {"device": device, "storage": str(dtype).replace("torch.", ""),
                                 "load_s": round(load_s, 2), "roofline": roof, "k": {}}
        for k in (10, 100):
            rates, rows = time_search(search, self.xq, k, args.batch, args.repeats)
            entry["k"][str(k)] = with_ratios(rates, roof)
            if k in self.truth:
                entry["k"][str(k)]["agreement_with_faiss_flat"] = recall(rows, self.truth[k], k)
        self.torch_rows10 = search(self.xq[:1000], 10)  # for exact_check
        return entry if self.cuda else {"status": "skipped", "reason": "torch sees no CUDA GPU", "cpu_check": entry}

    def exact_check(self) -> dict[str, Any]:
        """recall@10 of the fp16 searches against fp32 exact scores, first 1000 queries."""
        import torch

        if not self.cuda and not self.cpu_check:
            return {"status": "skipped", "reason": "torch sees no CUDA GPU"}
        device = "cuda" if self.cuda else "cpu"
        q = torch.from_numpy(self.xq[:1000]).to(device)
        best_s, best_i = [], []
        for start in range(0, len(self.xb), CHUNK):
            chunk = torch.from_numpy(self.xb[start:start + CHUNK]).to(device)
            s, i = torch.topk(q @ chunk.T, min(10, len(chunk)), dim=1)  # fp32 (TF32 is off by default)
            best_s.append(s)
            best_i.append(i + start)
        s, i = torch.cat(best_s, 1), torch.cat(best_i, 1)
        exact = torch.gather(i, 1, torch.topk(s, 10, dim=1).indices).cpu().numpy()
        entry: dict[str, Any] = {"device": device, "queries": len(exact),
                                 "torch_flat_recall10": recall(self.torch_rows10, exact, 10)}
        if 10 in self.truth:
            entry["faiss_flat_recall10"] = recall(self.truth[10][:len(exact)], exact, 10)
        return entry if self.cuda else {"status": "skipped", "reason": "torch sees no CUDA GPU", "cpu_check": entry}

    def sharded(self) -> dict[str, Any]:
        args = self.args
        backend = self.backend()
        if not self.faiss_imports:
            return self.skipped()
        import faiss

        from ray_cora.errors import ConfigError
        from ray_cora.index.sharded import IndexSpec, ShardedIndex, write_index

        # Without a faiss backend to time, a small index is enough to record what ray_cora says.
        n = min(args.sharded_n if backend else 1000, len(self.xb))
        vectors = self.xb[:n]
        gpu_error = None
        with tempfile.TemporaryDirectory(prefix="gpu_search_", dir=args.workdir) as tmp:
            uri = os.path.join(tmp, "index")
            started = time.perf_counter()
            write_index(uri, vectors, [str(i) for i in range(n)], shard_size=math.ceil(n / args.sharded_shards),
                        encoder={"spec": "synthetic", "dim": args.dim, "normalized": True},
                        spec=IndexSpec(index_factory="Flat"))
            write_s = time.perf_counter() - started
            started = time.perf_counter()
            try:
                index = ShardedIndex.open(uri, use_gpu=True, gpu_fp16=True, verify=False)
            except ConfigError as error:
                if backend == "gpu":
                    raise
                gpu_error = str(error)  # what ray_cora says without faiss-gpu: the row records it
                if backend is None:
                    return {**self.skipped(), "ray_cora_says": gpu_error}
                index = ShardedIndex.open(uri, verify=False)
            open_s = time.perf_counter() - started
        if backend == "gpu":
            config = faiss.GpuIndexFlatConfig()
            config.useFloat16 = True
            raw = faiss.GpuIndexFlatIP(self.res, args.dim, config)
        else:
            raw = faiss.IndexFlatIP(args.dim)
        add_in_chunks(raw, vectors)
        variants = {"raw": lambda q, k: raw.search(q, k)[1], "ray_cora": lambda q, k: index.search_rows(q, k)[1]}
        entry: dict[str, Any] = {"device": backend, "n": n, "shards": len(index.manifest["shards"]),
                                 "placement": index.placement, "write_s": round(write_s, 1),
                                 "open_s_no_verify": round(open_s, 1), "k": {}}
        for k in (10, 100):
            rates: dict[str, list[float]] = {name: [] for name in variants}
            rows: dict[str, np.ndarray] = {}
            for _ in range(args.repeats):  # interleaved: raw, ray_cora, raw, ...
                for name, search in variants.items():
                    r, rows[name] = time_search(search, self.xq, k, args.batch, 1)
                    rates[name] += r
            entry["k"][str(k)] = {"qps": {name: stats(v) for name, v in rates.items()},
                                  "ratio": stats([a / b for a, b in zip(rates["ray_cora"], rates["raw"])], 3),
                                  f"agreement@{k}": recall(rows["ray_cora"], rows["raw"], k)}
        if backend == "gpu":
            return entry
        return {**self.skipped(), "ray_cora_says": gpu_error, "cpu_check": entry}

    def ivf(self, factory: str, kind: str) -> dict[str, Any]:
        args = self.args
        backend = self.backend()
        if backend is None:
            return self.skipped()
        import faiss

        n, dim = len(self.xb), args.dim
        nlist = args.nlist
        cpu_index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        node = faiss.downcast_index(cpu_index)
        if getattr(node, "do_polysemous_training", False):
            # index_factory's IVF-PQ turns on polysemous training (a code permutation for Hamming
            # pre-filtering, never used here): over a minute on 2 CPU cores even for 2,496 vectors.
            node.do_polysemous_training = False
        free_before = free_gpu_bytes() if backend == "gpu" else None
        if backend == "gpu":
            options = faiss.GpuClonerOptions()
            options.useFloat16 = True  # IVF-PQ: fp16 lookup tables (required above 48 code bytes)
            try:
                index = faiss.index_cpu_to_gpu(self.res, 0, cpu_index, options)
                how = "index_cpu_to_gpu (untrained), useFloat16"
            except Exception as error:  # noqa: BLE001 - fall back to the GPU classes themselves
                how = f"direct GPU class (index_cpu_to_gpu failed: {error})"
                if kind == "ivf-pq":
                    config = faiss.GpuIndexIVFPQConfig()
                    config.useFloat16LookupTables = True
                    index = faiss.GpuIndexIVFPQ(self.res, dim, nlist, args.pq, 8, faiss.METRIC_INNER_PRODUCT, config)
                else:
                    index = faiss.GpuIndexIVFFlat(self.res, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            space = faiss.GpuParameterSpace()
        else:
            index, how, space = cpu_index, "CPU faiss", faiss.ParameterSpace()
        sample_size = min(n, args.train_per_list * nlist)
        sample_rows = np.sort(np.random.default_rng(args.seed).choice(n, sample_size, replace=False))
        sample = self.xb[sample_rows]
        started = time.perf_counter()
        index.train(sample)
        train_s = time.perf_counter() - started
        del sample
        add_s = add_in_chunks(index, self.xb)
        code_bytes = args.pq if kind == "ivf-pq" else 4 * dim  # bytes scanned per stored vector
        entry: dict[str, Any] = {"device": backend, "factory": factory, "built_with": how,
                                 "train_sample": sample_size, "train_s": round(train_s, 1), "add_s": round(add_s, 1),
                                 "nprobe": {}}
        if backend == "gpu":
            entry["gpu_bytes"] = {"measured": free_before - free_gpu_bytes(),
                                  "planned": planned_bytes(kind, n, dim, code_bytes + 8)}
        measured_bw = self.results["meta"].get("copy_bytes_per_s_measured")
        xq = self.xq[:args.ivf_queries]  # fewer than the flat rows: nprobe 256 of 4096 lists scans 6% of N each
        entry["queries"] = len(xq)
        for nprobe in args.nprobes:
            space.set_index_parameter(index, "nprobe", nprobe)
            scan_bytes = min(1.0, nprobe / nlist) * n * code_bytes
            row: dict[str, Any] = {"scan_bytes_per_query_balanced": round(scan_bytes),
                                   "memory_qps_balanced": round(HBM_BYTES_PER_S / scan_bytes, 1)}
            if measured_bw:
                row["memory_qps_balanced_measured_bw"] = round(measured_bw / scan_bytes, 1)
            for k in (10, 100):
                rates, rows = time_search(lambda q, kk: index.search(q, kk)[1], xq, k, args.batch,
                                          max(1, args.repeats - 1))
                qps = statistics.median(rates)
                row[str(k)] = {"qps": stats(rates), "vs_memory_roofline_balanced": round(
                    qps / row["memory_qps_balanced"], 3)}
                if k in self.truth:
                    row[str(k)][f"recall@{k}_vs_flat"] = recall(rows, self.truth[k][:len(xq)], k)
            entry["nprobe"][str(nprobe)] = row
        return entry if backend == "gpu" else {**self.skipped(), "cpu_check": entry}

    def run(self) -> dict[str, Any]:
        self.section("setup", self.setup)
        if "xb" not in self.__dict__:
            return self.results
        self.section("faiss_flat_fp16", self.faiss_flat)
        self.section("torch_flat_fp16", self.torch_flat)
        if "torch_rows10" in self.__dict__:
            self.section("exact_check", self.exact_check)
        self.section("ray_cora_sharded", self.sharded)
        self.section("ivf_flat", lambda: self.ivf(f"IVF{self.args.nlist},Flat", "ivf-flat"))
        self.section("ivf_pq", lambda: self.ivf(f"IVF{self.args.nlist},PQ{self.args.pq}", "ivf-pq"))
        self.results["meta"]["done"] = True
        self.write()
        return self.results


# ---------------------------------------------------------------- report


def _qps(stat: dict[str, Any] | None) -> str:
    return f"{stat['median']:,.0f}" if stat else "–"


def to_markdown(results: dict[str, Any]) -> str:
    """Every figure of a gpu_search.json as Markdown tables."""
    meta, rows = results.get("meta", {}), results.get("rows", {})
    lines = ["## GPU search (jobs/benchmarks/gpu_search.py)", "",
             f"{meta.get('gpu', 'no CUDA GPU')}; {meta.get('faiss')}; torch {meta.get('torch', '–')}; "
             f"{meta.get('machine')}. N = {meta.get('n', 0):,} x {meta.get('dim')} clustered unit vectors "
             f"({meta.get('clusters')} clusters), {meta.get('queries', 0):,} queries in batches of "
             f"{meta.get('batch')}, "
             f"median of {meta.get('repeats')} passes. Ceilings: {meta.get('ceilings_source')}; measured "
             f"device-to-device copy: {fmt_rate(meta.get('copy_bytes_per_s_measured'))}.", ""]
    if not meta.get("faiss_gpu"):
        lines += [f"**{meta.get('faiss')}: the faiss rows were skipped.**" +
                  (" The `cpu_check` figures below ran the same code on CPU faiss/torch: a code-path check, "
                   "not GPU figures." if meta.get("cpu_check") else ""), ""]
    lines += ["| row | device | k | nprobe | q/s | roofline q/s (binding) | vs roofline | vs memory roofline | "
              "recall / agreement | notes |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        if name == "setup":
            continue
        status = row.get("status")
        body = row.get("cpu_check") if status == "skipped" and "cpu_check" in row else row
        if status == "error":
            lines.append(f"| {name} | – | – | – | – | – | – | – | – | error: {row.get('error', '')[:200]} |")
            continue
        if status == "skipped" and "cpu_check" not in row:
            lines.append(f"| {name} | – | – | – | – | – | – | – | – | skipped: {row.get('reason')} |")
            continue
        label = name if status != "skipped" else f"{name} (cpu_check; not run on a GPU)"
        device = body.get("device", "–")
        if name in ("faiss_flat_fp16", "torch_flat_fp16"):
            roof = body["roofline"]
            extra = (f"add {body.get('add_s', body.get('load_s'))} s; GPU bytes {body['gpu_bytes']}"
                     if "gpu_bytes" in body else f"storage {body.get('storage')}")
            gpu = device != "cpu"  # the ceilings are the H200's: no ratio for a CPU code-path check
            for k, m in body["k"].items():
                agree = m.get("agreement_with_faiss_flat", "truth" if name.startswith("faiss") else "–")
                lines.append(f"| {label} | {device} | {k} | – | {_qps(m['qps'])} | {roof['roofline_qps']:,.0f} "
                             f"({roof['binding']}; memory {roof['memory_qps']:,.0f}) | "
                             f"{m['vs_roofline'] if gpu else '–'} | {m['vs_memory_roofline'] if gpu else '–'} | "
                             f"{agree} | {extra} |")
        elif name == "exact_check":
            lines.append(f"| {label} | {device} | 10 | – | – | – | – | – | faiss fp16 "
                         f"{body.get('faiss_flat_recall10', '–')}, torch fp16 {body.get('torch_flat_recall10')} "
                         f"vs fp32 exact | first {body.get('queries')} queries |")
        elif name == "ray_cora_sharded":
            for k, m in body["k"].items():
                r = m["ratio"]
                lines.append(f"| {label} | {device} | {k} | – | ray_cora {_qps(m['qps']['ray_cora'])}, raw "
                             f"{_qps(m['qps']['raw'])} | – | ratio {r['median']} ({r['min']}–{r['max']}) | – | "
                             f"agreement@{k} {m.get(f'agreement@{k}')} | {body['n']:,} vectors, {body['shards']} "
                             f"shards, placement {body.get('placement')}, write {body['write_s']} s, open "
                             f"{body['open_s_no_verify']} s |")
            if row.get("ray_cora_says"):
                lines.append(f"| {name} (use_gpu=True) | – | – | – | – | – | – | – | – | ray_cora says: "
                             f"{row['ray_cora_says']} |")
        elif name in ("ivf_flat", "ivf_pq"):
            build = (f"{body['factory']}: train {body['train_s']} s on {body['train_sample']:,}, add "
                     f"{body['add_s']} s, {body.get('queries')} queries"
                     + (f", GPU bytes {body['gpu_bytes']}" if "gpu_bytes" in body else ""))
            for nprobe, m in body["nprobe"].items():
                for k in ("10", "100"):
                    ratio = m[k]['vs_memory_roofline_balanced'] if device != "cpu" else "–"
                    lines.append(f"| {label} | {device} | {k} | {nprobe} | {_qps(m[k]['qps'])} | "
                                 f"{m['memory_qps_balanced']:,.0f} (memory, balanced-list estimate) | – | "
                                 f"{ratio} | recall@{k} "
                                 f"{m[k].get(f'recall@{k}_vs_flat', '–')} vs flat | {build} |")
    setup = rows.get("setup", {})
    lines += ["", f"Data: made on {setup.get('made_on')} in {setup.get('seconds')} s ({setup.get('host_gib')} GiB "
              f"on the host); whole run {meta.get('elapsed_s')} s{'' if meta.get('done') else ' (did not finish)'}."]
    return "\n".join(lines) + "\n"


def fmt_rate(value: float | None) -> str:
    return f"{value / 1e12:.2f} TB/s" if value else "not measured (no CUDA)"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N=200,000, 32 queries, nlist 64, PQ16, 39 training "
                        "vectors per list, 2 repeats, and the CPU code-path checks where there is no GPU")
    parser.add_argument("--cpu-check", action="store_true", help="without faiss-gpu, run the faiss rows on CPU "
                        "faiss (a code-path check; implied by --quick)")
    parser.add_argument("--n", type=int, default=None, help="vectors (default 10,000,000; 200,000 with --quick)")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=0.6, help="norm of each vector's noise around its centre")
    parser.add_argument("--queries", type=int, default=None, help="default 10,000 (32 with --quick)")
    parser.add_argument("--ivf-queries", type=int, default=5000, help="the first this many queries for the IVF "
                        "rows (timed over max(1, repeats - 1) passes)")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (2 with --quick)")
    parser.add_argument("--nlist", type=int, default=None, help="IVF lists (default 4096; 64 with --quick)")
    parser.add_argument("--train-per-list", type=int, default=None, help="IVF training sample: this many vectors "
                        "per list, capped at N (default 256, FAISS's max_points_per_centroid; 39 with --quick)")
    parser.add_argument("--pq", type=int, default=None, help="PQ code bytes (default 64; 16 with --quick)")
    parser.add_argument("--nprobes", default="16,64,256")
    parser.add_argument("--sharded-n", type=int, default=None, help="vectors of the ray_cora row (default 2M; "
                        "50,000 with --quick)")
    parser.add_argument("--sharded-shards", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-s", type=float, default=0, help="skip sections that would start after 80%% of "
                        "this many seconds (0: no limit)")
    parser.add_argument("--workdir", default=None, help="scratch folder for the ray_cora index (default: /tmp)")
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", "/tmp/gpu_out"), "gpu_search.json"),
                        help="the JSON (default: $OUT/gpu_search.json, OUT defaulting to /tmp/gpu_out)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.n = args.n or (200_000 if quick else 10_000_000)
    args.queries = args.queries or (32 if quick else 10_000)
    args.repeats = args.repeats or (2 if quick else 3)
    args.nlist = args.nlist or (64 if quick else 4096)
    args.train_per_list = args.train_per_list or (39 if quick else 256)
    args.pq = args.pq or (16 if quick else 64)
    args.sharded_n = args.sharded_n or (50_000 if quick else 2_000_000)
    args.nprobes = [int(p) for p in str(args.nprobes).split(",") if p.strip()]
    if quick and not torch_cuda():  # a CPU code-path check: stay light on a shared machine
        try:
            import torch

            torch.set_num_threads(min(2, os.cpu_count() or 1))
        except ImportError:
            pass
        try:
            import faiss

            # One OpenMP thread: on a loaded CPU, FAISS's spin-waiting threads make k-means and PQ
            # training over ten times slower (tests/index/conftest.py measured the same).
            faiss.omp_set_num_threads(1)
        except ImportError:
            pass
    results = Suite(args).run()
    print()
    print(to_markdown(results))
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
