"""Waiting for files to arrive complete: inotify through ctypes, with a polling fallback.

A file counts as arrived when it was closed after writing (``IN_CLOSE_WRITE``) or moved into
place (``IN_MOVED_TO``) while we watched, or — for a file already there, or where the kernel
gives no notification (NFS, a directory that does not exist yet, a hard link) — when no
process holds it open for writing and its size and mtime hold still across two checks (50 ms
apart, or ``wait_sleep_time`` apart while some process has it open for writing). The
waiter then claims the file by renaming it away, so two runs waiting on the same file cannot
both take it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import struct
from collections import defaultdict
from pathlib import Path

log = logging.getLogger("loadmgrd.filewatch")

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_IGNORED = 0x00008000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")
_MASK = IN_CLOSE_WRITE | IN_MOVED_TO
SETTLE = 0.05  # seconds an unwatched arrival must hold still when nobody has it open for writing


class _Inotify:
    """One inotify descriptor for the whole daemon; futures per (directory, name)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        libc_name = ctypes.util.find_library("c") or "libc.so.6"
        self._libc = ctypes.CDLL(libc_name, use_errno=True)
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.fd: int = fd
        self._loop = loop
        self._dirs: dict[int, Path] = {}
        self._wds: dict[Path, int] = {}
        self._waiters: dict[Path, dict[str, list[asyncio.Future[None]]]] = defaultdict(lambda: defaultdict(list))
        loop.add_reader(fd, self._on_readable)

    def close(self) -> None:
        self._loop.remove_reader(self.fd)
        os.close(self.fd)

    def arrival(self, path: Path) -> asyncio.Future[None] | None:
        """A future resolved when ``path`` is closed after writing or moved in; None if unwatchable."""
        directory = path.parent
        if directory not in self._wds:
            wd = self._libc.inotify_add_watch(self.fd, os.fsencode(directory), _MASK)
            if wd < 0:
                err = ctypes.get_errno()
                if err not in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
                    log.warning("cannot watch %s: %s", directory, os.strerror(err))
                return None
            self._wds[directory] = wd
            self._dirs[wd] = directory
        future: asyncio.Future[None] = self._loop.create_future()
        self._waiters[directory][path.name].append(future)
        return future

    def forget(self, path: Path, future: asyncio.Future[None]) -> None:
        names = self._waiters.get(path.parent)
        if names and future in names.get(path.name, []):
            names[path.name].remove(future)
            if not names[path.name]:
                del names[path.name]

    def _on_readable(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            raw_name = data[offset + _EVENT.size : offset + _EVENT.size + length]
            offset += _EVENT.size + length
            directory = self._dirs.get(wd)
            if directory is None:
                continue
            if mask & IN_IGNORED:  # the directory went away; its waiters fall back to polling
                self._dirs.pop(wd, None)
                self._wds.pop(directory, None)
                continue
            name = os.fsdecode(raw_name.rstrip(b"\0"))
            for future in self._waiters.get(directory, {}).pop(name, []):
                if not future.done():
                    future.set_result(None)


class FileWatcher:
    def __init__(self) -> None:
        self._inotify: _Inotify | None = None
        self._tried = False

    def _kernel(self) -> _Inotify | None:
        if not self._tried:
            self._tried = True
            try:
                self._inotify = _Inotify(asyncio.get_running_loop())
            except (OSError, AttributeError) as exc:
                log.warning("inotify unavailable (%s): wait events fall back to polling", exc)
        return self._inotify

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None

    async def wait_complete(self, path: Path, poll_interval: float) -> None:
        """Return once ``path`` exists and is complete (see the module doc)."""
        kernel = self._kernel()
        while True:
            future = kernel.arrival(path) if kernel else None
            try:
                snapshot = _stat(path)
                if snapshot is not None:
                    # Present without a close/move seen (it may have arrived just before we
                    # watched): complete when one arrives, or when no process has it open for
                    # writing and it holds still for a moment (longer while a writer has it).
                    settle = poll_interval if open_for_writing(path) else min(poll_interval, SETTLE)
                    if await _first(future, settle):
                        return
                    if _stat(path) == snapshot and not open_for_writing(path):
                        return
                    continue
                if await _first(future, poll_interval):
                    return
            finally:
                if future is not None and kernel is not None:
                    kernel.forget(path, future)
                    future.cancel()

    async def claim(self, path: Path, poll_interval: float, tag: str) -> None:
        """Wait for ``path`` to be complete, then take it (rename away and remove) exactly once."""
        while True:
            await self.wait_complete(path, poll_interval)
            claimed = path.with_name(f".{path.name}.claimed-{tag}")
            try:
                os.rename(path, claimed)
            except FileNotFoundError:
                continue  # another waiter took it first
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                claimed.unlink()
            return


def open_for_writing(path: Path) -> bool:
    """Does any process we can see hold ``path`` open for writing? (From /proc/*/fd and fdinfo.)"""
    try:
        target = os.stat(path)
    except OSError:
        return False
    identity = (target.st_dev, target.st_ino)
    for proc in os.scandir("/proc"):
        if not proc.name.isdigit():
            continue
        try:
            fds = os.scandir(f"/proc/{proc.name}/fd")
        except OSError:
            continue
        with fds:
            for fd in fds:
                try:
                    st = os.stat(fd.path)
                    if (st.st_dev, st.st_ino) != identity:
                        continue
                    with open(f"/proc/{proc.name}/fdinfo/{fd.name}", encoding="ascii") as info:
                        flags = next((line.split()[1] for line in info if line.startswith("flags:")), "0")
                except (OSError, StopIteration, IndexError):
                    continue
                if int(flags, 8) & (os.O_WRONLY | os.O_RDWR):
                    return True
    return False


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (st.st_size, st.st_mtime_ns)


async def _first(future: asyncio.Future[None] | None, timeout: float | None) -> bool:
    """True if ``future`` resolved within ``timeout`` (None = forever)."""
    if future is None:
        await asyncio.sleep(timeout or 0)
        return False
    try:
        await asyncio.wait_for(asyncio.shield(future), timeout)
    except TimeoutError:
        return False
    return True


def touch_atomically(path: Path) -> None:
    """Create (or replace) ``path`` by renaming a finished temporary file into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb"):
        pass
    os.replace(temporary, path)
