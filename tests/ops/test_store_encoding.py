"""The PostgreSQL store on a database created without a locale (``SQL_ASCII``, what a bare
``initdb`` in a minimal container gives): a second process finds the first one's default app
and ids round-trip as text (psycopg returns ``bytes`` for text there unless the client
encoding is set, and a ``bytes`` id then fails every query: ``text = bytea``)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import psycopg
import pytest

from roomwire.server.store.postgres import PostgresStore

PG_URL = os.environ.get("ROOMWIRE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def ascii_db() -> Iterator[str]:
    name = f"rwascii_{secrets.token_hex(4)}"
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name} ENCODING 'SQL_ASCII' TEMPLATE template0 "
                      "LC_COLLATE 'C' LC_CTYPE 'C'")
    try:
        yield PG_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_second_process_finds_the_default_app_on_a_sql_ascii_database(ascii_db: str) -> None:
    first = PostgresStore(ascii_db)
    app, keys, created = first.ensure_default_app()
    assert created
    second = PostgresStore(ascii_db)
    again, again_keys, created_again = second.ensure_default_app()
    assert not created_again
    assert again.id == app.id and isinstance(again.id, str)
    assert {k.id for k in again_keys} == {k.id for k in keys}
    assert second.get_app(app.id).name == app.name
