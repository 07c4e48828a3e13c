"""Logging for the client: a standard-library logger behind a scrubbing front.

Every line the client logs passes through ``scrub`` first, so that ``?token=``/``?key=`` values,
JWTs, secret key secrets and the client's own credentials never reach a log handler (what
counts as a secret is ``protocol/redact.py``'s, shared with the server).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterable
from typing import Any, TypeAlias

from ..protocol import redact

__all__ = ["DEFAULT_LOGGER_NAME", "ClientLogger", "LoggerLike", "ScrubbingAdapter", "scrub"]

DEFAULT_LOGGER_NAME = "roomwire.client"
MASK = redact.MASK

LoggerLike: TypeAlias = "logging.Logger | logging.LoggerAdapter[Any]"
"""What ``logger=`` accepts: a standard-library logger or adapter."""

_MIN_SECRET_CHARS = 4
"""Shorter literal secrets are not masked: masking every "ab" would shred the log and hide
little (a real key or token is far longer)."""


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with credentials replaced by ``***``: query values of ``token``/``key``,
    anything shaped like a JWT or a secret key secret, and each literal string in
    ``secrets`` of 4 characters or more."""
    return redact.scrub(text, [s for s in secrets if s and len(s) >= _MIN_SECRET_CHARS],
                        mask=MASK)


class ClientLogger:
    """Formats, scrubs, then forwards to a ``logging.Logger`` (or adapter)."""

    def __init__(
        self,
        logger: LoggerLike | None,
        secrets: Callable[[], Iterable[str]] = tuple,
    ) -> None:
        self._log = logger if logger is not None else logging.getLogger(DEFAULT_LOGGER_NAME)
        self._secrets = secrets

    def scrub(self, text: str) -> str:
        return scrub(text, self._secrets())

    def _emit(self, level: int, msg: str, args: tuple[object, ...]) -> None:
        if not self._log.isEnabledFor(level):
            return
        try:
            text = msg % args if args else msg
        except (TypeError, ValueError):
            text = f"{msg} {args!r}"
        self._log.log(level, "%s", self.scrub(text))

    def debug(self, msg: str, *args: object) -> None:
        self._emit(logging.DEBUG, msg, args)

    def info(self, msg: str, *args: object) -> None:
        self._emit(logging.INFO, msg, args)

    def warning(self, msg: str, *args: object) -> None:
        self._emit(logging.WARNING, msg, args)

    def error(self, msg: str, *args: object) -> None:
        self._emit(logging.ERROR, msg, args)

    def exception(self, msg: str, exc: BaseException, *args: object) -> None:
        """Log ``msg`` at ERROR with the scrubbed traceback of ``exc``."""
        if not self._log.isEnabledFor(logging.ERROR):
            return
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self._emit(logging.ERROR, msg + "\n%s", (*args, tb.rstrip()))


class ScrubbingAdapter(logging.LoggerAdapter[logging.Logger]):
    """A logger adapter that formats and scrubs each record's message before passing it on.
    The default WebSocket factory gives it to ``websockets``, whose debug log would otherwise
    print the upgrade request line with the credential in its query."""

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        try:
            text = str(msg) % args if args else str(msg)
        except (TypeError, ValueError):
            text = f"{msg} {args!r}"
        kwargs.pop("stacklevel", None)
        self.logger.log(level, "%s", scrub(text), **kwargs)
