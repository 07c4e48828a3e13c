"""Event dispatch: handlers (sync or async), once-handlers, and async-iterator streams."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from .events import EVENT_TYPES, Event
from .logging import ClientLogger

__all__ = ["EventEmitter", "EventKey", "EventStream", "event_name"]

EventKey = str | type[Event]
"""An event name (``"message"``) or an event class (``MessageEvent``)."""

H = TypeVar("H", bound=Callable[..., object])


def event_name(key: EventKey) -> str:
    """The event name for ``key``; ValueError for an unknown one."""
    name = key if isinstance(key, str) else getattr(key, "name", None)
    if not isinstance(name, str) or name not in EVENT_TYPES:
        known = ", ".join(sorted(EVENT_TYPES))
        raise ValueError(f"unknown event {key!r}; known events: {known}")
    return name


@dataclass(eq=False, slots=True)
class _Listener:
    fn: Callable[[Any], object]
    once: bool


class EventStream:
    """An async iterator over events, bounded: when ``maxsize`` events are waiting, the oldest
    is dropped (``dropped`` counts them). ``maxsize=0`` means unbounded. Ends when the client
    closes or gives up for good, or when ``aclose()`` is called (also on leaving ``async
    with``)."""

    def __init__(self, emitter: EventEmitter, names: frozenset[str] | None, maxsize: int) -> None:
        if maxsize < 0:
            raise ValueError("maxsize must be >= 0")
        self._emitter = emitter
        self.names = names
        self.maxsize = maxsize
        self.dropped = 0
        self._queue: deque[Event] = deque()
        self._ready = asyncio.Event()
        self._ended = False

    def _push(self, event: Event) -> None:
        if self._ended:
            return
        if self.maxsize and len(self._queue) >= self.maxsize:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(event)
        self._ready.set()

    def _end(self) -> None:
        self._ended = True
        self._ready.set()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        while not self._queue:
            if self._ended:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    async def aclose(self) -> None:
        self._emitter._remove_stream(self)
        self._end()
        self._queue.clear()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class EventEmitter:
    """Calls handlers in registration order. A sync handler runs inline; a handler that
    returns an awaitable has it run as a tracked task. An exception in any handler is logged
    (scrubbed) and never reaches the emitter or the other handlers."""

    def __init__(self, log: ClientLogger) -> None:
        self._log = log
        self._listeners: dict[str, list[_Listener]] = {}
        self._streams: list[EventStream] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- registration ------------------------------------------------------------------------

    def _add(self, key: EventKey, fn: Callable[..., object], once: bool) -> None:
        if not callable(fn):
            raise TypeError("a handler must be callable")
        self._listeners.setdefault(event_name(key), []).append(_Listener(fn, once))

    @overload
    def on(self, event: EventKey, handler: H) -> H: ...

    @overload
    def on(self, event: EventKey, handler: None = None) -> Callable[[H], H]: ...

    def on(self, event: EventKey, handler: H | None = None) -> H | Callable[[H], H]:
        event_name(event)
        if handler is not None:
            self._add(event, handler, once=False)
            return handler

        def decorator(fn: H) -> H:
            self._add(event, fn, once=False)
            return fn

        return decorator

    @overload
    def once(self, event: EventKey, handler: H) -> H: ...

    @overload
    def once(self, event: EventKey, handler: None = None) -> Callable[[H], H]: ...

    def once(self, event: EventKey, handler: H | None = None) -> H | Callable[[H], H]:
        event_name(event)
        if handler is not None:
            self._add(event, handler, once=True)
            return handler

        def decorator(fn: H) -> H:
            self._add(event, fn, once=True)
            return fn

        return decorator

    def off(self, event: EventKey, handler: Callable[..., object]) -> None:
        """Remove the first registration of ``handler`` for ``event``; silent if absent."""
        listeners = self._listeners.get(event_name(event), [])
        for i, listener in enumerate(listeners):
            if listener.fn == handler:
                del listeners[i]
                return

    def listener_count(self, event: EventKey) -> int:
        return len(self._listeners.get(event_name(event), ()))

    def remove_all_listeners(self, event: EventKey | None = None) -> None:
        if event is None:
            self._listeners.clear()
        else:
            self._listeners.pop(event_name(event), None)

    # -- streams -----------------------------------------------------------------------------

    def stream(self, events: Iterable[EventKey], maxsize: int) -> EventStream:
        names = frozenset(event_name(e) for e in events) or None
        s = EventStream(self, names, maxsize)
        self._streams.append(s)
        return s

    def _remove_stream(self, stream: EventStream) -> None:
        if stream in self._streams:
            self._streams.remove(stream)

    def end_streams(self) -> None:
        streams, self._streams = self._streams, []
        for s in streams:
            s._end()

    # -- dispatch ----------------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        listeners = self._listeners.get(event.name)
        if listeners:
            for listener in list(listeners):
                if listener.once:
                    try:
                        listeners.remove(listener)
                    except ValueError:
                        continue  # a handler earlier in this round removed it
                self._call(listener.fn, event)
        for s in self._streams:
            if s.names is None or event.name in s.names:
                s._push(event)

    def _call(self, fn: Callable[[Any], object], event: Event) -> None:
        try:
            result = fn(event)
        except Exception as exc:
            self._log.exception("a %s handler raised", exc, event.name)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._task_done, name=event.name))

    def _task_done(self, task: asyncio.Future[Any], *, name: str) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._log.exception("an async %s handler raised", exc, name)

    @property
    def pending_tasks(self) -> Collection[asyncio.Task[Any]]:
        return frozenset(self._tasks)

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for running async handlers (except the caller's own
        task), then cancel the rest."""
        current = asyncio.current_task()
        tasks = {t for t in self._tasks if t is not current}
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=timeout)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=timeout)
