"""Query options on a real mount, each against NumPy brute force: scope tree, filters by name and by
tag, radius, per-query ef, several rows, answers longer than one attribute value, bad values; and the
daemon's log."""
import errno
import json
import os
import subprocess
import time

import numpy as np
import pytest

from conftest import VEXFS, is_mounted


def knn(path, k=10, attribute=None):
    """[(name, distance)] of one block; [[...], ...] when the answer has several."""
    raw = os.getxattr(path, attribute or f"user.vexfs.knn.{k}")
    return parse(raw)


def parse(raw):
    blocks = [[]]
    for line in raw.decode().split("\n")[:-1]:
        if line == "":
            blocks.append([])
            continue
        name, d = line.rsplit("\t", 1)
        blocks[-1].append((name, float(d)))
    return blocks[0] if len(blocks) == 1 else blocks


def exact(names, matrix, q, k, metric="l2"):
    if metric == "l2":
        d = np.sqrt(((matrix - q) ** 2).sum(axis=1))
    else:
        m = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
        d = 1 - m @ (q / np.linalg.norm(q))
    order = np.argsort(d, kind="stable")[:k]
    return [(names[i], float(d[i])) for i in order]


def write_vec(path, v):
    path.write_text(" ".join(repr(float(x)) for x in v))


def test_tree_scope_answers_relative_names_like_numpy(mnt):
    rng = np.random.default_rng(1)
    names, rows = [], []
    layout = {"photos": 5, "photos/2024": 7, "photos/2024/summer": 9, "photos/2023": 4}
    for d, n in layout.items():
        (mnt / d).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            v = rng.normal(size=6).astype(np.float32)
            write_vec(mnt / d / f"img{i}.vec", v)
            rel = os.path.relpath(mnt / d / f"img{i}.vec", mnt / "photos")
            names.append(rel)
            rows.append(v)
    # A batch file in a sub-collection answers by row; another dimension below is left out.
    batch = rng.normal(size=(3, 6)).astype(np.float32)
    np.save(mnt / "photos/2023/batch.npy", batch)
    names += [f"2023/batch.npy#{i}" for i in range(3)]
    rows += list(batch)
    (mnt / "photos/other").mkdir()
    write_vec(mnt / "photos/other/wide.vec", np.ones(9))
    matrix = np.array(rows)
    q = rng.normal(size=6).astype(np.float32)
    write_vec(mnt / "photos/find.query", q)
    assert [n for n, _ in knn(mnt / "photos/find.query", 5)] == [n for n, _ in exact(names[:5], matrix[:5], q, 5)]
    os.setxattr(mnt / "photos/find.query", "user.vexfs.scope", b"tree")
    got = knn(mnt / "photos/find.query", 20)
    want = exact(names, matrix, q, 20)
    assert [n for n, _ in got] == [n for n, _ in want]
    assert np.allclose([d for _, d in got], [d for _, d in want], atol=1e-4)
    assert os.getxattr(mnt / "photos/find.query", "user.vexfs.scope") == b"tree"
    # Removing the option brings the default back.
    os.removexattr(mnt / "photos/find.query", "user.vexfs.scope")
    assert len(knn(mnt / "photos/find.query", 20)) == 5


def make_parts(root, parts=200, rows=50, dim=16, seed=2):
    """`parts` .npy files of `rows` rows; every tenth part tagged colour=red."""
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(parts, rows, dim)).astype(np.float32)
    for p in range(parts):
        np.save(root / f"part{p:03d}.npy", data[p])
        if p % 10 == 0:
            os.setxattr(root / f"part{p:03d}.npy", "user.colour", b"red")
    return data


def recall(got, want):
    return len({n for n, _ in got} & {n for n, _ in want}) / max(1, len(want))


def test_filters_by_name_and_tag_keep_recall(make_mount):
    m = make_mount("-o", "index=hnsw")
    m.mount()
    (m / "c").mkdir()
    data = make_parts(m / "c")
    parts, rows, dim = data.shape
    rng = np.random.default_rng(3)
    cases = {"name=part0[0-9][0-9].npy": lambda p: p < 100,      # a half: the graph walk
             "user.colour=red": lambda p: p % 10 == 0,           # a tenth
             "name=part00[0-1].npy": lambda p: p < 2,            # a hundredth: the subset scan
             "user.colour=red\nname=part1*": lambda p: p % 10 == 0 and p >= 100}
    for condition, keep in cases.items():
        chosen = [p for p in range(parts) if keep(p)]
        names = [f"part{p:03d}.npy#{r}" for p in chosen for r in range(rows)]
        matrix = data[chosen].reshape(-1, dim)
        scores = []
        for t in range(10):
            q = rng.normal(size=dim).astype(np.float32)
            write_vec(m / "c" / "q.query", q)
            os.setxattr(m / "c" / "q.query", "user.vexfs.filter", condition.encode())
            got = knn(m / "c" / "q.query", 10)
            assert all(keep(int(n[4:7])) for n, _ in got), (condition, got)
            scores.append(recall(got, exact(names, matrix, q, 10)))
        assert np.mean(scores) >= 0.9, (condition, scores)
    # A tag changed through the mount is seen by the next query (filters cache what they read).
    os.setxattr(m / "c" / "q.query", "user.vexfs.filter", b"user.colour=red\nname=part00*")
    assert {n[:11] for n, _ in knn(m / "c" / "q.query", 200)} == {"part000.npy"}
    os.setxattr(m / "c" / "part001.npy", "user.colour", b"red")
    os.removexattr(m / "c" / "part000.npy", "user.colour")
    assert {n[:11] for n, _ in knn(m / "c" / "q.query", 200)} == {"part001.npy"}


def test_radius_and_ef(mnt):
    (mnt / "c").mkdir()
    rng = np.random.default_rng(4)
    matrix = rng.normal(size=(300, 4)).astype(np.float32)
    names = [f"v{i:03d}.vec" for i in range(300)]
    for n, v in zip(names, matrix):
        write_vec(mnt / "c" / n, v)
    q = rng.normal(size=4).astype(np.float32)
    write_vec(mnt / "c" / "q.query", q)
    os.setxattr(mnt / "c" / "q.query", "user.vexfs.radius", b"1.0")
    got = knn(mnt / "c" / "q.query", 1000)
    want = [(n, d) for n, d in exact(names, matrix, q, 300) if d <= 1.0]
    assert [n for n, _ in got] == [n for n, _ in want] and got
    # Still at most K, nearest first.
    assert [n for n, _ in knn(mnt / "c" / "q.query", 3)] == [n for n, _ in want[:3]]
    os.setxattr(mnt / "c" / "q.query", "user.vexfs.ef", b"500")
    assert os.getxattr(mnt / "c" / "q.query", "user.vexfs.ef") == b"500"
    assert [n for n, _ in knn(mnt / "c" / "q.query", 3)] == [n for n, _ in want[:3]]
    # Options are vexfs's own: not listed, so cp -a and rsync -X leave them.
    assert not [a for a in os.listxattr(mnt / "c" / "q.query") if a.startswith("user.vexfs.")]


def test_several_rows_answer_one_block_each(mnt):
    (mnt / "c").mkdir()
    rng = np.random.default_rng(5)
    matrix = rng.normal(size=(100, 8)).astype(np.float32)
    names = [f"v{i:02d}.vec" for i in range(100)]
    for n, v in zip(names, matrix):
        write_vec(mnt / "c" / n, v)
    queries = rng.normal(size=(3, 8)).astype(np.float32)
    with open(mnt / "c" / "many.npy.query", "wb") as f:  # np.save would add .npy to the name
        np.save(f, queries)
    blocks = knn(mnt / "c" / "many.npy.query", 4)
    assert len(blocks) == 3
    for block, q in zip(blocks, queries):
        assert [n for n, _ in block] == [n for n, _ in exact(names, matrix, q, 4)]
    out = subprocess.run([VEXFS, "search", str(mnt / "c"), "--vector", ",".join(map(str, queries[0])),
                          "--vector", ",".join(map(str, queries[2])), "-k", "4", "--json"],
                         capture_output=True, text=True, check=True).stdout
    both = json.loads(out)
    assert [[h["name"] for h in b] for b in both] == [[n for n, _ in blocks[0]], [n for n, _ in blocks[2]]]


def test_answers_longer_than_an_attribute_come_by_pages(mnt):
    (mnt / "c").mkdir()
    long = "n" * 240
    for i in range(1000):
        (mnt / "c" / f"{long}{i:04d}.vec").write_text(f"{i} 0")
    (mnt / "c" / "q.query").write_text("0 0")
    with pytest.raises(OSError) as e:
        os.getxattr(mnt / "c" / "q.query", "user.vexfs.knn.1000")
    assert e.value.errno == errno.E2BIG
    lines, pages = [], 0
    while True:
        page = os.getxattr(mnt / "c" / "q.query", f"user.vexfs.knn.1000.from.{len(lines)}")
        if not page:
            break
        assert len(page) <= 65536 and page.endswith(b"\n")
        lines += page.decode().splitlines()
        pages += 1
    assert pages >= 4 and len(lines) == 1000
    assert [l.split("\t")[0] for l in lines[:3]] == [f"{long}{i:04d}.vec" for i in range(3)]
    out = subprocess.run([VEXFS, "search", str(mnt / "c"), "--vector", "0 0", "-k", "1000"],
                         capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == lines


def test_bad_options_are_einval_with_a_status_and_unknown_names_enodata(mnt):
    (mnt / "c").mkdir()
    (mnt / "c" / "a.vec").write_text("1 2")
    q = mnt / "c" / "q.query"
    q.write_text("1 1")
    for name, value in [("user.vexfs.knn", b"1"), ("user.vexfs.scope", b"everything"), ("user.vexfs.radius", b"-2"),
                        ("user.vexfs.ef", b"0"), ("user.vexfs.filter", b"x" * 5000), ("user.vexfs.filter", b"colour=red")]:
        with pytest.raises(OSError) as e:
            os.setxattr(q, name, value)
        assert e.value.errno == errno.EINVAL, name
    assert "user.KEY=VALUE" in os.getxattr(q, "user.vexfs.status").decode()
    # Options belong to query files.
    with pytest.raises(OSError) as e:
        os.setxattr(mnt / "c" / "a.vec", "user.vexfs.scope", b"tree")
    assert e.value.errno == errno.EINVAL
    for name in ("user.vexfs.nothing", "user.vexfs.scope", "user.vexfs.filter"):
        with pytest.raises(OSError) as e:
            os.getxattr(q, name)
        assert e.value.errno == errno.ENODATA, name
    # A good value clears the complaint.
    os.setxattr(q, "user.vexfs.radius", b"10")
    assert os.getxattr(q, "user.vexfs.status") == b"query file: never indexed"
    out = subprocess.run([VEXFS, "search", str(mnt / "c"), "--vector", "1 1", "--filter", "colour=red"],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "user.KEY=VALUE" in out.stderr


def test_search_command_takes_tree_filter_and_radius(mnt):
    for d in ("t", "t/a", "t/b"):
        (mnt / d).mkdir()
    (mnt / "t/a/x.vec").write_text("1 0")
    (mnt / "t/b/y.vec").write_text("2 0")
    (mnt / "t/b/z.vec").write_text("9 0")
    os.setxattr(mnt / "t/b/y.vec", "user.kind", b"keep")
    run = lambda *a: subprocess.run([VEXFS, "search", str(mnt / "t"), "--vector", "0 0", *a],
                                    capture_output=True, text=True, check=True).stdout
    assert run() == ""
    assert [l.split("\t")[0] for l in run("--tree").splitlines()] == ["a/x.vec", "b/y.vec", "b/z.vec"]
    assert [l.split("\t")[0] for l in run("--tree", "--radius", "2").splitlines()] == ["a/x.vec", "b/y.vec"]
    assert [l.split("\t")[0] for l in run("--tree", "--filter", "user.kind=keep").splitlines()] == ["b/y.vec"]
    assert [l.split("\t")[0] for l in run("--tree", "--filter", "name=*.vec", "--filter", "name=z*").splitlines()] == ["b/z.vec"]


def test_foreground_daemon_logs_to_stderr_at_the_chosen_level(make_mount, tmp_path):
    m = make_mount()
    (m.store / "c").mkdir()
    (m.store / "c" / "a.vec").write_text("1 2")
    for level, expect in (("info", True), ("warning", False)):
        err = tmp_path / f"err-{level}"
        with open(err, "w") as f:
            p = subprocess.Popen([VEXFS, "mount", str(m.store), str(m.root), "-f", "-o", f"log_level={level}"], stderr=f)
        try:
            for _ in range(200):
                if is_mounted(m.root):
                    break
                time.sleep(0.05)
            assert is_mounted(m.root)
            assert os.listdir(m.root / "c") == ["a.vec"]
        finally:
            subprocess.run(["fusermount3", "-u", str(m.root)], check=False)
            p.wait(timeout=60)
        text = err.read_text()
        assert ("serving" in text) == expect, text
    bad = subprocess.run([VEXFS, "mount", str(m.store), str(m.root), "-o", "log_level=loud"], capture_output=True, text=True)
    assert bad.returncode != 0 and "log_level" in bad.stderr
