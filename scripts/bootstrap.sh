#!/usr/bin/env bash
# Create (or repair) the project virtualenv at .venv with roomwire installed in editable mode
# and the extras named by ROOMWIRE_EXTRAS (comma-separated; default: test,webrtc).
#
# Extras accumulate: a venv made by scripts/serve.sh (webrtc) that scripts/test.sh later asks
# for test,webrtc gets the missing ones added, and nothing is ever taken away. The stamp only
# saves time when it matches pyproject.toml AND a check of the venv itself (every requirement
# of every wanted extra is an installed distribution) passes, so a venv that lost a package
# is repaired rather than taken as complete. A second run with nothing missing installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    echo "roomwire needs Python 3.11 or newer; $PY is $("$PY" --version 2>&1)" >&2
    exit 1
fi
if ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    echo "bootstrap: $PY cannot create virtualenvs (Debian/Ubuntu: apt-get install python3-venv)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    echo "bootstrap: creating .venv"
    "$PY" -m venv .venv
fi

stamp=.venv/.roomwire-installed
hash=$(sha256sum pyproject.toml | cut -d' ' -f1)
wanted=${ROOMWIRE_EXTRAS:-test,webrtc}
# The stamp: line 1 the hash of the pyproject.toml installed, line 2 the extras installed.
had_hash=""
had=""
if [ -f "$stamp" ]; then
    had_hash=$(sed -n 1p "$stamp")
    had=$(sed -n 2p "$stamp")
fi
# The union of what was installed before and what is asked for now, sorted, no duplicates.
extras=$(printf '%s\n' "${had//,/$'\n'}" "${wanted//,/$'\n'}" | sed '/^$/d' | sort -u | paste -sd, -)

# Prints the requirements of the wanted extras that are not installed (nothing when complete).
missing() {
    .venv/bin/python - "$extras" <<'EOF'
import re
import sys
from importlib import metadata

wanted = {e for e in sys.argv[1].split(",") if e}
try:
    dist = metadata.distribution("roomwire")
except metadata.PackageNotFoundError:
    print("roomwire")
    raise SystemExit
for req in dist.requires or []:
    name, _, marker = req.partition(";")
    extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
    if marker and (extra is None or extra.group(1) not in wanted):
        continue
    dist_name = re.match(r"[A-Za-z0-9._-]+", name.strip()).group(0)
    try:
        metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        print(dist_name)
EOF
}

if [ "$had_hash" = "$hash" ] && [ "$had" = "$extras" ] && [ -z "$(missing)" ]; then
    echo "bootstrap: .venv is up to date (roomwire[$extras])"
    exit 0
fi
echo "bootstrap: installing roomwire[$extras] into .venv (editable)"
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e ".[$extras]"
left=$(missing)
if [ -n "$left" ]; then
    echo "bootstrap: still missing after pip install: $left" >&2
    exit 1
fi
printf '%s\n%s\n' "$hash" "$extras" > "$stamp"
echo "bootstrap: .venv ready (roomwire[$extras])"
