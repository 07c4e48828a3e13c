#!/usr/bin/env bash
# Set up and run a roomwire server with its embedded defaults (SQLite in ./roomwire-data).
# Extra arguments go to `roomwire serve`, e.g. scripts/serve.sh --port 9000 --host 0.0.0.0
set -euo pipefail
cd "$(dirname "$0")/.."
ROOMWIRE_EXTRAS=${ROOMWIRE_EXTRAS:-client} scripts/bootstrap.sh
exec .venv/bin/roomwire serve "$@"
