"""What closing idle collections' directories costs a question: getxattr knn p50 on a real mount
(root daemon, allow_other), asked by an unprivileged user (whose every candidate is checked through
the collection's directory), over collections asked in turn, with `open_collections` large enough
that none is closed and with `open_collections=1`, so that every question reopens its collection's
directory by handle. Each question is asked once (another K each time), so none comes from the
answer cache. Prints p50 and the reopens the daemon counted, run by run.

    python3 benchmarks/vector/reopen.py [--collections 8] [--files 50] [--queries 2000] [--runs 2]
"""
import argparse
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VEXFS = os.environ.get("VEXFS_BIN", str(REPO / ".build" / "debug" / "vexfs"))
USER = "vexfs-mallory"

ASK = """
import os, sys
import time
n, paths = int(sys.argv[1]), sys.argv[2:]
times = []
for r in range(n):
    path, k = paths[r % len(paths)], r // len(paths) + 2
    t = time.perf_counter()
    os.getxattr(path, f"user.vexfs.knn.{k}")
    times.append(time.perf_counter() - t)
times.sort()
print(times[len(times) // 2] * 1e6)
"""


def one_run(bound, args, top):
    store, mnt = Path(tempfile.mkdtemp(dir=top)), Path(tempfile.mkdtemp(dir=top))
    os.chmod(store, 0o755)
    os.chmod(mnt, 0o755)
    subprocess.run([VEXFS, "mount", str(store), str(mnt), "-o", f"allow_other,open_collections={bound}"], check=True)
    pid = int((store / ".vexfs" / "mount.lock").read_text().split()[0])
    try:
        for c in range(args.collections):
            (mnt / f"c{c}").mkdir()
            for i in range(args.files):
                (mnt / f"c{c}" / f"f{i}.vec").write_text(f"{i} {c}")
        paths = [str(mnt / f"c{c}" / "f7.vec") for c in range(args.collections)]
        for c in range(args.collections):
            os.getxattr(mnt / f"c{c}", "user.vexfs.count")
        out = subprocess.run(["setpriv", f"--reuid={USER}", f"--regid={USER}", "--init-groups", "/usr/bin/python3", "-c", ASK,
                              str(args.queries), *paths], check=True, capture_output=True, text=True).stdout
        stats = (mnt / ".vexfs" / "stats").read_text().splitlines()
        reopened = next(float(l.split()[1]) for l in stats if l.startswith("vexfs_collection_dirs_reopened "))
        return float(out), int(reopened)
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
        while True:
            try:
                os.kill(pid, 0)
                time.sleep(0.1)
            except ProcessLookupError:
                break


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--collections", type=int, default=8)
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    if args.queries > args.collections * 999:
        sys.exit("at most 999 questions per collection (K up to 1,000)")
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", USER], check=True)
    top = tempfile.mkdtemp(prefix="vexfs-reopen-")
    os.chmod(top, 0o755)
    print(f"{args.collections} collections of {args.files} files, {args.queries} questions of an unprivileged user, each asked once")
    try:
        for run in range(args.runs):
            for bound in (4 * args.collections, 1):
                p50, reopened = one_run(bound, args, top)
                print(f"run {run + 1}: open_collections={bound:<4} p50 {p50:7.1f} us, {reopened} reopens")
    finally:
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
