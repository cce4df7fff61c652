"""How requests reach the daemon: FUSE over io_uring where the kernel offers it, /dev/fuse otherwise,
and `.vexfs/stats` saying which and why. (scripts/test runs every other mount-test over both.)"""
import errno
import os
import subprocess
from pathlib import Path

import pytest

from conftest import VEXFS, daemon_pid, is_mounted
from test_posix import parse_prometheus

ENABLE_URING = Path("/sys/module/fuse/parameters/enable_uring")


def uring_enabled():
    return ENABLE_URING.exists() and ENABLE_URING.read_text().strip() == "Y"


def transport(m):
    """(reason, value) of the one vexfs_fuse_transport series."""
    stats = parse_prometheus((m.root / ".vexfs" / "stats").read_text())
    series = [(labels, v) for (name, labels), v in stats.items() if name == "vexfs_fuse_transport"]
    assert len(series) == 1, series
    labels, value = series[0]
    return labels.removeprefix('reason="').removesuffix('"'), value


def mount_exactly(m, *options):
    """Mounts with these options alone (not the suite's VEXFS_MOUNT_OPTIONS): the test is about them."""
    subprocess.run([VEXFS, "mount", str(m.store), str(m.root), *options], check=True, timeout=60)
    assert is_mounted(m.root)
    m.pid = daemon_pid(m.store)


def ring_descriptors(pid):
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[io_uring]":
                count += 1
        except OSError:
            pass
    return count


def exercise(root):
    """What a user does, through whichever transport: files, a listing, a rename, a vector query."""
    (root / "c").mkdir()
    for i in range(50):
        (root / "c" / f"{i}.vec").write_text(f"{i} {i % 7} 1")
    (root / "c" / "7.vec").rename(root / "c" / "seven.vec")
    (root / "c" / "3.vec").unlink()
    assert len(list((root / "c").iterdir())) == 49
    big = os.urandom(3 << 20)  # larger than one request: READ and WRITE in pieces without passthrough
    (root / "big").write_bytes(big)
    assert (root / "big").read_bytes() == big
    return os.getxattr(root / "c" / "seven.vec", "user.vexfs.knn.3").decode().splitlines()


def test_no_io_uring_keeps_dev_fuse_and_says_so(make_mount):
    m = make_mount()
    mount_exactly(m, "-o", "no_io_uring")
    assert transport(m) == ("/dev/fuse: turned off by -o no_io_uring", 0)
    assert ring_descriptors(m.pid) == 0
    exercise(m.root)


def test_without_the_kernels_switch_dev_fuse_says_why(make_mount):
    if uring_enabled():
        pytest.skip("fuse.enable_uring is Y here: the kernel offers io_uring")
    m = make_mount()
    mount_exactly(m)
    reason, value = transport(m)
    assert value == 0 and "enable_uring" in reason


@pytest.mark.parametrize("passthrough", [True, False])
def test_io_uring_serves_everything_and_survives_a_remount(make_mount, passthrough):
    if not uring_enabled():
        pytest.skip("the kernel does not offer FUSE over io_uring (fuse.enable_uring is not Y)")
    options = ["-o", "io_uring" if passthrough else "io_uring,no_passthrough"]
    m = make_mount()
    mount_exactly(m, *options)
    assert transport(m) == ("io_uring", 1)
    # One ring per entry, at least one entry for each CPU's queue.
    assert ring_descriptors(m.pid) >= os.cpu_count()
    first = exercise(m.root)
    assert first[0].startswith("seven.vec") or len(first) == 3
    m.unmount()
    mount_exactly(m, *options)
    assert transport(m) == ("io_uring", 1)
    assert os.getxattr(m.root / "c" / "seven.vec", "user.vexfs.knn.3").decode().splitlines() == first
    assert (m.root / "big").stat().st_size == 3 << 20


def test_by_default_the_rings_serve_only_with_passthrough(make_mount):
    """Without -o io_uring or no_io_uring, the rings serve only when the kernel reads and writes open
    files itself: a file's data through the daemon is read faster over /dev/fuse (splice). Both
    serve what a user does, also after a remount."""
    if not uring_enabled():
        pytest.skip("the kernel does not offer FUSE over io_uring (fuse.enable_uring is not Y)")
    m = make_mount()
    mount_exactly(m)
    assert transport(m) == ("io_uring", 1)
    plain = make_mount()
    mount_exactly(plain, "-o", "no_passthrough")
    reason, value = transport(plain)
    assert value == 0 and reason.startswith("/dev/fuse: file data goes through the daemon"), reason
    first = exercise(plain.root)
    plain.unmount()
    mount_exactly(plain, "-o", "no_passthrough")
    assert os.getxattr(plain.root / "c" / "seven.vec", "user.vexfs.knn.3").decode().splitlines() == first


def test_ls_l_asks_a_mount_for_selinux_labels_once(make_mount):
    """ls -l asks every file for its SELinux label and stops asking a mount that answers "not
    supported": a file without a label says so (other missing attributes stay ENODATA), a file with a
    label still has it, also after a remount, and a second ls -l of 60 files costs at most two
    GETXATTR requests instead of one per file."""
    if Path("/sys/fs/selinux").exists():
        pytest.skip("SELinux answers labels in the kernel: the daemon never sees the request")
    m = make_mount()
    m.mount()
    d = m.root / "d"
    d.mkdir()
    for i in range(60):
        (d / f"f{i}").write_bytes(b"x")
    with pytest.raises(OSError) as missing:
        os.getxattr(d / "f0", "security.selinux")
    assert missing.value.errno == errno.EOPNOTSUPP
    with pytest.raises(OSError) as other:
        os.getxattr(d / "f0", "user.absent")
    assert other.value.errno == errno.ENODATA
    label = b"system_u:object_r:tmp_t:s0"
    os.setxattr(d / "f1", "security.selinux", label)
    assert os.getxattr(d / "f1", "security.selinux") == label

    def getxattrs():
        stats = parse_prometheus((m.root / ".vexfs" / "stats").read_text())
        return stats.get(("vexfs_fuse_requests_total", 'op="getxattr"'), 0)

    subprocess.run(["ls", "-l", str(d)], check=True, stdout=subprocess.DEVNULL)
    before = getxattrs()
    subprocess.run(["ls", "-l", str(d)], check=True, stdout=subprocess.DEVNULL)
    assert getxattrs() - before <= 2
    m.unmount()
    m.mount()
    assert os.getxattr(m.root / "d" / "f1", "security.selinux") == label
    with pytest.raises(OSError) as again:
        os.getxattr(m.root / "d" / "f0", "security.selinux")
    assert again.value.errno == errno.EOPNOTSUPP
