"""One authenticated connection: request validation, dispatch and acks.

``Session`` knows nothing about sockets: a transport subclass provides ``send``, ``send_wire``
and ``close``. Every request is validated field by field so that each mistake gets its own
error code, correlated by ``requestId`` whenever the request carried a valid one.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

import msgspec
from mypy_extensions import mypyc_attr

from ..protocol import Action, CloseCode, ErrorCode, frames
from ..protocol.history import (
    Position,
    encode_position_ack,
    encode_subscribe_ack,
    recover_problem,
)
from ..protocol.ice import ICE_SERVERS_TYPE
from ..protocol.limits import MAX_REQUEST_ID_CHARS
from ..protocol.patterns import is_pattern, pattern_problem
from ..protocol.validate import (
    channel_problem,
    is_reserved_channel,
    peer_id_ok,
    peer_id_problem,
    request_id_ok,
    request_id_problem,
    utf8_ok,
)
from .auth import Principal
from .config import ServerConfig
from .history import HistoryRead
from .hub import Hub
from .limits import AppUsage, TokenBucket, UsageMeter
from .store import App

_SCOPE_CACHE_MAX = 256
#: Frames a client may send while its subscribe waits for the cluster (one Redis round trip).
_HELD_MAX = 1024


class SessionCounters(Protocol):
    """The counters a session bumps (``metrics.Metrics`` is one)."""

    frames_in: Counter[str]
    """Frames received by type; bumped in place for the hot ``send`` and ``publish``."""

    def count_frame(self, kind: str) -> None: ...

    def count_error(self, code: str) -> None: ...


class Services(Protocol):
    """What a session needs from its node."""

    hub: Hub
    config: ServerConfig
    usage: UsageMeter

    @property
    def metrics(self) -> SessionCounters: ...

    def app(self, app_id: str) -> App | None: ...


#: The attributes ``Session.__init__`` sets, for a subclass's ``__slots__``.
SESSION_SLOTS = (
    "_drop_noted", "_held", "_history_channels", "_scope", "_subscribing", "_usage", "_usage_clock",
    "app_id", "attached", "bucket", "close_code", "close_reason", "closed", "counters",
    "may_send", "peer_id", "peer_json", "peer_metadata", "ping_bucket", "presence_entry",
    "principal", "quota_limit", "receives_presence", "services", "subscriptions",
)


_NO_LAYOUT: tuple[str, ...] = ()


# A transport may be written in Python (the tests' capturing session is one) even where this
# module is compiled (docs/operations.md, "Compiled modules").
@mypyc_attr(allow_interpreted_subclasses=True)
class Session(ABC):
    """The protocol side of a connection. Subclasses supply the transport."""

    # No layout of its own, so that a transport may also derive from an extension type
    # (picows' listener); such a transport lists ``SESSION_SLOTS`` in its own ``__slots__``.
    # A server holds one session per connection, and slots take a kilobyte less than the
    # dict of 35 attributes. Subclasses without ``__slots__`` get a dict as usual.
    __slots__ = _NO_LAYOUT

    def __init__(self, services: Services, principal: Principal) -> None:
        self.services = services
        self.counters = services.metrics
        self.principal = principal
        self.app_id = principal.app_id
        self.peer_id = principal.peer_id
        self.peer_json = frames.encode_json(principal.peer_id)
        self.peer_metadata = principal.peer_metadata
        self.presence_entry = frames.presence_entry(self.peer_json, principal.peer_metadata)
        self.receives_presence = principal.can(Action.PRESENCE)
        self.may_send = principal.can(Action.SEND)
        self.subscriptions: dict[str, bool] = {}
        self._scope: dict[tuple[str, str], tuple[str, str] | None] = {}
        app = services.app(principal.app_id)
        self.quota_limit = app.max_messages_per_period if app else None
        """The app's message quota, kept current by ``app_changed``."""
        self._usage: AppUsage | None = None
        self._usage_clock = services.usage.clock
        cfg = services.config
        rate = app.rate_limit if app and app.rate_limit is not None else cfg.rate_limit
        burst = app.rate_burst if app and app.rate_burst is not None else cfg.rate_burst
        self.bucket = TokenBucket(rate, burst)
        # Pings have their own small budget: the official clients send one after 20 s of
        # silence, so a socket pinging faster than this is flooding (docs/protocol.md).
        self.ping_bucket = TokenBucket(cfg.ping_rate, cfg.ping_burst)
        self.closed = False
        self.close_code: int | None = None
        """How the connection ended, recorded by the transport (the first close frame, sent
        or received; 1006 when it ended without one): ``peer_disconnected`` webhooks carry
        it."""
        self.close_reason = ""
        self.attached = False
        """True once ``opened`` registered the session with the hub."""
        self._drop_noted = False
        """Whether ``note_drop`` ran (once per connection)."""
        self._held: list[bytes | str] | None = None
        """Cluster: frames that arrived while a subscribe waits for Redis (handled after it,
        so the client's requests keep their order)."""
        self._subscribing: str | None = None
        self._history_channels: set[str] | None = None
        """Channels this socket opted in to history on (roomwire's extension); None until
        the first, so sockets that never do cost nothing."""

    # -- transport ---------------------------------------------------------------------------

    @abstractmethod
    def send(self, payload: bytes) -> None:
        """Queue one frame."""

    @abstractmethod
    def send_wire(self, wire: bytes) -> None:
        """Queue an already framed message."""

    @abstractmethod
    def close(self, code: int, reason: str) -> None:
        """Close the connection with a close code."""

    # -- lifecycle ---------------------------------------------------------------------------

    def welcome_frame(self, server_time: int, ice_servers: list[dict[str, object]] | None) -> bytes:
        p = self.principal
        metadata = dict(p.metadata) if p.metadata else {}
        if ice_servers and "iceServers" not in metadata:
            metadata["iceServers"] = ice_servers
        return frames.encode_welcome(
            p.peer_id, p.expires_at, server_time, self.services.config.max_message_size,
            metadata or None,
        )

    def fresh_ice_servers(self) -> list[dict[str, object]] | None:
        """ICE servers minted now for this connection (the transport's node knows them)."""
        return None

    def _ice_reply(self) -> Any:
        """What roomwire's ``ice_servers`` extension answers (docs/protocol.md): the list a
        welcome would carry now. A JWT's own ``metadata.iceServers`` wins, as in the welcome."""
        md = self.principal.metadata
        if md and "iceServers" in md:
            return md["iceServers"]
        return self.fresh_ice_servers()

    def opened(self, then: Callable[[], None] | None = None) -> None:
        """Register with the hub; ``then`` (the welcome) runs once the node can route to this
        peer: at once on one node, after Redis confirmed the peer's channel in a cluster."""
        ready = self.services.hub.attach(self)
        self.attached = True
        if then is None:
            return
        if ready is None or ready.done():
            then()
            return

        def routed(f: asyncio.Future[None]) -> None:
            if not self.closed and not f.cancelled() and f.exception() is None:
                self.services.hub.welcomed(self)
                then()

        ready.add_done_callback(routed)

    def ended(self) -> None:
        """The connection is gone: leave every channel (others hear ``left``). A session that
        was refused at admission was never attached and has nothing to undo."""
        if self.closed:
            return
        self.closed = True
        if self.attached:
            self.note_drop()
            channels = list(self.subscriptions)
            if self._subscribing is not None and self._subscribing not in self.subscriptions:
                channels.append(self._subscribing)
            self.services.hub.detach(self, channels)
        self.subscriptions.clear()
        self._held = None

    def note_drop(self) -> None:
        """The socket gets no more frames (it is closing or gone): a token identity's place
        on the channels the ``replay`` setting covers is noted now, once, also when leaving
        the channels waits (a shutdown's presence linger: the client may be back on another
        node before that)."""
        if self._drop_noted or not self.attached:
            return
        self._drop_noted = True
        if self.principal.via_token and self.subscriptions:
            self.services.hub.note_drop(self, list(self.subscriptions))

    def rescope(self, principal: Principal) -> bool:
        """Adopt a changed scope (the key was edited). False when a subscribed channel is no
        longer covered, which the caller answers by closing with 4003."""
        self.principal = principal
        self._scope.clear()
        self.receives_presence = principal.can(Action.PRESENCE)
        self.may_send = principal.can(Action.SEND)
        if self.subscriptions and not principal.can(Action.SUBSCRIBE):
            return False
        return all(principal.subscription_allowed(c) for c in self.subscriptions)

    def app_changed(self, app: App | None) -> None:
        """The app's record changed (its limits were edited): adopt its message quota."""
        self.quota_limit = app.max_messages_per_period if app else None

    # -- requests ----------------------------------------------------------------------------

    def _error(self, code: str, message: str, request_id: str | None) -> None:
        self.counters.count_error(code)
        self.send(frames.encode_error(code, message, request_id))

    def handle_text(self, payload: bytes | str) -> None:
        """Process one text frame from the client."""
        if self._held is not None:
            if len(self._held) >= _HELD_MAX:
                self.close(CloseCode.OVER_MESSAGE_RATE, "message rate limit exceeded")
                return
            self._held.append(payload)
            return
        try:
            req = frames.decode_request(payload)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            # DecodeError (ValidationError included): not JSON, or not an object.
            # UnicodeDecodeError: invalid UTF-8 inside a JSON string. RecursionError: nesting
            # deeper than the decoder allows. All three are the client's malformed frame.
            if self._spend():
                self._error(ErrorCode.MALFORMED_MESSAGE, "frame is not a JSON object", None)
            return
        kind = req.type
        if kind == "ping":
            if not self.ping_bucket.take():
                self.over_ping_budget("protocol")
                return
            rid = req.requestId
            self.counters.count_frame("ping")
            # Echo only a valid requestId: a ping must not become an amplifier.
            self.send(frames.encode_pong(rid if request_id_problem(rid) is None else None))
            return
        if not self.bucket.take():
            self.close(CloseCode.OVER_MESSAGE_RATE, "message rate limit exceeded")
            return
        rid = req.requestId
        if rid is not None and not request_id_ok(rid):
            self._error(ErrorCode.MALFORMED_MESSAGE,
                        "requestId must be a non-empty string of at most "
                        f"{MAX_REQUEST_ID_CHARS} characters", None)
            return
        # The order of these tests is only about speed: a direct send (every SDP and ICE
        # candidate) is the most frequent request.
        if kind == "send":
            self.counters.frames_in["send"] += 1
            self._send(req, rid)
        elif kind == "publish":
            self.counters.frames_in["publish"] += 1
            self._publish(req, rid)
        elif kind == "subscribe":
            self.counters.count_frame("subscribe")
            self._subscribe(req, rid)
        elif kind == "unsubscribe":
            self.counters.count_frame("unsubscribe")
            self._unsubscribe(req, rid)
        elif kind == ICE_SERVERS_TYPE:
            self.counters.count_frame(ICE_SERVERS_TYPE)
            self.send(frames.encode_ice_servers(rid, self._ice_reply()))
        elif isinstance(kind, str):
            self.counters.count_frame("unknown")
            self._error(ErrorCode.UNKNOWN_TYPE, f"unknown frame type {kind[:40]!r}", rid)
        else:
            self.counters.count_frame("malformed")
            self._error(ErrorCode.MALFORMED_MESSAGE, "frame has no string 'type'", rid)

    def handle_binary(self) -> None:
        """Binary frames carry nothing in this protocol."""
        if self._spend():
            self._error(ErrorCode.MALFORMED_MESSAGE, "binary frames are not supported; send text",
                        None)

    def over_ping_budget(self, kind: str) -> None:
        """The socket pinged faster than its ping budget allows (``kind``: ``websocket`` or
        ``protocol``)."""
        self.close(CloseCode.OVER_MESSAGE_RATE, "ping rate limit exceeded")

    def _spend(self) -> bool:
        if self.bucket.take():
            return True
        self.close(CloseCode.OVER_MESSAGE_RATE, "message rate limit exceeded")
        return False

    def _check_channel(self, channel: object, action: str) -> tuple[str, str] | None:
        """None when ``action`` on ``channel`` is allowed, else (code, message). Cached per
        channel, since clients publish to the same few channels over and over."""
        if not isinstance(channel, str):
            return ErrorCode.INVALID_CHANNEL, "channel must be a string"
        cache_key = (action, channel)
        try:
            return self._scope[cache_key]
        except KeyError:
            pass
        verdict: tuple[str, str] | None
        pattern = action == Action.SUBSCRIBE and is_pattern(channel)
        problem = channel_problem(channel)
        if problem is None and pattern:
            problem = pattern_problem(channel)
        if problem is not None:
            verdict = (ErrorCode.INVALID_CHANNEL, problem)
        elif is_reserved_channel(channel):
            verdict = (ErrorCode.CHANNEL_RESERVED,
                       "channels starting with _metered/, _internal/ or _system/ are reserved")
        elif not self.principal.can(action):
            verdict = (ErrorCode.ACTION_NOT_PERMITTED, f"this credential may not {action}")
        elif pattern and not self.principal.pattern_allowed(channel):
            verdict = (ErrorCode.CHANNEL_NOT_AUTHORIZED,
                       "this credential's channel patterns do not cover every channel this "
                       "pattern matches")
        elif not pattern and not self.principal.channel_allowed(channel):
            verdict = (ErrorCode.CHANNEL_NOT_AUTHORIZED,
                       "this credential's channel patterns do not cover this channel")
        else:
            verdict = None
        if len(self._scope) >= _SCOPE_CACHE_MAX:
            self._scope.clear()
        self._scope[cache_key] = verdict
        return verdict

    def _quota_ok(self, rid: str | None) -> bool:
        # The period's counters are kept rather than looked up per message; the meter never
        # replaces them before their period ends.
        u = self._usage
        if u is None or self._usage_clock() >= u.period_end:
            u = self._usage = self.services.usage.usage(self.app_id)
        if u.count(self.quota_limit):
            return True
        self._error(ErrorCode.OVER_MESSAGE_QUOTA,
                    "the app's message quota for this period is used up", rid)
        return False

    def _data_ok(self, req: frames.Request, verb: str, rid: str | None) -> bytes | None:
        """The request's ``data``, or None after answering why it is refused: it must be
        present (``null`` counts) and valid UTF-8. The decoder keeps it as raw bytes without
        checking their encoding, and it is relayed verbatim inside text frames: invalid
        UTF-8 there would make every receiver fail its connection (RFC 6455)."""
        if not req.has_data:
            self._error(ErrorCode.MISSING_DATA,
                        f"{verb} needs a 'data' field (null is allowed)", rid)
            return None
        data = bytes(req.data)
        if not utf8_ok(data):
            self._error(ErrorCode.MALFORMED_MESSAGE, "'data' is not valid UTF-8", rid)
            return None
        return data

    def _publish(self, req: frames.Request, rid: str | None) -> None:
        bad = self._check_channel(req.channel, Action.PUBLISH)
        if bad is not None:
            self._error(bad[0], bad[1], rid)
            return
        data = self._data_ok(req, "publish", rid)
        if data is None or not self._quota_ok(rid):
            return
        self.services.hub.publish(
            self.app_id, req.channel, data, self.peer_json, self.peer_metadata, skip=self
        )
        if rid is not None:
            opted = self._history_channels
            hub = self.services.hub
            if opted and req.channel in opted:
                stream = hub.last_stream
                if stream is not None:
                    self.send(encode_position_ack(rid, stream.position))
                    return
                placed = hub.last_position
                if placed is not None:
                    # Cluster: Redis gives the offset; later requests wait, so answers keep
                    # the order of the requests.
                    hub.last_position = None
                    self._held = []
                    placed.add_done_callback(lambda f: self._placed(f, rid))
                    return
            self.send(frames.encode_ack(rid))

    def _placed(self, f: asyncio.Future[Position], rid: str) -> None:
        """A cluster publish's position, for the ack of a socket that opted in."""
        if self.closed:
            return
        if f.cancelled() or f.exception() is not None:
            self._error(ErrorCode.INTERNAL_ERROR, "the cluster did not answer; retry", rid)
        else:
            self.send(encode_position_ack(rid, f.result()))
        self._release()

    def _send(self, req: frames.Request, rid: str | None) -> None:
        to = req.to
        data = bytes(req.data)
        # The common case is checked in one expression; any failure goes to
        # ``_refuse_send``, which runs the checks in their documented order for the error.
        if not (peer_id_ok(to) and self.may_send and data
                and (data.isascii() or utf8_ok(data))):
            self._refuse_send(req, rid)
            return
        if not self._quota_ok(rid):
            return
        delivered = self.services.hub.direct(
            self.app_id, to, data, self.peer_json, self.peer_metadata
        )
        if isinstance(delivered, asyncio.Future):
            # Answered once Redis said whether a node holds the peer; later requests wait,
            # so answers keep the order of the requests.
            self._held = []
            delivered.add_done_callback(lambda f: self._sent(f, rid))
            return
        if delivered is None:
            self._error(ErrorCode.PEER_NOT_FOUND, "no peer with that id is connected", rid)
            return
        if rid is not None:
            self.send(frames.encode_ack(rid))

    def _refuse_send(self, req: frames.Request, rid: str | None) -> None:
        """Answer a ``send`` that failed a check: the first failing one, in order."""
        problem = peer_id_problem(req.to)
        if problem is not None:
            self._error(ErrorCode.INVALID_PEER_ID, f"'to': {problem}", rid)
        elif not self.principal.can(Action.SEND):
            self._error(ErrorCode.ACTION_NOT_PERMITTED, "this credential may not send", rid)
        elif self._data_ok(req, "send", rid) is not None:
            # Unreachable while the quick checks in ``_send`` mean the same as these.
            self._error(ErrorCode.INTERNAL_ERROR, "the send could not be checked; retry", rid)

    def _sent(self, f: asyncio.Future[int | None], rid: str | None) -> None:
        """A cluster direct's answer: Redis told whether any node holds the peer."""
        if self.closed:
            return
        if f.cancelled() or f.exception() is not None:
            # The backplane failed mid-request (the node closes every socket then); answer
            # anyway so nothing the client sent waits behind a request that never completes.
            self._error(ErrorCode.INTERNAL_ERROR, "the cluster did not answer; retry", rid)
        elif f.result() is None:
            self._error(ErrorCode.PEER_NOT_FOUND, "no peer with that id is connected", rid)
        elif rid is not None:
            self.send(frames.encode_ack(rid))
        self._release()

    def _subscribe(self, req: frames.Request, rid: str | None) -> None:
        channel = req.channel
        bad = self._check_channel(channel, Action.SUBSCRIBE)
        if bad is not None:
            self._error(bad[0], bad[1], rid)
            return
        assert isinstance(channel, str)
        limit = self.services.config.max_channels_per_connection
        if channel not in self.subscriptions and len(self.subscriptions) >= limit:
            self._error(ErrorCode.CHANNEL_LIMIT_EXCEEDED,
                        f"a connection may hold at most {limit} subscriptions", rid)
            return
        include = req.includeSenderMetadata is True
        hub = self.services.hub
        pattern = "*" in channel and is_pattern(channel)
        # roomwire's history extension (patterns have none: the fields are ignored there).
        want: Position | bool = False
        if not pattern and req.recover is not None:
            parsed = recover_problem(req.recover)
            if isinstance(parsed, str):
                self._error(ErrorCode.MALFORMED_MESSAGE, parsed, rid)
                return
            want = parsed
        elif not pattern and req.history is True:
            want = True
        fresh = not pattern and channel not in self.subscriptions
        snapshot = (hub.subscribe_pattern(self, channel, include) if pattern
                    else hub.subscribe(self, channel, include))
        if isinstance(snapshot, asyncio.Future):
            self._held = []
            self._subscribing = channel
            snapshot.add_done_callback(
                lambda f: self._subscribed(f, channel, include, rid, want, fresh))
            return
        self.subscriptions[channel] = include
        self._answer_subscribe(channel, rid, snapshot, want, fresh)

    def _answer_subscribe(self, channel: str, rid: str | None, snapshot: bytes | None,
                          want: Position | bool, fresh: bool = False) -> bool:
        """Ack, snapshot, and for an opted-in subscribe the replay (docs/protocol.md,
        "roomwire extension: history and recovery"), all in this turn; or, for a channel
        with history in a cluster, once Redis was read (False: later requests wait).
        ``fresh``: the socket did not hold the channel before (a token identity may be owed
        a replay then)."""
        replay: list[bytes] = []
        opted = self._history_channels
        hub = self.services.hub
        if want is not False and hub.cluster_history is not None and hub.recorded_in_redis(
                self.app_id, channel):
            recover = want if isinstance(want, Position) else None
            reading = hub.follow_recorded(self, channel, recover)
            if reading is not None:
                if self._held is None:
                    self._held = []
                reading.add_done_callback(
                    lambda f: self._recorded(f, channel, rid, recover))
                return False
        if (want is False and fresh and self.principal.via_token
                and hub.replays_in_redis(self, channel)):
            missing = hub.follow_missed(self, channel)
            if missing is not None:
                if self._held is None:
                    self._held = []
                missing.add_done_callback(lambda f: self._missed(f, channel, rid))
                return False
        if want is False:
            if opted and channel in opted:
                opted.discard(channel)
                self.services.hub.unfollow_history(self, channel)
            elif fresh and self.principal.via_token and self.services.hub.replay is not None:
                # The operator's replay for SDKs that cannot ask: after the snapshot, as an
                # opted-in replay (Presence ordering: nothing between ack and snapshot).
                replay = self.services.hub.replay_missed(self, channel,
                                                         self.subscriptions[channel])
            ack = frames.encode_ack(rid) if rid is not None else None
        else:
            recover = want if isinstance(want, Position) else None
            position, recovered, replay = self.services.hub.follow_history(self, channel,
                                                                           recover)
            if position is not None:
                if opted is None:
                    opted = self._history_channels = set()
                opted.add(channel)
            ack = (encode_subscribe_ack(rid, position, recovered) if rid is not None
                   else None)
        self._send_subscribed(ack, snapshot, replay)
        return True

    def _send_subscribed(self, ack: bytes | None, snapshot: bytes | None,
                         replay: list[bytes]) -> None:
        if ack is not None:
            self.send(ack)
        if snapshot is not None:
            self.send(snapshot)
        for frame in replay:
            self.send(frame)

    def _recorded(self, f: asyncio.Future[HistoryRead], channel: str, rid: str | None,
                  recover: Position | None) -> None:
        """Cluster: the history read of an opted-in subscribe is back: ack, snapshot, the
        replay and the live messages that arrived meanwhile, then the held requests."""
        if self.closed:
            return
        hub = self.services.hub
        if f.cancelled() or f.exception() is not None:
            # Not subscribed after all: the client retries the subscribe.
            self.subscriptions.pop(channel, None)
            hub.unsubscribe(self, channel)
            self._error(ErrorCode.INTERNAL_ERROR, "the cluster did not answer; retry", rid)
            self._release()
            return
        snapshot, position, recovered, frames_out = hub.finish_recorded(
            self, channel, f.result(), recover)
        opted = self._history_channels
        if position is not None:
            if opted is None:
                opted = self._history_channels = set()
            opted.add(channel)
        elif opted:
            opted.discard(channel)
        ack = encode_subscribe_ack(rid, position, recovered) if rid is not None else None
        self._send_subscribed(ack, snapshot, frames_out)
        self._release()

    def _missed(self, f: asyncio.Future[tuple[Position | None, HistoryRead]], channel: str,
                rid: str | None) -> None:
        """Cluster: the ledger and the history answered the subscribe of a token identity
        on a channel with replay: ack, snapshot, what it missed and what came meanwhile."""
        hub = self.services.hub
        if f.cancelled() or f.exception() is not None:
            if self.closed:
                return
            self.subscriptions.pop(channel, None)
            hub.unsubscribe(self, channel)
            self._error(ErrorCode.INTERNAL_ERROR, "the cluster did not answer; retry", rid)
            self._release()
            return
        mark, read = f.result()
        # Also for a socket closed meanwhile: the hub writes a taken mark back.
        snapshot, frames_out = hub.finish_missed(self, channel, mark, read)
        if self.closed:
            return
        ack = frames.encode_ack(rid) if rid is not None else None
        self._send_subscribed(ack, snapshot, frames_out)
        self._release()

    def _subscribed(self, f: asyncio.Future[None], channel: str, include: bool,
                    rid: str | None, want: Position | bool = False, fresh: bool = False,
                    ) -> None:
        """A cluster subscribe completed: ack, snapshot, then the frames held meanwhile."""
        self._subscribing = None
        if self.closed:
            return
        if f.cancelled() or f.exception() is not None:
            self._error(ErrorCode.INTERNAL_ERROR, "the cluster did not answer; retry", rid)
            self._release()
            return
        snapshot = self.services.hub.finish_subscribe(self, channel)
        self.subscriptions[channel] = include
        if self._answer_subscribe(channel, rid, snapshot, want, fresh):
            self._release()

    def _release(self) -> None:
        """Handle the frames held while a request waited for the cluster."""
        held, self._held = self._held or [], None
        for n, payload in enumerate(held):
            waiting = self._waiting()
            if waiting is not None:  # another request waits: keep the rest in order
                waiting.extend(held[n:])
                return
            if self.closed:
                return
            self.handle_text(payload)

    def _waiting(self) -> list[bytes | str] | None:
        # Read through a call: after ``self._held = None`` mypy takes the attribute to stay
        # None across ``handle_text`` (which may start holding again), and compiled code
        # would trust that and fail (docs/operations.md, "Compiled modules").
        return self._held

    def _unsubscribe(self, req: frames.Request, rid: str | None) -> None:
        channel = req.channel
        problem = channel_problem(channel)
        if problem is not None:
            self._error(ErrorCode.INVALID_CHANNEL, problem, rid)
            return
        assert isinstance(channel, str)
        if self.subscriptions.pop(channel, None) is not None:
            self.services.hub.unsubscribe(self, channel)
            if self._history_channels:
                self._history_channels.discard(channel)
        if rid is not None:
            self.send(frames.encode_ack(rid))
