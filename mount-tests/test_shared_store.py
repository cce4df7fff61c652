"""Two vexfs mounts sharing one store (`-o shared`), each over its own ceph-fuse client of one CephFS
(scripts/ceph-up; the clients stand for machines A and B): both serve reads, writes and queries of
every collection; a write through one is seen by the other's queries; a file copied straight onto
CephFS is found; a mount opening a collection another built loads its published snapshot; kill -9 of
the collection's owner hands the lease on with nothing lost; the change log of a mount that died goes
once the running mounts read it (a paused one too); a random workload from both sides ends with both
mounts agreeing on names, sizes, contents and answers. Every test unmounts, mounts again
and asks again."""
import mmap
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

from ceph import ceph_machines  # noqa: F401 (a fixture)
from conftest import VEXFS
from test_data_path import stats
from test_hostile import mallory, open_to_everyone, py  # noqa: F401 (mallory is a fixture)

# What the README promises for one write through another mount, from its close: the other mount's
# tail thread reads the change logs every 0.2 s and does nothing else, then re-reads the file (about
# 0.25 s here, p99 0.26 s on a loaded machine). The test allows the 2 s target: eight times
# that p99, for a machine whose load stretches every step (CPU, the MDS's caps, the FUSE round trips).
VISIBLE_WITHIN = 2
# For what takes more than one write's visibility: many writes, a second of the keeper's lease and
# publication round, a removal heard of and acted on.
SEEN_WITHIN = 5
# And for a file written past vexfs (rctime reaches the store's root within the MDS's 5 s tick; the
# scan runs every second).
FOREIGN_WITHIN = 15
# A dead mount's change log goes once every running mount read it: they look every LOG_ROUND s (README).
LOG_ROUND = 5
LOG_GONE_WITHIN = 20
# The kernel keeps a shared mount's attributes and entries 1 s (README); a loaded machine adds some.
CACHED_WITHIN = 3


def ask(path, k=3):
    return os.getxattr(path, f"user.vexfs.knn.{k}")


def names(answer):
    return [line.split(b"\t")[0].decode() for line in answer.splitlines()]


def until(check, seconds):
    """Seconds until check() held (polling), or None if it did not within `seconds`."""
    began = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - began
        except (OSError, IndexError):
            pass  # not there yet (an empty answer has no first line)
        if time.monotonic() - began > seconds:
            return None
        time.sleep(0.02)


def shared(make_mount, store, mount_id, extra=""):
    """A mount of `store` with the id `mount_id`, its private state in a local directory of its own
    (`state=`, as on its own machine; beside the test's mountpoints, not in /var/lib/vexfs)."""
    m = make_mount(store=store)
    m.mount_id = mount_id
    m.state = m.root.parent / f"state-{Path(store).name}-{mount_id}"
    m.options = ["-o", f"shared={mount_id},state={m.state}{extra}"]
    return m


def mount(m):
    m.mount()
    m.pid = int((m.store / ".vexfs" / "mounts" / m.mount_id / "mount.lock").read_text().split()[0])
    return m


def stat_of(m, name):
    s = stats(m)
    return sum(v for k, v in s.items() if k[0] == name)


def two(ceph_machines, make_mount, name):
    a = mount(shared(make_mount, ceph_machines.a / name, "machine-a"))
    b = mount(shared(make_mount, ceph_machines.b / name, "machine-b"))
    return a, b


def test_two_mounts_serve_reads_writes_and_queries_of_one_store(ceph_machines, make_mount):
    (ceph_machines.a / "s1").mkdir()
    a, b = two(ceph_machines, make_mount, "s1")
    rng = np.random.default_rng(1)
    (a / "c").mkdir()
    os.setxattr(a / "c", "user.vexfs.dim", b"16")
    rows = rng.normal(size=(300, 16)).astype(np.float32)
    np.save(a / "c" / "a.npy", rows)
    assert until(lambda: (b / "c").is_dir(), SEEN_WITHIN) is not None
    (rows[4] + 0.001).tofile(b / "c" / "q.f32.query")
    assert until(lambda: names(ask(b / "c" / "q.f32.query"))[0] == "a.npy#4", SEEN_WITHIN) is not None
    # B writes with cp; A's queries see it.
    theirs = rng.normal(size=(50, 16)).astype(np.float32) + 4
    tmp = Path(b.store).parent / "b-upload.npy"
    np.save(tmp, theirs)
    subprocess.run(["cp", str(tmp), str(b / "c" / "b.npy")], check=True)
    (theirs[9] + 0.001).tofile(a / "c" / "qb.f32.query")
    assert until(lambda: names(ask(a / "c" / "qb.f32.query"))[0] == "b.npy#9", SEEN_WITHIN) is not None
    assert until(lambda: os.getxattr(a / "c", "user.vexfs.count") == os.getxattr(b / "c", "user.vexfs.count") == b"350",
                 SEEN_WITHIN) is not None
    # Each mount keeps its own state; one id is one daemon at a time.
    for m in (a, b):
        assert (m.state / "journal").is_dir() and (m.state / "index").is_dir()
        assert not (m.store / ".vexfs" / "mounts" / m.mount_id / "index").exists()
        assert stat_of(m, "vexfs_shared") == 1
    # Through machine B: the id lock is on CephFS, so it holds across machines.
    again = make_mount(store=ceph_machines.b / "s1")
    r = subprocess.run([VEXFS, "mount", str(again.store), str(again.root), "-o", "shared=machine-a"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "machine-a" in r.stderr
    plain = subprocess.run([VEXFS, "mount", str(again.store), str(again.root)], capture_output=True, text=True, timeout=60)
    assert plain.returncode != 0 and "-o shared" in plain.stderr
    # One state directory, one daemon on the machine: another id given A's is refused.
    same_state = subprocess.run([VEXFS, "mount", str(again.store), str(again.root), "-o", f"shared=machine-c,state={a.state}"],
                                capture_output=True, text=True, timeout=60)
    assert same_state.returncode != 0 and "in use by another vexfs on this machine" in same_state.stderr
    # A removal through A leaves B's answers.
    (a / "c" / "a.npy").unlink()
    assert until(lambda: os.getxattr(b / "c", "user.vexfs.count") == b"50", SEEN_WITHIN) is not None
    before = ask(a / "c" / "qb.f32.query")
    a.unmount(), b.unmount()
    # State an earlier vexfs kept in the store goes at the next mount of its id.
    legacy = a.store / ".vexfs" / "mounts" / a.mount_id
    for old in ("index", "journal"):
        (legacy / old / "c").mkdir(parents=True)
        (legacy / old / "c" / "snapshot").write_bytes(b"old")
    mount(b), mount(a)
    assert not (legacy / "index").exists() and not (legacy / "journal").exists()
    assert ask(a / "c" / "qb.f32.query") == before == ask(b / "c" / "qb.f32.query")
    a.unmount(), b.unmount()


def test_a_write_through_one_mount_is_seen_by_the_others_queries(ceph_machines, make_mount):
    (ceph_machines.a / "s2").mkdir()
    a, b = two(ceph_machines, make_mount, "s2")
    (a / "c").mkdir()
    os.setxattr(a / "c", "user.vexfs.dim", b"8")
    assert until(lambda: (b / "c").is_dir(), CACHED_WITHIN) is not None
    delays = []
    for i in range(20):
        v = np.zeros(8, dtype=np.float32)
        v[i % 8] = 100 + i
        writer, reader = (a, b) if i % 2 == 0 else (b, a)
        v.tofile(reader / "c" / f"q{i}.f32.query")
        # From the write's completion (its close), as the README's bound is.
        v.tofile(writer / "c" / f"v{i}.f32")
        began = time.monotonic()
        seen = until(lambda: names(ask(reader / "c" / f"q{i}.f32.query", 1)) == [f"v{i}.f32"], VISIBLE_WITHIN)
        assert seen is not None, f"v{i}.f32 written through {writer.mount_id} not seen through {reader.mount_id} within {VISIBLE_WITHIN} s"
        delays.append(time.monotonic() - began)
        # Read-your-writes on the writing mount, at once.
        v.tofile(writer / "c" / f"own{i}.f32.query")
        assert names(ask(writer / "c" / f"own{i}.f32.query", 1)) == [f"v{i}.f32"]
    print(f"cross-mount visibility: p50 {np.percentile(delays, 50):.3f} s, max {max(delays):.3f} s")
    # The kernel keeps a shared mount's attributes and names 1 s: a size, a content and a new name
    # changed through A are seen through B's stat, cat and lookup within about a second.
    grow = np.arange(8, dtype=np.float32)
    grow.tofile(a / "c" / "grow.bin")
    assert until(lambda: os.stat(b / "c" / "grow.bin").st_size == 32, SEEN_WITHIN) is not None
    assert not (b / "c" / "late.f32").exists()
    with open(a / "c" / "grow.bin", "ab") as f:
        f.write(grow.tobytes())
    grow.tofile(a / "c" / "late.f32")
    whole = (a / "c" / "grow.bin").read_bytes()
    cached = until(lambda: os.stat(b / "c" / "grow.bin").st_size == 64 and (b / "c" / "grow.bin").read_bytes() == whole
                   and (b / "c" / "late.f32").exists(), CACHED_WITHIN)
    assert cached is not None, "B's kernel kept A's change past the shared mount's 1 s timeouts"
    print(f"size, content and a new name through the other mount after {cached:.2f} s")
    assert stat_of(a, "vexfs_shared_changes_applied_total") > 0 and stat_of(b, "vexfs_shared_changes_applied_total") > 0
    a.unmount(), b.unmount()
    mount(a), mount(b)
    assert os.getxattr(a / "c", "user.vexfs.count") == os.getxattr(b / "c", "user.vexfs.count") == b"21"
    a.unmount(), b.unmount()


def test_a_file_copied_straight_onto_cephfs_is_found_by_both_mounts(ceph_machines, make_mount):
    (ceph_machines.a / "s3" / "deep" / "c").mkdir(parents=True)
    a, b = two(ceph_machines, make_mount, "s3")
    c = "deep/c"
    os.setxattr(a / c, "user.vexfs.dim", b"8")
    v = np.arange(8, dtype=np.float32)
    v.tofile(a / c / "first.f32")
    until(lambda: os.getxattr(b / c, "user.vexfs.count") == b"1", SEEN_WITHIN)
    # Machine B's cp, straight onto its ceph-fuse client: no vexfs hears of it.
    src = ceph_machines.b.parent / "foreign.f32"
    (v + 50).tofile(src)
    subprocess.run(["cp", str(src), str(ceph_machines.b / "s3" / c / "foreign.f32")], check=True)
    (v + 50).tofile(a / c / "qf.f32.query")
    (v + 50).tofile(b / c / "qf.f32.query")
    for m in (a, b):
        assert until(lambda: names(ask(m / c / "qf.f32.query", 1)) == ["foreign.f32"], FOREIGN_WITHIN) is not None, m.mount_id
    assert stat_of(a, "vexfs_shared_foreign_rescans_total") + stat_of(b, "vexfs_shared_foreign_rescans_total") > 0
    detection = {k[1]: v for m in (a, b) for k, v in stats(m).items() if k[0] == "vexfs_shared_foreign_detection" and v == 1}
    assert list(detection) == ['mode="rctime"']
    a.unmount(), b.unmount()
    mount(a), mount(b)
    assert names(ask(b / c / "qf.f32.query", 1)) == ["foreign.f32"]
    a.unmount(), b.unmount()


def test_a_second_mount_loads_the_published_snapshot_instead_of_reading_the_files(ceph_machines, make_mount):
    (ceph_machines.a / "s4").mkdir()
    a = mount(shared(make_mount, ceph_machines.a / "s4", "machine-a"))
    (a / "c").mkdir()
    os.setxattr(a / "c", "user.vexfs.dim", b"32")
    rows = np.random.default_rng(4).normal(size=(20000, 32)).astype(np.float32)
    np.save(a / "c" / "d.npy", rows)
    (rows[123] + 0.001).tofile(a / "c" / "q.f32.query")
    answer = ask(a / "c" / "q.f32.query")
    assert names(answer)[0] == "d.npy#123"
    # The owner publishes once its snapshot is written (a remount writes one).
    a.unmount()
    mount(a)
    assert until(lambda: (ceph_machines.a / "s4" / ".vexfs" / "shared" / "index").exists() and any(
        (p / "snapshot").exists() for p in (ceph_machines.a / "s4" / ".vexfs" / "shared" / "index").iterdir()), 10) is not None
    b = mount(shared(make_mount, ceph_machines.b / "s4", "machine-b"))
    assert ask(b / "c" / "q.f32.query") == answer
    assert os.getxattr(b / "c", "user.vexfs.status").startswith(b"indexed: 20000 vectors; at mount: snapshot loaded")
    assert stat_of(b, "vexfs_shared_snapshots_loaded_total") >= 1
    b.unmount(), a.unmount()
    mount(b)
    assert ask(b / "c" / "q.f32.query") == answer
    b.unmount()
    # A machine's lost local state is loaded again from what the owner published.
    shutil.rmtree(b.state)
    mount(b)
    assert ask(b / "c" / "q.f32.query") == answer
    assert os.getxattr(b / "c", "user.vexfs.status").startswith(b"indexed: 20000 vectors; at mount: snapshot loaded")
    b.unmount()
    # One state directory belongs to one store: another store's mount is refused and deletes nothing.
    (ceph_machines.b / "other").mkdir()
    other = make_mount(store=ceph_machines.b / "other")
    r = subprocess.run([VEXFS, "mount", str(other.store), str(other.root), "-o", f"shared=machine-b,state={b.state}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "another store" in r.stderr
    assert (b.state / "index").is_dir()


def test_a_published_snapshot_damaged_under_a_second_mount_gives_way_to_the_files(ceph_machines, make_mount):
    """B answers from A's published snapshot at once, its vectors read where they lie while B copies
    them and checks their checksums. Vectors damaged on CephFS fail that check: B reads the collection
    again from the files (README: until then its answers may rank by the damaged vectors), says so in
    its status and stats, and never adopts that snapshot again. A damaged snapshot file (the graph) is
    not used at all: B reads the files."""
    (ceph_machines.a / "s4d").mkdir()
    a = mount(shared(make_mount, ceph_machines.a / "s4d", "machine-a"))
    (a / "c").mkdir()
    os.setxattr(a / "c", "user.vexfs.dim", b"32")
    rows = np.random.default_rng(41).normal(size=(20000, 32)).astype(np.float32)
    np.save(a / "c" / "d.npy", rows)
    for i in (100, 123):
        (rows[i] + 0.001).tofile(a / "c" / f"q{i}.f32.query")
    assert names(ask(a / "c" / "q100.f32.query"))[0] == "d.npy#100"
    # The owner publishes at its unmount, and A owns the collection once its lease is taken (leases
    # are taken once a second); then A's vector for row 100 is damaged on CephFS.
    assert until(lambda: stat_of(a, "vexfs_shared_leases_held") >= 1, 10) is not None
    a.unmount()
    published = next((ceph_machines.a / "s4d" / ".vexfs" / "shared" / "index").iterdir())
    vectors = [p for p in published.iterdir() if p.name.startswith("vectors.")]
    assert len(vectors) == 1
    with open(vectors[0], "r+b") as f:
        f.seek(100 * 128)  # row 100: 32 float32, one 128-byte row each
        f.write(np.full(32, 1e6, dtype=np.float32).tobytes())
    b = mount(shared(make_mount, ceph_machines.b / "s4d", "machine-b"))
    assert names(ask(b / "c" / "q123.f32.query"))[0] == "d.npy#123"

    def rebuilt():
        status = os.getxattr(b / "c", "user.vexfs.status")
        return b"vectors were set aside (checksum" in status and b"rebuilt from the files" in status \
            and names(ask(b / "c" / "q100.f32.query"))[0] == "d.npy#100"
    assert until(rebuilt, SEEN_WITHIN) is not None, os.getxattr(b / "c", "user.vexfs.status")
    assert stats(b).get(("vexfs_snapshot_rejected_total", 'reason="checksum"'), 0) >= 1
    assert os.getxattr(b / "c", "user.vexfs.count") == b"20000"
    b.unmount()
    # B's own snapshot, of the files, is newer than the damaged one: B opens it, not that.
    mount(b)
    assert names(ask(b / "c" / "q100.f32.query"))[0] == "d.npy#100"
    assert not os.getxattr(b / "c", "user.vexfs.status").startswith(b"indexed: 20000 vectors; at mount: snapshot loaded (another")
    b.unmount()
    # A damaged published snapshot file is not used; B's lost state is rebuilt from the files.
    shutil.rmtree(b.state)
    snapshot = next((ceph_machines.a / "s4d" / ".vexfs" / "shared" / "index").iterdir()) / "snapshot"
    with open(snapshot, "r+b") as f:
        f.seek(snapshot.stat().st_size // 2)
        f.write(b"\xff" * 64)
    os.utime(snapshot)  # newer than anything B has
    mount(b)
    assert names(ask(b / "c" / "q100.f32.query"))[0] == "d.npy#100"
    assert os.getxattr(b / "c", "user.vexfs.count") == b"20000"
    status = os.getxattr(b / "c", "user.vexfs.status")
    assert status.startswith(b"indexed: 20000 vectors; at mount: no snapshot") and b"published snapshot was not used (" in status, status
    b.unmount()


def exact(files, query, k):
    """The k nearest file names by l2 over `files` (name -> vector), as a fresh index would answer."""
    order = sorted(files, key=lambda n: (float(np.sum((files[n] - query) ** 2)), n))
    return order[:k]


def test_a_mount_joining_while_the_owner_ingests_counts_and_answers_as_the_files(ceph_machines, make_mount):
    """B opens the collection while A still writes files into it, after A published a snapshot taken
    mid-ingest: B adopts it (with the vectors waiting beside its graph), reads the files changed
    since and tails A's log, which also names files the snapshot or that reading already hold, and
    files written twice. No count either mount gives says more vectors than the files written hold
    (each links waiting vectors into its graph meanwhile, 768 numbers each: long enough to be caught
    at it), and in the end their counts and answers are those of a fresh index of the files, no name
    twice; so after remounts."""
    (ceph_machines.a / "s10").mkdir()
    a = mount(shared(make_mount, ceph_machines.a / "s10", "machine-a", ",index=hnsw"))
    (a / "c").mkdir()
    os.setxattr(a / "c", "user.vexfs.dim", b"768")
    rng = np.random.default_rng(10)
    total = 600
    rows = rng.normal(size=(total, 768)).astype(np.float32)
    again = rng.normal(size=(total, 768)).astype(np.float32)
    files = {}
    written = [0]
    published = ceph_machines.a / "s10" / ".vexfs" / "shared" / "index"

    def write(i, vector):
        vector.tofile(a / "c" / f"v{i}.f32")
        files[f"v{i}.f32"] = vector

    def ingest():
        for i in range(total):
            write(i, rows[i])
            # Some files written twice, the second time a little later.
            if i % 7 == 0 and i >= 20:
                write(i - 20, again[i - 20])
            written[0] = i + 1

    def count(m):
        return int(os.getxattr(m / "c", "user.vexfs.count"))

    over = []

    def check(m):
        # A file being written may be counted already, no more.
        n = count(m)
        if n > written[0] + 1:
            over.append((m.mount_id, n, written[0]))

    writer = threading.Thread(target=ingest)
    writer.start()
    b = None
    try:
        while writer.is_alive():
            check(a)
            if b is None and any((p / "snapshot").exists() for p in published.iterdir()):
                b = mount(shared(make_mount, ceph_machines.b / "s10", "machine-b", ",index=hnsw"))
                joined = written[0]
            if b is not None:
                check(b)
    finally:
        writer.join()
    assert b is not None and joined < total, "the ingest ended before a snapshot was published: nothing raced"
    # B re-reads what A's log names after A wrote it: on a loaded machine that can be seconds behind.
    assert until(lambda: count(a) == count(b) == total, 120) is not None, f"counts {count(a)}, {count(b)} of {total} files"
    # Both link what waits beside their graphs while they idle: every count meanwhile, too.
    began = time.monotonic()
    while time.monotonic() - began < 3:
        check(a), check(b)
    assert not over, f"counts above the files written (mount, count, files): {over[:10]}"
    print(f"B joined after {joined} of {total} files")
    q = rng.normal(size=768).astype(np.float32)
    q.tofile(a / "c" / "q.f32.query")
    os.setxattr(a / "c" / "q.f32.query", "user.vexfs.ef", b"1000")
    want = exact(files, q, 20)

    def agree(m):
        got = names(ask(m / "c" / "q.f32.query", 20))
        return got == want and len(set(got)) == len(got) and count(m) == total and \
            os.getxattr(m / "c", "user.vexfs.status").startswith(f"indexed: {total} vectors".encode())

    def differ():
        return [(m.mount_id, names(ask(m / "c" / "q.f32.query", 20)), os.getxattr(m / "c", "user.vexfs.status")) for m in (a, b)]
    assert until(lambda: agree(a) and agree(b), SEEN_WITHIN) is not None, f"want {want}, got {differ()}"
    b.unmount(), a.unmount()
    mount(b), mount(a)
    assert agree(a) and agree(b), f"want {want}, got {differ()}"
    a.unmount(), b.unmount()


def test_kill9_of_the_owner_hands_the_collection_on_with_nothing_lost(ceph_machines, make_mount):
    (ceph_machines.a / "s5").mkdir()
    a = mount(shared(make_mount, ceph_machines.a / "s5", "machine-a"))
    (a / "c").mkdir()
    os.setxattr(a / "c", "user.vexfs.dim", b"8")
    rng = np.random.default_rng(5)
    files = {}
    for i in range(40):
        files[f"v{i}.f32"] = rng.normal(size=8).astype(np.float32)
        files[f"v{i}.f32"].tofile(a / "c" / f"v{i}.f32")
    assert os.getxattr(a / "c", "user.vexfs.count") == b"40"
    # A owns the collection (it met it first, and tries for leases every second); B does not.
    assert until(lambda: stat_of(a, "vexfs_shared_leases_held") == 1, 5) is not None
    b = mount(shared(make_mount, ceph_machines.b / "s5", "machine-b"))
    assert os.getxattr(b / "c", "user.vexfs.count") == b"40"
    time.sleep(1.5)
    assert stat_of(a, "vexfs_shared_leases_held") == 1 and stat_of(b, "vexfs_shared_leases_held") == 0
    a.kill9()
    began = time.monotonic()
    took = until(lambda: stat_of(b, "vexfs_shared_leases_held") == 1, 60)
    assert took is not None, "B never took the lease of the killed owner"
    print(f"lease taken over {time.monotonic() - began:.2f} s after kill -9 of the owner's daemon")
    for i in range(40, 60):
        files[f"v{i}.f32"] = rng.normal(size=8).astype(np.float32)
        files[f"v{i}.f32"].tofile(b / "c" / f"v{i}.f32")
    q = rng.normal(size=8).astype(np.float32)
    q.tofile(b / "c" / "q.f32.query")
    assert names(ask(b / "c" / "q.f32.query", 10)) == exact(files, q, 10)
    assert os.getxattr(b / "c", "user.vexfs.count") == b"60"
    a.cleanup()
    mount(a)
    assert names(ask(a / "c" / "q.f32.query", 10)) == exact(files, q, 10)
    b.unmount(), a.unmount()
    mount(b)
    assert names(ask(b / "c" / "q.f32.query", 10)) == exact(files, q, 10)
    b.unmount()


def test_a_removed_collection_takes_its_shared_files_and_check_sees_every_index(ceph_machines, make_mount):
    (ceph_machines.a / "s8").mkdir()
    a, b = two(ceph_machines, make_mount, "s8")
    shared_dir = ceph_machines.a / "s8" / ".vexfs" / "shared"
    rows = np.random.default_rng(8).normal(size=(500, 8)).astype(np.float32)
    keys = {}
    for c in ("gone-a", "gone-b", "gone-offline", "kept"):
        (a / c).mkdir()
        os.setxattr(a / c, "user.vexfs.dim", b"8")
        np.save(a / c / "d.npy", rows)
        keys[c] = str(os.stat(a / c).st_ino)
    assert until(lambda: all((shared_dir / "leases" / k).exists() for k in keys.values()), SEEN_WITHIN) is not None
    # Unmounting writes snapshots; A, mounted first again, owns them all and publishes them.
    a.unmount(), b.unmount()
    mount(a)
    assert until(lambda: all((shared_dir / "index" / k / "snapshot").exists() for k in keys.values()), 10) is not None
    mount(b)
    assert until(lambda: os.getxattr(b / "kept", "user.vexfs.count") == b"500", SEEN_WITHIN) is not None
    # Removed through the owner, and through the other mount (which logs it for the owner).
    shutil.rmtree(a / "gone-a")
    shutil.rmtree(b / "gone-b")
    for c in ("gone-a", "gone-b"):
        assert until(lambda: not (shared_dir / "index" / keys[c]).exists() and not (shared_dir / "leases" / keys[c]).exists(),
                     SEEN_WITHIN) is not None, f"{c}: its published snapshot or lease stayed"
    assert (shared_dir / "index" / keys["kept"] / "snapshot").exists() and (shared_dir / "leases" / keys["kept"]).exists()
    assert until(lambda: not (b.state / "index" / keys["gone-a"]).exists(), SEEN_WITHIN) is not None
    # --repair waits for every mount of the store to be gone, on any machine: here B's.
    a.unmount()
    r = subprocess.run([VEXFS, "check", str(a.store), "--repair"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "is mounted" in r.stderr, r.stdout + r.stderr
    b.unmount()
    # check reads the published snapshot and both mounts' states, one line each.
    r = subprocess.run([VEXFS, "check", str(a.store), "--state", str(a.state), "--state", str(b.state)],
                       capture_output=True, text=True, timeout=120)
    lines = [line for line in r.stdout.splitlines() if line.startswith(("clean", "stale", "damaged"))
             and line.split("\t")[1] == "kept"]
    assert len(lines) == 3, r.stdout
    assert {line.split("\t")[-1].rsplit("/", 1)[0] for line in lines} == {
        str(shared_dir / "index"), str(a.state / "index"), str(b.state / "index")}, r.stdout
    # Removed while no mount ran: the first mount after finds its published snapshot nobody's.
    shutil.rmtree(ceph_machines.b / "s8" / "gone-offline")
    mount(a), mount(b)
    assert os.getxattr(b / "kept", "user.vexfs.count") == b"500" and not (b / "gone-a").exists()
    assert until(lambda: not (shared_dir / "index" / keys["gone-offline"]).exists(), SEEN_WITHIN) is not None
    assert (shared_dir / "index" / keys["kept"] / "snapshot").exists()
    a.unmount(), b.unmount()


def test_a_random_workload_from_both_sides_ends_in_agreement(ceph_machines, make_mount):
    (ceph_machines.a / "s6").mkdir()
    a, b = two(ceph_machines, make_mount, "s6")
    (a / "c").mkdir()
    os.setxattr(a / "c", "user.vexfs.dim", b"4")
    until(lambda: (b / "c").is_dir(), SEEN_WITHIN)
    rnd = random.Random(6)
    scratch = ceph_machines.a.parent / "scratch"
    scratch.mkdir(exist_ok=True)
    for step in range(150):
        m = rnd.choice((a, b))
        name = f"f{rnd.randrange(25)}.vec"
        op = rnd.choice(("write", "write", "cp", "mv", "rm", "append"))
        path = m / "c" / name
        try:
            if op == "write":
                path.write_text(" ".join(f"{rnd.uniform(-1, 1):.4f}" for _ in range(4)) + "\n")
            elif op == "cp":
                src = scratch / f"{step}.vec"
                src.write_text(" ".join(f"{rnd.uniform(-1, 1):.4f}" for _ in range(4)) + "\n")
                subprocess.run(["cp", str(src), str(path)], check=True)
            elif op == "mv":
                subprocess.run(["mv", str(path), str(m / "c" / f"f{rnd.randrange(25)}.vec")], check=False, capture_output=True)
            elif op == "rm":
                subprocess.run(["rm", "-f", str(path)], check=True)
            else:
                with open(path, "a") as f:
                    f.write(" ".join(f"{rnd.uniform(-1, 1):.4f}" for _ in range(4)) + "\n")
        except OSError:
            pass  # the other side removed it meanwhile: a race on one name, as on any shared store

    def listing(m):
        return {p.name: p.read_bytes() for p in (m / "c").iterdir() if p.suffix == ".vec"}

    def agree():
        return listing(a) == listing(b) == {p.name: p.read_bytes() for p in (ceph_machines.a / "s6" / "c").iterdir()
                                           if p.suffix == ".vec"}
    assert until(agree, SEEN_WITHIN) is not None, "the two mounts list different names, sizes or contents"
    q = np.zeros(4, dtype=np.float32)
    q.tofile(a / "c" / "q.f32.query")

    def same_answers():
        return ask(a / "c" / "q.f32.query", 50) == ask(b / "c" / "q.f32.query", 50) \
            and os.getxattr(a / "c", "user.vexfs.count") == os.getxattr(b / "c", "user.vexfs.count")
    assert until(same_answers, SEEN_WITHIN) is not None, "the two mounts answer differently"
    answer = ask(a / "c" / "q.f32.query", 50)
    a.unmount(), b.unmount()
    mount(b), mount(a)
    assert ask(a / "c" / "q.f32.query", 50) == ask(b / "c" / "q.f32.query", 50) == answer
    a.unmount(), b.unmount()
    shutil.rmtree(scratch)


ASK_AS_USER = r"""
import os, sys
q = sys.argv[1]
open(q, "wb").write(bytes.fromhex(sys.argv[2]))
try:
    print(os.getxattr(q, "user.vexfs.knn.10").decode(), end="")
except OSError as e:
    print("error", e.errno)
"""


def test_a_user_on_machine_b_learns_nothing_of_a_file_written_on_machine_a_they_may_not_read(ceph_machines, make_mount, mallory):
    (ceph_machines.a / "s7").mkdir()
    # These two keep their state where a mount without `state=` does: /var/lib/vexfs/STORE-ID/ID.
    a = make_mount("-o", "shared=machine-a,allow_other", store=ceph_machines.a / "s7")
    a.mount_id = "machine-a"
    mount(a)
    b = make_mount("-o", "shared=machine-b,allow_other", store=ceph_machines.b / "s7")
    b.mount_id = "machine-b"
    mount(b)
    default = Path("/var/lib/vexfs") / (ceph_machines.a / "s7" / ".vexfs" / "shared" / "store").read_text().strip()
    assert (default / "machine-a" / "index").is_dir() and (default / "machine-b" / "journal").is_dir()
    open_to_everyone(b)
    (a / "c").mkdir()
    os.chmod(a / "c", 0o1777)
    os.setxattr(a / "c", "user.vexfs.dim", b"4")
    v = np.array([1, 2, 3, 4], dtype=np.float32)
    v.tofile(a / "c" / "public.f32")
    (v + 0.01).tofile(a / "c" / "secret.f32")
    os.chmod(a / "c" / "secret.f32", 0o600)
    root_answer = lambda: names(ask(b / "c" / "public.f32", 10))  # noqa: E731
    assert until(lambda: "secret.f32" in root_answer(), SEEN_WITHIN) is not None

    def theirs():
        return py(ASK_AS_USER, b / "c" / f"q-{mallory.pw_uid}.f32.query", v.tobytes().hex())
    assert theirs().split("\t")[0] == "public.f32"
    assert "secret" not in theirs()
    a.unmount(), b.unmount()
    mount(b), mount(a)
    assert "secret.f32" in names(ask(b / "c" / "public.f32", 10))
    assert "secret" not in theirs() and theirs().startswith("public.f32")
    a.unmount(), b.unmount()
    shutil.rmtree(default)


def test_users_flock_excludes_users_of_other_machines(ceph_machines, make_mount):
    (ceph_machines.a / "s9").mkdir()
    a, b = two(ceph_machines, make_mount, "s9")
    (a / "locked").write_bytes(b"x")
    assert until(lambda: (b / "locked").exists(), SEEN_WITHIN) is not None

    def try_lock(path):
        return subprocess.run(["flock", "-n", str(path), "true"], timeout=30).returncode

    if "io_uring" in os.environ.get("VEXFS_MOUNT_OPTIONS", "").split(","):
        # io_uring asked for: a waiting lock would hold a CPU's ring thread, so flock(2) stays in
        # each machine's kernel, as the README and the stats say.
        assert stat_of(a, "vexfs_shared_flock_across_machines") == stat_of(b, "vexfs_shared_flock_across_machines") == 0
        holder = subprocess.Popen(["flock", "-x", str(a / "locked"), "-c", "echo held; sleep 2"], stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline() == "held\n"
        assert try_lock(a / "locked") == 1 and try_lock(b / "locked") == 0
        assert holder.wait(timeout=10) == 0
        return

    for _ in range(2):
        assert stat_of(a, "vexfs_shared_flock_across_machines") == stat_of(b, "vexfs_shared_flock_across_machines") == 1
        # A holds it: B, and CephFS's own client B, are refused; A's other users too.
        holder = subprocess.Popen(["flock", "-x", str(a / "locked"), "-c", "echo held; sleep 4"], stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline() == "held\n"
        assert try_lock(b / "locked") == 1 and try_lock(ceph_machines.b / "s9" / "locked") == 1 and try_lock(a / "locked") == 1
        # A caller that waits is woken by its timeout (an interrupt), and one that waits long enough gets it.
        began = time.monotonic()
        assert subprocess.run(["flock", "-w", "1", str(b / "locked"), "true"], timeout=30).returncode == 1
        assert 0.9 < time.monotonic() - began < 3
        waiter = subprocess.run(["flock", "-x", str(b / "locked"), "-c", "echo got"], capture_output=True, text=True, timeout=30)
        assert waiter.stdout == "got\n" and holder.wait(timeout=10) == 0
        # Given up at close: the next lock, at once, on either side.
        for path in [a / "locked", b / "locked"] * 10:
            assert try_lock(path) == 0
        a.unmount(), b.unmount()
        mount(a), mount(b)
    a.unmount(), b.unmount()


def logs_of(store, mount_id):
    return sorted(p.name for p in (Path(store) / ".vexfs" / "shared" / "changes").glob(f"{mount_id}.*.log"))


def test_a_dead_mounts_change_log_goes_once_every_running_mount_read_it(ceph_machines, make_mount):
    """A third mount (machine C's, beside A on A's client) writes and is killed: its log goes within
    the README's bound, and A and B keep all it wrote. Then B is paused (SIGSTOP) while a fourth
    writes and is killed: that log stays while B has not read it, and when B runs again B applies it
    and the log goes. Every answer equals a fresh index of the files."""
    (ceph_machines.a / "s11").mkdir()
    store = ceph_machines.a / "s11"
    a, b = two(ceph_machines, make_mount, "s11")
    (a / "c").mkdir()
    os.setxattr(a / "c", "user.vexfs.dim", b"8")
    rng = np.random.default_rng(11)
    files = {}

    def write(m, i):
        files[f"v{i}.f32"] = rng.normal(size=8).astype(np.float32)
        files[f"v{i}.f32"].tofile(m / "c" / f"v{i}.f32")

    for i in range(10):
        write(a, i)
    q = rng.normal(size=8).astype(np.float32)
    q.tofile(a / "c" / "q.f32.query")
    q.tofile(b / "c" / "q.f32.query")

    def fresh(m):
        want = exact(files, q, 10)
        return names(ask(m / "c" / "q.f32.query", 10)) == want and \
            os.getxattr(m / "c", "user.vexfs.count") == str(len(files)).encode()

    assert until(lambda: fresh(a) and fresh(b), SEEN_WITHIN) is not None
    c = mount(shared(make_mount, ceph_machines.a / "s11", "machine-c"))
    assert len(logs_of(store, "machine-c")) == 1
    for i in range(10, 30):
        write(c, i)
    # Read to its end by A and B, a running mount's log stays through rounds of removal.
    assert until(lambda: fresh(a) and fresh(b), SEEN_WITHIN) is not None
    time.sleep(LOG_ROUND + 1)
    assert len(logs_of(store, "machine-c")) == 1, "a running mount's log went"
    for i in range(30, 35):
        write(c, i)
    c.kill9()
    began = time.monotonic()
    took = until(lambda: not logs_of(store, "machine-c"), LOG_GONE_WITHIN)
    assert took is not None, f"the killed mount's log stayed: {logs_of(store, 'machine-c')}"
    print(f"the killed mount's change log went {time.monotonic() - began:.1f} s after kill -9")
    # Logged before it died, or found on CephFS by the scan if it died between a write and its line.
    assert until(lambda: fresh(a) and fresh(b), FOREIGN_WITHIN) is not None
    assert stat_of(a, "vexfs_shared_change_logs_removed_total") + stat_of(b, "vexfs_shared_change_logs_removed_total") >= 1
    c.cleanup()

    # B paused past several rounds of removal: what D writes waits for B in D's log.
    d = mount(shared(make_mount, ceph_machines.a / "s11", "machine-d"))
    os.kill(b.pid, signal.SIGSTOP)
    try:
        for i in range(35, 45):
            write(d, i)
        d.kill9()
        assert until(lambda: fresh(a), SEEN_WITHIN) is not None
        time.sleep(LOG_GONE_WITHIN / 2)
        assert len(logs_of(store, "machine-d")) == 1, "a dead mount's log went before a paused mount read it"
    finally:
        os.kill(b.pid, signal.SIGCONT)
    assert until(lambda: fresh(b), SEEN_WITHIN) is not None
    assert until(lambda: not logs_of(store, "machine-d"), LOG_GONE_WITHIN) is not None
    d.cleanup()
    # Only running mounts' logs are left (and their `.read` files), after remounts too.
    a.unmount(), b.unmount()
    mount(b), mount(a)
    assert fresh(a) and fresh(b)
    changes = store / ".vexfs" / "shared" / "changes"
    assert until(lambda: sorted(p.name.split(".")[0] for p in changes.glob("*.log")) == ["machine-a", "machine-b"],
                 LOG_GONE_WITHIN) is not None, sorted(p.name for p in changes.iterdir())
    assert until(lambda: sorted(p.name.split(".")[0] for p in changes.glob("*.read")) == ["machine-a", "machine-b"],
                 LOG_GONE_WITHIN) is not None, sorted(p.name for p in changes.iterdir())
    a.unmount(), b.unmount()


FLOCK_WAIT = r"""
import errno, fcntl, sys
f = open(sys.argv[1], "rb")
try:
    fcntl.flock(f, fcntl.LOCK_EX)
    print("locked")
except OSError as e:
    print(errno.errorcode[e.errno])
"""


def test_a_flock_past_half_the_workers_is_answered_enolck_and_counted(ceph_machines, make_mount):
    (ceph_machines.a / "s12").mkdir()
    m = shared(make_mount, ceph_machines.a / "s12", "machine-a")
    m.options += ["--threads", "2"]
    mount(m)
    if stat_of(m, "vexfs_shared_flock_across_machines") == 0:
        m.unmount()
        return  # io_uring asked for: flock(2) stays in the kernel, nothing waits in a worker
    (m / "locked").write_bytes(b"x")
    assert stat_of(m, "vexfs_flock_refused_total") == 0
    # Held on CephFS itself: the mount's callers wait for it, at most one at a time (2 workers).
    holder = subprocess.Popen(["flock", "-x", str(ceph_machines.a / "s12" / "locked"), "-c", "echo held; sleep 4"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    waiter = subprocess.Popen(["python3", "-c", FLOCK_WAIT, str(m / "locked")], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    second = subprocess.run(["python3", "-c", FLOCK_WAIT, str(m / "locked")], capture_output=True, text=True, timeout=30)
    assert second.stdout == "ENOLCK\n"
    assert waiter.communicate(timeout=30)[0] == "locked\n" and holder.wait(timeout=10) == 0
    assert stat_of(m, "vexfs_flock_refused_total") == 1
    m.unmount()
    mount(m)
    assert stat_of(m, "vexfs_flock_refused_total") == 0
    assert subprocess.run(["python3", "-c", FLOCK_WAIT, str(m / "locked")], capture_output=True, text=True,
                          timeout=30).stdout == "locked\n"
    m.unmount()


HOLD_RECORD_LOCK = r"""
import fcntl, sys, time
f = open(sys.argv[1], "r+b")
fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""

TRY_RECORD_LOCK = r"""
import fcntl, sys
f = open(sys.argv[1], "r+b")
try:
    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("locked")
except OSError:
    print("refused")
"""


def test_o_direct_acls_and_record_locks_over_ceph_fuse_are_as_the_readme_says(ceph_machines, make_mount):
    """O_DIRECT through one mount, read back through the other; no FUSE ACLs over a ceph-fuse client
    that keeps none (the stats say so); POSIX record locks stay per machine."""
    (ceph_machines.a / "s13").mkdir()
    a, b = two(ceph_machines, make_mount, "s13")
    for m in (a, b):
        assert stat_of(m, "vexfs_fuse_posix_acl") == 0
    block = bytes(range(256)) * 16
    buffer = mmap.mmap(-1, len(block))  # page-aligned, as O_DIRECT wants
    buffer.write(block)
    fd = os.open(a / "direct.bin", os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
    try:
        assert os.pwritev(fd, [buffer], 0) == len(block)
        back = mmap.mmap(-1, len(block))
        assert os.preadv(fd, [back], 0) == len(block) and back[:] == block
    finally:
        os.close(fd)
    assert until(lambda: (b / "direct.bin").read_bytes() == block, SEEN_WITHIN) is not None
    (a / "locked").write_bytes(b"x")
    assert until(lambda: (b / "locked").exists(), SEEN_WITHIN) is not None
    holder = subprocess.Popen(["python3", "-c", HOLD_RECORD_LOCK, str(a / "locked"), "3"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"

        def attempt(path):
            return subprocess.run(["python3", "-c", TRY_RECORD_LOCK, str(path)], capture_output=True, text=True, timeout=30).stdout
        assert attempt(a / "locked") == "refused\n"
        assert attempt(b / "locked") == "locked\n", "a record lock crossed machines, which the README says it does not"
    finally:
        holder.wait(timeout=30)
    a.unmount(), b.unmount()
    mount(b), mount(a)
    assert (a / "direct.bin").read_bytes() == (b / "direct.bin").read_bytes() == block
    a.unmount(), b.unmount()
