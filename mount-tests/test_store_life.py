"""The life of a store: collections of every kind written, asked, unmounted, mounted, killed and mounted
again, with answers and statuses that never change (the release build is the one CI mounts)."""
import os

import numpy as np

from conftest import is_mounted


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
