"""FUSE requests per common operation, for vexfs and for libfuse's passthrough_hp side by side.

    python3 benchmarks/fuse/requests.py [--vexfs BIN] [--passthrough-hp BIN] [-n N] [-o OPTIONS]

Each operation runs N times (on N files, or once over a directory of N files) on a fresh mount whose
store was filled beforehand (so the first touch of a name is cold), and the table gives the requests
the kernel sent per file, by opcode. vexfs's counts come from its per-operation counters,
read over HTTP (`-o metrics=PORT`, so reading them costs the mount nothing); passthrough_hp's from
its libfuse debug output (`--debug-fuse`), counted once the mount is quiet.
INIT, INTERRUPT and DESTROY are not counted on either side. Prints a Markdown table.
"""
import argparse
import collections
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# vexfs's operation names (Stats.swift) -> the kernel's opcode names, as libfuse's debug output spells them.
VEXFS_OPS = {
    "lookup": "LOOKUP", "forget": "FORGET", "forgetMulti": "BATCH_FORGET", "getattr": "GETATTR",
    "setattr": "SETATTR", "readlink": "READLINK", "mknod": "MKNOD", "mkdir": "MKDIR", "unlink": "UNLINK",
    "rmdir": "RMDIR", "symlink": "SYMLINK", "rename": "RENAME", "link": "LINK", "open": "OPEN",
    "read": "READ", "writeBuf": "WRITE", "flush": "FLUSH", "release": "RELEASE", "fsync": "FSYNC",
    "opendir": "OPENDIR", "readdir": "READDIR", "readdirplus": "READDIRPLUS", "releasedir": "RELEASEDIR",
    "fsyncdir": "FSYNCDIR", "statfs": "STATFS", "setxattr": "SETXATTR", "getxattr": "GETXATTR",
    "listxattr": "LISTXATTR", "removexattr": "REMOVEXATTR", "access": "ACCESS", "create": "CREATE",
    "fallocate": "FALLOCATE", "copyFileRange": "COPY_FILE_RANGE", "lseek": "LSEEK", "ioctl": "IOCTL",
}
NOT_COUNTED = {"INIT", "INTERRUPT", "DESTROY"}


def fill_store(store, n):
    """What every operation finds already there, never touched through the mount before it runs."""
    for d in ("cold", "list", "rm", "mv"):
        os.makedirs(os.path.join(store, d))
        for i in range(n):
            with open(os.path.join(store, d, f"f{i:05d}"), "wb") as f:
                f.write(b"x" * 100)
    for j in range(10):
        sub = os.path.join(store, "tree", f"d{j}")
        os.makedirs(sub)
        for i in range(n // 10):
            with open(os.path.join(sub, f"f{i:05d}"), "wb") as f:
                f.write(b"x" * 100)
    os.makedirs(os.path.join(store, "new"))
    os.makedirs(os.path.join(store, "dirs"))


def operations(root, n):
    """(name, per, action): `per` is what the counts are divided by."""
    names = lambda d: [os.path.join(root, d, f"f{i:05d}") for i in range(n)]
    payload = b"x" * 100

    def create():
        for p in names("new"):
            fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
            os.write(fd, payload)
            os.close(fd)

    def stat():
        for p in names("cold"):
            os.stat(p)

    def run(*argv):
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, cwd="/")

    return [
        ("create+write+close", "file", create),
        ("stat, first time", "file", stat),
        ("stat, again", "file", stat),
        ("cat (names seen)", "file", lambda: run("cat", *names("cold"))),
        ("ls -l, first time", "file", lambda: run("ls", "-l", os.path.join(root, "list"))),
        ("ls -l, again", "file", lambda: run("ls", "-l", os.path.join(root, "list"))),
        ("rm (names unseen)", "file", lambda: run("rm", "-f", *names("rm"))),
        ("mv (names unseen)", "file", lambda: [os.rename(p, p + ".moved") for p in names("mv")]),
        ("mkdir", "directory", lambda: [os.mkdir(os.path.join(root, "dirs", f"d{i:05d}")) for i in range(n)]),
        ("du -s, first time", "file", lambda: run("du", "-s", os.path.join(root, "tree"))),
        ("du -s, again", "file", lambda: run("du", "-s", os.path.join(root, "tree"))),
    ]


def is_mounted(path):
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def settle(count, quiet=0.3, limit=10.0):
    """Waits until `count()` stops changing for `quiet` seconds (RELEASE and FORGET come late)."""
    last, since, start = count(), time.monotonic(), time.monotonic()
    while time.monotonic() - start < limit:
        time.sleep(0.05)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


class Vexfs:
    name = "vexfs"

    def __init__(self, binary, options):
        self.binary, self.options = binary, options

    def mount(self, store, root):
        self.root = root
        with socket.socket() as s:  # a free loopback port for the metrics
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        opts = ",".join(o for o in (self.options, f"metrics={self.port}") if o)
        subprocess.run([self.binary, "mount", store, root, "-o", opts], check=True, timeout=60)

    def unmount(self):
        subprocess.run([self.binary, "unmount", self.root], check=True, timeout=120)

    def _read(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            text = r.read().decode()
        counts = collections.Counter()
        for op, n in re.findall(r'^vexfs_fuse_requests_total\{op="(\w+)"\} (\d+)', text, re.M):
            counts[VEXFS_OPS.get(op, op)] = int(n)
        return counts

    def counts(self):
        return settle(self._read)


class PassthroughHP:
    name = "passthrough_hp"

    def __init__(self, binary):
        self.binary = binary

    def mount(self, store, root):
        self.root = root
        self.log = tempfile.NamedTemporaryFile(prefix="requests-phs-", suffix=".log", delete=False)
        # --debug-fuse prints one line per request; it runs in the foreground, so it is started here
        # and stopped by the unmount.
        self.proc = subprocess.Popen([self.binary, "--foreground", "--debug-fuse", store, root],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(200):
            if is_mounted(root):
                return
            time.sleep(0.05)
        self.proc.kill()
        raise RuntimeError("passthrough_hp did not mount")

    def unmount(self):
        subprocess.run(["fusermount3", "-u", self.root], check=True, timeout=60)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.unlink(self.log.name)

    def _read(self):
        with open(self.log.name, errors="replace") as f:
            ops = re.findall(r"opcode: (\w+) \(\d+\)", f.read())
        return collections.Counter(op for op in ops if op not in NOT_COUNTED)

    def counts(self):
        return settle(self._read)


def measure(fs, n, workdir):
    store, root = os.path.join(workdir, f"{fs.name}-store"), os.path.join(workdir, f"{fs.name}-mnt")
    os.makedirs(root)
    fill_store(store, n)
    fs.mount(store, root)
    results = {}
    try:
        for name, per, action in operations(root, n):
            before = fs.counts()
            action()
            after = fs.counts()
            diff = after - before
            results[name] = (per, {op: c for op, c in diff.items() if c > 0})
    finally:
        fs.unmount()
    return results


def cell(counts, n):
    total = sum(counts.values()) / n
    parts = ", ".join(f"{op} {c / n:.2g}" for op, c in sorted(counts.items(), key=lambda kv: -kv[1]))
    return f"**{total:.2f}** ({parts})" if parts else "**0**"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vexfs", default=os.environ.get("VEXFS_BIN", os.path.join(REPO, ".build/release/vexfs")))
    ap.add_argument("--passthrough-hp", default="/var/tmp/libfuse/build/example/passthrough_hp",
                    help="libfuse's example/passthrough_hp, built from libfuse's source")
    ap.add_argument("-n", type=int, default=200, help="files per operation (a multiple of 10)")
    ap.add_argument("-o", default="", help="vexfs mount options")
    args = ap.parse_args()
    systems = [Vexfs(args.vexfs, args.o)]
    if os.access(args.passthrough_hp, os.X_OK):
        systems.append(PassthroughHP(args.passthrough_hp))
    else:
        print(f"(no passthrough_hp at {args.passthrough_hp}: vexfs alone)", file=sys.stderr)
    workdir = tempfile.mkdtemp(prefix="fuse-requests-", dir="/tmp")
    try:
        table = {fs.name: measure(fs, args.n, workdir) for fs in systems}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    names = [fs.name for fs in systems]
    print(f"Requests per file (N = {args.n}), by opcode\n")
    print("| operation | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for op in table[names[0]]:
        per = table[names[0]][op][0]
        print(f"| {op} (per {per}) | " + " | ".join(cell(table[s][op][1], args.n) for s in names) + " |")


if __name__ == "__main__":
    main()
