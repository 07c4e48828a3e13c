"""The cluster capacity model: per-event costs (measured by bench/cluster_costs.py) times the
event rates a load implies, per node and per Redis shard. Plain arithmetic, no I/O.

The load is Centrifugo's million-connection shape: every connection holds a personal channel
(1 member) and a group channel of ``group_size`` members; ``reconnects_per_s`` clients
disconnect and connect again (each: socket, personal subscribe, group join, and the reverse);
messages are published by a group member into its group and reach the other members.
Members are spread over the nodes at random and channels over the shards by hash.

A roomwire node is one Python process and a Redis shard one thread: each is capped at one
core, so "cores" below is also the share of the one core each can use.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Costs:
    """CPU in microseconds per event, memory in KiB (node) or bytes (Redis)."""

    node_connect: float
    node_disconnect: float
    node_sub_new: float  # first member of a channel on the node (SUBSCRIBE + join script)
    node_unsub_last: float
    node_join_origin: float  # join into a channel the node already holds
    node_leave_origin: float
    node_presence_remote: float  # a Join/Leave arriving at another holding node, delivered
    node_publish_origin: float  # parse, ack, PUBLISH, own echo; local deliveries apart
    node_remote_message: float  # a message read from Redis (before its local deliveries)
    node_local_delivery: float
    redis_connect: float
    redis_disconnect: float
    redis_sub_new: float
    redis_unsub_last: float
    redis_join: float  # join script whose Join event goes to 3 nodes
    redis_leave: float
    redis_publish: float  # one PUBLISH, before its sends
    redis_per_node_sent: float  # each node subscribed to the channel the PUBLISH reaches
    node_kib_conn: float
    node_kib_channel_sub: float
    node_kib_remote_entry: float
    redis_bytes_conn: float
    redis_bytes_member: float
    node_idle_per_conn: float = 0.0  # us per second per held connection (pings, timers)
    node_idle: float = 0.0  # us per second of a node holding nothing (heartbeat, polls)
    redis_idle_per_node: float = 0.0  # us per second per node (heartbeats, usage sync)

    @classmethod
    def from_measured(cls, m: dict[str, Any], regime: str = "") -> Costs:
        """From the key names bench/cluster_costs.py prints. ``regime`` picks the routing
        costs measured at 200 (``_low_rate``), 2,000 (``""``) or 10,000 (``_high_rate``)
        publishes/s: the more commands share a round trip, the cheaper each one."""
        low = regime
        return cls(
            node_idle_per_conn=m.get("node_us_idle_per_conn_s", 0.0),
            node_idle=m.get("node_us_idle_per_s", 0.0),
            redis_idle_per_node=m.get("redis_us_idle_per_s", 0.0) / 3,
            node_connect=m["node_us_connect"],
            node_disconnect=m["node_us_disconnect"],
            node_sub_new=m["node_us_sub_new"],
            node_unsub_last=m["node_us_unsub_last"],
            node_join_origin=m["node_us_join_origin"],
            node_leave_origin=m["node_us_leave_origin"],
            node_presence_remote=(m["node_us_join_per_remote_node"]
                                  + m["node_us_leave_per_remote_node"]) / 2,
            node_publish_origin=m["node_us_publish_origin" + low]
            - m["node_us_remote_local_delivery" + low],
            node_remote_message=m["node_us_remote_message" + low],
            node_local_delivery=m["node_us_remote_local_delivery" + low],
            redis_connect=m["redis_us_connect"],
            redis_disconnect=m["redis_us_disconnect"],
            redis_sub_new=m["redis_us_sub_new"],
            redis_unsub_last=m["redis_us_unsub_last"],
            redis_join=m["redis_us_join"],
            redis_leave=m["redis_us_leave"],
            redis_publish=m["redis_us_per_publish" + low],
            redis_per_node_sent=m["redis_us_per_node_sent" + low],
            node_kib_conn=m["node_kib_per_conn"],
            node_kib_channel_sub=m["node_kib_per_channel_sub"],
            node_kib_remote_entry=m["node_kib_per_remote_entry"],
            redis_bytes_conn=m["redis_bytes_per_conn"],
            redis_bytes_member=m["redis_bytes_per_channel_member"],
        )

    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Load:
    connections: int
    nodes: int
    shards: int
    reconnects_per_s: float
    deliveries_per_s: float
    group_size: int = 10
    frame_bytes: int = 330  # a ~200-byte data object in a cluster frame


def million(nodes: int = 20, shards: int = 1) -> Load:
    """Centrifugo's published test: 1M connections, 200,000 reconnects a minute, ~500,000
    messages/s delivered; here over ``nodes`` nodes and ``shards`` Redis servers."""
    return Load(connections=1_000_000, nodes=nodes, shards=shards,
                reconnects_per_s=200_000 / 60, deliveries_per_s=500_000)


def nodes_holding(members: int, nodes: int) -> float:
    """Expected number of distinct nodes among ``members`` placed at random on ``nodes``."""
    return float(nodes) * (1.0 - (1.0 - 1.0 / nodes) ** members)


def predict(load: Load, c: Costs) -> dict[str, float]:
    """Event rates and CPU (cores) per node and per Redis shard, memory per node and shard."""
    n, s, g = load.nodes, load.shards, load.group_size
    holders = nodes_holding(g, n)  # nodes subscribed to a group's Redis channel
    # A joiner's node lacks the group when none of the 9 others is on it (and the leaver was
    # its last local member, the same odds).
    p_alone = (1.0 - 1.0 / n) ** (g - 1)
    publishes = load.deliveries_per_s / (g - 1)
    r = load.reconnects_per_s
    out: dict[str, float] = {"holders_per_group": holders, "p_group_new_to_node": p_alone,
                             "publishes_per_s": publishes}
    # -- per node (the load is symmetric: each node gets 1/n of every cluster-wide rate)
    out["node_publishes"] = publishes / n
    out["node_remote_messages"] = publishes * (holders - 1) / n
    out["node_local_deliveries"] = load.deliveries_per_s / n
    out["node_reconnects"] = r / n
    out["node_presence_in"] = 2 * r * (holders - 1) / n  # joins + leaves from other nodes
    group_join = c.node_join_origin + p_alone * (c.node_sub_new - c.node_join_origin)
    group_leave = c.node_leave_origin + p_alone * (c.node_unsub_last - c.node_leave_origin)
    per_reconnect = (c.node_connect + c.node_disconnect + c.node_sub_new + c.node_unsub_last
                     + group_join + group_leave)
    node_us = {
        "publish (origin)": out["node_publishes"] * c.node_publish_origin,
        "message from Redis": out["node_remote_messages"] * c.node_remote_message,
        "local delivery": out["node_local_deliveries"] * c.node_local_delivery,
        "reconnect (origin)": out["node_reconnects"] * per_reconnect,
        "presence from others": out["node_presence_in"] * c.node_presence_remote,
        "idle: held connections, heartbeat": load.connections / n * c.node_idle_per_conn
        + c.node_idle,
    }
    for k, v in node_us.items():
        out[f"node_cores {k}"] = v / 1e6
    out["node_cores"] = sum(node_us.values()) / 1e6
    # -- per Redis shard (channels and peers hashed over the shards)
    out["redis_publishes"] = publishes / s
    out["redis_sends"] = publishes * holders / s
    out["redis_send_bytes_per_s"] = out["redis_sends"] * load.frame_bytes
    out["redis_reconnects"] = r / s
    extra_sends = holders - 3  # the join/leave costs were measured with 3 holding nodes
    per_reconnect_redis = (
        c.redis_connect + c.redis_disconnect + c.redis_sub_new + c.redis_unsub_last
        + c.redis_join + c.redis_leave + 2 * extra_sends * c.redis_per_node_sent
        + p_alone * (c.redis_sub_new - c.redis_join + c.redis_unsub_last - c.redis_leave))
    redis_us = {
        "PUBLISH": out["redis_publishes"] * c.redis_publish,
        "pub/sub sends": out["redis_sends"] * c.redis_per_node_sent,
        "reconnect scripts + (UN)SUBSCRIBE": out["redis_reconnects"] * per_reconnect_redis,
        "heartbeats of the nodes": n * c.redis_idle_per_node / s,
    }
    for k, v in redis_us.items():
        out[f"redis_cores {k}"] = v / 1e6
    out["redis_cores"] = sum(redis_us.values()) / 1e6
    # -- memory
    conns_node = load.connections / n
    groups = load.connections / g
    entries_node = groups * holders / n * g - conns_node  # members of held groups not local
    out["node_remote_entries"] = entries_node
    out["node_mib"] = (conns_node * (c.node_kib_conn + 2 * c.node_kib_channel_sub)
                       + entries_node * c.node_kib_remote_entry) / 1024
    out["redis_mib"] = (load.connections * (c.redis_bytes_conn + 2 * c.redis_bytes_member)
                        / s / 2**20)
    return out


def needed(load: Load, c: Costs, ceiling: float = 0.7) -> tuple[int, int]:
    """Smallest (nodes, shards) at which no node and no shard uses more than ``ceiling`` of
    its one core. Adding nodes raises the holders per group (more sends per PUBLISH)."""
    shards = load.shards
    nodes = load.nodes
    for _ in range(10_000):
        p = predict(Load(**{**load.__dict__, "nodes": nodes, "shards": shards}), c)
        if p["node_cores"] > ceiling:
            nodes += 1
        elif p["redis_cores"] > ceiling:
            shards += 1
        else:
            return nodes, shards
    raise ValueError("no cluster size within 10,000 steps keeps under the ceiling")


def table(load: Load, c: Costs) -> str:
    """Markdown: each rate, cost and product, per node and per Redis shard."""
    p = predict(load, c)
    rows = [f"Load: {load.connections:,} connections, {load.nodes} nodes, {load.shards} Redis "
            f"shard(s), {load.reconnects_per_s:,.0f} reconnects/s, "
            f"{load.deliveries_per_s:,.0f} deliveries/s = {p['publishes_per_s']:,.0f} "
            f"publishes/s into groups of {load.group_size} (nodes holding a group: "
            f"{p['holders_per_group']:.2f}; a joiner's node new to its group: "
            f"{p['p_group_new_to_node']:.0%})", "",
            "| where | event | per second | CPU us each | cores |", "|---|---|---|---|---|"]
    gj = c.node_join_origin + p["p_group_new_to_node"] * (c.node_sub_new - c.node_join_origin)
    gl = c.node_leave_origin + p["p_group_new_to_node"] * (c.node_unsub_last
                                                             - c.node_leave_origin)
    per_rc = (c.node_connect + c.node_disconnect + c.node_sub_new + c.node_unsub_last + gj + gl)
    node_rows = [
        ("publish from a local client", p["node_publishes"], c.node_publish_origin),
        ("message read from Redis", p["node_remote_messages"], c.node_remote_message),
        ("local delivery (socket write)", p["node_local_deliveries"], c.node_local_delivery),
        ("reconnect: connect+disconnect+2 subscribes+2 unsubscribes", p["node_reconnects"],
         per_rc),
        ("presence event from another node", p["node_presence_in"], c.node_presence_remote),
        ("idle: held connections (per connection-second)", load.connections / load.nodes,
         c.node_idle_per_conn),
    ]
    for name, rate, cost in node_rows:
        rows.append(f"| each node | {name} | {rate:,.0f} | {cost:,.1f} | {rate * cost / 1e6:.3f} |")
    rows.append(f"| each node | **total** | | | **{p['node_cores']:.2f}** |")
    per_rc_redis = (p["redis_cores reconnect scripts + (UN)SUBSCRIBE"] * 1e6
                    / p["redis_reconnects"]) if p["redis_reconnects"] else 0.0
    redis_rows = [
        ("PUBLISH", p["redis_publishes"], c.redis_publish),
        ("pub/sub send to a node", p["redis_sends"], c.redis_per_node_sent),
        ("reconnect: scripts, (UN)SUBSCRIBE", p["redis_reconnects"], per_rc_redis),
        ("heartbeats (per node-second)", load.nodes / load.shards, c.redis_idle_per_node),
    ]
    for name, rate, cost in redis_rows:
        rows.append(f"| each Redis | {name} | {rate:,.0f} | {cost:,.2f} | "
                    f"{rate * cost / 1e6:.3f} |")
    rows.append(f"| each Redis | **total** | | | **{p['redis_cores']:.2f}** |")
    rows += ["", f"Memory: each node {p['node_mib']:,.0f} MiB ({load.connections / load.nodes:,.0f}"
             f" connections, {p['node_remote_entries']:,.0f} remote presence entries); each "
             f"Redis {p['redis_mib']:,.0f} MiB; pub/sub output per Redis "
             f"{p['redis_send_bytes_per_s'] / 2**20:,.0f} MiB/s."]
    nodes, shards = needed(load, c)
    rows.append(f"Keeping every process under 70 % of its core needs {nodes} nodes and "
                f"{shards} Redis shard(s).")
    return "\n".join(rows)
