"""The daemon's lifecycle: configuration, locking, repository, crash recovery, socket, signals.

``loadmgrd [--config PATH] [--log-format text|json]`` runs in the foreground (systemd's
Type=notify, or a terminal). Exit codes: 0 clean stop, 1 start-up or runtime failure,
2 bad command line or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from loadmgrd import __version__, paths, procgroup, systemd
from loadmgrd.access import AccessPolicy, Peer
from loadmgrd.config import Config, load_config
from loadmgrd.errors import ConfigError, LoadmgrError
from loadmgrd.repository import Repository
from loadmgrd.rpc import Context
from loadmgrd.server import Server, bind_socket

log = logging.getLogger("loadmgrd")

CRASH_REASON = "loadmgrd stopped while this run was active (crash or kill); resume with start --resume"


class StartupError(LoadmgrError):
    pass


class RepositoryLock:
    """An exclusive ``flock`` next to the database: one daemon per repository."""

    def __init__(self, database: Path) -> None:
        self.path = database.with_name(database.name + ".lock")
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+", encoding="ascii")  # noqa: SIM115 - held for the daemon's life
        except OSError as exc:
            raise StartupError(f"cannot open the repository lock {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise StartupError(
                f"another loadmgrd (pid {holder}) is already using the repository {self.path.with_suffix('')}; "
                "refusing to start a second one"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.policy = AccessPolicy.for_this_process(config.daemon.admin_group)
        self.started_monotonic = time.monotonic()
        self.engine: Any = None
        self.repo: Repository | None = None
        self._server: Server | None = None
        self._listening = str(config.daemon.socket)  # the path clients connect to
        self._stop: asyncio.Event | None = None
        self._sigint_count = 0
        self._tasks: list[asyncio.Task[Any]] = []
        self.failed = False
        self.scheduler: Any = None
        self.notifier: Any = None

    # ------------------------------------------------------------------ running

    async def run(self) -> int:
        self._stop = asyncio.Event()
        lock = RepositoryLock(self.config.repository.database)
        lock.acquire()
        try:
            try:
                self.repo = await Repository.open(
                    self.config.repository.database, busy_timeout=self.config.repository.busy_timeout
                )
            except LoadmgrError as exc:
                await self._critical(exc.message)
                raise
            try:
                return await self._serve(self.repo)
            finally:
                await self.repo.close()
        finally:
            lock.release()

    async def _serve(self, repo: Repository) -> int:
        info = await repo.info()
        for migration in repo.applied_at_open:
            log.info("repository migrated: applied %04d_%s", migration.version, migration.name)
        log.info("repository %s at schema version %s", info["database"], info["schema_version"])
        recovered, orphans = await repo.fail_abandoned_runs(CRASH_REASON)
        for run in recovered:
            log.warning(
                "run %s of job %s was %s when loadmgrd stopped: marked Failed",
                run["run_id"],
                run["job_name"],
                run["status"],
            )
        recovery = asyncio.create_task(
            self._end_orphans(orphans, [r["run_id"] for r in recovered]), name="end orphaned steps"
        )

        from loadmgrd import handlers  # noqa: F401 - registers the JSON-RPC methods
        from loadmgrd.steps import _register_data_steps

        _register_data_steps()
        from loadmgrd.engine import Engine

        self.engine = Engine(self)
        self.engine.recovery = recovery
        from loadmgrd.notifier import Notifier

        self.notifier = Notifier(lambda: self.config)
        self.engine.notifier = self.notifier
        from loadmgrd.scheduler import Scheduler

        self.scheduler = Scheduler(self.engine)

        socket_path = self.config.daemon.socket
        activated = systemd.listen_socket()
        sock = activated or bind_socket(socket_path, self.config.daemon.socket_mode)
        self._server = Server(self._context, self.policy, self.config.daemon.max_request_bytes)
        try:
            await self._server.start(sock)
            self._install_signals()
            self._background(self.scheduler.run(), "scheduler")
            self._background(self.notifier.run(), "notifier")
            self._background(self._status_updates(), "systemd status")
            interval = systemd.watchdog_interval()
            if interval is not None:
                self._background(self._watchdog(interval), "systemd watchdog")
            # Under socket activation the socket is the one systemd passed, wherever it lives.
            name = sock.getsockname()
            self._listening = name if isinstance(name, str) and name else str(socket_path)
            where = f"{self._listening} (socket activation)" if activated else self._listening
            log.info("loadmgrd %s listening on %s (pid %d)", __version__, where, os.getpid())
            systemd.notify(f"READY=1\nSTATUS=serving on {self._listening}\nMAINPID={os.getpid()}")
            await self._stop.wait() if self._stop else None
            log.info("shutting down")
            systemd.notify("STOPPING=1")
        finally:
            await self.engine.shutdown()
            await self.notifier.drain(timeout=5.0)
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.close()
            if activated is None:  # an activated socket belongs to systemd
                with contextlib.suppress(FileNotFoundError):
                    socket_path.unlink()
        return 1 if self.failed else 0

    async def _critical(self, problem: str) -> None:
        """Mail the failure list that the daemon cannot open its repository (best effort)."""
        from loadmgrd.notifier import SendError, critical_mail, send_now

        msg = critical_mail(self.config, problem)
        if msg is None:
            return
        try:
            await send_now(self.config.email, msg)
            log.info("CRITICAL ERROR mail sent to %s", msg["To"])
        except SendError as exc:
            log.error("could not send the CRITICAL ERROR mail: %s", exc)

    def _background(self, coro: Any, name: str) -> None:
        """A daemon-wide task; if it dies, the daemon stops loudly rather than limping on."""
        task = asyncio.create_task(coro, name=name)

        def done(finished: asyncio.Task[Any]) -> None:
            if not finished.cancelled() and finished.exception() is not None:
                log.critical("background task %s failed: %r; stopping", name, finished.exception())
                self.failed = True
                self.request_stop()

        task.add_done_callback(done)
        self._tasks.append(task)

    async def _end_orphans(self, orphans: list[dict[str, Any]], run_ids: list[str]) -> None:
        """Steps of a daemon that died may still run: end their process groups before anything
        can resume them, so no step runs twice at once. Recorded groups are checked, and /proc
        is searched for any process of those runs (a step spawned just before the crash)."""
        recorded = {o["pgid"] for o in orphans if o["pgid"] and procgroup.is_same_group(o["pgid"], o["run_id"])}
        groups = recorded | await asyncio.to_thread(procgroup.groups_of_runs, run_ids)
        groups.discard(os.getpgrp())
        for pgid in sorted(groups):
            log.warning("ending process group %d left running by a step of the previous loadmgrd", pgid)
        if not groups:
            return
        try:
            await procgroup.terminate(groups, self.config.daemon.stop_grace_period)
        except Exception:
            log.exception("could not end the process groups of the previous loadmgrd's steps")

    def _context(self, peer: Peer) -> Context:
        assert self.repo is not None
        return Context(repo=self.repo, config=self.config, peer=peer, services=self)

    def request_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    # ------------------------------------------------------------------ signals

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._on_term)
        loop.add_signal_handler(signal.SIGINT, self._on_int)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        loop.add_signal_handler(signal.SIGUSR1, self._on_usr1)

    def _on_term(self) -> None:
        log.info("SIGTERM received: graceful shutdown")
        self.request_stop()

    def _on_int(self) -> None:
        self._sigint_count += 1
        if self._sigint_count > 1:
            log.warning("second SIGINT: exiting at once")
            os._exit(130)
        log.info("SIGINT received: graceful shutdown (press Ctrl-C again to exit at once)")
        self.request_stop()

    def _on_hup(self) -> None:
        """Reload the configuration; a bad file is rejected and the old one stays in force."""
        systemd.reloading()
        try:
            new = load_config(self.config.source)
        except ConfigError as exc:
            log.error("reload rejected, keeping the previous configuration: %s", exc.message)
        else:
            for key in ("database", "socket"):
                section = "repository" if key == "database" else "daemon"
                if getattr(getattr(new, section), key) != getattr(getattr(self.config, section), key):
                    log.warning("[%s] %s changes only take effect after a restart", section, key)
            self.config = new
            if self.engine is not None:
                self.engine.config_changed()
            self.policy = AccessPolicy.for_this_process(new.daemon.admin_group)
            if self._server is not None:
                self._server.policy = self.policy
            logging.getLogger().setLevel(new.log_level)
            log.info("configuration reloaded from %s", new.source or "built-in defaults")
        systemd.notify("READY=1")
        self._status()

    def _on_usr1(self) -> None:
        """Reopen the run log files (after logrotate moved them)."""
        assert self.engine is not None
        count = self.engine.reopen_logs()
        log.info("SIGUSR1: reopened %d run log file(s)", count)

    def _status(self) -> None:
        """``STATUS=`` for systemctl status: runs in progress by status."""
        if self.engine is None:
            return
        counts = self.engine.counts()
        text = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "idle"
        systemd.notify(f"STATUS=serving on {self._listening}; runs: {text}")

    async def _watchdog(self, interval: float) -> None:
        while True:
            systemd.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def _status_updates(self) -> None:
        """Keep systemd's STATUS= line current (at most twice a second)."""
        assert self.engine is not None
        version = -1
        while True:
            version = await self.engine.wait_changed(version, 3600)
            self._status()
            await asyncio.sleep(0.5)


# ---------------------------------------------------------------------- entry point


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: int, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="loadmgrd", description="The Load Manager daemon.")
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="configuration file (default: $LOADMGR_CONFIG/loadmgr_config.cfg, then "
        "/etc/loadmgr/loadmgr_config.cfg, then built-in defaults)",
    )
    parser.add_argument("--log-format", choices=("text", "json"), default="text", help="daemon log format on stderr")
    parser.add_argument("--version", action="version", version=f"loadmgrd {__version__}")
    return parser.parse_args(argv)


def _run_loop(daemon: Daemon) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(daemon.run())
    return int(uvloop.run(daemon.run()))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(logging.INFO, args.log_format)
    try:
        config = load_config(paths.find_config_file(args.config))
    except ConfigError as exc:
        log.error("configuration error: %s", exc.message)
        return 2
    logging.getLogger().setLevel(config.log_level)
    log.info("configuration: %s", config.source or "built-in defaults (no config file)")
    try:
        return _run_loop(Daemon(config))
    except LoadmgrError as exc:
        log.error("%s", exc.message)
        systemd.notify(f"STATUS=failed: {exc.message}")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
