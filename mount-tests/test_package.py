"""The Debian package (issue 27): `scripts/package` makes it; this installs it with dpkg -i, checks what
it holds, mounts a store through an fstab line as an operator would, asks again after a remount, and
removes it with dpkg -r (then purges it), leaving the machine as it was. Set VEXFS_DEB to the package to
test (`VEXFS_DEB=$(scripts/package)`); scripts/test builds one after the other mount-tests."""
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import daemon_pid, is_mounted

DEB = os.environ.get("VEXFS_DEB")
FILES = ["/usr/bin/vexfs", "/usr/sbin/mount.vexfs", "/usr/sbin/mount.fuse.vexfs", "/lib/systemd/system/vexfs@.service",
         "/usr/share/man/man1/vexfs.1.gz", "/usr/share/man/man1/vexfs-mount.1.gz", "/usr/share/man/man1/vexfs-wait.1.gz",
         "/usr/share/bash-completion/completions/vexfs", "/usr/share/zsh/vendor-completions/_vexfs",
         "/usr/share/fish/vendor_completions.d/vexfs.fish", "/usr/share/vexfs/grafana/vexfs.json"]

pytestmark = pytest.mark.skipif(not DEB, reason="set VEXFS_DEB to a package made by scripts/package")


def installed():
    return subprocess.run(["dpkg-query", "-W", "-f=${Status}", "vexfs"], capture_output=True, text=True).stdout


def knn(path):
    return [line.split("\t")[0] for line in os.getxattr(path, "user.vexfs.knn.5").decode().splitlines()]


def test_install_mount_through_fstab_and_remove(tmp_path):
    if installed().strip():
        pytest.skip("a vexfs package is installed already: not touching it")
    if any(os.path.lexists(f) for f in FILES):
        pytest.skip("files the package would own exist already")
    store, root = tmp_path / "store", tmp_path / "mnt"
    store.mkdir()
    root.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{store} {root} fuse.vexfs defaults,_netdev,nofail,x-systemd.automount 0 0\n")
    try:
        subprocess.run(["dpkg", "-i", DEB], check=True, capture_output=True, timeout=120)
        assert installed() == "install ok installed"
        owned = subprocess.run(["dpkg", "-L", "vexfs"], capture_output=True, text=True, check=True).stdout.split()
        assert set(FILES) <= set(owned)
        assert "libswift" not in subprocess.run(["ldd", "/usr/bin/vexfs"], capture_output=True, text=True).stdout
        assert subprocess.run(["man", "-w", "vexfs-status"], capture_output=True).returncode == 0
        r = subprocess.run(["bash", "-c", "source /usr/share/bash-completion/completions/vexfs && complete -p vexfs"],
                           capture_output=True, text=True)
        assert r.returncode == 0 and "vexfs" in r.stdout
        r = subprocess.run(["systemd-analyze", "verify", "/lib/systemd/system/vexfs@.service"], capture_output=True, text=True)
        assert (r.returncode, r.stdout + r.stderr) == (0, ""), r.stderr

        for attempt in range(2):
            subprocess.run(["mount", "-T", str(fstab), str(root)], check=True, timeout=60)
            assert is_mounted(root)
            c = root / "c"
            if attempt == 0:
                c.mkdir()
                for i in range(10):
                    (c / f"v{i}.vec").write_text(f"{i} {-i} 1\n")
                first = knn(c / "v0.vec")
            assert knn(c / "v0.vec") == first
            status = subprocess.run(["vexfs", "status", str(root)], capture_output=True, text=True, check=True).stdout
            assert "1 collections, 10 vectors" in status
            pid = daemon_pid(store)
            subprocess.run(["umount", str(root)], check=True, timeout=60)
            while pid and Path(f"/proc/{pid}").exists():
                time.sleep(0.05)
    finally:
        if is_mounted(root):
            subprocess.run(["fusermount3", "-u", "-z", str(root)], timeout=30)
        if installed().strip():
            subprocess.run(["dpkg", "-r", "vexfs"], check=True, capture_output=True, timeout=120)
            subprocess.run(["dpkg", "--purge", "vexfs"], check=True, capture_output=True, timeout=120)  # no conffiles: a no-op
    assert installed() == ""
    assert not any(os.path.lexists(f) for f in FILES)
