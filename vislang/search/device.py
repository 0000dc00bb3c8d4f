"""Where a FAISS index runs: on the GPUs when faiss sees one, else on the CPU.

The CPU index is the one that is saved and loaded; a GPU copy is made from it for training,
adding and searching. faiss-gpu runs the same CPU code when it sees no GPU, so the package
needs no second code path for machines without one.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import faiss


def gpu_count() -> int:
    return faiss.get_num_gpus()  # 0 on a machine without a GPU, even with faiss-gpu installed


def want_gpu(requested: bool | None) -> bool:
    """None: use the GPU when there is one. True on a machine without one is a mistake, not a fallback."""
    available = gpu_count() > 0
    if requested and not available:
        raise ValueError("a GPU index was asked for, but faiss sees no GPU")
    return available if requested is None else requested


def is_gpu(index: faiss.Index) -> bool:
    # index_cpu_to_all_gpus returns a GpuIndex* on one GPU and an IndexReplicas over several.
    return type(index).__name__.startswith("Gpu") or isinstance(index, faiss.IndexReplicas)


def to_gpu(index: faiss.Index) -> faiss.Index:
    """A copy of a CPU index on every visible GPU (replicated); an index type faiss cannot run
    on a GPU (HNSW) is returned as it is and stays on the CPU."""
    if gpu_count() == 0:
        return index
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except RuntimeError:
        return index


def to_cpu(index: faiss.Index) -> faiss.Index:
    return faiss.index_gpu_to_cpu(index) if is_gpu(index) else index


def set_search_params(index: faiss.Index, params: dict[str, int]) -> None:
    """Apply search-time parameters (nprobe, efSearch) wherever the index lives."""
    space = faiss.GpuParameterSpace() if is_gpu(index) else faiss.ParameterSpace()
    for name, value in params.items():
        space.set_index_parameter(index, name, value)


@contextmanager
def single_query_threads(queries: int) -> Iterator[None]:
    """One OpenMP thread while searching a single query on the CPU.

    faiss parallelises a search over its queries, so for one query a second thread has nothing to
    do, yet waking it still costs: on a busy 2-core machine 16 ms against 0.9 ms for one query on
    10k vectors (measured). The setting is process-wide, so it is restored at once."""
    if queries != 1:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)
