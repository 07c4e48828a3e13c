"""Counters of one node. Plain attributes on the hot path; rendered for Prometheus on demand."""

from __future__ import annotations

from collections import Counter


class Metrics:
    """Cheap counters; ``render`` writes the Prometheus text exposition format."""

    def __init__(self) -> None:
        self.frames_in: Counter[str] = Counter()
        self.frames_out = 0
        self.errors: Counter[str] = Counter()
        self.closes: Counter[int] = Counter()
        self.queue_overflows = 0
        self.upgrades_rate_limited = 0
        self.connections_total = 0

    def count_frame(self, kind: str) -> None:
        self.frames_in[kind] += 1

    def count_error(self, code: str) -> None:
        self.errors[code] += 1

    def count_close(self, code: int) -> None:
        self.closes[int(code)] += 1

    def render(self, gauges: dict[str, float]) -> str:
        lines: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                lines.append(f"{name}{labels} {value}")

        metric("roomwire_frames_received_total", "counter", "Client frames received by type.",
               [(f'{{type="{k}"}}', v) for k, v in sorted(self.frames_in.items())])
        metric("roomwire_socket_writes_total", "counter", "Coalesced socket writes.",
               [("", self.frames_out)])
        metric("roomwire_errors_total", "counter", "Error frames sent, by code.",
               [(f'{{code="{k}"}}', v) for k, v in sorted(self.errors.items())])
        metric("roomwire_closes_total", "counter", "Connections closed by the server, by code.",
               [(f'{{code="{k}"}}', v) for k, v in sorted(self.closes.items())])
        metric("roomwire_queue_overflows_total", "counter",
               "Connections closed because their outbound queue overflowed.",
               [("", self.queue_overflows)])
        metric("roomwire_upgrades_rate_limited_total", "counter",
               "Upgrades refused with HTTP 429 by the per-IP connect limit.",
               [("", self.upgrades_rate_limited)])
        metric("roomwire_connections_opened_total", "counter", "Connections accepted.",
               [("", self.connections_total)])
        for name, value in sorted(gauges.items()):
            metric(name, "gauge", name.replace("_", " "), [("", value)])
        return "\n".join(lines) + "\n"
