"""Optional parts of roomwire and the message a user gets when one is not installed.

The base install is the server. The extras of ``pyproject.toml`` add the rest: ``client``
(``websockets``, for ``SignallingClient``), ``webrtc`` (aiortc and PyAV, for ``MeteredPeer``,
the media helpers and ``roomwire join``) and ``cluster`` (redis and psycopg, for
``--redis-url`` and a PostgreSQL ``--database-url``). Code that needs one imports it inside a
``try`` and raises :class:`MissingExtraError` from the ``ImportError``, so the user reads what
to install instead of a traceback that ends in ``No module named 'av'``.
"""

from __future__ import annotations

#: What each extra is for, for the message.
EXTRAS = {
    "client": "the roomwire SignallingClient",
    "webrtc": "WebRTC in the roomwire SDK (MeteredPeer, media helpers, roomwire join)",
    "cluster": "clustering over Redis and the PostgreSQL store",
}


class MissingExtraError(ImportError):
    """A feature was used whose optional dependencies are not installed.

    ``extra`` names the extra to install; ``missing`` the module that failed to import."""

    def __init__(self, extra: str, feature: str, missing: str | None) -> None:
        self.extra = extra
        self.feature = feature
        self.missing = missing
        what = f" (module {missing!r} is not installed)" if missing else ""
        super().__init__(
            f"{feature} needs the {extra!r} extra{what}: "
            f"pip install 'roomwire[{extra}]'",
            name=missing,
        )


def missing_extra(extra: str, exc: ImportError, feature: str | None = None) -> MissingExtraError:
    """The error to raise ``from exc`` when an import for ``extra`` failed."""
    return MissingExtraError(extra, feature or EXTRAS[extra], exc.name)
