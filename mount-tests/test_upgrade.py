"""A store written by an earlier vexfs mounts with this one without reading its files again, answers
as it did, and a store from a newer vexfs is refused. The fixture (scripts/make-upgrade-fixture) is
an ext4 image: the catalogs record inode numbers and ctimes, which only an image keeps."""
import gzip
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import VEXFS, is_mounted
from fixtures.write_store import answers

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def old_store(tmp_path):
    image, disk = tmp_path / "store.img", tmp_path / "disk"
    with gzip.open(FIXTURES / "store-format1.ext4.gz") as src, open(image, "wb") as dst:
        shutil.copyfileobj(src, dst)
    disk.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(disk)], check=True)
    try:
        yield disk / "store"
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_format_1_store_mounts_without_a_rebuild_and_answers_as_before(old_store, make_mount):
    expected = json.loads((FIXTURES / "store-format1.json").read_text())
    assert not (old_store / ".vexfs" / "format").exists()
    check = subprocess.run([VEXFS, "check", str(old_store)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    m = make_mount(store=old_store)
    for _ in range(2):  # the first mount adopts it, the second reads it as its own
        m.mount()
        for d in expected:
            assert os.getxattr(m / d, "user.vexfs.status").decode().endswith("at mount: snapshot loaded"), d
        assert answers(str(m.root)) == expected
        m.unmount()
        assert (old_store / ".vexfs" / "format").read_text() == "1\n"


def test_a_store_from_a_newer_vexfs_is_refused(make_mount):
    m = make_mount()
    m.mount()
    (m.root / "c").mkdir()
    (m.root / "c" / "a.vec").write_text("1 2 3\n")
    m.unmount()
    (m.store / ".vexfs" / "format").write_text("2\n")
    result = subprocess.run([VEXFS, "mount", str(m.store), str(m.root)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and not is_mounted(m.root)
    assert "newer vexfs" in result.stderr and "store format 2" in result.stderr
    check = subprocess.run([VEXFS, "check", str(m.store)], capture_output=True, text=True)
    assert check.returncode == 2 and "newer vexfs" in check.stdout
    assert (m.store / "c" / "a.vec").read_text() == "1 2 3\n"
