"""Target databases: the ``[targets]`` SQLAlchemy URLs, queried in worker threads.

SQLAlchemy's engines are synchronous; every query runs through ``asyncio.to_thread`` so a
slow database never blocks the event loop. Engines are created on first use and disposed when
the configuration changes (SIGHUP) or the daemon stops. Any dialect SQLAlchemy supports works
once its driver is installed (``pip install "psycopg[binary]"`` for PostgreSQL, ``pymysql`` for
MySQL, ``oracledb`` for Oracle, …).
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from loadmgrd.errors import InvalidInput, LoadmgrError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from loadmgrd.config import TargetsConfig


_DOLLAR = re.compile(r"\$[A-Za-z_]*\$")


class TargetError(LoadmgrError):
    """The target database refused or failed: the message is the driver's."""


class Targets:
    def __init__(self, config: Callable[[], TargetsConfig]) -> None:
        self._config = config
        self._engines: dict[str, tuple[str, Engine]] = {}
        self._lock = threading.Lock()

    def resolve(self, name: str | None) -> str:
        """The target a step means: ``target=NAME``, else ``default_target``."""
        config = self._config()
        chosen = name or config.default_target
        if not chosen:
            raise InvalidInput("no target given (target=NAME in the step args) and no [targets] default_target")
        if chosen not in config.urls:
            known = ", ".join(sorted(config.urls)) or "none configured"
            raise InvalidInput(f"target {chosen!r} is not in [targets] ({known})")
        return chosen

    def _engine(self, name: str) -> Engine:
        from sqlalchemy import create_engine

        url = self._config().urls[name]
        with self._lock:
            cached = self._engines.get(name)
            if cached is not None and cached[0] == url:
                return cached[1]
            if cached is not None:
                cached[1].dispose()
            try:
                engine = create_engine(url, pool_pre_ping=True)
            except Exception as exc:  # a missing driver, a malformed URL
                raise TargetError(f"target {name!r}: {type(exc).__name__}: {exc}") from None
            if engine.dialect.name == "sqlite":
                _transactional_sqlite(engine)
            self._engines[name] = (url, engine)
            return engine

    async def run(self, name: str, work: Callable[[Any], Any]) -> Any:
        """``work(connection)`` inside one transaction on target ``name``, in a worker thread."""
        engine = self._engine(name)

        def in_thread() -> Any:
            from sqlalchemy.exc import SQLAlchemyError

            try:
                with engine.begin() as conn:
                    return work(conn)
            except SQLAlchemyError as exc:
                detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
                raise TargetError(f"target {name!r}: {detail}") from None

        return await asyncio.to_thread(in_thread)

    async def scalar(self, name: str, sql: str, params: dict[str, Any] | None = None) -> Any:
        from sqlalchemy import text

        return await self.run(name, lambda conn: conn.execute(text(sql), params or {}).scalar())

    async def script(self, name: str, statements: Sequence[str]) -> list[tuple[list[str], list[tuple[Any, ...]]]]:
        """Run statements in order in one transaction; (columns, rows) of each that returns rows."""

        def work(conn: Any) -> list[tuple[list[str], list[tuple[Any, ...]]]]:
            results = []
            raw = conn.execution_options(no_parameters=True)  # '%' and ':' in SQL stay literal
            for statement in statements:
                result = raw.exec_driver_sql(statement)
                if result.returns_rows:
                    results.append((list(result.keys()), [tuple(r) for r in result.fetchall()]))
            return results

        results: list[tuple[list[str], list[tuple[Any, ...]]]] = await self.run(name, work)
        return results

    def dispose(self) -> None:
        with self._lock:
            for _url, engine in self._engines.values():
                engine.dispose()
            self._engines.clear()


def _transactional_sqlite(engine: Engine) -> None:
    """Python's sqlite3 commits DDL at once and begins transactions late; SQLAlchemy's documented
    recipe hands transaction control back to SQLAlchemy, so a script is all or nothing."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")


def split_statements(script: str) -> list[str]:
    """Split SQL on ``;`` outside quotes, identifiers, comments and PostgreSQL ``$tag$`` bodies."""
    statements: list[str] = []
    buf: list[str] = []
    i, n = 0, len(script)
    quote: str | None = None
    while i < n:
        ch = script[i]
        if quote:
            buf.append(ch)
            if ch == quote:
                if i + 1 < n and script[i + 1] == quote:  # doubled quote inside a literal
                    buf.append(script[i + 1])
                    i += 1
                else:
                    quote = None
        elif ch in ("'", '"', "`"):
            quote = ch
            buf.append(ch)
        elif ch == "$" and (tag := _DOLLAR.match(script, i)):
            end = script.find(tag.group(0), tag.end())
            stop = n if end < 0 else end + len(tag.group(0))
            buf.append(script[i:stop])
            i = stop
            continue
        elif ch == "-" and script.startswith("--", i):
            end = script.find("\n", i)
            i = n if end < 0 else end
            continue
        elif ch == "/" and script.startswith("/*", i):
            end = script.find("*/", i + 2)
            i = n if end < 0 else end + 2
            continue
        elif ch == ";":
            statement = "".join(buf).strip()
            if statement:
                statements.append(statement)
            buf = []
        else:
            buf.append(ch)
        i += 1
    statement = "".join(buf).strip()
    if statement:
        statements.append(statement)
    return statements
