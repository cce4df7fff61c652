"""Tree walks: `ls -lR` and `du -s` over N one-byte files in D directories, written straight into a
store under /var/tmp, on the native directory and on vexfs mounted over it with each given -o list
("default" for none). Cold: after drop_caches; warm: the second run. Prints seconds, and the getxattr
requests each walk sent to the daemon.

    python3 benchmarks/fio/walk.py VEXFS_BINARY N D native no_posix_acl default
"""
import os, re, subprocess, sys, time, shutil
from pathlib import Path

V = sys.argv[1]
N, D = int(sys.argv[2]), int(sys.argv[3])
variants = sys.argv[4:]  # each an -o list, or "native"
base = Path("/var/tmp/walk11")
shutil.rmtree(base, ignore_errors=True)
store = base / "store"
for d in range(D):
    p = store / f"d{d:03d}"
    p.mkdir(parents=True)
    for i in range(N // D):
        (p / f"f{i:05d}").write_bytes(b"x")

def timed(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t

def drop():
    subprocess.run(["sync"])
    Path("/proc/sys/vm/drop_caches").write_text("3\n")

def getxattrs(mnt):
    s = (mnt / ".vexfs" / "stats").read_text()
    m = re.search(r'vexfs_fuse_requests_total\{op="getxattr"\} (\d+)', s)
    return int(m.group(1)) if m else 0

for v in variants:
    if v == "native":
        root = store
    else:
        root = base / "mnt"
        root.mkdir(exist_ok=True)
        subprocess.run([V, "mount", str(store), str(root)] + (["-o", v] if v != "default" else []), check=True)
    try:
        out = {}
        for tool, cmd in (("ls -lR", ["ls", "-lR", str(root)]), ("du -s", ["du", "-s", str(root)])):
            drop()
            x0 = getxattrs(root) if v != "native" else 0
            out[f"{tool} cold"] = timed(cmd)
            x1 = getxattrs(root) if v != "native" else 0
            out[f"{tool} warm"] = timed(cmd)
            x2 = getxattrs(root) if v != "native" else 0
            out[f"{tool} getxattr cold/warm"] = (x1 - x0, x2 - x1)
        print(v, {k: (round(x, 2) if isinstance(x, float) else x) for k, x in out.items()}, flush=True)
    finally:
        if v != "native":
            subprocess.run(["fusermount3", "-u", str(root)], check=True)
            time.sleep(1)
shutil.rmtree(base, ignore_errors=True)
