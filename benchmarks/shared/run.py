#!/usr/bin/env python3
"""vexfs over a shared store (`-o shared`): a one-node CephFS from scripts/ceph-up with two ceph-fuse
clients standing for two machines, beside one vexfs on local ext4. Prints, side by side:

- ingest: small `.f32` files written through the mount until `user.vexfs.count` says all are in;
- queries: getxattr of `user.vexfs.knn.10` from one process per mount for a fixed time, in a
  collection of 20,000 x 128; the two CephFS mounts' daemons (and their askers) pinned one to each
  core with taskset, so the second mount's queries add capacity;
- cross-mount visibility: from the close of a file written through one mount until the other's query
  answers with it (p50, p99);
- a second mount's first answer in a collection of N x 768 the owner built on CephFS, against the
  owner's build time (`--n`), and when it had copied and checked the published vectors it answered
  from in place meanwhile. Each OSD is made big enough for N (CEPH_UP_OSD_GIB).

    python3 benchmarks/shared/run.py [--files 2000] [--seconds 10] [--writes 100] [--n 100000] [--vexfs PATH]

Needs root, /dev/fuse and the ceph packages (scripts/setup). Takes the cluster down at the end.
"""
import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]

ASKER = r"""
import os, sys, time
paths, seconds = sys.argv[2:], float(sys.argv[1])
n, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    os.getxattr(paths[n % len(paths)], "user.vexfs.knn.10")
    n += 1
print(n / seconds)
"""


def until(check, seconds=600, step=0.01):
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        try:
            if check():
                return time.monotonic() - began
        except OSError:
            pass
        time.sleep(step)
    raise SystemExit("timed out")


class Vexfs:
    def __init__(self, binary, store, root, options=(), cpu=None):
        self.binary, self.store, self.root, self.options, self.cpu = binary, Path(store), Path(root), list(options), cpu
        self.store.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)

    def mount(self):
        pin = ["taskset", "-c", str(self.cpu)] if self.cpu is not None else []
        subprocess.run(pin + [self.binary, "mount", str(self.store), str(self.root), *self.options], check=True, timeout=600)

    def unmount(self):
        subprocess.run([self.binary, "unmount", str(self.root)], check=False, timeout=600)

    def __truediv__(self, name):
        return self.root / name


def ingest(mounts, files, dim=128):
    """Files per second written through `mounts` (split between them, at once) until all are counted."""
    rng = np.random.default_rng(1)
    c = mounts[0] / "ingest"
    c.mkdir()
    os.setxattr(c, "user.vexfs.dim", str(dim).encode())
    for m in mounts[1:]:
        until(lambda: (m / "ingest").is_dir(), 10)
    vectors = rng.normal(size=(files, dim)).astype(np.float32)
    began = time.monotonic()
    if len(mounts) == 1:
        for i in range(files):
            vectors[i].tofile(mounts[0] / "ingest" / f"v{i}.f32")
    else:
        # One writer process per mount, pinned beside its daemon.
        procs = []
        for k, m in enumerate(mounts):
            code = ("import numpy as np, sys\nv = np.load(sys.argv[1])\n"
                    f"for i in range({k}, {files}, {len(mounts)}): v[i].tofile(sys.argv[2] + f'/v{{i}}.f32')\n")
            src = Path(tempfile.mkstemp(suffix=".npy")[1])
            np.save(src, vectors)
            procs.append((subprocess.Popen(["taskset", "-c", str(m.cpu), sys.executable, "-c", code, str(src), str(m / "ingest")]), src))
        for p, src in procs:
            p.wait()
            src.unlink()
    for m in mounts:
        until(lambda: os.getxattr(m / "ingest", "user.vexfs.count") == str(files).encode())
    return files / (time.monotonic() - began)


def queries(mounts, seconds, n=20000, dim=128):
    rng = np.random.default_rng(2)
    c = mounts[0] / "queries"
    c.mkdir()
    os.setxattr(c, "user.vexfs.dim", str(dim).encode())
    rows = rng.normal(size=(n, dim)).astype(np.float32)
    np.save(c / "d.npy", rows)
    for i in range(50):
        (rows[i] + 0.01).tofile(c / f"q{i}.f32.query")
    for m in mounts:
        until(lambda: os.getxattr(m / "queries", "user.vexfs.count") == str(n).encode())
        os.getxattr(m / "queries" / "q0.f32.query", "user.vexfs.knn.10")
    procs = []
    for m in mounts:
        pin = ["taskset", "-c", str(m.cpu)] if m.cpu is not None else []
        paths = [str(m / "queries" / f"q{i}.f32.query") for i in range(50)]
        procs.append(subprocess.Popen(pin + [sys.executable, "-c", ASKER, str(seconds), *paths], stdout=subprocess.PIPE, text=True))
    return sum(float(p.communicate()[0]) for p in procs)


def visibility(a, b, writes):
    c = a / "seen"
    c.mkdir()
    os.setxattr(c, "user.vexfs.dim", b"8")
    until(lambda: (b / "seen").is_dir(), 10)
    delays = []
    for i in range(writes):
        writer, reader = (a, b) if i % 2 == 0 else (b, a)
        v = np.zeros(8, dtype=np.float32)
        v[i % 8] = 1000 + i
        v.tofile(reader / "seen" / f"q{i}.f32.query")
        # From the write's completion (its close): the README's bound.
        v.tofile(writer / "seen" / f"v{i}.f32")
        began = time.monotonic()
        name = f"v{i}.f32".encode()
        until(lambda: os.getxattr(reader / "seen" / f"q{i}.f32.query", "user.vexfs.knn.1").split(b"\t")[0] == name, 60, 0.005)
        delays.append(time.monotonic() - began)
    return np.percentile(delays, 50), np.percentile(delays, 99)


def second_mount(binary, base, machines, n, dim=768):
    """The owner's build time of N x dim on CephFS, and a second mount's time to its first answer."""
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(n, dim)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    src = base / "big.npy"
    np.save(src, rows)
    # Each mount's private state on local disk (`state=`), as on two machines.
    a = Vexfs(binary, machines[0] / "big", base / "big-a", ["-o", f"shared=owner,state={base / 'state-owner'}"])
    a.mount()
    try:
        c = a / "c"
        c.mkdir()
        os.setxattr(c, "user.vexfs.dim", str(dim).encode())
        (rows[17] + 0.001).astype(np.float32).tofile(c / "q.f32.query")
        began = time.monotonic()
        shutil.copyfile(src, c / "d.npy")
        until(lambda: os.getxattr(c, "user.vexfs.count") == str(n).encode(), 3600, 0.1)
        os.getxattr(c / "q.f32.query", "user.vexfs.knn.10")
        build = time.monotonic() - began
        # The second mount comes once the owner's last snapshot is published: the same as its own, and
        # its own unchanged for 3 s (snapshots are written while the file streams in).
        published = machines[0] / "big" / ".vexfs" / "shared" / "index"
        private = base / "state-owner" / "index"
        last = {}

        def settled():
            for p in private.iterdir():
                mine, theirs = (p / "snapshot").stat(), (published / p.name / "snapshot").stat()
                stamp = (mine.st_mtime_ns, mine.st_size)
                if last.setdefault(p.name, (stamp, time.monotonic()))[0] != stamp:
                    last[p.name] = (stamp, time.monotonic())
                if stamp == (theirs.st_mtime_ns, theirs.st_size) and time.monotonic() - last[p.name][1] >= 3:
                    return True
            return False
        until(settled, 600, 0.2)
        b = Vexfs(binary, machines[1] / "big", base / "big-b", ["-o", f"shared=second,state={base / 'state-second'}"])
        began = time.monotonic()
        b.mount()
        try:
            answer = os.getxattr(b / "c" / "q.f32.query", "user.vexfs.knn.10")
            first = time.monotonic() - began
            assert answer.split(b"\t")[0] == b"d.npy#17", answer[:200]
            status = os.getxattr(b / "c", "user.vexfs.status").decode()
            # The published vectors, read in place for the first answers, copied and checked meanwhile.
            until(lambda: b"vectors copied here and checked" in os.getxattr(b / "c", "user.vexfs.status"), 3600, 0.1)
            copied = time.monotonic() - began
            assert os.getxattr(b / "c" / "q.f32.query", "user.vexfs.knn.10") == answer
        finally:
            b.unmount()
    finally:
        a.unmount()
        src.unlink()
    return build, first, copied, status


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--writes", type=int, default=100)
    ap.add_argument("--n", type=int, default=100000)
    ap.add_argument("--skip-rates", action="store_true", help="only the visibility delay and the second mount")
    ap.add_argument("--vexfs", default=str(REPO / ".build" / "release" / "vexfs"))
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="vexfs-shared-bench-"))
    cluster = base / "ceph"
    # The OSDs hold the big collection's file, its published snapshot and a publication's new copy.
    osd_gib = max(4, math.ceil(args.n * 768 * 4 * 6 / 2**30 / 2) + 2)
    subprocess.run([str(REPO / "scripts" / "ceph-up"), str(cluster)], check=True, timeout=600,
                   env={**os.environ, "CEPH_UP_OSD_GIB": str(osd_gib)})
    mounted = []
    try:
        machines = []
        for name in ("benchA", "benchB"):
            mp = base / name
            mp.mkdir()
            with open(cluster / "clients", "a") as f:
                f.write(f"{mp}\n")
            subprocess.run(["ceph-fuse", "-c", str(cluster / "ceph.conf"), "--id", name, str(mp)], check=True, timeout=120,
                           capture_output=True)
            machines.append(mp)
        (machines[0] / "s").mkdir()
        results = {}
        local = Vexfs(args.vexfs, base / "local-store", base / "local")
        one = Vexfs(args.vexfs, machines[0] / "one", base / "one", ["-o", f"shared=one,state={base / 'state-one'}"])
        two = [Vexfs(args.vexfs, machines[k] / "s", base / f"two{k}", ["-o", f"shared=m{k},state={base / f'state-m{k}'}"], cpu=k)
               for k in (0, 1)]
        setups = () if args.skip_rates else (("local ext4, one mount", [local]), ("CephFS, one mount", [one]), ("CephFS, two mounts", two))
        for label, ms in setups:
            for m in ms:
                m.mount()
                mounted.append(m)
            results[label] = (ingest(ms, args.files), queries(ms, args.seconds))
            for m in ms:
                m.unmount()
                mounted.remove(m)
        for m in two:
            m.mount()
            mounted.append(m)
        p50, p99 = visibility(two[0], two[1], args.writes)
        for m in two:
            m.unmount()
            mounted.remove(m)
        print(f"{time.strftime('%H:%M:%S', time.gmtime())} UTC: the owner's build of {args.n:,} x 768 begins", flush=True)
        build, first, copied, status = second_mount(args.vexfs, base, machines, args.n)
        print(f"\n| | ingest ({args.files} files of 128-d .f32), files/s | queries of 20,000 x 128, k=10, per second |")
        print("|---|---:|---:|")
        for label, (i, q) in results.items():
            print(f"| {label} | {i:,.0f} | {q:,.0f} |")
        print(f"\ncross-mount visibility over {args.writes} writes: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
        print(f"{args.n:,} x 768 on CephFS: owner queryable after the copy {build:.1f} s; a second mount's first answer "
              f"{first:.1f} s after `vexfs mount` (ratio {first / build:.2f}); its status: {status}; the published vectors "
              f"copied and checked {copied:.1f} s after `vexfs mount` (ratio {copied / build:.2f})")
        print(f"ended {time.strftime('%H:%M:%S', time.gmtime())} UTC")
    finally:
        for m in mounted:
            m.unmount()
        subprocess.run([str(REPO / "scripts" / "ceph-down"), str(cluster)], check=False, timeout=600)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
