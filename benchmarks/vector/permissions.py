"""What answering only of what the asker may read costs: getxattr knn.10 p50 on a real mount
(root daemon, allow_other), asked by an unprivileged user, with every file readable, and with half
of the collection other users' 0600 files; root's p50 beside, for reference.

    python3 benchmarks/vector/permissions.py [--files 5000] [--dim 64] [--queries 400]
"""
import argparse
import os
import pwd
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VEXFS = os.environ.get("VEXFS_BIN", str(REPO / ".build" / "debug" / "vexfs"))
USER = "vexfs-mallory"

ASK = """
import os, random, sys, time
q, n = sys.argv[1], int(sys.argv[2])
dim = int(sys.argv[3])
times = []
for i in range(n):
    with open(q, "w") as f:
        f.write(" ".join(str(random.random()) for _ in range(dim)))
    t = time.perf_counter()
    os.getxattr(q, "user.vexfs.knn.10")
    times.append(time.perf_counter() - t)
times.sort()
print(times[len(times) // 2] * 1e3)
"""


def p50(user, query, n, dim):
    cmd = ["/usr/bin/python3", "-c", ASK, str(query), str(n), str(dim)]
    if user:
        cmd = ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--init-groups"] + cmd
    return float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--queries", type=int, default=400)
    a = ap.parse_args()
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", USER], check=True)
    base = Path(tempfile.mkdtemp(prefix="vexfs-perm-", dir="/tmp"))
    os.chmod(base, 0o755)
    store, mnt = base / "store", base / "mnt"
    store.mkdir()
    mnt.mkdir()
    subprocess.run([VEXFS, "mount", str(store), str(mnt), "-o", "allow_other"], check=True)
    try:
        os.chmod(mnt, 0o755)
        rng = random.Random(1)
        rows = []
        for label, private in [("readable", False), ("half-private", True)]:
            d = mnt / label
            d.mkdir()
            os.chmod(d, 0o777)
            for i in range(a.files):
                p = d / f"v{i}.vec"
                p.write_text(" ".join(f"{rng.random():.5f}" for _ in range(a.dim)))
                os.chmod(p, 0o600 if private and i % 2 == 0 else 0o644)
            q = d / "q.query"
            q.write_text("0 " * a.dim)
            os.chmod(q, 0o666)
            user = p50(True, q, a.queries, a.dim)
            root = p50(False, q, a.queries, a.dim)
            rows.append((label, user, root))
        print(f"{a.files} files of dimension {a.dim}, {a.queries} queries each, getxattr user.vexfs.knn.10 p50 (ms)")
        print(f"{'collection':<14} {'unprivileged':>13} {'root':>8} {'ratio':>7}")
        for label, user, root in rows:
            print(f"{label:<14} {user:>13.3f} {root:>8.3f} {user / root:>7.2f}")
    finally:
        subprocess.run([VEXFS, "unmount", str(mnt)], check=False)
        subprocess.run(["rm", "-rf", str(base)])


if __name__ == "__main__":
    sys.exit(main())
