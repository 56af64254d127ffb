"""Printing results: JSON for machines; for people, rich tables on a terminal and plain aligned
columns when the output goes to a pipe or a file (rich is imported only for a terminal)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC
from typing import Any


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def local_time(ts: str | None, *, zone: bool = False) -> str:
    """A stored UTC timestamp shown in the host's local time, to the second (``zone``: with the
    zone's abbreviation, where a time may be read against another zone)."""
    if not ts:
        return ""
    from datetime import datetime

    try:
        moment = datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        return ts
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z" if zone else "%Y-%m-%d %H:%M:%S")


def _plain_table(columns: Sequence[str], rows: list[list[str]], title: str | None) -> None:
    """Aligned columns without rich (output to a pipe or file: cheaper, and easy to grep)."""
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    lines = [title] if title else []
    lines.append("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    lines.extend("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows)
    sys.stdout.write("\n".join(lines) + "\n")


def print_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> None:
    """A table: drawn with rich on a terminal, plain aligned columns otherwise."""
    if not sys.stdout.isatty():
        _plain_table(columns, [[_cell(v).replace("\n", " ") for v in row] for row in rows], title)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False, header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    Console().print(table)


def print_fields(fields: Mapping[str, Any], title: str | None = None) -> None:
    if not sys.stdout.isatty():
        width = max((len(k) for k in fields), default=0)
        lines = [title] if title else []
        lines.extend(f"{k.ljust(width)}  {_cell(v)}".rstrip() for k, v in fields.items())
        sys.stdout.write("\n".join(lines) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in fields.items():
        table.add_row(key, _cell(value))
    Console().print(table)


def info(message: str) -> None:
    print(message)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def error(message: str) -> None:
    print(f"loadmgrctl: error: {message}", file=sys.stderr)
