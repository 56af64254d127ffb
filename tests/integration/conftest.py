"""The session's PostgreSQL server (tests/pg.py) for the target-database tests here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pg import PostgresServer, postgres_server


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session, shared with the other test directories."""
    yield from postgres_server()
