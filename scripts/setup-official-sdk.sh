#!/usr/bin/env bash
# Create (or check) the separate virtualenv holding the official Metered client SDK,
# `metered-realtime`, which tests/interop drives as a black-box client against our server.
#
# It lives apart from .venv because its pins (websockets>=13,<16) clash with ours.
# Location: $ROOMWIRE_OFFICIAL_VENV (relative paths are taken from the repo root),
# default .venv-official. The webrtc extra (aiortc + av) is tried as well, for the official
# MeteredPeer; if it cannot be installed the pub/sub-only package is kept and the script
# still succeeds (set ROOMWIRE_OFFICIAL_WEBRTC=0 to skip the attempt).
# Under CI=true a missing extra is an error instead: the official MeteredPeer interop tests
# would skip, and CI fails on skips (tests/conftest.py). There the install is tried up to
# $ROOMWIRE_OFFICIAL_ATTEMPTS times (default 3, a pause between tries: a flaky mirror), and
# a "webrtc-failed" stamp left by an earlier non-CI run is not trusted but retried.
# Idempotent: once installed, a second run only reads a stamp file.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=1.0.2
VENV=${ROOMWIRE_OFFICIAL_VENV:-.venv-official}
WANT_WEBRTC=${ROOMWIRE_OFFICIAL_WEBRTC:-1}
PY=${PYTHON:-python3}
IN_CI=0
[ "${CI:-}" = true ] && IN_CI=1
ATTEMPTS=${ROOMWIRE_OFFICIAL_ATTEMPTS:-3}
[ "$IN_CI" = 1 ] || ATTEMPTS=1
stamp="$VENV/.roomwire-official"

if [ -f "$stamp" ] && [ -x "$VENV/bin/python" ]; then
    # Stamps: "webrtc" (extra installed), "webrtc-failed" (tried, retried only under CI),
    # "pubsub" (extra not wanted: enough only while ROOMWIRE_OFFICIAL_WEBRTC=0).
    case "$(cat "$stamp")" in
        "$VERSION webrtc") exit 0 ;;
        "$VERSION webrtc-failed") [ "$IN_CI" = 0 ] && exit 0 ;;
        "$VERSION pubsub") [ "$WANT_WEBRTC" = 0 ] && exit 0 ;;
    esac
fi

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip --quiet --disable-pip-version-check)

install_webrtc() {
    "${pip[@]}" install "metered-realtime[webrtc]==$VERSION" \
        && "$VENV/bin/python" -c 'import aiortc, av, metered_realtime; metered_realtime.MeteredPeer'
}

flavour=pubsub
if [ "$WANT_WEBRTC" != 0 ]; then
    flavour=webrtc-failed
    for try in $(seq 1 "$ATTEMPTS"); do
        if install_webrtc; then
            flavour=webrtc
            break
        fi
        echo "setup-official-sdk: the [webrtc] extra did not install (try $try of $ATTEMPTS)" >&2
        if [ "$try" -lt "$ATTEMPTS" ]; then sleep $((try * 10)); fi
    done
    if [ "$flavour" = webrtc-failed ] && [ "$IN_CI" = 1 ]; then
        echo "setup-official-sdk: CI=true and metered-realtime[webrtc] $VERSION will not" \
             "install, so the official MeteredPeer interop cannot run; see the pip output" \
             "above." >&2
        exit 1
    fi
    if [ "$flavour" = webrtc-failed ]; then
        echo "setup-official-sdk: keeping pub/sub only (retried only under CI=true)" >&2
    fi
fi
if [ "$flavour" != webrtc ]; then
    "${pip[@]}" install "metered-realtime==$VERSION"
fi
"$VENV/bin/python" -c "
import importlib.metadata as m, sys
v = m.version('metered-realtime')
sys.exit(0 if v == '$VERSION' else f'metered-realtime {v} installed, wanted $VERSION')
"
echo "$VERSION $flavour" > "$stamp"
echo "setup-official-sdk: metered-realtime $VERSION ($flavour) in $VENV"
