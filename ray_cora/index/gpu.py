"""Moving a searcher's FAISS index onto a GPU with faiss-gpu, and saying what was done (pure; FAISS
imported lazily).

What goes where (:func:`plan_gpu_placement`, decided before anything is copied):

- **Flat** → ``GpuIndexFlat``; with ``fp16`` the vectors are stored as float16 (half the memory and
  half the bytes read per query: flat search is bound by memory bandwidth), scores to ~1e-3.
- **IVF** (``IVF…,Flat``, ``IVF…,PQ…``, ``IVF…,SQ…``) → its GPU IVF form; ``fp16`` makes IVF-PQ's
  lookup tables float16 (IVF-PQ with more than 48 sub-quantizer bytes needs them); IVF-Flat lists
  are sized as fp32.
- **HNSW** and other indexes faiss-gpu has no form of → refused, with one line saying so.

An index whose GPU form does not fit in the GPU's free memory (less a margin for FAISS's scratch
space) is refused before copying, naming the sizes; more searchers (each holding fewer shards)
or an IVF index is the way out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ray_cora.errors import ConfigError

# FAISS's StandardGpuResources reserves 18% of the GPU's memory as scratch space by default;
# keep that free, and some for the query and result buffers.
GPU_MEMORY_HEADROOM = 0.25


@dataclass(frozen=True)
class GpuPlacement:
    """What a searcher holds on which device: ``form`` (the faiss-gpu class), ``storage`` (fp16 or
    fp32), ``bytes`` (the GPU form's size) and ``device``."""

    device: str
    form: str
    storage: str
    bytes: int
    vectors: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


CPU = {"device": "cpu"}


def describe(index) -> tuple[str, int, int]:
    """(kind, vectors, bytes per vector on GPU in fp32) of a CPU FAISS index: kind is ``flat``,
    ``ivf-flat``, ``ivf-pq``, ``ivf-sq`` or the FAISS class name for anything else."""
    import faiss

    node = faiss.downcast_index(index)
    if isinstance(node, faiss.IndexFlat):
        return "flat", node.ntotal, 4 * node.d
    ivf = faiss.try_extract_index_ivf(node)
    if ivf is not None and not isinstance(node, faiss.IndexPreTransform):
        ivf = faiss.downcast_index(ivf)
        if isinstance(ivf, faiss.IndexIVFPQ):
            return "ivf-pq", ivf.ntotal, ivf.code_size + 8  # codes + 64-bit ids
        if isinstance(ivf, faiss.IndexIVFScalarQuantizer):
            return "ivf-sq", ivf.ntotal, ivf.code_size + 8
        if isinstance(ivf, faiss.IndexIVFFlat):
            return "ivf-flat", ivf.ntotal, 4 * ivf.d + 8
    return type(node).__name__, node.ntotal, 0


def plan_gpu_placement(kind: str, vectors: int, bytes_per_vector: int, dim: int, *, free_bytes: int,
                       fp16: bool = True, device: int = 0) -> GpuPlacement:
    """Where an index of ``kind`` (:func:`describe`) goes on GPU ``device`` with ``free_bytes`` free,
    or a :class:`ConfigError` saying why it cannot.

    >>> plan_gpu_placement("flat", 10_000_000, 4 * 768, 768, free_bytes=140 * 2**30).storage
    'fp16'
    >>> plan_gpu_placement("flat", 10_000_000, 4 * 768, 768, free_bytes=140 * 2**30).bytes // 2**30
    14
    """
    if kind == "flat":
        size = vectors * dim * (2 if fp16 else 4)
        form, storage = "GpuIndexFlatIP", "fp16" if fp16 else "fp32"
    elif kind == "ivf-flat":
        # Sized at fp32 lists whatever fp16 says: recent faiss-gpu applies useFloat16 to IVF-Flat's
        # coarse quantizer only (an over-estimate is the safe side of this check).
        size = vectors * (4 * dim + 8)
        form, storage = "GpuIndexIVFFlat", "fp32 lists"
    elif kind in ("ivf-pq", "ivf-sq"):
        size = vectors * bytes_per_vector
        form = "GpuIndexIVFPQ" if kind == "ivf-pq" else "GpuIndexIVFScalarQuantizer"
        storage = "codes, fp16 lookup tables" if fp16 and kind == "ivf-pq" else "codes"
    else:
        raise ConfigError(f"faiss-gpu has no GPU form of a {kind} index (HNSW graphs and pre-transformed "
                          "indexes stay on CPU): search it with search_gpus 0, or build Flat or IVF for GPU")
    usable = int(free_bytes * (1 - GPU_MEMORY_HEADROOM))
    if size > usable:
        raise ConfigError(f"the {kind} index needs {size / 2**30:.1f} GiB on GPU {device} as {form} ({storage}) "
                          f"but {free_bytes / 2**30:.1f} GiB is free ({usable / 2**30:.1f} GiB usable): spread "
                          "the shards over more searchers (retrieve --search-actors, serve shard_groups) or "
                          "use an IVF-PQ index")
    return GpuPlacement(f"gpu:{device}", form, storage, size, vectors)


def free_gpu_memory(device: int = 0) -> int:
    """Free bytes on GPU ``device`` (torch's CUDA query; FAISS exposes none before allocating)."""
    import torch

    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def move_to_gpu(index, *, fp16: bool = True, device: int = 0) -> tuple[Any, GpuPlacement]:
    """``index`` (CPU) copied onto GPU ``device`` as planned by :func:`plan_gpu_placement`; returns
    the GPU index and its placement. Needs faiss-gpu (``pip install 'ray-cora[gpu]'``) and a GPU."""
    import faiss

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        raise ConfigError("search_gpus > 0 but this FAISS build has no GPU support or sees no GPU: install "
                          "'ray-cora[gpu]' (faiss-gpu) in a CUDA environment and give the searchers GPUs")
    kind, vectors, per_vector = describe(index)
    placement = plan_gpu_placement(kind, vectors, per_vector, index.d, free_bytes=free_gpu_memory(device),
                                   fp16=fp16, device=device)
    resources = faiss.StandardGpuResources()
    options = faiss.GpuClonerOptions()
    # Flat: fp16 storage; IVF-PQ: fp16 lookup tables (FAISS's one switch for both).
    options.useFloat16 = fp16
    gpu_index = faiss.index_cpu_to_gpu(resources, device, index, options)
    gpu_index.ray_cora_resources = resources  # the index must not outlive its resources
    return gpu_index, placement


def placement_line(placement: dict[str, Any]) -> str:
    """One line for logs: where a searcher's vectors are and in what form.

    >>> placement_line({"device": "cpu"})
    'cpu (FAISS CPU index as built)'
    >>> placement_line({"device": "gpu:0", "form": "GpuIndexFlatIP", "storage": "fp16", "bytes": 3 * 2**30})
    'gpu:0 as GpuIndexFlatIP (fp16, 3.0 GiB)'
    """
    if placement.get("device", "cpu") == "cpu":
        return "cpu (FAISS CPU index as built)"
    return (f"{placement['device']} as {placement['form']} ({placement['storage']}, "
            f"{placement['bytes'] / 2**30:.1f} GiB)")
