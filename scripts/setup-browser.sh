#!/usr/bin/env bash
# Set up what the browser tests (tests/browser) and the demo page (/demo) need:
#   - Debian's chromium at /usr/bin/chromium (apt-get; `apt-get update` only when it is missing),
#   - web/node_modules from web/package-lock.json (`npm ci`): the official JS SDK
#     @metered-ca/realtime and playwright-core. Playwright never downloads a browser here.
# Idempotent and quick once done: a stamp in web/node_modules records the lockfile's hash.
# ROOMWIRE_SKIP_CHROMIUM=1 skips the apt part (e.g. a machine without root: the demo page
# needs only the npm part; the browser tests then skip).
set -euo pipefail
cd "$(dirname "$0")/.."

export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1

if [ "${ROOMWIRE_SKIP_CHROMIUM:-0}" != 1 ] && [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo); fi
    echo "setup-browser: installing Debian's chromium (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq chromium >/dev/null
fi

if ! command -v npm >/dev/null 2>&1; then
    echo "setup-browser: npm not found; install Node.js 18+ (Debian: apt-get install -y nodejs npm)" >&2
    exit 1
fi

stamp=web/node_modules/.roomwire-lock
want=$(sha256sum web/package-lock.json | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    (cd web && npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" > "$stamp"
    echo "setup-browser: web/node_modules installed from web/package-lock.json"
fi
