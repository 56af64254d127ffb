"""Step ranges for ``start -s``: ``N``, ``N-M``, ``N-`` or ``-M``. Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass

from loadmgrd.errors import InvalidInput

_RANGE = re.compile(r"^\s*(\d*)\s*(-?)\s*(\d*)\s*$")


@dataclass(frozen=True)
class StepRange:
    start: int | None = None
    end: int | None = None

    def __contains__(self, step: object) -> bool:
        if not isinstance(step, int):
            return False
        return (self.start is None or step >= self.start) and (self.end is None or step <= self.end)

    def __str__(self) -> str:
        if self.start == self.end and self.start is not None:
            return str(self.start)
        return f"{'' if self.start is None else self.start}-{'' if self.end is None else self.end}"


def parse_range(text: str) -> StepRange:
    """``"10"`` is step 10 only; ``"10-30"``, ``"10-"`` (to the end), ``"-30"`` (from the start)."""
    match = _RANGE.match(text)
    if not match or (not match.group(1) and not match.group(3)):
        raise InvalidInput(f"step range {text!r} is not N, N-M, N- or -M (whole step numbers)")
    first, dash, last = match.groups()
    start = int(first) if first else None
    end = int(last) if last else None
    if not dash:
        return StepRange(start, start)
    if start is not None and end is not None and start > end:
        raise InvalidInput(f"step range {text!r}: the start step {start} is after the end step {end}")
    return StepRange(start, end)
