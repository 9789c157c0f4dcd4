#!/bin/sh
# Writes the wheel folder that travels to the GPU machine with the working tree: the cp312
# manylinux wheels of scripts/gpu-bundle.txt and gpupack's own. The device tool carries at most
# 64 MiB with the tree, so the folder must stay under 60 MiB: checked here, not discovered there.
set -eu
PYTHON="${PYTHON:-python3}"
WHEELS="${WHEELS:-.whl}"
LIMIT_BYTES=$((60 * 1024 * 1024))

rm -rf "$WHEELS"
mkdir -p "$WHEELS"
# What the GPU machine's pip accepts (pip matches each manylinux glibc version exactly); the dry
# run installs the folder as for that machine with the same list.
platforms=""
for tag in manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 \
           manylinux_2_17 manylinux2014 manylinux_2_5 manylinux1; do
    platforms="$platforms --platform ${tag}_x86_64"
done
target="--only-binary=:all: --python-version 3.12 --implementation cp$platforms"
# shellcheck disable=SC2086
"$PYTHON" -m pip download -q --no-deps $target -d "$WHEELS" -r scripts/gpu-bundle.txt
rm -rf build  # setuptools' build/lib keeps modules deleted since: they would travel in the wheel
"$PYTHON" -m pip wheel -q --no-deps -w "$WHEELS" . 2>"$WHEELS/gpupack-build.log" || {
    cat "$WHEELS/gpupack-build.log" >&2
    exit 1
}
rm "$WHEELS/gpupack-build.log"
echo "$target" >"$WHEELS/pip-target.txt"

total=$(cat "$WHEELS"/*.whl | wc -c)
count=$(ls "$WHEELS"/*.whl | wc -l)
mib=$(awk "BEGIN { printf \"%.1f\", $total / 1048576 }")
if [ "$total" -gt "$LIMIT_BYTES" ]; then
    echo "gpu-bundle: $WHEELS holds $mib MiB in $count wheels, over the 60 MiB limit" >&2
    exit 1
fi
echo "gpu-bundle: $WHEELS holds $mib MiB in $count wheels (limit 60 MiB)"
