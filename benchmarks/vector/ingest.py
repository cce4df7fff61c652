#!/usr/bin/env python3
"""Queries during ingest, through the mount: how long a query waits while other processes write.

A fresh store is mounted (release build, default options) with two collections: `a` starts with
--base vectors (one .npy, so it is already an HNSW graph) and `b` with 2,000 small files. Then, for
--seconds, two processes write small .vec files into `a` as fast as they can, while three processes
query: two in `a`, one in `b`. Every query in `a` is a read-your-writes probe: the querier writes a
new vector file, closes it, writes the same vector to its .query file and asks getxattr
`user.vexfs.knn.1`; the answer must be the file it just wrote (distance 0). A probe that misses is
asked again a second later: found then, it was a stale answer (a broken promise); still missing,
the approximate search missed it. Queries in `b` ask for the 10 nearest of a random vector.
Latency is the getxattr(2) call alone (ctypes, 64 KiB buffer).

    python3 benchmarks/vector/ingest.py [--seconds 30] [--dim 64] [--base 20000]
"""
import argparse, ctypes, json, multiprocessing as mp, os, shutil, subprocess, sys, tempfile, time

import numpy as np

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))


def text(v):
    return " ".join(f"{x:.6f}" for x in v) + "\n"


def writer(mnt, who, dim, stop_at, out):
    rng = np.random.default_rng(100 + who)
    n = 0
    while time.time() < stop_at:
        with open(os.path.join(mnt, "a", f"w{who}-{n:07}.vec"), "w") as f:
            f.write(text(rng.normal(0, 1, dim)))
        n += 1
    out.put(("writer", who, n))


def querier(mnt, who, coll, dim, stop_at, out):
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    buf = ctypes.create_string_buffer(65536)
    rng = np.random.default_rng(200 + who)
    qpath = os.path.join(mnt, coll, f"probe{who}.query").encode()
    latencies, stale, missed, i = [], 0, 0, 0
    while time.time() < stop_at:
        v = rng.normal(0, 1, dim)
        probe = None
        if coll == "a":
            probe = f"p{who}-{i:06}.vec"
            with open(os.path.join(mnt, coll, probe), "w") as f:
                f.write(text(v))
        with open(qpath, "w") as f:
            f.write(text(v))
        k = b"user.vexfs.knn.1" if probe else b"user.vexfs.knn"
        t0 = time.perf_counter()
        size = libc.getxattr(qpath, k, buf, 65536)
        latencies.append(time.perf_counter() - t0)
        if size < 0:
            raise OSError(ctypes.get_errno(), "getxattr")
        if probe:
            first = buf.raw[:size].decode().split("\t")[0]
            if first != probe:
                time.sleep(1)
                size = libc.getxattr(qpath, k, buf, 65536)
                if buf.raw[:size].decode().split("\t")[0] == probe:
                    stale += 1
                else:
                    missed += 1
        i += 1
    out.put(("querier", who, coll, latencies, stale, missed))


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))] if xs else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--base", type=int, default=20_000, help="vectors in `a` before the run (one .npy)")
    ap.add_argument("--vexfs", default=os.path.join(REPO, ".build/release/vexfs"))
    ap.add_argument("--workdir", default="/var/tmp")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="vexfs-ingest-", dir=args.workdir)
    store, mnt = os.path.join(work, "store"), os.path.join(work, "mnt")
    os.mkdir(store)
    os.mkdir(mnt)
    rng = np.random.default_rng(7)
    try:
        subprocess.run([args.vexfs, "mount", store, mnt], check=True)
        os.mkdir(os.path.join(mnt, "a"))
        os.mkdir(os.path.join(mnt, "b"))
        np.save(os.path.join(mnt, "a", "base.npy"), rng.normal(0, 1, (args.base, args.dim)).astype(np.float32))
        for i in range(2000):
            with open(os.path.join(mnt, "b", f"{i:05}.vec"), "w") as f:
                f.write(text(rng.normal(0, 1, args.dim)))
        assert int(os.getxattr(os.path.join(mnt, "a"), "user.vexfs.count")) == args.base
        assert int(os.getxattr(os.path.join(mnt, "b"), "user.vexfs.count")) == 2000

        out = mp.Queue()
        stop_at = time.time() + args.seconds
        procs = [mp.Process(target=writer, args=(mnt, w, args.dim, stop_at, out)) for w in range(2)]
        procs += [mp.Process(target=querier, args=(mnt, q, c, args.dim, stop_at, out)) for q, c in enumerate(["a", "a", "b"])]
        for p in procs:
            p.start()
        results = [out.get() for _ in procs]
        for p in procs:
            p.join()
        written = sum(r[2] for r in results if r[0] == "writer")
        lat = {"a": [], "b": []}
        stale = missed = 0
        for r in results:
            if r[0] == "querier":
                lat[r[2]] += r[3]
                stale += r[4]
                missed += r[5]
        final = int(os.getxattr(os.path.join(mnt, "a"), "user.vexfs.count"))
        index = os.getxattr(os.path.join(mnt, "a"), "user.vexfs.index").decode()
        report = {"seconds": args.seconds, "dim": args.dim, "files_written": written, "files_per_s": written / args.seconds,
                  "a_final_count": final, "a_index": index, "stale_answers": stale, "approximate_misses": missed}
        for c in ("a", "b"):
            report[c] = {"queries": len(lat[c]), "p50_ms": pct(lat[c], 50) * 1e3, "p99_ms": pct(lat[c], 99) * 1e3,
                         "max_ms": max(lat[c]) * 1e3 if lat[c] else float("nan")}
        print(json.dumps(report), flush=True)
    finally:
        if os.path.ismount(mnt):
            subprocess.run([args.vexfs, "unmount", mnt])
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", mnt])
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"{args.seconds:.0f} s, two writers into `a`: {written} files ({written / args.seconds:.0f} files/s); "
          f"`a` holds {final} vectors; read-your-writes probes: {stale} stale, {missed} approximate misses")
    print(f"{'collection':<28}{'queries':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for c, what in (("a", "a (being written)"), ("b", "b (idle)")):
        r = report[c]
        print(f"{what:<28}{r['queries']:>9}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['max_ms']:>9.2f}")


if __name__ == "__main__":
    sys.exit(main())
