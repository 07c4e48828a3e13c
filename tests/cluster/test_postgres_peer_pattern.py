"""The PostgreSQL store keeps a secret key's peer id pattern, also in an older database."""

from __future__ import annotations

import secrets

import pytest

from roomwire.server.store import StoreError
from roomwire.server.store.postgres import PostgresStore

from .conftest import PG_URL


def test_peer_id_pattern_and_migration_on_postgres() -> None:
    schema = f"rwtest_{secrets.token_hex(4)}"
    try:
        store = PostgresStore(PG_URL, schema=schema)
    except StoreError as exc:
        pytest.fail(f"{exc}; run scripts/setup-services.sh")
    try:
        app = store.create_app("a")
        old = store.create_key(app.id, "secret")
        # The schema of releases before the column existed: drop it, as such a database lacks it.
        with store._write() as cur:
            cur.execute("ALTER TABLE keys DROP COLUMN peer_id_pattern")
        reopened = PostgresStore(PG_URL, schema=schema)
        try:
            assert reopened.get_key(old.id).peer_id_pattern is None
            key = reopened.create_key(app.id, "secret", peer_id_pattern="bot-*")
            assert reopened.get_key(key.id).peer_id_pattern == "bot-*"
            assert [k.peer_id_pattern for k in reopened.list_keys(app.id)] == [None, "bot-*"]
            with pytest.raises(StoreError, match="secret keys only"):
                reopened.create_key(app.id, "publishable", peer_id_pattern="x")
        finally:
            reopened.close()
    finally:
        store.drop_schema()
        store.close()
