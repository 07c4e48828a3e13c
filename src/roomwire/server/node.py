"""A roomwire node: wires the store, auth, hub, broker and transport, and runs them.

``Node`` is the composition root. Each adapter is handed a narrow context of what it uses
(``GatewayContext``, ``HttpContext``, ``RestContext``, ``AdminContext``, ``DemoContext``, and
``Services`` for a session), which a node satisfies; none of them imports this module.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Mapping

from aiohttp import web

from ..protocol import CloseCode, frames
from .auth import AuthFailure, Keyring, Principal, authenticate
from .broker import Broker
from .broker.memory import MemoryBroker
from .broker.redis_history import ClusterHistory, HistoryRunner
from .broker.redis_replay import ClusterLedger, LedgerRunner
from .config import ServerConfig, check_admin_token
from .drain import PRESENCE_LINGER, close_batches
from .gateway.front import ConnectionCaps, FrontProtocol
from .gateway.websocket import Outbox, WsSession, ws_text_frame
from .history import History, RuleBook, parse_rules
from .http.admin import add_routes as mount_admin_api
from .http.app import build_http_app
from .http.demo import DemoContext
from .http.demo import add_routes as mount_demo
from .http.rest import add_routes as mount_rest_api
from .hub import Hub
from .ice import IceProvider
from .limits import ConnectLimiter, UsageMeter
from .metrics import Metrics, render_node
from .replay import Replay
from .replay import parse_rules as parse_replay_rules
from .store import App, Store, open_store
from .store.usage import flush as flush_usage_rows
from .store.usage import restore as restore_usage
from .webhooks.policy import endpoint_from_config
from .webhooks.service import WebhookService

log = logging.getLogger("roomwire.node")
#: Seconds between sweeps of idle channel histories (a forgotten one costs memory only).
HISTORY_SWEEP_INTERVAL = 5.0


class Node:
    """One server process. ``await start()``, then ``await stop()`` (or ``shutdown()``).

    ``broker``: used as given (a ``RedisBroker`` shares quota counts across the cluster only
    when built with ``usage=``); by default the config's broker, wired to this node's meter.
    """

    def __init__(self, config: ServerConfig, broker: Broker | None = None) -> None:
        self.config = config
        self.metrics = Metrics()
        self.usage = UsageMeter()
        self.broker: Broker = broker or _broker_for(config, self.usage)
        self.hub = Hub(ws_text_frame, self.broker, self.metrics)
        if config.history:
            if isinstance(self.broker, HistoryRunner):
                # In Redis, on each channel's shard (docs/cluster.md, "History in Redis").
                self.hub.cluster_history = ClusterHistory(
                    self.broker, RuleBook(parse_rules(config.history)))
            elif self.broker.clustered:
                raise ValueError("this cluster broker cannot keep history")
            else:
                self.hub.history = History(parse_rules(config.history),
                                           max_bytes=config.history_max_bytes)
            # Half the outbound bound: the replay and what follows it must fit.
            self.hub.replay_max_bytes = config.outbound_queue_bytes // 2
        if config.replay:
            # parse_replay_rules refuses rules without history on their channels.
            self.hub.replay = Replay(
                parse_replay_rules(config.replay, parse_rules(config.history)),
                max_marks=config.replay_max_marks)
            if isinstance(self.broker, LedgerRunner):
                # The marks in Redis: a client may come back to any node.
                self.hub.cluster_ledger = ClusterLedger(self.broker)
        self.broker.health_listener = self._backplane_health
        self.ice = IceProvider(config.ice_servers, config.turn_urls, config.turn_secret,
                               config.turn_ttl)
        self.connect_limiter = ConnectLimiter(config.connect_rate_limit, config.connect_rate_window)
        self.http_caps = ConnectionCaps(config, self.metrics)
        self.sessions: set[WsSession] = set()
        self.accepting = False
        self.store: Store | None = None
        self.keyring = Keyring({}, {})
        self.port = config.port
        self._server: asyncio.AbstractServer | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._data_version = -1
        self._stopped = asyncio.Event()
        self._shutting_down = False
        self.webhooks = WebhookService(config)

    # -- startup -------------------------------------------------------------------------------

    async def start(self) -> None:
        # Before anything is opened, and also for a ServerConfig that nobody validated (a
        # Node embedded in a program): a short admin token can be guessed.
        check_admin_token(self.config.admin_token)
        self.loop = asyncio.get_running_loop()
        self.outbox = Outbox(self.loop)
        self.store = open_store(self.config)
        self.default_app, self.default_keys, self.created_default = (
            self.store.ensure_default_app()
        )
        self.reload_keyring()
        restore_usage(self.usage, self.store)
        await self.webhooks.start()
        self.reload_webhooks()
        await self.broker.start(self.hub)
        demo_context = DemoContext(self.config, self.default_app.id, lambda: self.keyring)
        http_app = build_http_app(
            self,
            lambda app: mount_rest_api(app, self),
            lambda app: mount_admin_api(app, self),
            lambda app: mount_demo(app, demo_context),
        )
        # aiohttp closes a connection idle for keepalive_timeout after a response, also one
        # that sent only part of its next request head (its timer runs until a whole head is
        # in); lingering_time bounds how long it drains a body nobody read.
        self._runner = web.AppRunner(http_app, access_log=None,
                                     handle_signals=False,
                                     keepalive_timeout=self.config.http_keepalive_timeout,
                                     lingering_time=min(10.0, self.config.http_body_timeout))
        await self._runner.setup()
        http_server = self._runner.server
        assert http_server is not None
        self._server = await self.loop.create_server(
            lambda: FrontProtocol(self, http_server),
            self.config.host, self.config.port, reuse_address=True, backlog=2048,
            reuse_port=self.config.reuse_port or None,
        )
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        self.config = dataclasses.replace(self.config, port=self.port)
        self.accepting = True
        self._tasks.append(self.loop.create_task(self._keepalive()))
        self._tasks.append(self.loop.create_task(self._watch_store()))
        self._tasks.append(self.loop.create_task(self._flush_usage_loop()))
        if self.hub.history is not None:
            self._tasks.append(self.loop.create_task(self._sweep_history()))

    # -- auth and admission -------------------------------------------------------------------

    def app(self, app_id: str) -> App | None:
        return self.keyring.app(app_id)

    def authenticate(self, query: Mapping[str, str], origin: str | None) -> Principal | AuthFailure:
        return authenticate(
            query, origin, self.keyring, leeway=self.config.jwt_leeway,
            allow_non_expiring=self.config.allow_non_expiring_tokens,
            max_lifetime=self.config.max_token_lifetime,
        )

    def admit(self, session: WsSession) -> bool:
        """Checks at open: the app's concurrent-connection limit."""
        app = self.app(session.app_id)
        if app is None or app.suspended:
            session.close(CloseCode.ACCOUNT_SUSPENDED, "this app is suspended")
            return False
        current = self.hub.connections_everywhere(session.app_id)
        if app.max_connections is not None and current >= app.max_connections:
            self.usage.usage(session.app_id).refused_connections += 1
            session.close(CloseCode.OVER_CONCURRENT_LIMIT,
                          "the app's concurrent connection limit is reached")
            return False
        self.sessions.add(session)
        self.metrics.connections_total += 1
        self.usage.note_connections(session.app_id, current + 1)
        return True

    def forget(self, session: WsSession) -> None:
        self.sessions.discard(session)

    def ice_servers_for(self, session: WsSession) -> list[dict[str, object]] | None:
        """The welcome's ``iceServers``: the configured static list and minted TURN
        credentials (a JWT's own ``metadata.iceServers`` wins, in ``welcome_frame``)."""
        if not self.ice.enabled:
            return None
        md = session.principal.metadata
        if md and "iceServers" in md:
            return None
        return self.ice.servers_for(session.peer_id, session.principal.expires_at)

    def flush_usage(self) -> None:
        if self.store is not None:
            flush_usage_rows(self.usage, self.store)

    async def _sweep_history(self) -> None:
        """Forget idle channel histories (their memory); expired entries go on publish too."""
        history = self.hub.history
        assert history is not None
        while True:
            await asyncio.sleep(HISTORY_SWEEP_INTERVAL)
            history.sweep(self.hub.clock())
            if self.hub.replay is not None:
                self.hub.replay.ledger.sweep(self.hub.clock())

    async def _flush_usage_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.usage_flush_interval)
            try:
                self.flush_usage()
            except Exception:
                log.exception("writing usage counters failed; will retry")

    def render_metrics(self) -> str:
        limits = {a.id: a.max_connections for a in self.keyring.apps.values()
                  if a.max_connections is not None}
        return render_node(self.metrics, self.hub, self.usage, self.sessions,
                           self.http_caps.slots.open, ready=self.ready,
                           backplane_up=self.broker.healthy if self.broker.clustered else None,
                           max_connections=limits) + self.webhooks.render_metrics()

    # -- keeping the keyring fresh -------------------------------------------------------------

    def reload_keyring(self) -> None:
        assert self.store is not None
        self._data_version = self.store.data_version()
        apps = {a.id: a for a in self.store.list_apps()}
        keys = {k.id: k for k in self.store.list_keys()}
        old = self.keyring
        self.keyring = Keyring(apps, keys)
        if old.apps or old.keys:
            self._apply_changes(old, self.keyring)
        if self.webhooks.outbox is not None:
            self.reload_webhooks()

    def reload_webhooks(self) -> None:
        """Apply the webhook endpoints of the config file and the store; the hub is observed
        only while there is one."""
        assert self.store is not None
        endpoints = [endpoint_from_config(e, self.default_app.id) for e in self.config.webhooks]
        endpoints += self.store.list_webhooks()
        self.webhooks.set_endpoints(endpoints)
        self.hub.observer = self.webhooks if self.webhooks.active else None
        # A cluster broker reports joins and leaves: its Redis scripts know which node made
        # each transition, so each is reported once in the cluster.
        self.broker.observer = self.hub.observer

    def _apply_changes(self, old: Keyring, new: Keyring) -> None:
        for app in new.apps.values():
            before = old.apps.get(app.id)
            if app.suspended and (before is None or not before.suspended):
                self.hub.close_app(app.id, CloseCode.ACCOUNT_SUSPENDED, "this app is suspended")
        # Sessions keep their app's quota instead of looking it up per message.
        edited = {a for a in old.apps.keys() | new.apps.keys()
                  if old.apps.get(a) != new.apps.get(a)}
        if edited:
            for session in self.sessions:
                if session.app_id in edited:
                    session.app_changed(new.apps.get(session.app_id))
        changed = {k for k, key in new.keys.items() if old.keys.get(k) != key}
        if not changed:
            return
        for session in list(self.sessions):
            key_id = session.principal.key_id
            if key_id not in changed:
                continue
            key = new.keys[key_id]
            if key.revoked:
                session.close(CloseCode.INVALID_TOKEN, "the key was revoked")
                continue
            if not session.rescope(session.principal.with_key(key)):
                session.close(CloseCode.CHANNEL_NOT_AUTHORIZED,
                              "the key no longer covers a subscribed channel")

    async def _watch_store(self) -> None:
        while True:
            await asyncio.sleep(self.config.store_poll_interval)
            try:
                assert self.store is not None
                if self.store.data_version() != self._data_version:
                    self.reload_keyring()
            except Exception:
                log.exception("reloading apps and keys failed; keeping the previous ones")

    # -- keepalive -------------------------------------------------------------------------------

    async def _keepalive(self) -> None:
        cfg = self.config
        while True:
            await asyncio.sleep(cfg.ping_interval)
            pinged = list(self.sessions)
            for s in pinged:
                s.heard = False
                s.send_ping()
            await asyncio.sleep(cfg.ping_grace)
            for s in pinged:
                if not s.heard and not s.closed:
                    s.close(CloseCode.INTERNAL_ERROR, "no pong within the grace period")

    # -- cluster backplane -----------------------------------------------------------------------

    def _backplane_health(self, healthy: bool) -> None:
        """The broker lost (or regained) Redis. Without it this node cannot keep presence
        consistent: refuse upgrades (readyz 503), send ``going_away`` and close every socket
        with 1001, which the SDKs retry (possibly on another node)."""
        if healthy:
            if self._server is not None and not self._shutting_down:
                self.accepting = True
            return
        self.accepting = False
        going = frames.encode_going_away(self.config.going_away_retry_after_ms)
        for s in list(self.sessions):
            s.send(going)
            s.close(CloseCode.GOING_AWAY, "lost the cluster backplane; reconnect")

    # -- shutdown --------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """What ``/readyz`` answers: accepting sockets and not shutting down."""
        return self.accepting and not self._shutting_down

    async def shutdown(self) -> None:
        """Graceful, in three steps (docs/operations.md, "Rolling restarts"):

        1. ``/readyz`` answers 503 at once, while the node keeps serving and taking sockets
           for ``shutdown_readiness_delay``, long enough for a load balancer to notice;
        2. upgrades are refused (503) and every socket gets ``going_away``;
        3. the sockets are closed with 1001 in batches spread over ``shutdown_drain``, the
           last at that bound. In a cluster their peers stay in their channels for
           ``PRESENCE_LINGER`` more, so a client that is back on another node by then never
           appears to leave; then the node stops.
        """
        if self._shutting_down or (not self.accepting and self._server is None):
            return  # a second SIGTERM while draining changes nothing
        self._shutting_down = True
        cfg = self.config
        if cfg.shutdown_readiness_delay > 0:
            log.info("shutting down: readyz 503, still serving for %.1f s",
                     cfg.shutdown_readiness_delay)
            await asyncio.sleep(cfg.shutdown_readiness_delay)
        self.accepting = False
        going = frames.encode_going_away(cfg.going_away_retry_after_ms)
        held = list(self.sessions)
        for s in held:
            s.hold_presence = True
            s.send(going)
        self.outbox.flush()
        log.info("shutting down: going_away sent to %d sockets, closing them over %.2f s",
                 len(held), cfg.shutdown_drain)
        began = time.monotonic()
        queue = iter(held)
        for batch in close_batches(len(held), cfg.shutdown_drain):
            await asyncio.sleep(max(0.0, began + batch.at - time.monotonic()))
            for _ in range(batch.count):
                next(queue).close(CloseCode.GOING_AWAY, "server shutting down", leave=False)
        # Sockets whose handshake was under way when upgrades stopped; none get a welcome
        # now, but each is closed with the code the clients retry.
        late = [s for s in self.sessions if not s.hold_presence]
        for s in late:
            s.send(going)
            s.close(CloseCode.GOING_AWAY, "server shutting down", leave=False)
        if self.broker.clustered and held:
            await asyncio.sleep(PRESENCE_LINGER)
        for s in held + late:
            s.ended()
        deadline = time.monotonic() + 2.0
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self.stop()

    async def stop(self) -> None:
        self._shutting_down = True
        self.accepting = False
        for t in self._tasks:
            t.cancel()
        self._tasks.clear()
        if self._server is not None:
            self._server.close()
            self._server = None
        for s in list(self.sessions):
            s.drop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.broker.stop()
        await self.webhooks.stop()
        if self.store is not None:
            try:
                self.flush_usage()
            except Exception:
                log.exception("writing usage counters at stop failed")
            self.store.close()
            self.store = None
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


def _broker_for(config: ServerConfig, usage: UsageMeter) -> Broker:
    """Redis when the config names one (a cluster, sharing ``usage`` for quotas), else the
    single-node broker."""
    if not config.redis_url:
        return MemoryBroker()
    from .broker.redis import RedisBroker

    return RedisBroker(
        config.redis_url, prefix=config.redis_prefix, node_id=config.node_id,
        presence_ttl=config.presence_ttl, heartbeat_interval=config.heartbeat_interval or None,
        usage_sync_interval=config.usage_sync_interval, usage=usage,
    )
