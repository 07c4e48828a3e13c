"""Pattern subscriptions of one app on this node (docs/protocol.md, Pattern subscriptions).

A ``subscribe`` whose channel has an unescaped ``*`` follows every channel the pattern
matches: each ``message`` carries the concrete channel. A pattern subscription is not
membership: it gets no presence, and its peer appears in no channel's presence. Plain
synchronous bookkeeping over the hub's links; the hub asks ``recipients`` on every publish of
an app that has any pattern subscription.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ..protocol.patterns import compile_pattern, matches

L = TypeVar("L")


@dataclass
class PatternSubscription(Generic[L]):
    """The links subscribed to one pattern."""

    pattern: str
    plain: dict[L, None] = field(default_factory=dict)
    with_meta: dict[L, None] = field(default_factory=dict)
    """Links that asked for ``includeSenderMetadata``."""
    pending: dict[L, bool] = field(default_factory=dict)
    """Cluster: links whose subscribe waits for Redis -> includeSenderMetadata. They receive
    nothing until the ack goes out (``activate``)."""

    def __bool__(self) -> bool:
        return bool(self.plain or self.with_meta or self.pending)


@dataclass
class Wildcards(Generic[L]):
    """Every pattern subscription of one app on this node."""

    by_pattern: dict[str, PatternSubscription[L]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.by_pattern)

    def add(self, link: L, pattern: str, include_sender_metadata: bool, *,
            pending: bool = False) -> None:
        """Subscribe ``link`` (again: the latest ``includeSenderMetadata`` wins)."""
        compile_pattern(pattern)  # validated by the caller; compiled once here, cached
        sub = self.by_pattern.get(pattern)
        if sub is None:
            sub = self.by_pattern[pattern] = PatternSubscription(pattern)
        sub.plain.pop(link, None)
        sub.with_meta.pop(link, None)
        sub.pending.pop(link, None)
        if pending:
            sub.pending[link] = include_sender_metadata
        else:
            (sub.with_meta if include_sender_metadata else sub.plain)[link] = None

    def activate(self, link: L, pattern: str) -> bool:
        """A pending subscribe completed: ``link`` receives from now on. False when it was
        unsubscribed (or its connection closed) meanwhile."""
        sub = self.by_pattern.get(pattern)
        if sub is None or link not in sub.pending:
            return False
        include = sub.pending.pop(link)
        (sub.with_meta if include else sub.plain)[link] = None
        return True

    def remove(self, link: L, pattern: str) -> bool:
        """Unsubscribe; whether ``link`` held the pattern."""
        sub = self.by_pattern.get(pattern)
        if sub is None:
            return False
        held = link in sub.plain or link in sub.with_meta or link in sub.pending
        sub.plain.pop(link, None)
        sub.with_meta.pop(link, None)
        sub.pending.pop(link, None)
        if not sub:
            del self.by_pattern[pattern]
        return held

    def recipients(self, channel: str, exclude: Iterable[L] = (), skip: L | None = None,
                   ) -> tuple[list[L], list[L]]:
        """Who gets a message on ``channel`` through a pattern: (without sender metadata,
        with it). Each link at most once whatever number of its patterns match; with
        metadata when any of them asked for it. ``exclude``: links that get it as channel
        subscribers already; ``skip``: the publisher."""
        plain: dict[L, None] = {}
        meta: dict[L, None] = {}
        for sub in self.by_pattern.values():
            if (sub.plain or sub.with_meta) and matches(sub.pattern, channel):
                meta.update(dict.fromkeys(sub.with_meta))
                plain.update(dict.fromkeys(sub.plain))
        if not plain and not meta:
            return [], []
        drop = set(exclude)
        if skip is not None:
            drop.add(skip)
        return ([link for link in plain if link not in meta and link not in drop],
                [link for link in meta if link not in drop])
