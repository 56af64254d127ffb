from __future__ import annotations

from tests.conftest import Daemon


def test_ping_reports_version_and_schema(daemon: Daemon) -> None:
    from loadmgrd import __version__

    reply = daemon.rpc("ping")
    assert reply["result"]["version"] == __version__
    assert reply["result"]["schema_version"] == 1
    out = daemon.ok("ping")
    assert f"loadmgrd {__version__}" in out and "schema version 1" in out
