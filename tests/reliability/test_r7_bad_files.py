"""R7 — malformed job files through the real ``loadmgrctl job import``.

Each file (CSV and JSON: binary, 5 MB of garbage, deep nesting, wrong types, BOM with a bad header,
CRLF with errors, mixed delimiters, NUL bytes, unterminated quotes, duplicate steps, cycles, invalid
UTF-8 at a known position, empty, only comments, a JSON array at the top level, steps that are not
objects, …) is imported twice: as a new job, and with ``--force`` over an existing job. Both must
exit non-zero with a message naming the file and the line (and the column for CSV field errors —
the position is derived here from the file's content, not from the daemon), and change nothing:
every row of every table, ``listall`` and the existing job's ``job view`` are identical afterwards.

Errors with no line to name (an empty file, only comments, no valid row, too many steps) must name
the file and say what is wrong. JSON nested too deeply and numbers too long for Python name the
line too (docs/job-files.md: "Every error names the file, the line and the column").
"""

from __future__ import annotations

import codecs
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Daemon
from tests.reliability.support import BASE_SEED, call, db_dump, discard_daemon, dump_difference, new_daemon

H = "job_step,job_step_function,job_step_command\n"
H7 = (
    "job_step,job_step_description,job_step_function,job_step_command,job_step_args,"
    "job_step_ignore_error,job_step_capture_output\n"
)
GOOD = H7 + "10,first,run_command,echo one,,False,False\n20,second,run_command,echo two,,no,yes\n"


@dataclass(frozen=True)
class Bad:
    name: str  # file name (its extension does not matter to the daemon: content decides)
    data: bytes
    line: int | None  # the line the message must name (None: no line applies)
    column: str | None = None  # text that must follow "column " (CSV field errors, positions)
    words: tuple[str, ...] = ()  # further words the message must hold


def first_bad_utf8(data: bytes) -> tuple[int, str]:
    """(line, column) of the first byte that is not UTF-8, counted independently of loadmgrd."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        start = exc.start
    else:
        raise AssertionError("the data is valid UTF-8")
    line_start = data.rfind(b"\n", 0, start) + 1
    return data.count(b"\n", 0, start) + 1, str(len(data[line_start:start].decode("utf-8")) + 1)


def json_steps(*steps: str) -> bytes:
    return ('{"steps": [\n' + ",\n".join(steps) + "\n]}\n").encode()


STEP_OK = '  {"job_step": 1, "job_step_function": "run_command", "job_step_command": "true"}'
_binary = bytes(range(256)) * 4
_rng = random.Random(BASE_SEED)
_random_bytes = _rng.randbytes(5_000_000)
_garbage = b"".join(bytes(_rng.choice(b"abcdefghij klmnop,;|") for _ in range(99)) + b"\n" for _ in range(100)) * 500
_json_bad_utf8 = b'{"steps": [\n  {"job_step": 1, "job_step_command": "\xc3\x28"}\n]}\n'
_bad_utf8 = (H7 + "10,d,run_command,tr").encode() + b"\xff" + b"ue,,False,False\n"

CASES = [
    Bad("binary.bin", _binary, *first_bad_utf8(_binary)),
    Bad("random-5mb.csv", _random_bytes, *first_bad_utf8(_random_bytes)),
    Bad("garbage-5mb.csv", _garbage, 1, "1", ("header",)),
    Bad("bom-bad-header.csv", codecs.BOM_UTF8 + b"jobstep,function,command\n10,run_command,true\n", 1, "1"),
    Bad(
        "crlf-bad-bool.csv",
        (H7 + "10,d,run_command,true,,False,False\n20,d,run_command,true,,maybe,False\n")
        .replace("\n", "\r\n")
        .encode(),
        3,
        "job_step_ignore_error",
        ("maybe",),
    ),
    Bad(
        "crlf-bom-comments.csv",
        codecs.BOM_UTF8 + b"# one\r\n# two\r\njob_step,job_step_function,job_step_command,job_step_ignore_error\r\n"
        b"10,run_command,true,maybe\r\n",
        4,
        "job_step_ignore_error",
    ),
    Bad("crlf-field-count.csv", (H + "10,run_command,true,extra\r\n").replace("\n", "\r\n").encode(), 2),
    Bad("cr-only.csv", b"job_step,job_step_function,job_step_command\r10,run_command,true\r", 1, words=("column",)),
    Bad("semicolon-header.csv", b"job_step;job_step_function;job_step_command\n10;run_command;true\n", 1, "1", (";",)),
    Bad(
        "mixed-delimiters.csv",
        (H7 + "10,d,run_command,true,,False,False\n20;d;run_command;true;;False;False\n").encode(),
        3,
    ),
    Bad("nul-byte.csv", (H + "10,run_command,tr\0ue\n").encode(), 2, words=("NUL",)),
    Bad("unterminated-quote.csv", (H7 + '10,"d,run_command,true,,False,False\n').encode(), 2, "4"),
    Bad("newline-in-quotes.csv", (H + '10,run_command,"echo a\nb"\n').encode(), 2, "16"),
    Bad("text-after-quote.csv", (H7 + '10,"d"x,run_command,true,,False,False\n').encode(), 2, "7"),
    Bad("lone-quote-header.csv", b'"job_step,job_step_function,job_step_command\n', 1, "1"),
    Bad("duplicate-steps.csv", (H + "10,run_command,true\n10,run_command,false\n").encode(), 3, "job_step", ("10",)),
    Bad(
        "cycle.csv",
        b"job_step,job_step_function,job_step_command,job_step_wait_step\n10,run_command,true,20\n20,run_command,true,10\n",
        2,
        "job_step_wait_step",
        ("cycle",),
    ),
    Bad(
        "missing-wait-target.csv",
        b"job_step,job_step_function,job_step_command,job_step_wait_step\n10,run_command,true,99\n",
        2,
        "job_step_wait_step",
        ("99",),
    ),
    Bad(
        "negative-wait.csv",
        b"job_step,job_step_function,job_step_command,job_step_wait_step\n10,run_command,true,-5\n",
        2,
        "job_step_wait_step",
    ),
    Bad("invalid-utf8.csv", _bad_utf8, *first_bad_utf8(_bad_utf8)),
    Bad("utf16.csv", H.encode("utf-16"), 1, "1"),
    Bad("bad-bool.csv", (H7 + "10,d,run_command,true,,perhaps,False\n").encode(), 2, "job_step_ignore_error"),
    Bad("huge-step-number.csv", (H + "99999999999,run_command,true\n").encode(), 2, "job_step"),
    Bad("zero-step.csv", (H + "0,run_command,true\n").encode(), 2, "job_step"),
    Bad("bad-timeout-arg.csv", (H7 + "10,d,run_command,true,timeout=abc,False,False\n").encode(), 2, "job_step_args"),
    Bad("unknown-column.csv", (H.rstrip("\n") + ",colour\n10,run_command,true,red\n").encode(), 1, "45", ("colour",)),
    Bad("duplicate-column.csv", b"job_step,job_step_function,job_step_command,job_step\n10,run_command,true,10\n", 1),
    Bad("missing-required-column.csv", b"job_step,job_step_function\n10,run_command\n", 1, words=("job_step_command",)),
    Bad("too-many-fields.csv", (H + "10,run_command,true,extra\n").encode(), 2),
    Bad("5000-fields.csv", (H + ",".join(["x"] * 5000) + "\n").encode(), 2),
    Bad("empty.csv", b"", None, words=("empty",)),
    Bad("whitespace-only.csv", b"   \n\t\n\n", None, words=("empty",)),
    Bad("only-comments.csv", b"# a job file\n# with nothing in it\n", None, words=("comments",)),
    Bad("no-valid-rows.csv", (H + "x,run_command,true\n1.5,run_command,true\n").encode(), None, words=("no steps",)),
    Bad(
        "too-many-steps.csv",
        (H + "".join(f"{n},run_command,true\n" for n in range(1, 102))).encode(),
        None,
        words=("101 steps", "queue_size_limit"),
    ),
    Bad("array-top-level.json", b'[{"job_step": 1, "job_step_function": "run_command"}]\n', 1),
    Bad("string-top-level.json", b'"just a string"\n', 1),
    Bad("empty-object.json", b"{}\n", 1, words=("steps",)),
    Bad("steps-an-object.json", b'{"steps": {"a": 1}}\n', 1, words=("steps",)),
    Bad("steps-not-objects.json", b'{"steps": [1, 2]}\n', 1, words=("steps[0]",)),
    Bad("steps-null.json", b'{"steps": [null]}\n', 1, words=("steps[0]",)),
    Bad(
        "json-syntax.json",
        b'{"steps": [\n {"job_step": 1,\n "job_step_function": "run_command"\n "x": 1}]}\n',
        4,
        words=("invalid JSON",),
    ),
    Bad("json-trailing-data.json", b'{"steps": []} and more\n', 1, words=("invalid JSON",)),
    Bad("json-top-level-key.json", b'{"steps": [], "colour": 1}\n', 1, words=("colour",)),
    Bad(
        "json-wrong-type-step.json",
        json_steps('  {"job_step": "ten", "job_step_function": "run_command", "job_step_command": "true"}'),
        2,
        "job_step",
    ),
    Bad(
        "json-bool-step.json",
        json_steps('  {"job_step": true, "job_step_function": "run_command", "job_step_command": "true"}'),
        2,
        "job_step",
    ),
    Bad(
        "json-float-step.json",
        json_steps('  {"job_step": 1.5, "job_step_function": "run_command", "job_step_command": "true"}'),
        2,
        "job_step",
    ),
    Bad(
        "json-wrong-type-function.json",
        json_steps('  {"job_step": 1,\n   "job_step_function": 5,\n   "job_step_command": "true"}'),
        3,
        "job_step_function",
    ),
    Bad(
        "json-args-list.json",
        json_steps(
            '  {"job_step": 1,\n   "job_step_function": "run_command",\n   "job_step_command": "true",\n'
            '   "job_step_args": [1]}'
        ),
        5,
        "job_step_args",
    ),
    Bad(
        "json-unknown-field.json",
        json_steps(STEP_OK, '  {"job_step": 2, "job_step_function": "run_command", "job_step_command": "x", "c": 1}'),
        3,
        "c",
    ),
    Bad("json-missing-field.json", json_steps(STEP_OK, '  {"job_step": 2}'), 3, words=("job_step_function",)),
    Bad("json-duplicate-steps.json", json_steps(STEP_OK, STEP_OK), 3, "job_step"),
    Bad(
        "json-cycle.json",
        json_steps(
            '  {"job_step": 1, "job_step_function": "run_command", "job_step_command": "a", "job_step_wait_step": 2}',
            '  {"job_step": 2, "job_step_function": "run_command", "job_step_command": "b", "job_step_wait_step": 1}',
        ),
        2,
        "job_step_wait_step",
        ("cycle",),
    ),
    Bad("json-bad-utf8.json", _json_bad_utf8, *first_bad_utf8(_json_bad_utf8)),
]
JSON_WITHOUT_POSITION_CASES = [
    Bad("deep-nesting.json", b'{"steps": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", 1),
    Bad("huge-integer.json", b'{"steps": [{"job_step": ' + b"9" * 5000 + b"}]}\n", 1),
]


@pytest.fixture(scope="module")
def importer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Path]]:
    d = new_daemon()
    directory = tmp_path_factory.mktemp("bad-files")
    try:
        d.start()
        good = directory / "good.csv"
        good.write_text(GOOD)
        d.ok("job", "import", "-g", "r7-group", "r7-existing", str(good))
        yield d, directory
    finally:
        discard_daemon(d)


def check_refused(importer: tuple[Daemon, Path], case: Bad) -> None:
    d, directory = importer
    path = directory / case.name
    path.write_bytes(case.data)
    before = db_dump(d.database)
    listing = call(d, "listall")
    view = call(d, "job.view", {"job": "r7-existing"})

    for args in (["r7-new", str(path)], ["--force", "r7-existing", str(path)]):
        result = d.ctl("job", "import", *args)
        message = result.stderr
        where = f"{case.name} ({' '.join(args[:-1])}): exit {result.returncode}, stderr {message[:600]!r}"
        assert result.returncode not in (0, 4, 5), where
        assert "Traceback" not in message, where
        assert str(path) in message, f"the message does not name the file: {where}"
        if case.line is not None:
            assert f"{path}, line {case.line}" in message, f"line {case.line} not named: {where}"
        if case.column is not None:
            assert f"column {case.column}" in message, f"column {case.column} not named: {where}"
        for word in case.words:
            assert word.lower() in message.lower(), f"{word!r} not in the message: {where}"

    after = db_dump(d.database)
    assert after == before, f"{case.name}: a refused import changed the repository: {dump_difference(before, after)}"
    assert call(d, "listall") == listing
    assert call(d, "job.view", {"job": "r7-existing"}) == view, f"{case.name}: --force replaced the steps"
    assert d.rpc("job.view", {"job": "r7-new"})["error"]["code"] == 1001


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_malformed_job_file_is_refused_naming_file_and_line(importer: tuple[Daemon, Path], case: Bad) -> None:
    check_refused(importer, case)


@pytest.mark.parametrize("case", JSON_WITHOUT_POSITION_CASES, ids=[c.name for c in JSON_WITHOUT_POSITION_CASES])
def test_json_error_without_a_position_still_names_the_line(importer: tuple[Daemon, Path], case: Bad) -> None:
    check_refused(importer, case)


def test_the_cases_are_many_and_varied() -> None:
    assert len(CASES) + len(JSON_WITHOUT_POSITION_CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)
    assert sum(c.name.endswith(".json") for c in CASES) >= 10
    assert max(len(c.data) for c in CASES) >= 5_000_000


def test_a_good_file_still_imports(importer: tuple[Daemon, Path]) -> None:
    """The control case: the same path with a valid file replaces the job's steps (so the refusals
    above are about the files, not about the importer)."""
    d, directory = importer
    path = directory / "replacement.json"
    path.write_text(
        json.dumps({"steps": [{"job_step": 5, "job_step_function": "run_command", "job_step_command": "x"}]})
    )
    d.ok("job", "import", "--force", "r7-existing", str(path))
    assert [s["job_step"] for s in call(d, "job.view", {"job": "r7-existing"})["steps"]] == [5]
    d.ok("job", "import", "--force", "r7-existing", str(directory / "good.csv"))
    assert [s["job_step"] for s in call(d, "job.view", {"job": "r7-existing"})["steps"]] == [10, 20]
