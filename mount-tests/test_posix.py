"""Each scenario runs the same steps on the vexfs mount and on a plain directory and must observe the
same results; then the backing store must hold exactly what was written through the mount."""
import ctypes
import errno
import fcntl
import hashlib
import os
import re
import stat
import struct
import subprocess
from pathlib import Path

import pytest

libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def renameat2(src, dst, flags):
    if libc.renameat2(AT_FDCWD, str(src).encode(), AT_FDCWD, str(dst).encode(), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def outcome(fn, *args):
    """A call's result, or the name of the errno it raised."""
    try:
        r = fn(*args)
        return r if r is not None else "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, e.errno)


def shape(st):
    """What a stat must agree on between the mount and a plain directory."""
    return (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size, st.st_nlink, st.st_uid, st.st_gid)


def tree(root):
    """Every path under root with its type, mode, size, link target and content hash."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            if rel == ".vexfs" or rel.startswith(".vexfs/"):
                continue
            st = os.lstat(p)
            entry = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_nlink]
            if stat.S_ISLNK(st.st_mode):
                entry.append(os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                entry += [st.st_size, digest(p)]
            out[rel] = tuple(entry)
    return out


def digest(path, limit=64 << 20):
    """Content hash; for huge (sparse) files, of the first 64 MiB and the last MiB only."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size <= limit:
            h.update(f.read())
        else:
            h.update(f.read(limit))
            f.seek(size - (1 << 20))
            h.update(f.read())
    return h.hexdigest()


def same_on_both(scenario, mnt, plain):
    """Runs `scenario` in a fresh directory on each side (the mount's top also shows .vexfs/)."""
    ours_dir, theirs_dir = mnt.root / "work", plain / "work"
    ours_dir.mkdir()
    theirs_dir.mkdir()
    ours = scenario(ours_dir)
    theirs = scenario(theirs_dir)
    assert ours == theirs
    assert tree(ours_dir) == tree(theirs_dir)
    assert tree(mnt.store / "work") == tree(theirs_dir), "the backing store must hold what was written"
    return ours


def test_create_read_write_append(mnt, plain):
    def steps(root):
        r = []
        p = root / "a.txt"
        p.write_text("hello\n")
        with open(p, "a") as f:
            f.write("world\n")
        r.append(p.read_text())
        fd = os.open(root / "b.bin", os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o640)
        os.write(fd, b"x" * 10000)
        os.pwrite(fd, b"middle", 5000)
        os.close(fd)
        r.append(outcome(os.open, root / "b.bin", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        with open(root / "b.bin", "rb") as f:
            f.seek(4998)
            r.append(f.read(10))
        r.append(shape(os.stat(root / "b.bin"))[:4])
        fd = os.open(root / "wo", os.O_CREAT | os.O_WRONLY, 0o600)  # write-only, under writeback
        os.write(fd, b"abc")
        os.lseek(fd, 1, os.SEEK_SET)
        os.write(fd, b"Z")
        os.close(fd)
        r.append((root / "wo").read_bytes())
        r.append(outcome(os.open, root / "missing", os.O_RDONLY))
        return r

    same_on_both(steps, mnt, plain)


def test_shell_tools(mnt, plain):
    def steps(root):
        sh = lambda c: subprocess.run(c, shell=True, cwd=root, capture_output=True, text=True)
        r = [sh("echo one > f && cat f").stdout]
        sh("cp f g && mv g h && ln h hard && ln -s f soft && mkdir -p d/e && touch d/e/t && chmod 600 h")
        sh("truncate -s 100 f && truncate -s 3 soft")
        r.append(sh("cat soft").stdout)
        r.append(sh("ls").stdout)
        r.append(sh("ls -la d/e | tail -n +2 | awk '{print $1, $2, $5, $9}'").stdout)
        r.append(sh("ls -l --time-style=+ | tail -n +2 | awk '{print $1, $2, $5, $NF}'").stdout)
        r.append(sh("stat -c '%A %h %s %F' f h hard soft d").stdout)
        r.append(sh("rm hard && rm -r d && ls").stdout)
        return r

    same_on_both(steps, mnt, plain)


def test_truncate_and_sparse(mnt, plain):
    def steps(root):
        r = []
        p = root / "s"
        p.write_bytes(b"0123456789")
        os.truncate(p, 4)
        r.append(p.read_bytes())
        os.truncate(p, 1 << 30)  # 1 GiB, all hole
        st = os.stat(p)
        r.append((st.st_size, st.st_blocks * 512 < 1 << 20))
        with open(p, "r+b") as f:
            f.seek(1 << 29)
            f.write(b"data")
            f.flush()
            os.fsync(f.fileno())
            fd = f.fileno()
            r.append(os.lseek(fd, 0, os.SEEK_DATA))
            r.append(os.lseek(fd, 0, os.SEEK_HOLE))
            r.append(os.lseek(fd, (1 << 29) - 4096, os.SEEK_DATA) <= 1 << 29)
            r.append(outcome(os.lseek, fd, (1 << 30) + 10, os.SEEK_DATA))
            f.truncate(8)  # ftruncate on an open file
        r.append(p.read_bytes())
        return r

    same_on_both(steps, mnt, plain)


def test_large_file(mnt, plain):
    def steps(root):
        p = root / "big"
        block = (hashlib.sha256(b"seed").digest() * 32768)[: 1 << 20]  # the same on both sides
        h = hashlib.sha256()
        with open(p, "wb") as f:
            for i in range(48):
                chunk = block[i:] + block[:i]
                f.write(chunk)
                h.update(chunk)
        with open(p, "r+b") as f:  # beyond 4 GiB
            f.seek((5 << 30) + 123)
            f.write(b"far")
        with open(p, "rb") as f:
            got = hashlib.sha256(f.read(48 << 20)).hexdigest()
            f.seek((5 << 30) + 123)
            far = f.read()
        return [got == h.hexdigest(), far, os.stat(p).st_size]

    same_on_both(steps, mnt, plain)


def test_chmod_chown_utimens(mnt, plain):
    def steps(root):
        r = []
        p = root / "f"
        p.write_text("x")
        os.chmod(p, 0o4751)
        r.append(stat.S_IMODE(os.stat(p).st_mode))
        os.chown(p, 1234, 5678)
        r.append((os.stat(p).st_uid, os.stat(p).st_gid))
        os.chown(p, -1, 42)
        r.append((os.stat(p).st_uid, os.stat(p).st_gid))
        os.utime(p, ns=(1_000_000_123, 2_000_000_456))
        st = os.stat(p)
        r.append((st.st_atime_ns, st.st_mtime_ns))
        # UTIME_OMIT for atime, explicit mtime: `touch -m -d`
        subprocess.run(["touch", "-m", "-d", "@3000000000.5", str(p)], check=True)
        st = os.stat(p)
        r.append((st.st_atime_ns, st.st_mtime_ns))
        # UTIME_NOW
        subprocess.run(["touch", "-a", str(p)], check=True)
        r.append(os.stat(p).st_atime > 1_600_000_000)
        os.symlink("f", root / "l")
        os.chown(root / "l", 7, 8, follow_symlinks=False)
        r.append((os.lstat(root / "l").st_uid, os.stat(root / "l").st_uid))
        os.utime(root / "l", ns=(5_000_000_000, 6_000_000_000), follow_symlinks=False)
        r.append(os.lstat(root / "l").st_mtime_ns)
        os.mkdir(root / "d", 0o700)
        os.chmod(root / "d", 0o755)
        r.append(stat.S_IMODE(os.stat(root / "d").st_mode))
        return r

    same_on_both(steps, mnt, plain)


def test_directories(mnt, plain):
    def steps(root):
        r = []
        os.mkdir(root / "d")
        r.append(outcome(os.mkdir, root / "d"))
        (root / "d" / "x").write_text("1")
        r.append(outcome(os.rmdir, root / "d"))
        r.append(outcome(os.rmdir, root / "d" / "x"))
        r.append(outcome(os.unlink, root / "d"))
        os.unlink(root / "d" / "x")
        os.rmdir(root / "d")
        r.append(outcome(os.stat, root / "d"))
        # A listing larger than one readdir reply, read with and without attributes.
        os.mkdir(root / "many")
        for i in range(3000):
            (root / "many" / f"file-with-a-long-name-{i:05d}").write_bytes(b"")
        r.append(sorted(os.listdir(root / "many")))
        r.append(sorted((e.name, e.is_file(), e.stat().st_size) for e in os.scandir(root / "many")))
        ls = subprocess.run(["ls", "-l", str(root / "many")], capture_output=True, text=True).stdout
        r.append(len(ls.splitlines()))
        fd = os.open(root / "many", os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(fd)  # fsyncdir
        os.close(fd)
        return r

    same_on_both(steps, mnt, plain)


def test_rename(mnt, plain):
    def steps(root):
        r = []
        for n in "abcd":
            (root / n).write_text(n)
        os.mkdir(root / "dir")
        os.rename(root / "a", root / "b")  # over an existing target
        r.append((root / "b").read_text())
        r.append(outcome(os.stat, root / "a"))
        os.rename(root / "b", root / "dir" / "moved")
        r.append(outcome(renameat2, root / "c", root / "d", RENAME_NOREPLACE))
        renameat2(root / "c", root / "d", RENAME_EXCHANGE)
        r.append(((root / "c").read_text(), (root / "d").read_text()))
        renameat2(root / "c", root / "e", RENAME_NOREPLACE)
        r.append(outcome(renameat2, root / "missing", root / "f", RENAME_EXCHANGE))
        os.mkdir(root / "empty")
        os.rename(root / "dir", root / "empty")  # a directory over an empty directory
        r.append(sorted(os.listdir(root)))
        r.append(outcome(os.rename, root / "e", root / "empty"))
        # An open file follows its renames.
        with open(root / "d", "r+") as f:
            os.rename(root / "d", root / "empty" / "d2")
            f.write("Z")
        r.append((root / "empty" / "d2").read_text())
        return r

    same_on_both(steps, mnt, plain)


def test_links(mnt, plain):
    def steps(root):
        r = []
        (root / "t").write_text("target")
        os.link(root / "t", root / "h")
        r.append((os.stat(root / "t").st_nlink, os.stat(root / "t").st_ino == os.stat(root / "h").st_ino))
        (root / "h").write_text("changed")
        r.append((root / "t").read_text())
        os.unlink(root / "t")
        r.append(os.stat(root / "h").st_nlink)
        os.symlink("h", root / "s")
        os.symlink("/nonexistent/dangling", root / "dangle")
        r.append((os.readlink(root / "s"), os.readlink(root / "dangle"), (root / "s").read_text()))
        r.append(outcome(os.stat, root / "dangle"))
        r.append(outcome(os.link, root / "h", root / "s"))
        os.link(root / "s", root / "s2", follow_symlinks=False)
        r.append(stat.S_ISLNK(os.lstat(root / "s2").st_mode))
        return r

    same_on_both(steps, mnt, plain)


def test_mknod_fifo(mnt, plain):
    def steps(root):
        os.mkfifo(root / "fifo", 0o640)
        os.mknod(root / "node", 0o600 | stat.S_IFREG)
        return [shape(os.stat(root / "fifo"))[:2], shape(os.stat(root / "node"))[:3]]

    same_on_both(steps, mnt, plain)


def test_unlinked_open_file_stays_usable(mnt, plain):
    def steps(root):
        p = root / "tmp"
        f = open(p, "w+b")
        f.write(b"before")
        f.flush()
        os.unlink(p)
        r = [outcome(os.stat, p)]
        f.write(b" after")
        f.flush()
        f.seek(0)
        r.append(f.read())
        r.append(os.fstat(f.fileno()).st_size)
        os.ftruncate(f.fileno(), 3)
        f.seek(0)
        r.append(f.read())
        f.close()
        return r

    same_on_both(steps, mnt, plain)


def test_fallocate_and_copy_file_range(mnt, plain):
    def steps(root):
        r = []
        p = root / "alloc"
        fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
        os.posix_fallocate(fd, 0, 1 << 20)
        r.append(os.fstat(fd).st_size)
        os.pwrite(fd, b"A" * 8192, 0)
        os.close(fd)
        subprocess.run(["fallocate", "-p", "-o", "0", "-l", "4096", str(p)], check=True)
        with open(p, "rb") as f:
            r.append(f.read(4100)[4094:])
        r.append(os.stat(p).st_size)
        src = os.open(p, os.O_RDONLY)
        dst = os.open(root / "copy", os.O_CREAT | os.O_WRONLY, 0o644)
        n = 0
        while n < 8192:
            n += os.copy_file_range(src, dst, 8192 - n, n, n)
        os.close(src)
        os.close(dst)
        r.append((root / "copy").read_bytes() == p.read_bytes()[:8192])
        return r

    same_on_both(steps, mnt, plain)


def test_flock(mnt, plain):
    def steps(root):
        p = root / "lock"
        p.write_text("")
        a, b = open(p), open(p)
        fcntl.flock(a, fcntl.LOCK_EX)
        r = [outcome(fcntl.flock, b, fcntl.LOCK_EX | fcntl.LOCK_NB)]
        fcntl.flock(a, fcntl.LOCK_UN)
        r.append(outcome(fcntl.flock, b, fcntl.LOCK_EX | fcntl.LOCK_NB))
        a.close()
        b.close()
        c = open(p)
        r.append(outcome(fcntl.flock, c, fcntl.LOCK_SH | fcntl.LOCK_NB))
        c.close()
        return r

    same_on_both(steps, mnt, plain)


def test_xattrs(mnt, plain):
    def steps(root):
        r = []
        p = root / "x"
        p.write_text("x")
        os.setxattr(p, "user.color", b"blue")
        subprocess.run(["setfattr", "-n", "user.shape", "-v", "round", str(p)], check=True)
        r.append(sorted(os.listxattr(p)))
        r.append(os.getxattr(p, "user.color"))
        r.append(subprocess.run(["getfattr", "--only-values", "-n", "user.shape", str(p)],
                                capture_output=True).stdout)
        r.append(outcome(os.getxattr, p, "user.nothing"))
        r.append(outcome(os.setxattr, p, "user.color", b"red", os.XATTR_CREATE))
        r.append(outcome(os.setxattr, p, "user.new", b"v", os.XATTR_REPLACE))
        os.removexattr(p, "user.color")
        r.append(outcome(os.removexattr, p, "user.color"))
        r.append(sorted(os.listxattr(p)))
        # The size probe, then a too-small buffer: ERANGE.
        buf = ctypes.create_string_buffer(2)
        r.append(libc.getxattr(str(p).encode(), b"user.shape", None, 0))
        rc = libc.getxattr(str(p).encode(), b"user.shape", buf, 2)
        r.append((rc, errno.errorcode[ctypes.get_errno()]))
        r.append(outcome(os.getxattr, p, "security.capability"))
        return r

    same_on_both(steps, mnt, plain)
    assert os.getxattr(mnt.store / "work" / "x", "user.shape") == b"round", "xattrs live on the backing file"


def test_statfs_and_access(mnt, plain):
    a, b = os.statvfs(mnt.root), os.statvfs(mnt.store)
    assert (a.f_bsize, a.f_blocks, a.f_files) == (b.f_bsize, b.f_blocks, b.f_files)
    assert os.access(mnt.root, os.W_OK)
    (mnt.root / "r").write_text("")
    os.chmod(mnt.root / "r", 0o444)
    assert os.access(mnt.root / "r", os.R_OK)
    assert not os.access(mnt.root / "nope", os.F_OK)


def test_fsync(mnt):
    with open(mnt.root / "durable", "wb") as f:
        f.write(b"keep me")
        f.flush()
        os.fsync(f.fileno())
        os.fdatasync(f.fileno())
    assert (mnt.store / "durable").read_bytes() == b"keep me"


def test_new_files_belong_to_the_caller(mnt, plain):
    for d in list(mnt.root.parents)[:3]:  # pytest's temporary directories are 0700
        os.chmod(d, 0o755)
    os.chmod(mnt.root, 0o777)
    os.chmod(plain, 0o777)
    os.mkdir(mnt.root / "sgid")
    os.chown(mnt.root / "sgid", 0, 4242)
    os.chmod(mnt.root / "sgid", 0o2777)
    as_user = ["setpriv", "--reuid", "1000", "--regid", "1001", "--clear-groups"]
    script = "set -e; cd {0}; touch f; mkdir d; ln -s f l; mkfifo p; echo x > sgid/inherits; mkdir sgid/sub"
    subprocess.run(as_user + ["sh", "-c", script.format(mnt.root)], check=True)
    for name in ["f", "d", "l", "p"]:
        for root in (mnt.root, mnt.store):
            st = os.lstat(root / name)
            assert (st.st_uid, st.st_gid) == (1000, 1001), (root, name)
    for name in ["inherits", "sub"]:
        st = os.lstat(mnt.store / "sgid" / name)
        assert (st.st_uid, st.st_gid) == (1000, 4242)
    assert os.stat(mnt.store / "sgid" / "sub").st_mode & stat.S_ISGID
    # Permissions are the kernel's: this user cannot write a root-owned 0644 file.
    (mnt.root / "rootonly").write_text("r")
    os.chmod(mnt.root / "rootonly", 0o644)
    denied = subprocess.run(as_user + ["sh", "-c", f"echo no >> {mnt.root}/rootonly"], capture_output=True)
    assert denied.returncode != 0
    assert (mnt.root / "rootonly").read_text() == "r"
    # umask is the caller's.
    subprocess.run(as_user + ["sh", "-c", f"umask 027; touch {mnt.root}/masked; mkdir {mnt.root}/maskeddir"], check=True)
    assert stat.S_IMODE(os.stat(mnt.root / "masked").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(mnt.root / "maskeddir").st_mode) == 0o750


def test_state_directory_is_virtual(mnt):
    """The mount's .vexfs/ is vexfs's own (stats), never STORE/.vexfs, and nothing can be written there."""
    assert (mnt.store / ".vexfs" / "mount.lock").exists()
    # Hidden from listings, reachable by name.
    assert ".vexfs" not in os.listdir(mnt.root)
    walked = subprocess.run(["find", str(mnt.root)], capture_output=True, text=True, check=True).stdout
    assert ".vexfs" not in walked
    assert sorted(os.listdir(mnt.root / ".vexfs")) == ["journal", "stats"]
    assert not os.path.exists(mnt.root / ".vexfs" / "mount.lock")
    ls = subprocess.run(["ls", "-la", str(mnt.root / ".vexfs")], capture_output=True, text=True, check=True).stdout
    assert "stats" in ls
    st = os.stat(mnt.root / ".vexfs")
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o555
    for attempt in (lambda: os.mkdir(mnt.root / ".vexfs" / "x"),
                    lambda: open(mnt.root / ".vexfs" / "new", "w"),
                    lambda: open(mnt.root / ".vexfs" / "stats", "w"),
                    lambda: os.unlink(mnt.root / ".vexfs" / "stats"),
                    lambda: os.rmdir(mnt.root / ".vexfs"),
                    lambda: os.chmod(mnt.root / ".vexfs" / "stats", 0o666),
                    lambda: os.setxattr(mnt.root / ".vexfs" / "stats", "user.x", b"1"),
                    lambda: os.mkdir(mnt.root / ".vexfs")):
        with pytest.raises(OSError) as e:
            attempt()
        assert e.value.errno in (errno.EPERM, errno.EACCES, errno.EEXIST), e.value
    assert os.listxattr(mnt.root / ".vexfs" / "stats") == []
    (mnt.root / "f").write_text("")
    with pytest.raises(OSError):
        os.rename(mnt.root / "f", mnt.root / ".vexfs")
    # Only at the top: a sub-directory may hold its own .vexfs file.
    os.mkdir(mnt.root / "sub")
    (mnt.root / "sub" / ".vexfs").write_text("ok")
    assert os.listdir(mnt.root / "sub") == [".vexfs"]
    assert (mnt.store / "sub" / ".vexfs").read_text() == "ok"


def parse_prometheus(text):
    """{(name, labels): value}; fails on any line that is not the text exposition format."""
    samples = {}
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        m = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})? (-?\d+(?:\.\d+)?)', line)
        assert m, f"not Prometheus text: {line!r}"
        samples[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return samples


def test_stats_report_pool_and_stack(mnt):
    for i in range(50):
        (mnt.root / f"f{i}").write_text("x")
        os.setxattr(mnt.root / f"f{i}", "user.k", b"v" * 100)
        os.getxattr(mnt.root / f"f{i}", "user.k")
    subprocess.run(["ls", "-la", str(mnt.root)], check=True, capture_output=True)
    text = subprocess.run(["cat", str(mnt.root / ".vexfs" / "stats")], capture_output=True, text=True, check=True).stdout
    s = parse_prometheus(text)
    hits = sum(v for (name, _), v in s.items() if name == "vexfs_buffer_pool_hits_total")
    assert hits >= 50, "readdir and getxattr take their buffers from the pool"
    assert s[("vexfs_buffer_pool_buffers", 'tier="4k"')] > 0
    for handler in ("lookup", "getattr", "getxattr", "readdirplus", "create"):
        mark = s[("vexfs_stack_high_water_bytes", f'handler="{handler}"')]
        assert 0 < mark < s[("vexfs_stack_budget_bytes", "")], handler
    assert s[("vexfs_stack_budget_exceeded_total", "")] == 0
    assert s[("vexfs_inodes", "")] >= 50
    assert s[("vexfs_fuse_killpriv_v2", "")] == 1, "this kernel offers FUSE_HANDLE_KILLPRIV_V2"
    # Made anew at each open.
    (mnt.root / "more").write_text("")
    again = parse_prometheus((mnt.root / ".vexfs" / "stats").read_text())
    assert again[("vexfs_inodes", "")] >= s[("vexfs_inodes", "")]


def test_tiny_stack_budget_counts_excesses(make_mount):
    m = make_mount("-o", "stack_budget=4096")
    m.mount()
    for i in range(20):
        (m.root / f"f{i}").write_text("x")
    s = parse_prometheus((m.root / ".vexfs" / "stats").read_text())
    assert s[("vexfs_stack_budget_exceeded_total", "")] > 0
    assert any(name == "vexfs_stack_first_excess_bytes" for name, _ in s)


def test_many_concurrent_readers_and_writers(mnt):
    payload = os.urandom(1 << 20)
    (mnt.root / "shared").write_bytes(payload)
    script = (
        "import sys, os, hashlib\n"
        "root, i = sys.argv[1], int(sys.argv[2])\n"
        "data = open(os.path.join(root, 'shared'), 'rb').read()\n"
        "assert len(data) == 1 << 20\n"
        "with open(os.path.join(root, f'w{i}'), 'wb') as f:\n"
        "    for k in range(64): f.write(bytes([i]) * 16384)\n"
        "print(hashlib.sha256(data).hexdigest())\n"
    )
    procs = [subprocess.Popen(["python3", "-c", script, str(mnt.root), str(i)], stdout=subprocess.PIPE)
             for i in range(8)]
    outs = {p.communicate(timeout=120)[0] for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert outs == {hashlib.sha256(payload).hexdigest().encode() + b"\n"}
    for i in range(8):
        assert (mnt.store / f"w{i}").read_bytes() == bytes([i]) * (1 << 20)


def test_directory_handles_take_attribute_changes(mnt, plain):
    def steps(root):
        os.mkdir(root / "d", 0o755)
        fd = os.open(root / "d", os.O_RDONLY | os.O_DIRECTORY)
        os.fchmod(fd, 0o700)
        os.utime(fd, ns=(7_000_000_000, 8_000_000_000))
        st = os.fstat(fd)
        os.close(fd)
        return [stat.S_IMODE(st.st_mode), st.st_mtime_ns]

    same_on_both(steps, mnt, plain)


def test_kernel_forgets_and_relearns_inodes(mnt):
    """Dropping the kernel's caches makes it forget (forget_multi) every inode; all must come back."""
    for i in range(500):
        (mnt.root / f"f{i}").write_text(str(i))
    os.link(mnt.root / "f1", mnt.root / "hard")
    held = open(mnt.root / "f2")
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")
    assert all((mnt.root / f"f{i}").read_text() == str(i) for i in range(500))
    assert os.stat(mnt.root / "hard").st_ino == os.stat(mnt.root / "f1").st_ino
    assert held.read() == "2"
    held.close()


def test_more_files_in_use_than_descriptors(make_mount):
    """With a budget of 64 descriptors, thousands of remembered files still work (reopened by handle)."""
    m = make_mount("-o", "descriptor_budget=64")
    m.mount()
    for d in range(4):
        os.mkdir(m.root / f"d{d}")
        for i in range(500):
            (m.root / f"d{d}" / f"f{i}").write_text(f"{d}/{i}")
    os.link(m.root / "d0" / "f0", m.root / "hard")
    os.rename(m.root / "d1", m.root / "moved")
    held = open(m.root / "d2" / "f7")
    os.unlink(m.root / "d2" / "f7")
    for d in (0, 2, 3):
        for i in range(500):
            if (d, i) != (2, 7):
                assert (m.root / f"d{d}" / f"f{i}").read_text() == f"{d}/{i}"
                os.chmod(m.root / f"d{d}" / f"f{i}", 0o600)
    assert all((m.root / "moved" / f"f{i}").read_text() == f"1/{i}" for i in range(500))
    assert held.read() == "2/7"
    held.close()
    assert os.stat(m.root / "hard").st_nlink == 2
    fds = len(os.listdir(f"/proc/{m.pid}/fd"))
    assert fds < 64 + 40, f"the daemon holds {fds} descriptors"


# A VFS capability blob (revision 2, effective, CAP_NET_BIND_SERVICE permitted).
def open_to_user_1000(mnt, plain):
    """Lets user 1000 reach both roots (pytest's temporary directories are 0700); the command prefix
    that runs as that user."""
    for d in list(mnt.root.parents)[:3]:
        os.chmod(d, 0o755)
    os.chmod(plain.parent, 0o755)
    return ["setpriv", "--reuid", "1000", "--regid", "1000", "--clear-groups"]


CAPABILITY = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)


def test_unprivileged_writes_drop_set_id_bits_and_capabilities(mnt, plain):
    """vexfs takes over dropping privileges from the kernel (FUSE_HANDLE_KILLPRIV_V2): an
    unprivileged write, truncate or truncating open must drop them exactly as on a local filesystem."""
    as_user = open_to_user_1000(mnt, plain)

    def steps(root):
        os.chmod(root, 0o777)
        r = []
        for name, how in [("w", "echo more >> {}"), ("t", "truncate -s 1 {}"), ("o", ": > {}")]:
            p = root / name
            p.write_text("data\n")
            os.chmod(p, 0o6777)
            os.setxattr(p, "security.capability", CAPABILITY)
            # Writes by root keep them.
            with open(p, "a") as f:
                f.write("root\n")
            r.append((name, "root", oct(stat.S_IMODE(os.stat(p).st_mode)), "security.capability" in os.listxattr(p)))
            subprocess.run(as_user + ["sh", "-c", how.format(p)], check=True)
            r.append((name, "user", oct(stat.S_IMODE(os.stat(p).st_mode)), "security.capability" in os.listxattr(p)))
            # Set again through the mount: the next unprivileged write must see them again.
            os.chmod(p, 0o6777)
            subprocess.run(as_user + ["sh", "-c", f"echo again >> {p}"], check=True)
            r.append((name, "again", oct(stat.S_IMODE(os.stat(p).st_mode))))
        return r

    same_on_both(steps, mnt, plain)


def test_killpriv_can_be_turned_off(make_mount):
    m = make_mount("-o", "no_killpriv")
    m.mount()
    (m.root / "f").write_text("x")
    assert (m.root / "f").read_text() == "x"
    assert parse_prometheus((m.root / ".vexfs" / "stats").read_text())[("vexfs_fuse_killpriv_v2", "")] == 0


def test_closing_a_file_releases_its_flock_at_once(mnt):
    """As on a local filesystem: after close(2) returns, the lock is gone (no wait for RELEASE)."""
    p = mnt.root / "lock"
    p.write_text("")
    for _ in range(300):
        with open(p) as a:
            fcntl.flock(a, fcntl.LOCK_EX)
        with open(p) as b:
            fcntl.flock(b, fcntl.LOCK_EX | fcntl.LOCK_NB)


def posix_acl(*entries):
    """The system.posix_acl_* value (version 2): (tag, perm, id) entries, id None for the owner's,
    group's, mask's and others' entries."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, 0xFFFFFFFF if uid is None else uid)
                                           for tag, perm, uid in entries)


USER_OBJ, USER, GROUP_OBJ, MASK, OTHER = 0x01, 0x02, 0x04, 0x10, 0x20


def test_posix_acls_are_enforced_and_default_acls_replace_the_umask(mnt, plain):
    """With FUSE_POSIX_ACL the kernel enforces ACLs kept on the backing files (before, only the
    mode bits counted) and caches them, and a default ACL replaces the creator's umask."""
    as_user = open_to_user_1000(mnt, plain)

    def steps(root):
        os.chmod(root, 0o755)
        r = []
        secret = root / "secret"
        secret.write_text("for 1000 only\n")
        os.chmod(secret, 0o600)
        os.setxattr(secret, "system.posix_acl_access",
                    posix_acl((USER_OBJ, 6, None), (USER, 4, 1000), (GROUP_OBJ, 0, None), (MASK, 4, None), (OTHER, 0, None)))
        read = subprocess.run(as_user + ["cat", str(secret)], capture_output=True, text=True)
        r.append(("read with the ACL", read.returncode, read.stdout, oct(stat.S_IMODE(os.stat(secret).st_mode))))
        os.chmod(secret, 0o600)  # the mask goes to ---: the named entry no longer grants anything
        read = subprocess.run(as_user + ["cat", str(secret)], capture_output=True, text=True)
        r.append(("read after chmod", read.returncode))
        inherit = root / "inherit"
        inherit.mkdir()
        os.chmod(inherit, 0o777)
        os.setxattr(inherit, "system.posix_acl_default",
                    posix_acl((USER_OBJ, 7, None), (GROUP_OBJ, 5, None), (OTHER, 0, None)))
        subprocess.run(as_user + ["sh", "-c", f"umask 077; touch {inherit}/f; mkdir {inherit}/d"], check=True)
        for name in ("f", "d"):
            r.append((name, oct(stat.S_IMODE(os.stat(inherit / name).st_mode))))
        return r

    result = same_on_both(steps, mnt, plain)
    assert result[0][1] == 0 and result[1][1] != 0
    assert result[2:] == [("f", "0o640"), ("d", "0o750")]
