"""Which FAISS index to build for a collection, building it, and tuning its search parameters.

`auto` follows the faiss guidelines that autofaiss also uses: exact search while the collection
is small, an inverted file (IVF) with about 4 * sqrt(N) lists beyond that, with scalar
quantisation (SQ8, 4x smaller) only when the full vectors would not fit the memory budget.
Unlike autofaiss, which tunes for a query-time budget, the search parameter (`nprobe`, or
`efSearch` for an HNSW the user asks for) is tuned for a recall target: the smallest value whose
recall@10 against exact search reaches it on a sample of queries.

Why IVF and not HNSW for `auto`: an HNSW graph is built by one graph search per inserted vector,
which on a CPU with few cores is the slow part of a large build, and faiss cannot run HNSW on a
GPU; an IVF trains its lists on a sample, adds by matrix products, and runs on either.
"""
from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import faiss
import numpy as np
from tqdm import tqdm

from .device import set_search_params, to_cpu, to_gpu
from .errors import FactoryError

METRIC = faiss.METRIC_INNER_PRODUCT  # embeddings are unit rows, so inner product is the cosine
RECALL_K = 10
MIN_POINTS_PER_LIST = 39  # below this faiss warns that k-means has too few training points
# Exact search below the size where an IVF of 4 * sqrt(N) lists could not even be trained on
# MIN_POINTS_PER_LIST points per list (N < (4 * 39)^2); a scan of that many vectors is ~1 ms anyway.
EXACT_BELOW = (4 * MIN_POINTS_PER_LIST) ** 2
TRAIN_POINTS_PER_LIST = 40  # k-means sample per list: just above what faiss asks, as training is the costly step on a CPU
DEFAULT_MAX_MEMORY = 8 * 2**30  # bytes of vectors an uncompressed IVF may hold before auto picks SQ8
ADD_CHUNK = 1 << 16  # vectors per add() call, so long builds show progress


@dataclass
class Queries:
    """Vectors to tune with. `own` gives, for queries that are stored vectors themselves, their
    row in the collection: that row is left out of both answers, or every query would find itself."""

    name: str
    vectors: np.ndarray
    own: np.ndarray | None = None


@dataclass
class Tuning:
    params: dict[str, int] = field(default_factory=dict)
    recall: dict[str, float] = field(default_factory=dict)  # recall@10 per query set, at `params`


def nlist_for(n: int) -> int:
    """The power of two closest to 4 * sqrt(n): the low end of the faiss guideline (4-16 sqrt(n))."""
    return 2 ** round(math.log2(4 * math.sqrt(n)))


def choose_factory(n: int, dim: int, max_memory: int = DEFAULT_MAX_MEMORY) -> str:
    """The `auto` choice for n vectors of dimension dim."""
    if n < EXACT_BELOW:
        return "Flat"
    nlist = nlist_for(n)
    return f"IVF{nlist},Flat" if n * dim * 4 <= max_memory else f"IVF{nlist},SQ8"


def _lists(factory: str) -> int:
    match = re.search(r"IVF(\d+)", factory)
    return int(match.group(1)) if match else 0


def tuning_parameter(factory: str) -> str | None:
    """The search parameter that trades speed for recall: nprobe for IVF, efSearch for HNSW."""
    if _lists(factory):
        return "nprobe"
    if factory.startswith("HNSW") or ",HNSW" in factory:
        return "efSearch"
    return None


def check_factory(factory: str, dim: int) -> None:
    """Refuse a factory string faiss cannot build for this dimension (before anything is embedded)."""
    if factory == "auto":
        return
    try:
        faiss.index_factory(dim, factory, METRIC)
    except RuntimeError as err:
        reason = str(err).split(": ", 2)[-1][:120]  # faiss prefixes the C++ function and source line
        raise FactoryError(f"faiss cannot build the index {factory!r} for {dim}-d vectors ({reason}); "
                           "examples: auto, Flat, IVF1024,Flat, IVF1024,SQ8, HNSW32") from None


def resolve_factory(requested: str, n: int, dim: int, what: str = "this collection") -> str:
    """`auto` -> choose_factory; anything else is checked against faiss and the collection size."""
    check_factory(requested, dim)
    factory = choose_factory(n, dim) if requested == "auto" else requested
    nlist = _lists(factory)
    if nlist > n:
        raise FactoryError(f"{factory} needs at least {nlist} vectors to train its lists; {what} has {n} "
                           "(use --factory auto or Flat, or --kinds to index only the larger kind)")
    return factory


def _train_sample(vectors: np.ndarray, nlist: int, seed: int) -> np.ndarray:
    size = min(len(vectors), max(TRAIN_POINTS_PER_LIST * nlist, 1 << 16))
    if size == len(vectors):
        return vectors
    rows = np.sort(np.random.default_rng(seed).choice(len(vectors), size, replace=False))
    return vectors[rows]


def build_faiss_index(vectors: np.ndarray, factory: str, gpu: bool = False, seed: int = 0, progress: bool = False) -> faiss.Index:
    """Create, train (on a sample) and fill an index; trained and filled on the GPU when `gpu`.
    Returns the CPU index (what is saved)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    cpu = faiss.index_factory(vectors.shape[1], factory, METRIC)
    index = to_gpu(cpu) if gpu else cpu
    if not index.is_trained:
        index.train(_train_sample(vectors, _lists(factory), seed))
    add_in_chunks(index, vectors, progress)
    return to_cpu(index)


def add_in_chunks(index: faiss.Index, vectors: np.ndarray, progress: bool = False) -> None:
    starts = range(0, len(vectors), ADD_CHUNK)
    for start in tqdm(starts, desc="adding to the index", unit="chunk", disable=not progress or len(starts) < 2):
        index.add(np.ascontiguousarray(vectors[start : start + ADD_CHUNK], dtype=np.float32))


def exact_neighbours(queries: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k best inner products, by brute force: the reference recall is measured against."""
    _, ids = faiss.knn(np.ascontiguousarray(queries, np.float32), np.ascontiguousarray(vectors, np.float32), k, metric=METRIC)
    return ids


def recall_per_query(found: np.ndarray, truth: np.ndarray, k: int = RECALL_K) -> np.ndarray:
    """For each query, the share of its true top k that the index returned in its top k."""
    return np.asarray([len(set(f[:k].tolist()) & set(t[:k].tolist()) - {-1}) / k for f, t in zip(found, truth)])


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = RECALL_K) -> float:
    """recall@k: the mean over queries of recall_per_query."""
    per_query = recall_per_query(found, truth, k)
    return float(per_query.mean()) if len(per_query) else 1.0


def _lower_bound(per_query: np.ndarray) -> float:
    # mean less two standard errors: a value tuned on a sample should hold on unseen queries too
    if len(per_query) < 2:
        return float(per_query.mean()) if len(per_query) else 1.0
    return float(per_query.mean() - 2 * per_query.std(ddof=1) / np.sqrt(len(per_query)))


def _without_own(ids: np.ndarray, own: np.ndarray | None, k: int) -> np.ndarray:
    if own is None:
        return ids[:, :k]
    return np.stack([row[row != me][:k] for row, me in zip(ids, own)])


def tune(
    index: faiss.Index,
    vectors: np.ndarray,
    factory: str,
    query_sets: Sequence[Queries],
    target: float = 0.95,
    k: int = RECALL_K,
) -> Tuning:
    """The smallest nprobe / efSearch whose recall@k reaches `target` on every query set, with
    a margin: the mean recall less two standard errors must reach it, so that the target also
    holds for queries the tuning did not see (measured by bench/search.py).

    Recall grows with the parameter, so it doubles until the target is met and then bisects.
    If even the largest value misses the target (a compressed code can cap recall), that value
    is kept with a warning.
    """
    name = tuning_parameter(factory)
    if name is None or not query_sets or k > len(vectors):
        return Tuning()
    fetch = [k + (qs.own is not None) for qs in query_sets]
    truth = [_without_own(exact_neighbours(qs.vectors, vectors, f), qs.own, k) for qs, f in zip(query_sets, fetch)]

    measured: dict[int, dict[str, np.ndarray]] = {}

    def per_query(value: int) -> dict[str, np.ndarray]:
        if value not in measured:
            set_search_params(index, {name: value})
            measured[value] = {}
            for qs, f, t in zip(query_sets, fetch, truth):
                _, ids = index.search(np.ascontiguousarray(qs.vectors, np.float32), f)
                measured[value][qs.name] = recall_per_query(_without_own(ids, qs.own, k), t, k)
        return measured[value]

    low, high = (1, _lists(factory)) if name == "nprobe" else (max(16, k), 4096)
    value = _smallest(lambda v: min(_lower_bound(r) for r in per_query(v).values()) >= target, low, high)
    result = Tuning({name: value}, {set_name: float(r.mean()) for set_name, r in per_query(value).items()})
    if min(_lower_bound(r) for r in per_query(value).values()) < target:
        warnings.warn(f"{factory}: recall@{k} {min(result.recall.values()):.3f} does not reach the target {target} "
                      f"even at {name}={value}", stacklevel=2)
    set_search_params(index, result.params)
    return result


def _smallest(meets: Callable[[int], bool], low: int, high: int) -> int:
    """Smallest v in [low, high] with meets(v) for a monotone predicate (high if none): doubling, then bisection."""
    previous, value = low - 1, low
    while value < high and not meets(value):
        previous, value = value, min(2 * value, high)
    if not meets(value):
        return high
    lo, hi = previous + 1, value
    while lo < hi:
        mid = (lo + hi) // 2
        if meets(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi
