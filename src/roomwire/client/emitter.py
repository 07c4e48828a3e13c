"""Event dispatch: handlers (sync or async), once-handlers, and async-iterator streams.

``EventEmitter`` serves every event source of the SDK (``SignallingClient``, ``MeteredPeer``,
``RemotePeer``), each with its own registry of event classes; ``Observable`` gives an owner
of an emitter the public ``on``/``once``/``off``."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

from .log import ClientLogger
from .signalling.events import EVENT_TYPES, Event

__all__ = ["EventEmitter", "EventKey", "EventStream", "Observable", "event_name"]

EventKey = str | type[Event]
"""An event name (``"message"``) or an event class (``MessageEvent``)."""

AnyEventKey = str | type[Any]
"""An event name or an event class of any emitter's registry."""

H = TypeVar("H", bound=Callable[..., object])
K = TypeVar("K", bound=AnyEventKey)


def event_name(key: AnyEventKey, registry: Mapping[str, type[Any]] = EVENT_TYPES) -> str:
    """The event name for ``key`` in ``registry`` (by default the signalling events);
    ValueError for an unknown name, or for a class that is not the registry's own."""
    name = key if isinstance(key, str) else getattr(key, "name", None)
    if not isinstance(name, str) or name not in registry:
        known = ", ".join(sorted(registry))
        raise ValueError(f"unknown event {key!r}; known events: {known}")
    if not isinstance(key, str) and registry[name] is not key:
        raise ValueError(f"{key!r} is not an event of this emitter")
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
    (scrubbed) and never reaches the emitter or the other handlers.

    ``registry`` maps the event names this emitter knows to their classes (by default the
    signalling events); any other name, or a class not in it, is a ValueError."""

    def __init__(self, log: ClientLogger, registry: Mapping[str, type[Any]] = EVENT_TYPES
                 ) -> None:
        self._log = log
        self._registry = registry
        self._listeners: dict[str, list[_Listener]] = {}
        self._streams: list[EventStream] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    def name_of(self, key: AnyEventKey) -> str:
        """The event name for ``key``; ValueError when this emitter does not know it."""
        return event_name(key, self._registry)

    # -- registration ------------------------------------------------------------------------

    def _add(self, key: AnyEventKey, fn: Callable[..., object], once: bool) -> None:
        if not callable(fn):
            raise TypeError("a handler must be callable")
        self._listeners.setdefault(self.name_of(key), []).append(_Listener(fn, once))

    @overload
    def on(self, event: AnyEventKey, handler: H) -> H: ...

    @overload
    def on(self, event: AnyEventKey, handler: None = None) -> Callable[[H], H]: ...

    def on(self, event: AnyEventKey, handler: H | None = None) -> H | Callable[[H], H]:
        return self._register(event, handler, once=False)

    @overload
    def once(self, event: AnyEventKey, handler: H) -> H: ...

    @overload
    def once(self, event: AnyEventKey, handler: None = None) -> Callable[[H], H]: ...

    def once(self, event: AnyEventKey, handler: H | None = None) -> H | Callable[[H], H]:
        return self._register(event, handler, once=True)

    def _register(self, event: AnyEventKey, handler: H | None, once: bool
                  ) -> H | Callable[[H], H]:
        self.name_of(event)
        if handler is not None:
            self._add(event, handler, once)
            return handler

        def decorator(fn: H) -> H:
            self._add(event, fn, once)
            return fn

        return decorator

    def off(self, event: AnyEventKey, handler: Callable[..., object]) -> None:
        """Remove the first registration of ``handler`` for ``event``; silent if absent."""
        listeners = self._listeners.get(self.name_of(event), [])
        for i, listener in enumerate(listeners):
            if listener.fn == handler:
                del listeners[i]
                return

    def listener_count(self, event: AnyEventKey) -> int:
        return len(self._listeners.get(self.name_of(event), ()))

    def remove_all_listeners(self, event: AnyEventKey | None = None) -> None:
        if event is None:
            self._listeners.clear()
        else:
            self._listeners.pop(self.name_of(event), None)

    def clear(self) -> None:
        """Remove every handler (streams are left alone)."""
        self.remove_all_listeners()

    # -- streams -----------------------------------------------------------------------------

    def stream(self, events: Iterable[AnyEventKey], maxsize: int) -> EventStream:
        names = frozenset(self.name_of(e) for e in events) or None
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

    def emit(self, event: Any) -> None:
        """Deliver ``event`` (an instance of a registry class) to its handlers and streams."""
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

    def _call(self, fn: Callable[[Any], object], event: Any) -> None:
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


class Observable(Generic[K]):
    """The public ``on``/``once``/``off`` of an object whose events come from its
    ``_emitter``. ``K`` is the type of the event keys it accepts."""

    _emitter: EventEmitter

    @overload
    def on(self, event: K, handler: H) -> H: ...

    @overload
    def on(self, event: K, handler: None = None) -> Callable[[H], H]: ...

    def on(self, event: K, handler: H | None = None) -> H | Callable[[H], H]:
        """Call ``handler(ev)`` for every ``event`` (an event name such as ``"message"`` or
        ``"peer-joined"``, or the event class). Handlers run in registration order; an async
        one runs as a task; one that raises is logged and does not disturb the others.
        Without ``handler``, returns a decorator. Returns the handler. ValueError for an
        event this object does not emit."""
        return self._emitter.on(event, handler)

    @overload
    def once(self, event: K, handler: H) -> H: ...

    @overload
    def once(self, event: K, handler: None = None) -> Callable[[H], H]: ...

    def once(self, event: K, handler: H | None = None) -> H | Callable[[H], H]:
        """Like ``on``, but the handler is removed before its first call."""
        return self._emitter.once(event, handler)

    def off(self, event: K, handler: Callable[..., object]) -> None:
        """Remove the first registration of ``handler`` for ``event``; silent when it is not
        registered."""
        self._emitter.off(event, handler)
