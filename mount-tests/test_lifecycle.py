"""Mounting, detaching, signals, unmounting, persistence across remounts, and the errors a user can make."""
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import VEXFS, Mount, daemon_pid, is_mounted


def run(*args, **kw):
    return subprocess.run([VEXFS, *args], capture_output=True, text=True, timeout=60, **kw)


def wait_until(cond, seconds=20):
    end = time.time() + seconds
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def threads_of(pid):
    """Each thread's name, state and kernel stack, for a daemon that hangs."""
    lines = []
    for tid in sorted(os.listdir(f"/proc/{pid}/task")):
        base = f"/proc/{pid}/task/{tid}"
        try:
            state = open(f"{base}/stat").read().rsplit(")", 1)[1].split()[0]
            stack = open(f"{base}/stack").read().replace("\n", " | ")
            lines.append(f"{tid} {open(base + '/comm').read().strip()} {state} {open(base + '/wchan').read()} {stack}")
        except OSError as e:
            lines.append(f"{tid}: {e}")
    return "\n".join(lines)


def running(pid):
    """True while pid is a live process (a zombie awaiting its reaper has finished)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_files_persist_across_remount(make_mount):
    m = make_mount()
    m.mount()
    (m.root / "dir").mkdir()
    (m.root / "dir" / "keep.txt").write_text("kept")
    os.symlink("dir/keep.txt", m.root / "link")
    os.setxattr(m.root / "dir" / "keep.txt", "user.tag", b"v1")
    m.unmount()
    assert (m.store / "dir" / "keep.txt").read_text() == "kept"  # the data is never hostage
    assert sorted(os.listdir(m.store)) == [".vexfs", "dir", "link"]
    (m.store / "added-while-unmounted").write_text("new")
    m.mount()
    assert (m.root / "link").read_text() == "kept"
    assert os.getxattr(m.root / "dir" / "keep.txt", "user.tag") == b"v1"
    assert (m.root / "added-while-unmounted").read_text() == "new"


def test_detaches_and_unmount_waits_for_the_daemon(make_mount):
    m = make_mount()
    m.mount()
    pid = daemon_pid(m.store)
    assert pid and pid != os.getpid()
    assert os.getppid() != pid
    result = run("unmount", str(m.root))
    assert result.returncode == 0, result.stderr
    assert not is_mounted(m.root)
    assert not running(pid), "the daemon had finished when unmount returned"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_foreground_mount_ends_cleanly_on_signal(make_mount, sig):
    m = make_mount()
    # As from a terminal: a shell running this in the background hands its children SIGINT ignored,
    # and libfuse (like nohup's users expect) leaves an ignored signal ignored.
    proc = subprocess.Popen([VEXFS, "mount", str(m.store), str(m.root), "-f"],
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert wait_until(lambda: is_mounted(m.root))
        (m.root / "f").write_text("x")
        proc.send_signal(sig)
        try:
            status = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the daemon did not end within 30 s of signal {sig}; its threads:\n{threads_of(proc.pid)}")
        assert status == 0
        assert not is_mounted(m.root)
        assert (m.store / "f").read_text() == "x"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_fusermount_unmount_works_too(make_mount):
    m = make_mount()
    m.mount()
    pid = m.pid
    subprocess.run(["fusermount3", "-u", str(m.root)], check=True)
    assert wait_until(lambda: not running(pid))


def test_missing_store(tmp_path):
    (tmp_path / "mp").mkdir()
    r = run("mount", str(tmp_path / "nope"), str(tmp_path / "mp"))
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr


def test_missing_mountpoint(tmp_path):
    (tmp_path / "s").mkdir()
    r = run("mount", str(tmp_path / "s"), str(tmp_path / "nope"))
    assert r.returncode != 0 and "does not exist" in r.stderr


def test_busy_mountpoint_and_store_mounted_twice(make_mount, tmp_path):
    m = make_mount()
    m.mount()
    other = tmp_path / "other"
    other.mkdir()
    r = run("mount", str(other), str(m.root))
    assert r.returncode != 0 and "busy" in r.stderr
    second = tmp_path / "second-mp"
    second.mkdir()
    # A second daemon for the store is refused (a shared one while a plain one serves, here)...
    r = run("mount", str(m.store), str(second), "-o", "shared=other")
    assert r.returncode != 0 and "without -o shared" in r.stderr
    assert not is_mounted(second)
    # ...while a plain second mount shows the mount that is there (test_xfstests_fixes: generic/732).
    r = run("mount", str(m.store), str(second))
    assert r.returncode == 0, r.stderr
    (m.root / "f").write_text("x")
    assert (second / "f").read_text() == "x"
    assert run("unmount", str(second)).returncode == 0
    assert not is_mounted(second) and is_mounted(m.root)


def test_store_inside_mountpoint_is_refused(tmp_path):
    (tmp_path / "mp" / "store").mkdir(parents=True)
    r = run("mount", str(tmp_path / "mp" / "store"), str(tmp_path / "mp"))
    assert r.returncode != 0 and "contain" in r.stderr


def test_bad_options(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "mp").mkdir()
    for args in (["-o", "attr_timeout=-1"], ["-o", "entry_timeout=abc"], ["--threads", "0"]):
        r = run("mount", str(tmp_path / "s"), str(tmp_path / "mp"), *args)
        assert r.returncode != 0 and r.stderr.strip(), args
    assert not is_mounted(tmp_path / "mp")


def test_unmount_of_something_else(tmp_path):
    r = run("unmount", str(tmp_path))
    assert r.returncode != 0 and "not a vexfs mount" in r.stderr


def test_relative_paths_and_options(make_mount, tmp_path):
    m = make_mount()
    subprocess.run([VEXFS, "mount", m.store.name, m.root.name, "--threads", "4",
                    "-o", "no_writeback,attr_timeout=0,entry_timeout=0,no_keep_cache"], cwd=tmp_path, check=True)
    m.pid = daemon_pid(m.store)
    (m.root / "rel").write_text("ok")
    # With no caching, a change made in STORE shows through at once.
    (m.store / "rel").write_text("changed")
    assert (m.root / "rel").read_text() == "changed"


def test_missing_dev_fuse(tmp_path):
    """In a mount namespace whose /dev has no fuse device."""
    (tmp_path / "s").mkdir()
    (tmp_path / "mp").mkdir()
    script = f"mount -t tmpfs none /dev && exec {VEXFS} mount {tmp_path / 's'} {tmp_path / 'mp'}"
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "/dev/fuse" in r.stderr and r.stderr.strip().count("\n") == 0
    assert not is_mounted(tmp_path / "mp")


def test_simd_path_can_be_forced_and_a_missing_one_is_an_error():
    fast = ["bench", "kernels", "--scan-rows", "1000", "--dims", "16", "--trials", "1", "--json"]
    r = subprocess.run([VEXFS, *fast], capture_output=True, text=True, timeout=120, env={**os.environ, "VEXFS_SIMD": "scalar"})
    assert r.returncode == 0, r.stderr
    assert {json.loads(l)["path"] for l in r.stdout.splitlines() if '"scan"' in l} == {"scalar"}
    r = subprocess.run([VEXFS, *fast], capture_output=True, text=True, timeout=120, env={**os.environ, "VEXFS_SIMD": "sse9"})
    assert r.returncode != 0 and "VEXFS_SIMD=sse9" in r.stderr and "Traceback" not in r.stderr
