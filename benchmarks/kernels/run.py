#!/usr/bin/env python3
"""Distance kernels side by side, in one run: vexfs's kernels on every path this CPU supports
(`vexfs bench kernels`), NumPy and SimSIMD (both from pip), and the machine's memory bandwidth.

    python3 benchmarks/kernels/run.py [--rows 1000000] [--trials 5]

Out of cache: one query against ROWS x 128 float32 (512 MB at 1,000,000 rows), GB/s of rows read,
and that as a fraction of memcpy's bandwidth measured by vexfs in the same run. In cache: one query
against as many vectors as fit in 256 KiB (at least 64), repeated; vexfs calls its one-to-one
kernel per pair, SimSIMD runs the same pairs inside one cdist call (one Python call per batch, not
per pair; what is left of that call's cost is in SimSIMD's figure). Everything is single-threaded.
A copy moves each byte twice (read, then write), so the scan, which only reads, is compared with
the copy's traffic as well as with its rate.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[2]


def ensure_peers():
    try:
        import numpy  # noqa: F401
        import simsimd  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "numpy", "simsimd"], check=True)


def median_time(fn, trials):
    times = []
    for _ in range(trials):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--trials", type=int, default=5)
    args = ap.parse_args()
    ensure_peers()
    import numpy as np
    import simsimd

    subprocess.run(["swift", "build", "-c", "release"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    out = subprocess.run([str(REPO / ".build/release/vexfs"), "bench", "kernels", "--json",
                          "--scan-rows", str(args.rows), "--trials", str(args.trials)],
                         check=True, capture_output=True, text=True).stdout
    ours = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    bandwidth = next(r["gb_per_s"] for r in ours if r["test"] == "memory")
    paths = sorted({r["path"] for r in ours if r["test"] == "scan"}, key=["scalar", "avx2", "avx512"].index)

    rng = np.random.default_rng(1)
    base = rng.uniform(-1, 1, size=(args.rows, 128)).astype(np.float32)
    q = rng.uniform(-1, 1, size=128).astype(np.float32)
    nbytes = base.nbytes
    peers = {}  # (kernel, impl) -> GB/s
    peers[("dot_f32", "numpy")] = nbytes / median_time(lambda: base @ q, args.trials) / 1e9
    peers[("l2sq_f32", "numpy")] = nbytes / median_time(
        lambda: np.einsum("ij,ij->i", base - q, base - q), args.trials) / 1e9
    for kernel, metric in (("l2sq_f32", "sqeuclidean"), ("dot_f32", "inner"), ("cos_f32", "cosine")):
        peers[(kernel, "simsimd")] = nbytes / median_time(
            lambda: simsimd.cdist(q[None, :], base, metric=metric, threads=1), args.trials) / 1e9
    del base

    caps = [k for k, v in simsimd.get_capabilities().items() if v]
    print(f"memcpy bandwidth (bytes copied per second): {bandwidth:.1f} GB/s; SimSIMD {simsimd.__version__} "
          f"capabilities: {', '.join(caps)}; NumPy {np.__version__}\n")
    print(f"Out-of-cache scan: 1 query x {args.rows:,} x 128 float32, median of {args.trials}\n")
    print("| kernel | implementation | GB/s | vectors/s | of memcpy rate | of memcpy traffic (2x) |")
    print("|---|---|---:|---:|---:|---:|")
    for kernel in ("l2sq_f32", "dot_f32", "cos_f32"):
        rows = [(f"vexfs {r['path']}", r["gb_per_s"]) for p in paths for r in ours
                if r["test"] == "scan" and r["kernel"] == kernel and r["path"] == p]
        rows += [(impl, v) for (k, impl), v in peers.items() if k == kernel]
        for impl, gbs in rows:
            print(f"| {kernel} | {impl} | {gbs:.1f} | {gbs * 1e9 / 512:,.0f} | {gbs / bandwidth:.2f} | "
                  f"{gbs / (2 * bandwidth):.2f} |")

    # In cache: the same shape as vexfs's run (one query against 64 vectors).
    print(f"\nIn-cache one-to-one: vectors per second (millions), median of {args.trials}\n")
    rows_for = lambda dim, size: max(64, 262_144 // (dim * size))
    header = " | ".join(f"vexfs {p}" for p in paths)
    print(f"| kernel | dim | {header} | SimSIMD | vexfs {paths[-1]} / SimSIMD | vexfs {paths[-1]} / scalar |")
    print("|---|---:|" + "---:|" * (len(paths) + 3))
    metric = {"l2sq_f32": "sqeuclidean", "dot_f32": "inner", "cos_f32": "cosine", "l2sq_i8": "sqeuclidean",
              "dot_i8": "inner"}
    dims = sorted({r["dim"] for r in ours if r["test"] == "in-cache"})
    for kernel in metric:
        for dim in dims:
            got = {r["path"]: r["vectors_per_s"] for r in ours
                   if r["test"] == "in-cache" and r["kernel"] == kernel and r["dim"] == dim}
            dtype = np.int8 if kernel.endswith("i8") else np.float32
            rows = rows_for(dim, 1 if kernel.endswith("i8") else 4)
            a = rng.uniform(-1, 1, size=(1, dim))
            b = rng.uniform(-1, 1, size=(rows, dim))
            if dtype is np.int8:
                a, b = (a * 127).astype(np.int8), (b * 127).astype(np.int8)
            else:
                a, b = a.astype(np.float32), b.astype(np.float32)
            reps = max(1, 4_000_000 // (dim * rows))
            t = median_time(lambda: [simsimd.cdist(a, b, metric=metric[kernel], threads=1) for _ in range(reps)],
                            args.trials)
            theirs = reps * rows / t
            best = got[paths[-1]]
            cells = " | ".join(f"{got[p] / 1e6:.1f}" for p in paths)
            print(f"| {kernel} | {dim} | {cells} | {theirs / 1e6:.1f} | {best / theirs:.2f} | {best / got['scalar']:.1f} |")


if __name__ == "__main__":
    main()
