"""Builds faiss IndexHNSWFlat on the data the `ann` bench wrote and sweeps efSearch, for comparison.

Usage: python3 faiss_hnsw.py <dir> <n> <dim> <nq> <k> <m> <ef_construction> <build_threads> <ef,ef,...>

<dir> holds data.f32 (n x dim) and queries.f32 (nq x dim), raw little-endian f32, row-major,
unit-length rows. The graph uses inner product (as Quarry's graph does on unit vectors), M links
per node (2M on the bottom layer, as USearch) and efConstruction, built on <build_threads>
threads. Each efSearch runs all queries one at a time on one thread (faiss's loop over a batch
with OpenMP at one thread), RUNS times; the fastest run gives queries/s. Prints one JSON object
with the build time, and per efSearch the queries/s and the hit row ids of the fastest run.
"""

import json
import sys
import time

import faiss
import numpy as np

RUNS = 3


def main() -> None:
    folder = sys.argv[1]
    n, dim, nq, k, m, ef_construction, build_threads = map(int, sys.argv[2:9])
    efs = [int(ef) for ef in sys.argv[9].split(",")]
    data = np.fromfile(f"{folder}/data.f32", dtype="<f4").reshape(n, dim)
    queries = np.fromfile(f"{folder}/queries.f32", dtype="<f4").reshape(nq, dim)

    faiss.omp_set_num_threads(build_threads)
    index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    start = time.perf_counter()
    index.add(data)
    build_s = time.perf_counter() - start
    del data

    faiss.omp_set_num_threads(1)
    runs = []
    for ef in efs:
        params = faiss.SearchParametersHNSW(efSearch=ef)
        index.search(queries[:10], k, params=params)
        best = None
        for _ in range(RUNS):
            start = time.perf_counter()
            _, ids = index.search(queries, k, params=params)
            seconds = time.perf_counter() - start
            if best is None or seconds < best[0]:
                best = (seconds, ids)
        runs.append({"ef": ef, "qps": nq / best[0], "ids": best[1].tolist()})

    print(json.dumps({"build_s": build_s, "runs": runs}))


if __name__ == "__main__":
    main()
