"""The channel-pattern matcher: same answers as the regex it replaced, in bounded time."""

from __future__ import annotations

import re
import time
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roomwire.protocol.limits import MAX_CHANNEL_BYTES, MAX_PATTERN_CHARS, MAX_PATTERN_WILDCARDS
from roomwire.protocol.patterns import (
    DSTAR,
    STAR,
    PatternError,
    check_pattern,
    covers,
    matches,
    matches_any,
    pattern_problem,
    tokenize,
)

# (pattern, channel, expected)
MATCH_TABLE = [
    ("lobby", "lobby", True),
    ("lobby", "Lobby", False),
    ("lobby", "lobby2", False),
    ("lobby", "lobb", False),
    ("lobby", "", False),
    ("**", "", True),
    ("**", "a/b/c", True),
    ("*", "", True),
    ("*", "abc", True),
    ("*", "a/b", False),
    ("*", "/", False),
    ("room/*", "room/1", True),
    ("room/*", "room/", True),
    ("room/*", "room/1/2", False),
    ("room/*", "room", False),
    ("room/*", "xroom/1", False),
    ("room/**", "room/1/2/3", True),
    ("room/**", "room/", True),
    ("room/**", "room", False),
    ("room-*", "room-1", True),
    ("room-*", "room-", True),
    ("**/events", "devices/7/events", True),
    ("**/events", "/events", True),
    ("**/events", "events", False),
    ("devices/*/events", "devices/7/events", True),
    ("devices/*/events", "devices//events", True),
    ("devices/*/events", "devices/7/8/events", False),
    ("a*b*c", "abc", True),
    ("a*b*c", "axxbyyc", True),
    ("a*b*c", "axxbyy/c", False),
    ("a**b*c", "a/x/byyc", True),
    ("a**b*c", "a/x/b/c", False),
    ("a**b*c", "a/x/bb/c", False),
    ("a**b*c", "a/b/xbc", True),
    ("a**b*c", "a/x/b/y/c", False),
    ("***", "a/b", True),
    ("*a*", "bab", True),
    ("*a*", "bbb", False),
    ("**a**a**a**a**ab", "a" * 10 + "b", True),
    ("**a**a**a**a**ab", "a" * 140, False),
    (r"\*", "*", True),
    (r"\*", "a", False),
    (r"a\*b", "a*b", True),
    (r"a\*b", "axb", False),
    (r"\\", "\\", True),
    (r"\\*", "\\abc", True),
    (r"\\*", "\\a/c", False),
    (r"\\\*", "\\*", True),
    (r"x\**", "x*yz", True),
    (r"x\**", "xyz", False),
    ("é/*", "é/ü", True),
    ("a.b", "aXb", False),
    ("a+", "aa", False),
    ("(a)", "(a)", True),
    ("[ab]", "a", False),
    ("^a$", "^a$", True),
]

# (outer, inner, expected)
COVERS_TABLE = [
    ("**", "anything/**", True),
    ("**", "*", True),
    ("room/**", "room/*", True),
    ("room/**", "room/**", True),
    ("room/**", "room/a/b", True),
    ("room/*", "room/a", True),
    ("room/*", "room/*", True),
    ("room/*", "room/**", False),
    ("room/*", "room/a/b", False),
    ("room/*", "room/a*", True),
    ("room/*", "other/*", False),
    ("*", "**", False),
    ("*", "a/b", False),
    ("a", "a", True),
    ("a", "*", False),
    (r"\*", "*", False),
    (r"\*", r"\*", True),
    ("**", r"\*\\", True),
    ("a/**/b", "a/x/**/b", True),
    ("a/**/b", "a/**", False),
]


@pytest.mark.parametrize(("pattern", "channel", "expected"), MATCH_TABLE)
def test_match_table(pattern: str, channel: str, expected: bool) -> None:
    assert matches(pattern, channel) is expected
    assert matches_any(["no-such-channel", pattern], channel) is expected


@pytest.mark.parametrize(("outer", "inner", "expected"), COVERS_TABLE)
def test_covers_table(outer: str, inner: str, expected: bool) -> None:
    assert covers(outer, inner) is expected


@pytest.mark.parametrize("bad", ["", "a\\", "a\\b", "\\"])
def test_unparsable_patterns_are_refused(bad: str) -> None:
    with pytest.raises(PatternError):
        tokenize(bad)
    assert pattern_problem(bad) is not None


def test_pattern_limits() -> None:
    assert pattern_problem("a" * MAX_PATTERN_CHARS) is None
    assert "at most" in str(pattern_problem("a" * (MAX_PATTERN_CHARS + 1)))
    assert pattern_problem("*a" * MAX_PATTERN_WILDCARDS) is None
    too_many = "*a" * (MAX_PATTERN_WILDCARDS + 1)
    assert "wildcards" in str(pattern_problem(too_many))
    with pytest.raises(PatternError, match="wildcards"):
        check_pattern(too_many)
    # An escaped star is a literal, not a wildcard.
    assert pattern_problem(r"\*" * (MAX_PATTERN_WILDCARDS + 5)) is None
    assert pattern_problem(42) is not None


# -- the reference: the regex translation the matcher replaced (fine on short inputs) ----------

def _reference_match(pattern: str, channel: str) -> bool:
    parts = []
    for tok in tokenize(pattern):
        parts.append("[^/]*" if tok == STAR else ".*" if tok == DSTAR else re.escape(tok))
    return re.fullmatch("".join(parts), channel, re.DOTALL) is not None


def _reference_covers(outer: str, inner: str) -> bool:
    a, b = tokenize(outer), tokenize(inner)

    @cache
    def go(i: int, j: int) -> bool:
        if i == len(a):
            return j == len(b)
        if a[i] == DSTAR:
            return any(go(i + 1, k) for k in range(j, len(b) + 1))
        if a[i] == STAR:
            k = j
            if go(i + 1, k):
                return True
            while k < len(b) and b[k] not in (DSTAR, "/"):
                k += 1
                if go(i + 1, k):
                    return True
            return False
        return j < len(b) and b[j] == a[i] and go(i + 1, j + 1)

    return go(0, 0)


_PIECES = st.sampled_from(["a", "b", "/", "*", "**", "\\*", "\\\\", "é"])
PATTERNS = st.lists(_PIECES, min_size=1, max_size=8).map("".join)
CHANNELS = st.text(alphabet="ab/*\\é", max_size=10)


@settings(max_examples=1500, deadline=None)
@given(PATTERNS, CHANNELS)
def test_matcher_agrees_with_the_regex_reference(pattern: str, channel: str) -> None:
    assert matches(pattern, channel) == _reference_match(pattern, channel)


@settings(max_examples=1500, deadline=None)
@given(PATTERNS, PATTERNS)
def test_covers_agrees_with_the_reference(outer: str, inner: str) -> None:
    assert covers(outer, inner) == _reference_covers(outer, inner)


@settings(max_examples=300, deadline=None)
@given(PATTERNS, CHANNELS)
def test_a_covered_pattern_only_matches_what_the_outer_matches(outer: str, channel: str) -> None:
    # Soundness of the authorization check: the channel itself, escaped, is a pattern.
    inner = channel.replace("\\", "\\\\").replace("*", "\\*")
    if inner and covers(outer, inner):
        assert matches(outer, channel)


# -- bounded time ---------------------------------------------------------------------------

WORST = [
    # (pattern, channel): many wildcards each followed by the character the channel repeats,
    # ending so that the prefix and suffix checks pass and the whole pattern must be tried.
    ("**a" * 16 + "c**b", "a" * (MAX_CHANNEL_BYTES - 1) + "b"),
    ("*a" * 16 + "c*b", "a" * (MAX_CHANNEL_BYTES - 1) + "b"),
    ("**/*a" * 8 + "c**b", "a/" * (MAX_CHANNEL_BYTES // 2 - 1) + "ab"),
    ("**a**a**a**a**ab", "a" * MAX_CHANNEL_BYTES),
    ("*a" * (MAX_PATTERN_WILDCARDS - 1) + "*", "a" * (MAX_CHANNEL_BYTES - 1) + "/"),
]


@pytest.mark.parametrize(("pattern", "channel"), WORST)
def test_worst_case_patterns_answer_in_milliseconds(pattern: str, channel: str) -> None:
    assert pattern_problem(pattern) is None
    t0 = time.perf_counter()
    for _ in range(10):
        assert matches(pattern, channel) is False
        assert covers(pattern, channel) is False
    took = (time.perf_counter() - t0) / 10
    # A backtracking matcher needs seconds here; a linear one well under a millisecond. The
    # bound leaves room for a loaded 2-core machine.
    assert took < 0.05, f"one match and one cover check took {took * 1000:.1f} ms"


def test_worst_case_cover_check_is_bounded() -> None:
    outer = ("*a" * 16)[: MAX_PATTERN_CHARS]
    inner = "a" * MAX_CHANNEL_BYTES + "*"
    t0 = time.perf_counter()
    assert covers(outer, inner) is False
    assert time.perf_counter() - t0 < 0.05
