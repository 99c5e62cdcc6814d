"""Times exact top-k with faiss IndexFlatIP on the data the `topk` bench wrote, for comparison.

Usage: python3 faiss_topk.py <dir> <n> <dim> <nq> <k> [--sq8]

<dir> holds data.f32 (n x dim) and queries.f32 (nq x dim), raw little-endian f32, row-major.
Measures as the Rust side does: each query alone (median), then all nq in one call (median of
BATCH_RUNS after one warm-up). Each is timed with faiss's defaults and with the setting that is
faster on small machines (one thread for a single query; BLAS for a batch, which faiss 1.15 only
uses by default for far larger batches), and the faster is reported as the time. Then the same
for faiss's half-precision flat index (IndexScalarQuantizer, QT_fp16), the peer of Quarry's f16
option; it scores with its own kernels, not BLAS. Prints one JSON object with the times in ms and
the hit row ids under the defaults.

With --sq8 (for the `quantized` bench) it measures only faiss's 8-bit scalar quantizer
(IndexScalarQuantizer, QT_8bit: per-dimension min and max trained on all the data), the peer of
Quarry's int8 option, which faiss scores from the codes without re-scoring.
"""

import json
import statistics
import sys
import time

import faiss
import numpy as np

BATCH_RUNS = 3


def single(index, queries, k):
    """Median ms of each query alone, and the hits."""
    index.search(queries[:1], k)
    times, hits = [], []
    for i in range(len(queries)):
        start = time.perf_counter()
        _, ids = index.search(queries[i : i + 1], k)
        times.append((time.perf_counter() - start) * 1000)
        hits.append(ids[0].tolist())
    return statistics.median(times), hits


def batch(index, queries, k):
    """Median ms of all queries in one call, and the hits."""
    index.search(queries, k)
    times = []
    for _ in range(BATCH_RUNS):
        start = time.perf_counter()
        _, ids = index.search(queries, k)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), ids.tolist()


def single_both(index, queries, k: int, threads: int):
    """Single queries at faiss's default threads and at 1 thread: (default ms, 1-thread ms, ids)."""
    default_ms, ids = single(index, queries, k)
    faiss.omp_set_num_threads(1)
    one_thread_ms, _ = single(index, queries, k)
    faiss.omp_set_num_threads(threads)
    return default_ms, one_thread_ms, ids


def sq8(data, queries, k) -> None:
    """Train and fill a QT_8bit index, then time it as `main` times the others."""
    n, dim = data.shape
    start = time.perf_counter()
    index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    index.train(data)
    index.add(data)
    build_s = time.perf_counter() - start
    del data
    threads = faiss.omp_get_max_threads()
    single_default_ms, single_one_thread_ms, single_ids = single_both(index, queries, k, threads)
    batch_ms, batch_ids = batch(index, queries, k)
    print(
        json.dumps(
            {
                "threads": threads,
                "build_s": build_s,
                "single_ms": min(single_default_ms, single_one_thread_ms),
                "single_default_ms": single_default_ms,
                "batch_ms": batch_ms,
                "single_ids": single_ids,
                "batch_ids": batch_ids,
            }
        )
    )


def main() -> None:
    folder, n, dim, nq, k = sys.argv[1], *map(int, sys.argv[2:6])
    data = np.fromfile(f"{folder}/data.f32", dtype="<f4").reshape(n, dim)
    queries = np.fromfile(f"{folder}/queries.f32", dtype="<f4").reshape(nq, dim)
    if "--sq8" in sys.argv[6:]:
        sq8(data, queries, k)
        return
    index = faiss.IndexFlatIP(dim)
    index.add(data)
    fp16 = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    fp16.add(data)
    del data  # the indexes hold their own copies

    threads = faiss.omp_get_max_threads()
    single_default_ms, single_one_thread_ms, single_ids = single_both(index, queries, k, threads)

    batch_default_ms, batch_ids = batch(index, queries, k)
    faiss.cvar.distance_compute_blas_threshold = 0
    batch_blas_ms, _ = batch(index, queries, k)
    del index

    fp16_single_default_ms, fp16_single_one_thread_ms, fp16_single_ids = single_both(fp16, queries, k, threads)
    fp16_batch_ms, fp16_batch_ids = batch(fp16, queries, k)

    print(
        json.dumps(
            {
                "threads": threads,
                "single_ms": min(single_default_ms, single_one_thread_ms),
                "batch_ms": min(batch_default_ms, batch_blas_ms),
                "single_default_ms": single_default_ms,
                "batch_default_ms": batch_default_ms,
                "single_ids": single_ids,
                "batch_ids": batch_ids,
                "fp16": {
                    "single_ms": min(fp16_single_default_ms, fp16_single_one_thread_ms),
                    "batch_ms": fp16_batch_ms,
                    "single_ids": fp16_single_ids,
                    "batch_ids": fp16_batch_ids,
                },
            }
        )
    )


if __name__ == "__main__":
    main()
