"""Usage counters kept across restarts, and the ``GET /v1/usage`` document.

The hot path only bumps the in-memory ``UsageMeter``; the node copies it to the ``usage``
table every ``usage_flush_interval`` seconds and at stop, and reads the current period back at
start.
"""

from __future__ import annotations

import time
from typing import Any

from ..hub import Hub
from ..limits import AppUsage, UsageMeter, month_period
from . import App, Store, UsageRow


def restore(meter: UsageMeter, store: Store, now: float | None = None) -> int:
    """Load the current period's counters into ``meter``. Returns the number of apps loaded."""
    start, _end = month_period(time.time() if now is None else now)
    n = 0
    for row in store.load_usage(start):
        u = meter.apps.get(row.app_id)
        if u is None or u.period_start != row.period_start:
            u = meter.apps[row.app_id] = AppUsage(row.period_start, row.period_end)
        u.messages = max(u.messages, row.messages)
        u.peak_connections = max(u.peak_connections, row.peak_connections)
        u.rejected_messages = max(u.rejected_messages, row.rejected_messages)
        u.refused_connections = max(u.refused_connections, row.refused_connections)
        n += 1
    return n


def flush(meter: UsageMeter, store: Store) -> None:
    """Write every app's counters (cheap: one row per active app)."""
    store.save_usage(
        UsageRow(app_id, u.period_start, u.period_end, u.messages, u.peak_connections,
                 u.rejected_messages, u.refused_connections)
        for app_id, u in list(meter.apps.items())
    )


def usage_document(app: App, meter: UsageMeter, hub: Hub) -> dict[str, Any]:
    """The ``GET /v1/usage`` body (docs/operations.md, Usage and plans).

    A self-hosted server has no billing: ``overagesAllowed`` and ``overagesEnabled`` are false,
    ``overageMessages`` counts messages refused with ``over_message_quota`` and
    ``overageConnections`` counts connections refused with 4010, in the current period.
    """
    u = meter.usage(app.id)
    now_conns = hub.connections_everywhere(app.id)
    return {
        "appId": app.id,
        "periodStartUnix": u.period_start,
        "periodEndUnix": u.period_end,
        "concurrentNow": now_conns,
        "peakConcurrent": max(u.peak_connections, now_conns),
        "messagesUsed": u.messages,
        "overageMessages": u.rejected_messages,
        "overageConnections": u.refused_connections,
        "plan": {
            "name": None,
            "maxConcurrentConnections": app.max_connections,
            "maxMessagesPerPeriod": app.max_messages_per_period,
            "overagesAllowed": False,
            "overagesEnabled": False,
        },
    }
