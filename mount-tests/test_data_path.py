"""The data path: FUSE passthrough (on by default) and through the daemon (-o no_passthrough), O_DIRECT
in both, and the index and `stat` staying right when the daemon no longer sees the writes."""
import mmap
import os
import struct
import subprocess
import time

import pytest

from test_posix import parse_prometheus

MODES = {"passthrough": (), "no_passthrough": ("-o", "no_passthrough")}


def stats(m):
    return parse_prometheus((m.root / ".vexfs" / "stats").read_text())


def requests(m, op):
    return stats(m).get(("vexfs_fuse_requests_total", f'op="{op}"'), 0)


def settled_requests(m, op):
    """requests(m, op) once it stops moving: a request is counted just after it is answered, so the
    count of the last one a caller waited for may land a moment after the caller goes on."""
    last = requests(m, op)
    for _ in range(50):
        time.sleep(0.1)
        now = requests(m, op)
        if now == last:
            return now
        last = now
    return last


def knn(path):
    text = os.getxattr(path, "user.vexfs.knn").decode()
    return [(n, float(d)) for n, d in (line.split("\t") for line in text.splitlines())]


@pytest.fixture(params=list(MODES))
def either(request, make_mount):
    m = make_mount(*MODES[request.param])
    m.mount()
    m.mode = request.param
    return m


def test_stats_say_whether_passthrough_is_on_and_why_not(make_mount):
    on = make_mount()
    on.mount()
    assert stats(on)[("vexfs_fuse_passthrough", 'reason="on"')] == 1, "kernel 6.18 as root offers passthrough"
    off = make_mount("-o", "no_passthrough")
    off.mount()
    assert stats(off)[("vexfs_fuse_passthrough", 'reason="turned off by -o no_passthrough"')] == 0
    wb = make_mount("-o", "writeback")
    wb.mount()
    s = stats(wb)
    [(labels, value)] = [(labels, v) for (name, labels), v in s.items() if name == "vexfs_fuse_passthrough"]
    assert value == 0 and "writeback" in labels
    (wb.root / "f").write_bytes(b"through the daemon")
    assert (wb.root / "f").read_bytes() == b"through the daemon"


def test_writes_pass_through_or_reach_the_daemon_as_chosen(either):
    data = os.urandom(3 << 20)
    (either.root / "f").write_bytes(data)
    assert (either.root / "f").read_bytes() == data
    assert (either.store / "f").read_bytes() == data
    if either.mode == "passthrough":
        assert requests(either, "writeBuf") == 0, "the kernel wrote to the store itself"
        assert stats(either)[("vexfs_fuse_passthrough_backing_files", "")] == 0, "released at close"
    else:
        assert requests(either, "writeBuf") > 0


def test_direct_io_round_trip(either, tmp_path):
    src, back = tmp_path / "src", tmp_path / "back"
    src.write_bytes(os.urandom(8 << 20))
    target = either.root / "direct"
    subprocess.run(["dd", f"if={src}", f"of={target}", "bs=1M", "oflag=direct", "status=none"], check=True)
    subprocess.run(["dd", f"if={target}", f"of={back}", "bs=1M", "iflag=direct", "status=none"], check=True)
    assert back.read_bytes() == src.read_bytes()
    assert (either.store / "direct").read_bytes() == src.read_bytes()
    assert os.stat(target).st_size == 8 << 20
    # 4 KiB direct writes at an offset, from an aligned buffer, as fsx -Z makes them.
    fd = os.open(target, os.O_RDWR | os.O_DIRECT)
    try:
        buf = mmap.mmap(-1, 4096)
        buf.write(b"z" * 4096)
        assert os.pwritev(fd, [buf], 12288) == 4096
        out = mmap.mmap(-1, 4096)
        assert os.preadv(fd, [out], 12288) == 4096
        assert out[:] == b"z" * 4096
    finally:
        os.close(fd)
    assert (either.store / "direct").read_bytes()[12288:16384] == b"z" * 4096


def test_vectors_written_by_write_and_by_mmap_are_indexed(either):
    coll = either.root / "c"
    coll.mkdir()
    (coll / "q.f32").write_bytes(struct.pack("<3f", 0, 0, 0))
    (coll / "a.f32").write_bytes(struct.pack("<3f", 1, 0, 0))
    assert knn(coll / "q.f32") == [("a.f32", 1.0)]
    before = os.stat(coll / "a.f32")
    time.sleep(0.02)
    # Through a shared mapping: the daemon sees no write; flush and release see the file change.
    fd = os.open(coll / "a.f32", os.O_RDWR)
    with mmap.mmap(fd, 12) as m:
        m[:] = struct.pack("<3f", 3, 4, 0)
        m.flush()
    os.close(fd)
    assert knn(coll / "q.f32") == [("a.f32", 5.0)]
    after = os.stat(coll / "a.f32")
    assert after.st_mtime_ns > before.st_mtime_ns, "stat shows the mapping's write at once"
    # A plain write that grows the file: a second row is not a .f32 vector any more.
    with open(coll / "a.f32", "ab") as f:
        f.write(struct.pack("<f", 1))
    grown = os.stat(coll / "a.f32")
    assert grown.st_size == 16 and grown.st_mtime_ns >= after.st_mtime_ns
    assert os.stat(either.store / "c" / "a.f32").st_size == 16
    # The mapping stays after close(2): its writes count at the last release.
    (coll / "b.f32").write_bytes(struct.pack("<3f", 0, 0, 9))
    fd = os.open(coll / "b.f32", os.O_RDWR)
    m = mmap.mmap(fd, 12)
    os.close(fd)
    m[:] = struct.pack("<3f", 0, 2, 0)
    m.close()
    deadline = time.time() + 5
    while time.time() < deadline and knn(coll / "q.f32")[0] != ("b.f32", 2.0):
        time.sleep(0.05)  # the release that follows munmap is asynchronous
    assert knn(coll / "q.f32")[0] == ("b.f32", 2.0)


def test_hard_links_truncate_and_rename_under_passthrough(either):
    a, b = either.root / "a", either.root / "b"
    a.mkdir()
    b.mkdir()
    (a / "q.f32").write_bytes(struct.pack("<2f", 0, 0))
    (b / "q.f32").write_bytes(struct.pack("<2f", 0, 0))
    (a / "v.f32").write_bytes(struct.pack("<2f", 1, 0))
    os.link(a / "v.f32", b / "w.f32")
    with open(b / "w.f32", "r+b") as f:  # written through the other name
        f.write(struct.pack("<2f", 0, 2))
    assert knn(a / "q.f32") == [("v.f32", 2.0)]
    assert knn(b / "q.f32") == [("w.f32", 2.0)]
    os.rename(a / "v.f32", a / "u.f32")
    assert knn(a / "q.f32") == [("u.f32", 2.0)]
    with open(a / "u.f32", "r+b") as f:
        f.truncate(0)
    assert os.getxattr(a / "q.f32", "user.vexfs.knn") == b""
    assert os.stat(b / "w.f32").st_size == 0


def test_a_readers_close_costs_no_flush_and_a_writers_close_still_indexes(either):
    """close(2) of a handle opened read-only sends no FLUSH (the kernel keeps POSIX locks itself and
    nothing was written); a handle that can write is flushed, so its vectors answer right after the
    close, also after a remount."""
    coll = either.root / "c"
    coll.mkdir()
    (coll / "q.f32").write_bytes(struct.pack("<3f", 0, 0, 0))
    for i in range(20):
        (coll / f"v{i}.f32").write_bytes(struct.pack("<3f", i + 1, 0, 0))
    before = settled_requests(either, "flush")
    for i in range(20):
        with open(coll / f"v{i}.f32", "rb") as f:
            assert f.read() == struct.pack("<3f", i + 1, 0, 0)
    subprocess.run(["cat", *(str(coll / f"v{i}.f32") for i in range(20))], check=True, stdout=subprocess.DEVNULL)
    assert settled_requests(either, "flush") == before
    # Every handle that can write is still flushed, written through or not.
    fd = os.open(coll / "v0.f32", os.O_RDWR)
    os.close(fd)
    with open(coll / "v1.f32", "r+b") as f:
        f.write(struct.pack("<3f", 0.5, 0, 0))
    assert settled_requests(either, "flush") == before + 2
    assert knn(coll / "q.f32")[0] == ("v1.f32", 0.5)
    either.unmount()
    either.mount()
    assert knn(coll / "q.f32")[0] == ("v1.f32", 0.5)
    assert (coll / "v7.f32").read_bytes() == struct.pack("<3f", 8, 0, 0)
