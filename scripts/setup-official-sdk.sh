#!/usr/bin/env bash
# Create (or check) the separate virtualenv holding the official Metered client SDK,
# `metered-realtime`, which tests/interop drives as a black-box client against our server.
#
# It lives apart from .venv because its pins (websockets>=13,<16) clash with ours.
# Location: $ROOMWIRE_OFFICIAL_VENV (relative paths are taken from the repo root),
# default .venv-official. The webrtc extra (aiortc + av) is tried as well, for the official
# MeteredPeer; if it cannot be installed the pub/sub-only package is kept and the script
# still succeeds (set ROOMWIRE_OFFICIAL_WEBRTC=0 to skip the attempt).
# Idempotent: once installed, a second run only reads a stamp file.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=1.0.2
VENV=${ROOMWIRE_OFFICIAL_VENV:-.venv-official}
WANT_WEBRTC=${ROOMWIRE_OFFICIAL_WEBRTC:-1}
PY=${PYTHON:-python3}
stamp="$VENV/.roomwire-official"

if [ -f "$stamp" ] && [ -x "$VENV/bin/python" ]; then
    # Stamps: "webrtc" (extra installed), "webrtc-failed" (tried once, not retried),
    # "pubsub" (extra not wanted: enough only while ROOMWIRE_OFFICIAL_WEBRTC=0).
    case "$(cat "$stamp")" in
        "$VERSION webrtc" | "$VERSION webrtc-failed") exit 0 ;;
        "$VERSION pubsub") [ "$WANT_WEBRTC" = 0 ] && exit 0 ;;
    esac
fi

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip --quiet --disable-pip-version-check)

flavour=pubsub
if [ "$WANT_WEBRTC" != 0 ] && "${pip[@]}" install "metered-realtime[webrtc]==$VERSION" \
        && "$VENV/bin/python" -c 'import aiortc, av, metered_realtime; metered_realtime.MeteredPeer'
then
    flavour=webrtc
else
    if [ "$WANT_WEBRTC" != 0 ]; then
        echo "setup-official-sdk: the [webrtc] extra did not install; keeping pub/sub only" >&2
        flavour=webrtc-failed
    fi
    "${pip[@]}" install "metered-realtime==$VERSION"
fi
"$VENV/bin/python" -c "
import importlib.metadata as m, sys
v = m.version('metered-realtime')
sys.exit(0 if v == '$VERSION' else f'metered-realtime {v} installed, wanted $VERSION')
"
echo "$VERSION $flavour" > "$stamp"
echo "setup-official-sdk: metered-realtime $VERSION ($flavour) in $VENV"
