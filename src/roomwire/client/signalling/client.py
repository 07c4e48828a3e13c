"""``SignallingClient``: one WebSocket to a Metered-compatible server, many channels, acks,
automatic reconnect.

The decisions live elsewhere and are plain code: ``reconnect`` (what a close code means, how
long to wait, when to give up), ``state`` (legal transitions), ``protocol`` (frame shapes and
wire rules). This module is the asyncio driver around them: it opens sockets, reads frames,
correlates acks, runs the keepalive, and turns what happens into events.
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

from ...protocol import CloseCode, ErrorCode, ProtocolViolation, limits
from ...protocol.frames import (
    Ack,
    Direct,
    ErrorFrame,
    GoingAway,
    IceServersFrame,
    Message,
    PresenceFrame,
    ServerFrame,
    Welcome,
    build_ice_servers_request,
    build_ping,
    build_publish,
    build_send,
    build_subscribe,
    build_unsubscribe,
    data_size,
    parse_ice_servers,
    parse_server_frame,
)
from ...protocol.history import Position
from ...protocol.validate import validate_channel, validate_peer_id
from ..emitter import EventEmitter, EventKey, EventStream, Observable
from ..log import ClientLogger, LoggerLike
from .errors import (
    AckTimeoutError,
    ClientStateError,
    DisconnectedError,
    InvalidChannelError,
    InvalidDataError,
    InvalidPeerIdError,
    NotConnectedError,
    OversizedError,
    ReservedChannelError,
    ServerRequestError,
    SignallingConnectError,
    TokenProviderError,
)
from .events import (
    ConnectedEvent,
    DirectEvent,
    DisconnectedEvent,
    Event,
    GoingAwayEvent,
    MessageEvent,
    PresenceEvent,
    ResubscribedEvent,
    ServerErrorEvent,
    StateChangeEvent,
    TokenProviderErrorEvent,
)
from .options import ReconnectOptions, check_seconds
from .positions import Positions
from .reconnect import (
    Backoff,
    DisconnectCause,
    TokenFailureStreak,
    heartbeat_interval,
    judge_close,
    retry_after_seconds,
)
from .state import ClientState, StateMachine
from .transport import (
    CLOSE_TIMEOUT,
    DEFAULT_OPEN_TIMEOUT,
    WebSocketConnection,
    WebSocketFactory,
    close_info,
    websockets_factory,
)
from .url import DEFAULT_URL, connect_url, endpoint_url

__all__ = ["SignallingClient", "TokenProvider"]

TokenProvider = Callable[[], Awaitable[str] | str]
"""A zero-argument callable returning a JWT (or an awaitable of one). Called before every
connect and reconnect."""

_HANDLER_DRAIN = 1.0
"""Seconds ``close()`` waits for running async handlers before cancelling them."""

_S = ClientState


class _AttemptFailed(Exception):
    """One connect attempt ended before a welcome: (code, reason), reason scrubbed."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


@dataclass(eq=False, slots=True)
class _Link:
    """One socket from its welcome until it closes."""

    conn: WebSocketConnection
    last_inbound: float
    last_ping: float = float("-inf")
    local_close: tuple[int, str] | None = None
    """Set when the client itself closed the socket (inactivity, oversized frame, close())."""
    remote_close: tuple[int, str] | None = None
    retry_after: float = 0.0
    """From a ``going_away``: the minimum delay before the next attempt."""
    replay: asyncio.Task[None] | None = None


class _Credential:
    """The api key or the token provider, kept out of reprs and pickles."""

    __slots__ = ("key", "provider")

    def __init__(self, key: str | None, provider: TokenProvider | None) -> None:
        self.key = key
        self.provider = provider

    def __repr__(self) -> str:
        return "<credential redacted>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a client credential cannot be pickled")


def _request_id() -> str:
    return str(uuid.uuid4())


class SignallingClient(Observable[EventKey]):
    """A pub/sub client for the Metered Realtime v1 protocol, with automatic reconnect.

    Exactly one credential: ``api_key`` (a publishable key) or ``token_provider`` (a callable
    returning a JWT, called before every connect). ``url`` is the server's base URL
    (``wss://host[:port]``; ``ws://`` for localhost only; default: the hosted service, as in
    the official SDKs, so a roomwire user always passes it); ``/v1`` is appended.

    Times are in seconds. See ``docs/sdk-signalling.md`` for the events and the reconnect rules.
    """

    def __init__(
        self,
        *,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        token_provider: TokenProvider | None = None,
        logger: LoggerLike | None = None,
        reconnect: bool | ReconnectOptions = True,
        inactivity_timeout: float = limits.INACTIVITY_TIMEOUT,
        token_provider_timeout: float = limits.TOKEN_PROVIDER_TIMEOUT,
        auto_resubscribe: bool = True,
        web_socket_factory: WebSocketFactory | None = None,
        ack_timeout: float = limits.ACK_TIMEOUT,
        welcome_timeout: float = limits.WELCOME_TIMEOUT,
        open_timeout: float = DEFAULT_OPEN_TIMEOUT,
        rng: Callable[[], float] | None = None,
        recover: bool = True,
    ) -> None:
        if (api_key is None) == (token_provider is None):
            raise ValueError("pass exactly one credential: api_key or token_provider")
        if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
            raise ValueError("api_key must be a non-empty string")
        if token_provider is not None and not callable(token_provider):
            raise TypeError("token_provider must be a callable returning a token")
        self._endpoint = endpoint_url(url)
        self._credential = _Credential(api_key, token_provider)
        self._recent_tokens: deque[str] = deque(maxlen=4)
        self._log = ClientLogger(logger, self._secrets)

        if isinstance(reconnect, ReconnectOptions):
            options, self._reconnect_enabled = reconnect, True
        elif isinstance(reconnect, bool):
            options, self._reconnect_enabled = ReconnectOptions(), reconnect
        else:
            raise TypeError("reconnect must be True, False or a ReconnectOptions")
        self._backoff = Backoff(options, rng)
        self._inactivity_timeout = check_seconds(
            "inactivity_timeout", inactivity_timeout, allow_zero=True
        )
        self._heartbeat = heartbeat_interval(self._inactivity_timeout)
        self._token_timeout = check_seconds(
            "token_provider_timeout", token_provider_timeout, allow_zero=False
        )
        self._ack_timeout = check_seconds("ack_timeout", ack_timeout, allow_zero=False)
        self._welcome_timeout = check_seconds("welcome_timeout", welcome_timeout,
                                              allow_zero=False)
        self._open_timeout = check_seconds("open_timeout", open_timeout, allow_zero=False)
        self._auto_resubscribe = bool(auto_resubscribe)
        if not isinstance(recover, bool):
            raise TypeError("recover must be True or False")
        self._recover = recover
        self._positions = Positions()
        self._subscribing: dict[str, tuple[str, Position | None, bool]] = {}
        """requestId of a subscribe in flight -> (channel, the position it recovers from,
        whether it is a resubscribe). Its ack is noted as it is read: frames that follow it
        in the same read (the replay, live messages) are dispatched before the waiting
        request resumes."""
        self._factory: WebSocketFactory = web_socket_factory or websockets_factory(
            self._open_timeout
        )
        self._replay_retries = limits.SUBSCRIBE_REPLAY_RETRIES
        self._replay_retry_delay = limits.SUBSCRIBE_REPLAY_RETRY_DELAY

        self._emitter = EventEmitter(self._log)
        self._machine = StateMachine()
        self._streak = TokenFailureStreak()
        self._link: _Link | None = None
        self._welcome: Welcome | None = None
        self._ice_servers: tuple[dict[str, Any], ...] | None = None
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._subs: dict[str, bool] = {}
        self._connect_task: asyncio.Task[tuple[WebSocketConnection, Welcome]] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._finished = False

    # -- read-only state ---------------------------------------------------------------------

    @property
    def state(self) -> ClientState:
        return self._machine.state

    @property
    def url(self) -> str:
        """The WebSocket endpoint (without credentials)."""
        return self._endpoint

    @property
    def peer_id(self) -> str | None:
        """The peer id from the latest welcome (None before the first one)."""
        return self._welcome.peer_id if self._welcome else None

    @property
    def max_message_size(self) -> int:
        """The payload cap from the latest welcome; 65 536 before the first one."""
        return self._welcome.max_message_size if self._welcome else limits.MAX_MESSAGE_SIZE

    @property
    def expires_at(self) -> float | None:
        return self._welcome.expires_at if self._welcome else None

    @property
    def ice_servers(self) -> tuple[dict[str, Any], ...] | None:
        return self._ice_servers

    @property
    def subscriptions(self) -> dict[str, bool]:
        """Tracked channels (replayed after a reconnect) -> their include_sender_metadata."""
        return dict(self._subs)

    def __repr__(self) -> str:
        return (f"SignallingClient(state={self.state.value!r}, peer_id={self.peer_id!r}, "
                f"url={self._endpoint!r})")

    def __reduce__(self) -> NoReturn:
        raise TypeError("a SignallingClient cannot be pickled")

    # -- events: on/once/off come from Observable ----------------------------------------------

    def listener_count(self, event: EventKey) -> int:
        return self._emitter.listener_count(event)

    def events(self, *events: EventKey, maxsize: int = 4096) -> EventStream:
        """An async iterator over events (all of them, or only those named). It keeps at most
        ``maxsize`` unread events, dropping the oldest (0: unbounded), and ends when the client
        reaches ``closed``. Use it as ``async with client.events("message") as stream:``."""
        return self._emitter.stream(events, maxsize)

    def _emit(self, event: Event) -> None:
        self._emitter.emit(event)

    def _set_state(self, new: ClientState) -> None:
        change = self._machine.move(new)
        if change is not None:
            self._emit(StateChangeEvent(*change))

    # -- connect / close ---------------------------------------------------------------------

    async def connect(self) -> ConnectedEvent:
        """Open the connection and wait for the welcome. Allowed from ``idle`` and ``closed``.

        A failed first connect is not retried: it raises ``SignallingConnectError`` (with the
        close code, or the HTTP status of a refused upgrade) or ``TokenProviderError``, and the
        client is ``closed``. Reconnecting starts only after a welcome."""
        if self.state not in (_S.IDLE, _S.CLOSED) or self._connect_task is not None:
            raise ClientStateError("connect", self.state.value)
        self._closing = False
        self._finished = False
        self._backoff.reset()
        self._streak.success()
        self._set_state(_S.CONNECTING)
        task = asyncio.ensure_future(self._attempt())
        self._connect_task = task
        try:
            conn, welcome = await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._closing and (current is None or current.cancelling() == 0):
                raise SignallingConnectError(
                    CloseCode.NORMAL, "close() was called while connecting"
                ) from None
            task.cancel()
            self._to_closed()
            raise
        except _AttemptFailed as failure:
            self._to_closed()
            raise SignallingConnectError(failure.code, failure.reason) from None
        except TokenProviderError:
            self._to_closed()
            raise
        finally:
            self._connect_task = None
        if self._closing:
            self._discard(conn)
            raise SignallingConnectError(CloseCode.NORMAL, "close() was called while connecting")
        event = self._adopt(conn, welcome, is_reconnect=False)
        self._supervisor = asyncio.create_task(self._supervise())
        return event

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "client requested close"
                    ) -> None:
        """Close for good: pending requests fail with ``DisconnectedError``, no reconnect, the
        client ends in ``closed`` with one ``disconnected(will_reconnect=False)`` event (when it
        was connected or reconnecting). Idempotent. Waits up to 1 s for running async
        handlers. ``connect()`` may be called again afterwards."""
        if code != CloseCode.NORMAL and not 3000 <= code <= 4999:
            raise ValueError("close code must be 1000 or in 3000-4999")
        self._closing = True
        current = asyncio.current_task()
        try:
            if self._connect_task is not None and not self._connect_task.done():
                self._connect_task.cancel()
            supervisor, self._supervisor = self._supervisor, None
            if supervisor is not None and supervisor is not current and not supervisor.done():
                supervisor.cancel()
                await asyncio.wait({supervisor})
            link, self._link = self._link, None
            if link is not None:
                link.local_close = (code, reason)
                await self._close_conn(link.conn, code, reason)
        finally:
            # Even if close() itself is cancelled, the client must not stay half-open.
            if self.state in (_S.CONNECTED, _S.RECONNECTING):
                self._finish(code, reason, DisconnectCause.CLIENT_CLOSED)
            else:
                self._to_closed()
        await self._emitter.drain(_HANDLER_DRAIN)
        await self._sweep_background()

    async def __aenter__(self) -> SignallingClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _to_closed(self) -> None:
        """End without a disconnected event (first connect failed, or close() before any
        welcome)."""
        self._fail_pending(CloseCode.NORMAL, "closed")
        self._subs.clear()
        if self.state is not _S.CLOSED:
            self._set_state(_S.CLOSED)
        self._finished = True
        self._emitter.end_streams()

    def _finish(self, code: int, reason: str, cause: str) -> None:
        """The one terminal path after a welcome: closed, then exactly one
        ``disconnected(will_reconnect=False)``."""
        if self._finished:
            return
        self._finished = True
        link, self._link = self._link, None
        if link is not None:
            self._discard(link.conn)
        self._fail_pending(code, reason)
        self._subs.clear()
        self._set_state(_S.CLOSED)
        self._log.info("disconnected for good (code %s, %s): %s", code, cause, reason)
        self._emit(DisconnectedEvent(code, reason, False, cause))
        self._emitter.end_streams()

    # -- one connect attempt -----------------------------------------------------------------

    async def _attempt(self) -> tuple[WebSocketConnection, Welcome]:
        """Token, socket, welcome. Raises TokenProviderError or _AttemptFailed."""
        target = await self._connect_url()
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
            async with asyncio.timeout(self._open_timeout):
                conn = await self._factory(target)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            raise _AttemptFailed(
                CloseCode.ABNORMAL, f"opening the socket timed out after {self._open_timeout:g} s"
            ) from None
        except Exception as exc:
            code, reason = close_info(exc)
            raise _AttemptFailed(code, self._log.scrub(reason)) from None
        try:
            welcome = await self._await_welcome(conn)
        except BaseException:
            self._discard(conn)
            raise
        return conn, welcome

    async def _connect_url(self) -> str:
        cred = self._credential
        if cred.key is not None:
            return connect_url(self._endpoint, key=cred.key)
        timeout = asyncio.timeout(self._token_timeout)
        error: TokenProviderError
        try:
            async with timeout:
                token = await self._call_provider()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, TimeoutError) and timeout.expired():
                error = TokenProviderError(
                    f"the token provider did not answer within {self._token_timeout:g} s")
            else:
                error = TokenProviderError(
                    self._log.scrub(f"the token provider raised {type(exc).__name__}: {exc}"))
        else:
            if isinstance(token, str) and token.strip():
                self._streak.success()
                self._recent_tokens.append(token)
                return connect_url(self._endpoint, token=token)
            what = "an empty string" if isinstance(token, str) else type(token).__name__
            error = TokenProviderError(
                f"the token provider returned {what}, not a non-empty string")
        self._log.warning("%s", error.message)
        if self._streak.failure():
            self._emit(TokenProviderErrorEvent(self._streak.count, error))
        raise error

    async def _call_provider(self) -> object:
        provider = self._credential.provider
        assert provider is not None
        result: object = provider()
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _await_welcome(self, conn: WebSocketConnection) -> Welcome:
        try:
            async with asyncio.timeout(self._welcome_timeout):
                while True:
                    try:
                        raw = await conn.recv()
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        raise _AttemptFailed(*self._conn_close_info(conn, exc)) from None
                    frame = parse_server_frame(raw) if isinstance(raw, str) else None
                    if isinstance(frame, Welcome):
                        return frame
                    self._log.debug("dropped a frame received before the welcome")
        except TimeoutError:
            await self._close_conn(conn, CloseCode.CLIENT_INACTIVITY, "welcome timeout")
            raise _AttemptFailed(
                CloseCode.CLIENT_INACTIVITY,
                f"no welcome within {self._welcome_timeout:g} s",
            ) from None

    def _conn_close_info(self, conn: WebSocketConnection, exc: BaseException) -> tuple[int, str]:
        rcvd = getattr(exc, "rcvd", None)
        code = getattr(rcvd, "code", None)
        if isinstance(code, int):
            return code, self._log.scrub(str(getattr(rcvd, "reason", "") or ""))
        code = getattr(conn, "close_code", None)
        if isinstance(code, int):
            return code, self._log.scrub(str(getattr(conn, "close_reason", "") or ""))
        code, reason = close_info(exc)
        return code, self._log.scrub(reason)

    def _adopt(self, conn: WebSocketConnection, welcome: Welcome, *, is_reconnect: bool
               ) -> ConnectedEvent:
        link = _Link(conn, asyncio.get_running_loop().time())
        self._link = link
        self._welcome = welcome
        servers = parse_ice_servers(welcome.metadata)
        if servers is not None or not is_reconnect:
            self._ice_servers = tuple(servers) if servers is not None else None
        self._backoff.reset()
        self._set_state(_S.CONNECTED)
        self._log.info("connected as %s%s", welcome.peer_id, " (reconnect)" if is_reconnect
                       else "")
        event = ConnectedEvent(
            peer_id=welcome.peer_id,
            server_time=welcome.server_time,
            expires_at=welcome.expires_at,
            max_message_size=welcome.max_message_size,
            ice_servers=self._ice_servers,
            is_reconnect=is_reconnect,
            metadata=welcome.metadata,
        )
        self._emit(event)
        if is_reconnect and self._auto_resubscribe and self._subs and self._link is link:
            link.replay = asyncio.create_task(self._replay(link))
        return event

    # -- the life of a connection ------------------------------------------------------------

    async def _supervise(self) -> None:
        """Serve the current socket; on a drop, decide, back off, reconnect; repeat. Every way
        out of here (other than close(), which takes over) goes through ``_finish``."""
        try:
            while True:
                link = self._link
                if link is None:
                    return
                code, reason = await self._serve(link)
                if self._closing:
                    return
                self._link = None
                self._discard(link.conn)
                self._fail_pending(code, reason)
                verdict = judge_close(code, reconnect_enabled=self._reconnect_enabled)
                if not verdict.reconnect:
                    assert verdict.cause is not None
                    self._finish(code, reason, verdict.cause)
                    return
                self._backoff.add_floor(max(verdict.min_delay, link.retry_after))
                if not self._auto_resubscribe:
                    self._subs.clear()
                self._set_state(_S.RECONNECTING)
                self._log.info("connection lost (code %s): %s; reconnecting", code, reason)
                self._emit(DisconnectedEvent(code, reason, True))
                if not await self._reconnect(code, reason):
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: never leave the client stuck
            self._log.exception("the connection supervisor failed", exc)
            self._finish(CloseCode.INTERNAL_ERROR, "internal client error",
                         DisconnectCause.INTERNAL_ERROR)

    async def _reconnect(self, code: int, reason: str) -> bool:
        """Try until a welcome (True) or a give-up (False, after ``_finish``)."""
        last_code, last_reason = code, reason
        last_cause: str = DisconnectCause.RECONNECT_EXHAUSTED
        while True:
            delay = self._backoff.next_delay()
            if delay is None:
                n = self._backoff.attempts
                self._finish(last_code,
                             f"gave up after {n} reconnect attempt(s); last error: {last_reason}",
                             last_cause)
                return False
            self._log.debug("reconnect attempt %s in %.3f s", self._backoff.attempts, delay)
            await asyncio.sleep(delay)
            try:
                conn, welcome = await self._attempt()
            except TokenProviderError as err:
                last_reason, last_cause = err.message, DisconnectCause.TOKEN_PROVIDER_FAILED
                continue
            except _AttemptFailed as failure:
                last_code, last_reason = failure.code, failure.reason
                last_cause = DisconnectCause.RECONNECT_EXHAUSTED
                verdict = judge_close(failure.code, reconnect_enabled=True)
                if not verdict.reconnect:
                    assert verdict.cause is not None
                    self._finish(failure.code, failure.reason, verdict.cause)
                    return False
                self._backoff.add_floor(verdict.min_delay)
                self._log.debug("reconnect attempt failed (code %s): %s", failure.code,
                                failure.reason)
                continue
            self._adopt(conn, welcome, is_reconnect=True)
            return True

    async def _serve(self, link: _Link) -> tuple[int, str]:
        """Run the reader (and the keepalive) until the socket ends; its (code, reason)."""
        tasks = [asyncio.create_task(self._read_loop(link))]
        if self._heartbeat is not None:
            tasks.append(asyncio.create_task(self._keepalive(link, self._heartbeat)))
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            if link.replay is not None:
                link.replay.cancel()
                tasks.append(link.replay)
            await asyncio.gather(*tasks, return_exceptions=True)
        if link.local_close is not None:
            return link.local_close
        if link.remote_close is not None:
            return link.remote_close
        return CloseCode.ABNORMAL, "connection lost"

    async def _read_loop(self, link: _Link) -> None:
        conn = link.conn
        loop = asyncio.get_running_loop()
        while True:
            try:
                raw = await conn.recv()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                link.remote_close = self._conn_close_info(conn, exc)
                return
            link.last_inbound = loop.time()
            if not isinstance(raw, str):
                self._log.debug("dropped a binary frame")
                continue
            if len(raw) > limits.MAX_CLIENT_INBOUND_FRAME:
                link.local_close = (CloseCode.MESSAGE_TOO_BIG, "inbound frame too big")
                await self._close_conn(conn, CloseCode.MESSAGE_TOO_BIG, "message too big")
                return
            frame = parse_server_frame(raw)
            if frame is None:
                self._log.debug("dropped a malformed or unknown frame")
                continue
            try:
                self._dispatch(link, frame)
            except Exception as exc:
                self._log.exception("handling a %s frame failed", exc, type(frame).__name__)

    async def _keepalive(self, link: _Link, heartbeat: float) -> None:
        """App-level ping after ``heartbeat`` seconds of inbound silence (and again every
        ``heartbeat`` while it lasts); close with 4000 after ``inactivity_timeout``."""
        loop = asyncio.get_running_loop()
        limit = self._inactivity_timeout
        while True:
            now = loop.time()
            quiet_since = link.last_inbound
            if now - quiet_since >= limit:
                self._log.warning("nothing from the server for %.1f s; reconnecting",
                                  now - quiet_since)
                link.local_close = (CloseCode.CLIENT_INACTIVITY, "inactivity timeout")
                await self._close_conn(link.conn, CloseCode.CLIENT_INACTIVITY,
                                       "inactivity timeout")
                return
            ping_due = max(quiet_since, link.last_ping) + heartbeat
            if now >= ping_due:
                link.last_ping = now
                try:
                    async with asyncio.timeout(heartbeat):
                        await link.conn.send(build_ping())
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._log.debug("sending a ping failed: %s", exc)
                continue
            await asyncio.sleep(max(min(ping_due, quiet_since + limit) - now, 0.001))

    def _dispatch(self, link: _Link, frame: ServerFrame) -> None:
        if isinstance(frame, Message):
            if frame.position is not None and self._recover and frame.channel in self._subs:
                self._positions.saw(frame.channel, frame.position)
            self._emit(MessageEvent(frame.channel, frame.sender_peer_id, frame.data,
                                    frame.sender_metadata, frame.position))
        elif isinstance(frame, Ack):
            fut = self._pending.get(frame.request_id)
            if fut is not None and not fut.done():
                # An ack with the history extension's fields is handed to the request.
                fut.set_result(frame if frame.has_history or frame.position is not None
                               else None)
                sub = self._subscribing.pop(frame.request_id, None)
                if sub is not None:
                    self._subscribe_acked(sub[0], frame, sub[1], sub[2])
        elif isinstance(frame, PresenceFrame):
            self._emit(PresenceEvent(frame.channel, frame.joined, frame.left))
        elif isinstance(frame, Direct):
            self._emit(DirectEvent(frame.sender_peer_id, frame.data, frame.sender_metadata))
        elif isinstance(frame, ErrorFrame):
            rid = frame.request_id
            fut = self._pending.get(rid) if rid is not None else None
            if fut is not None:
                if not fut.done():
                    fut.set_exception(ServerRequestError(frame.code, frame.message, rid))
            elif frame.code == ErrorCode.UNKNOWN_TYPE and rid is None:
                self._log.debug("ignored an uncorrelated unknown_type error")
            else:
                self._emit(ServerErrorEvent(frame.code, frame.message, rid))
        elif isinstance(frame, GoingAway):
            link.retry_after = retry_after_seconds(frame.retry_after_ms)
            self._log.info("server going away; retry after %.3f s", link.retry_after)
            self._emit(GoingAwayEvent(round(link.retry_after * 1000)))
        elif isinstance(frame, IceServersFrame):
            fut = self._pending.get(frame.request_id)
            if fut is not None and not fut.done():
                fut.set_result(frame)
        elif isinstance(frame, Welcome):
            self._log.debug("ignored a second welcome on the same socket")
        # Pong: nothing to do; every inbound frame already fed the watchdog.

    async def _replay(self, link: _Link) -> None:
        """Resubscribe every tracked channel after a reconnect welcome."""
        channels = list(self._subs)
        await asyncio.gather(*(self._replay_one(link, c) for c in channels))

    async def _replay_one(self, link: _Link, channel: str) -> None:
        for attempt in range(self._replay_retries + 1):
            if self._link is not link or channel not in self._subs:
                return
            rid = _request_id()
            asked = self._positions.get(channel) if self._recover else None
            text = build_subscribe(channel, rid, self._subs[channel], history=self._recover,
                                   recover=asked)
            self._subscribing[rid] = (channel, asked, True)
            try:
                await self._request(link, rid, text)  # the ack emitted ``resubscribed``
                return
            except DisconnectedError:
                return
            except (ServerRequestError, AckTimeoutError) as exc:
                if attempt == self._replay_retries:
                    self._log.warning("resubscribing to a channel failed for good: %s", exc)
                    if isinstance(exc, ServerRequestError):
                        self._emit(ServerErrorEvent(exc.code, exc.server_message, rid))
                    return
                self._log.debug("resubscribing failed (%s); retrying", exc.code)
            finally:
                self._subscribing.pop(rid, None)
            await asyncio.sleep(self._replay_retry_delay)

    # -- requests ----------------------------------------------------------------------------

    def _subscribe_acked(self, channel: str, ack: Ack, asked: Position | None,
                         resubscribe: bool) -> None:
        """A subscribe's ack, as it is read: note its history fields and, for a resubscribe,
        emit ``resubscribed`` before the replayed messages that follow it."""
        recovered: bool | None = None
        position = None
        if self._recover and channel in self._subs:
            recovered = self._positions.subscribed(channel, ack, asked)
            position = ack.history
        if not resubscribe:
            return
        if recovered is False:
            self._log.info("missed messages on a channel could not be recovered; the app "
                           "should resync it")
        self._emit(ResubscribedEvent(channel, recovered, position))

    def _require_link(self) -> _Link:
        link = self._link
        if self.state is not _S.CONNECTED or link is None:
            raise NotConnectedError(self.state.value)
        return link

    def _register(self, rid: str) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        return fut

    async def _send_frame(self, link: _Link, text: str) -> None:
        try:
            await link.conn.send(text)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            code, reason = self._conn_close_info(link.conn, exc)
            raise DisconnectedError(code, reason) from None

    async def _await_ack(self, rid: str, fut: asyncio.Future[Any]) -> Any:
        try:
            async with asyncio.timeout(self._ack_timeout):
                return await fut
        except TimeoutError:
            raise AckTimeoutError(rid, self._ack_timeout) from None
        finally:
            self._pending.pop(rid, None)

    async def _request(self, link: _Link, rid: str, text: str) -> Any:
        """Send a request and wait for its answer: None for an ``ack``, the frame for a reply
        of its own type (``ice_servers``)."""
        fut = self._register(rid)
        try:
            await self._send_frame(link, text)
        except BaseException:
            self._pending.pop(rid, None)
            raise
        return await self._await_ack(rid, fut)

    def _fail_pending(self, code: int, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(DisconnectedError(code, reason))

    @staticmethod
    def _channel(channel: str, *, allow_reserved: bool = False) -> str:
        try:
            return validate_channel(channel, allow_reserved=allow_reserved)
        except ProtocolViolation as exc:
            if exc.code == ErrorCode.CHANNEL_RESERVED:
                raise ReservedChannelError(exc.message) from None
            raise InvalidChannelError(exc.message) from None

    def _checked_size(self, data: Any) -> None:
        try:
            size = data_size(data)
        except (TypeError, ValueError) as exc:
            raise InvalidDataError(f"data cannot be sent as JSON: {exc}") from None
        cap = self.max_message_size
        if size > cap:
            raise OversizedError(size, cap)

    async def subscribe(self, channel: str, include_sender_metadata: bool = False) -> None:
        """Join ``channel``; returns when the server acknowledged. The channel is tracked and
        replayed after every reconnect. A presence event with the channel's roster follows.

        Raises InvalidChannelError / ReservedChannelError, NotConnectedError,
        ServerRequestError (e.g. ``channel_not_authorized``), AckTimeoutError,
        DisconnectedError (the channel stays tracked: it is replayed after the reconnect)."""
        channel = self._channel(channel)
        link = self._require_link()
        rid = _request_id()
        include = bool(include_sender_metadata)
        text = build_subscribe(channel, rid, include, history=self._recover)
        had, previous = channel in self._subs, self._subs.get(channel, False)
        self._subs[channel] = include
        fut = self._register(rid)
        self._subscribing[rid] = (channel, None, False)
        try:
            try:
                await self._send_frame(link, text)
            except BaseException:
                self._pending.pop(rid, None)
                self._untrack(channel, had, previous)
                raise
            try:
                await self._await_ack(rid, fut)
            except ServerRequestError:
                self._untrack(channel, had, previous)
                raise
        finally:
            self._subscribing.pop(rid, None)

    def _untrack(self, channel: str, had: bool, previous: bool) -> None:
        if had:
            if channel in self._subs:
                self._subs[channel] = previous
        else:
            self._subs.pop(channel, None)

    async def unsubscribe(self, channel: str) -> None:
        """Leave ``channel`` and stop tracking it. While reconnecting it is only untracked
        (there is no server-side subscription to remove until the replay)."""
        channel = self._channel(channel, allow_reserved=True)
        self._positions.forget(channel)
        if self.state is _S.RECONNECTING:
            self._subs.pop(channel, None)
            return
        link = self._require_link()
        self._subs.pop(channel, None)
        rid = _request_id()
        await self._request(link, rid, build_unsubscribe(channel, rid))

    async def publish(self, channel: str, data: Any) -> None:
        """Broadcast ``data`` (any JSON value) to the other subscribers of ``channel``.

        Raises InvalidChannelError / ReservedChannelError, InvalidDataError, OversizedError
        (before anything is sent), NotConnectedError, ServerRequestError, AckTimeoutError,
        DisconnectedError."""
        channel = self._channel(channel)
        self._checked_size(data)
        link = self._require_link()
        rid = _request_id()
        ack = await self._request(link, rid, build_publish(channel, data, rid))
        if isinstance(ack, Ack) and self._recover and channel in self._subs:
            # Its own publishes never come back: the ack tells how far the channel moved.
            self._positions.saw(channel, ack.position)

    async def send(self, peer_id: str, data: Any) -> None:
        """Send ``data`` to every connection of ``peer_id`` (no channel involved). Raises
        InvalidPeerIdError, InvalidDataError, OversizedError, NotConnectedError,
        ServerRequestError (e.g. ``peer_not_found``), AckTimeoutError, DisconnectedError."""
        try:
            peer_id = validate_peer_id(peer_id)
        except ProtocolViolation as exc:
            raise InvalidPeerIdError(exc.message) from None
        self._checked_size(data)
        link = self._require_link()
        rid = _request_id()
        await self._request(link, rid, build_send(peer_id, data, rid))

    async def fetch_ice_servers(self) -> tuple[dict[str, Any], ...] | None:
        """Ask a roomwire server for fresh ICE servers (its ``ice_servers`` extension,
        docs/protocol.md) and adopt them as ``ice_servers``; returns them. TURN credentials
        minted per connection expire: ``MeteredPeer`` calls this before they do, so that a
        connection rebuilt late in a long session still gets through the relay.

        A reply without servers keeps the current list (as a reconnect welcome without ICE
        servers does) and returns None. Raises ServerRequestError with code ``unknown_type``
        against a server without the extension (the official Metered service), and
        NotConnectedError, AckTimeoutError, DisconnectedError."""
        link = self._require_link()
        rid = _request_id()
        reply = await self._request(link, rid, build_ice_servers_request(rid))
        if not isinstance(reply, IceServersFrame) or reply.ice_servers is None:
            return None
        servers = tuple(reply.ice_servers)
        if self._link is link:
            self._ice_servers = servers
        return servers

    # -- housekeeping ------------------------------------------------------------------------

    def _secrets(self) -> Iterable[str]:
        if self._credential.key is not None:
            yield self._credential.key
        yield from self._recent_tokens

    async def _close_conn(self, conn: WebSocketConnection, code: int, reason: str) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT + 0.5):
                await conn.close(code, reason)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._log.debug("closing the socket: %s", exc)

    def _discard(self, conn: WebSocketConnection) -> None:
        """Close a socket in the background (it may already be closed)."""
        task = asyncio.ensure_future(self._close_conn(conn, CloseCode.NORMAL, ""))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _sweep_background(self) -> None:
        if self._background:
            await asyncio.wait(set(self._background), timeout=CLOSE_TIMEOUT + 1.0)
