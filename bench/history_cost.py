"""CPU of the hub's fan-out with roomwire's history extension, in process, no sockets.

The network benchmarks (bench/run.py) swing 2x on a shared machine; the history cost is a few
hundred nanoseconds per publish, so it is measured here on the hub alone: ``Hub.publish`` to N
links whose ``send_wire`` only keeps a reference, in the same process, variants interleaved
round by round so that noise hits them alike. Variants:

* ``off``: no history setting (the baseline; what every server without ``history`` runs),
* ``other``: a history rule that does not cover the channel (one cached lookup per publish),
* ``record``: the channel keeps history, no subscriber opted in (frames unchanged),
* ``opted``: every subscriber opted in (positions on every message),
* ``half``: half of them opted in (two variants encoded per publish).

Reports CPU ns per publish and per delivery (median over rounds, [min-max]) and the ratio to
``off`` measured in the same round.

    .venv/bin/python bench/history_cost.py                 # N = 1, 10, 100, 1000
    .venv/bin/python bench/history_cost.py --rounds 9 --publishes 20000

In a cluster (``--mode``; the cluster part is in ``history_cluster.py``):

* ``cluster-hub``: the same in process for a clustered hub (its broker only collects the
  commands): the publishing node's ``Hub.publish`` (history off: a PUBLISH; on: the append
  script's arguments, local subscribers that did not opt in served at once) and a receiving
  node's delivery of one message to N subscribers (``deliver_publish`` vs
  ``deliver_posted``), none / all opted in.
* ``redis``: redis-server's own CPU per publish (INFO cpu and /proc schedstat of a private
  redis-server, one subscribed connection as one receiving node), PUBLISH vs the append
  script, the commands exactly as the broker builds them, rounds interleaved.
* ``recovery``: 3 nodes (subprocesses) over a private Redis; 1,000 clients opted in on node
  A across 100 channels; node A is killed (-9) and restarted, 5 messages per channel are
  published meanwhile from node B, and the clients come back to nodes B and C with
  ``recover``: time until all have their missed messages; then the same storm resubscribing
  plainly (no recovery) as the baseline.

    .venv/bin/python bench/history_cost.py --mode cluster-hub --rounds 5
    .venv/bin/python bench/history_cost.py --mode redis --rounds 5 --publishes 20000
    .venv/bin/python bench/history_cost.py --mode recovery --clients 1000
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from hubkit import FakeLink

from roomwire.server.broker.memory import MemoryBroker
from roomwire.server.gateway.websocket import ws_text_frame
from roomwire.server.hub import Hub

try:
    from roomwire.server.history import History, HistoryRule
except ImportError:  # a tree before history (PYTHONPATH=<old>/src): the baseline only
    VARIANTS: tuple[str, ...] = ("off",)
else:
    VARIANTS = ("off", "other", "record", "opted", "half")
CHANNEL = "chat/room"
sys.path.insert(0, str(Path(__file__).parent))


def build(variant: str, n: int) -> Hub:
    hub = Hub(ws_text_frame, MemoryBroker())
    if variant != "off":
        pattern = "other/**" if variant == "other" else "chat/**"
        hub.history = History([HistoryRule(None, pattern, 100, 300.0)])
    for i in range(n):
        link = FakeLink(i)
        hub.subscribe(link, CHANNEL, False)  # type: ignore[arg-type]
        if variant == "opted" or (variant == "half" and i % 2 == 0):
            hub.follow_history(link, CHANNEL, None)  # type: ignore[arg-type]
    return hub


def measure(hub: Hub, publishes: int) -> float:
    """CPU seconds for ``publishes`` publishes of a ~100-byte message."""
    data = b'{"text":"' + b"x" * 80 + b'","n":1}'
    sender = b'"publisher"'
    publish = hub.publish
    start = time.process_time()
    for _ in range(publishes):
        publish("app", CHANNEL, data, sender, None)
    return time.process_time() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--subscribers", default="1,10,100,1000")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--publishes", type=int, default=0,
                   help="per variant and round (default: 200,000 deliveries' worth)")
    p.add_argument("--mode", default="hub", choices=("hub", "cluster-hub", "redis", "recovery"))
    p.add_argument("--clients", type=int, default=1000, help="recovery: clients")
    p.add_argument("--channels", type=int, default=100, help="recovery: channels")
    p.add_argument("--missed", type=int, default=5, help="recovery: messages per channel")
    args = p.parse_args()
    if args.mode != "hub":
        import history_cluster

        history_cluster.main(args)
        return
    print(f"- machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"Python {platform.python_version()}, load average at start "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"- {args.rounds} rounds, variants interleaved; CPU = process_time; "
          "cells: median [min-max]; ratio: median of per-round ratios to off\n")
    print("| N | variant | ns/publish | ns/delivery | vs off |")
    print("|---|---|---|---|---|")
    for n in (int(x) for x in args.subscribers.split(",")):
        publishes = args.publishes or max(200, 200_000 // n)
        hubs = {v: build(v, n) for v in VARIANTS}
        for hub in hubs.values():
            measure(hub, publishes // 10)  # warm-up
        per: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for r in range(args.rounds):
            order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
            for v in order:
                per[v].append(measure(hubs[v], publishes) / publishes * 1e9)
        for v in VARIANTS:
            ratios = [a / b for a, b in zip(per[v], per["off"], strict=True)]
            med = statistics.median(per[v])
            print(f"| {n} | {v} | {med:,.0f} [{min(per[v]):,.0f}-{max(per[v]):,.0f}] | "
                  f"{med / n:,.1f} | {statistics.median(ratios):.2f}x |")
    print(f"\n- load average at end {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
