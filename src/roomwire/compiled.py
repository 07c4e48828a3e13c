"""Which of roomwire's modules may be compiled with mypyc, and which of them are.

Compilation is optional: ``scripts/compile.sh`` builds these modules in place next to their
sources (Python imports an extension module before a ``.py`` of the same name), and
``scripts/compile.sh --clean`` removes them again. The pure-Python modules are the same code
and stay the fallback wherever no C compiler is at hand. docs/operations.md, "Compiled
modules", says what it buys and what it needs.
"""

from __future__ import annotations

import importlib
from importlib.machinery import EXTENSION_SUFFIXES

#: The modules of the signalling hot path (frame callback, dispatch, checks, rate limits,
#: queueing), in the order they are compiled. Each is ``mypy --strict`` clean, and none
#: defines a class deriving from an extension type (picows' listeners live in
#: ``server/gateway/listener.py``, which stays pure Python). ``server/hub.py`` (routing and
#: fan-out) compiles and passes the server suites too, but the interop suites wrap its
#: methods to watch replays, which a compiled class does not allow: it stays pure Python.
HOT_MODULES = (
    "roomwire.protocol.validate",
    "roomwire.server.limits",
    "roomwire.server.session",
    "roomwire.server.gateway.websocket",
)


def is_compiled(module: str) -> bool:
    """Whether ``module`` was imported from an extension module rather than its source."""
    path = getattr(importlib.import_module(module), "__file__", None) or ""
    return path.endswith(tuple(EXTENSION_SUFFIXES))


def compiled_modules() -> list[str]:
    """The hot modules that run compiled in this process."""
    return [m for m in HOT_MODULES if is_compiled(m)]
