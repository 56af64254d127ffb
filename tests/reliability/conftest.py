"""Fixtures of the reliability and security suite.

Long mode is ``LOADMGR_LONG=1`` in the environment, not a ``--long`` option: ``pytest_addoption``
is honoured only in the root conftest (or a plugin), and this suite leaves ``tests/conftest.py``
alone. ``LOADMGR_SEED=N`` replays the random choices of a previous run (the seed is in every
randomised assertion message and in the header line this conftest prints).
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator

import pytest

from tests.conftest import Daemon
from tests.reliability.support import (
    BASE_SEED,
    LONG,
    DaemonFactory,
    OtherUser,
    discard_daemon,
    kill_group,
    kill_pid,
    new_daemon,
    nobody_user,
)


def pytest_report_header(config: pytest.Config) -> str:
    mode = f"loadmgr reliability suite: {'LONG' if LONG else 'fast'} mode"
    if config.getoption("numprocesses", None):
        return f"{mode}; seed: in every randomised assertion message (one per run, shared by the workers)"
    return f"{mode}, LOADMGR_SEED={BASE_SEED}"


@pytest.fixture
def seeded(request: pytest.FixtureRequest) -> tuple[int, random.Random]:
    """A seed of this test (from LOADMGR_SEED and the test id) and a Random seeded with it."""
    seed = (BASE_SEED + zlib.crc32(request.node.nodeid.encode())) % 2**31
    return seed, random.Random(seed)


@pytest.fixture(scope="module")
def nobody() -> OtherUser:
    return nobody_user()


@pytest.fixture
def groups_to_kill() -> Iterator[list[int]]:
    """Process groups SIGKILLed when the test ends (steps orphaned by a killed daemon)."""
    pgids: list[int] = []
    yield pgids
    for pgid in pgids:
        kill_group(pgid)


@pytest.fixture
def pids_to_kill() -> Iterator[list[int]]:
    """Processes SIGKILLed when the test ends (grandchildren of steps)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        kill_pid(pid)


@pytest.fixture
def daemon_factory() -> Iterator[DaemonFactory]:
    """Make daemons with extra config (not started); each is stopped and its home removed at the end."""
    made: list[Daemon] = []

    def make(*, daemon_keys: dict[str, str] | None = None, sections: str = "") -> Daemon:
        d = new_daemon(daemon_keys=daemon_keys, sections=sections)
        made.append(d)
        return d

    yield make
    for d in made:
        discard_daemon(d)
