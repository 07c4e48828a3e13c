#!/usr/bin/env bash
# Set up and run a roomwire server with its embedded defaults (SQLite in ./roomwire-data).
# Extra arguments go to `roomwire serve`, e.g. scripts/serve.sh --port 9000 --host 0.0.0.0
#
# Setup: .venv with roomwire[webrtc] (the server, and the Python SDK with WebRTC so that the
# README's `roomwire join` example works as written; extras already in .venv are kept), and,
# when npm is available, the official JS SDK for the /demo page (web/node_modules). Both steps
# are quick no-ops once done.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOMWIRE_EXTRAS=${ROOMWIRE_EXTRAS:-webrtc} scripts/bootstrap.sh
if command -v npm >/dev/null 2>&1; then
    ROOMWIRE_SKIP_CHROMIUM=1 scripts/setup-browser.sh \
        || echo "serve: the /demo page's JS SDK could not be installed (the page says what to run)" >&2
else
    echo "serve: npm not found; /demo will say how to get the official JS SDK" >&2
fi
echo "serve: starting roomwire serve $*"
exec .venv/bin/roomwire serve "$@"
