"""A one-node CephFS for the mount-tests: `scripts/ceph-up` in a temporary directory, two `ceph-fuse`
clients standing for two machines (A and B), and `scripts/ceph-down` afterwards, also when a test or the
bring-up fails. Tests use it by importing the fixture: `from ceph import ceph_machines`.

Without the ceph packages (scripts/setup installs them), root or /dev/fuse the tests are skipped,
saying why; a cluster that does not come up where they are installed is an error, not a skip."""
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO, is_mounted

TOOLS = ("ceph-mon", "ceph-mgr", "ceph-osd", "ceph-mds", "ceph-fuse", "ceph", "monmaptool", "uuidgen")
UP, DOWN = REPO / "scripts" / "ceph-up", REPO / "scripts" / "ceph-down"


def why_not():
    """Why no cluster can come up on this machine, or None."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"ceph is not installed (missing {' '.join(missing)}; scripts/setup installs it)"
    if os.geteuid() != 0:
        return "a ceph cluster and ceph-fuse mounts need root"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    return None


def gone(pid):
    """No such process, or a zombie (stopped daemons linger as zombies here)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


@dataclass
class Cluster:
    dir: Path
    up_seconds: float = 0.0

    @property
    def conf(self):
        return self.dir / "ceph.conf"

    def mount(self, name, mountpoint):
        """A ceph-fuse client named client.NAME on MOUNTPOINT: one "machine". ceph-down unmounts it."""
        mountpoint = Path(mountpoint)
        mountpoint.mkdir(parents=True, exist_ok=True)
        # Recorded before mounting, so that a half-made mount is taken away too.
        with open(self.dir / "clients", "a") as f:
            f.write(f"{mountpoint.resolve()}\n")
        subprocess.run(["ceph-fuse", "-c", str(self.conf), "--id", name, str(mountpoint)],
                       check=True, timeout=120, capture_output=True)
        assert is_mounted(mountpoint)
        return mountpoint

    def unmount(self, name, mountpoint):
        """Unmount one client and wait for its ceph-fuse to close its MDS session and exit."""
        pid = int((self.dir / "run" / f"client.{name}.pid").read_text())
        subprocess.run(["umount", str(mountpoint)], check=True, timeout=60)
        for _ in range(600):
            if gone(pid):
                return
            time.sleep(0.05)
        raise AssertionError(f"ceph-fuse client.{name} (pid {pid}) did not exit within 30 s of its unmount")


@dataclass
class Machines:
    """Two clients of one CephFS: `a` and `b` are their mount points (the same tree, seen twice)."""
    a: Path
    b: Path
    cluster: Cluster


@pytest.fixture(scope="module")
def ceph_machines(tmp_path_factory):
    reason = why_not()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("ceph")
    cluster = Cluster(base / "cluster")
    try:
        began = time.monotonic()
        up = subprocess.run([str(UP), str(cluster.dir)], timeout=300, capture_output=True, text=True)
        if up.returncode:
            pytest.fail(f"scripts/ceph-up failed:\n{up.stdout}{up.stderr}", pytrace=False)
        cluster.up_seconds = time.monotonic() - began
        a = cluster.mount("machineA", base / "A")
        b = cluster.mount("machineB", base / "B")
        yield Machines(a, b, cluster)
    finally:
        # Also after a failed bring-up: ceph-down stops whatever is running and is a no-op otherwise.
        down = subprocess.run([str(DOWN), str(cluster.dir)], timeout=300, capture_output=True, text=True)
        assert down.returncode == 0, f"scripts/ceph-down failed:\n{down.stdout}{down.stderr}"
