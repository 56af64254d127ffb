"""Child processes for steps: spawned with ``subprocess.Popen`` (vfork/posix_spawn: fast even
from a large daemon), their exit watched through a pidfd and their pipes read with the event
loop's readers. This costs about what the spawn itself costs; asyncio's subprocess transports
under uvloop cost several times more per step (measured by bench/).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence

READ_CHUNK = 65536
_devnull: int | None = None


def _devnull_fd() -> int:
    """One /dev/null descriptor for every child's stdin (Popen would open and close one per spawn)."""
    global _devnull
    if _devnull is None:
        _devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    return _devnull


class Child:
    """A running child in its own session (so its process group is its pid)."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], *, output: bool = True) -> None:
        devnull = _devnull_fd()
        pipe = subprocess.PIPE if output else devnull
        self.proc = subprocess.Popen(
            list(argv),
            stdin=devnull,
            stdout=pipe,
            stderr=pipe,
            env=dict(env),
            start_new_session=True,
            close_fds=True,
        )
        self.pid = self.proc.pid

    async def wait(self) -> int:
        """The exit status (negative: killed by that signal), without blocking the loop."""
        loop = asyncio.get_running_loop()
        try:
            pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # no pidfd (old kernel): a worker thread waits
            return await loop.run_in_executor(None, self.proc.wait)
        exited: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(pidfd, readable)
        try:
            if self.proc.poll() is None:
                await exited
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
        return self.proc.wait()

    async def stream(self, on_stdout: Callable[[bytes], None], on_stderr: Callable[[bytes], None]) -> None:
        """Feed both pipes' bytes to the callbacks until each reaches end of file."""
        loop = asyncio.get_running_loop()
        pending = []
        for pipe, callback in ((self.proc.stdout, on_stdout), (self.proc.stderr, on_stderr)):
            if pipe is None:
                continue
            fd = pipe.fileno()
            os.set_blocking(fd, False)
            done: asyncio.Future[None] = loop.create_future()

            def readable(
                fd: int = fd, callback: Callable[[bytes], None] = callback, done: asyncio.Future[None] = done
            ) -> None:
                try:
                    data = os.read(fd, READ_CHUNK)
                except BlockingIOError:
                    return
                except OSError:
                    data = b""
                if data:
                    callback(data)
                else:
                    loop.remove_reader(fd)
                    if not done.done():
                        done.set_result(None)

            loop.add_reader(fd, readable)
            pending.append((fd, done))
        try:
            await asyncio.gather(*(done for _, done in pending))
        finally:
            for fd, _ in pending:
                loop.remove_reader(fd)

    def close(self) -> None:
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
