#!/usr/bin/env python3
"""What one hostile user costs another (issue 24): a root daemon under `allow_other`, a victim (an
unprivileged account) that creates, stats and asks in its own collection, and an attacker (another
account) that runs each attack of issue 24 in turn. For each attack the victim's p50 and p99 are
printed with the attacker idle and busy, side by side, and their ratio.

    python3 benchmarks/hostile/run.py [--seconds 10] [--vexfs PATH] [--attacks A,B] [--options io_uring]

The victim's loop: create a 3-number `.vec`, `stat` it, and ask `user.vexfs.knn.5` of a query file in
a collection of 2,000 vectors; each step is timed on its own. Accounts vexfs-victim and
vexfs-mallory are made with useradd if missing. Debian's /usr/bin/python3 runs both (the one under
/root is out of their reach); numpy is used only by root, to make the attacker's files.
"""
import argparse
import json
import os
import pwd
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
PYTHON = "/usr/bin/python3"
VICTIM, ATTACKER = "vexfs-victim", "vexfs-mallory"

VICTIM_LOOP = r"""
import json, os, sys, time
root, seconds = sys.argv[1], float(sys.argv[2])
c = os.path.join(root, "victim")
q = os.path.join(c, "q.query")
times = {"create": [], "stat": [], "query": []}
end = time.monotonic() + seconds
i = 0
while time.monotonic() < end:
    p = os.path.join(c, f"v{os.getpid()}-{i}.vec")
    t = time.perf_counter(); open(p, "w").write(f"{i % 7} 1 2"); times["create"].append(time.perf_counter() - t)
    t = time.perf_counter(); os.stat(p); times["stat"].append(time.perf_counter() - t)
    t = time.perf_counter()
    try:
        os.getxattr(q, "user.vexfs.knn.5")
    except OSError:
        pass
    times["query"].append(time.perf_counter() - t)
    os.unlink(p)
    i += 1
print(json.dumps(times))
"""

ATTACKS = {
    "collections": r"""
import os, sys, time
root, seconds = sys.argv[1], float(sys.argv[2])
end, i = time.monotonic() + seconds, 0
while time.monotonic() < end:
    d = os.path.join(root, "attacker", f"c{os.getpid()}-{i}")
    os.mkdir(d)
    try: os.setxattr(d, "user.vexfs.dim", b"1")
    except OSError: pass
    i += 1
""",
    "many-rows": r"""
import os, shutil, sys, time
root, seconds, source = sys.argv[1], float(sys.argv[2]), sys.argv[3]
shutil.copyfile(source, os.path.join(root, "attacker", "many.npy"))
time.sleep(seconds)
""",
    "knn-of-sparse": r"""
import os, sys, threading, time
root, seconds = sys.argv[1], float(sys.argv[2])
end = time.monotonic() + seconds
def ask():
    while time.monotonic() < end:
        try: os.getxattr(os.path.join(root, "attacker", "sparse.npy"), "user.vexfs.knn.3")
        except OSError: pass
ts = [threading.Thread(target=ask) for _ in range(4)]
for t in ts: t.start()
for t in ts: t.join()
""",
    "journal-opens": r"""
import os, sys, time
root, seconds = sys.argv[1], float(sys.argv[2])
end, fds = time.monotonic() + seconds, []
while time.monotonic() < end:
    try: fds.append(os.open(os.path.join(root, ".vexfs", "journal"), os.O_RDONLY))
    except OSError: time.sleep(0.01)
    if len(fds) > 500:
        for fd in fds: os.close(fd)
        fds = []
""",
    "heavy-questions": r"""
import os, sys, threading, time
root, seconds = sys.argv[1], float(sys.argv[2])
end = time.monotonic() + seconds
def ask():
    while time.monotonic() < end:
        try: os.getxattr(os.path.join(root, "attacker", "heavy.npy.query"), "user.vexfs.knn.10.from.0")
        except OSError: time.sleep(0.01)
ts = [threading.Thread(target=ask) for _ in range(8)]
for t in ts: t.start()
for t in ts: t.join()
""",
    "status-waits": r"""
import os, shutil, sys, threading, time
root, seconds, source = sys.argv[1], float(sys.argv[2]), sys.argv[3]
end = time.monotonic() + seconds
f = os.path.join(root, "attacker", "building.npy")
def ask():
    while time.monotonic() < end:
        try: os.getxattr(f, "user.vexfs.status")
        except OSError: time.sleep(0.01)
def rewrite():
    while time.monotonic() < end:
        shutil.copyfile(source, f)  # each copy is a new build of 100,000 rows
        time.sleep(2)
ts = [threading.Thread(target=ask) for _ in range(16)] + [threading.Thread(target=rewrite)]
for t in ts: t.start()
for t in ts: t.join()
""",
}


def user(name):
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
        return pwd.getpwnam(name)


def as_user(name, code, *args, **kw):
    return subprocess.Popen(["setpriv", f"--reuid={name}", f"--regid={name}", "--init-groups", PYTHON, "-c", code, *map(str, args)],
                            stdout=subprocess.PIPE, text=True, **kw)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))] * 1000 if xs else float("nan")


def victim_run(mnt, seconds):
    out, _ = as_user(VICTIM, VICTIM_LOOP, mnt, seconds).communicate(timeout=seconds + 600)
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--vexfs", default=str(REPO / ".build/release/vexfs"))
    ap.add_argument("--attacks", default=None, help="comma-separated names (default: all)")
    ap.add_argument("--options", default="", help="more mount options, e.g. io_uring or no_io_uring")
    args = ap.parse_args()
    victim, attacker = user(VICTIM), user(ATTACKER)
    work = Path(tempfile.mkdtemp(prefix="vexfs-hostile-"))
    os.chmod(work, 0o755)
    store, mnt = work / "store", work / "mnt"
    store.mkdir()
    mnt.mkdir()
    subprocess.run([args.vexfs, "mount", str(store), str(mnt), "-o", ",".join(["allow_other"] + ([args.options] if args.options else []))], check=True)
    try:
        os.chmod(mnt, 0o1777)
        v, a = mnt / "victim", mnt / "attacker"
        for d, who in ((v, victim), (a, attacker)):
            d.mkdir()
            os.chown(d, who.pw_uid, who.pw_gid)
        rng = np.random.default_rng(3)
        np.save(v / "base.npy", rng.normal(size=(2000, 3)).astype(np.float32))
        (v / "q.query").write_text("0.1 0.2 0.3")
        for f in ("base.npy", "q.query"):
            os.chown(v / f, victim.pw_uid, victim.pw_gid)
        # The attacker's material, made by root and handed over.
        many = work / "many.npy"
        np.save(many, rng.normal(size=(500_000, 1)).astype(np.float32))
        os.chmod(many, 0o644)
        build = work / "build.npy"
        np.save(build, rng.normal(size=(100_000, 32)).astype(np.float32))
        os.chmod(build, 0o644)
        header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1024), np.float32))
        header["shape"] = (200_000, 1024)
        with open(a / "sparse.npy", "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            f.truncate(f.tell() + 200_000 * 1024 * 4)
        np.save(a / "data.npy", rng.normal(size=(20_000, 3)).astype(np.float32))
        with open(a / "heavy.npy.query", "wb") as f:
            np.save(f, rng.normal(size=(1024, 3)).astype(np.float32))
        os.setxattr(a / "heavy.npy.query", "user.vexfs.ef", b"10000")
        for f in a.iterdir():
            os.chown(f, attacker.pw_uid, attacker.pw_gid)
        os.getxattr(a, "user.vexfs.count")
        idle = victim_run(mnt, args.seconds)
        rows = []
        chosen = args.attacks.split(",") if args.attacks else list(ATTACKS)
        for name, code in ATTACKS.items():
            if name not in chosen:
                continue
            extra = {"many-rows": [many], "status-waits": [build]}.get(name, [])
            proc = as_user(ATTACKER, code, mnt, args.seconds + 2, *extra)
            time.sleep(1)
            busy = victim_run(mnt, args.seconds)
            proc.communicate(timeout=args.seconds + 600)
            rows.append((name, busy))
        print(f"victim: {args.seconds:.0f} s of create + stat + knn.5 per attack; attacker: {ATTACKER}; times in ms")
        print(f"{'attack':<17}{'step':<8}{'idle p50':>9}{'idle p99':>9}{'busy p50':>9}{'busy p99':>9}{'p99 ratio':>10}")
        for name, busy in rows:
            for step in ("create", "stat", "query"):
                i50, i99, b50, b99 = pct(idle[step], 50), pct(idle[step], 99), pct(busy[step], 50), pct(busy[step], 99)
                print(f"{name:<17}{step:<8}{i50:>9.2f}{i99:>9.2f}{b50:>9.2f}{b99:>9.2f}{b99 / i99:>10.2f}")
    finally:
        subprocess.run([args.vexfs, "unmount", str(mnt)], check=False, timeout=900)
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
