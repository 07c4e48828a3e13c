"""The capacity model's arithmetic (bench/capacity_model.py), on made-up unit costs."""

from __future__ import annotations

import sys
from dataclasses import fields, replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import capacity_model as cm


def unit_costs(**over: float) -> cm.Costs:
    base = {f.name: 0.0 for f in fields(cm.Costs)}
    base.update(over)
    return cm.Costs(**base)


@pytest.mark.parametrize(
    ("members", "nodes", "expected"),
    [(10, 1, 1.0), (1, 20, 1.0), (2, 2, 1.5), (10, 20, 8.025)],
)
def test_nodes_holding_a_group(members: int, nodes: int, expected: float) -> None:
    assert cm.nodes_holding(members, nodes) == pytest.approx(expected, abs=1e-3)


def test_one_node_reads_nothing_from_redis_and_delivers_everything() -> None:
    load = cm.Load(connections=1000, nodes=1, shards=1, reconnects_per_s=0,
                   deliveries_per_s=9000)
    p = cm.predict(load, unit_costs(node_local_delivery=1.0, node_remote_message=100.0))
    assert p["node_remote_messages"] == 0
    assert p["node_local_deliveries"] == 9000
    assert p["node_cores"] == pytest.approx(9000 / 1e6)


def test_redis_sends_grow_with_the_nodes_holding_each_group() -> None:
    costs = unit_costs(redis_per_node_sent=1.0)
    few = cm.predict(cm.million(nodes=2), costs)
    many = cm.predict(cm.million(nodes=20), costs)
    publishes = 500_000 / 9
    assert few["redis_sends"] == pytest.approx(publishes * cm.nodes_holding(10, 2))
    assert many["redis_sends"] == pytest.approx(publishes * 8.025, rel=1e-3)


def test_shards_divide_the_redis_work_and_memory() -> None:
    costs = unit_costs(redis_publish=2.0, redis_per_node_sent=1.0, redis_join=5.0,
                       redis_bytes_conn=100.0, redis_bytes_member=200.0)
    one = cm.predict(cm.million(shards=1), costs)
    four = cm.predict(cm.million(shards=4), costs)
    assert four["redis_cores"] == pytest.approx(one["redis_cores"] / 4)
    assert four["redis_mib"] == pytest.approx(one["redis_mib"] / 4)


def test_remote_entries_are_the_held_groups_members_that_are_not_local() -> None:
    load = cm.Load(connections=100, nodes=2, shards=1, reconnects_per_s=0, deliveries_per_s=0)
    p = cm.predict(load, unit_costs(node_kib_remote_entry=1024.0))
    # 10 groups of 10, each held by 1.998 nodes on average: 99.9 entries per node, 50 local.
    assert p["node_remote_entries"] == pytest.approx(10 * cm.nodes_holding(10, 2) / 2 * 10 - 50)
    assert p["node_mib"] == pytest.approx(p["node_remote_entries"])


def test_needed_adds_shards_when_redis_is_the_limit_and_nodes_when_they_are() -> None:
    redis_bound = unit_costs(redis_per_node_sent=10.0)
    nodes, shards = cm.needed(cm.million(), redis_bound)
    assert nodes == 20
    assert shards > 1
    assert cm.predict(cm.million(nodes=nodes, shards=shards), redis_bound)["redis_cores"] <= 0.7
    node_bound = replace(redis_bound, redis_per_node_sent=0.0, node_local_delivery=40.0)
    nodes, shards = cm.needed(cm.million(), node_bound)
    assert shards == 1
    assert nodes > 20
    assert cm.predict(cm.million(nodes=nodes), node_bound)["node_cores"] <= 0.7
