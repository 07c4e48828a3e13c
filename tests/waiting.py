"""The one bounded wait of the test suite.

A test that needs something to have happened waits for that very condition, with a bound, and
fails saying what it last saw; it never sleeps a fixed time and hopes. A pause is only right
before asserting that something did *not* happen, and then its length comes from the configured
interval that would have made it happen (see ``quiet_period``).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: Polling step: short enough that a wait costs no more than a few milliseconds past the event,
#: long enough not to starve the loop the servers under test run on.
STEP = 0.005


async def wait_for(
    probe: Callable[[], T | Awaitable[T]],
    timeout: float,
    what: str,
    *,
    until: Callable[[T], object] | None = None,
    step: float = STEP,
) -> T:
    """Call ``probe`` (plain or async) until ``until(value)`` holds (default: the value is
    truthy) and return that value. After ``timeout`` seconds raise ``AssertionError`` naming
    ``what`` and the value seen last, so a red run says what the state was, not just "timeout".
    An exception raised by ``probe`` counts as "not yet" and is reported if it is the last
    thing seen."""
    check: Callable[[Any], object] = until if until is not None else bool
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = "<never probed>"
    while True:
        try:
            value = probe()
            if inspect.isawaitable(value):
                value = await value
        except AssertionError:
            raise
        except Exception as exc:  # "not yet"; shown if it stays that way
            last = f"<{type(exc).__name__}: {exc}>"
        else:
            last = value
            if check(value):
                return value  # type: ignore[return-value]
        if loop.time() >= deadline:
            raise AssertionError(f"{what}: not so within {timeout:g} s; last seen: {last!r}")
        await asyncio.sleep(step)


async def wait_equal(probe: Callable[[], T | Awaitable[T]], expected: T, timeout: float,
                     what: str) -> T:
    """``wait_for`` until ``probe()`` equals ``expected``."""
    return await wait_for(probe, timeout, what, until=lambda v: v == expected)


def quiet_period(interval: float, *, periods: float = 3.0, floor: float = 0.2) -> float:
    """How long to let time pass before asserting that something did *not* happen, when it
    would have happened within one ``interval`` (a heartbeat, a poll, a retry delay): a few
    periods, and never less than ``floor`` so a loaded machine still runs the code path."""
    return max(floor, interval * periods)
