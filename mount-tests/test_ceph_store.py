"""A store on CephFS (scripts/ceph-up, two ceph-fuse clients standing for machines A and B): the two
clients agree on files, sizes, xattrs and `ceph.dir.rctime`, and one vexfs mount over client A
works end to end, with and without FUSE passthrough onto the ceph-fuse backing files, and finds after
a remount what machine B wrote into its store."""
import os
import time

import numpy as np
import pytest

from ceph import ceph_machines  # noqa: F401 (a fixture)
from test_data_path import requests, stats

MODES = {"passthrough": (), "no_passthrough": ("-o", "no_passthrough")}


def ask(path, k=3):
    return os.getxattr(path, f"user.vexfs.knn.{k}")


def names(answer):
    return [line.split(b"\t")[0].decode() for line in answer.splitlines()]


def rctime(path):
    return os.getxattr(path, "ceph.dir.rctime").decode()


def until(check, seconds):
    """Seconds until check() held (polling), or None if it did not within `seconds`."""
    began = time.monotonic()
    while True:
        if check():
            return time.monotonic() - began
        if time.monotonic() - began > seconds:
            return None
        time.sleep(0.02)


def test_the_two_machines_see_each_others_files_sizes_and_xattrs(ceph_machines):
    a, b = ceph_machines.a / "shared", ceph_machines.b / "shared"
    a.mkdir()
    data = os.urandom(3 << 20)
    (a / "from-a").write_bytes(data)
    os.setxattr(a / "from-a", "user.colour", b"blue")
    assert (b / "from-a").stat().st_size == len(data)
    assert (b / "from-a").read_bytes() == data
    assert os.getxattr(b / "from-a", "user.colour") == b"blue"
    (b / "from-b").write_text("written on B\n")
    os.setxattr(b / "from-b", "user.colour", b"red")
    assert (a / "from-b").read_text() == "written on B\n"
    assert os.getxattr(a / "from-b", "user.colour") == b"red"
    assert sorted(os.listdir(a)) == sorted(os.listdir(b)) == ["from-a", "from-b"]
    # An overwrite that shrinks the file, and an xattr removed, cross as well.
    (b / "from-a").write_bytes(b"short")
    os.removexattr(b / "from-a", "user.colour")
    assert (a / "from-a").stat().st_size == 5 and (a / "from-a").read_bytes() == b"short"
    assert "user.colour" not in os.listxattr(a / "from-a")


def test_rctime_changes_after_a_write_on_either_machine(ceph_machines):
    a, b = ceph_machines.a / "tree", ceph_machines.b / "tree"
    (a / "deep" / "er").mkdir(parents=True)
    time.sleep(0.05)
    before = {(m, d): rctime(m / d) for m in (a, b) for d in ("deep/er", ".")}
    (b / "deep" / "er" / "new").write_text("x")
    # The written file's directory changes at once, on both machines; its ancestors when the MDS passes
    # the recursive stats up, at its next tick (mds_tick_interval, 5 s): measured 0-5.2 s here.
    for m in (a, b):
        assert until(lambda: rctime(m / "deep/er") != before[(m, "deep/er")], 2) is not None
    for m in (a, b):
        assert until(lambda: rctime(m) != before[(m, ".")], 15) is not None, f"{m} never saw the new rctime"
    assert rctime(a) == rctime(a / "deep") == rctime(a / "deep" / "er") == rctime(b)


@pytest.mark.parametrize("mode", list(MODES))
def test_a_vexfs_over_machine_a_serves_and_mounts_again(ceph_machines, make_mount, mode):
    store = ceph_machines.a / f"store-{mode}"
    m = make_mount(*MODES[mode], store=store)
    m.mount()
    c = m / "c"
    c.mkdir()
    os.setxattr(c, "user.vexfs.dim", b"50")
    rows = np.random.default_rng(25).normal(size=(2000, 50)).astype(np.float32)
    np.save(c / "d.npy", rows)
    (rows[7] + 0.01).tofile(c / "q.f32.query")
    before = ask(c / "q.f32.query")
    assert names(before)[0] == "d.npy#7"
    assert os.getxattr(c, "user.vexfs.count") == b"2000"
    s = stats(m)
    on = s[[k for k in s if k[0] == "vexfs_fuse_passthrough"][0]]
    if mode == "passthrough":
        # The kernel takes a ceph-fuse file as a backing file: it wrote the .npy itself.
        assert on == 1, f"passthrough is off over ceph-fuse: {[k for k in s if k[0] == 'vexfs_fuse_passthrough']}"
        assert requests(m, "writeBuf") == 0
    else:
        assert on == 0 and requests(m, "writeBuf") > 0
    # The bytes are the store's, read through machine B as well.
    assert np.array_equal(np.load(ceph_machines.b / f"store-{mode}" / "c" / "d.npy"), rows)
    m.unmount()
    assert (store / ".vexfs").is_dir()
    m.mount()
    assert ask(c / "q.f32.query") == before
    assert os.getxattr(c, "user.vexfs.status").startswith(b"indexed: 2000 vectors; at mount: snapshot loaded")
    m.unmount()


def test_files_machine_b_wrote_into_the_store_are_found_after_a_remount(ceph_machines, make_mount):
    store_a, store_b = ceph_machines.a / "store-shared", ceph_machines.b / "store-shared"
    m = make_mount(store=store_a)
    m.mount()
    c = m / "c"
    c.mkdir()
    os.setxattr(c, "user.vexfs.dim", b"50")
    rng = np.random.default_rng(26)
    mine = rng.normal(size=(500, 50)).astype(np.float32)
    np.save(c / "a.npy", mine)
    (mine[3] + 0.01).tofile(c / "qa.f32.query")
    assert names(ask(c / "qa.f32.query"))[0] == "a.npy#3"
    # Machine B writes a file, and a query for it, into the store while A's vexfs is mounted, and one
    # more while it is not: both are found once A mounts again.
    theirs = rng.normal(size=(300, 50)).astype(np.float32) + 5
    np.save(store_b / "c" / "b.npy", theirs)
    m.unmount()
    more = rng.normal(size=(200, 50)).astype(np.float32) - 5
    np.save(store_b / "c" / "b2.npy", more)
    (theirs[11] + 0.01).tofile(store_b / "c" / "qb.f32.query")
    m.mount()
    assert os.getxattr(c, "user.vexfs.count") == b"1000"
    assert names(ask(c / "qb.f32.query"))[0] == "b.npy#11"
    assert names(ask(c / "qa.f32.query"))[0] == "a.npy#3"
    (more[5] - 0.01).tofile(c / "q2.f32.query")
    assert names(ask(c / "q2.f32.query"))[0] == "b2.npy#5"
    m.unmount()
