"""Several processes create, write, rename and delete in one tree at once; afterwards the tree holds
exactly what they wrote, through the mount, in the store, and after a remount."""
import hashlib
import json
import os
import subprocess
import sys

WORKER = r'''
import json, os, random, sys
root, wid, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(wid)
mine = {}  # relative path -> content this worker expects at the end
shared = os.path.join(root, "shared")
os.makedirs(os.path.join(shared, f"w{wid}"), exist_ok=True)
for step in range(steps):
    op = rng.random()
    if op < 0.45 or not mine:
        d = rng.choice([f"shared/w{wid}", "shared"])
        rel = f"{d}/w{wid}-{step}.dat"
        data = (f"{wid}:{step}:" * rng.randint(1, 3000)).encode()
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
        mine[rel] = data.hex()
    elif op < 0.65:
        rel = rng.choice(sorted(mine))
        extra = f"+{step}".encode()
        with open(os.path.join(root, rel), "ab") as f:
            f.write(extra)
        mine[rel] = (bytes.fromhex(mine[rel]) + extra).hex()
    elif op < 0.85:
        rel = rng.choice(sorted(mine))
        new = f"shared/w{wid}/renamed-{step}.dat" if rng.random() < 0.5 else f"shared/w{wid}-r{step}.dat"
        os.rename(os.path.join(root, rel), os.path.join(root, new))
        mine[new] = mine.pop(rel)
    else:
        rel = rng.choice(sorted(mine))
        os.unlink(os.path.join(root, rel))
        del mine[rel]
    if step % 50 == 0:
        os.listdir(shared)
print(json.dumps(mine))
'''


def snapshot(root):
    out = {}
    for dirpath, _, files in os.walk(os.path.join(root, "shared")):
        for name in files:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = f.read().hex()
    return out


def test_parallel_writers_leave_the_tree_they_wrote(make_mount):
    m = make_mount()
    m.mount()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(m.root), str(w), "600"], stdout=subprocess.PIPE)
             for w in range(6)]
    expected = {}
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0
        expected.update(json.loads(out))
    assert len(expected) > 100
    assert snapshot(m.root) == expected
    assert snapshot(m.store) == expected
    m.unmount()
    m.mount()
    assert snapshot(m.root) == expected
