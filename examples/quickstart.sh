#!/usr/bin/env bash
# vexfs in a minute, with ordinary tools only. Usage: examples/quickstart.sh [path/to/vexfs]
set -euo pipefail
vexfs="$(realpath "${1:-$(dirname "$0")/../.build/release/vexfs}")"
work="$(mktemp -d)"
mkdir "$work/store" "$work/mnt"
trap 'mountpoint -q "$work/mnt" && "$vexfs" unmount "$work/mnt"; rm -rf "$work"' EXIT

"$vexfs" mount "$work/store" "$work/mnt"
mkdir "$work/mnt/notes"
cd "$work/mnt/notes"
echo "1 0 0 0" > north.vec
echo "0 1 0 0" > east.vec
echo "0.9 0.1 0 0" > north-ish.vec
setfattr -n user.vexfs.metric -v cosine .          # settable per collection; re-indexes
echo "1 0.05 0 0" > where.query                    # ad-hoc query, never indexed
getfattr --only-values -n user.vexfs.knn.2 where.query
getfattr --only-values -n user.vexfs.knn north.vec # its neighbours, itself left out
getfattr --only-values -n user.vexfs.count . ; echo
cd /
"$vexfs" unmount "$work/mnt"
