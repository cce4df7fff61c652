"""What xfstests' generic group found (issue 29), each compared with the store's own filesystem: set-group-ID
after setfacl and at creation, the atime mount options, chown(f, -1, -1), direct writes through the daemon
against cached pages, file handles after the caches are dropped and after a remount, and the store's
features the mount passes through (O_TMPFILE, RENAME_WHITEOUT, chattr flags, statx's birth time, FITRIM),
and the mount's own filesystem label."""
import ctypes
import errno
import fcntl
import mmap
import os
import stat
import struct
import subprocess
import threading
import time

import pytest
from conftest import VEXFS as VEXFS_BIN, daemon_pid

MODES = {"passthrough": (), "no_passthrough": ("-o", "no_passthrough")}
libc = ctypes.CDLL(None, use_errno=True)


def open_to(mnt, plain, uid, gid):
    """Lets `uid` reach both roots (pytest's temporary directories are 0700); the command prefix that
    runs as that user, in group `gid` alone."""
    for d in list(mnt.root.parents)[:3]:
        os.chmod(d, 0o755)
    os.chmod(plain.parent, 0o755)
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]


@pytest.fixture(params=list(MODES))
def either(request, make_mount):
    m = make_mount("-o", "allow_other", *MODES[request.param])
    m.mount()
    m.mode = request.param
    return m


# generic/375 and generic/633: set-group-ID


def test_setfacl_drops_setgid_when_the_owner_is_not_in_the_group(either, plain):
    """generic/375: chmod and setfacl by the owner, who is not in the file's group, drop set-group-ID."""
    as_user = open_to(either, plain, 100, 101)

    def steps(root):
        p = root / "f"
        p.write_text("")
        os.chown(p, 100, 100)
        os.chmod(p, 0o2755)
        subprocess.run(as_user + ["chmod", "2755", str(p)], check=True)
        after_chmod = oct(os.stat(p).st_mode)
        os.chmod(p, 0o2755)
        subprocess.run(as_user + ["setfacl", "-m", "u::rwx,g::rwx,o::rwx", str(p)], check=True)
        return after_chmod, oct(os.stat(p).st_mode)

    ours, theirs = steps(either.root), steps(plain)
    assert theirs == (oct(0o100755), oct(0o100777))
    assert ours == theirs
    assert oct(os.stat(either.store / "f").st_mode) == theirs[1], "the store holds it too"
    # A member of the group keeps it.
    as_member = open_to(either, plain, 100, 100)
    for root in (either.root, plain):
        os.chmod(root / "f", 0o2755)
        subprocess.run(as_member + ["setfacl", "-m", "u::rwx,g::rwx,o::rwx", str(root / "f")], check=True)
    assert os.stat(either.root / "f").st_mode == os.stat(plain / "f").st_mode == 0o102777


def test_root_creating_in_a_setgid_directory_keeps_the_setgid_it_asked_for(either, plain):
    """generic/633: open(O_CREAT, 02010) and mknod by root in a set-group-ID directory keep S_ISGID."""
    def steps(root):
        d = root / "d"
        d.mkdir()
        os.chown(d, 0, 1234)
        os.chmod(d, 0o2777)
        old = os.umask(0)
        try:
            os.close(os.open(d / "created", os.O_CREAT | os.O_WRONLY, 0o2010))
            os.mknod(d / "made", stat.S_IFREG | 0o2010)
            os.close(os.open(d / "suid", os.O_CREAT | os.O_WRONLY, 0o4755))
            os.mkdir(d / "sub", 0o755)
        finally:
            os.umask(old)
        return [(n, oct(os.stat(d / n).st_mode), os.stat(d / n).st_gid) for n in ("created", "made", "suid", "sub")]

    ours, theirs = steps(either.root), steps(plain)
    assert theirs[0] == ("created", oct(0o102010), 1234)
    assert ours == theirs
    assert oct(os.stat(either.store / "d" / "created").st_mode) == oct(0o102010)


def test_unprivileged_creator_keeps_setgid_only_as_a_member(either, plain):
    """The kernel strips S_ISGID for a creator outside the directory's group; a member keeps it."""
    results = []
    for root in (either.root, plain):
        d = root / "g"
        d.mkdir()
        os.chown(d, 0, 1234)
        os.chmod(d, 0o2777)
        outsider = open_to(either, plain, 1000, 1000)
        member = ["setpriv", "--reuid=1000", "--regid=1000", "--groups=1234"]
        subprocess.run(outsider + ["python3", "-c", f"import os; os.umask(0); os.close(os.open('{d}/out', os.O_CREAT|os.O_WRONLY, 0o2070))"], check=True)
        subprocess.run(member + ["python3", "-c", f"import os; os.umask(0); os.close(os.open('{d}/in', os.O_CREAT|os.O_WRONLY, 0o2070))"], check=True)
        results.append([(n, oct(os.stat(d / n).st_mode), os.stat(d / n).st_uid, os.stat(d / n).st_gid) for n in ("out", "in")])
    assert results[0] == results[1]
    assert results[1][1][1] == oct(0o102070)


# chown(f, -1, -1)


def test_chown_to_the_same_owner_moves_ctime(either, plain):
    """pjdfstest chown/00.t: chown(f, -1, -1) updates ctime on ext4, so on the mount too."""
    for root in (either.root, plain):
        p = root / "c"
        p.write_text("x")
        before = os.stat(p).st_ctime_ns
        time.sleep(0.02)
        os.chown(p, -1, -1)
        assert os.stat(p).st_ctime_ns > before, root
    assert os.stat(either.store / "c").st_ctime_ns == os.stat(either.root / "c").st_ctime_ns


# generic/120 and the atime options


def atime_after_read(m, name, atime):
    """Sets `name`'s atime (mtime stays), mounts, reads it through the mount, and returns its atime
    on the mount and in the store."""
    p = m.store / name
    p.write_bytes(b"some bytes\n" * 100)
    st = os.stat(p)
    os.utime(p, ns=(atime, st.st_mtime_ns))
    m.mount()
    try:
        with open(m.root / name, "rb") as f:
            f.read()
        return os.stat(m.root / name).st_atime_ns, os.stat(p).st_atime_ns
    finally:
        m.unmount()


@pytest.mark.parametrize("mode", list(MODES))
def test_noatime_relatime_strictatime(make_mount, mode):
    """generic/120: under noatime a read leaves atime alone (on the mount and in the store); relatime
    moves an atime older than mtime; strictatime moves one that is newer; all accepted as mount(8)
    gives them."""
    now = time.time_ns()
    old = now - 10 * 86400 * 10**9  # older than mtime and than a day
    recent = now + 3600 * 10**9      # newer than mtime: relatime leaves it, strictatime moves it
    m = make_mount("-o", "noatime", *MODES[mode])
    assert atime_after_read(m, "old", old) == (old, old)
    m = make_mount("-o", "relatime", *MODES[mode])
    seen = atime_after_read(m, "old", old)
    assert seen[0] == seen[1] and seen[1] > old
    assert atime_after_read(m, "recent", recent) == (recent, recent)
    m = make_mount("-o", "strictatime", *MODES[mode])
    seen = atime_after_read(m, "recent", recent)
    assert seen[0] == seen[1] and seen[1] != recent
    # The kernel's precedence: strictatime over noatime.
    m = make_mount("-o", "noatime,strictatime", *MODES[mode])
    assert atime_after_read(m, "recent", recent)[1] != recent


@pytest.mark.parametrize("mode", list(MODES))
def test_strictatime_moves_atime_at_every_read(make_mount, mode):
    """generic/003: under strictatime each read moves atime, also a read of pages the kernel has
    cached from the read before (the store's filesystem sees every one)."""
    m = make_mount("-o", "strictatime", *MODES[mode])
    (m.store / "f").write_bytes(b"cached\n" * 100)
    m.mount()
    try:
        seen = []
        for _ in range(3):
            (m.root / "f").read_bytes()
            seen.append(os.stat(m.store / "f").st_atime_ns)
            assert os.stat(m.root / "f").st_atime_ns == seen[-1]
            time.sleep(0.05)
        assert seen[0] < seen[1] < seen[2]
    finally:
        m.unmount()


def test_a_mount_right_after_an_unmount_says_nothing(make_mount):
    """generic/003 and every test that cycles a mount: a mount while the previous daemon still saves
    the indexes of the store waits for it in silence (mount(8) would pass a message on to the
    test's output)."""
    m = make_mount()
    m.mount()
    c = m.root / "c"
    c.mkdir()
    for i in range(200):
        np_rows = "\n".join(" ".join(str((i * 31 + j * 7 + k) % 97 / 97) for k in range(64)) for j in range(100))
        (c / f"{i}.vec").write_text(np_rows + "\n")
    count = os.getxattr(c, "user.vexfs.count")
    assert int(count) == 200
    for _ in range(8):
        subprocess.run(["umount", str(m.root)], check=True, timeout=120)  # as xfstests does
        again = subprocess.run([VEXFS_BIN, "mount", str(m.store), str(m.root)], capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        assert again.stderr == ""
        assert os.getxattr(c, "user.vexfs.count") == count


def test_nodiratime_leaves_directories_alone(make_mount):
    old = time.time_ns() - 10 * 86400 * 10**9
    m = make_mount("-o", "nodiratime")
    (m.store / "d").mkdir()
    (m.store / "d" / "f").write_text("x")
    m.mount()  # its reconciliation reads the store first
    for p in (m.store / "d", m.store / "d" / "f"):
        os.utime(p, ns=(old, os.stat(p).st_mtime_ns))
    try:
        assert os.listdir(m.root / "d") == ["f"]
        (m.root / "d" / "f").read_text()
        assert os.stat(m.store / "d").st_atime_ns == old
        assert os.stat(m.store / "d" / "f").st_atime_ns > old
    finally:
        m.unmount()


# generic/451: a buffered read after an asynchronous direct write


class IOCB(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64), ("key", ctypes.c_uint32), ("rw_flags", ctypes.c_int32),
                ("opcode", ctypes.c_uint16), ("reqprio", ctypes.c_int16), ("fildes", ctypes.c_uint32),
                ("buf", ctypes.c_uint64), ("nbytes", ctypes.c_uint64), ("offset", ctypes.c_int64),
                ("reserved2", ctypes.c_uint64), ("flags", ctypes.c_uint32), ("resfd", ctypes.c_uint32)]


class IOEvent(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64), ("obj", ctypes.c_uint64), ("res", ctypes.c_int64), ("res2", ctypes.c_int64)]


SYS_IO_SETUP, SYS_IO_DESTROY, SYS_IO_GETEVENTS, SYS_IO_SUBMIT = 206, 207, 208, 209
IOCB_CMD_PWRITE = 1


def aio_direct_write(ctx, fd, buf, offset):
    """Submits one asynchronous pwrite and returns a function that waits for it."""
    cb = IOCB(fildes=fd, opcode=IOCB_CMD_PWRITE, buf=ctypes.addressof(ctypes.c_char.from_buffer(buf)),
              nbytes=len(buf), offset=offset)
    cbs = (ctypes.POINTER(IOCB) * 1)(ctypes.pointer(cb))
    submitted = libc.syscall(ctypes.c_long(SYS_IO_SUBMIT), ctypes.c_ulong(ctx), ctypes.c_long(1), cbs)
    assert submitted == 1, os.strerror(ctypes.get_errno())

    def wait():
        ev = IOEvent()
        got = libc.syscall(ctypes.c_long(SYS_IO_GETEVENTS), ctypes.c_ulong(ctx), ctypes.c_long(1), ctypes.c_long(1),
                           ctypes.byref(ev), None)
        assert got == 1 and cbs[0].contents.nbytes == len(buf)
        assert ev.res == len(buf), ev.res
    return wait


def test_buffered_reads_see_asynchronous_direct_writes(either):
    """generic/451: a reader that cached pages while an AIO O_DIRECT write was on its way must see the
    new bytes once it completes. Under -o no_passthrough the daemon drops the written range from the
    kernel's cache; under passthrough the store's own filesystem sees to it."""
    size = 1 << 20
    p = either.root / "aio"
    p.write_bytes(b"\0" * size)
    ctx = ctypes.c_ulong(0)
    assert libc.syscall(ctypes.c_long(SYS_IO_SETUP), ctypes.c_long(8), ctypes.byref(ctx)) == 0
    direct = os.open(p, os.O_RDWR | os.O_DIRECT)
    buffered = os.open(p, os.O_RDONLY)
    stale = []
    try:
        for round in range(1, 61):
            fill = bytes([round]) * size
            buf = mmap.mmap(-1, size)
            buf.write(fill)
            stop = threading.Event()

            def read_meanwhile():
                while not stop.is_set():
                    os.pread(buffered, size, 0)
            reader = threading.Thread(target=read_meanwhile)
            reader.start()
            try:
                time.sleep(0.001)
                aio_direct_write(ctx.value, direct, buf, 0)()
            finally:
                stop.set()
                reader.join()
            seen = os.pread(buffered, size, 0)
            if seen != fill:
                stale.append((round, next(i for i in range(size) if seen[i] != round)))
            buf.close()
    finally:
        os.close(direct)
        os.close(buffered)
        libc.syscall(ctypes.c_long(SYS_IO_DESTROY), ctypes.c_ulong(ctx.value))
    assert not stale, f"stale pages after {len(stale)} of 60 writes: {stale[:5]}"


# Export support: file handles after dropped caches and remounts (generic/426, 467, 477, 756, 777)


class FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int), ("f_handle", ctypes.c_ubyte * 128)]


AT_FDCWD = -100


def handle_of(path):
    fh, mount_id = FileHandle(handle_bytes=128), ctypes.c_int()
    if libc.name_to_handle_at(AT_FDCWD, os.fsencode(path), ctypes.byref(fh), ctypes.byref(mount_id), 0) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(path))
    return bytes(fh)[:8 + fh.handle_bytes]


def open_by_handle(mount_fd, blob, flags=os.O_RDONLY):
    fh = FileHandle.from_buffer_copy(blob + b"\0" * (ctypes.sizeof(FileHandle) - len(blob)))
    fd = libc.open_by_handle_at(mount_fd, ctypes.byref(fh), flags)
    if fd < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return fd


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def test_file_handles_survive_dropped_caches_and_remounts(make_mount, request):
    for mode in MODES:
        m = make_mount(*MODES[mode])
        m.mount()
        (m.root / "d" / "e").mkdir(parents=True)
        (m.root / "f").write_bytes(b"top file\n")
        (m.root / "d" / "e" / "g").write_bytes(b"deep file\n")
        os.link(m.root / "f", m.root / "d" / "hard")
        (m.root / "gone").write_text("x")
        names = ["f", "d", "d/e", "d/e/g", "d/hard", "gone"]
        handles = {n: handle_of(m.root / n) for n in names}
        inodes = {n: os.stat(m.root / n).st_ino for n in names}
        assert handles["f"] == handles["d/hard"], "one file, one handle"
        os.unlink(m.root / "gone")

        def check(when):
            mount_fd = os.open(m.root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                for n in names[:-1]:
                    is_dir = n in ("d", "d/e")
                    fd = open_by_handle(mount_fd, handles[n], os.O_RDONLY | (os.O_DIRECTORY if is_dir else 0))
                    try:
                        assert os.fstat(fd).st_ino == inodes[n], (mode, when, n)
                        if is_dir:
                            assert sorted(os.listdir(fd)) == sorted(os.listdir(m.root / n)), (mode, when, n)
                        else:
                            assert os.pread(fd, 100, 0) == (m.root / n).read_bytes(), (mode, when, n)
                    finally:
                        os.close(fd)
                    # A directory decoded alone is reconnected through "..": its path is right.
                    if is_dir:
                        fd = open_by_handle(mount_fd, handles[n], os.O_RDONLY | os.O_DIRECTORY)
                        assert os.readlink(f"/proc/self/fd/{fd}") == str(m.root / n), (mode, when, n)
                        os.close(fd)
                with pytest.raises(OSError) as gone:
                    os.close(open_by_handle(mount_fd, handles["gone"]))
                assert gone.value.errno == errno.ESTALE, (mode, when)
            finally:
                os.close(mount_fd)

        check("at once")
        drop_caches()
        check("after drop_caches")
        m.unmount()
        m.mount()
        check("after a remount")
        # Written through a handle after the caches are gone: reaches the store.
        drop_caches()
        mount_fd = os.open(m.root, os.O_RDONLY | os.O_DIRECTORY)
        fd = open_by_handle(mount_fd, handles["d/e/g"], os.O_WRONLY | os.O_APPEND)
        os.write(fd, b"more\n")
        os.close(fd)
        os.close(mount_fd)
        assert (m.store / "d" / "e" / "g").read_bytes() == b"deep file\nmore\n"
        m.unmount()


# The store's features passed through: RENAME_WHITEOUT, chattr flags


RENAME_WHITEOUT = 1 << 2


def test_rename_whiteout_leaves_a_whiteout_as_the_store_does(either, plain):
    """generic/023-025's RENAME_WHITEOUT, which overlayfs needs of a layer: the old name becomes a
    0/0 character device, the file moves; vector files keep the index true."""
    libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]

    def steps(root):
        (root / "a").write_text("moved\n")
        (root / "b").write_text("replaced\n")
        r = libc.renameat2(AT_FDCWD, os.fsencode(root / "a"), AT_FDCWD, os.fsencode(root / "b"), RENAME_WHITEOUT)
        assert r == 0, os.strerror(ctypes.get_errno())
        st = os.lstat(root / "a")
        return [stat.S_ISCHR(st.st_mode), st.st_rdev, st.st_uid, (root / "b").read_text()]

    assert steps(either.root) == steps(plain) == [True, 0, 0, "moved\n"]
    assert stat.S_ISCHR(os.lstat(either.store / "a").st_mode)
    # Vectors: the moved name is indexed, the whiteout is not a vector.
    coll = either.root / "c"
    coll.mkdir()
    (coll / "q.vec").write_text("0 0\n")
    (coll / "v.vec").write_text("1 0\n")
    assert libc.renameat2(AT_FDCWD, os.fsencode(coll / "v.vec"), AT_FDCWD, os.fsencode(coll / "w.vec"), RENAME_WHITEOUT) == 0
    answer = os.getxattr(coll / "q.vec", "user.vexfs.knn").decode().split("\t")[0]
    assert answer == "w.vec"


def lsattr(path):
    out = subprocess.run(["lsattr", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    return out.split()[0]


def test_chattr_flags_are_the_store_files_own(either, plain):
    """generic/079 and kin: chattr +a, +i, +A and lsattr on files and directories act on the backing
    file, as on the store's filesystem: an immutable file refuses writes, an append-only one all
    but appends."""
    def steps(root):
        r = []
        f, d = root / "f", root / "d"
        f.write_text("x\n")
        d.mkdir()
        for target in (f, d):
            subprocess.run(["chattr", "+A", str(target)], check=True)
            r.append(lsattr(target))
            subprocess.run(["chattr", "-A", str(target)], check=True)
        subprocess.run(["chattr", "+a", str(f)], check=True)
        with open(f, "a") as out:
            out.write("appended\n")
        with pytest.raises(PermissionError):
            open(f, "w")
        subprocess.run(["chattr", "-a", "+i", str(f)], check=True)
        r.append(lsattr(f))
        with pytest.raises(PermissionError):
            open(f, "a")
        with pytest.raises(PermissionError):
            os.unlink(f)
        subprocess.run(["chattr", "-i", str(f)], check=True)
        r.append((lsattr(f), f.read_text()))
        return r

    ours, theirs = steps(either.root), steps(plain)
    assert ours == theirs
    assert lsattr(either.store / "f") == lsattr(plain / "f")
    # chattr moves ctime, and stat through the mount shows it at once (generic/277).
    f = either.root / "f"
    before = os.stat(f).st_ctime_ns
    time.sleep(0.05)
    subprocess.run(["chattr", "+A", str(f)], check=True)
    assert os.stat(f).st_ctime_ns == os.stat(either.store / "f").st_ctime_ns > before
    subprocess.run(["chattr", "-A", str(f)], check=True)
    # Set through the mount, seen in the store.
    subprocess.run(["chattr", "+A", str(either.root / "f")], check=True)
    assert "A" in lsattr(either.store / "f")
    subprocess.run(["chattr", "-A", str(either.root / "f")], check=True)


# O_TMPFILE (generic/004, 389, 509, ...): a file with no name until linkat(2) gives it one


AT_EMPTY_PATH, AT_SYMLINK_FOLLOW = 0x1000, 0x400


def link_by_descriptor(fd, path):
    """linkat(fd, "", AT_FDCWD, path, AT_EMPTY_PATH), as a privileged caller links an open file."""
    linkat(fd, b"", path, AT_EMPTY_PATH)


def link_through_proc(fd, path):
    """linkat(AT_FDCWD, "/proc/self/fd/N", AT_FDCWD, path, AT_SYMLINK_FOLLOW), as anyone may (Python's
    os.link calls link(2), which would link the magic link itself)."""
    linkat(AT_FDCWD, f"/proc/self/fd/{fd}".encode(), path, AT_SYMLINK_FOLLOW)


def linkat(dirfd, name, path, flags):
    libc.linkat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    if libc.linkat(dirfd, name, AT_FDCWD, os.fsencode(path), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(path))


def test_tmpfile_is_unnamed_until_linked_as_on_the_store(either, plain):
    """open(O_TMPFILE) makes a file no directory lists, with the caller's umask and owner; linkat by
    descriptor and through /proc/self/fd name it; O_EXCL forbids that; an unlinked one leaves nothing."""
    as_user = open_to(either, plain, 100, 100)

    def steps(root):
        r = []
        d = root / "d"
        d.mkdir()
        old = os.umask(0o027)
        try:
            fd = os.open(d, os.O_TMPFILE | os.O_RDWR, 0o666)
        finally:
            os.umask(old)
        os.write(fd, b"held\n")
        st = os.fstat(fd)
        r += [stat.S_IMODE(st.st_mode), st.st_nlink, st.st_size, sorted(os.listdir(d))]
        link_by_descriptor(fd, d / "by-fd")
        link_through_proc(fd, d / "by-proc")
        os.write(fd, b"more\n")
        r += [os.fstat(fd).st_nlink, (d / "by-fd").read_bytes(), sorted(os.listdir(d))]
        os.close(fd)
        # O_EXCL: never linkable.
        fd = os.open(d, os.O_TMPFILE | os.O_WRONLY | os.O_EXCL, 0o600)
        with pytest.raises(OSError) as refused:
            link_through_proc(fd, d / "never")
        r.append(refused.value.errno)
        os.close(fd)
        # Written, closed and dropped: nothing left behind.
        fd = os.open(d, os.O_TMPFILE | os.O_WRONLY, 0o600)
        os.write(fd, b"gone\n")
        os.close(fd)
        r.append(sorted(os.listdir(d)))
        # Made by a user other than root: theirs.
        os.chmod(d, 0o777)
        made = subprocess.run(as_user + ["python3", "-c", f"""
import ctypes, os
fd = os.open({str(d)!r}, os.O_TMPFILE | os.O_WRONLY, 0o640)
os.write(fd, b"user's\\n")
assert ctypes.CDLL(None).linkat(-100, f"/proc/self/fd/{{fd}}".encode(), -100, {os.fsencode(d / "users")!r}, 0x400) == 0
"""], capture_output=True, text=True)
        assert made.returncode == 0, made.stderr
        st = os.stat(d / "users")
        r += [st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), (d / "users").read_bytes()]
        return r

    ours, theirs = steps(either.root), steps(plain)
    assert theirs[:4] == [0o640, 0, 5, []]
    assert ours == theirs
    assert sorted(os.listdir(either.store / "d")) == ["by-fd", "by-proc", "users"]
    assert (either.store / "d" / "by-proc").read_bytes() == b"held\nmore\n"
    assert os.stat(either.store / "d" / "by-fd").st_ino == os.stat(either.store / "d" / "by-proc").st_ino


def test_tmpfile_linked_into_a_collection_is_indexed(either):
    """A vector written to an O_TMPFILE and then linked in is a vector of the collection like any
    other: knn answers name it, before and after a remount; a tmpfile never linked is never one."""
    c = either.root / "c"
    c.mkdir()
    (c / "q.vec").write_text("0 0 0\n")
    (c / "far.vec").write_text("5 5 5\n")
    fd = os.open(c, os.O_TMPFILE | os.O_RDWR, 0o644)
    os.write(fd, b"0.1 0.1 0.1\n")
    link_by_descriptor(fd, c / "near.vec")
    os.close(fd)
    fd = os.open(c, os.O_TMPFILE | os.O_WRONLY, 0o644)
    os.write(fd, b"0.01 0 0\n")  # nearest of all, but never named
    os.close(fd)
    # Linked while still open and written after: the close brings the last bytes.
    fd = os.open(c, os.O_TMPFILE | os.O_WRONLY, 0o644)
    os.write(fd, b"9 9 9\n")
    link_through_proc(fd, c / "moved.vec")
    os.ftruncate(fd, 0)
    os.pwrite(fd, b"0.2 0.2 0.2\n", 0)
    os.close(fd)

    def answer():
        return [line.split("\t")[0] for line in os.getxattr(c / "q.vec", "user.vexfs.knn").decode().splitlines()]

    assert answer() == ["near.vec", "moved.vec", "far.vec"]
    assert os.getxattr(c, "user.vexfs.count") == b"4"
    either.unmount()
    either.mount()
    assert answer() == ["near.vec", "moved.vec", "far.vec"]


@pytest.mark.parametrize("reads", ["splice", "no_splice"])
def test_tmpfile_whichever_way_the_daemon_reads_requests(make_mount, reads):
    """The daemon reads requests with splice(2) by default and with read(2) under -o no_splice: O_TMPFILE
    works on both paths, and so do the requests around it (a large write, a small create)."""
    m = make_mount("-o", f"no_passthrough,{reads}")
    m.mount()
    fd = os.open(m.root, os.O_TMPFILE | os.O_RDWR, 0o600)
    big = os.urandom(1 << 20)
    assert os.write(fd, big) == len(big)
    link_by_descriptor(fd, m.root / "t")
    os.close(fd)
    (m.root / "a").write_bytes(b"x")  # a CREATE of a one-letter name is as long as a TMPFILE
    m.unmount()
    m.mount()
    assert (m.root / "t").read_bytes() == big
    assert (m.store / "a").read_bytes() == b"x"


def test_a_user_appends_to_an_append_only_file_as_on_the_store(either, plain):
    """generic/079: a user other than root may open an append-only file to append (the daemon's
    check for a capability to drop must not try to remove one that is not there: removexattr is
    refused on such a file); writing in place and truncating stay refused."""
    as_user = open_to(either, plain, 100, 100)

    def steps(root):
        f = root / "append-only"
        f.write_text("first\n")
        os.chmod(f, 0o666)
        subprocess.run(["chattr", "+a", str(f)], check=True)
        try:
            r = []
            for flags in ("os.O_WRONLY | os.O_APPEND", "os.O_RDWR | os.O_APPEND", "os.O_WRONLY", "os.O_WRONLY | os.O_APPEND | os.O_TRUNC"):
                done = subprocess.run(as_user + ["python3", "-c", f"""
import os, sys
try:
    fd = os.open({str(f)!r}, {flags})
except OSError as e:
    sys.exit(e.errno)
os.write(fd, b"appended\\n")
"""], capture_output=True, text=True)
                r.append(done.returncode)
            return r, f.read_text()
        finally:
            subprocess.run(["chattr", "-a", str(f)], check=True)

    ours, theirs = steps(either.root), steps(plain)
    assert theirs == ([0, 0, errno.EPERM, errno.EPERM], "first\nappended\nappended\n")
    assert ours == theirs


def test_a_group_member_truncating_keeps_setgid_without_group_execute(either, plain):
    """generic/193: a user in a file's group who truncates and writes it drops set-user-ID, and keeps
    set-group-ID where group execute is off (it grants nothing then), as on the store; with group
    execute on, both go."""
    as_user = open_to(either, plain, 100, 100)

    def steps(root):
        r = []
        for mode in (0o6666, 0o6676):
            f = root / f"f{mode:o}"
            f.write_text("x\n")
            os.chown(f, 0, 100)
            os.chmod(f, mode)
            subprocess.run(as_user + ["sh", "-c", f"echo > {f}"], check=True)
            r.append(oct(stat.S_IMODE(os.stat(f).st_mode)))
        return r

    ours, theirs = steps(either.root), steps(plain)
    assert theirs == [oct(0o2666), oct(0o0676)]
    assert ours == theirs


def test_a_writer_outside_the_group_drops_setgid_as_on_the_store(either, plain):
    """generic/683-685: a user outside a set-group-ID file's group who truncates, writes or
    allocates in it drops set-group-ID even without group execute, as on the store."""
    as_user = open_to(either, plain, 100, 101)

    def steps(root):
        r = []
        for how in ("echo > {f}", "python3 -c \"import os; fd = os.open('{f}', os.O_WRONLY); os.posix_fallocate(fd, 0, 8192)\""):
            f = root / f"f{len(r)}"
            f.write_text("x\n")
            os.chown(f, 0, 100)
            os.chmod(f, 0o2666)
            subprocess.run(as_user + ["sh", "-c", how.format(f=f)], check=True)
            r.append(oct(stat.S_IMODE(os.stat(f).st_mode)))
        return r

    ours, theirs = steps(either.root), steps(plain)
    assert theirs == [oct(0o666), oct(0o666)]
    assert ours == theirs



# statx(2) beyond stat (generic/424, generic/528): the kernel asks for a birth time with FUSE_STATX

STATX_BASIC_STATS, STATX_BTIME, AT_STATX_FORCE_SYNC, AT_SYMLINK_NOFOLLOW = 0x7FF, 0x800, 0x2000, 0x100
STATX_ATTR_IMMUTABLE, STATX_ATTR_APPEND = 0x10, 0x20


def statx(path=None, fd=None):
    """statx(2) for the basic fields and the birth time, of `path` (not following a symlink) or of the
    open `fd`, asked of the filesystem (not its cache): the fields the tests compare."""
    buf = ctypes.create_string_buffer(256)
    mask = STATX_BASIC_STATS | STATX_BTIME
    if fd is None:
        r = libc.statx(-100, os.fsencode(path), AT_SYMLINK_NOFOLLOW | AT_STATX_FORCE_SYNC, mask, buf)
    else:
        r = libc.statx(fd, b"", AT_EMPTY_PATH | AT_STATX_FORCE_SYNC, mask, buf)
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(path))
    got, _, attributes, nlink, uid, gid, mode = struct.unpack_from("<IIQIIIH", buf, 0)
    size = struct.unpack_from("<Q", buf, 40)[0]
    btime, mtime = struct.unpack_from("<qI", buf, 80), struct.unpack_from("<qI", buf, 112)
    return {"mask": got & (STATX_BASIC_STATS | STATX_BTIME), "attributes": attributes, "nlink": nlink, "uid": uid,
            "gid": gid, "mode": mode, "size": size, "mtime": mtime, "btime": btime if got & STATX_BTIME else None}


def same_as_stat(fields, st):
    """The basic fields statx gave are those stat(2) gives."""
    return (fields["mode"], fields["uid"], fields["gid"], fields["size"], fields["nlink"], fields["mtime"]) == (
        st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_nlink, (st.st_mtime_ns // 10**9, st.st_mtime_ns % 10**9))


def test_statx_gives_the_store_files_birth_time(either):
    """generic/528: statx through the mount gives each file's birth time as the store's filesystem
    records it (files, directories, symlinks, an open file), with the basic fields stat gives; vexfs's
    own files have none. chattr +a and +i never show a flag the store's file lacks (kernel 6.18 passes
    none of FUSE_STATX's attribute flags on; a later one shows the store's). A remount changes nothing."""
    root, store = either.root, either.store
    (root / "f").write_text("x\n")
    (root / "d").mkdir()
    os.symlink("f", root / "l")
    os.chown(root / "f", 1234, 5678)
    names = ["f", "d", "l"]

    def check():
        for name in names:
            ours, theirs = statx(root / name), statx(store / name)
            assert ours["mask"] == STATX_BASIC_STATS | STATX_BTIME, name
            assert ours["btime"] == theirs["btime"] is not None, name
            assert same_as_stat(ours, os.lstat(root / name)) and same_as_stat(ours, os.lstat(store / name)), name
        fd = os.open(root / "f", os.O_RDONLY)
        try:
            assert statx(fd=fd)["btime"] == statx(store / "f")["btime"]
        finally:
            os.close(fd)
        stats = root / ".vexfs" / "stats"
        ours = statx(stats)
        assert ours["mask"] == STATX_BASIC_STATS and ours["btime"] is None
        assert same_as_stat(ours, os.stat(stats))

    check()
    for flag, bit in (("+a", STATX_ATTR_APPEND), ("+i", STATX_ATTR_IMMUTABLE)):
        subprocess.run(["chattr", flag, str(root / "f")], check=True)
        theirs = statx(store / "f")["attributes"] & bit
        assert theirs == bit
        assert statx(root / "f")["attributes"] & bit in (0, theirs)
        assert statx(root / "f")["btime"] == statx(store / "f")["btime"]
        subprocess.run(["chattr", "-" + flag[1:], str(root / "f")], check=True)
    either.unmount()
    either.mount()
    check()


@pytest.mark.parametrize("reads", ["io_uring", "splice", "no_splice"])
def test_statx_whichever_way_the_daemon_reads_requests(make_mount, reads):
    """FUSE_STATX is answered over io_uring, and on /dev/fuse read with splice(2) or read(2); requests
    of a STATX's length (a LOOKUP of a 23-byte name) and the ones around it still work."""
    m = make_mount()
    options = "io_uring" if reads == "io_uring" else f"no_io_uring,{reads}"
    name = "n" * 23
    big = os.urandom(1 << 20)
    for first in (True, False):
        # The suite's VEXFS_MOUNT_OPTIONS are left out: the transport is what this test is about.
        subprocess.run([VEXFS_BIN, "mount", str(m.store), str(m.root), "-o", options], check=True, timeout=60)
        m.pid = daemon_pid(m.store)
        if first:
            (m.root / name).write_bytes(big)
        assert statx(m.root / name)["btime"] == statx(m.store / name)["btime"] is not None
        assert os.stat(m.root / name).st_size == len(big)
        assert (m.root / name).read_bytes() == big
        m.unmount()


# generic/732: the same store mounted at a second mountpoint on one machine


def mounted_device(root):
    """The mount's device ("major:minor") in /proc/self/mountinfo, or None."""
    with open("/proc/self/mountinfo") as f:
        return next((line.split()[2] for line in f if line.split()[4] == str(root)), None)


@pytest.mark.parametrize("mode", list(MODES))
def test_a_second_mount_of_a_served_store_is_the_same_filesystem(make_mount, tmp_path, mode):
    """generic/732: mounting a store this machine serves at a second mountpoint shows the same
    filesystem there (one superblock, one daemon, as a second mount of one ext4 device), renames
    through either are seen through the other, a read-only second mount refuses writes, and each
    mountpoint unmounts alone; after the last, the daemon is gone and a new mount has everything."""
    m = make_mount(*MODES[mode])
    m.mount()
    second, third = tmp_path / "second", tmp_path / "third"
    second.mkdir()
    third.mkdir()
    try:
        subprocess.run([VEXFS_BIN, "mount", str(m.store), str(second), *MODES[mode]], check=True, timeout=60)
        assert mounted_device(second) == mounted_device(m.root) is not None
        assert daemon_pid(m.store) == m.pid, "no second daemon"
        (m.root / "A").mkdir()
        (m.root / "B").mkdir()
        (m.root / "A" / "f").write_text("one\n")
        os.rename(m.root / "A" / "f", m.root / "B" / "f")
        assert (second / "B" / "f").read_text() == "one\n"
        os.rename(second / "B" / "f", second / "A" / "f")
        assert (m.root / "A" / "f").read_text() == "one\n"
        os.rename(m.root / "A" / "f", m.root / "B" / "f")
        assert sorted(os.listdir(second / "B")) == ["f"] and os.listdir(second / "A") == []
        (second / "c").mkdir()
        for i in range(5):
            (second / "c" / f"{i}.vec").write_text(f"{i} 0 1")
        near = os.getxattr(m.root / "c" / "0.vec", "user.vexfs.knn.2").decode().splitlines()
        assert near == os.getxattr(second / "c" / "0.vec", "user.vexfs.knn.2").decode().splitlines()
        assert [line.split()[0] for line in near] == ["1.vec", "2.vec"]

        subprocess.run([VEXFS_BIN, "mount", str(m.store), str(third), "-o", "ro"], check=True, timeout=60)
        assert (third / "B" / "f").read_text() == "one\n"
        with pytest.raises(OSError) as refused:
            (third / "g").write_text("no")
        assert refused.value.errno == errno.EROFS
        subprocess.run([VEXFS_BIN, "unmount", str(third)], check=True, timeout=60)

        # The first mountpoint goes; the daemon serves on through the second.
        subprocess.run([VEXFS_BIN, "unmount", str(m.root)], check=True, timeout=60)
        assert mounted_device(m.root) is None
        assert (second / "B" / "f").read_text() == "one\n"
        (second / "B" / "g").write_text("two\n")
        os.kill(m.pid, 0)
        subprocess.run([VEXFS_BIN, "unmount", str(second)], check=True, timeout=60)
        assert mounted_device(second) is None
        with open(m.store / ".vexfs" / "mount.lock") as lock:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)  # the daemon has exited
    finally:
        for d in (third, second):
            if mounted_device(d):
                subprocess.run(["umount", "-l", str(d)], check=False)
    m.mount()
    assert (m.root / "B" / "g").read_text() == "two\n" and (m.root / "B" / "f").read_text() == "one\n"
    assert os.getxattr(m.root / "c" / "0.vec", "user.vexfs.knn.2").decode().splitlines() == near


# generic/260, 288, 537 (FITRIM) and generic/492 (the filesystem label): ioctls on the whole filesystem


FITRIM, FS_IOC_GETFSLABEL, FS_IOC_SETFSLABEL = 0xC0185879, 0x81009431, 0x41009432
ONE_MIB, LAST_BYTE = 1 << 20, 2**64 - 1
AS_USER = """import errno, fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
try:
    fcntl.ioctl(fd, int(sys.argv[2]), bytearray(int(sys.argv[3])), True)
    print("ok")
except OSError as e:
    print(errno.errorcode[e.errno])
"""


@pytest.fixture
def ext4_dir(tmp_path):
    """An ext4 filesystem of its own (64 MiB on a loop device, which passes discards on to its image),
    to hold a store and to compare with. Ask for it before make_mount: it is unmounted after them."""
    if os.geteuid() != 0:
        pytest.skip("needs root (a loop device)")
    image, top = tmp_path / "ext4.img", tmp_path / "ext4"
    with open(image, "wb") as f:
        f.truncate(64 * ONE_MIB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    top.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(top)], check=True)
    yield top
    if subprocess.run(["umount", str(top)]).returncode != 0:
        subprocess.run(["umount", "-l", str(top)], check=False)


def sync_filesystem(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        assert libc.syncfs(fd) == 0
    finally:
        os.close(fd)


def trim(target, start, length, minimum=0):
    """FITRIM on `target` (a path, or an open descriptor): the trimmed length, or the errno."""
    fd = os.open(target, os.O_RDONLY) if not isinstance(target, int) else target
    try:
        buf = bytearray(struct.pack("QQQ", start, length, minimum))
        fcntl.ioctl(fd, FITRIM, buf, True)
        return struct.unpack("QQQ", buf)[1]
    except OSError as e:
        return errno.errorcode[e.errno]
    finally:
        if not isinstance(target, int):
            os.close(fd)


def label_ioctl(target, request, label=b""):
    """FS_IOC_GETFSLABEL (the label) or FS_IOC_SETFSLABEL (b"") on `target`, or the errno's name."""
    fd = os.open(target, os.O_RDONLY) if not isinstance(target, int) else target
    try:
        buf = bytearray(label.ljust(256, b"\0")[:256])
        fcntl.ioctl(fd, request, buf, True)
        return bytes(buf).split(b"\0")[0] if request == FS_IOC_GETFSLABEL else b""
    except OSError as e:
        return errno.errorcode[e.errno]
    finally:
        if not isinstance(target, int):
            os.close(fd)


def as_user(tmp_path, path, request, size):
    """The ioctl `request` (a zeroed buffer of `size` bytes) on `path` by uid 100: "ok" or the errno."""
    for d in [tmp_path, *list(tmp_path.parents)[:2]]:
        os.chmod(d, 0o755)
    out = subprocess.run(["setpriv", "--reuid=100", "--regid=100", "--clear-groups", "python3", "-c", AS_USER,
                          str(path), str(request), str(size)], capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.parametrize("mode", list(MODES))
def test_fstrim_trims_the_store_filesystem_for_root_alone(ext4_dir, make_mount, tmp_path, mode):
    """generic/260, 288, 537: FITRIM through the mount trims the store's filesystem, which clamps the
    range and answers as it does to FITRIM on itself (the trimmed length; EINVAL for a start past
    its end); a user who is not root gets EPERM, as from ext4."""
    store = ext4_dir / "store"
    store.mkdir()
    m = make_mount("-o", "allow_other", *MODES[mode], store=store)
    m.mount()
    sv = os.statvfs(ext4_dir)
    size = sv.f_blocks * sv.f_frsize
    # xfstests takes the filesystem's end from df of the mount.
    assert os.statvfs(m.root).f_blocks * os.statvfs(m.root).f_frsize == size
    (m.root / "f").write_bytes(os.urandom(4 * ONE_MIB))
    sync_filesystem(ext4_dir)
    os.unlink(m.root / "f")
    sync_filesystem(ext4_dir)
    trimmed = trim(m.root, 0, LAST_BYTE)
    assert isinstance(trimmed, int) and size // 2 < trimmed <= size, trimmed
    # Past the end and at the last byte: refused as by the store's filesystem itself.
    for start in (2 * size, LAST_BYTE):
        assert trim(m.root, start, ONE_MIB) == trim(ext4_dir, start, ONE_MIB) == "EINVAL"
    # A length past the end is clamped: what is free from 10 MiB on, at most the rest.
    assert isinstance(trim(m.root, 10 * ONE_MIB, 2 * size), int)
    with open(m.root / "g", "w+b") as f:  # any handle of the mount, a file's too
        f.write(b"x")
        assert isinstance(trim(f.fileno(), 0, LAST_BYTE), int)
    out = subprocess.run(["fstrim", "-v", str(m.root)], capture_output=True, text=True, check=True).stdout
    assert "trimmed" in out
    assert as_user(tmp_path, m.root, FITRIM, 24) == as_user(tmp_path, ext4_dir, FITRIM, 24) == "EPERM"
    m.unmount()
    m.mount()
    assert (m.root / "g").read_bytes() == b"x"
    assert isinstance(trim(m.root, 0, LAST_BYTE), int)


def test_the_mount_has_a_label_of_its_own_that_survives_remounts(ext4_dir, make_mount, tmp_path):
    """generic/492: FS_IOC_GETFSLABEL and FS_IOC_SETFSLABEL on any handle of the mount read and set
    the mount's own label, not the store filesystem's; root alone sets it, anyone reads it; at most
    255 bytes (FSLABEL_MAX with its NUL; EINVAL beyond, as ext4 answers); it is kept across
    remounts, an empty label clears it, and a read-only mount refuses a new one."""
    store = ext4_dir / "store"
    store.mkdir()
    m = make_mount("-o", "allow_other", store=store)
    m.mount()
    assert label_ioctl(m.root, FS_IOC_GETFSLABEL) == b""
    assert label_ioctl(m.root, FS_IOC_SETFSLABEL, b"label.492") == b""
    assert label_ioctl(m.root, FS_IOC_GETFSLABEL) == b"label.492"
    out = subprocess.run(["xfs_io", "-c", "label", str(m.root)], capture_output=True, text=True, check=True).stdout
    assert out.strip() == 'label = "label.492"'
    assert label_ioctl(ext4_dir, FS_IOC_GETFSLABEL) == b"", "the store's filesystem keeps its own"
    with open(m.root / "f", "w") as f:
        assert label_ioctl(f.fileno(), FS_IOC_GETFSLABEL) == b"label.492"
    assert label_ioctl(m.root, FS_IOC_SETFSLABEL, b"o" * 255) == b""
    assert label_ioctl(m.root, FS_IOC_GETFSLABEL) == b"o" * 255
    too_long = b"l" * 256  # no NUL within FSLABEL_MAX bytes
    assert label_ioctl(m.root, FS_IOC_SETFSLABEL, too_long) == label_ioctl(ext4_dir, FS_IOC_SETFSLABEL, too_long) == "EINVAL"
    assert label_ioctl(m.root, FS_IOC_GETFSLABEL) == b"o" * 255
    assert as_user(tmp_path, m.root, FS_IOC_SETFSLABEL, 256) == as_user(tmp_path, ext4_dir, FS_IOC_SETFSLABEL, 256) == "EPERM"
    assert as_user(tmp_path, m.root, FS_IOC_GETFSLABEL, 256) == "ok"
    assert label_ioctl(m.root, FS_IOC_SETFSLABEL, b"kept") == b""
    m.unmount()
    assert (store / ".vexfs" / "label").read_bytes() == b"kept"
    m.mount()
    assert label_ioctl(m.root, FS_IOC_GETFSLABEL) == b"kept"
    assert label_ioctl(m.root, FS_IOC_SETFSLABEL, b"") == b""
    assert label_ioctl(m.root, FS_IOC_GETFSLABEL) == b""
    m.unmount()
    assert not (store / ".vexfs" / "label").exists()
    (store / ".vexfs" / "label").write_bytes(b"by hand\0rest")  # read up to its first NUL
    m.mount("-o", "ro")
    assert label_ioctl(m.root, FS_IOC_GETFSLABEL) == b"by hand"
    assert label_ioctl(m.root, FS_IOC_SETFSLABEL, b"new") == "EROFS"
    m.unmount()
    m.mount()
    assert label_ioctl(m.root, FS_IOC_GETFSLABEL) == b"by hand"
    # Anything but a file there is no label, and a new label replaces it (a link is not followed).
    m.unmount()
    secret = tmp_path / "secret"
    secret.write_bytes(b"not a label")
    (store / ".vexfs" / "label").unlink()
    (store / ".vexfs" / "label").symlink_to(secret)
    m.mount()
    assert label_ioctl(m.root, FS_IOC_GETFSLABEL) == b""
    assert label_ioctl(m.root, FS_IOC_SETFSLABEL, b"replaced") == b""
    assert secret.read_bytes() == b"not a label"
    assert label_ioctl(m.root, FS_IOC_GETFSLABEL) == b"replaced"
    (store / ".vexfs" / "label").unlink()
    os.mkfifo(store / ".vexfs" / "label")
    assert label_ioctl(m.root, FS_IOC_GETFSLABEL) == b""


def test_a_new_label_is_refused_after_a_remount_read_only(ext4_dir, make_mount):
    """`mount -o remount,ro` reaches the daemon as no request, yet a new label is refused (EROFS)
    until `remount,rw`, as on ext4; the label set before stays."""
    store = ext4_dir / "store"
    store.mkdir()
    m = make_mount("-o", "allow_other", store=store)

    def steps(root):
        assert label_ioctl(root, FS_IOC_SETFSLABEL, b"rw") == b""
        subprocess.run(["mount", "-i", "-o", "remount,ro", str(root)], check=True)
        try:
            assert label_ioctl(root, FS_IOC_SETFSLABEL, b"ro") == "EROFS"
            assert label_ioctl(root, FS_IOC_GETFSLABEL) == b"rw"
        finally:
            subprocess.run(["mount", "-i", "-o", "remount,rw", str(root)], check=True)
        assert label_ioctl(root, FS_IOC_SETFSLABEL, b"rw again") == b""

    m.mount()
    steps(m.root)
    m.unmount()
    steps(ext4_dir)  # with no daemon holding files open on it for writing, which would keep it rw
    m.mount()
    assert label_ioctl(m.root, FS_IOC_GETFSLABEL) == b"rw again"


# generic/537: ro,norecovery, a mount that brings nothing up to date and writes nothing


def tree(store):
    """Every path under `store` (STORE/.vexfs included) and the store itself, with its type, size,
    mtime and ctime, and a file's atime: what any write into the store or its state would change, or
    any read of a file (a directory's atime is left out: this walk reads them itself)."""
    def entry(p):
        st = os.lstat(p)
        atime = st.st_atime_ns if stat.S_ISREG(st.st_mode) else None
        return stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns, st.st_ctime_ns, atime
    out = {".": entry(store)}
    for top, dirs, files in os.walk(store):
        for n in dirs + files:
            out[os.path.relpath(os.path.join(top, n), store)] = entry(os.path.join(top, n))
    return out


def knn_names(path, k=10):
    return [line.split("\t")[0] for line in os.getxattr(path, f"user.vexfs.knn.{k}").decode().splitlines()]


def gauge(m, name):
    """The value of an unlabelled line of `.vexfs/stats`."""
    for line in (m.root / ".vexfs" / "stats").read_text().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def serving_pid(m):
    """The daemon serving `m`, found by its command line: a norecovery daemon records no pid in the
    store's lock, which still names the last daemon that did."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            args = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if b"mount" in args and os.fsencode(str(m.root)) in args and os.fsencode(str(m.store)) in args:
            return int(pid)
    return None


@pytest.mark.parametrize("mode", list(MODES))
def test_norecovery_answers_from_the_snapshot_and_writes_nothing(make_mount, mode):
    """generic/537: `-o ro,norecovery` answers from the snapshots as written (a file added since is
    not read), refuses FITRIM and a new label (EROFS), shows itself in the stats, and leaves every
    file of the store and of its state as it was; without ro it is refused; the next mount without
    it reads the new file."""
    m = make_mount("-o", "allow_other", *MODES[mode])
    m.mount()
    c = m.root / "c"
    c.mkdir()
    for i in range(5):
        (c / f"v{i}.vec").write_text(f"{i} 0\n")
    assert knn_names(c / "v0.vec") == ["v1.vec", "v2.vec", "v3.vec", "v4.vec"]
    assert label_ioctl(m.root, FS_IOC_SETFSLABEL, b"before") == b""
    m.unmount()
    # Changed behind the mount's back, as a crash between a write and a snapshot would leave it.
    (m.store / "c" / "v9.vec").write_text("0.5 0\n")
    before = tree(m.store)

    m.mount("-o", "ro,norecovery")
    m.pid = serving_pid(m)
    try:
        assert knn_names(c / "v0.vec") == ["v1.vec", "v2.vec", "v3.vec", "v4.vec"], "as the snapshot holds them"
        status = os.getxattr(c, "user.vexfs.status").decode()
        assert "snapshot loaded as written (norecovery), 1 file changed since not read" in status, status
        assert gauge(m, "vexfs_norecovery") == 1
        assert trim(m.root, 0, LAST_BYTE) == "EROFS"
        assert label_ioctl(m.root, FS_IOC_GETFSLABEL) == b"before"
        assert label_ioctl(m.root, FS_IOC_SETFSLABEL, b"after") == "EROFS"
        with pytest.raises(OSError) as e:
            (c / "new.vec").write_text("1 1\n")
        assert e.value.errno == errno.EROFS
        assert (m.root / ".vexfs" / "journal").read_bytes()  # what was kept, shown
        assert (c / "v9.vec").read_text() == "0.5 0\n"
    finally:
        m.unmount()
    assert tree(m.store) == before

    out = subprocess.run([VEXFS_BIN, "mount", str(m.store), str(m.root), "-o", "norecovery"], capture_output=True, text=True)
    assert out.returncode != 0 and "norecovery needs ro" in out.stderr, out.stderr
    assert tree(m.store) == before

    m.mount()
    assert knn_names(c / "v0.vec") == ["v9.vec", "v1.vec", "v2.vec", "v3.vec", "v4.vec"]
    assert "1 files read again" in os.getxattr(c, "user.vexfs.status").decode()
    assert gauge(m, "vexfs_norecovery") == 0
    m.unmount()
    m.mount()
    assert knn_names(c / "v0.vec") == ["v9.vec", "v1.vec", "v2.vec", "v3.vec", "v4.vec"]
    assert label_ioctl(m.root, FS_IOC_GETFSLABEL) == b"before"


def test_norecovery_makes_no_state_in_a_store_never_mounted(make_mount):
    """A store vexfs never mounted gets no STORE/.vexfs from a norecovery mount, and its files serve."""
    m = make_mount("-o", "allow_other")
    (m.store / "c").mkdir()
    (m.store / "c" / "a.vec").write_text("1 2\n")
    before = tree(m.store)
    m.mount("-o", "ro,norecovery")
    m.pid = serving_pid(m)
    try:
        assert (m.root / "c" / "a.vec").read_text() == "1 2\n"
        assert "not a collection yet" in os.getxattr(m.root / "c", "user.vexfs.status").decode()
    finally:
        m.unmount()
    assert tree(m.store) == before
    assert not (m.store / ".vexfs").exists()
    m.mount()
    assert knn_names(m.root / "c" / "a.vec") == []
    assert os.getxattr(m.root / "c", "user.vexfs.dim") == b"2"
    m.unmount()
    m.mount()
    assert os.getxattr(m.root / "c", "user.vexfs.dim") == b"2"
