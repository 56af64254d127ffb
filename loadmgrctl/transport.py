"""One JSON-RPC request over the daemon's Unix socket. Standard library only (start-up cost)."""

from __future__ import annotations

import itertools
import json
import socket
from pathlib import Path
from typing import Any

PERMISSION_DENIED = 1003
_ids = itertools.count(1)


class ClientError(Exception):
    """Something to print on one line; ``exit_code`` is what loadmgrctl exits with."""

    exit_code = 1


class Unreachable(ClientError):
    exit_code = 5


class RpcError(ClientError):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.data = data
        if code == PERMISSION_DENIED:
            self.exit_code = 4


class Connection:
    """A connection kept open for several requests (``logs -f``, ``start --wait``)."""

    def __init__(self, path: Path, timeout: float | None = None) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(path))
        except FileNotFoundError:
            self._sock.close()
            raise Unreachable(f"cannot reach loadmgrd at {path}: no such socket (is loadmgrd running?)") from None
        except OSError as exc:
            self._sock.close()
            raise Unreachable(f"cannot reach loadmgrd at {path}: {exc.strerror or exc}") from None
        self._file = self._sock.makefile("rwb")

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        request_id = next(_ids)
        line = json.dumps({"jsonrpc": "2.0", "method": method, "params": params or {}, "id": request_id})
        try:
            self._file.write(line.encode("utf-8") + b"\n")
            self._file.flush()
            raw = self._file.readline()
        except OSError as exc:
            raise Unreachable(f"lost the connection to loadmgrd at {self.path}: {exc.strerror or exc}") from None
        if not raw:
            raise Unreachable(f"loadmgrd at {self.path} closed the connection without an answer")
        reply = json.loads(raw)
        if "error" in reply:
            error = reply["error"]
            raise RpcError(int(error.get("code", 0)), str(error.get("message", "unknown error")), error.get("data"))
        return reply.get("result")

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            self._sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def call(path: Path, method: str, params: dict[str, Any] | None = None) -> Any:
    with Connection(path) as conn:
        return conn.call(method, params)
