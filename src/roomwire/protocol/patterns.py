"""Channel patterns: ``*`` (any run without ``/``), ``**`` (any run), ``\\*`` and ``\\\\`` escapes.

A pattern matches a whole channel name, case-sensitively.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache, lru_cache

# Tokens of a parsed pattern: a literal character, STAR or DSTAR.
STAR = "\x00*"
DSTAR = "\x00**"


class PatternError(ValueError):
    """A channel pattern cannot be parsed."""


def tokenize(pattern: str) -> tuple[str, ...]:
    """Split a pattern into literal characters, STAR and DSTAR tokens."""
    if not pattern:
        raise PatternError("a channel pattern must not be empty")
    out: list[str] = []
    i = 0
    n = len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            if i + 1 >= n or pattern[i + 1] not in "*\\":
                raise PatternError(f"pattern {pattern!r}: '\\' must be followed by '*' or '\\'")
            out.append(pattern[i + 1])
            i += 2
        elif ch == "*":
            if i + 1 < n and pattern[i + 1] == "*":
                out.append(DSTAR)
                i += 2
            else:
                out.append(STAR)
                i += 1
        else:
            out.append(ch)
            i += 1
    return tuple(out)


@lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A compiled regular expression that matches exactly the channels ``pattern`` matches."""
    parts: list[str] = []
    for tok in tokenize(pattern):
        if tok == STAR:
            parts.append("[^/]*")
        elif tok == DSTAR:
            parts.append(".*")
        else:
            parts.append(re.escape(tok))
    return re.compile("".join(parts), re.DOTALL)


def matches(pattern: str, channel: str) -> bool:
    """True when ``channel`` matches ``pattern``."""
    return compile_pattern(pattern).fullmatch(channel) is not None


def matches_any(patterns: Iterable[str], channel: str) -> bool:
    """True when ``channel`` matches at least one of ``patterns``."""
    return any(compile_pattern(p).fullmatch(channel) is not None for p in patterns)


def covers(outer: str, inner: str) -> bool:
    """True when every channel matched by ``inner`` is also matched by ``outer``.

    Conservative: it may answer False for an exotic pair that is in fact covered, never True
    for one that is not, which is the safe side for an authorization check.
    """
    a = tokenize(outer)
    b = tokenize(inner)

    @cache
    def go(i: int, j: int) -> bool:
        if i == len(a):
            return j == len(b)
        tok = a[i]
        if tok == DSTAR:
            # DSTAR absorbs any prefix of the inner pattern, wildcards included.
            return any(go(i + 1, k) for k in range(j, len(b) + 1))
        if tok == STAR:
            if go(i + 1, j):
                return True
            k = j
            while k < len(b) and b[k] not in (DSTAR, "/"):
                k += 1
                if go(i + 1, k):
                    return True
            return False
        return j < len(b) and b[j] == tok and go(i + 1, j + 1)

    return go(0, 0)


def covered_by_any(outers: Iterable[str], inner: str) -> bool:
    """True when some pattern in ``outers`` covers ``inner``."""
    return any(covers(o, inner) for o in outers)
