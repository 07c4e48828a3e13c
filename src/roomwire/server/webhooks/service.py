"""The webhook driver of one node: turns the hub's lifecycle facts into events, persists them
in the outbox, and delivers them over HTTP.

The hub calls the observer methods synchronously on the event loop; they only filter, hold
(grace) and append to a list, and one ``call_soon`` per loop turn commits that list to the
outbox. Each endpoint has its own delivery task reading its rows in order: a slow or dead
endpoint delays only itself, never message delivery or another endpoint. A batch is retried
as a whole until it succeeds or ``webhook_retry_for`` runs out, and the next batch waits for
it, which is what keeps every channel's order.

Requests: POST, JSON body, ``Roomwire-Signature`` (see ``roomwire.webhooks``), redirects not
followed (a 3xx is a failure), ``webhook_timeout`` for the whole exchange, and every address
the target resolves to checked against ``policy.address_allowed`` when connecting. Response
bodies are read (bounded) and discarded, never logged; errors are recorded as short
categories that contain neither the URL nor a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from ...webhooks import SIGNATURE_HEADER, signature_header
from .grace import Grace
from .ledger import Ledger
from .model import (
    CHANNEL_OCCUPIED,
    CHANNEL_VACATED,
    MESSAGE_PUBLISHED,
    PEER_CONNECTED,
    PEER_DISCONNECTED,
    PEER_JOINED,
    PEER_LEFT,
    PING,
    Endpoint,
    Event,
    Fact,
    fact_from_json,
    fact_json,
    new_event_id,
    stream_key,
)
from .outbox import Outbox
from .policy import Network, address_allowed, parse_networks, url_problem, wants
from .schedule import Schedule
from .stats import Attempt, WebhookStats

if TYPE_CHECKING:
    from ..config import ServerConfig

log = logging.getLogger("roomwire.webhooks")

_RESPONSE_READ_LIMIT = 64 * 1024
USER_AGENT = "roomwire-webhooks/1"


class RefusedAddress(OSError):
    """The webhook target resolved to an address the operator did not allow."""


class _GuardedResolver(AbstractResolver):
    """Resolves like the default resolver, then refuses the whole answer when any address
    in it is not allowed (a name must not smuggle a request inward)."""

    def __init__(self, allowed: Sequence[Network]) -> None:
        self._inner = ThreadedResolver()
        self._allowed = allowed

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not results or not all(address_allowed(r["host"], self._allowed) for r in results):
            raise RefusedAddress("the webhook target resolves to an address that is not allowed")
        return results

    async def close(self) -> None:
        await self._inner.close()


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _metadata(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def outbox_name(node_id: str | None) -> str:
    """The outbox file of a node: one per ``node_id``, so nodes sharing a data directory
    never share an outbox, and a node restarted under the same id finds its rows again."""
    if not node_id:
        return "webhooks-outbox.sqlite3"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in node_id)[:100]
    return f"webhooks-outbox-{safe}.sqlite3"


def _client(allowed: Sequence[Network], timeout: float) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(resolver=_GuardedResolver(allowed), limit=0,
                                     limit_per_host=4, use_dns_cache=False)
    return aiohttp.ClientSession(
        connector=connector, headers={"User-Agent": USER_AGENT},
        timeout=aiohttp.ClientTimeout(total=timeout), auto_decompress=False,
    )


async def send_ping(config: ServerConfig, endpoint: Endpoint) -> Attempt:
    """A signed ``ping`` to ``endpoint`` without a running node (``roomwire webhooks test``)."""
    service = WebhookService(config)
    service._http = _client(service.allowed, config.webhook_timeout)
    try:
        return await service.ping(endpoint)
    finally:
        await service._http.close()


_F = TypeVar("_F", bound=Callable[..., None])


def _guarded(method: _F) -> _F:
    """An observer method: the hub calls it inside a client's request, so a failure here is
    logged and must never reach (and close) that client."""

    @functools.wraps(method)
    def call(*args: Any) -> None:
        try:
            method(*args)
        except Exception:
            log.exception("webhooks: %s failed; the event is lost", method.__name__)

    return call  # type: ignore[return-value]


def _entry_metadata(entry: bytes) -> Any:
    """The metadata of a presence entry (``{"peerId", "metadata"?}``)."""
    value = _metadata(entry)
    return value.get("metadata") if isinstance(value, dict) else None


class WebhookService:
    """Observer of the hub (``hub.HubObserver``) and the delivery of its events."""

    def __init__(self, config: ServerConfig, data_dir: Path | str | None = None) -> None:
        self.config = config
        self.schedule = Schedule(
            batch_max=config.webhook_batch_max, batch_delay=config.webhook_batch_delay,
            initial=config.webhook_retry_initial, maximum=config.webhook_retry_max,
            retry_for=config.webhook_retry_for,
        )
        self.allowed = parse_networks(config.webhook_allowed_networks)
        self.grace: Grace[Fact] = Grace(config.webhook_grace)
        self.stats = WebhookStats()
        self.endpoints: dict[str, Endpoint] = {}
        self._by_app: dict[str, list[Endpoint]] = {}
        self.message_apps: frozenset[str] = frozenset()
        """Apps with an endpoint asking for ``message_published`` (the hub checks this)."""
        self._path = Path(data_dir if data_dir is not None else config.data_dir) / \
            outbox_name(config.node_id)
        self.outbox: Outbox | None = None
        self._rows: list[tuple[str, str, float]] = []
        self._seqs: dict[tuple[str, str], int] = {}
        self._uncommitted: dict[str, int] = {}
        self._commit_handle: asyncio.Handle | None = None
        self._grace_handle: asyncio.TimerHandle | None = None
        self._grace_at = 0.0
        self._workers: dict[str, _Worker] = {}
        self._http: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self.ledger: Ledger | None = None
        """Cluster (``redis_url``): grace holds and sequence numbers are cluster-wide."""
        self._settling: list[tuple[Fact, str, list[Endpoint]]] = []
        self._settle_wake = asyncio.Event()
        self._settled = asyncio.Event()
        self._settle_busy = False
        self._settle_task: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.outbox = Outbox(self._path, self.config.webhook_outbox_max)
        self._http = _client(self.allowed, self.config.webhook_timeout)
        self._restore_held()
        if self.config.redis_url:
            self.ledger = Ledger(self.config.redis_url, self.config.redis_prefix,
                                 self.config.webhook_grace)
            self._settle_task = self._loop.create_task(self._settle_loop())
        # Workers start with the first set_endpoints: rows of an endpoint not (yet) known
        # must not be dropped before the node has read its endpoints.

    async def stop(self) -> None:
        """Persist what is held or pending, then stop delivering; the outbox keeps the rest
        for the next start. In a cluster the leaves held for their grace (this node's members,
        who were just told to go elsewhere) are waited out first, at most ``webhook_grace``:
        a member back on another node within it cancels them there, so a rolling deploy does
        not flap the backend. On one node nobody can come back meanwhile: the held leaves are
        kept in the outbox file with the grace they had left, for the next start."""
        if self.ledger is not None and self._loop is not None:
            last = self.grace.last_deadline()
            if last is not None:
                await asyncio.sleep(min(self.grace.seconds,
                                        max(0.0, last - self._loop.time())) + 0.01)
        self._stopping = True
        if self._grace_handle is not None:
            self._grace_handle.cancel()
        if self.ledger is None and self.outbox is not None and self._loop is not None:
            # One node: its members may be back right after the restart (a deploy); the
            # next start holds these leaves for the grace they had left.
            held = self.grace.drain_remaining(self._loop.time())
            try:
                self.outbox.save_held([(fact_json(f), left) for _, left, f in held])
            except Exception:
                log.exception("keeping %d held webhook leaves failed; sending them", len(held))
                for _, _, fact in held:
                    self._emit(fact)
        for fact in self.grace.drain():
            self._emit(fact, "release")
        if self.ledger is not None and self._settle_task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settle_flush(), 5.0)
            self._settle_task.cancel()
            await asyncio.gather(self._settle_task, return_exceptions=True)
            await self.ledger.close()
        self._commit()
        for w in list(self._workers.values()):
            w.stop()
        await asyncio.gather(*(w.task for w in self._workers.values() if w.task),
                             return_exceptions=True)
        self._workers.clear()
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self.outbox is not None:
            self.outbox.close()
            self.outbox = None

    @property
    def active(self) -> bool:
        """Whether any endpoint is configured (the hub is observed only then)."""
        return bool(self.endpoints)

    def set_endpoints(self, endpoints: Iterable[Endpoint]) -> None:
        """Replace the endpoints (a store or config change, applied at once)."""
        self.endpoints = {e.id: e for e in endpoints}
        by_app: dict[str, list[Endpoint]] = {}
        for e in self.endpoints.values():
            if e.enabled:
                by_app.setdefault(e.app_id, []).append(e)
        self._by_app = by_app
        self.message_apps = frozenset(
            e.app_id for e in self.endpoints.values()
            if e.enabled and MESSAGE_PUBLISHED in e.events)
        if self.outbox is not None:
            self._sync_workers()

    def _sync_workers(self) -> None:
        assert self.outbox is not None
        for endpoint_id in list(self._workers):
            if endpoint_id not in self.endpoints:
                self._workers.pop(endpoint_id).stop()
        for endpoint_id in self.outbox.endpoints():
            if endpoint_id not in self.endpoints:
                n = self.outbox.drop_endpoint(endpoint_id)
                self.stats.dropped[(endpoint_id, "endpoint_removed")] += n
        for endpoint_id in self.endpoints:
            w = self._workers.get(endpoint_id)
            if w is None:
                w = self._workers[endpoint_id] = _Worker(self, endpoint_id)
                w.start()
            w.wake()

    # -- observer (called by the hub, synchronously) ----------------------------------------------

    @_guarded
    def connected(self, app_id: str, peer_id: str, metadata: bytes | None,
                  connections: int) -> None:
        if app_id in self._by_app:
            self._fact(PEER_CONNECTED, app_id, None, peer_id,
                       {"metadata": _metadata(metadata), "connections": connections})

    @_guarded
    def disconnected(self, app_id: str, peer_id: str, code: int, reason: str,
                     connections: int) -> None:
        if app_id in self._by_app:
            self._fact(PEER_DISCONNECTED, app_id, None, peer_id,
                       {"code": code, "reason": reason, "connections": connections})

    @_guarded
    def joined(self, app_id: str, channel: str, peer_id: str, entry: bytes,
               members: int, first: bool) -> None:
        """``peer_id`` is now present in ``channel`` (``first``: the channel was empty)."""
        if app_id not in self._by_app:
            return
        if first:
            self._arrival(CHANNEL_OCCUPIED, app_id, channel, None, {"members": members})
        self._arrival(PEER_JOINED, app_id, channel, peer_id,
                      {"metadata": _entry_metadata(entry), "members": members})

    @_guarded
    def left(self, app_id: str, channel: str, peer_id: str, entry: bytes,
             members: int, last: bool) -> None:
        """``peer_id`` is no longer present in ``channel`` (``last``: it is empty now)."""
        if app_id not in self._by_app:
            return
        self._departure(PEER_LEFT, app_id, channel, peer_id,
                        {"metadata": _entry_metadata(entry), "members": members})
        if last:
            self._departure(CHANNEL_VACATED, app_id, channel, None, {"members": 0})

    @_guarded
    def published(self, app_id: str, channel: str, data: bytes, sender_json: bytes) -> None:
        # Per message: decide before parsing anything that nobody wants this channel.
        if not any(wants(e, MESSAGE_PUBLISHED, channel) for e in self._by_app.get(app_id, ())):
            return
        limit = self.config.webhook_message_max_bytes
        body: dict[str, Any] = {"size": len(data)}
        if len(data) <= limit:
            try:
                body["data"] = json.loads(data)
            except ValueError:
                body["truncated"] = True
        else:
            body["truncated"] = True
        sender = _metadata(sender_json)
        self._fact(MESSAGE_PUBLISHED, app_id, channel, sender if isinstance(sender, str)
                   else None, body)

    # -- facts -> events ----------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(time.time() * 1000)

    def _arrival(self, kind: str, app_id: str, channel: str, peer_id: str | None,
                 data: dict[str, Any]) -> None:
        fact = Fact(kind, app_id, channel, peer_id, self._now_ms(), data)
        if self.ledger is not None:
            # The leave may be held on another node: Redis decides (see ledger.py).
            self.grace.cancel((app_id, channel, peer_id))
            self._emit(fact, "arrive")
            return
        if self.grace.cancel((app_id, channel, peer_id)):
            return  # back within the grace: neither the leave nor this arrival is news
        self._emit(fact)

    def _departure(self, kind: str, app_id: str, channel: str, peer_id: str | None,
                   data: dict[str, Any]) -> None:
        fact = Fact(kind, app_id, channel, peer_id, self._now_ms(), data)
        if self.grace.seconds <= 0 or self._loop is None or self._stopping:
            self._emit(fact)
            return
        self.grace.hold((app_id, channel, peer_id), fact, self._loop.time())
        if self.ledger is not None:
            self._settle_later(fact, "hold", [])
        self._arm_grace()

    def _restore_held(self) -> None:
        """Hold again the leaves the previous run of this node kept (see ``stop``)."""
        assert self.outbox is not None and self._loop is not None
        for raw, left in self.outbox.take_held():
            try:
                fact = fact_from_json(raw)
            except (ValueError, TypeError, KeyError):
                continue
            self.grace.hold((fact.app_id, fact.channel, fact.peer_id), fact, self._loop.time(),
                            min(left, self.grace.seconds))
        self._arm_grace()

    def _arm_grace(self) -> None:
        assert self._loop is not None
        deadline = self.grace.next_deadline()
        if deadline is None:
            return
        h = self._grace_handle
        # The deadline is kept here: uvloop's timer handles do not tell theirs.
        if h is not None and self._grace_at <= deadline:
            return
        if h is not None:
            h.cancel()
        self._grace_at = deadline
        self._grace_handle = self._loop.call_at(deadline, self._release)

    def _release(self) -> None:
        assert self._loop is not None
        self._grace_handle = None
        for fact in self.grace.due(self._loop.time()):
            self._emit(fact, "release")
        self._arm_grace()

    def _fact(self, kind: str, app_id: str, channel: str | None, peer_id: str | None,
              data: dict[str, Any]) -> None:
        self._emit(Fact(kind, app_id, channel, peer_id, self._now_ms(), data))

    def _emit(self, fact: Fact, op: str = "plain") -> None:
        """Queue the event for every endpoint that wants it (committed this loop turn; in a
        cluster once Redis settled it, ``op`` saying what it does to a grace hold)."""
        outbox = self.outbox
        if outbox is None:
            return
        wanted = [e for e in self._by_app.get(fact.app_id, ())
                  if wants(e, fact.type, fact.channel)]
        if self.ledger is not None:
            if wanted or op != "plain":
                self._settle_later(fact, op, wanted)
            return
        if not wanted:
            return
        stream = stream_key(fact.app_id, fact.channel, fact.peer_id)
        seqs = []
        for e in wanted:
            seqs.append(outbox.next_seq(e.id, stream))
            self._seqs[(e.id, stream)] = seqs[-1]
        self._queue_rows(fact, wanted, seqs)
        self._schedule_commit()

    def _queue_rows(self, fact: Fact, wanted: list[Endpoint], seqs: list[int]) -> None:
        assert self.outbox is not None
        event_id = new_event_id()
        accepted = time.time()
        for e, seq in zip(wanted, seqs, strict=True):
            # The number is used even when the event is dropped: the receiver sees the gap.
            queued = self.outbox.depth.get(e.id, 0) + self._uncommitted.get(e.id, 0)
            if queued >= self.outbox.limit:
                self.stats.dropped[(e.id, "outbox_full")] += 1
                continue
            event = Event(event_id, fact.type, fact.created_at, fact.app_id, fact.channel,
                          fact.peer_id, seq, fact.data)
            self._rows.append((e.id, _json(event.public()), accepted))
            self._uncommitted[e.id] = self._uncommitted.get(e.id, 0) + 1

    # -- cluster: Redis settles holds and numbers (ledger.py) ----------------------------------

    def _settle_later(self, fact: Fact, op: str, wanted: list[Endpoint]) -> None:
        self._settling.append((fact, op, wanted))
        self._settle_wake.set()

    async def _settle_loop(self) -> None:
        assert self.ledger is not None
        while True:
            await self._settle_wake.wait()
            self._settle_wake.clear()
            while self._settling:
                batch, self._settling = self._settling[:500], self._settling[500:]
                self._settle_busy = True
                try:
                    await self._settle(batch)
                finally:
                    self._settle_busy = False
            self._settled.set()

    async def _settle(self, batch: list[tuple[Fact, str, list[Endpoint]]]) -> None:
        assert self.ledger is not None
        items = []
        for fact, op, wanted in batch:
            stream = stream_key(fact.app_id, fact.channel, fact.peer_id)
            hold = f"{fact.app_id}\x00{fact.channel}\x00{fact.peer_id or ''}"
            items.append({"o": op, "k": hold, "s": [f"{e.id}\x00{stream}" for e in wanted]})
        try:
            results = await self.ledger.settle(items)
        except Exception as exc:
            log.error("webhooks: Redis did not settle %d facts (%s); their events are "
                      "dropped", len(batch), type(exc).__name__)
            for _, _, wanted in batch:
                for e in wanted:
                    self.stats.dropped[(e.id, "backplane_error")] += 1
            return
        if self.outbox is None:
            return
        for (fact, _, wanted), result in zip(batch, results, strict=True):
            if result and result[0] == 1 and wanted:
                self._queue_rows(fact, wanted, result[1:])
        self._commit()

    async def _settle_flush(self) -> None:
        while self._settling or self._settle_busy:
            self._settled.clear()
            self._settle_wake.set()
            await self._settled.wait()

    def _schedule_commit(self) -> None:
        if self._commit_handle is None and self._loop is not None and not self._stopping:
            self._commit_handle = self._loop.call_soon(self._commit)

    def _commit(self) -> None:
        self._commit_handle = None
        if self.outbox is None or not (self._rows or self._seqs):
            return
        rows, self._rows = self._rows, []
        self._uncommitted = {}
        seqs = [(e, s, n) for (e, s), n in self._seqs.items()]
        self._seqs = {}
        try:
            self.outbox.add(rows, seqs)
        except Exception:
            log.exception("writing %d webhook events to the outbox failed; they are dropped",
                          len(rows))
            for endpoint_id, _, _ in rows:
                self.stats.dropped[(endpoint_id, "outbox_error")] += 1
            return
        for endpoint_id in {r[0] for r in rows}:
            w = self._workers.get(endpoint_id)
            if w is not None:
                w.wake()

    # -- delivery -----------------------------------------------------------------------------

    async def post(self, endpoint: Endpoint, events_json: list[str]) -> Attempt:
        """One signed request carrying ``events_json``; never raises."""
        assert self._http is not None
        body = (f'{{"endpointId":{_json(endpoint.id)},"batchId":'
                f'{_json("bat_" + secrets.token_hex(8))},"events":['
                + ",".join(events_json) + "]}").encode()
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        problem = url_problem(endpoint.url, self.allowed)
        if problem is not None:
            error = "refused_address"
        else:
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: signature_header(body, endpoint.secret, int(time.time())),
            }
            try:
                async with self._http.post(endpoint.url, data=body, headers=headers,
                                           allow_redirects=False) as resp:
                    status = resp.status
                    await resp.content.read(_RESPONSE_READ_LIMIT)
                if 300 <= status < 400:
                    error = "redirect_not_followed"
                elif not 200 <= status < 300:
                    error = f"http_{status}"
            except RefusedAddress:
                error = "refused_address"
            except TimeoutError:
                error = "timeout"
            except aiohttp.ClientConnectorError as exc:
                refused = isinstance(exc.os_error, RefusedAddress) or isinstance(
                    exc.__cause__, RefusedAddress)
                error = "refused_address" if refused else "connect_failed"
            except aiohttp.ClientError:
                error = "request_failed"
            except OSError:
                error = "connect_failed"
        attempt = Attempt(time.time(), len(events_json), status, error,
                          time.monotonic() - started)
        self.stats.attempt(endpoint.id, attempt)
        return attempt

    async def ping(self, endpoint: Endpoint) -> Attempt:
        """Send a signed ``ping`` event now, outside the outbox (``roomwire webhooks test``)."""
        event = Event(new_event_id(), PING, self._now_ms(), endpoint.app_id, None, None, 0,
                      {"message": "a test event from roomwire"})
        return await self.post(endpoint, [_json(event.public())])

    def endpoint_stats(self, endpoint_id: str) -> dict[str, Any]:
        """What the admin API shows of one endpoint's delivery on this node."""
        depth = self.outbox.depth.get(endpoint_id, 0) if self.outbox is not None else 0
        dropped = sum(n for (e, _), n in self.stats.dropped.items() if e == endpoint_id)
        return {"queueDepth": depth, "delivered": self.stats.delivered[endpoint_id],
                "failed": self.stats.failed[endpoint_id],
                "retried": self.stats.retried[endpoint_id], "dropped": dropped,
                "lastAttempts": self.stats.last_attempts(endpoint_id)}

    def depth(self) -> dict[str, int]:
        if self.outbox is None:
            return {}
        return {e: n for e, n in self.outbox.depth.items() if n or e in self.endpoints}

    def render_metrics(self) -> str:
        return self.stats.render(self.depth())


class _Worker:
    """The delivery loop of one endpoint."""

    def __init__(self, service: WebhookService, endpoint_id: str) -> None:
        self.service = service
        self.endpoint_id = endpoint_id
        self._wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self._rand: Callable[[], float] = random.random

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        try:
            while True:
                await self._once()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("webhook delivery for endpoint %s stopped", self.endpoint_id)

    async def _once(self) -> None:
        svc = self.service
        outbox = svc.outbox
        if outbox is None or outbox.depth.get(self.endpoint_id, 0) == 0:
            self._wake.clear()
            await self._wake.wait()
            return
        schedule = svc.schedule
        rows = outbox.take(self.endpoint_id, schedule.batch_max)
        if not rows:
            outbox.depth[self.endpoint_id] = 0
            return
        wait = schedule.send_in(len(rows), time.time() - rows[0][2])
        if wait:
            await asyncio.sleep(wait)
            rows = outbox.take(self.endpoint_id, schedule.batch_max)
        await self._deliver(rows)

    async def _deliver(self, rows: list[tuple[int, str, float]]) -> None:
        svc = self.service
        first = time.monotonic()
        failures = 0
        events = [r[1] for r in rows]
        ids = [r[0] for r in rows]
        while True:
            endpoint = svc.endpoints.get(self.endpoint_id)
            if endpoint is None or svc.outbox is None:
                return  # removed meanwhile: _sync_workers dropped its rows
            attempt = await svc.post(endpoint, events)
            if svc.outbox is None:
                return
            if attempt.error is None:
                svc.outbox.remove(self.endpoint_id, ids)
                svc.stats.delivered[self.endpoint_id] += len(ids)
                now = time.time()
                for e in events:
                    created = json.loads(e).get("createdAt", 0)
                    svc.stats.observe_lag(int(created), now)
                return
            failures += 1
            delay = svc.schedule.backoff(failures, self._rand())
            if svc.schedule.gives_up(first, time.monotonic(), delay):
                svc.outbox.remove(self.endpoint_id, ids)
                svc.stats.failed[self.endpoint_id] += len(ids)
                log.warning("webhook endpoint %s: gave up on %d events after %d attempts "
                            "(last: %s)", self.endpoint_id, len(ids), failures, attempt.error)
                return
            svc.stats.retried[self.endpoint_id] += 1
            await asyncio.sleep(delay)


__all__ = ["WebhookService", "send_ping"]
