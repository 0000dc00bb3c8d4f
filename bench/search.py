"""Search benchmark: end-to-end text queries on IKEA, and FAISS indexes at 10k, 100k and 1M vectors.

What it measures:
1. IKEA end to end. The catalog's 2507 images are indexed with `vislang.Index` (factory auto)
   using a trained checkpoint; then 200 distinct natural texts (test-split product captions and
   room titles) are searched one at a time, each timed from the string to the hits (tokenise,
   encode, search both kinds, merge; no matching-head re-rank): p50, p99 and mean latency, plain
   and with the opt-in re-ranker (`reranker=True`: vislang/ranking/ re-scores each kind's
   `RERANK_CANDIDATES` best hits), the two taking turns text by text; and the re-ranker's added
   time per query (median over the texts of with - without).
2. Photo+text arithmetic. For product photos paired with "in <colour>" and "<type> in
   <colour>", the share of the top 10 that has the photo's type and the asked colour, by text
   weight (the figures behind query.DEFAULT_TEXT_WEIGHT); plain cosine, no re-ranker.
3. Scale. For each size N: the real IKEA image embeddings plus N - 2507 synthetic vectors drawn
   like them (see `synthetic`). For Flat (exact) and the `auto` choice: build time (create,
   train, add, tune), queries/s at batch 1 and batch 256 (median of --repeats runs, exact and
   auto measured in the same run), recall@10 against exact search on held-out queries, and
   index size (bytes of the saved index, about its size in memory). Tuning uses a sample of
   stored vectors (each leaving itself out) and half of the IKEA text embeddings; recall is
   measured on the other half of the texts and on new points drawn like the collection
   (never stored), 1000 of each.
4. On a GPU, when faiss sees one: the same indexes on the GPU, and as the floor, exact search
   by one torch matrix product + top-k on the same GPU.

Usage (from the repository root):
    python bench/search.py [--checkpoint runs/cpu-final] [--data DIR] [--sizes 10000,100000,1000000]
        [--repeats 3] [--threads N] [--json]
Every figure comes from this run; --json prints them as one JSON object on the last line.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the vislang of this checkout

import faiss
import numpy as np
import torch

import vislang
from vislang.data import find_data_dir, read_catalog
from vislang.search import Index
from vislang.search.device import (
    gpu_count,
    set_search_params,
    single_query_threads,
    to_gpu,
)
from vislang.search.factory import (
    Queries,
    build_faiss_index,
    choose_factory,
    exact_neighbours,
    recall_at_k,
    tune,
    tuning_parameter,
)
from vislang.search.index import RERANK_CANDIDATES, TUNING_QUERIES
from vislang.search.query import mix, normalize

LATENCY_QUERIES = 200
EVAL_QUERIES = 1000  # per held-out set
COLOURS = ["black", "white", "oak", "grey", "red", "blue"]
WEIGHTS = [0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 1.0]


# ---------------------------------------------------------------- IKEA


def ikea_end_to_end(index: Index, texts: list[str]) -> dict[str, Any]:
    """Each text searched from the string to the hits without and with the re-ranker, in turns
    text by text, so that a busy spell of the shared machine hits both alike."""
    modes = {"plain": False, "reranker": True}
    for text in texts[:5]:  # warm-up: first calls allocate, load kernels and encode the re-ranker's captions
        for flag in modes.values():
            index.search(texts=text, k=10, reranker=flag)
    ms: dict[str, list[float]] = {name: [] for name in modes}
    for text in texts:
        for name, flag in modes.items():
            start = time.perf_counter()
            index.search(texts=text, k=10, reranker=flag)
            ms[name].append((time.perf_counter() - start) * 1000)
    out: dict[str, Any] = {name: latency(values) for name, values in ms.items()}
    out["reranker_added_p50_ms"] = float(np.median(np.subtract(ms["reranker"], ms["plain"])))
    return out


def latency(ms: list[float]) -> dict[str, Any]:
    """The spread of per-query times: p99 and max show the slow queries a median hides."""
    values = np.asarray(ms)
    return {"queries": len(values), "p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99)),
            "mean_ms": float(values.mean()), "max_ms": float(values.max())}


def text_weight_sweep(index: Index) -> dict[str, Any]:
    """Share of the top 10 (the query product left out) with the photo's type and the asked colour."""
    products = index.parts["product"].records
    by_type: dict[str, list[dict]] = {}
    for record in products:
        by_type.setdefault(record["type"], []).append(record)
    common = sorted(t for t, rows in by_type.items() if len(rows) >= 15)
    rng, pairs = random.Random(0), []
    for _ in range(60):
        record, colour = rng.choice(by_type[rng.choice(common)]), rng.choice(COLOURS)
        if colour not in (record["color"] or "").lower():
            pairs.append((record, colour))
    photos = index.model.encode_images([r["image"] for r, _ in pairs])
    out: dict[str, Any] = {"queries": len(pairs)}
    for name, template in (("in_colour", "in {c}"), ("type_in_colour", "{t} in {c}")):
        texts = index.model.encode_texts([template.format(t=r["type"].lower(), c=c) for r, c in pairs])
        out[name] = {}
        for weight in WEIGHTS:
            vectors, _ = mix(photos, texts, weight)
            results = index.search_vectors(vectors, 11, kind="product")
            both = [sum(h.type == r["type"] and c in (h.color or "").lower() for h in [h for h in hits if h.id != r["id"]][:10])
                    for (r, c), hits in zip(pairs, results)]
            out[name][str(weight)] = float(np.mean(both) / 10)
    return out


# ---------------------------------------------------------------- synthetic vectors


def synthetic(real: np.ndarray, n: int, seed: int, per_cluster: int = 20, within: float = 0.7) -> np.ndarray:
    """n unit vectors shaped like the real embeddings: a Gaussian mixture whose centres are real
    image embeddings moved by noise with the real data's own covariance (so new "products" sit
    in the same cone of the space as real ones and text queries land among them), and whose
    points scatter around their centre with `within` times that covariance."""
    rng = np.random.default_rng(seed)
    mean = real.mean(0)
    _, singular, axes = np.linalg.svd(real - mean, full_matrices=False)
    scale = (singular / np.sqrt(len(real))).astype(np.float32)  # spread along each principal axis

    def noise(m: int, factor: float) -> np.ndarray:
        return (rng.standard_normal((m, len(scale)), dtype=np.float32) * (scale * factor)) @ axes

    centres = normalize(real[rng.integers(len(real), size=max(1, n // per_cluster))] + noise(max(1, n // per_cluster), 1.0))
    out = np.empty((n, real.shape[1]), np.float32)
    for start in range(0, n, 1 << 17):
        stop = min(n, start + (1 << 17))
        out[start:stop] = normalize(centres[rng.integers(len(centres), size=stop - start)] + noise(stop - start, within))
    return out


def neighbour_cosines(vectors: np.ndarray, sample: int = 300) -> dict[str, float]:
    """Median cosine of a point's 1st and 10th nearest other point: how clustered a collection is."""
    rows = np.random.default_rng(1).choice(len(vectors), min(sample, len(vectors)), replace=False)
    scores, _ = faiss.knn(vectors[rows], vectors, 11, metric=faiss.METRIC_INNER_PRODUCT)
    return {"nn1": float(np.median(scores[:, 1])), "nn10": float(np.median(scores[:, 10]))}


# ---------------------------------------------------------------- timing


def queries_per_second(search, queries: np.ndarray, batch: int, repeats: int, min_seconds: float = 1.5) -> float:
    """Median over repeats of queries answered per second, each repeat running at least min_seconds."""
    rates = []
    for _ in range(repeats):
        done, start, position = 0, time.perf_counter(), 0
        while True:
            chunk = queries[position : position + batch]
            if len(chunk) < batch:
                position, chunk = 0, queries[:batch]
            search(chunk)
            done, position = done + len(chunk), position + batch
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        rates.append(done / elapsed)
    return float(np.median(rates))


def index_bytes(index: faiss.Index) -> int:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "index.faiss"
        faiss.write_index(index, str(path))
        return path.stat().st_size


def measure(index: faiss.Index, eval_sets: list[Queries], truth: list[np.ndarray], repeats: int, reference: bool = False) -> dict[str, Any]:
    """queries/s at batch 1 and 256, and recall@10 against `truth` (1.0 by definition for the
    exact CPU index that `truth` came from; not searched again, which at 1M costs minutes)."""
    pool = np.concatenate([qs.vectors for qs in eval_sets])
    out: dict[str, Any] = {}
    for batch in (1, 256):
        with single_query_threads(batch):  # as vislang's Index searches: see device.single_query_threads
            out[f"qps_batch{batch}"] = queries_per_second(lambda q: index.search(q, 10), pool, batch, repeats)
    for qs, t in zip(eval_sets, truth):
        out[f"recall10_{qs.name}"] = 1.0 if reference else recall_at_k(index.search(qs.vectors, 10)[1], t)
    return out


def scale_case(n: int, real: np.ndarray, tune_texts: np.ndarray, eval_texts: np.ndarray, repeats: int, gpu: bool) -> dict[str, Any]:
    base = np.concatenate([real, synthetic(real, n - len(real), seed=n)]) if n > len(real) else real[:n]
    rng = np.random.default_rng(2)
    fresh = synthetic(real, EVAL_QUERIES, seed=n + 1)  # drawn like the collection, never stored
    eval_sets = [Queries("text", eval_texts[:EVAL_QUERIES]), Queries("new_points", fresh)]
    truth = [exact_neighbours(qs.vectors, base, 10) for qs in eval_sets]  # what IndexFlatIP returns, by brute force
    own = np.sort(rng.choice(n, TUNING_QUERIES, replace=False))
    tune_sets = [Queries("photo", base[own], own=own), Queries("text", tune_texts[:TUNING_QUERIES])]
    case: dict[str, Any] = {"n": n, "dim": base.shape[1], "clustering": neighbour_cosines(base)}
    for label, factory in (("flat", "Flat"), ("auto", choose_factory(n, base.shape[1]))):
        start = time.perf_counter()
        index = build_faiss_index(base, factory)
        tuning = tune(index, base, factory, tune_sets) if tuning_parameter(factory) else None
        row = {"factory": factory, "build_s": time.perf_counter() - start,
               "params": tuning.params if tuning else {}, "tuned_recall10": tuning.recall if tuning else None}
        row.update(measure(index, eval_sets, truth, repeats, reference=factory == "Flat"))
        row["index_bytes"] = index_bytes(index)
        case[label] = row
        print(f"  N={n:>8} {label:<5} {factory:<16} build {row['build_s']:7.1f} s  "
              f"qps b1 {row['qps_batch1']:9.1f}  b256 {row['qps_batch256']:9.1f}  "
              f"recall@10 text {row['recall10_text']:.3f} new {row['recall10_new_points']:.3f}  "
              f"{row['index_bytes'] / 2**20:8.1f} MiB  {row['params']}", flush=True)
        if gpu:
            case[f"{label}_gpu"] = gpu_row(index, row["params"], eval_sets, truth, repeats)
        del index
    auto, flat = case["auto"], case["flat"]
    case["auto_speedup_batch1"] = auto["qps_batch1"] / flat["qps_batch1"]
    case["auto_speedup_batch256"] = auto["qps_batch256"] / flat["qps_batch256"]
    if gpu:
        case["torch_matmul_gpu"] = torch_floor(base, eval_sets, truth, repeats)
    return case


def gpu_row(cpu_index: faiss.Index, params: dict[str, int], eval_sets, truth, repeats: int) -> dict[str, Any]:
    start = time.perf_counter()
    index = to_gpu(cpu_index)
    set_search_params(index, params)
    row = {"copy_to_gpu_s": time.perf_counter() - start, **measure(index, eval_sets, truth, repeats)}
    print(f"           on the GPU: qps b1 {row['qps_batch1']:9.1f}  b256 {row['qps_batch256']:9.1f}  "
          f"recall@10 text {row['recall10_text']:.3f}", flush=True)
    return row


def torch_floor(base: np.ndarray, eval_sets, truth, repeats: int) -> dict[str, Any]:
    """Exact search as one matrix product and top-k on the GPU: what any index there must beat."""
    gallery = torch.from_numpy(base).cuda()

    def search(queries: np.ndarray) -> np.ndarray:
        ids = torch.topk(torch.from_numpy(queries).cuda() @ gallery.T, 10, dim=1).indices
        return ids.cpu().numpy()  # the copy back synchronises, so the timing is complete

    pool = np.concatenate([qs.vectors for qs in eval_sets])
    row = {f"qps_batch{b}": queries_per_second(search, pool, b, repeats) for b in (1, 256)}
    row.update({f"recall10_{qs.name}": recall_at_k(search(qs.vectors), t) for qs, t in zip(eval_sets, truth)})
    return row


# ---------------------------------------------------------------- main


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpus = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) if gpu_count() else "no GPU"
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB, {gpus}; faiss {faiss.__version__} "
            f"({faiss.omp_get_max_threads()} threads), torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/cpu-final", help="trained run or checkpoint folder")
    parser.add_argument("--data", help="catalog folder (default: VISLANG_DATA, then ../shared/data/ikea)")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated collection sizes")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats; medians are reported")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads for the end-to-end queries (default: torch's, what `vislang search` uses)")
    parser.add_argument("--json", action="store_true", help="print every figure as one JSON object on the last line")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gpu = gpu_count() > 0
    result: dict[str, Any] = {"machine": machine(), "checkpoint": args.checkpoint}
    print(result["machine"], flush=True)

    catalog = read_catalog(find_data_dir(args.data))
    model = vislang.load(args.checkpoint, device="cpu")
    start = time.perf_counter()
    index = Index.build(model, catalog, gpu=False)
    result["ikea_build_s"] = time.perf_counter() - start
    result["ikea_index"] = index.summary()
    texts = list(dict.fromkeys(item.caption for item in catalog.select("test")))
    random.Random(0).shuffle(texts)
    result["ikea_end_to_end"] = e2e = ikea_end_to_end(index, texts[:LATENCY_QUERIES])
    print(f"IKEA ({len(index)} images, {result['ikea_build_s']:.1f} s to embed and index): text query end to end "
          f"over {e2e['plain']['queries']}", flush=True)
    for name, row in (("plain", e2e["plain"]), (f"re-ranker (best {RERANK_CANDIDATES} a kind)", e2e["reranker"])):
        print(f"  {name}: p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, mean {row['mean_ms']:.1f} ms", flush=True)
    print(f"  the re-ranker adds {e2e['reranker_added_p50_ms']:.1f} ms a query (median)", flush=True)
    result["photo_plus_text"] = text_weight_sweep(index)
    print(f"photo+text, share of top 10 with the photo's type and the asked colour, by text weight: "
          f"{json.dumps({k: v for k, v in result['photo_plus_text'].items() if k != 'queries'})}", flush=True)

    real = np.concatenate([index.embeddings(kind, range(len(part.records))) for kind, part in index.parts.items()])
    result["ikea_clustering"] = neighbour_cosines(real)
    all_texts = list(dict.fromkeys(item.caption for item in catalog))
    random.Random(1).shuffle(all_texts)
    encoded = model.encode_texts(all_texts)
    half = len(encoded) // 2
    result["scale"] = []
    for n in (int(s) for s in args.sizes.split(",") if s.strip()):
        result["scale"].append(scale_case(n, real, encoded[:half], encoded[half:], args.repeats, gpu))
        result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
