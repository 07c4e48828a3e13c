#!/usr/bin/env bash
# What tests/container needs (the compose set of deploy/compose run with podman): podman,
# mmdebstrap (a base image from Debian's packages: no registry is reachable here), runc, the CNI
# dnsname plugin (service names resolve inside the compose network), podman-compose (PyPI,
# into .venv). Then it probes a container run and, where the sandbox forbids what podman's
# defaults do (raising RLIMIT_NOFILE/NPROC; crun on hybrid cgroups), writes build/containers.conf
# with the settings that work; tests/container points CONTAINERS_CONF at it. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
have() { command -v "$1" >/dev/null 2>&1; }
need=()
have podman || need+=(podman)
have mmdebstrap || need+=(mmdebstrap)
have runc || need+=(runc)
[ -x /usr/lib/cni/dnsname ] || need+=(golang-github-containernetworking-plugin-dnsname)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
[ -x .venv/bin/podman-compose ] || .venv/bin/python -m pip install -q 'podman-compose>=1.0,<2'

mkdir -p build
conf=build/containers.conf
rm -f "$conf"
scripts/container-base.sh >&2
if ! podman run --rm localhost/roomwire-base:bookworm true >/dev/null 2>&1; then
    printf '[containers]\ndefault_ulimits = []\n[engine]\nruntime = "runc"\n' > "$conf"
    CONTAINERS_CONF=$conf podman run --rm localhost/roomwire-base:bookworm true \
        || { echo "setup-containers: podman cannot run a container here" >&2; exit 1; }
    echo "setup-containers: using $conf (no rlimit defaults, runc)"
fi
echo "setup-containers: ready"
