"""PRODUCT.md §2-§4 on a real mount: vector files and collections, similarity queries through
extended attributes, `vexfs search`, `.vexfs/stats` and `.vexfs/journal`. Answers are checked
against a brute-force NumPy computation on the same files."""
import ctypes
import errno
import json
import os
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest

from conftest import VEXFS

libc = ctypes.CDLL("libc.so.6", use_errno=True)


def knn(path, k=None):
    """The answer of user.vexfs.knn[.K] as (name, distance) pairs."""
    name = "user.vexfs.knn" + (f".{k}" if k is not None else "")
    text = os.getxattr(path, name).decode()
    return [(n, float(d)) for n, d in (line.split("\t") for line in text.splitlines())]


def getfattr(path, name):
    out = subprocess.run(["getfattr", "--only-values", "-n", name, str(path)], capture_output=True, text=True)
    return out.returncode, out.stdout, out.stderr


def xattr_errno(path, name):
    try:
        os.getxattr(path, name)
    except OSError as e:
        return e.errno
    return 0


def brute(vectors, query, metric="l2", k=10, exclude=()):
    """Names and distances of the k nearest, in double precision, ties by name."""
    q = np.asarray(query, dtype=np.float64)
    rows = []
    for name, v in vectors.items():
        if name in exclude:
            continue
        v = np.asarray(v, dtype=np.float64)
        if metric == "l2":
            d = float(np.sqrt(((v - q) ** 2).sum()))
        elif metric == "cosine":
            d = 1 - float(v @ q / (np.linalg.norm(v) * np.linalg.norm(q)))
        else:
            d = 1 - float(v @ q)
        rows.append((d, name))
    rows.sort()
    return [(n, d) for d, n in rows[:k]]


def write_vec(path, v):
    path.write_text(" ".join(repr(float(x)) for x in v) + "\n")


# §2: vector files and collections


def test_every_format_is_indexed_and_rows_are_named(mnt):
    c = mnt / "c"
    c.mkdir()
    (c / "text.vec").write_text("0.1 0.2 0.3\n")
    (c / "comma.vec").write_text("0.4,0.5,0.6")
    (c / "json.vec").write_text("[0.7, 0.8, 0.9]")
    np.array([1, 0, 0], dtype=np.float32).tofile(c / "raw.f32")
    np.save(c / "one.npy", np.array([0, 1, 0], dtype=np.float16))
    np.save(c / "rows.npy", np.array([[0, 0, 1], [1, 1, 1]], dtype=np.float64))
    with open(c / "sift.fvecs", "wb") as f:
        for row in ([2, 0, 0], [0, 2, 0]):
            np.array([3], dtype=np.int32).tofile(f)
            np.array(row, dtype=np.float32).tofile(f)
    assert os.getxattr(c, "user.vexfs.count") == b"9"
    assert os.getxattr(c, "user.vexfs.dim") == b"3"
    names = [n for n, _ in knn(c / "raw.f32", 20)]
    assert sorted(names) == sorted(["text.vec", "comma.vec", "json.vec", "one.npy", "rows.npy#0", "rows.npy#1",
                                    "sift.fvecs#0", "sift.fvecs#1"])
    assert os.getxattr(c / "rows.npy", "user.vexfs.status") == b"indexed: 2 vectors"
    assert os.getxattr(c / "text.vec", "user.vexfs.dim") == b"3"


def test_the_first_vector_fixes_the_dimension_and_dim_can_be_set_ahead(mnt):
    a, b = mnt / "a", mnt / "b"
    a.mkdir()
    b.mkdir()
    (a / "x.vec").write_text("1 2")
    (a / "y.vec").write_text("1 2 3")
    assert os.getxattr(a, "user.vexfs.dim") == b"2"
    assert b"dimension is 2" in os.getxattr(a / "y.vec", "user.vexfs.status")
    subprocess.run(["setfattr", "-n", "user.vexfs.dim", "-v", "3", str(b)], check=True)
    (b / "x.vec").write_text("1 2")
    (b / "y.vec").write_text("1 2 3")
    assert os.getxattr(b, "user.vexfs.count") == b"1"
    assert b"dimension is 3" in os.getxattr(b / "x.vec", "user.vexfs.status")
    # Sub-directories are collections of their own.
    (a / "sub").mkdir()
    (a / "sub" / "z.vec").write_text("1 2 3 4")
    assert os.getxattr(a / "sub", "user.vexfs.dim") == b"4"
    # A dimension cannot change under indexed vectors; a bad one is refused.
    for value, code in (("5", errno.ENOTEMPTY), ("0", errno.EINVAL), ("many", errno.EINVAL)):
        with pytest.raises(OSError) as e:
            os.setxattr(a, "user.vexfs.dim", value.encode())
        assert e.value.errno == code


def test_any_file_can_carry_a_vector(mnt):
    c = mnt / "photos"
    c.mkdir()
    (c / "a.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (c / "b.jpg").write_bytes(b"\xff\xd8 another")
    subprocess.run(["setfattr", "-n", "user.vexfs.vector", "-v", "0.1 0.2", str(c / "a.jpg")], check=True)
    os.setxattr(c / "b.jpg", "user.vexfs.vector", b"[0.3, 0.4]")
    assert getfattr(c / "a.jpg", "user.vexfs.vector")[1] == "0.1 0.2"
    assert knn(c / "a.jpg") == [("b.jpg", pytest.approx(np.hypot(0.2, 0.2), rel=1e-6))]
    assert (mnt.store / "photos" / "a.jpg").read_bytes() == b"\xff\xd8 not really a jpeg"
    os.removexattr(c / "b.jpg", "user.vexfs.vector")
    assert knn(c / "a.jpg") == []
    assert os.getxattr(c, "user.vexfs.count") == b"1"
    # A value that is not a vector is refused and nothing is stored.
    with pytest.raises(OSError) as e:
        os.setxattr(c / "b.jpg", "user.vexfs.vector", b"0.1 oops")
    assert e.value.errno == errno.EINVAL
    assert xattr_errno(c / "b.jpg", "user.vexfs.vector") == errno.ENODATA


def test_files_keep_their_bytes(mnt):
    c = mnt / "c"
    c.mkdir()
    text = "[0.5, 0.25,\n 1e-3]   \n"
    (c / "a.vec").write_text(text)
    assert (c / "a.vec").read_text() == text
    assert (mnt.store / "c" / "a.vec").read_text() == text
    assert os.stat(c / "a.vec").st_size == len(text)
    shutil.copy(c / "a.vec", c / "b.vec")
    assert subprocess.run(["cat", str(c / "b.vec")], capture_output=True, text=True).stdout == text
    assert os.getxattr(c, "user.vexfs.count") == b"2"


def test_rename_unlink_truncate_and_overwrite_keep_the_index_true(mnt):
    c, d = mnt / "c", mnt / "d"
    c.mkdir()
    d.mkdir()
    for i in range(5):
        write_vec(c / f"v{i}.vec", [i, 0])
    (c / "q.query").write_text("0 0")
    assert [n for n, _ in knn(c / "q.query", 5)] == ["v0.vec", "v1.vec", "v2.vec", "v3.vec", "v4.vec"]
    os.rename(c / "v0.vec", c / "w0.vec")
    assert knn(c / "q.query", 1) == [("w0.vec", 0.0)]
    os.rename(c / "w0.vec", c / "v4.vec")  # over an existing file: its old vector goes
    assert [n for n, _ in knn(c / "q.query", 5)] == ["v4.vec", "v1.vec", "v2.vec", "v3.vec"]
    os.rename(c / "v1.vec", d / "v1.vec")  # to another collection
    assert "v1.vec" not in [n for n, _ in knn(c / "q.query", 5)]
    assert os.getxattr(d, "user.vexfs.count") == b"1"
    os.unlink(c / "v2.vec")
    os.truncate(c / "v3.vec", 0)
    assert [n for n, _ in knn(c / "q.query", 5)] == ["v4.vec"]
    assert b"empty" in os.getxattr(c / "v3.vec", "user.vexfs.status")
    write_vec(c / "v4.vec", [9, 9])  # overwrite: the new vector replaces the old
    assert knn(c / "q.query", 5) == [("v4.vec", pytest.approx(np.hypot(9, 9), rel=1e-6))]
    open(c / "v4.vec", "w").close()  # O_TRUNC and nothing written: no vector any more
    assert knn(c / "q.query", 5) == []
    write_vec(c / "v4.vec", [9, 9])
    with open(c / "v4.vec", "r+") as f:  # truncate through an open handle, then write
        f.truncate(0)
        f.write("1 1")
    assert knn(c / "q.query", 5) == [("v4.vec", pytest.approx(np.sqrt(2), rel=1e-6))]


def test_a_query_sees_every_change_that_completed_before_it(mnt):
    c = mnt / "c"
    c.mkdir()
    (c / "q.query").write_text("0 0 0")
    for i in range(300):
        write_vec(c / f"{i:03}.vec", [i, i, i])
        assert knn(c / "q.query", 1)[0][0] == "000.vec"
        assert int(os.getxattr(c, "user.vexfs.count")) == i + 1
    for i in range(150):
        os.unlink(c / f"{i:03}.vec")
        assert knn(c / "q.query", 1)[0][0] == f"{i + 1:03}.vec"


@pytest.mark.parametrize("name,content,reason", [
    ("word.vec", b"0.1 abc 0.3", "not a number"),
    ("nan.vec", b"0.1 nan 0.3", "not finite"),
    ("inf.vec", b"0.1 0.2 inf", "not finite"),
    ("dim.vec", b"0.1 0.2", "dimension is 3"),
    ("empty.vec", b"", "empty"),
    ("odd.f32", b"\x00\x00\x80", "not a whole number"),
    ("short.fvecs", np.array([3], np.int32).tobytes() + np.zeros(2, np.float32).tobytes(), "truncated"),
    ("cut.npy", None, "truncated"),
    ("int.npy", None, "not float16"),
])
def test_bad_vector_files_are_stored_unchanged_with_the_reason(mnt, name, content, reason):
    c = mnt / "c"
    c.mkdir()
    (c / "good.vec").write_text("1 2 3")
    if name == "cut.npy":
        np.save(c / "full.npy", np.ones((4, 3), np.float32))
        content = (c / "full.npy").read_bytes()[:-5]
        os.unlink(c / "full.npy")
    elif name == "int.npy":
        np.save(c / "tmp.npy", np.ones(3, np.int32))
        content = (c / "tmp.npy").read_bytes()
        os.unlink(c / "tmp.npy")
    (c / name).write_bytes(content)
    assert (c / name).read_bytes() == content
    assert (mnt.store / "c" / name).read_bytes() == content
    status = os.getxattr(c / name, "user.vexfs.status").decode()
    assert status.startswith("not indexed") and reason in status and "\n" not in status
    assert os.getxattr(c, "user.vexfs.count") == b"1"
    # No vector: ENODATA; a vector of the wrong dimension: a bad request.
    assert xattr_errno(c / name, "user.vexfs.knn") == (errno.EINVAL if name == "dim.vec" else errno.ENODATA)


def test_an_absurd_size_is_refused_unread(mnt):
    c = mnt / "c"
    c.mkdir()
    (c / "good.vec").write_text("1 2 3")
    with open(c / "huge.f32", "wb") as f:
        f.truncate(8 << 30)  # sparse: 8 GiB of nothing
    assert b"absurd size" in os.getxattr(c / "huge.f32", "user.vexfs.status")
    assert os.stat(c / "huge.f32").st_size == 8 << 30
    assert os.getxattr(c, "user.vexfs.count") == b"1"


def test_a_file_past_the_stream_threshold_is_read_in_slices(mnt):
    # 4,300 x 4,096 float32 is 72 MB: past 64 MiB, the file is read a slice of rows at a time.
    c = mnt / "c"
    c.mkdir()
    rng = np.random.default_rng(3)
    base = rng.standard_normal((4300, 4096)).astype(np.float32)
    np.save(c / "big.npy", np.asfortranarray(base))
    assert os.path.getsize(c / "big.npy") > 64 << 20
    assert os.getxattr(c / "big.npy", "user.vexfs.status") == b"indexed: 4300 vectors"
    q = base[123] + 0.01
    q.tofile(c / "q.f32.query")
    got = knn(c / "q.f32.query", 5)
    d = np.linalg.norm(base - q, axis=1)
    want = np.argsort(d, kind="stable")[:5]
    assert [n for n, _ in got] == [f"big.npy#{i}" for i in want]
    assert [x for _, x in got] == pytest.approx(d[want].tolist(), rel=1e-4)
    # A number that is not finite near the end: none of the file's vectors stay.
    base[4000, 7] = np.inf
    np.save(c / "big.npy", base)
    assert os.getxattr(c / "big.npy", "user.vexfs.status") == b"not indexed: row 4000, number 8 is not finite"
    assert os.getxattr(c, "user.vexfs.count") == b"0"


# §3: queries


@pytest.mark.parametrize("metric", ["l2", "cosine", "dot"])
def test_answers_equal_numpy_brute_force(mnt, metric):
    rng = np.random.default_rng(3)
    c = mnt / "c"
    c.mkdir()
    subprocess.run(["setfattr", "-n", "user.vexfs.metric", "-v", metric, str(c)], check=True)
    vectors = {}
    for i in range(200):
        v = rng.normal(size=16).astype(np.float32)
        if metric == "dot":
            v /= np.linalg.norm(v)
        vectors[f"v{i:03}.vec"] = v
        write_vec(c / f"v{i:03}.vec", v)
    matrix = rng.normal(size=(3, 16)).astype(np.float32)
    np.save(c / "block.npy", matrix)
    for r in range(3):
        vectors[f"block.npy#{r}"] = matrix[r]
    assert os.getxattr(c, "user.vexfs.metric") == metric.encode()
    for name in ["v000.vec", "v017.vec", "v199.vec"]:
        got = knn(c / name, 25)
        want = brute(vectors, vectors[name], metric, 25, exclude={name})
        assert [n for n, _ in got] == [n for n, _ in want]  # recall 1.0, same order
        for (_, g), (_, w) in zip(got, want):
            assert g == pytest.approx(w, abs=1e-5)
    q = rng.normal(size=16).astype(np.float32)
    np.array(q).tofile(c / "q.f32.query")
    want = brute(vectors, q, metric, 10)
    assert [n for n, _ in knn(c / "q.f32.query")] == [n for n, _ in want]


def test_knn_defaults_and_limits(mnt):
    c = mnt / "c"
    c.mkdir()
    for i in range(30):
        write_vec(c / f"v{i:02}.vec", [i])
    assert len(knn(c / "v00.vec")) == 10
    assert len(knn(c / "v00.vec", 1000)) == 29
    assert knn(c / "v00.vec", 1) == [("v01.vec", 1.0)]
    for bad in ["0", "1001", "-1", "abc", ""]:
        assert xattr_errno(c / "v00.vec", "user.vexfs.knn." + bad) == errno.EINVAL, bad
    rc, _, err = getfattr(c / "v00.vec", "user.vexfs.knn.0")
    assert rc != 0 and "Invalid argument" in err


def test_ties_keep_a_stable_order(mnt):
    c = mnt / "c"
    c.mkdir()
    for name in ["d.vec", "a.vec", "c.vec", "b.vec"]:
        (c / name).write_text("1 0")
    (c / "q.query").write_text("0 0")
    first = knn(c / "q.query")
    assert all(d == 1.0 for _, d in first)
    for _ in range(5):
        assert knn(c / "q.query") == first


def test_query_files_are_never_indexed_and_follow_the_collection(mnt):
    c = mnt / "c"
    c.mkdir()
    (c / "a.vec").write_text("1 0")
    (c / "find.query").write_text("0.9 0")
    assert os.getxattr(c, "user.vexfs.count") == b"1"
    assert knn(c / "find.query") == [("a.vec", pytest.approx(0.1, abs=1e-6))]
    (c / "b.vec").write_text("0.9 0.01")
    assert knn(c / "find.query")[0][0] == "b.vec"
    assert os.getxattr(c / "find.query", "user.vexfs.status").startswith(b"query file")


def test_concurrent_users_get_their_own_answers(mnt):
    c = mnt / "c"
    c.mkdir()
    for i in range(50):
        write_vec(c / f"v{i:02}.vec", [i, 0])
    errors = []

    def user(n):
        q = c / f"user{n}.query"
        for j in range(40):
            target = (n * 7 + j) % 50
            q.write_text(f"{target} 0.1")
            got = knn(q, 1)
            if got[0][0] != f"v{target:02}.vec":
                errors.append((n, target, got))

    threads = [threading.Thread(target=user, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_attributes_we_own_and_those_we_do_not(mnt):
    c = mnt / "c"
    c.mkdir()
    (c / "a.vec").write_text("1 2")
    (c / "plain.txt").write_text("hello")
    os.setxattr(c / "a.vec", "user.note", b"mine")
    assert os.getxattr(c / "a.vec", "user.note") == b"mine"
    assert xattr_errno(c / "plain.txt", "user.vexfs.knn") == errno.ENODATA
    assert xattr_errno(c / "plain.txt", "user.vexfs.status") == errno.ENODATA
    assert xattr_errno(c / "a.vec", "user.vexfs.nonsense") == errno.ENODATA
    assert xattr_errno(c, "user.vexfs.nonsense") == errno.ENODATA
    with pytest.raises(OSError) as e:
        os.setxattr(c, "user.vexfs.metric", b"manhattan")
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        os.setxattr(c / "a.vec", "user.vexfs.knn", b"1")
    assert e.value.errno == errno.EINVAL
    index = os.getxattr(c, "user.vexfs.index").decode()
    assert index.startswith("flat")
    # Listing shows only real attributes, so copies carry only those.
    assert os.listxattr(c / "a.vec") == ["user.note"]
    assert "user.vexfs.dim" not in os.listxattr(c)
    subprocess.run(["cp", "-a", str(c), str(mnt / "copy")], check=True)
    assert os.listxattr(mnt / "copy" / "a.vec") == ["user.note"]
    assert os.getxattr(mnt / "copy", "user.vexfs.count") == b"1"


def stat_value(mnt, name):
    for line in (mnt / ".vexfs" / "stats").read_text().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_getfattr_probe_and_fetch_are_one_computation(mnt):
    c = mnt / "c"
    c.mkdir()
    for i in range(20):
        write_vec(c / f"v{i:02}.vec", [i, 1])
    queries, cached = stat_value(mnt, "vexfs_query_seconds_count"), stat_value(mnt, "vexfs_query_cached_total")
    rc, out, _ = getfattr(c / "v03.vec", "user.vexfs.knn.5")  # asks the size, then the value
    assert rc == 0 and out.splitlines()[0].startswith("v02.vec\t")
    assert stat_value(mnt, "vexfs_query_seconds_count") == queries + 1
    assert stat_value(mnt, "vexfs_query_cached_total") == cached + 1
    # A change in between makes the next fetch compute afresh.
    os.getxattr(c / "v03.vec", "user.vexfs.knn.5")
    write_vec(c / "v99.vec", [3, 1.1])
    assert knn(c / "v03.vec", 5)[0][0] == "v99.vec"


def test_erange_only_when_the_buffer_is_too_small(mnt):
    c = mnt / "c"
    c.mkdir()
    for i in range(5):
        write_vec(c / f"v{i}.vec", [i])
    path = str(c / "v0.vec").encode()
    size = libc.getxattr(path, b"user.vexfs.knn", None, 0)
    assert size > 0
    small = ctypes.create_string_buffer(size - 1)
    assert libc.getxattr(path, b"user.vexfs.knn", small, size - 1) == -1
    assert ctypes.get_errno() == errno.ERANGE
    exact = ctypes.create_string_buffer(size)
    assert libc.getxattr(path, b"user.vexfs.knn", exact, size) == size
    assert exact.raw.decode().count("\n") == 4


def test_changing_the_metric_reindexes(mnt):
    c = mnt / "c"
    c.mkdir()
    (c / "far.vec").write_text("10 0")
    (c / "near.vec").write_text("0 1")
    (c / "q.query").write_text("1 0")
    assert knn(c / "q.query")[0][0] == "near.vec"
    os.setxattr(c, "user.vexfs.metric", b"cosine")
    assert knn(c / "q.query") == [("far.vec", pytest.approx(0, abs=1e-6)), ("near.vec", pytest.approx(1, abs=1e-6))]


def test_vexfs_search_through_the_mount(mnt, tmp_path):
    c = mnt / "c"
    c.mkdir()
    for i in range(5):
        write_vec(c / f"v{i}.vec", [i, 0])
    out = subprocess.run([VEXFS, "search", str(c), "--vector", "3.2,0", "-k", "2"], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[0].startswith("v3.vec\t")
    np.save(tmp_path / "q.npy", np.array([0.9, 0], np.float32))
    out = subprocess.run([VEXFS, "search", str(c), "--file", str(tmp_path / "q.npy"), "--json"],
                         capture_output=True, text=True, check=True)
    answer = json.loads(out.stdout)
    assert answer[0]["name"] == "v1.vec" and answer[0]["distance"] == pytest.approx(0.1, abs=1e-6)
    assert len(answer) == 5
    bad = subprocess.run([VEXFS, "search", str(c), "--vector", "1,2,3"], capture_output=True, text=True)
    assert bad.returncode != 0 and "dimension" in bad.stderr
    outside = subprocess.run([VEXFS, "search", str(tmp_path), "--vector", "1,2"], capture_output=True, text=True)
    assert outside.returncode != 0 and "not inside a vexfs mount" in outside.stderr
    assert not [p for p in os.listdir(c) if p.endswith(".query")]


# §4: .vexfs/


def test_stats_and_journal(mnt):
    c = mnt / "c"
    c.mkdir()
    (c / "a.vec").write_text("1 2")
    (c / "b.vec").write_text("3 4")
    os.rename(c / "b.vec", c / "d.vec")
    knn(c / "a.vec")
    os.unlink(c / "d.vec")
    assert os.getxattr(c, "user.vexfs.count") == b"1"  # stats never wait for the bridge; this does
    stats = (mnt / ".vexfs" / "stats").read_text()
    for family in ["vexfs_fuse_requests_total{op=\"create\"}", "vexfs_fuse_request_microseconds_total",
                   "vexfs_index_vectors 1", "vexfs_query_seconds_count 1", "vexfs_bridge_queue_depth",
                   "vexfs_bridge_batches_total", "vexfs_buffer_pool_hits_total", "vexfs_stack_high_water_bytes",
                   "vexfs_journal_bytes"]:
        assert family in stats, family
    state = int(float(next(l for l in stats.splitlines() if l.startswith("vexfs_state_bytes ")).split()[1]))
    on_disk = int(subprocess.run(["du", "-s", "-B1", str(mnt.store / ".vexfs")], capture_output=True, text=True,
                                 check=True).stdout.split()[0])
    assert 0 < state and abs(state - on_disk) <= max(64 << 10, on_disk // 10), (state, on_disk)
    lines = [json.loads(line) for line in (mnt / ".vexfs" / "journal").read_text().splitlines()]
    events = [(e["event"], e["path"]) for e in lines]
    for wanted in [("create", "c/a.vec"), ("write-close", "c/a.vec"), ("index", "c/a.vec"), ("rename", "c/b.vec"),
                   ("query", "c/a.vec"), ("unlink", "c/d.vec")]:
        assert wanted in events, wanted
    assert "journal" in os.listdir(mnt / ".vexfs")
    out = subprocess.run(["tail", "-n", "1", str(mnt / ".vexfs" / "journal")], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["event"]
    mnt.unmount()
    segments = os.listdir(mnt.store / ".vexfs" / "journal")
    assert segments and all(s.endswith(".lz4") for s in segments)
    mnt.mount()
    assert ("create", "c/a.vec") in [(json.loads(l)["event"], json.loads(l)["path"])
                                     for l in (mnt / ".vexfs" / "journal").read_text().splitlines()]


# Persistence and repair


def test_the_index_survives_a_remount_and_follows_changes_made_while_unmounted(make_mount):
    m = make_mount()
    m.mount()
    c = m / "c"
    c.mkdir()
    for i in range(20):
        write_vec(c / f"v{i:02}.vec", [i, 1])
    before = knn(c / "v05.vec", 19)
    m.unmount()
    assert os.listdir(m.store / ".vexfs" / "index")
    # While unmounted: one file changed, one removed, one added, one broken.
    write_vec(m.store / "c" / "v00.vec", [100, 1])
    os.unlink(m.store / "c" / "v01.vec")
    write_vec(m.store / "c" / "new.vec", [5.5, 1])
    (m.store / "c" / "v02.vec").write_text("1 nope")
    m.mount()
    after = knn(c / "v05.vec", 19)
    assert after[0] == ("new.vec", pytest.approx(0.5))
    names = [n for n, _ in after]
    assert "v01.vec" not in names and "v02.vec" not in names
    assert names[-1] == "v00.vec"
    assert [x for x in before if x[0] not in ("v00.vec", "v01.vec", "v02.vec")] == \
        [x for x in after if x[0] not in ("v00.vec", "new.vec")]
    assert os.getxattr(c, "user.vexfs.count") == b"19"


def test_a_killed_daemon_loses_nothing(make_mount):
    m = make_mount()
    m.mount()
    c = m / "c"
    c.mkdir()
    vectors = {}
    for i in range(100):
        v = [float(i), float(i % 7)]
        write_vec(c / f"v{i:03}.vec", v)
        vectors[f"v{i:03}.vec"] = v
    knn(c / "v000.vec")  # settles the bridge; nothing is snapshotted yet
    for i in range(0, 100, 4):
        os.unlink(c / f"v{i:03}.vec")
        del vectors[f"v{i:03}.vec"]
    m.kill9()
    m.mount()
    assert int(os.getxattr(c, "user.vexfs.count")) == len(vectors)
    got = knn(c / "v001.vec", 100)
    want = brute(vectors, vectors["v001.vec"], "l2", 100, exclude={"v001.vec"})
    assert [n for n, _ in got] == [n for n, _ in want]


def test_a_damaged_index_is_rebuilt_from_the_files(make_mount):
    m = make_mount()
    m.mount()
    c = m / "c"
    c.mkdir()
    for i in range(10):
        write_vec(c / f"v{i}.vec", [i, 0])
    m.unmount()
    for root, _, files in os.walk(m.store / ".vexfs" / "index"):
        for f in files:
            p = os.path.join(root, f)
            data = bytearray(open(p, "rb").read())
            if len(data) > 20:
                data[len(data) // 2] ^= 0xFF
                open(p, "wb").write(data)
    m.mount()
    assert os.getxattr(c, "user.vexfs.count") == b"10"
    assert [n for n, _ in knn(c / "v0.vec", 3)] == ["v1.vec", "v2.vec", "v3.vec"]


def test_a_renamed_collection_keeps_its_index(mnt):
    a = mnt / "a"
    a.mkdir()
    (a / "sub").mkdir()
    for i in range(5):
        write_vec(a / f"v{i}.vec", [i])
        write_vec(a / "sub" / f"s{i}.vec", [i, i])
    os.rename(a, mnt / "b")
    b = mnt / "b"
    write_vec(b / "v9.vec", [9])
    assert os.getxattr(b, "user.vexfs.count") == b"6"
    assert knn(b / "v9.vec", 1) == [("v4.vec", 5.0)]
    assert [n for n, _ in knn(b / "sub" / "s0.vec", 1)] == ["s1.vec"]
    os.unlink(b / "sub" / "s1.vec")
    assert [n for n, _ in knn(b / "sub" / "s0.vec", 1)] == ["s2.vec"]
    shutil.rmtree(b / "sub")
    assert len(os.listdir(mnt.store / ".vexfs" / "index")) == 1


def test_a_collection_switches_to_hnsw_and_stays_accurate(make_mount):
    m = make_mount("-o", "index=auto:300")
    m.mount()
    c = m / "c"
    c.mkdir()
    rng = np.random.default_rng(11)
    centres = rng.uniform(-1, 1, (20, 24))
    data = (centres[rng.integers(0, 20, 1500)] + rng.normal(0, 0.3, (1500, 24))).astype(np.float32)
    np.save(c / "part1.npy", data[:200])
    assert os.getxattr(c, "user.vexfs.index").startswith(b"flat")
    np.save(c / "part2.npy", data[200:])
    assert os.getxattr(c, "user.vexfs.index").startswith(b"hnsw")
    names = {f"part1.npy#{i}": data[i] for i in range(200)} | {f"part2.npy#{i - 200}": data[i] for i in range(200, 1500)}
    hits = 0
    for i in range(0, 1500, 30):
        q = data[i] + rng.normal(0, 0.05, 24).astype(np.float32)
        q.tofile(c / "q.f32.query")
        got = [n for n, _ in knn(c / "q.f32.query")]
        hits += len(set(got) & {n for n, _ in brute(names, q, "l2", 10)})
    assert hits / (50 * 10) >= 0.95
    m.unmount()
    m.mount()  # the graph comes back from its snapshot
    assert os.getxattr(c, "user.vexfs.index").startswith(b"hnsw")
    assert os.getxattr(c, "user.vexfs.count") == b"1500"


def test_the_recall_target_is_a_setting_and_the_collection_measures_itself(make_mount):
    m = make_mount("-o", "index=auto:300")
    m.mount()
    c = m / "c"
    c.mkdir()
    assert os.getxattr(c, "user.vexfs.recall") == b"0.95"
    for bad in [b"0", b"1.01", b"-0.5", b"high", b"nan", b"", b"0.9 0.8"]:
        with pytest.raises(OSError) as e:
            os.setxattr(c, "user.vexfs.recall", bad)
        assert e.value.errno == errno.EINVAL, bad
    subprocess.run(["setfattr", "-n", "user.vexfs.recall", "-v", "0.99", str(c)], check=True)
    assert os.getxattr(c, "user.vexfs.recall") == b"0.99"
    rng = np.random.default_rng(5)
    centres = rng.uniform(-1, 1, (20, 24))
    data = (centres[rng.integers(0, 20, 2000)] + rng.normal(0, 0.3, (2000, 24))).astype(np.float32)
    np.save(c / "base.npy", data)
    # The measurement runs in the background: queries never wait for it.
    deadline = time.time() + 60
    while b"in use: ef" not in os.getxattr(c, "user.vexfs.index") and time.time() < deadline:
        time.sleep(0.1)
    index = os.getxattr(c, "user.vexfs.index").decode()
    assert "in use: ef" in index and "target 0.99" in index, index
    # It holds on queries the collection has never seen.
    names = {f"base.npy#{i}": data[i] for i in range(2000)}
    hits = 0
    for i in range(0, 2000, 20):
        q = data[i] + rng.normal(0, 0.1, 24).astype(np.float32)
        q.tofile(c / "q.f32.query")
        hits += len({n for n, _ in knn(c / "q.f32.query")} & {n for n, _ in brute(names, q, "l2", 10)})
    assert hits / (100 * 10) >= 0.97
    m.unmount()
    m.mount()
    assert os.getxattr(c, "user.vexfs.recall") == b"0.99"


def test_read_your_writes_while_others_keep_writing(mnt):
    """Queries wait for what completed before them, not for an idle queue: with two writers that
    never stop, every probe written and then asked for is in the answer."""
    a, b = mnt / "a", mnt / "b"
    a.mkdir()
    b.mkdir()
    rng = np.random.default_rng(3)
    for i in range(50):
        write_vec(b / f"{i}.vec", rng.normal(0, 1, 8))
    stop = threading.Event()
    written = [0, 0]

    def writer(who):
        r = np.random.default_rng(who)
        while not stop.is_set():
            write_vec(a / f"w{who}-{written[who]}.vec", r.normal(0, 1, 8))
            written[who] += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(60):
            v = rng.normal(0, 1, 8) * 5  # far from the writers' vectors
            write_vec(a / f"probe{i}.vec", v)
            write_vec(a / "q.query", v)
            assert knn(a / "q.query", 1)[0] == (f"probe{i}.vec", 0.0)
            if i % 10 == 0:
                assert len(knn(b / "0.vec")) == 10
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert sum(written) > 0
