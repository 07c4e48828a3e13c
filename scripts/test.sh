#!/usr/bin/env bash
# Set up everything the test suite needs, then run it. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
scripts/setup-services.sh
if [ -x scripts/setup-official-sdk.sh ]; then
    scripts/setup-official-sdk.sh
fi
if [ -x scripts/setup-browser.sh ]; then
    scripts/setup-browser.sh
fi
exec .venv/bin/python -m pytest "$@"
