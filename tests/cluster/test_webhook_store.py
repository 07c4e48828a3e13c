"""The ``webhooks`` table, the same in both stores: create, list, change, rotate, delete, and
the refusals, on SQLite and PostgreSQL; a change made on one store connection is seen by
another (what the nodes' store poll relies on)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from roomwire.server.store import NotFoundError, SqliteStore, StoreError
from roomwire.server.store.postgres import PostgresStore

from .conftest import PG_URL


@pytest.fixture(params=["sqlite", "postgres"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    """Two connections to one database."""
    if request.param == "sqlite":
        a, b = SqliteStore(tmp_path / "s.sqlite3"), SqliteStore(tmp_path / "s.sqlite3")
        yield a, b
        a.close()
        b.close()
        return
    schema = f"rwtest_{secrets.token_hex(4)}"
    try:
        a = PostgresStore(PG_URL, schema=schema)
    except StoreError as exc:
        pytest.fail(f"{exc}; run scripts/setup-services.sh")
    b = PostgresStore(PG_URL, schema=schema)
    try:
        yield a, b
    finally:
        b.close()
        a.drop_schema()
        a.close()


def test_webhook_rows_in_both_stores(stores: tuple[Any, Any]) -> None:
    store, other = stores
    app = store.create_app("acme")
    version = other.data_version()
    hook = store.create_webhook(app.id, "https://hooks.example.com/rw",
                                events=["peer_joined", "peer_left"],
                                channel_patterns=["rooms/*"])
    assert hook.secret.startswith("whsec_") and len(hook.secret) > 30
    assert other.data_version() != version  # the nodes reload on this
    seen = other.get_webhook(hook.id)
    assert seen == hook
    assert [h.id for h in other.list_webhooks(app.id)] == [hook.id]
    changed = other.update_webhook(hook.id, enabled=False, events=["channel_vacated"])
    assert changed.enabled is False and changed.events == frozenset({"channel_vacated"})
    assert changed.secret == hook.secret
    rotated = store.update_webhook(hook.id, rotate_secret=True)
    assert rotated.secret != hook.secret and not rotated.enabled
    for bad in [dict(url="ftp://x"), dict(events=["nope"]), dict(channel_patterns=[]),
                dict(enabled="yes"), dict(colour="red")]:
        with pytest.raises(StoreError):
            store.update_webhook(hook.id, **bad)
    with pytest.raises(StoreError, match="at most"):
        for _ in range(20):
            store.create_webhook(app.id, "https://hooks.example.com/more")
    with pytest.raises(NotFoundError):
        store.create_webhook("app_nope", "https://hooks.example.com/rw")
    assert store.delete_webhook(hook.id).id == hook.id
    with pytest.raises(NotFoundError):
        other.get_webhook(hook.id)
