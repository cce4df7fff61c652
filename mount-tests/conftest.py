"""Fixtures that mount a real vexfs on a temporary store and always unmount it, also when a test fails."""
import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VEXFS = os.environ.get("VEXFS_BIN", str(REPO / ".build" / "release" / "vexfs"))
# Options every fixture mount adds after its own (scripts/test runs the suite once with no_io_uring,
# once with io_uring, so both transports carry every test).
EXTRA_OPTIONS = ["-o", os.environ["VEXFS_MOUNT_OPTIONS"]] if os.environ.get("VEXFS_MOUNT_OPTIONS") else []


def is_mounted(path):
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def daemon_pid(store):
    try:
        return int(Path(store, ".vexfs", "mount.lock").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class Mount:
    """One vexfs mount: `store` is the backing directory, `root` the mountpoint."""

    def __init__(self, store, root, options=()):
        self.store, self.root, self.options = Path(store), Path(root), list(options)
        self.pid = None

    def mount(self, *extra):
        cmd = [VEXFS, "mount", str(self.store), str(self.root), *self.options, *extra, *EXTRA_OPTIONS]
        subprocess.run(cmd, check=True, timeout=60)
        assert is_mounted(self.root)
        self.pid = daemon_pid(self.store)

    def unmount(self):
        if is_mounted(self.root):
            subprocess.run([VEXFS, "unmount", str(self.root)], check=True, timeout=120)
        assert not is_mounted(self.root)

    def kill9(self):
        """kill -9 the daemon and clear its mount, as a crash would leave it."""
        os.kill(self.pid, signal.SIGKILL)
        for _ in range(200):
            try:
                os.kill(self.pid, 0)
                time.sleep(0.05)
            except ProcessLookupError:
                break
        subprocess.run(["fusermount3", "-u", "-z", str(self.root)], check=False)
        assert not is_mounted(self.root)

    def cleanup(self):
        """Last resort after a failure: lazy unmount, then stop the daemon we started, by its pid."""
        if is_mounted(self.root):
            subprocess.run(["fusermount3", "-u", "-z", str(self.root)], timeout=30)
        if self.pid:
            for _ in range(100):
                try:
                    os.kill(self.pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                os.kill(self.pid, signal.SIGKILL)

    def __truediv__(self, name):
        return self.root / name


@pytest.fixture
def make_mount(tmp_path):
    """Factory: make_mount(options...) -> an unmounted Mount on fresh directories; all are cleaned up."""
    made = []

    def make(*options, store=None):
        n = len(made)
        store = Path(store) if store else tmp_path / f"store{n}"
        root = tmp_path / f"mnt{n}"
        store.mkdir(exist_ok=True)
        root.mkdir()
        m = Mount(store, root, options)
        made.append(m)
        return m

    yield make
    for m in made:
        try:
            m.unmount()
        finally:
            m.cleanup()


@pytest.fixture
def mnt(make_mount):
    """A mounted vexfs (allow_other, so other uids can be tested)."""
    m = make_mount("-o", "allow_other")
    m.mount()
    return m


@pytest.fixture
def plain(tmp_path):
    """An ordinary directory on the same disk, to compare against."""
    d = tmp_path / "plain"
    d.mkdir()
    return d


class FakeEmbedder:
    """An OpenAI-compatible embeddings endpoint on loopback: each text's vector comes from its hash.
    Each request takes `delay` seconds: a slow endpoint."""

    def __init__(self, port, delay=0.0):
        self.port, self.server, self.requests, self.delay = port, None, 0, delay
        self.texts = []

    def start(self):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests += 1
                outer.texts += body["input"]
                time.sleep(outer.delay)
                data = [{"object": "embedding", "index": i,
                         "embedding": [b / 255 - 0.5 for b in hashlib.sha256(t.encode()).digest()[:8]]}
                        for i, t in enumerate(body["input"])]
                out = json.dumps({"object": "list", "data": data, "model": body["model"]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
