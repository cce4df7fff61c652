"""Metadata rates and tree walks side by side, in one run: the native directory, vexfs as it was
(`--before BIN`, e.g. a release build of an older main), vexfs over /dev/fuse (`-o no_io_uring`),
vexfs over io_uring (the default where the kernel offers it) and libfuse's passthrough_hp (built from
libfuse's source; it raises its own descriptor limit, and runs here under the one vexfs gives itself).

    python3 benchmarks/fuse/rates.py [--before BIN] [--passthrough-hp BIN] [--reps 3] [--files 20000] [--tree 100000]

Each repetition, on every target in turn: create (100 bytes each), stat after the dentry and inode
caches are dropped, stat again, unlink, of --files files in one directory (benchmarks/fio/metadata.py);
then `ls -lR` and `du -s` of --tree one-byte files in 100 directories written into the store before
the mount, cold (after drop_caches) and warm (the run after). All stores live on one fresh journaled
ext4 image. Prints medians and ratios to native and to passthrough_hp.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "fio"))
import run as fio_run  # noqa: E402  (descriptor_ceiling, metadata, is_mounted, wait_mounted)

REPO = HERE.parent.parent


def make_disk(size):
    """A fresh journaled ext4 image with an inode per 4 KiB (the trees are many small files)."""
    image = Path(tempfile.mkstemp(prefix="vexfs-rates.", suffix=".img", dir="/var/tmp")[1])
    subprocess.run(["truncate", "-s", str(size), str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-i", "4096", str(image)], check=True)
    mnt = Path(tempfile.mkdtemp(prefix="vexfs-rates-disk.", dir="/var/tmp"))
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    return mnt, image


def drop_caches():
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(*cmd):
    """Seconds, or why the command failed (passthrough_hp holds a descriptor per inode it knows)."""
    t = time.perf_counter()
    run = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd="/")
    if run.returncode != 0:
        return f"{cmd[0]} failed: {run.stderr.strip().splitlines()[0] if run.stderr.strip() else run.returncode}"
    return time.perf_counter() - t


def fill_tree(root, files):
    for d in range(100):
        sub = root / "tree" / f"d{d:03d}"
        sub.mkdir(parents=True)
        for i in range(files // 100):
            (sub / f"f{i:05d}").write_bytes(b"x")


def print_table(names, results, reps, out=sys.stdout):
    fuse = [n for n in names if n != "native"]
    ratios = [(a, "native") for a in fuse] + [(a, "passthrough_hp") for a in fuse
                                               if a.startswith("vexfs") and "passthrough_hp" in names]
    print(f"median of {reps}; rates in ops/s (higher is better), walks in seconds (lower is better); "
          f"ratios are speed against the other (above 1: faster)\n", file=out)
    print("| workload | " + " | ".join(names) + " | " + " | ".join(f"{a} / {b}" for a, b in ratios) + " |", file=out)
    print("|---|" + "---:|" * (len(names) + len(ratios)), file=out)
    for row in dict.fromkeys(r for r, _ in results):
        med = {}
        for n in names:
            values = [v for v in results[(row, n)] if not isinstance(v, str)]
            med[n] = statistics.median(values) if values else None
        seconds = row.endswith(", s")

        def ratio(a, b):
            if not med[a] or not med[b]:
                return "—"
            return f"{(med[b] / med[a]) if seconds else (med[a] / med[b]):.2f}"
        cells = ["failed" if med[n] is None else (f"{med[n]:.2f}" if seconds else f"{med[n]:.0f}") for n in names]
        print(f"| {row} | " + " | ".join(cells) + " | " + " | ".join(ratio(a, b) for a, b in ratios) + " |", file=out)
    failures = {(r, n): v for (r, n), values in results.items() for v in values if isinstance(v, str)}
    for (r, n), v in failures.items():
        print(f"\n- {n}, {r}: {v}", end="", file=out)
    print(file=out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vexfs", default=os.environ.get("VEXFS_BIN", str(REPO / ".build/release/vexfs")))
    ap.add_argument("--before", default=None, help="an earlier vexfs binary, as one more column")
    ap.add_argument("--passthrough-hp", default="/var/tmp/libfuse/build/example/passthrough_hp")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--tree", type=int, default=100000)
    args = ap.parse_args()
    uring = Path("/sys/module/fuse/parameters/enable_uring")
    if not uring.exists() or uring.read_text().strip() != "Y":
        print("note: fuse.enable_uring is not Y, so the io_uring column is /dev/fuse too", file=sys.stderr)

    targets = {"native": None}
    if args.before:
        targets["vexfs before"] = (args.before, [])
    targets["vexfs /dev/fuse"] = (args.vexfs, ["-o", "no_io_uring"])
    targets["vexfs io_uring"] = (args.vexfs, [])
    if os.access(args.passthrough_hp, os.X_OK):
        targets["passthrough_hp"] = (args.passthrough_hp, None)
    ceiling = fio_run.descriptor_ceiling()
    disk, image = make_disk(len(targets) * (args.tree + args.files) * 4096 + (2 << 30))
    roots, stores, procs = {}, {}, []
    try:
        for i, (name, how) in enumerate(targets.items()):
            store = disk / f"t{i}-store"
            store.mkdir()
            fill_tree(store, args.tree)
            stores[name] = store
            if how is None:
                roots[name] = store
                continue
            root = disk / f"t{i}-mnt"
            root.mkdir()
            binary, options = how
            if options is None:  # passthrough_hp serves in the foreground
                procs.append(subprocess.Popen(["prlimit", f"--nofile={ceiling}:{ceiling}", binary, "--foreground",
                                               str(store), str(root)], stdout=subprocess.DEVNULL))
                fio_run.wait_mounted(root)
            else:
                subprocess.run([binary, "mount", str(store), str(root), *options], check=True, timeout=120)
            roots[name] = root
        for name in targets:
            if name.startswith("vexfs"):
                stats = (roots[name] / ".vexfs" / "stats").read_text()
                m = re.search(r'^vexfs_fuse_transport\{reason="([^"]*)"\}', stats, re.M)
                print(f"{name}: transport {m.group(1) if m else 'not reported (before the transport line)'}",
                      file=sys.stderr)

        results = {}
        for rep in range(args.reps):
            # Each phase on every target before the next; the two stats of a target back to back, as
            # dropping the caches for the next target's cold stat empties every target's.
            for phases in (["create"], ["stat cold", "stat warm"], ["unlink"]):
                for name, root in roots.items():
                    for phase in phases:
                        if phase == "stat cold":
                            drop_caches()
                        v = fio_run.metadata(root, args.files, phase.split()[0])
                        results.setdefault((f"{phase} ({args.files:,} files), ops/s", name), []).append(v)
            for walk, cmd in (("ls -lR", ["ls", "-lR"]), ("du -s", ["du", "-s"])):
                for name, root in roots.items():
                    drop_caches()
                    cold = timed(*cmd, str(root / "tree"))
                    warm = timed(*cmd, str(root / "tree"))
                    results.setdefault((f"{walk} cold ({args.tree:,} files), s", name), []).append(cold)
                    results.setdefault((f"{walk} warm ({args.tree:,} files), s", name), []).append(warm)
            print(f"rep {rep + 1}/{args.reps} done", file=sys.stderr)
            print_table(list(targets), results, rep + 1, out=sys.stderr)
    finally:
        for name, root in roots.items():
            if name != "native" and fio_run.is_mounted(root):
                subprocess.run(["fusermount3", "-u", str(root)])
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        time.sleep(0.5)
        if subprocess.run(["umount", str(disk)]).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)])
        disk.rmdir()
        image.unlink()
    print_table(list(targets), results, args.reps)


if __name__ == "__main__":
    main()
