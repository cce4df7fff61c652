#!/usr/bin/env python3
"""Runs the fio jobs and the metadata run on four targets side by side, in one run:
the native backing directory, vexfs (default options: FUSE passthrough on), vexfs -o no_passthrough
(every read and write through the daemon), and libfuse's own passthrough_ll example (compiled here
from the source Debian's libfuse3-dev ships). Prints medians over the repetitions and the ratios of
each vexfs to native and to passthrough_ll.

    python3 benchmarks/fio/run.py [--reps 3] [--runtime 5] [--size 512M] [--files 20000]

Every daemon runs with the same descriptor limit: vexfs raises its own to the system's ceiling
(fs.nr_open), and passthrough_ll, which does not, is started under prlimit with that ceiling.

All three targets live on one fresh ext4 image (with a journal), loop-mounted for the run, so that
the disk's history cannot favour one of them: on an ext4 without a journal, every create scans past
the inodes freed in the last 60 seconds, which punishes whichever target runs after another's
unlinks. --workdir DIR uses an existing directory instead.
"""
import argparse
import json
import re
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
EXAMPLE = Path("/usr/share/doc/libfuse3-dev/examples/passthrough_ll.c")
JOBS = ["seq-read", "seq-write", "rand-read", "rand-write"]
UNITS = {"seq-read": "MiB/s", "seq-write": "MiB/s", "rand-read": "MiB/s", "rand-write": "MiB/s"}


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def is_mounted(path):
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def wait_mounted(path):
    for _ in range(400):
        if is_mounted(path):
            return
        time.sleep(0.025)
    raise RuntimeError(f"{path} did not mount")


def build_vexfs():
    sh("swift", "build", "-c", "release", cwd=REPO, stdout=subprocess.DEVNULL)
    return REPO / ".build" / "release" / "vexfs"


def descriptor_ceiling():
    """What vexfs raises its own limit to: fs.nr_open where the process may raise its hard limit,
    else the hard limit (vexfs's raiseDescriptorLimit does the same)."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
    wanted = nr_open if hard == resource.RLIM_INFINITY else max(hard, nr_open)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
    except (ValueError, OSError):
        wanted = hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return wanted


def build_passthrough_ll(work):
    pll = work / "passthrough_ll"
    cflags = subprocess.run(["pkg-config", "fuse3", "--cflags", "--libs"], check=True,
                            capture_output=True, text=True).stdout.split()
    sh("gcc", "-O2", "-o", str(pll), str(EXAMPLE), "-I", str(EXAMPLE.parent), *cflags)
    return pll


def fio(job, target, numjobs, size, runtime):
    env = dict(os.environ, TARGET=str(target), NUMJOBS=str(numjobs), SIZE=size, RUNTIME=str(runtime))
    run = subprocess.run(["fio", "--output-format=json", str(HERE / f"{job}.fio")], env=env,
                         capture_output=True, text=True)
    if run.returncode != 0:
        return f"fio failed: {run.stderr.strip().splitlines()[-1] if run.stderr.strip() else run.returncode}"
    out = run.stdout
    j = json.loads(out[out.index("{"):])["jobs"][0]
    side = j["read"] if "read" in job else j["write"]
    return side["bw_bytes"] / (1 << 20)


def metadata(target, files, phase):
    """ops/s, or the error text when the target failed part-way."""
    out = json.loads(subprocess.run([sys.executable, str(HERE / "metadata.py"), str(target), str(files), phase],
                                    check=True, capture_output=True, text=True).stdout)
    return out[phase] if out[phase] is not None else out["error"]


def size_bytes(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


def make_disk(size):
    """A fresh journaled ext4 image, loop-mounted; returns (mountpoint, image)."""
    image = Path(tempfile.mkstemp(prefix="vexfs-fio.", suffix=".img", dir="/var/tmp")[1])
    sh("truncate", "-s", size, str(image))
    sh("mkfs.ext4", "-q", "-F", str(image))
    mnt = Path(tempfile.mkdtemp(prefix="vexfs-fio-disk.", dir="/var/tmp"))
    sh("mount", "-o", "loop", str(image), str(mnt))
    return mnt, image


def main():
    # Ctrl-C and kill both leave through the finally below, which unmounts and removes the disk.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--runtime", type=int, default=5)
    ap.add_argument("--size", default="512M")
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--workdir", default=None, help="a directory on the disk to test (default: under /var/tmp)")
    ap.add_argument("--also", action="append", default=[], metavar="OPTIONS",
                    help="one more vexfs mount with these -o options (e.g. writeback), as one more column; "
                         "may be given more than once")
    args = ap.parse_args()

    vexfs = build_vexfs()
    disk = None
    if args.workdir:
        work = Path(tempfile.mkdtemp(prefix="vexfs-fio.", dir=args.workdir))
    else:
        # Four jobs, two files each, on three targets, plus room for the metadata run.
        disk = make_disk(str((4 + len(args.also)) * 8 * size_bytes(args.size) + (4 << 30)))
        work = disk[0] / "work"
        work.mkdir()
    native = work / "native"
    vstore, vmnt = work / "vexfs-store", work / "vexfs-mnt"
    nstore, nmnt = work / "nopt-store", work / "nopt-mnt"
    psrc, pmnt = work / "pll-src", work / "pll-mnt"
    also = {f"vexfs -o {o}": (o, work / f"also{i}-store", work / f"also{i}-mnt") for i, o in enumerate(args.also)}
    for d in (native, vstore, vmnt, nstore, nmnt, psrc, pmnt, *(p for _, s, m in also.values() for p in (s, m))):
        d.mkdir()
    nopt = "vexfs -o no_passthrough"
    targets = {"native": native, "vexfs": vmnt, nopt: nmnt, "passthrough_ll": pmnt}
    targets.update({name: amnt for name, (_, _, amnt) in also.items()})
    ceiling = descriptor_ceiling()
    try:
        pll = build_passthrough_ll(work)
        sh(str(vexfs), "mount", str(vstore), str(vmnt))
        sh(str(vexfs), "mount", str(nstore), str(nmnt), "-o", "no_passthrough")
        for options, astore, amnt in also.values():
            sh(str(vexfs), "mount", str(astore), str(amnt), "-o", options)
        # Its own defaults, as shipped, with the descriptor limit vexfs gives itself.
        sh("prlimit", f"--nofile={ceiling}:{ceiling}", str(pll), "-o", f"source={psrc}", str(pmnt))
        wait_mounted(pmnt)

        results = {}  # (row, target) -> [values, or the error text of a failed run]
        for rep in range(args.reps):
            # Lay out (first time) and warm the read files, unmeasured, on every target.
            for job in ("seq-read", "rand-read"):
                for name, t in targets.items():
                    fio(job, t, 2, args.size, 1)
            for job in JOBS:
                for numjobs in (1, 2):
                    for name, t in targets.items():
                        v = fio(job, t, numjobs, args.size, args.runtime)
                        results.setdefault((f"{job} x{numjobs}", name), []).append(v)
            # Each phase on every target before the next phase, so no target creates right after
            # another's unlinks (matters with --workdir on an ext4 without a journal).
            failed = set()
            for phase in ("create", "stat", "unlink"):
                for name, t in targets.items():
                    v = "skipped: an earlier phase failed" if name in failed else metadata(t, args.files, phase)
                    if isinstance(v, str):
                        failed.add(name)
                    results.setdefault((f"{phase} ({args.files} files)", name), []).append(v)
            # The kernel forgets the 20,000 inodes, so every daemon releases what it held for them.
            subprocess.run(["sync"])
            Path("/proc/sys/vm/drop_caches").write_text("2\n")
            print(f"rep {rep + 1}/{args.reps} done", file=sys.stderr)
        stats = (vmnt / ".vexfs" / "stats").read_text()
    finally:
        for m in (vmnt, nmnt, pmnt, *(amnt for _, _, amnt in also.values())):
            if is_mounted(m):
                subprocess.run(["fusermount3", "-u", str(m)])
        time.sleep(0.5)
        shutil.rmtree(work, ignore_errors=True)
        if disk:
            if subprocess.run(["umount", str(disk[0])]).returncode != 0:
                subprocess.run(["umount", "-l", str(disk[0])])  # a killed run may leave fio behind
            disk[0].rmdir()
            disk[1].unlink()

    rows = list(dict.fromkeys(r for r, _ in results))
    print(f"fio {args.size} per job, {args.runtime}s per run, median of {args.reps}; "
          f"throughput in MiB/s (fio) and ops/s (metadata); every daemon with nofile={ceiling}\n")
    ours = [t for t in targets if t.startswith("vexfs")]
    ratios = [(a, b) for b in ("native", "passthrough_ll") for a in ours]
    print("| workload | " + " | ".join(targets) + " | " + " | ".join(f"{a} / {b}" for a, b in ratios) + " |")
    print("|---|" + "---:|" * (len(targets) + len(ratios)))
    notes = []
    for r in rows:
        med = {}
        for t in targets:
            values = results[(r, t)]
            errors = [v for v in values if isinstance(v, str)]
            if errors:
                med[t] = None
                notes.append(f"{t}, {r}: failed in {len(errors)} of {len(values)} runs ({errors[0]})")
            else:
                med[t] = statistics.median(values)
        cell = lambda t: "failed" if med[t] is None else f"{med[t]:.0f}"
        ratio = lambda a, b: "—" if med[a] is None or med[b] is None else f"{med[a] / med[b]:.2f}"
        print(f"| {r} | " + " | ".join(cell(t) for t in targets) + " | "
              + " | ".join(ratio(a, b) for a, b in ratios) + " |")
    for n in notes:
        print(f"\n- {n}", end="")
    print()
    passthrough = re.search(r'^vexfs_fuse_passthrough\{reason="([^"]*)"\} (\S+)', stats, re.M)
    print(f"\nvexfs (default options): passthrough {passthrough.group(1) if passthrough else 'not reported'}")
    # What the stack-budget monitor saw on vexfs's worker threads over the whole run.
    marks = sorted(((int(float(v)), h) for h, v in re.findall(r'vexfs_stack_high_water_bytes\{handler="(\w+)"\} (\S+)', stats)
                    if float(v) > 0), reverse=True)
    budget = re.search(r"^vexfs_stack_budget_bytes (\S+)", stats, re.M).group(1)
    excess = re.search(r"^vexfs_stack_budget_exceeded_total (\S+)", stats, re.M).group(1)
    print(f"\nvexfs stack high-water marks over this run (budget {budget} bytes, runs over budget: {excess}):")
    print(", ".join(f"{h} {b}" for b, h in marks))


if __name__ == "__main__":
    main()
