"""One FAISS (OpenMP) thread for the index tests: their indexes are tiny, so thread start-up and
spin-waits cost more than they save, far more on a loaded CI machine (OPQ training on 1,111
vectors: 5.8 s with one thread, 85 s with two, under a load of 8 on 2 CPUs)."""

from __future__ import annotations

import faiss
import pytest


@pytest.fixture(autouse=True)
def one_faiss_thread():
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)
