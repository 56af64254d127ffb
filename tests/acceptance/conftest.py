"""The session's PostgreSQL server (tests/pg.py) for the target-database tests here, and the
``gate`` and ``groups_to_kill`` fixtures of the step-process tests (helpers in tests/support.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.pg import PostgresServer, postgres_server
from tests.support import Gate, kill_group


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session, shared with the other test directories."""
    yield from postgres_server()


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Callable[[str], Gate]]:
    """Make gates; every gate is opened at the end of the test so no step stays blocked."""
    made: list[Gate] = []

    def make(name: str) -> Gate:
        g = Gate(tmp_path, name)
        made.append(g)
        return g

    yield make
    for g in made:
        g.open()


@pytest.fixture
def groups_to_kill() -> Iterator[list[int]]:
    """Process groups SIGKILLed at the end of the test (steps orphaned by a killed daemon, or
    whatever a failed assertion left behind)."""
    pgids: list[int] = []
    yield pgids
    for pgid in pgids:
        kill_group(pgid)
