"""Metadata run, one phase at a time: `create` makes N small files (100 bytes each) in ROOT/meta,
`stat` stats them, `unlink` removes them. Prints {"PHASE": ops per second} as JSON, or
{"PHASE": null, "error": "..."} when the filesystem fails part-way (e.g. out of descriptors)."""
import json
import os
import sys
import time

root, n, phase = sys.argv[1], int(sys.argv[2]), sys.argv[3]
d = os.path.join(root, "meta")
names = [os.path.join(d, f"f{i:06d}") for i in range(n)]
payload = b"x" * 100


def run():
    if phase == "create":
        os.makedirs(d, exist_ok=True)
        for p in names:
            fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
            os.write(fd, payload)
            os.close(fd)
    elif phase == "stat":
        for p in names:
            os.stat(p)
    elif phase == "unlink":
        for p in names:
            os.unlink(p)
        os.rmdir(d)
    else:
        sys.exit(f"unknown phase {phase}")


t = time.perf_counter()
try:
    run()
except OSError as e:
    print(json.dumps({phase: None, "error": f"{e.strerror} after {time.perf_counter() - t:.1f}s"}))
else:
    print(json.dumps({phase: n / (time.perf_counter() - t)}))
