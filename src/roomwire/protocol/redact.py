"""What counts as a secret in a line of text, and ``scrub()`` that masks it: one source for
the server's log filter (``server/logs.py``, also its HTTP error bodies) and the SDK's
logger (``client/log.py``).

Masked wherever they appear (docs/operations.md, Logs; docs/sdk-signalling.md, Logging):

- secret key secrets, ``sk_secret_...`` (a REST ``Authorization: Bearer sk_id_...:sk_secret_...``
  header included);
- anything shaped like a JWT (three base64url parts, the first starting ``eyJ``, which is
  ``{"`` encoded): in a query string, an ``Authorization: Bearer`` header or prose;
- the value of a ``token=`` or ``key=`` query parameter (a publishable key in a connect URL
  too: it is not secret, but a URL's credential never needs to be in a log);
- each literal string the caller names (the admin token, the TURN shared secret, the SDK's
  own API key and tokens).

Key ids (``sk_id_...``, ``pk_live_...`` outside a query) stay readable: they say which key
failed and grant nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "[redacted]"
"""The server's mask."""

MASK = "***"
"""The SDK's mask."""

SECRET_KEY_SECRET = re.compile(r"sk_secret_[A-Za-z0-9_\-]+")
JWT = re.compile(r"eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*")
"""The signature part may be empty: an unsigned (``alg: none``) token still carries claims."""
QUERY_CREDENTIAL = re.compile(r"(?i)(?:^|[?&;\s])(?:token|key)=([^&#\s'\"<>]+)")
"""Only group 1, the value, is masked: a scrubbed URL still says what was sent."""
_PATTERNS = (SECRET_KEY_SECRET, JWT)


def _spans(text: str, secrets: Iterable[str]) -> list[tuple[int, int]]:
    found: list[tuple[int, int]] = []
    for secret in secrets:
        if not secret:
            continue
        at = text.find(secret)
        while at >= 0:
            found.append((at, at + len(secret)))
            at = text.find(secret, at + len(secret))
    found += [m.span(1) for m in QUERY_CREDENTIAL.finditer(text)]
    for pattern in _PATTERNS:
        found += [m.span() for m in pattern.finditer(text)]
    return found


def scrub(text: str, secrets: Iterable[str] = (), *, mask: str = REDACTED) -> str:
    """``text`` with every secret replaced by ``mask``. Every kind is looked for in the
    original text and overlapping finds are masked as one, so that masking one kind never
    hides another from its pattern and leaves part of it readable."""
    spans = sorted(_spans(text, secrets))
    if not spans:
        return text
    out: list[str] = []
    done = 0
    for start, end in spans:
        if end <= done:
            continue
        if start >= done:
            out.append(text[done:start])
            out.append(mask)
        # else: overlaps the span just masked, which grows to cover it
        done = max(done, end)
    out.append(text[done:])
    return "".join(out)
