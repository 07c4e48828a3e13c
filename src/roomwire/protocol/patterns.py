"""Channel patterns: ``*`` (any run without ``/``), ``**`` (any run), ``\\*`` and ``\\\\`` escapes.

A pattern matches a whole channel name, case-sensitively.

Matching never backtracks: the set of channel positions a pattern prefix can end at is kept
as the bits of one integer, and each pattern step transforms that set at once, so a match costs
at most (pattern steps) x (channel length / machine word) operations whatever the pattern is
(see docs/operations.md, "Security model").
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from .limits import MAX_PATTERN_CHARS, MAX_PATTERN_WILDCARDS

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


def pattern_problem(pattern: object) -> str | None:
    """Why ``pattern`` is not an acceptable channel pattern (key, token or REST), or None.

    The same limits apply wherever a pattern comes from, so a token cannot carry a pattern
    its key could not have."""
    if not isinstance(pattern, str):
        return "a channel pattern must be a string"
    if len(pattern) > MAX_PATTERN_CHARS:
        return f"a channel pattern may be at most {MAX_PATTERN_CHARS} characters long"
    try:
        tokens = tokenize(pattern)
    except PatternError as exc:
        return str(exc)
    if sum(1 for t in tokens if t in (STAR, DSTAR)) > MAX_PATTERN_WILDCARDS:
        return f"a channel pattern may have at most {MAX_PATTERN_WILDCARDS} wildcards"
    return None


def is_pattern(channel: str) -> bool:
    """Whether a ``subscribe`` channel is a pattern subscription: it has an unescaped ``*``.

    A channel without one is a channel name, taken as it is (backslashes included), so every
    subscription that worked before patterns existed means what it meant. A channel with a
    ``*`` that does not parse as a pattern (a ``\\`` before another character) is a pattern
    with a syntax error, which ``pattern_problem`` explains."""
    if "*" not in channel:
        return False
    try:
        return any(t in (STAR, DSTAR) for t in tokenize(channel))
    except PatternError:
        return True


def check_pattern(pattern: str) -> None:
    """Raise ``PatternError`` with the reason when ``pattern`` is not acceptable."""
    problem = pattern_problem(pattern)
    if problem is not None:
        raise PatternError(problem)


# A compiled pattern: literal runs (str) and the wildcards STAR / DSTAR between them.
Steps = tuple[str, ...]


def _steps(tokens: Iterable[str]) -> Steps:
    out: list[str] = []
    run: list[str] = []
    for tok in tokens:
        if tok in (STAR, DSTAR):
            if run:
                out.append("".join(run))
                run = []
            out.append(tok)
        else:
            run.append(tok)
    if run:
        out.append("".join(run))
    return tuple(out)


@lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> Steps:
    """The pattern as literal runs and wildcards, ready for ``matches``."""
    return _steps(tokenize(pattern))


def _occurrences(subject: str, run: str) -> int:
    """Bit i set when ``run`` occurs in ``subject`` at position i (overlaps included)."""
    mask = 0
    i = subject.find(run)
    while i >= 0:
        mask |= 1 << i
        i = subject.find(run, i + 1)
    return mask


def _run(steps: Steps, subject: str, star_stops: frozenset[str]) -> bool:
    """Whether ``steps`` can consume all of ``subject``. ``star_stops``: the characters STAR
    cannot absorb. Bit j of ``reach``: the steps so far can end just before ``subject[j]``."""
    n = len(subject)
    full = (1 << (n + 1)) - 1
    absorb = 0
    if STAR in steps:
        for j, ch in enumerate(subject):
            if ch not in star_stops:
                absorb |= 1 << j
    reach = 1
    for step in steps:
        if step == DSTAR:
            lowest = reach & -reach
            reach = full & ~(lowest - 1)
        elif step == STAR:
            # Carry propagation: adding ``absorb`` to the reached bits inside a run of
            # absorbable characters sets every later bit of that run and the one after it.
            inside = reach & absorb
            reach |= ((inside + absorb) ^ absorb) & full
        else:
            reach = (reach & _occurrences(subject, step)) << len(step)
            reach &= full
        if not reach:
            return False
    return bool(reach >> n & 1)


_SLASH = frozenset("/")


def matches(pattern: str, channel: str) -> bool:
    """True when ``channel`` matches ``pattern``."""
    steps = compile_pattern(pattern)
    if len(steps) == 1 and steps[0] not in (STAR, DSTAR):
        return channel == steps[0]
    if steps == (DSTAR,):
        return True
    if len(steps) == 2:
        # The usual key shapes ``rooms/**``, ``rooms/*`` and ``**/events``, without the
        # general machinery.
        head, tail = steps
        if tail == DSTAR and head not in (STAR, DSTAR):
            return channel.startswith(head)
        if tail == STAR and head not in (STAR, DSTAR):
            return channel.startswith(head) and "/" not in channel[len(head):]
        if head == DSTAR and tail not in (STAR, DSTAR):
            return channel.endswith(tail)
    first, last = steps[0], steps[-1]
    if first not in (STAR, DSTAR) and not channel.startswith(first):
        return False
    if last not in (STAR, DSTAR) and not channel.endswith(last):
        return False
    return _run(steps, channel, _SLASH)


def matches_any(patterns: Iterable[str], channel: str) -> bool:
    """True when ``channel`` matches at least one of ``patterns``."""
    return any(matches(p, channel) for p in patterns)


def _placeholders(used: set[str]) -> tuple[str, str]:
    """Two characters that occur in neither pattern, to stand for the inner wildcards."""
    found: list[str] = []
    cp = 0xE000
    while len(found) < 2:
        ch = chr(cp)
        if ch not in used:
            found.append(ch)
        cp += 1
    return found[0], found[1]


def covers(outer: str, inner: str) -> bool:
    """True when every channel matched by ``inner`` is also matched by ``outer``.

    Conservative: it may answer False for an exotic pair that is in fact covered, never True
    for one that is not, which is the safe side for an authorization check. The inner pattern
    is read as a string in which its wildcards are two placeholder characters: an outer
    literal never matches them, an outer STAR absorbs inner literals except ``/`` and inner
    STARs, an outer DSTAR absorbs anything.
    """
    a = tokenize(outer)
    b = tokenize(inner)
    star_ph, dstar_ph = _placeholders({t for t in a + b if t not in (STAR, DSTAR)})
    subject = "".join(star_ph if t == STAR else dstar_ph if t == DSTAR else t for t in b)
    return _run(_steps(a), subject, frozenset(("/", dstar_ph)))


def covered_by_any(outers: Iterable[str], inner: str) -> bool:
    """True when some pattern in ``outers`` covers ``inner``."""
    return any(covers(o, inner) for o in outers)
