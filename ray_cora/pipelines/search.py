"""A sharded index spread over Ray actors, for indexes larger than one process's memory.

Each :class:`ShardSearcher` actor opens a subset of the shards (round-robin); a query batch fans
out to every actor and the partial top-k lists are merged exactly, as within one process.
"""

from __future__ import annotations

import numpy as np
import ray

from ray_cora import storage
from ray_cora.index.sharded import INDEX_KIND, ShardedIndex, merge_pid_arrays
from ray_cora.runtime import worker_runtime_env


class ShardSearcher:
    """Holds some shards of one index (a Ray actor body), on CPU or, with ``use_gpu``, on its GPU."""

    def __init__(self, uri: str, shards: list[int], mmap: bool = False, use_gpu: bool = False,
                 gpu_fp16: bool = True, nprobe: int | None = None, ef_search: int | None = None) -> None:
        self.index = ShardedIndex.open(uri, shards=shards, mmap=mmap, use_gpu=use_gpu, gpu_fp16=gpu_fp16)
        self.defaults = {"nprobe": nprobe, "ef_search": ef_search}

    def search(self, queries: np.ndarray, k: int, nprobe: int | None = None,
               ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search_pid_arrays(
            queries, k, nprobe=self.defaults["nprobe"] if nprobe is None else nprobe,
            ef_search=self.defaults["ef_search"] if ef_search is None else ef_search)

    def placement(self) -> dict:
        """Where this searcher's shards live and in what form (``ShardedIndex.placement``)."""
        return {**self.index.placement, "shards": len(self.index.shards), "vectors": len(self.index)}


class DistributedIndex:
    """Search an index whose shards are split over ``num_actors`` Ray actors, each with
    ``actor_gpus`` GPUs (above 0: the actor's shards are searched on its GPU with faiss-gpu).
    ``nprobe``/``ef_search``: every search's parameters (None: the index's ``search_params``).

    >>> # index = DistributedIndex("s3://bucket/index", num_actors=4); index.search(q, k=100)
    """

    def __init__(self, uri: str, *, num_actors: int, actor_cpus: float = 0.5, actor_gpus: float = 0,
                 mmap: bool = False, timeout_s: float = 600, gpu_fp16: bool = True,
                 nprobe: int | None = None, ef_search: int | None = None) -> None:

        num_shards = len(storage.Artifact(uri, kind=INDEX_KIND).manifest["shards"])
        num_actors = max(1, min(num_actors, num_shards))
        actor_cls = ray.remote(num_cpus=actor_cpus, num_gpus=actor_gpus, max_restarts=3,
                               runtime_env=worker_runtime_env() or None)(ShardSearcher)
        self.timeout_s = timeout_s
        self.actors = [actor_cls.remote(uri, list(range(i, num_shards, num_actors)), mmap, actor_gpus > 0,
                                        gpu_fp16, nprobe, ef_search)
                       for i in range(num_actors)]

    def placements(self) -> list[dict]:
        """Each actor's :meth:`ShardSearcher.placement` (waits for the actors to have opened their shards)."""
        return ray.get([a.placement.remote() for a in self.actors], timeout=self.timeout_s)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        return search_on_actors(self.actors, queries, k, timeout_s=self.timeout_s)

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


def search_on_actors(actors: list, queries: np.ndarray, k: int, *,
                     timeout_s: float = 600) -> tuple[np.ndarray, list[list[str]]]:
    """Fan one query batch out to :class:`ShardSearcher` actor handles and merge their top-k
    exactly; usable from any Ray worker that holds the handles (e.g. a Ray Data UDF)."""
    queries_ref = ray.put(np.ascontiguousarray(queries, dtype=np.float32))
    partials = ray.get([a.search.remote(queries_ref, k) for a in actors], timeout=timeout_s)
    return merge_pid_arrays(partials, k)


