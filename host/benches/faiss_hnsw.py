"""Builds faiss IndexHNSWFlat on the data the `ann` bench wrote, then times search passes on request,
so the bench can alternate them with its own and both engines see the same machine.

Usage: python3 faiss_hnsw.py <dir> <n> <dim> <nq> <k> <m> <ef_construction> <build_threads>

<dir> holds data.f32 (n x dim) and queries.f32 (nq x dim), raw little-endian f32, row-major,
unit-length rows. The graph uses inner product (as Quarry's graph does on unit vectors), M links
per node (2M on the bottom layer, as USearch) and efConstruction, built on <build_threads>
threads. Prints one JSON line with the build time. Then, for each efSearch read from stdin (one
per line), runs all queries one at a time on one thread (faiss's loop over a batch with OpenMP at
one thread) after ten warm-up queries, and prints one JSON line with the pass's seconds and the
hit row ids. Ends at the end of stdin.
"""

import json
import sys
import time

import faiss
import numpy as np


def main() -> None:
    folder = sys.argv[1]
    n, dim, nq, k, m, ef_construction, build_threads = map(int, sys.argv[2:9])
    data = np.fromfile(f"{folder}/data.f32", dtype="<f4").reshape(n, dim)
    queries = np.fromfile(f"{folder}/queries.f32", dtype="<f4").reshape(nq, dim)

    faiss.omp_set_num_threads(build_threads)
    index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    start = time.perf_counter()
    index.add(data)
    build_s = time.perf_counter() - start
    del data
    print(json.dumps({"build_s": build_s}), flush=True)

    faiss.omp_set_num_threads(1)
    for line in sys.stdin:
        ef = int(line)
        params = faiss.SearchParametersHNSW(efSearch=ef)
        index.search(queries[:10], k, params=params)
        start = time.perf_counter()
        _, ids = index.search(queries, k, params=params)
        seconds = time.perf_counter() - start
        print(json.dumps({"ef": ef, "seconds": seconds, "ids": ids.tolist()}), flush=True)


if __name__ == "__main__":
    main()
