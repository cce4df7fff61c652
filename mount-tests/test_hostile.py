"""PRODUCT.md §1 (the root daemon under allow_other) tried the way a hostile local user would: an
unprivileged account, made with useradd, against a root daemon mounted with `-o allow_other`, using
the ordinary tools. Nothing here may read a root-only file, crash or exhaust the daemon, or forge an
answer line."""
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import time

import pytest

from conftest import VEXFS, FakeEmbedder, is_mounted

USER = "vexfs-mallory"
# Debian's Python: the one under /root is out of an unprivileged user's reach.
PYTHON = "/usr/bin/python3"


@pytest.fixture(scope="module")
def mallory():
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", USER], check=True)
    return pwd.getpwnam(USER)


def as_user(args, **kw):
    return subprocess.run(["setpriv", f"--reuid={USER}", f"--regid={USER}", "--init-groups", *args],
                          capture_output=True, text=True, timeout=300, **kw)


def py(code, *args):
    """Runs Python as the unprivileged user; its stdout, or the test fails with its stderr."""
    r = as_user([PYTHON, "-c", code, *map(str, args)])
    assert r.returncode == 0, r.stderr
    return r.stdout


def open_to_everyone(m):
    """Makes the mount reachable by everyone, its top a world-writable sticky directory like /tmp."""
    for d in list(m.root.parents)[:4]:
        os.chmod(d, 0o755)
    os.chmod(m.root, 0o1777)
    return m


@pytest.fixture
def shared(mnt, mallory):
    return open_to_everyone(mnt)


SPARSE_NPY = """
import os, sys
d = sys.argv[1]
def sparse(name, rows, dim):
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (rows, dim)
    header += " " * (-(10 + len(header) + 1) % 64) + "\\n"
    with open(os.path.join(d, name), "wb") as f:
        f.write(b"\\x93NUMPY\\x01\\x00" + len(header).to_bytes(2, "little") + header.encode())
        f.truncate(10 + len(header) + rows * dim * 4)
"""


def knn_of(text):
    return [(line.split("\t")[0], float(line.split("\t")[1])) for line in text.splitlines()]


def test_a_symlink_moved_over_a_held_query_file_reads_nothing_of_its_target(shared):
    secret = shared.store.parent / "secret"
    secret.write_text("7 7 7\n")
    os.chmod(secret, 0o600)
    (shared / "d").mkdir()
    os.chmod(shared / "d", 0o777)
    out = py("""
import os, sys
d = sys.argv[1]
for name, v in [("a.vec", "1 0 0"), ("b.vec", "0 1 0")]:
    open(os.path.join(d, name), "w").write(v)
q = os.path.join(d, "q.query")
open(q, "w").write("0 0 1")
fd = os.open(q, os.O_RDONLY)
os.symlink(sys.argv[2], os.path.join(d, "link"))
os.rename(os.path.join(d, "link"), q)
print(os.getxattr(fd, "user.vexfs.knn.3").decode(), end="")
try:
    os.getxattr(q, "user.vexfs.knn.3", follow_symlinks=False)
    print("SYMLINK ANSWERED")
except OSError:
    pass
""", shared / "d", secret)
    assert "SYMLINK ANSWERED" not in out
    # The answer is the held file's (0 0 1): both at sqrt(2); 7 7 7 would give other distances.
    assert [round(d, 4) for _, d in knn_of(out)] == [1.4142, 1.4142]
    # A symlink with a vector's name is never a vector, even one pointing at a readable file.
    as_user(["ln", "-s", str(shared / "d" / "a.vec"), str(shared / "d" / "s.vec")])
    assert os.getxattr(shared / "d", "user.vexfs.count") == b"2"


def test_three_hundred_huge_declared_collections_cost_little(shared):
    pid = shared.pid
    def rss_kib():
        return int(next(l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS:")).split()[1])
    def threads():
        return int(next(l for l in open(f"/proc/{pid}/status") if l.startswith("Threads:")).split()[1])
    before = rss_kib()
    r = as_user(["sh", "-c", f"cd {shared.root} && for i in $(seq 300); do mkdir d$i && "
                 "setfattr -n user.vexfs.dim -v 65536 d$i && echo '1 2' > d$i/x.vec || exit 1; done"])
    assert r.returncode == 0, r.stderr
    assert is_mounted(shared.root)
    status = subprocess.run(["getfattr", "--only-values", "-n", "user.vexfs.status", str(shared / "d300" / "x.vec")],
                            capture_output=True, text=True).stdout
    assert "65536" in status and status.startswith("not indexed")
    grown = (rss_kib() - before) / 1024
    print(f"300 collections of dimension 65,536: daemon RSS grew {grown:.1f} MiB, {threads()} threads")
    assert grown < 128
    assert threads() < 32


def test_answers_name_only_files_the_asker_may_read(shared, mallory):
    d = shared / "mixed"
    d.mkdir()
    os.chmod(d, 0o777)
    for i in range(20):
        p = d / f"root{i}.vec"
        p.write_text(f"{i} 0")
        os.chmod(p, 0o600)
    py("""
import sys, os
for i in range(5):
    open(os.path.join(sys.argv[1], f"mine{i}.vec"), "w").write(f"{i + 0.5} 0")
open(os.path.join(sys.argv[1], "q.query"), "w").write("0 0")
""", d)
    # The user gets K of their own, none of root's 0600 files, though those are nearer.
    mine = knn_of(py("import os, sys; print(os.getxattr(sys.argv[1], 'user.vexfs.knn.3').decode(), end='')", d / "q.query"))
    assert [n for n, _ in mine] == ["mine0.vec", "mine1.vec", "mine2.vec"]
    # Root sees everything.
    theirs = knn_of(os.getxattr(d / "q.query", "user.vexfs.knn.3").decode())
    assert [n for n, _ in theirs] == ["root0.vec", "mine0.vec", "root1.vec"]
    # A chmod retires cached answers: the same question, asked again, follows the modes at once.
    ask3 = "import os, sys; print(os.getxattr(sys.argv[1], 'user.vexfs.knn.3').decode(), end='')"
    os.chmod(d / "root1.vec", 0o644)
    assert "root1.vec" in [n for n, _ in knn_of(py(ask3, d / "q.query"))]
    os.chmod(d / "root1.vec", 0o600)
    assert "root1.vec" not in [n for n, _ in knn_of(py(ask3, d / "q.query"))]
    # Made readable, a file shows up for the user too.
    os.chmod(d / "root0.vec", 0o644)
    again = knn_of(py("import os, sys; print(os.getxattr(sys.argv[1], 'user.vexfs.knn.2').decode(), end='')", d / "q.query"))
    assert [n for n, _ in again] == ["root0.vec", "mine0.vec"]


def test_answers_follow_acls_and_directory_permissions_when_asked(shared, mallory):
    """Issue 24, attacks 6 and 7: a 0644 file whose ACL denies the asker, and the files of a directory
    the asker may enter but not list (also through a descriptor held from before a chmod), were named
    in knn answers. Answers now follow the kernel's own checks for the asker, made when they ask."""
    ask = """
import os, sys
try:
    print(os.getxattr(sys.argv[1], 'user.vexfs.knn.' + sys.argv[2]).decode(), end='')
except OSError as e:
    print('errno', e.errno, end='')
"""
    acl = shared / "acl"
    acl.mkdir()
    os.chmod(acl, 0o777)
    for i in range(4):
        (acl / f"open{i}.vec").write_text(f"{i + 1} 0")
    (acl / "denied.vec").write_text("0.5 0")
    os.chmod(acl / "denied.vec", 0o644)
    subprocess.run(["setfacl", "-m", f"u:{USER}:---", str(acl / "denied.vec")], check=True)
    assert as_user(["cat", str(acl / "denied.vec")]).returncode != 0
    py("open(__import__('sys').argv[1], 'w').write('0 0')", acl / "q.query")
    assert [n for n, _ in knn_of(py(ask, acl / "q.query", 2))] == ["open0.vec", "open1.vec"]
    # Root is not bound by the ACL.
    assert [n for n, _ in knn_of(os.getxattr(acl / "q.query", "user.vexfs.knn.2").decode())] == ["denied.vec", "open0.vec"]

    hidden = shared / "hidden"
    hidden.mkdir()
    os.chmod(hidden, 0o777)
    for i in range(3):
        (hidden / f"other{i}.vec").write_text(f"{i + 1} 0")
    py("open(__import__('sys').argv[1], 'w').write('0 0')", hidden / "q.query")
    assert len(knn_of(py(ask, hidden / "q.query", 3))) == 3
    os.chmod(hidden, 0o711)
    # The user may still read their own query file by name, but not learn the names beside it.
    assert py(ask, hidden / "q.query", 3) == "errno 13"
    # A descriptor held from before a chmod 700 sees no name added afterwards.
    os.chmod(hidden, 0o777)
    proc = subprocess.Popen(["setpriv", f"--reuid={USER}", f"--regid={USER}", "--init-groups", PYTHON, "-c", """
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
print('ready', flush=True)
sys.stdin.readline()
try:
    print(os.getxattr(fd, 'user.vexfs.knn.5').decode(), end='')
except OSError as e:
    print('errno', e.errno, end='')
""", str(hidden / "q.query")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    os.chmod(hidden, 0o700)
    (hidden / "added-later.vec").write_text("0.1 0")
    out, _ = proc.communicate("go\n", timeout=60)
    assert out == "errno 13"

    # The same after a remount.
    os.chmod(hidden, 0o711)
    shared.unmount()
    shared.mount()
    assert [n for n, _ in knn_of(py(ask, acl / "q.query", 2))] == ["open0.vec", "open1.vec"]
    assert py(ask, hidden / "q.query", 3) == "errno 13"


def long_questions(make_mount, seconds, seed):
    """A mount where each user has two questions at once of `seconds` each, and a collection c of
    20,000 x 32 with heavy.npy.query (1,024 rows at ef 10,000: long) and light.query, readable by all."""
    import numpy as np
    m = make_mount("-o", f"allow_other,max_user_queries=2,query_seconds={seconds}")
    m.mount()
    open_to_everyone(m)
    c = m / "c"
    c.mkdir()
    os.chmod(c, 0o777)
    rng = np.random.default_rng(seed)
    np.save(c / "data.npy", rng.normal(size=(20_000, 32)).astype(np.float32))
    assert os.getxattr(c, "user.vexfs.count") == b"20000"
    with open(c / "heavy.npy.query", "wb") as f:  # np.save would add .npy to the name
        np.save(f, rng.normal(size=(1024, 32)).astype(np.float32))
    (c / "light.query").write_text(" ".join(["0"] * 32))
    for q in ("heavy.npy.query", "light.query"):
        os.chmod(c / q, 0o644)
    os.setxattr(c / "heavy.npy.query", "user.vexfs.ef", b"10000")
    return m, c


def test_a_user_cannot_hold_every_thread_with_long_questions(make_mount, mallory):
    """Issue 24, attack 5: query files of 1,024 rows at ef 10,000 held every FUSE thread for minutes.
    A user other than root now has at most `max_user_queries` questions running (EBUSY past it), each
    at most `query_seconds` (ETIMEDOUT), and the reason shows in the query file's status."""
    m, c = long_questions(make_mount, seconds=1, seed=5)
    out = py("""
import os, sys, threading, time
heavy, light = sys.argv[1], sys.argv[2]
errors = {}
def ask(i):
    try:
        os.getxattr(heavy, "user.vexfs.knn.10.from.0")
        errors[i] = 0
    except OSError as e:
        errors[i] = e.errno
threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
for t in threads: t.start()
time.sleep(0.3)
try:
    os.getxattr(light, "user.vexfs.knn.3")
    third = 0
except OSError as e:
    third = e.errno
for t in threads: t.join()
print(sorted(errors.values()), third)
""", c / "heavy.npy.query", c / "light.query")
    import errno as E
    assert out.strip() == f"[{E.ETIMEDOUT}, {E.ETIMEDOUT}] {E.EBUSY}", out
    assert b"took more than 1.0 s" in os.getxattr(c / "heavy.npy.query", "user.vexfs.status")
    # Once those are over, the same user asks again; root is never limited.
    assert len(knn_of(py("import os, sys; print(os.getxattr(sys.argv[1], 'user.vexfs.knn.3').decode(), end='')", c / "light.query"))) == 3
    assert len(os.getxattr(c / "heavy.npy.query", "user.vexfs.knn.1.from.0").decode().split("\n\n")) == 1024
    m.unmount()
    m.mount()
    assert len(knn_of(py("import os, sys; print(os.getxattr(sys.argv[1], 'user.vexfs.knn.3').decode(), end='')", c / "light.query"))) == 3


def test_waiting_for_a_build_holds_no_more_threads_than_a_users_questions(make_mount, mallory):
    """A file's status waits until the file is indexed (read-your-writes), and a big file's build
    takes seconds: sixteen threads of one user asking the status of a file being built held every
    FUSE thread, and everyone's `stat` and `create` waited for the build. Such a wait now counts as
    one of the user's questions (`max_user_queries`, EBUSY past it) and ends when its asker gives up."""
    import errno as E
    import numpy as np
    m = make_mount("-o", "allow_other,max_user_queries=2")
    m.mount()
    open_to_everyone(m)
    py("import os, sys; os.mkdir(sys.argv[1])", m / "a")
    (m / "r").mkdir()
    np.save(m / "a" / "big.npy", np.random.default_rng(3).normal(size=(100_000, 32)).astype(np.float32))
    asker = subprocess.Popen(["setpriv", f"--reuid={USER}", f"--regid={USER}", "--init-groups", PYTHON, "-c", """
import errno, os, sys, threading, time
f = sys.argv[1]
got = []
def ask():
    try:
        got.append(os.getxattr(f, "user.vexfs.status").decode()[:7])
    except OSError as e:
        got.append(errno.errorcode[e.errno])
threads = [threading.Thread(target=ask) for _ in range(16)]
for t in threads: t.start()
for t in threads: t.join()
print(sorted(got))
""", str(m / "a" / "big.npy")], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    slowest, i, end = 0.0, 0, time.monotonic() + 2
    while time.monotonic() < end:
        t = time.monotonic()
        (m / "r" / f"f{i}").write_text("x")
        os.stat(m / "r" / f"f{i}")
        slowest = max(slowest, time.monotonic() - t)
        i += 1
    building = asker.poll() is None
    out, _ = asker.communicate(timeout=600)
    got = eval(out)
    assert slowest < 1.0, (slowest, got)
    if building:  # the waits were still going on while root worked: the bound is what kept root's thread free
        assert got.count("EBUSY") >= 14 and got.count("indexed") >= 1, got
    assert os.getxattr(m / "a", "user.vexfs.count") == b"100000"
    m.unmount()
    m.mount()
    assert os.getxattr(m / "a" / "big.npy", "user.vexfs.status").startswith(b"indexed")
    assert os.getxattr(m / "a", "user.vexfs.count") == b"100000"


def test_knn_of_a_big_sparse_file_reads_no_more_than_a_question(shared):
    """Issue 24, attack 3: knn of a big sparse vector file read all of it (up to 1 GiB) per request;
    four at once took the daemon to 5.6 GiB. A file asked about is read only up to a query file's
    size (16 MiB); past it, it is asked by what it was indexed as, or not at all (ENODATA)."""
    import errno as E
    import threading
    import numpy as np
    c = shared / "sparse"
    c.mkdir()
    os.chmod(c, 0o777)
    os.setxattr(c, "user.vexfs.dim", b"2")
    np.save(c / "small.npy", np.array([[1, 0], [2, 0]], np.float32))
    assert os.getxattr(c, "user.vexfs.count") == b"2"
    # An 800 MB .npy of 200,000 rows of dimension 1,024, all holes: the collection's dimension is 2,
    # so it is never indexed, and only a question could read it.
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1024), np.float32))
    header["shape"] = (200_000, 1024)
    with open(c / "big.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.truncate(f.tell() + 200_000 * 1024 * 4)
    assert os.getxattr(c / "big.npy", "user.vexfs.status").startswith(b"not indexed")
    def hwm():
        return int(next(l for l in open(f"/proc/{shared.pid}/status") if l.startswith("VmHWM")).split()[1]) // 1024
    before = hwm()
    results = []
    def ask():
        try:
            os.getxattr(c / "big.npy", "user.vexfs.knn.3")
            results.append(0)
        except OSError as e:
            results.append(e.errno)
    threads = [threading.Thread(target=ask) for _ in range(4)]
    t0 = time.monotonic()
    for t in threads: t.start()
    for t in threads: t.join()
    assert results == [E.ENODATA] * 4 and time.monotonic() - t0 < 10
    assert hwm() - before < 128, (before, hwm())
    # A small file is still asked by what it holds, before and after a remount.
    assert os.getxattr(c / "small.npy", "user.vexfs.knn.1") is not None
    shared.unmount()
    shared.mount()
    with pytest.raises(OSError) as e:
        os.getxattr(c / "big.npy", "user.vexfs.knn.3")
    assert e.value.errno == E.ENODATA


def test_a_small_file_of_many_rows_does_not_stall_other_collections(shared):
    """Issue 24, attack 2: a small .npy claiming many rows of dimension 1 was built on the bridge's one
    worker, and a victim's question in another collection, right after a write, waited for it (249 s
    for 2,000,000 rows). A vector file of a megabyte or more is built by the builder now, and every
    file counts against the mount's memory."""
    import numpy as np
    a = shared / "attacker"
    a.mkdir()
    os.chmod(a, 0o777)
    source = shared.store.parent / "many.npy"
    np.save(source, np.random.default_rng(1).normal(size=(500_000, 1)).astype(np.float32))
    os.chmod(source, 0o644)
    r = as_user(["cp", str(source), str(a / "many.npy")])
    assert r.returncode == 0, r.stderr
    time.sleep(0.5)  # the build has begun
    v = shared / "victim"
    v.mkdir()
    t0 = time.monotonic()
    (v / "a.vec").write_text("1 2")
    (v / "q.query").write_text("1 2")
    assert [n for n, _ in knn_of(os.getxattr(v / "q.query", "user.vexfs.knn.1").decode())] == ["a.vec"]
    waited = time.monotonic() - t0
    assert waited < 5, waited
    # The attacker's file is indexed in the end, and stays so through a remount.
    assert os.getxattr(a, "user.vexfs.count") == b"500000"
    shared.unmount()
    shared.mount()
    assert os.getxattr(a, "user.vexfs.count") == b"500000"
    assert [n for n, _ in knn_of(os.getxattr(v / "q.query", "user.vexfs.knn.1").decode())] == ["a.vec"]


def test_one_user_cannot_take_every_collection(make_mount, mallory):
    """Issue 24, attack 1: one user made 8,709 collections in 19 s, each holding descriptors, until
    every user's `ls` and `create` failed with EMFILE (or, with a higher limit, until other users'
    directories stopped being collections). A user other than root owns at most
    `max_user_collections`; past it `setfattr` is EDQUOT and the directory says why."""
    import errno as E
    m = make_mount("-o", "allow_other,max_user_collections=5")
    m.mount()
    open_to_everyone(m)
    out = py("""
import os, sys
root = sys.argv[1]
codes = []
for i in range(8):
    d = os.path.join(root, f"c{i}")
    os.mkdir(d)
    try:
        os.setxattr(d, "user.vexfs.dim", b"2")
        codes.append(0)
    except OSError as e:
        codes.append(e.errno)
print(codes)
""", m.root)
    assert out.strip() == str([0] * 5 + [E.EDQUOT] * 3)
    assert b"max_user_collections" in os.getxattr(m / "c7", "user.vexfs.status")
    # Root's directories, and other users', still become collections; the mount still serves.
    (m / "mine").mkdir()
    os.setxattr(m / "mine", "user.vexfs.dim", b"2")
    (m / "mine" / "a.vec").write_text("1 2")
    assert os.getxattr(m / "mine", "user.vexfs.count") == b"1"
    assert len(os.listdir(m.root)) == 9
    m.unmount()
    m.mount()
    assert os.getxattr(m / "mine", "user.vexfs.count") == b"1"
    assert os.getxattr(m / "c0", "user.vexfs.dim") == b"2"
    assert b"max_user_collections" in os.getxattr(m / "c7", "user.vexfs.status")


def test_idle_collections_give_their_descriptors_back(make_mount, mallory):
    """Issue 24, attack 1 again: every collection, idle or not, kept its directory's descriptor until
    unmount, so descriptors grew with collections. Now at most `open_collections` stay open, the
    least recently used closed and reopened by handle when next used: an unprivileged user's many
    collections (with the store's idle inodes bounded by `descriptor_budget`) cost the daemon that
    bound plus a constant, and every collection still answers as its own, also after a `mv` of a
    closed one's directory, and after unmount and mount."""
    from test_posix import parse_prometheus
    bound, budget, n = 6, 64, 60
    m = make_mount("-o", f"allow_other,open_collections={bound},descriptor_budget={budget}")
    m.mount()
    open_to_everyone(m)

    def descriptors():
        return len(os.listdir(f"/proc/{m.pid}/fd"))

    def held():
        # What the daemon holds, by kind, for the message of a failure.
        kinds = {}
        for fd in os.listdir(f"/proc/{m.pid}/fd"):
            try:
                target = os.readlink(f"/proc/{m.pid}/fd/{fd}")
            except OSError:
                continue
            kind = target.split(":")[0] if ":" in target else os.path.dirname(target).replace(str(m.store), "STORE")
            kinds[kind] = kinds.get(kind, 0) + 1
        return kinds

    def stats():
        return parse_prometheus((m.root / ".vexfs" / "stats").read_text())

    def answers(where):
        # Each collection's first file's two neighbours, named as that collection's own.
        out = py("""
import os, sys
for i, d in enumerate(sys.argv[2:]):
    print(os.getxattr(os.path.join(sys.argv[1], d, f"a{i}.vec"), "user.vexfs.knn.2").decode().replace("\\n", ";"))
""", m.root, *where)
        return [[l.split("\t")[0] for l in line.split(";") if l] for line in out.splitlines()]

    fresh = descriptors()
    py("""
import os, sys
for i in range(int(sys.argv[2])):
    d = os.path.join(sys.argv[1], f"c{i}")
    os.mkdir(d)
    for name, v in ((f"a{i}.vec", f"{i} 0"), (f"b{i}.vec", f"{i} 1"), (f"c{i}.vec", f"{i} 3")):
        open(os.path.join(d, name), "w").write(v)
    os.getxattr(d, "user.vexfs.count")
""", m.root, n)
    where = [f"c{i}" for i in range(n)]
    expected = [[f"b{i}.vec", f"c{i}.vec"] for i in range(n)]
    assert answers(where) == expected
    s = stats()
    assert s[("vexfs_collections", "")] == n
    assert s[("vexfs_collection_dirs_bound", "")] == bound
    assert s[("vexfs_collection_dirs_open", "")] <= bound
    assert s[("vexfs_collection_dirs_kept", "")] == 0, "the root daemon reopens by handle on this store"
    assert s[("vexfs_collection_dirs_reopened", "")] >= n - bound
    # Before, each collection held one descriptor: n more than at the start.
    grown = descriptors() - fresh
    assert grown <= bound + budget + 16, f"{grown} descriptors more for {n} collections: {held()}"

    # c0 was asked first, so it is closed now: moved (twice, under another directory), it is still
    # itself, its files reached by its handle and its answers its own.
    assert stats()[("vexfs_collection_dirs_open", "")] <= bound
    py("""
import os, sys
os.mkdir(os.path.join(sys.argv[1], "elsewhere"))
os.rename(os.path.join(sys.argv[1], "c0"), os.path.join(sys.argv[1], "moved0"))
os.rename(os.path.join(sys.argv[1], "moved0"), os.path.join(sys.argv[1], "elsewhere", "c0"))
""", m.root)
    where[0] = "elsewhere/c0"
    assert answers(where[:1]) == expected[:1]
    assert os.getxattr(m / "elsewhere" / "c0", "user.vexfs.count") == b"3"
    # A write in a closed collection is indexed there, and nowhere else.
    py("open(__import__('sys').argv[1], 'w').write('5 0.5')", m / "c5" / "z5.vec")
    assert os.getxattr(m / "c5", "user.vexfs.count") == b"4"
    assert knn_of(os.getxattr(m / "c5" / "a5.vec", "user.vexfs.knn.1").decode())[0][0] == "z5.vec"
    assert all(os.getxattr(m / d, "user.vexfs.count") == b"3" for d in where if d != "c5")

    m.unmount()
    m.mount()
    fresh = descriptors()
    expected[5] = ["z5.vec", "b5.vec"]
    assert answers(where) == expected
    assert stats()[("vexfs_collection_dirs_open", "")] <= bound
    # The reconciliation at mount held every collection once; they are let go of as before.
    grown = descriptors() - fresh
    assert grown <= bound + budget + 16, f"{grown} descriptors more after asking {n} collections: {held()}"
    assert len(os.listdir(f"/proc/{m.pid}/fd")) <= bound + budget + 64


@pytest.mark.parametrize("option", ["max_user_index_mb", "max_user_state_mb"])
def test_one_user_cannot_take_all_index_memory_or_state_disk(make_mount, mallory, option):
    """Issue 24: index memory and the disk under STORE/.vexfs were bounded for the whole mount
    only, so one user could take all of both. The collections a user other than root owns share
    `max_user_index_mb` of memory and `max_user_state_mb` of disk; a file past either is not
    indexed, and its status names the bound. Root's collections, and other users', still index."""
    m = make_mount("-o", f"allow_other,{option}=1")
    m.mount()
    open_to_everyone(m)
    script = SPARSE_NPY + """
os.mkdir(d)
sparse("small.npy", 1000, 16)   # about 0.35 MiB of graph, 0.4 MiB on disk
sparse("big.npy", 8000, 16)     # about 2.7 MiB and 3.2 MiB: past 1 MiB
for name in ("small.npy", "big.npy"):
    print(os.getxattr(os.path.join(d, name), "user.vexfs.status").decode())
print(os.getxattr(d, "user.vexfs.count").decode())
"""
    small, big, count = py(script, m / "mine").splitlines()
    assert small.startswith("indexed"), small
    assert big.startswith("not indexed: 8000 vectors of dimension 16; ") and option in big, big
    assert count == "1000"
    # Root is not bounded by it: the same file indexes in root's directory.
    import numpy as np
    (m / "roots").mkdir()
    np.save(m / "roots" / "big.npy", np.zeros((8000, 16), np.float32))
    assert os.getxattr(m / "roots" / "big.npy", "user.vexfs.status").startswith(b"indexed")
    assert os.getxattr(m / "roots", "user.vexfs.count") == b"8000"
    m.unmount()
    m.mount()
    assert os.getxattr(m / "mine", "user.vexfs.count") == b"1000"
    status = os.getxattr(m / "mine" / "big.npy", "user.vexfs.status").decode()
    assert status.startswith("not indexed: 8000 vectors of dimension 16; ") and option in status, status
    assert os.getxattr(m / "roots", "user.vexfs.count") == b"8000"


def test_the_journal_shows_each_user_only_what_they_may_read(shared):
    (shared / "x.vec").write_text("1 2")
    (shared / "secret.vec").write_text("3 4")
    os.chmod(shared / "secret.vec", 0o600)
    (shared / "private").mkdir()
    (shared / "private" / "p.vec").write_text("5 6")
    os.chmod(shared / "private", 0o700)
    (shared / "gone.vec").write_text("7 8")
    (shared / "gone.vec").unlink()
    (shared / "private" / "gone.vec").write_text("7 8")
    (shared / "private" / "gone.vec").unlink()
    py("import sys; open(sys.argv[1], 'w').write('9 9')", shared / "mine.vec")
    r = as_user(["cat", str(shared / ".vexfs" / "journal")])
    assert r.returncode == 0, r.stderr
    seen = {json.loads(line)["path"] for line in r.stdout.splitlines()}
    assert {"x.vec", "mine.vec", "gone.vec"} <= seen
    assert not seen & {"secret.vec", "private/p.vec", "private/gone.vec"}
    everything = {json.loads(line)["path"] for line in (shared / ".vexfs" / "journal").read_text().splitlines()}
    assert {"x.vec", "secret.vec", "private/p.vec", "private/gone.vec", "mine.vec"} <= everything
    assert as_user(["cat", str(shared / ".vexfs" / "stats")]).returncode == 0
    assert stat.S_IMODE(os.stat(shared.store / ".vexfs").st_mode) == 0o700


def test_the_journal_never_quotes_a_file_to_those_who_could_not_read_it(shared):
    """Issue 24, attack 8: once a 0600 file that is not a vector was unlinked, other users' view of the
    journal showed its status line, which quoted its first bytes."""
    d = shared / "open"
    d.mkdir()
    os.chmod(d, 0o755)
    (d / "secret.vec").write_text("hunter2-TOPSECRET 1 2")
    os.chmod(d / "secret.vec", 0o600)
    status = os.getxattr(d / "secret.vec", "user.vexfs.status").decode()
    assert status.startswith("not indexed")
    (d / "secret.vec").unlink()
    for _ in range(2):
        r = as_user(["cat", str(shared / ".vexfs" / "journal")])
        assert r.returncode == 0, r.stderr
        mine = [json.loads(line) for line in r.stdout.splitlines() if json.loads(line)["path"] == "open/secret.vec"]
        assert mine and "hunter2" not in r.stdout
        assert {e.get("status") for e in mine if e["event"] == "index"} <= {"not indexed"}
        shared.unmount()
        shared.mount()


def test_a_flood_of_journal_opens_costs_one_view(shared):
    """Issue 24, attack 4: every open of `.vexfs/journal` made a private copy of the reader's view:
    600 opens of an 8.5 MB view took 5 GB of shared memory. Opens by one reader now share one view
    while the journal is unchanged (and for a second whatever it records)."""
    d = shared / "busy"
    d.mkdir()
    os.chmod(d, 0o755)
    for i in range(3000):
        (d / f"f{i}.vec").write_text(f"{i} 1")
    def shmem():
        return int(next(l for l in open("/proc/meminfo") if l.startswith("Shmem:")).split()[1]) // 1024
    before = shmem()
    proc = subprocess.Popen(["setpriv", f"--reuid={USER}", f"--regid={USER}", "--init-groups", PYTHON, "-c", """
import os, sys
path = sys.argv[1]
first = open(path, "rb").read()
fds = [os.open(path, os.O_RDONLY) for _ in range(300)]
print(len(first), flush=True)
sys.stdin.readline()
print(all(os.pread(fd, len(first) + 1, 0) == first for fd in fds[::50]), flush=True)
""", str(shared / ".vexfs" / "journal")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    size = int(proc.stdout.readline())
    grown = shmem() - before
    out, _ = proc.communicate("go\n", timeout=120)
    assert out.strip() == "True"
    assert size > 500_000, size
    # 300 private copies would be 300 times the view.
    assert grown < 3 * size / (1 << 20) + 16, (grown, size)
    shared.unmount()
    shared.mount()
    r = as_user(["cat", str(shared / ".vexfs" / "journal")])
    assert r.returncode == 0 and len(r.stdout) >= size


WRITER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
print("ready", flush=True)
sys.stdin.readline()
os.pwrite(fd, b"evil", 0)
os.close(fd)
print("done", flush=True)
"""


@pytest.mark.parametrize("data_path", ["passthrough", "no_passthrough"])
def test_a_write_through_a_descriptor_held_before_chmod_clears_set_id_bits(make_mount, mallory, tmp_path, data_path):
    """Issue 24, attack 10: another user's 0777 file opened for writing, then `chmod 4777` by its owner,
    then a write through the held descriptor: under passthrough the file kept 04777 with the
    attacker's bytes (the kernel wrote with the daemon's credentials). A plain directory clears it."""
    m = make_mount("-o", "allow_other" + (",no_passthrough" if data_path == "no_passthrough" else ""))
    m.mount()
    for d in list(m.root.parents)[:4]:
        os.chmod(d, 0o755)
    plain = tmp_path / "plain"
    plain.mkdir()
    os.chmod(plain, 0o755)
    modes = []
    for f in (m / "prog", plain / "prog"):
        f.write_bytes(b"#!/bin/sh\ntrue\n")
        os.chmod(f, 0o777)
        proc = subprocess.Popen(["setpriv", f"--reuid={USER}", f"--regid={USER}", "--init-groups", PYTHON, "-c", WRITER, str(f)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        os.chmod(f, 0o4777)
        out, _ = proc.communicate("go\n", timeout=60)
        assert out.strip() == "done"
        modes.append(stat.S_IMODE(os.stat(f).st_mode))
    assert modes == [0o777, 0o777]
    assert stat.S_IMODE(os.stat(m.store / "prog").st_mode) == 0o777
    m.unmount()
    m.mount()
    assert stat.S_IMODE(os.stat(m / "prog").st_mode) == 0o777 and (m / "prog").read_bytes().startswith(b"evil")


def test_only_a_directory_owner_chooses_what_goes_to_the_embedder(shared):
    """Issue 24, suspected: anyone who may write a directory could set user.vexfs.embed to `*` and
    send other users' files to the endpoint. Only the directory's owner (or root) may set it. (On a
    sticky directory the kernel already refuses others any user.* attribute.)"""
    import errno as E
    team = shared / "team"
    team.mkdir()
    os.chmod(team, 0o777)
    out = py("""
import os, sys
shared, own = sys.argv[1], sys.argv[2]
os.mkdir(own)
codes = []
for d in (shared, own):
    try:
        os.setxattr(d, "user.vexfs.embed", b"*")
        codes.append(0)
    except OSError as e:
        codes.append(e.errno)
print(codes)
""", team, shared / "mallorys")
    assert out.strip() == str([E.EACCES, 0])
    os.setxattr(team, "user.vexfs.embed", b"*.txt")
    shared.unmount()
    shared.mount()
    assert os.getxattr(shared.store / "mallorys", "user.vexfs.embed") == b"*"
    assert os.getxattr(shared.store / "team", "user.vexfs.embed") == b"*.txt"


def test_names_cannot_forge_answer_lines(shared):
    d = shared / "names"
    d.mkdir()
    os.chmod(d, 0o777)
    names = [b"tab\there.vec", b"new\nline.vec", b"back\\slash.vec", b"caf\xe9.vec", b'x","evil":"1.vec']
    py("""
import os, sys
d = os.fsencode(sys.argv[1])
names = [b"tab\\there.vec", b"new\\nline.vec", b"back\\\\slash.vec", b"caf\\xe9.vec", b'x","evil":"1.vec']
for i, n in enumerate(names):
    open(os.path.join(d, n), "w").write(f"{i + 1} 0")
open(os.path.join(d, b"q.query"), "w").write("0 0")
""", d)
    assert os.getxattr(d, "user.vexfs.count") == b"5"
    text = os.getxattr(d / "q.query", "user.vexfs.knn.5").decode()
    lines = text.split("\n")[:-1]
    assert len(lines) == 5 and all(line.count("\t") == 1 for line in lines)
    assert [l.split("\t")[0] for l in lines] == ["tab\\there.vec", "new\\nline.vec", "back\\\\slash.vec", "caf\\xe9.vec",
                                                  'x","evil":"1.vec']
    out = subprocess.run([VEXFS, "search", str(d), "--vector", "0,0", "-k", "5", "--json"], capture_output=True, check=True)
    items = json.loads(out.stdout)
    assert [i["name"] for i in items] == ["tab\there.vec", "new\nline.vec", "back\\slash.vec", "caf\\xe9.vec", 'x","evil":"1.vec']
    assert items[3].get("escaped") is True and "evil" not in items[4]
    assert [round(i["distance"], 3) for i in items] == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_a_name_with_a_hash_cannot_pass_for_a_row_of_another_file(shared):
    """Issue 24, attack 9: plain files named `data.npy#0` with a `user.vexfs.vector` looked exactly like
    the rows of another user's `data.npy`. `#` is escaped in names, so only a row has one."""
    import numpy as np
    d = shared / "rows"
    d.mkdir()
    os.chmod(d, 0o777)
    np.save(d / "data.npy", np.array([[1, 0], [2, 0]], np.float32))
    py("""
import os, sys
d = sys.argv[1]
for i in range(2):
    p = os.path.join(d, f"data.npy#{i}")
    open(p, "w").close()
    os.setxattr(p, "user.vexfs.vector", f"{i + 1}.5 0".encode())
open(os.path.join(d, "q.query"), "w").write("0 0")
""", d)
    def names():
        return [n for n, _ in knn_of(os.getxattr(d / "q.query", "user.vexfs.knn.4").decode())]
    assert os.getxattr(d, "user.vexfs.count") == b"4"
    before = names()
    assert before == ["data.npy#0", "data.npy\\x230", "data.npy#1", "data.npy\\x231"]
    items = json.loads(subprocess.run([VEXFS, "search", str(d), "--vector", "0,0", "-k", "4", "--json"],
                                      capture_output=True, check=True).stdout)
    assert [(i["file"], i.get("row")) for i in items] == [("data.npy", 0), ("data.npy#0", None), ("data.npy", 1), ("data.npy#1", None)]
    shared.unmount()
    shared.mount()
    assert names() == before


def test_every_hard_link_is_a_vector_and_a_write_refreshes_all(shared):
    a, b = shared / "a", shared / "b"
    a.mkdir()
    b.mkdir()
    (a / "x.vec").write_text("1 0")
    (a / "far.vec").write_text("0 9")
    (b / "far.vec").write_text("0 9")
    os.link(a / "x.vec", a / "y.vec")
    os.link(a / "x.vec", b / "z.vec")
    assert os.getxattr(a, "user.vexfs.count") == b"3" and os.getxattr(b, "user.vexfs.count") == b"2"
    with open(a / "y.vec", "w") as f:
        f.write("0 8")
    (a / "q.query").write_text("0 8")
    (b / "q.query").write_text("0 8")
    assert sorted(knn_of(os.getxattr(a / "q.query", "user.vexfs.knn.2").decode())) == [("x.vec", 0.0), ("y.vec", 0.0)]
    assert knn_of(os.getxattr(b / "q.query", "user.vexfs.knn.1").decode()) == [("z.vec", 0.0)]


def test_remount_right_after_unmount_waits_for_the_old_daemon(make_mount):
    m = make_mount()
    m.mount()
    for i in range(2000):
        (m.root / f"v{i}.vec").write_text(f"{i} {i % 7} 1")
    subprocess.run(["fusermount3", "-u", str(m.root)], check=True)
    m.mount()
    assert os.getxattr(m.root, "user.vexfs.count") == b"2000"


def test_hostile_settings_attributes_and_contents_are_refused_with_a_reason(shared):
    """Attribute values and file contents chosen to hurt: each is a clear errno or a status line."""
    d = shared / "hostile"
    d.mkdir()
    os.chmod(d, 0o777)
    out = py("""
import errno, os, struct, sys
d = sys.argv[1]
codes = []
for name, value in [("user.vexfs.dim", b"65537"), ("user.vexfs.dim", b"-1"), ("user.vexfs.dim", b"\\xff\\xfe"),
                    ("user.vexfs.dim", b"9" * 5000), ("user.vexfs.metric", b"cosine\\x00x"), ("user.vexfs.knn", b"1"),
                    ("user.vexfs.metric", b"hamming")]:
    try:
        os.setxattr(d, name, value)
        codes.append("ok")
    except OSError as e:
        codes.append(errno.errorcode[e.errno])
f = os.path.join(d, "photo.jpg")
open(f, "w").write("x")
for value in [b"nan 1", b"1e999 1", b"", b"[1, 2"]:
    try:
        os.setxattr(f, "user.vexfs.vector", value)
        codes.append("ok")
    except OSError as e:
        codes.append(errno.errorcode[e.errno])
header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }"
open(os.path.join(d, "huge.npy"), "wb").write(b"\\x93NUMPY\\x01\\x00" + struct.pack("<H", len(header)) + header)
open(os.path.join(d, "torn.fvecs"), "wb").write(struct.pack("<i", 1 << 30) + b"\\0" * 8)
open(os.path.join(d, "ok.vec"), "w").write("1 2")
print(" ".join(codes))
""", d)
    assert out.split() == ["EINVAL"] * 7 + ["EINVAL"] * 4
    assert is_mounted(shared.root)
    assert os.getxattr(d, "user.vexfs.count") == b"1"
    for name in ["huge.npy", "torn.fvecs"]:
        status = os.getxattr(d / name, "user.vexfs.status").decode()
        assert status.startswith("not indexed: ") and "\n" not in status


def test_a_sparse_npy_claiming_millions_of_rows_is_refused_unread(shared):
    """A .npy past the stream threshold costs its writer nothing when it is sparse: one header and a
    truncate. The daemon refuses what memory cannot hold before reading a byte of it, says why in the
    file's status, and goes on answering."""
    (shared / "d").mkdir()
    os.chmod(shared / "d", 0o777)
    out = py(SPARSE_NPY + """
open(os.path.join(d, "good.vec"), "w").write(" ".join(["0.5"] * 64))
sparse("huge.npy", 1 << 27, 64)     # 32 GiB of nothing: more than memory holds
sparse("many.npy", 1 << 28, 1)      # 1 GiB of nothing: more rows than one file may bring
for name in ("huge.npy", "many.npy"):
    print(os.getxattr(os.path.join(d, name), "user.vexfs.status").decode())
print(os.getxattr(d, "user.vexfs.count").decode())
""", shared / "d")
    huge, many, count = out.splitlines()
    assert huge.startswith("not indexed: 134217728 vectors of dimension 64; the memory left for indexes holds "), huge
    assert many == "not indexed: 268435456 vectors in one file; at most 134217728", many
    assert count == "1"


def test_a_question_given_up_frees_its_thread_at_once(make_mount, mallory):
    """FUSE interrupts are honoured: a user's long questions whose processes are killed stop within a
    row's work (EINTR to the kernel), so the processes go away at once and the user's next question
    is admitted, not refused with EBUSY for the rest of the long ones' time."""
    import signal
    m, c = long_questions(make_mount, seconds=60, seed=8)
    ask_heavy = "import os, sys; os.getxattr(sys.argv[1], 'user.vexfs.knn.10.from.0')"
    heavy = [subprocess.Popen(["setpriv", f"--reuid={USER}", f"--regid={USER}", "--init-groups", PYTHON, "-c", ask_heavy,
                               str(c / "heavy.npy.query")]) for _ in range(2)]
    time.sleep(1.5)
    assert all(p.poll() is None for p in heavy), "the heavy questions should still be running"
    killed = time.time()
    for p in heavy:
        p.send_signal(signal.SIGKILL)
    for p in heavy:
        p.wait(timeout=60)
    gone = time.time() - killed
    assert gone < 2, f"the killed askers waited {gone:.1f} s for their answers"
    answer = py("import os, sys; print(os.getxattr(sys.argv[1], 'user.vexfs.knn.3').decode(), end='')", c / "light.query")
    assert len(knn_of(answer)) == 3
    m.unmount()
    m.mount()
    assert len(knn_of(py("import os, sys; print(os.getxattr(sys.argv[1], 'user.vexfs.knn.3').decode(), end='')", c / "light.query"))) == 3


def test_a_directory_on_another_filesystem_is_served_but_never_a_collection(make_mount):
    """Collections, their indexes and the hard-link table are keyed by inode number, unique on one
    filesystem only: a directory of another filesystem mounted inside the store (whose inode numbers
    may equal those of the store's own directories) is served as files, never as a collection."""
    import errno as E
    m = make_mount()
    (m.store / "other").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(m.store / "other")], check=True)
    try:
        m.mount()
        (m / "other" / "c").mkdir()
        (m / "other" / "c" / "a.vec").write_text("1 2")
        assert (m / "other" / "c" / "a.vec").read_text() == "1 2"
        with pytest.raises(OSError) as e:
            os.setxattr(m / "other" / "c", "user.vexfs.dim", b"2")
        assert e.value.errno == E.EINVAL
        status = os.getxattr(m / "other" / "c", "user.vexfs.status")
        assert status == b"not a collection: it is on another filesystem than the store's root", status
        # The store's own directories still are.
        (m / "c").mkdir()
        (m / "c" / "a.vec").write_text("1 2")
        assert os.getxattr(m / "c", "user.vexfs.count") == b"1"
        m.unmount()
        m.mount()
        assert (m / "other" / "c" / "a.vec").read_text() == "1 2"
        assert os.getxattr(m / "other" / "c", "user.vexfs.status").startswith(b"not a collection: it is on another")
        assert os.getxattr(m / "c", "user.vexfs.count") == b"1"
        m.unmount()
    finally:
        m.cleanup()
        subprocess.run(["umount", str(m.store / "other")], check=False)


def test_one_users_pile_of_text_delays_anothers_by_one_request(make_mount, mallory):
    """Issue 24, suspected: one user's pile of texts before a slow endpoint held everyone's text
    behind it (one queue, first come first served). Requests now take turns by the owner of each
    file's collection: a text written after another user's 60 is sent within a request or two."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = FakeEmbedder(port, delay=0.2)
    endpoint.start()
    try:
        m = make_mount("-o", f"allow_other,embedder=http://127.0.0.1:{port}/v1/embeddings,embed_model=m,embed_batch=1")
        m.mount()
        open_to_everyone(m)
        py("import os, sys; os.mkdir(sys.argv[1])", m / "pile")
        (m / "mine").mkdir()
        for i in range(60):
            (m / "pile" / f"t{i}.txt").write_text(f"text number {i} of a pile")
        time.sleep(0.3)
        t0 = time.monotonic()
        (m / "mine" / "note.txt").write_text("a note of my own")
        while not os.getxattr(m / "mine" / "note.txt", "user.vexfs.status").startswith(b"indexed"):
            assert time.monotonic() - t0 < 30
            time.sleep(0.05)
        waited = time.monotonic() - t0
        pending = os.getxattr(m / "pile", "user.vexfs.count")
        # First come, first served, the note would wait for the rest of the pile (about 12 s).
        assert waited < 3, (waited, pending)
        deadline = time.monotonic() + 120
        while os.getxattr(m / "pile", "user.vexfs.count") != b"60":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        m.unmount()
        m.mount()
        assert os.getxattr(m / "pile", "user.vexfs.count") == b"60"
        assert os.getxattr(m / "mine", "user.vexfs.count") == b"1"
        assert os.getxattr(m / "mine" / "note.txt", "user.vexfs.status").startswith(b"indexed")
    finally:
        endpoint.stop()


def test_the_embedding_cache_tells_no_user_what_another_wrote_or_asked(make_mount, mallory):
    """A vector the cache holds comes back at once: shared by all users, it told anyone whether a
    file they may not read holds a passage they guessed (their copy was indexed with nothing sent,
    and the stats' hits rose), or whether someone asked a question. Each user's texts and questions
    now have cache rows of their own; a user's own copy still sends nothing."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = FakeEmbedder(port)
    endpoint.start()
    secret, question = "the launch code is 0451", "where is the launch code"

    def indexed(f):
        deadline = time.monotonic() + 30
        while not os.getxattr(f, "user.vexfs.status").startswith(b"indexed"):
            assert time.monotonic() < deadline, os.getxattr(f, "user.vexfs.status")
            time.sleep(0.05)

    def sent(text):
        return endpoint.texts.count(text)

    try:
        m = make_mount("-o", f"allow_other,embedder=http://127.0.0.1:{port}/v1/embeddings,embed_model=m")
        m.mount()
        open_to_everyone(m)
        (m / "vault").mkdir(mode=0o700)
        (m / "vault" / "plan.txt").write_text(secret)
        (m / "vault" / "ask.query").write_text(question)
        indexed(m / "vault" / "plan.txt")
        os.getxattr(m / "vault" / "ask.query", "user.vexfs.knn.1")
        assert sent(secret) == 1 and sent(question) == 1
        # Root's own copy elsewhere: nothing sent.
        (m / "copy").mkdir()
        shutil.copyfile(m / "vault" / "plan.txt", m / "copy" / "plan.txt")
        indexed(m / "copy" / "plan.txt")
        assert sent(secret) == 1

        # Mallory guesses both in a collection of her own: each guess goes to the endpoint.
        py("import os, sys; os.mkdir(sys.argv[1]); open(sys.argv[1] + '/guess.txt', 'w').write(sys.argv[2]);"
           "open(sys.argv[1] + '/ask.query', 'w').write(sys.argv[3])", m / "probe", secret, question)
        indexed(m / "probe" / "guess.txt")
        py("import os, sys; os.getxattr(sys.argv[1], 'user.vexfs.knn.1')", m / "probe" / "ask.query")
        assert sent(secret) == 2 and sent(question) == 2

        # Her own again, after a remount: from her cache rows.
        m.unmount()
        m.mount()
        py("import os, sys; open(sys.argv[1] + '/again.txt', 'w').write(sys.argv[2])", m / "probe", secret)
        indexed(m / "probe" / "again.txt")
        py("import os, sys; os.getxattr(sys.argv[1], 'user.vexfs.knn.1')", m / "probe" / "ask.query")
        assert sent(secret) == 2 and sent(question) == 2
        assert os.getxattr(m / "probe", "user.vexfs.count") == b"2"
        m.unmount()
    finally:
        endpoint.stop()
