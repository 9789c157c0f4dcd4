#!/bin/bash
# The GPU check: one command on the GPU machine, run from the repository root with the wheel folder
# (make gpu-bundle) carried along. Installs the wheels into a temporary folder, then checks gpupack's
# per-model figures against a real tritonserver on the GPU (gpupack/testing/gpu_check.py): prints
# one table, writes $OUT/gpu-check.json when OUT is set, exits 1 when a check fails.
#
#   bash scripts/gpu-check.sh          # on the GPU machine (Python 3.12, its torch, cupy, NVML)
#   bash scripts/gpu-check.sh --dry    # here: the bundle installs, the non-GPU steps run (make gpu-check-dry)
set -euo pipefail
PYTHON="${PYTHON:-python3}"
WHEELS="${WHEELS:-.whl}"
dry=""
[ "${1:-}" = "--dry" ] && dry="--dry"

if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "gpu-check: no wheels in $WHEELS: run 'make gpu-bundle' first and carry $WHEELS" >&2
    exit 2
fi
WHEELS=$(cd "$WHEELS" && pwd)
case "$PYTHON" in /*) ;; */*) PYTHON="$PWD/$PYTHON" ;; esac  # it runs from another folder below
site=$(mktemp -d /tmp/gpu-check-site-XXXXXX)
rundir=$(mktemp -d /tmp/gpu-check-run-XXXXXX)
trap 'rm -rf "$site" "$rundir"' EXIT
install=("$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site")
if [ -n "$dry" ]; then
    # The wheels are the GPU machine's (cp312): install them as for it, to prove the folder installs;
    # the checks then run on this interpreter's own packages, with what that machine lacks hidden.
    # shellcheck disable=SC2046 # the options gpu-bundle.sh chose the wheels with, one word each
    "${install[@]}" $(cat "$WHEELS/pip-target.txt") "$WHEELS"/*.whl
else
    "${install[@]}" "$WHEELS"/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
# Not from the repository root: there `python -m` would import the source tree's gpupack/, whose
# exporter/, profiler/ ... live beside it, not in it, instead of the installed package.
cd "$rundir"
status=0
"$PYTHON" -m gpupack.testing.gpu_check $dry --site "$site" || status=$?
exit $status
