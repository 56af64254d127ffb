"""Job files: parse CSV or JSON into step definitions, and write them back. Pure: no I/O.

CSV rules: the first record that is not a comment is the header and names the columns; lines
starting with ``#`` are comments anywhere; fields are split on the configured delimiter; a
backslash makes the next character literal (delimiter, quote, backslash); a field may be wrapped
in double quotes. Rows whose ``job_step`` is not a whole number are skipped with a warning.
Every error names the file, the line and the column.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from loadmgrd.errors import InvalidInput, JobFileError
from loadmgrd.states import StepFunction
from loadmgrd.stepargs import parse_args, step_control
from loadmgrd.text import DecodeFailure, decode_utf8

REQUIRED_COLUMNS = ("job_step", "job_step_function", "job_step_command")
STEP_COLUMNS = (
    "job_step",
    "job_step_description",
    "job_step_function",
    "job_step_command",
    "job_step_args",
    "job_step_ignore_error",
    "job_step_capture_output",
    "job_step_wait_step",
    "job_step_alt_wait_step",
    "skip_step",
)
BOOL_COLUMNS = ("job_step_ignore_error", "job_step_capture_output", "skip_step")
INT_COLUMNS = ("job_step_wait_step", "job_step_alt_wait_step")
_TRUE = {"true", "yes", "1", "y", "t"}
_FALSE = {"false", "no", "0", "n", "f", ""}
_OTHER_DELIMITERS = (",", ";", "|", "\t", ":")
_WHOLE = re.compile(r"^[0-9]+$")
MAX_STEP = 999_999_999


@dataclass(frozen=True)
class StepDef:
    """One step of a job, exactly as stored in the repository."""

    job_step: int
    job_step_function: str
    job_step_command: str = ""
    job_step_description: str = ""
    job_step_args: str = ""
    job_step_ignore_error: bool = False
    job_step_capture_output: bool = False
    job_step_wait_step: int = 0
    job_step_alt_wait_step: int = 0
    skip_step: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, row: Mapping[str, Any]) -> StepDef:
        return cls(**{k: row[k] for k in _STEP_FIELDS if k in row})


_STEP_FIELDS = tuple(f.name for f in fields(StepDef))


@dataclass
class ParsedJobFile:
    steps: list[StepDef]
    warnings: list[str] = field(default_factory=list)
    lines: dict[int, int] = field(default_factory=dict)  # job_step -> line in the file


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean (use True/False, yes/no or 1/0)")


def decode(data: bytes, file: str) -> str:
    """UTF-8 (a BOM is allowed) with the line and column of the first undecodable byte."""
    try:
        return decode_utf8(data)
    except DecodeFailure as exc:
        raise JobFileError(
            file, exc.line, exc.column, f"byte 0x{exc.byte:02x} is not UTF-8 text (is this a job file?)"
        ) from None


def parse(content: str, file: str, delimiter: str = ",") -> ParsedJobFile:
    """Parse a job file, choosing JSON when the content starts with ``{``."""
    if "\0" in content:
        line = content.count("\n", 0, content.index("\0")) + 1
        raise JobFileError(file, line, None, "contains a NUL byte (binary data is not a job file)")
    if content.lstrip().startswith("{"):
        parsed = parse_json(content, file)
    else:
        parsed = parse_csv(content, file, delimiter)
    validate(parsed, file)
    return parsed


# --------------------------------------------------------------------------- CSV


def _split_record(line: str, delimiter: str, file: str, number: int) -> list[tuple[str, int]]:
    """Split one physical line into (field, 1-based start column) pairs."""
    out: list[tuple[str, int]] = []
    buf: list[str] = []
    start = 1
    i = 0
    quoted = False
    at_field_start = True
    while i < len(line):
        ch = line[i]
        if ch == "\\" and i + 1 < len(line):
            buf.append(line[i + 1])
            i += 2
            at_field_start = False
            continue
        if ch == '"' and (at_field_start or quoted):
            if quoted:
                quoted = False
                following = line[i + 1 : i + 2]
                if following and following != delimiter:
                    raise JobFileError(file, number, i + 2, f"unexpected {following!r} after a closing quote")
            else:
                quoted = True
            at_field_start = False
            i += 1
            continue
        if ch == delimiter and not quoted:
            out.append(("".join(buf), start))
            buf = []
            start = i + 2
            at_field_start = True
            i += 1
            continue
        buf.append(ch)
        at_field_start = False
        i += 1
    if quoted:
        raise JobFileError(file, number, start, "a quoted field is not closed on this line")
    out.append(("".join(buf), start))
    return out


def parse_csv(content: str, file: str, delimiter: str = ",") -> ParsedJobFile:
    header: list[str] | None = None
    header_line = 0
    steps: list[StepDef] = []
    warnings: list[str] = []
    seen: dict[int, int] = {}
    for number, raw in enumerate(content.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        record = _split_record(line, delimiter, file, number)
        if header is None:
            header_line = number
            header = _check_header(record, delimiter, file, number)
            continue
        if len(record) != len(header):
            raise JobFileError(
                file,
                number,
                None,
                f"{len(record)} fields, but the header on line {header_line} names {len(header)} "
                f"(delimiter {delimiter!r}; escape a literal one with a backslash)",
            )
        values = {name: (text, column) for name, (text, column) in zip(header, record, strict=True)}
        step_text = values["job_step"][0].strip()
        if not _WHOLE.match(step_text):
            warnings.append(f"{file}, line {number}: skipped, job_step {step_text!r} is not a whole number")
            continue
        step = _build_step(values, file, number)
        if step.job_step in seen:
            raise JobFileError(
                file,
                number,
                "job_step",
                f"step {step.job_step} is already defined on line {seen[step.job_step]}",
            )
        seen[step.job_step] = number
        steps.append(step)
    if header is None:
        raise JobFileError(file, None, None, "no header record (the file is empty or only comments)")
    return ParsedJobFile(steps, warnings, seen)


def _check_header(record: list[tuple[str, int]], delimiter: str, file: str, number: int) -> list[str]:
    names = [name.strip().lower() for name, _ in record]
    if len(names) == 1:
        for other in _OTHER_DELIMITERS:
            if other != delimiter and other in names[0] and "job_step" in names[0]:
                raise JobFileError(
                    file,
                    number,
                    1,
                    f"the header is not split by the delimiter {delimiter!r}; it looks split by "
                    f"{other!r} (set [jobs] job_file_delimiter, or fix the file)",
                )
    if "job_step" not in names:
        raise JobFileError(
            file,
            number,
            1,
            "missing header: the first record must name the columns "
            f"({delimiter.join(c for c in STEP_COLUMNS if c != 'skip_step')})",
        )
    for (name, column), clean in zip(record, names, strict=True):
        if clean not in STEP_COLUMNS:
            raise JobFileError(file, number, column, f"unknown column {name.strip()!r}")
    for dup in {n for n in names if names.count(n) > 1}:
        raise JobFileError(file, number, dup, f"column {dup!r} is named twice")
    for required in REQUIRED_COLUMNS:
        if required not in names:
            raise JobFileError(file, number, None, f"missing required column {required!r}")
    return names


def _build_step(values: Mapping[str, tuple[str, int]], file: str, number: int) -> StepDef:
    kwargs: dict[str, Any] = {}
    for name, (text, _column) in values.items():
        try:
            kwargs[name] = _convert(name, text)
        except ValueError as exc:
            raise JobFileError(file, number, name, str(exc)) from None
    return StepDef(**kwargs)


def _convert(name: str, value: Any) -> Any:
    if name in BOOL_COLUMNS:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            return parse_bool(value)
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(f"{value!r} is not a boolean")
    if name in INT_COLUMNS or name == "job_step":
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a step number")
        if isinstance(value, str) and value.strip() == "" and name != "job_step":
            return 0
        if isinstance(value, str) and _WHOLE.match(value.strip()) and len(value.strip()) <= 10:
            value = int(value.strip())
        if not isinstance(value, int) or value < 0:
            raise ValueError(
                f"{value!r} is not a step number (a whole number{', 0 for none' if name != 'job_step' else ''})"
            )
        if value > MAX_STEP:
            raise ValueError(f"{value} is too large for a step number (at most {MAX_STEP})")
        if name == "job_step" and value == 0:
            raise ValueError("step numbers start at 1 (0 means 'no step' in the wait-step columns)")
        return value
    if isinstance(value, dict) and name == "job_step_args":
        return json.dumps(value)
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not text")
    return value


# --------------------------------------------------------------------------- JSON


def _deepest(content: str, limit: int = 900) -> int:
    """Where nesting first passes ``limit`` levels (outside strings), for the error position."""
    depth = 0
    in_string = escaped = False
    for index, ch in enumerate(content):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return index
        elif ch in "]}":
            depth -= 1
    return 0


def _line_col(content: str, index: int) -> tuple[int, int]:
    line = content.count("\n", 0, index) + 1
    return line, index - (content.rfind("\n", 0, index) + 1) + 1


def _skip_ws(content: str, i: int) -> int:
    while i < len(content) and content[i] in " \t\r\n":
        i += 1
    return i


def _member_offsets(content: str) -> dict[str, int]:
    """Offsets of the values of the top-level object's members."""
    decoder = json.JSONDecoder()
    offsets: dict[str, int] = {}
    i = _skip_ws(content, 0) + 1
    while True:
        i = _skip_ws(content, i)
        if i >= len(content) or content[i] == "}":
            return offsets
        key, i = decoder.raw_decode(content, i)
        i = _skip_ws(content, i) + 1  # the colon
        i = _skip_ws(content, i)
        offsets[str(key)] = i
        _, i = decoder.raw_decode(content, i)
        i = _skip_ws(content, i)
        if i < len(content) and content[i] == ",":
            i += 1


def _element_offsets(content: str, array_start: int) -> list[int]:
    """Start offsets of the elements of the JSON array whose ``[`` is at ``array_start``."""
    decoder = json.JSONDecoder()
    offsets: list[int] = []
    i = array_start + 1
    length = len(content)
    while i < length:
        while i < length and content[i] in " \t\r\n,":
            i += 1
        if i >= length or content[i] == "]":
            break
        offsets.append(i)
        _, i = decoder.raw_decode(content, i)
    return offsets


def parse_json(content: str, file: str) -> ParsedJobFile:
    try:
        document = json.loads(content)
    except json.JSONDecodeError as exc:
        raise JobFileError(file, exc.lineno, exc.colno, f"invalid JSON: {exc.msg}") from None
    except RecursionError:
        depth = _deepest(content)
        raise JobFileError(file, *_line_col(content, depth), "invalid JSON: nested too deeply") from None
    except ValueError:  # an integer with more digits than Python converts
        match = re.search(r"\d{4000,}", content)
        position = _line_col(content, match.start()) if match else (1, 1)
        raise JobFileError(file, *position, "invalid JSON: a number with thousands of digits") from None
    if not isinstance(document, dict) or not isinstance(document.get("steps"), list):
        raise JobFileError(file, 1, 1, 'a JSON job file must be an object with a "steps" list')
    unknown = set(document) - {"steps", "job_name", "job_group", "description"}
    if unknown:
        raise JobFileError(file, 1, 1, f"unknown top-level key(s): {', '.join(sorted(unknown))}")
    try:
        offsets = _element_offsets(content, _member_offsets(content)["steps"])
    except (json.JSONDecodeError, ValueError, KeyError, RecursionError):
        offsets = []
    steps: list[StepDef] = []
    seen: dict[int, int] = {}
    lines: dict[int, int] = {}
    for index, item in enumerate(document["steps"]):
        line, column = _line_col(content, offsets[index]) if index < len(offsets) else (None, None)
        where = f"steps[{index}]"
        if not isinstance(item, dict):
            raise JobFileError(file, line, column, f"{where} must be an object")

        def key_line(key: str, start: int | None = offsets[index] if index < len(offsets) else None) -> int | None:
            if start is None:
                return None
            found = content.find(f'"{key}"', start)
            return _line_col(content, found)[0] if found >= 0 else None

        for key in item:
            if key not in STEP_COLUMNS:
                raise JobFileError(file, key_line(key) or line, key, f"{where}: unknown field {key!r}")
        for required in REQUIRED_COLUMNS:
            if required not in item:
                raise JobFileError(file, line, column, f"{where}: missing field {required!r}")
        kwargs: dict[str, Any] = {}
        for key, value in item.items():
            try:
                kwargs[key] = _convert(key, value)
            except ValueError as exc:
                raise JobFileError(file, key_line(key) or line, key, f"{where}: {exc}") from None
        step = StepDef(**kwargs)
        if step.job_step in seen:
            raise JobFileError(
                file,
                line,
                "job_step",
                f"{where}: step {step.job_step} is already defined in steps[{seen[step.job_step]}]",
            )
        seen[step.job_step] = index
        lines[step.job_step] = line or 0
        steps.append(step)
    return ParsedJobFile(steps, lines={k: v for k, v in lines.items() if v})


# --------------------------------------------------------------------------- checks


def validate(parsed: ParsedJobFile, file: str) -> None:
    """Whole-file checks: at least one step, valid args, wait-step references and cycles."""
    if not parsed.steps:
        raise JobFileError(file, None, None, "no steps (every row was a comment or skipped)")
    known_functions = {f.value for f in StepFunction}
    for step in parsed.steps:
        line = parsed.lines.get(step.job_step)
        try:
            step_control(parse_args(step.job_step_args))
        except InvalidInput as exc:
            raise JobFileError(file, line, "job_step_args", f"step {step.job_step}: {exc.message}") from None
        if step.job_step_function not in known_functions:
            where = f"{file}, line {line}" if line else file
            parsed.warnings.append(
                f"{where}: step {step.job_step}: unknown step function {step.job_step_function!r} "
                "(a run reaching it will fail)"
            )
    numbers = {s.job_step for s in parsed.steps}
    for step in parsed.steps:
        line = parsed.lines.get(step.job_step)
        for column in ("job_step_wait_step", "job_step_alt_wait_step"):
            target = getattr(step, column)
            if target and target not in numbers:
                raise JobFileError(
                    file, line, column, f"step {step.job_step} waits for step {target}, which does not exist"
                )
            if target and target == step.job_step:
                raise JobFileError(file, line, column, f"step {step.job_step} waits for itself")
    cycle = find_cycle(prerequisites(parsed.steps))
    if cycle:
        chain = " -> ".join(str(n) for n in cycle)
        raise JobFileError(
            file, parsed.lines.get(cycle[0]), "job_step_wait_step", f"the wait steps form a cycle: {chain}"
        )


def prerequisites(steps: Sequence[StepDef]) -> dict[int, tuple[int, ...]]:
    """Which steps each step waits for: both wait columns 0 = the previous step in order."""
    ordered = sorted(steps, key=lambda s: s.job_step)
    result: dict[int, tuple[int, ...]] = {}
    previous: int | None = None
    for step in ordered:
        explicit = tuple(n for n in (step.job_step_wait_step, step.job_step_alt_wait_step) if n)
        if explicit:
            result[step.job_step] = explicit
        else:
            result[step.job_step] = (previous,) if previous is not None else ()
        previous = step.job_step
    return result


def find_cycle(graph: Mapping[int, Iterable[int]]) -> list[int] | None:
    """A cycle in the wait graph as a closed chain of step numbers, or ``None``."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    for root in sorted(graph):
        if colour[root] != white:
            continue
        stack: list[tuple[int, list[int]]] = [(root, sorted(graph[root]))]
        path = [root]
        colour[root] = grey
        while stack:
            node, pending = stack[-1]
            if not pending:
                colour[node] = black
                stack.pop()
                path.pop()
                continue
            nxt = pending.pop(0)
            if nxt not in colour:
                continue
            if colour[nxt] == grey:
                return [*path[path.index(nxt) :], nxt]
            if colour[nxt] == white:
                colour[nxt] = grey
                path.append(nxt)
                stack.append((nxt, sorted(graph[nxt])))
    return None


# --------------------------------------------------------------------------- export


def _escape(value: str, delimiter: str) -> str:
    out = []
    for ch in value:
        if ch in (delimiter, '"', "\\"):
            out.append("\\")
        out.append(ch)
    return "".join(out)


def to_csv(steps: Iterable[StepDef], delimiter: str = ",", *, job: str | None = None) -> str:
    """A CSV job file that parses back to exactly ``steps``."""
    lines = []
    if job:
        lines.append(f"# loadmgr job file for {job}")
    lines.append(delimiter.join(STEP_COLUMNS))
    for step in steps:
        row = step.to_dict()
        cells = []
        for name in STEP_COLUMNS:
            value = row[name]
            text = ("True" if value else "False") if isinstance(value, bool) else str(value)
            cells.append(_escape(text, delimiter))
        lines.append(delimiter.join(cells))
    return "\n".join(lines) + "\n"


def to_json(steps: Iterable[StepDef]) -> str:
    return json.dumps({"steps": [s.to_dict() for s in steps]}, indent=2) + "\n"
