"""Counters of one node. Plain attributes on the hot path; rendered for Prometheus on demand."""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Collection, Iterable, Mapping

from .hub import Hub
from .limits import UsageMeter
from .session import Session

#: Fan-out latency is measured on one publish in ``FANOUT_SAMPLE_MASK + 1`` (16).
FANOUT_SAMPLE_MASK = 15

#: Upper bounds (seconds) of the fan-out latency histogram buckets.
FANOUT_BUCKETS: tuple[float, ...] = (
    0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
)


def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: object) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _num(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


#: HELP lines of the gauges (docs/operations.md lists every series).
GAUGE_HELP: dict[str, str] = {
    "roomwire_connections": "Open WebSocket connections on this node.",
    "roomwire_subscriptions": "Channel subscriptions of the open connections on this node.",
    "roomwire_apps_active": "Apps with at least one connection or room on this node.",
    "roomwire_http_connections": "Open HTTP connections that are not WebSockets.",
    "roomwire_ready": "1 while /readyz answers 200 (accepting sockets), 0 while draining or "
                      "while a cluster node has lost Redis.",
    "roomwire_cluster_backplane_up": "1 while this cluster node reaches Redis, else 0.",
    "roomwire_app_connections": "Open connections of each app on this node.",
    "roomwire_app_channels": "Channels with members of each app on this node.",
    "roomwire_app_peers": "Distinct peers of each app with a socket on this node.",
    "roomwire_app_messages_period": "Messages of each app counted in the current quota period.",
    "roomwire_app_max_connections": "Each app's connection limit across the cluster "
                                    "(apps without a limit have no sample).",
}


class Metrics:
    """Cheap counters; ``render`` writes the Prometheus text exposition format."""

    def __init__(self) -> None:
        self.frames_in: Counter[str] = Counter()
        self.frames_out = 0
        self.frames_sent: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.closes: Counter[int] = Counter()
        self.queue_overflows = 0
        self.upgrades_rate_limited = 0
        self.http_refused: Counter[str] = Counter()
        """Connections refused because a connection cap was full, by cap (per_ip, total)."""
        self.http_timeouts: Counter[str] = Counter()
        """Connections closed for a missed deadline, by phase (head, body)."""
        self.pings_over_budget: Counter[str] = Counter()
        """Sockets closed for pinging too often, by kind (websocket, protocol)."""
        self.admin_auth_failures = 0
        self.admin_auth_locked = 0
        self.connections_total = 0
        self.rest_requests: Counter[tuple[str, int]] = Counter()
        self.fanout_buckets = [0] * (len(FANOUT_BUCKETS) + 1)
        self.fanout_sum = 0.0
        self.fanout_count = 0
        self.publishes = 0

    def count_frame(self, kind: str) -> None:
        self.frames_in[kind] += 1

    def count_error(self, code: str) -> None:
        self.errors[code] += 1

    def count_close(self, code: int) -> None:
        self.closes[int(code)] += 1

    def count_rest(self, endpoint: str, status: int) -> None:
        self.rest_requests[(endpoint, status)] += 1

    def sample_fanout(self) -> bool:
        """One publish in ``FANOUT_SAMPLE_MASK + 1`` is timed (``HubCounters``)."""
        self.publishes += 1
        return self.publishes & FANOUT_SAMPLE_MASK == 1

    def observe_fanout(self, seconds: float) -> None:
        self.fanout_buckets[bisect.bisect_left(FANOUT_BUCKETS, seconds)] += 1
        self.fanout_sum += seconds
        self.fanout_count += 1

    def render(
        self,
        gauges: Mapping[str, float],
        per_app: Mapping[str, Mapping[str, float]] | None = None,
        replays: Mapping[str, int] | None = None,
    ) -> str:
        """``gauges``: name -> value; ``per_app``: gauge name -> {app id -> value};
        ``replays``: returns of token identities the ``replay`` setting covers, by outcome
        (``server/replay.py``; None: the setting is off, no series)."""
        lines: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: Iterable[tuple[str, float]],
                   ) -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                lines.append(f"{name}{labels} {_num(value)}")

        metric("roomwire_frames_received_total", "counter",
               "Client frames (and REST publishes) received, by type.",
               [(_labels(type=k), v) for k, v in sorted(self.frames_in.items())])
        sent = Counter(self.frames_sent)
        sent["error"] += sum(self.errors.values())
        sent["pong"] += self.frames_in.get("ping", 0)
        sent["welcome"] += self.connections_total
        metric("roomwire_frames_sent_total", "counter",
               "Server frames sent, by type (message and presence count every recipient; "
               "acks and presence snapshots are not counted).",
               [(_labels(type=k), v) for k, v in sorted(sent.items())])
        metric("roomwire_socket_writes_total", "counter", "Coalesced socket writes.",
               [("", self.frames_out)])
        metric("roomwire_errors_total", "counter", "Error frames sent, by code.",
               [(_labels(code=k), v) for k, v in sorted(self.errors.items())])
        metric("roomwire_closes_total", "counter", "Connections closed by the server, by code.",
               [(_labels(code=k), v) for k, v in sorted(self.closes.items())])
        metric("roomwire_queue_overflows_total", "counter",
               "Connections closed because their outbound queue overflowed.",
               [("", self.queue_overflows)])
        metric("roomwire_upgrades_rate_limited_total", "counter",
               "Upgrades refused with HTTP 429 by the per-IP connect limit.",
               [("", self.upgrades_rate_limited)])
        metric("roomwire_admin_auth_failures_total", "counter",
               "Admin API requests with a missing or wrong admin token.",
               [("", self.admin_auth_failures)])
        metric("roomwire_admin_auth_locked_total", "counter",
               "Admin API requests refused with HTTP 429 because their IP failed too often.",
               [("", self.admin_auth_locked)])
        metric("roomwire_http_connections_refused_total", "counter",
               "New connections refused because a connection cap was full, by cap "
               "(per_ip: http_max_connections_per_ip, total: http_max_connections).",
               [(_labels(cap=k), v) for k, v in sorted(self.http_refused.items())])
        metric("roomwire_http_timeouts_total", "counter",
               "Connections closed because a request head or body missed its deadline.",
               [(_labels(phase=k), v) for k, v in sorted(self.http_timeouts.items())])
        metric("roomwire_pings_over_budget_total", "counter",
               "Sockets closed with 4011 for sending pings faster than the ping budget, by kind.",
               [(_labels(kind=k), v) for k, v in sorted(self.pings_over_budget.items())])
        metric("roomwire_connections_opened_total", "counter", "Connections accepted.",
               [("", self.connections_total)])
        metric("roomwire_rest_requests_total", "counter",
               "REST control-plane requests, by endpoint and HTTP status.",
               [(_labels(endpoint=e, status=s), v)
                for (e, s), v in sorted(self.rest_requests.items())])
        if replays is not None:
            metric("roomwire_replays_total", "counter",
                   "Returns of token identities to a channel the replay setting covers, by "
                   "outcome (replayed, or why nothing was: epoch_changed, gap_lost, too_large, "
                   "expired; evicted counts drops forgotten to bound the ledger).",
                   [(_labels(outcome=k), v) for k, v in sorted(replays.items())])
        hist: list[tuple[str, float]] = []
        cumulative = 0
        for bound, n in zip(FANOUT_BUCKETS, self.fanout_buckets, strict=False):
            cumulative += n
            hist.append((_labels(le=repr(bound)), cumulative))
        hist.append((_labels(le="+Inf"), self.fanout_count))
        lines.append("# HELP roomwire_fanout_seconds Time to fan one publish out to the "
                     "local subscribers' queues (one publish in 16 is measured).")
        lines.append("# TYPE roomwire_fanout_seconds histogram")
        for labels, value in hist:
            lines.append(f"roomwire_fanout_seconds_bucket{labels} {_num(value)}")
        lines.append(f"roomwire_fanout_seconds_sum {self.fanout_sum!r}")
        lines.append(f"roomwire_fanout_seconds_count {self.fanout_count}")
        for name, value in sorted(gauges.items()):
            metric(name, "gauge", GAUGE_HELP.get(name, name.replace("_", " ")), [("", value)])
        for name, values in sorted((per_app or {}).items()):
            metric(name, "gauge", GAUGE_HELP.get(name, name.replace("_", " ") + " (per app)"),
                   [(_labels(app=a), v) for a, v in sorted(values.items())])
        return "\n".join(lines) + "\n"


def render_node(metrics: Metrics, hub: Hub, usage: UsageMeter, sessions: Collection[Session],
                http_connections: int, *, ready: bool = True, backplane_up: bool | None = None,
                max_connections: Mapping[str, int] | None = None) -> str:
    """The ``/metrics`` page of one node: its counters, and gauges read at this moment.

    ``ready``: what ``/readyz`` answers; ``backplane_up``: whether a cluster node reaches Redis
    (None on a single node: no series); ``max_connections``: the apps' connection limits."""
    gauges: dict[str, float] = {
        "roomwire_connections": len(sessions),
        "roomwire_subscriptions": sum(len(s.subscriptions) for s in sessions),
        "roomwire_apps_active": len(hub.tenants),
        "roomwire_http_connections": http_connections,
        "roomwire_ready": int(ready),
    }
    if backplane_up is not None:
        gauges["roomwire_cluster_backplane_up"] = int(backplane_up)
    per_app: dict[str, dict[str, float]] = {
        "roomwire_app_connections": {}, "roomwire_app_channels": {},
        "roomwire_app_peers": {}, "roomwire_app_messages_period": {},
        "roomwire_app_max_connections": dict(max_connections or {}),
    }
    for app_id in list(hub.tenants):
        stats = hub.stats(app_id)
        per_app["roomwire_app_connections"][app_id] = stats["connections"]
        per_app["roomwire_app_channels"][app_id] = stats["channels"]
        per_app["roomwire_app_peers"][app_id] = stats["peers"]
    for app_id, u in list(usage.apps.items()):
        per_app["roomwire_app_messages_period"][app_id] = u.messages
    replay = hub.replay
    return metrics.render(gauges, per_app, None if replay is None else replay.outcomes)
