from __future__ import annotations

from loadmgrd.repository import load_migrations
from tests.conftest import Daemon

SCHEMA_VERSION = len(load_migrations())


def test_ping_reports_version_and_schema(daemon: Daemon) -> None:
    from loadmgrd import __version__

    reply = daemon.rpc("ping")
    assert reply["result"]["version"] == __version__
    assert reply["result"]["schema_version"] == SCHEMA_VERSION
    out = daemon.ok("ping")
    assert f"loadmgrd {__version__}" in out and f"schema version {SCHEMA_VERSION}" in out
