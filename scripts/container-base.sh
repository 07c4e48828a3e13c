#!/usr/bin/env bash
# Build a base image for the Containerfile from Debian's packages alone (no registry needed):
# Debian bookworm, minbase, python3 + python3-venv + ca-certificates, imported into podman as
# localhost/roomwire-base:bookworm. Needs mmdebstrap and podman (apt-get installs them).
#   scripts/container-base.sh && podman build --build-arg BASE=localhost/roomwire-base:bookworm -t roomwire .
set -euo pipefail
IMAGE=${1:-localhost/roomwire-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if podman image exists "$IMAGE"; then
    echo "container-base: $IMAGE exists"
    exit 0
fi
tar=$(mktemp --suffix=.tar)
trap 'rm -f "$tar"' EXIT
mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$tar" "$MIRROR"
podman import --quiet "$tar" "$IMAGE" >/dev/null
echo "container-base: built $IMAGE"
