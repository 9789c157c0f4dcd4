#!/bin/sh
# Creates the virtual environment the Makefile targets use, installing Debian packages first when
# they are missing: promtool/prometheus/alertmanager (tests check exposition and rules with them),
# haproxy (the router gpupack drives through its runtime API), libpython for the Triton
# Python-backend stub, which embeds this Python's minor version;
# podman, runc and mmdebstrap for the container suite (deploy/podman/: the base image is built from
# Debian's packages, runc because crun fails on cgroups in hybrid mode).
set -eu
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"

py_version=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
missing=""
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
command -v prometheus-alertmanager >/dev/null 2>&1 || missing="$missing prometheus-alertmanager"
command -v podman >/dev/null 2>&1 || missing="$missing podman"
command -v curl >/dev/null 2>&1 || missing="$missing curl"
command -v runc >/dev/null 2>&1 || missing="$missing runc"
command -v haproxy >/dev/null 2>&1 || missing="$missing haproxy"
command -v mmdebstrap >/dev/null 2>&1 || missing="$missing mmdebstrap"
ldconfig -p 2>/dev/null | grep -q "libpython${py_version}\.so\.1" || missing="$missing libpython${py_version}"
"$PYTHON" -m venv --help >/dev/null 2>&1 && "$PYTHON" -c 'import ensurepip' 2>/dev/null || missing="$missing python${py_version}-venv"

if [ -n "$missing" ]; then
    echo "bootstrap: installing Debian packages:$missing"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # shellcheck disable=SC2086
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "bootstrap: creating $VENV with $PYTHON ($py_version)"
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
echo "bootstrap: installing gpupack and its dependencies into $VENV"
"$VENV/bin/python" -m pip install -q -e '.[server,test]'
