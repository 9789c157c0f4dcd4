#!/bin/sh
# Builds the local base image (default localhost/gpupack-base:bookworm) from Debian's packages:
# mmdebstrap writes a minimal bookworm root filesystem with Python 3.11 and `podman import` turns
# it into an image. It stands in for python:3.11-slim where no container registry is reachable;
# the Containerfiles take either through their BASE build argument. Does nothing if it exists.
# The certificate authorities this host adds (/usr/local/share/ca-certificates, Debian's place for
# them: a TLS-inspecting proxy's, say) are trusted inside too, so that pip in the builds reaches PyPI
# as the host does; they stay in the local image, never in the repository.
set -eu
BASE_IMAGE="${BASE_IMAGE:-localhost/gpupack-base:bookworm}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
here=$(cd "$(dirname "$0")" && pwd)
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"

if podman image exists "$BASE_IMAGE"; then
    echo "build-base: $BASE_IMAGE exists"
    exit 0
fi
rootfs=$(mktemp --suffix=.tar)
trap 'rm -f "$rootfs"' EXIT
echo "build-base: debootstrapping bookworm with python3.11 into $rootfs"
# python3-venv: the images install gpupack into a venv (Debian's system Python refuses pip);
# libpython3.11: Triton's Python-backend stub embeds it.
mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,libpython3.11,ca-certificates \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='for crt in /usr/local/share/ca-certificates/*.crt; do [ -f "$crt" ] && cp "$crt" "$1/usr/local/share/ca-certificates/"; done; chroot "$1" update-ca-certificates >/dev/null 2>&1' \
    bookworm "$rootfs" "$MIRROR"
podman import --quiet --change 'CMD ["/bin/bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$rootfs" "$BASE_IMAGE" >/dev/null
echo "build-base: imported $BASE_IMAGE ($(podman image inspect --format '{{.Size}}' "$BASE_IMAGE") bytes)"
