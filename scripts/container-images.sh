#!/usr/bin/env bash
# Build every image deploy/compose/compose.yml needs without a registry: the Debian base
# (scripts/container-base.sh), roomwire from the Containerfile, and stand-ins of Redis,
# PostgreSQL and coturn from Debian's packages (deploy/compose/local/Containerfile). Prints the
# variables that point compose.yml at them: eval "$(scripts/container-images.sh)".
# Extra podman build flags come from PODMAN_BUILD_FLAGS.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=localhost/roomwire-base:bookworm
scripts/container-base.sh "$BASE" >&2
flags=(--network host --format docker --build-arg "BASE=$BASE")
# pip inside the build trusts what pip on this host trusts (a TLS-intercepting proxy's CA).
cert=${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}
if [ -n "$cert" ] && [ -f "$cert" ]; then
    flags+=(-v "$cert:/etc/pip-ca.crt:ro" --build-arg PIP_CERT=/etc/pip-ca.crt)
fi
# shellcheck disable=SC2206  # word splitting of the extra flags is intended
flags+=(${PODMAN_BUILD_FLAGS:-})
for target in redis postgres coturn; do
    podman build "${flags[@]}" --quiet --target "$target" -t "localhost/roomwire-$target:local" \
        -f deploy/compose/local/Containerfile deploy/compose/local >/dev/null
    echo "container-images: localhost/roomwire-$target:local" >&2
done
podman build "${flags[@]}" --quiet -t localhost/roomwire:latest -f Containerfile . >/dev/null
echo "container-images: localhost/roomwire:latest" >&2
echo "export ROOMWIRE_IMAGE=localhost/roomwire:latest REDIS_IMAGE=localhost/roomwire-redis:local POSTGRES_IMAGE=localhost/roomwire-postgres:local COTURN_IMAGE=localhost/roomwire-coturn:local"
