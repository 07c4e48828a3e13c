#!/usr/bin/env bash
# Set up everything the test suite needs, then run it. Extra arguments go to pytest.
#   1. .venv with roomwire[test,webrtc] (extras already there are kept; a broken venv is repaired)
#   2. services: Redis, PostgreSQL (started when not running), coturn and espeak-ng (apt-get)
#   3. .venv-official: the official metered-realtime Python SDK, for tests/interop
#   4. Debian's chromium and web/node_modules (official JS SDK, playwright-core), for tests/browser
# Every step is a quick no-op once done, so a second run goes straight to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOMWIRE_EXTRAS=${ROOMWIRE_EXTRAS:-test,webrtc} scripts/bootstrap.sh
scripts/setup-services.sh
scripts/setup-official-sdk.sh
scripts/setup-browser.sh
echo "test: running pytest $*"
exec .venv/bin/python -m pytest "$@"
