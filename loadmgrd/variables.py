"""Variable substitution in step commands and args. Pure.

``%name%`` (with the configured delimiter) is replaced by the variable's value. Into a shell
command the value goes shell-quoted, so nothing inside it can become shell syntax; ``%name:raw%``
asks for the value as is. An unknown variable is left untouched and reported.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

RAW_SUFFIX = ":raw"
_NAME = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?"


@lru_cache(maxsize=8)
def _pattern(delimiter: str) -> re.Pattern[str]:
    d = re.escape(delimiter)
    return re.compile(rf"{d}({_NAME})({re.escape(RAW_SUFFIX)})?{d}")


@dataclass
class Substitution:
    text: str
    unresolved: list[str] = field(default_factory=list)
    used: list[str] = field(default_factory=list)


def substitute(
    text: str,
    lookup: Mapping[str, str] | Callable[[str], str | None],
    delimiter: str = "%",
    *,
    quote: bool = True,
) -> Substitution:
    """Replace every ``%name%`` that ``lookup`` knows; quote values unless ``quote`` is False
    or the reference ends in ``:raw``."""
    result = Substitution(text)
    find = lookup.get if isinstance(lookup, Mapping) else lookup

    def replace(match: re.Match[str]) -> str:
        name, raw = match.group(1), match.group(2)
        value = find(name)
        if value is None:
            result.unresolved.append(name)
            return match.group(0)
        result.used.append(name)
        return value if (raw or not quote) else shlex.quote(value)

    result.text = _pattern(delimiter).sub(replace, text)
    return result
