"""The Unix socket server: framing, size cap, peer credentials, one task per connection."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadmgrd.access import AccessPolicy, Peer
from loadmgrd.errors import ErrorCode, LoadmgrError, ProtocolError
from loadmgrd.protocol import error_line, parse_request, result_line
from loadmgrd.rpc import Context, dispatch

log = logging.getLogger("loadmgrd.server")


class SocketInUse(LoadmgrError):
    pass


def _owner(st: os.stat_result) -> str:
    """``uid N (name)`` of a file's owner, for messages."""
    import pwd

    try:
        return f"uid {st.st_uid} ({pwd.getpwuid(st.st_uid).pw_name})"
    except KeyError:
        return f"uid {st.st_uid}"


def claim_socket_path(path: Path) -> None:
    """Refuse if a daemon answers on ``path``; remove it if it is a stale socket."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUse(f"{path} exists and is not a socket; refusing to replace it")
    foreign = st.st_uid != os.geteuid()
    whose = f" (it belongs to {_owner(st)})" if foreign else ""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise SocketInUse(f"cannot check socket {path}: {exc.strerror}{whose}") from None
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except PermissionError:
            raise SocketInUse(f"cannot remove the stale socket {path}: permission denied{whose}") from None
        log.warning("removed stale socket %s (no daemon answered on it)%s", path, whose)
        return
    finally:
        probe.close()
    raise SocketInUse(f"another loadmgrd is already serving {path}{whose}; refusing to start a second one")


def bind_socket(path: Path, mode: int) -> socket.socket:
    """A listening Unix socket at ``path`` with ``mode``, never wider even for an instant."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SocketInUse(f"cannot create the socket directory {path.parent}: {exc.strerror}") from None
    claim_socket_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o777 & ~mode)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise SocketInUse(f"cannot bind {path}: {exc.strerror}") from None
    finally:
        os.umask(old_umask)
    os.chmod(path, mode)
    sock.listen(128)
    sock.setblocking(False)
    return sock


class Server:
    def __init__(
        self,
        make_context: Callable[[Peer], Context],
        policy: AccessPolicy,
        max_request_bytes: int,
    ) -> None:
        self._make_context = make_context
        self.policy = policy
        self._limit = max_request_bytes
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._busy: set[asyncio.Task[None]] = set()

    async def start(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_unix_server(self._on_connect, sock=sock, limit=self._limit)

    async def close(self, drain_timeout: float = 10.0) -> None:
        """Stop accepting; let requests being processed finish and be answered (up to
        ``drain_timeout``), then end every connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections - self._busy):
            task.cancel()
        busy = list(self._busy)
        if busy:
            await asyncio.wait(busy, timeout=drain_timeout)
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            sock = writer.get_extra_info("socket")
            peer = Peer.of(sock)
            await self._serve(reader, writer, peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except RuntimeError as exc:  # uvloop: writing to a transport the client already closed
            log.debug("client went away: %s", exc)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("connection handler failed")
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer) -> None:
        ctx = self._make_context(peer)
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                if not exc.partial.strip():
                    return
                line = exc.partial  # last line without a newline: still answer it
            except asyncio.LimitOverrunError:
                too_big = ProtocolError(
                    ErrorCode.REQUEST_TOO_LARGE,
                    f"request line longer than the {self._limit}-byte limit ([daemon] max_request_bytes); "
                    "closing the connection",
                )
                writer.write(error_line(None, too_big))
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                return
            if line.strip():
                task = asyncio.current_task()
                assert task is not None
                self._busy.add(task)
                try:
                    reply = await self._handle_line(line, ctx)
                    if reply:
                        if writer.is_closing():
                            return
                        writer.write(reply)
                        await writer.drain()
                finally:
                    self._busy.discard(task)
                if self._server is not None and not self._server.is_serving():
                    return  # shutting down: the answer went out, the connection ends
            if reader.at_eof():
                return

    async def _handle_line(self, line: bytes, ctx: Context) -> bytes:
        try:
            # UTF-8 only, as the protocol says: json.loads on bytes would guess UTF-16/32 from NULs.
            decoded = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            detail = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
            return error_line(None, ProtocolError(ErrorCode.PARSE_ERROR, f"parse error: {detail}"))
        except RecursionError:
            return error_line(None, ProtocolError(ErrorCode.PARSE_ERROR, "parse error: nested too deeply"))
        except ValueError as exc:  # e.g. an integer longer than Python converts
            return error_line(None, ProtocolError(ErrorCode.PARSE_ERROR, f"parse error: {exc}"))
        if isinstance(decoded, list):
            if not decoded:
                return error_line(None, ProtocolError(ErrorCode.INVALID_REQUEST, "empty batch"))
            replies = [await self._handle_one(item, ctx) for item in decoded]
            parts = [r.rstrip(b"\n") for r in replies if r]
            return b"[" + b",".join(parts) + b"]\n" if parts else b""
        return await self._handle_one(decoded, ctx)

    async def _handle_one(self, obj: Any, ctx: Context) -> bytes:
        request_id = obj.get("id") if isinstance(obj, dict) else None
        if isinstance(request_id, bool) or not isinstance(request_id, int | str | None):
            request_id = None
        try:
            request = parse_request(obj)
        except LoadmgrError as exc:
            return error_line(request_id, exc)  # not a valid request: answered, with id null if unknown
        try:
            result = await dispatch(request, ctx, self.policy)
        except LoadmgrError as exc:
            return b"" if request.is_notification else error_line(request.id, exc)
        return b"" if request.is_notification else result_line(request.id, result)
