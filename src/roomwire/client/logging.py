"""Logging for the client: a standard-library logger behind a scrubbing front.

Every line the client logs passes through ``scrub`` first, so that ``?token=``/``?key=`` values,
JWTs and the client's own credentials never reach a log handler.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Callable, Iterable
from typing import Any, TypeAlias

__all__ = ["DEFAULT_LOGGER_NAME", "ClientLogger", "LoggerLike", "ScrubbingAdapter", "scrub"]

DEFAULT_LOGGER_NAME = "roomwire.client"
MASK = "***"

LoggerLike: TypeAlias = "logging.Logger | logging.LoggerAdapter[Any]"
"""What ``logger=`` accepts: a standard-library logger or adapter."""

_QUERY_SECRET = re.compile(r"(?i)((?:^|[?&;\s])(?:token|key)=)[^&#\s'\"<>]+")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]+")


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with credentials replaced by ``***``: query values of ``token``/``key``,
    anything shaped like a JWT, and each literal string in ``secrets``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, MASK)
    text = _QUERY_SECRET.sub(lambda m: m.group(1) + MASK, text)
    return _JWT.sub(MASK, text)


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
