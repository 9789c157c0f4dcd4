#!/bin/sh
# The CPU-only container stack (deploy/cpu/compose.yaml) with podman:
#   sh deploy/podman/stack.sh build   # the local base, then the gpupack, Triton and monitoring images
#   sh deploy/podman/stack.sh up      # bring the stack up, detached (builds first)
#   sh deploy/podman/stack.sh down    # stop it and remove its containers and volumes
# `make containers` is `build up`. Podman runs with deploy/podman/containers.conf (CONTAINERS_CONF)
# and compose is podman-compose from the virtual environment ($COMPOSE): Debian's 1.0.3 ignores
# `pid: host`, and the exporter would then see none of Triton's processes.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
export CONTAINERS_CONF="${CONTAINERS_CONF:-$root/deploy/podman/containers.conf}"
BASE_IMAGE="${BASE_IMAGE:-localhost/gpupack-base:bookworm}"
COMPOSE="${COMPOSE:-$root/.venv/bin/podman-compose}"
compose() { "$COMPOSE" --project-name gpupack-cpu -f "$root/deploy/cpu/compose.yaml" "$@"; }

build() {
    BASE_IMAGE="$BASE_IMAGE" sh "$root/deploy/podman/build-base.sh"
    # Host network while building: no CNI set-up is needed and the package mirrors are reachable.
    for image in gpupack:Containerfile gpupack-triton:triton.Containerfile gpupack-monitoring:monitoring.Containerfile; do
        echo "stack: building localhost/${image%%:*}:latest"
        podman build --quiet --network host --build-arg "BASE=$BASE_IMAGE" -f "$root/deploy/${image#*:}" \
            -t "localhost/${image%%:*}:latest" "$root" >/dev/null
    done
}

[ $# -gt 0 ] || { sed -n '2,5p' "$0"; exit 2; }
for step in "$@"; do
    case "$step" in
        build) build ;;
        up) compose up -d ;;
        down) compose down --volumes ;;
        *) echo "stack.sh: unknown step '$step' (build, up, down)" >&2; exit 2 ;;
    esac
done
