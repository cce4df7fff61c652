#!/usr/bin/env python3
"""vexfs from Python with nothing but os.setxattr / os.getxattr (and NumPy to make vectors).

    python3 examples/knn.py MOUNTPOINT
"""
import os
import sys

import numpy as np

root = sys.argv[1]
coll = os.path.join(root, "embeddings")
os.makedirs(coll, exist_ok=True)

rng = np.random.default_rng(0)
vectors = rng.normal(size=(1000, 64)).astype(np.float32)
np.save(os.path.join(coll, "batch.npy"), vectors)          # 1,000 rows: batch.npy#0 ... #999

for i in range(3):                                           # any file can carry a vector
    path = os.path.join(coll, f"doc{i}.txt")
    with open(path, "w") as f:
        f.write(f"document {i}\n")
    os.setxattr(path, "user.vexfs.vector", " ".join(map(str, vectors[i] + 0.01)).encode())

print("collection:", os.getxattr(coll, "user.vexfs.count").decode(), "vectors of dimension",
      os.getxattr(coll, "user.vexfs.dim").decode(), "in", os.getxattr(coll, "user.vexfs.index").decode())

query = os.path.join(coll, "q.npy.query")                    # a query file: any format, never indexed
with open(query, "wb") as f:                                 # np.save(path) would append .npy
    np.save(f, vectors[0])
answer = os.getxattr(query, "user.vexfs.knn.5").decode()
for line in answer.splitlines():
    name, distance = line.split("\t")
    print(f"{distance:>12}  {name}")

# The same answer by brute force in NumPy:
d = np.linalg.norm(vectors - vectors[0], axis=1)
print("NumPy agrees on the nearest row:", f"batch.npy#{int(np.argmin(d))}" in answer)
os.remove(query)
