"""Logging setup: plain or JSON lines, with secrets scrubbed from every record.

``configure_logging(level, json_output, secrets=[...])`` installs one handler on the root
logger. The ``Redactor`` filter masks what ``protocol/redact.py`` counts as a secret (secret
key secrets, JWTs, ``token=``/``key=`` query values) and any configured secret (the admin
token, the TURN secret) wherever they appear in a message, its arguments or an exception's
text, as a last line of defence: roomwire never logs them on purpose.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import Any

from ..protocol.redact import REDACTED, scrub

__all__ = ["REDACTED", "JsonFormatter", "Redactor", "configure_logging", "scrub"]


class Redactor(logging.Filter):
    """Rewrites each record's message (arguments merged) and exception text, scrubbed."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        record.msg = scrub(message, self.secrets)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text, self.secrets)
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg (and exc when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, ensure_ascii=False)


def configure_logging(level: str = "info", json_output: bool = False,
                      secrets: Iterable[str] = ()) -> logging.Handler:
    """Send every log record to stderr, plain or JSON, scrubbed. Returns the handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(Redactor(secrets))
    if json_output:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
