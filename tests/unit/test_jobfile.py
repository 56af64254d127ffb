"""Unit tests for loadmgrd.jobfile: CSV and JSON job files, their errors, export and the wait graph."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadmgrd import jobfile
from loadmgrd.errors import ErrorCode, InvalidInput, JobFileError
from loadmgrd.jobfile import ParsedJobFile, StepDef

FILE = "jobs/nightly_load.csv"
JFILE = "jobs/nightly_load.json"
HEADER = "job_step,job_step_function,job_step_command"
FULL_HEADER = ",".join(jobfile.STEP_COLUMNS)


def step(number: int, command: str = "true", function: str = "run_command", **extra: Any) -> StepDef:
    return StepDef(job_step=number, job_step_function=function, job_step_command=command, **extra)


def parse_error(content: str, *, file: str = FILE, delimiter: str = ",") -> JobFileError:
    with pytest.raises(JobFileError) as info:
        jobfile.parse(content, file, delimiter)
    return info.value


def assert_names_file(err: JobFileError, file: str = FILE) -> None:
    assert err.file == file
    assert str(err).startswith(file)
    assert err.data is not None
    assert err.data["file"] == file
    assert err.data["line"] == err.line
    assert err.data["column"] == err.column


# --------------------------------------------------------------------------- good CSV

GOOD_CSV = [
    pytest.param(
        f"{HEADER}\n1,run_command,echo one\n2,run_command,echo two\n",
        ",",
        [step(1, "echo one"), step(2, "echo two")],
        id="required-columns-only",
    ),
    pytest.param(
        f"# leading comment\n   # indented comment\n{HEADER}\n# between\n1,run_command,a\n"
        "#x,y,z\n2,run_command,b\n# end",
        ",",
        [step(1, "a"), step(2, "b")],
        id="comments-anywhere",
    ),
    pytest.param(
        f"\n\n{HEADER}\n\n   \n1,run_command,a\n\n\t\n2,run_command,b\n\n",
        ",",
        [step(1, "a"), step(2, "b")],
        id="blank-lines",
    ),
    pytest.param(
        f'{HEADER}\n1,run_command,echo a\\,b \\"q\\" C:\\\\tmp\\\\\n',
        ",",
        [step(1, 'echo a,b "q" C:\\tmp\\')],
        id="backslash-escapes-delimiter-quote-backslash",
    ),
    pytest.param(
        f'{HEADER}\n1,run_command,"echo a,b,c"\n2,run_command,"say \\"hi\\", ok"\n3,run_command,""\n',
        ",",
        [step(1, "echo a,b,c"), step(2, 'say "hi", ok'), step(3, "")],
        id="quoted-fields",
    ),
    pytest.param(
        f'{HEADER}\n1,run_command,echo "mid" quote\n',
        ",",
        [step(1, 'echo "mid" quote')],
        id="quote-inside-unquoted-field-is-literal",
    ),
    pytest.param(
        f"{HEADER}\r\n# c\r\n1,run_command,a\r\n\r\n2,run_command,b\r\n",
        ",",
        [step(1, "a"), step(2, "b")],
        id="crlf",
    ),
    pytest.param(
        "job_step|job_step_function|job_step_command\n1|run_command|echo a,b \\| c\n",
        "|",
        [step(1, "echo a,b | c")],
        id="pipe-delimiter",
    ),
    pytest.param(
        'job_step;job_step_function;job_step_command\n1;run_command;echo a,b\\;c\n2;run_command;"x;y"\n',
        ";",
        [step(1, "echo a,b;c"), step(2, "x;y")],
        id="semicolon-delimiter",
    ),
    pytest.param(
        "job_step\tjob_step_function\tjob_step_command\n1\trun_command\techo a,b;c|d\n",
        "\t",
        [step(1, "echo a,b;c|d")],
        id="tab-delimiter",
    ),
    pytest.param(
        "JOB_STEP_COMMAND , Job_Step ,job_step_function\necho x, 7 ,start_process\n",
        ",",
        [step(7, "echo x", "start_process")],
        id="header-any-case-any-order",
    ),
    pytest.param(
        "job_step,job_step_function,job_step_command,job_step_wait_step,job_step_alt_wait_step\n"
        "10,run_command,a,,\n20,run_command,b,0,0\n30,run_command,c,10,\n40,run_command,d,, 20 \n"
        "50,run_command,e,30,40\n",
        ",",
        [
            step(10, "a"),
            step(20, "b"),
            step(30, "c", job_step_wait_step=10),
            step(40, "d", job_step_alt_wait_step=20),
            step(50, "e", job_step_wait_step=30, job_step_alt_wait_step=40),
        ],
        id="wait-step-columns",
    ),
    pytest.param(
        f"{FULL_HEADER}\n10,Extract orders,run_command,extract.sh %step_5%,mode=full,yes,True,0,0,no\n",
        ",",
        [
            step(
                10,
                "extract.sh %step_5%",
                job_step_description="Extract orders",
                job_step_args="mode=full",
                job_step_ignore_error=True,
                job_step_capture_output=True,
            )
        ],
        id="every-column",
    ),
    pytest.param(
        f"{HEADER}\n010,run_command,a\n 2 ,run_command,b\n",
        ",",
        [step(10, "a"), step(2, "b")],
        id="step-number-leading-zero-and-spaces",
    ),
    pytest.param(
        f'{HEADER},job_step_args\n1,run_command,a,"{{\\"table\\": \\"orders\\", \\"n\\": 2}}"\n',
        ",",
        [step(1, "a", job_step_args='{"table": "orders", "n": 2}')],
        id="json-step-args-in-quoted-field",
    ),
    pytest.param(
        f"{HEADER}\n1,run_command,  spaced out  \n",
        ",",
        [step(1, "  spaced out  ")],
        id="text-fields-keep-whitespace",
    ),
]


@pytest.mark.parametrize(("content", "delimiter", "expected"), GOOD_CSV)
def test_parse_good_csv(content: str, delimiter: str, expected: list[StepDef]) -> None:
    parsed = jobfile.parse(content, FILE, delimiter)
    assert parsed.steps == expected
    assert parsed.warnings == []


@pytest.mark.parametrize(("content", "delimiter", "expected"), GOOD_CSV)
def test_parse_csv_directly_gives_same_steps(content: str, delimiter: str, expected: list[StepDef]) -> None:
    assert jobfile.parse_csv(content, FILE, delimiter).steps == expected


BOOLEANS = [
    ("True", True),
    ("true", True),
    ("TRUE", True),
    ("tRuE", True),
    ("yes", True),
    ("Yes", True),
    ("YES", True),
    ("1", True),
    (" yes ", True),
    ("False", False),
    ("false", False),
    ("FALSE", False),
    ("no", False),
    ("No", False),
    ("NO", False),
    ("0", False),
    ("", False),
]


@pytest.mark.parametrize("column", jobfile.BOOL_COLUMNS)
@pytest.mark.parametrize(("text", "expected"), BOOLEANS)
def test_csv_booleans_any_case(column: str, text: str, expected: bool) -> None:
    content = f"{HEADER},{column}\n1,run_command,a,{text}\n"
    (parsed,) = jobfile.parse(content, FILE).steps
    assert getattr(parsed, column) is expected
    others = [c for c in jobfile.BOOL_COLUMNS if c != column]
    assert all(getattr(parsed, c) is False for c in others)


@pytest.mark.parametrize(
    ("bad_step", "shown"),
    [("abc", "'abc'"), ("1.5", "'1.5'"), ("-3", "'-3'"), ("", "''"), ("+4", "'+4'"), ("1e3", "'1e3'")],
)
def test_csv_rows_with_non_whole_step_are_skipped_with_warning(bad_step: str, shown: str) -> None:
    content = f"{HEADER}\n1,run_command,a\n{bad_step},run_command,b\n2,run_command,c\n"
    parsed = jobfile.parse(content, FILE)
    assert parsed.steps == [step(1, "a"), step(2, "c")]
    assert parsed.warnings == [f"{FILE}, line 3: skipped, job_step {shown} is not a whole number"]


def test_skipped_row_does_not_count_as_duplicate_or_unknown_column() -> None:
    content = f"{HEADER}\nstep,run_command,title row\n1,run_command,a\nTOTAL,x,y\n"
    parsed = jobfile.parse(content, FILE)
    assert parsed.steps == [step(1, "a")]
    assert [w.split(":")[0] for w in parsed.warnings] == [f"{FILE}, line 2", f"{FILE}, line 4"]


def test_unknown_step_function_is_a_warning_not_an_error() -> None:
    parsed = jobfile.parse(f"{HEADER}\n1,no_such_function,a\n", FILE)
    assert parsed.steps == [step(1, "a", "no_such_function")]
    assert parsed.warnings == [
        f"{FILE}, line 2: step 1: unknown step function 'no_such_function' (a run reaching it will fail)"
    ]


# --------------------------------------------------------------------------- decode


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"plain", "plain"),
        (b"\xef\xbb\xbfwith bom", "with bom"),
        ("caf\u00e9 \u2603".encode(), "caf\u00e9 \u2603"),
        (b"", ""),
        (b"\xef\xbb\xbf", ""),
    ],
)
def test_decode_good(data: bytes, expected: str) -> None:
    assert jobfile.decode(data, FILE) == expected


def test_decode_bom_and_crlf_then_parse() -> None:
    data = b"\xef\xbb\xbf" + f"{HEADER}\r\n1,run_command,echo caf\u00e9\r\n".encode()
    parsed = jobfile.parse(jobfile.decode(data, FILE), FILE)
    assert parsed.steps == [step(1, "echo caf\u00e9")]


@pytest.mark.parametrize(
    ("data", "line", "column", "byte"),
    [
        (b"\xff", 1, 1, "0xff"),
        (b"job_step\n1,\xffx", 2, 3, "0xff"),
        (b"a\r\nbc\r\nd\xfe", 3, 2, "0xfe"),
        (b"abc\xc3", 1, 4, "0xc3"),
        (b"line1\nline2\n\n\x80", 4, 1, "0x80"),
    ],
)
def test_decode_bad_bytes(data: bytes, line: int, column: int, byte: str) -> None:
    with pytest.raises(JobFileError) as info:
        jobfile.decode(data, "f.csv")
    err = info.value
    assert (err.line, err.column) == (line, column)
    assert_names_file(err, "f.csv")
    assert str(err).startswith(f"f.csv, line {line}, column {column}: byte {byte} is not UTF-8")


def test_decode_bad_byte_after_bom_is_located() -> None:
    with pytest.raises(JobFileError) as info:
        jobfile.decode(b"\xef\xbb\xbfjob\n1,\xff", "f.csv")
    err = info.value
    assert (err.line, err.column) == (2, 3)
    assert "byte 0xff" in str(err)


# --------------------------------------------------------------------------- bad CSV

BAD_CSV = [
    pytest.param("1,run_command,a\n", ",", 1, 1, "missing header: the first record must name", id="no-header"),
    pytest.param(
        "# comment\n\n1,run_command,a\n2,run_command,b\n",
        ",",
        3,
        1,
        "missing header",
        id="no-header-after-comments",
    ),
    pytest.param(
        f"{HEADER},bogus\n1,run_command,a,b\n", ",", 1, 45, "unknown column 'bogus'", id="unknown-column-last"
    ),
    pytest.param(
        "job_step,wat,job_step_function,job_step_command\n",
        ",",
        1,
        10,
        "unknown column 'wat'",
        id="unknown-column-middle",
    ),
    pytest.param(
        "# c\njob_step,job_step_function,job_step_command,job_step_descr\n",
        ",",
        2,
        45,
        "unknown column 'job_step_descr'",
        id="unknown-column-after-comment",
    ),
    pytest.param(
        "job_step|job_step_function|job_step_command|extra\n",
        "|",
        1,
        45,
        "unknown column 'extra'",
        id="unknown-column-pipe",
    ),
    pytest.param(
        f"{HEADER},job_step_ignore_error\n1,run_command,a,yes\n2,run_command,b,maybe\n",
        ",",
        3,
        "job_step_ignore_error",
        "'maybe' is not a boolean",
        id="non-boolean-ignore-error",
    ),
    pytest.param(
        f"{HEADER},job_step_capture_output\n1,run_command,a,2\n",
        ",",
        2,
        "job_step_capture_output",
        "'2' is not a boolean",
        id="non-boolean-capture-output",
    ),
    pytest.param(
        f"{HEADER},skip_step\n1,run_command,a,nope\n",
        ",",
        2,
        "skip_step",
        "'nope' is not a boolean",
        id="non-boolean-skip-step",
    ),
    pytest.param(
        f"{HEADER},job_step_wait_step\n1,run_command,a,x\n",
        ",",
        2,
        "job_step_wait_step",
        "'x' is not a step number",
        id="wait-step-not-a-number",
    ),
    pytest.param(
        f"{HEADER},job_step_alt_wait_step\n1,run_command,a,-1\n",
        ",",
        2,
        "job_step_alt_wait_step",
        "'-1' is not a step number",
        id="alt-wait-step-negative",
    ),
    pytest.param(
        f"{HEADER}\n1,run_command,a\n2,run_command,b\n# comment\n1,run_command,c\n",
        ",",
        5,
        "job_step",
        "step 1 is already defined on line 2",
        id="duplicate-step",
    ),
    pytest.param(
        f"{HEADER}\n10,run_command,a\n010,run_command,c\n",
        ",",
        3,
        "job_step",
        "step 10 is already defined on line 2",
        id="duplicate-step-leading-zero",
    ),
    pytest.param(
        "job_step;job_step_function;job_step_command\n1;run_command;a\n",
        ",",
        1,
        1,
        "the header is not split by the delimiter ','; it looks split by ';'",
        id="wrong-delimiter-semicolon",
    ),
    pytest.param(
        "# exported\njob_step|job_step_function|job_step_command\n1|run_command|a\n",
        ",",
        2,
        1,
        "it looks split by '|'",
        id="wrong-delimiter-pipe",
    ),
    pytest.param(
        f"{HEADER}\n1,run_command,a\n",
        ";",
        1,
        1,
        "it looks split by ','",
        id="comma-file-semicolon-delimiter",
    ),
    pytest.param(
        f"{HEADER}\n1,run_command\n",
        ",",
        2,
        None,
        "2 fields, but the header on line 1 names 3",
        id="too-few-fields",
    ),
    pytest.param(
        f"# c\n{HEADER}\n1,run_command,a,b\n",
        ",",
        3,
        None,
        "4 fields, but the header on line 2 names 3",
        id="too-many-fields",
    ),
    pytest.param(
        f'{HEADER}\n1,run_command,"a,b\n',
        ",",
        2,
        15,
        "a quoted field is not closed on this line",
        id="unclosed-quote",
    ),
    pytest.param(
        f'{HEADER}\n1,"run_command,a\n', ",", 2, 3, "a quoted field is not closed", id="unclosed-quote-middle"
    ),
    pytest.param(
        f'{HEADER}\n1,run_command,"a,b" x\n',
        ",",
        2,
        20,
        "unexpected ' ' after a closing quote",
        id="text-after-closing-quote",
    ),
    pytest.param(
        f"{HEADER},job_step_command\n",
        ",",
        1,
        "job_step_command",
        "column 'job_step_command' is named twice",
        id="duplicate-column",
    ),
    pytest.param(
        "job_step,job_step_function\n1,run_command\n",
        ",",
        1,
        None,
        "missing required column 'job_step_command'",
        id="missing-required-column",
    ),
    pytest.param(f"{HEADER}\n1,run\0_command,a\n", ",", 2, None, "contains a NUL byte", id="nul-byte"),
    pytest.param("\0", ",", 1, None, "contains a NUL byte", id="nul-byte-only"),
]


@pytest.mark.parametrize(("content", "delimiter", "line", "column", "fragment"), BAD_CSV)
def test_parse_bad_csv(content: str, delimiter: str, line: int, column: str | int | None, fragment: str) -> None:
    err = parse_error(content, delimiter=delimiter)
    assert_names_file(err)
    assert (err.line, err.column) == (line, column)
    assert fragment in err.problem
    where = f"{FILE}, line {line}" + (f", column {column}" if column is not None else "")
    assert str(err) == f"{where}: {err.problem}"


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("", id="empty"),
        pytest.param("\n\n   \n", id="blank-lines-only"),
        pytest.param("# just\n# comments\n", id="comments-only"),
        pytest.param("\r\n# c\r\n", id="crlf-comment-only"),
    ],
)
def test_no_header_record(content: str) -> None:
    err = parse_error(content)
    assert_names_file(err)
    assert (err.line, err.column) == (None, None)
    assert str(err) == f"{FILE}: no header record (the file is empty or only comments)"


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(f"{HEADER}\n", id="header-only"),
        pytest.param(f"{HEADER}\n# 1,run_command,a\n", id="rows-commented-out"),
        pytest.param(f"{HEADER}\nx,run_command,a\n", id="every-row-skipped"),
    ],
)
def test_no_steps(content: str) -> None:
    err = parse_error(content)
    assert_names_file(err)
    assert err.line is None
    assert str(err) == f"{FILE}: no steps (every row was a comment or skipped)"


def test_job_file_error_is_invalid_input() -> None:
    err = parse_error("1,run_command,a\n")
    assert isinstance(err, InvalidInput)
    assert err.code == ErrorCode.INVALID_INPUT


WAIT_HEADER = f"{HEADER},job_step_wait_step,job_step_alt_wait_step"

# Whole-file checks (wait steps, cycles, step args): (content, column, problem)
VALIDATION_ERRORS = [
    pytest.param(
        f"{WAIT_HEADER}\n1,run_command,a,0,0\n2,run_command,b,5,0\n",
        "job_step_wait_step",
        "step 2 waits for step 5, which does not exist",
        id="wait-step-missing",
    ),
    pytest.param(
        f"{WAIT_HEADER}\n1,run_command,a,0,0\n2,run_command,b,0,99\n",
        "job_step_alt_wait_step",
        "step 2 waits for step 99, which does not exist",
        id="alt-wait-step-missing",
    ),
    pytest.param(
        f"{WAIT_HEADER}\n1,run_command,a,0,0\n2,run_command,b,2,0\n",
        "job_step_wait_step",
        "step 2 waits for itself",
        id="waits-for-itself",
    ),
    pytest.param(
        f"{WAIT_HEADER}\n1,run_command,a,0,1\n",
        "job_step_alt_wait_step",
        "step 1 waits for itself",
        id="alt-waits-for-itself",
    ),
    pytest.param(
        f"{WAIT_HEADER}\n10,run_command,a,20,0\n20,run_command,b,10,0\n",
        "job_step_wait_step",
        "the wait steps form a cycle: 10 -> 20 -> 10",
        id="cycle-of-two",
    ),
    pytest.param(
        f"{WAIT_HEADER}\n1,run_command,a,0,0\n2,run_command,b,4,0\n3,run_command,c,2,0\n4,run_command,d,0,3\n",
        "job_step_wait_step",
        "the wait steps form a cycle: 2 -> 4 -> 3 -> 2",
        id="cycle-of-three",
    ),
    pytest.param(
        f"{WAIT_HEADER}\n10,run_command,a,0,0\n20,run_command,b,30,0\n30,run_command,c,0,0\n",
        "job_step_wait_step",
        "the wait steps form a cycle: 20 -> 30 -> 20",
        id="cycle-with-sequential-default",
    ),
    pytest.param(
        f'{HEADER},job_step_args\n1,run_command,a,"{{\\"a\\":"\n',
        "job_step_args",
        "step 1: step args are not valid JSON",
        id="args-bad-json",
    ),
    pytest.param(
        f"{HEADER},job_step_args\n1,run_command,a,\n2,run_command,b,novalue\n",
        "job_step_args",
        "step 2: step arg 'novalue' is not in key=value form",
        id="args-without-equals",
    ),
    pytest.param(
        f"{HEADER},job_step_args\n1,run_command,a,a='x\n",
        "job_step_args",
        "step 1: step args cannot be split",
        id="args-unclosed-quote",
    ),
    pytest.param(
        f"{HEADER},job_step_args\n1,run_command,a,[1\\,2]\n",
        "job_step_args",
        "step 1: step args in JSON must be an object, not a list",
        id="args-json-list",
    ),
]


@pytest.mark.parametrize(("content", "column", "problem"), VALIDATION_ERRORS)
def test_parse_whole_file_errors(content: str, column: str, problem: str) -> None:
    err = parse_error(content)
    assert_names_file(err)
    assert err.column == column
    assert err.problem.startswith(problem)
    assert str(err).startswith(f"{FILE}")
    assert f"column {column}: {problem}" in str(err)


@pytest.mark.parametrize(
    ("content", "line"),
    [
        pytest.param(f"{WAIT_HEADER}\n1,run_command,a,0,0\n\n2,run_command,b,5,0\n", 4, id="wait-step-missing"),
        pytest.param(f"{WAIT_HEADER}\n1,run_command,a,0,0\n2,run_command,b,2,0\n", 3, id="waits-for-itself"),
        pytest.param(f"{HEADER},job_step_args\n# c\n1,run_command,a,novalue\n", 3, id="bad-args"),
    ],
)
def test_whole_file_errors_name_the_offending_line(content: str, line: int) -> None:
    assert parse_error(content).line == line


@pytest.mark.parametrize("job_step", ["\u00b2", "1" * 5000], ids=["superscript-digit", "5000-digits"])
def test_csv_odd_step_numbers_never_escape_as_value_error(job_step: str) -> None:
    content = f"{HEADER}\n1,run_command,a\n{job_step},run_command,b\n"
    try:
        parsed = jobfile.parse(content, FILE)
    except JobFileError as err:
        assert (err.line, err.column) == (3, "job_step")
        return
    # Accepting the file is fine only if the row was skipped with a warning.
    assert parsed.steps == [step(1, "a")]
    assert len(parsed.warnings) == 1
    assert parsed.warnings[0].startswith(f"{FILE}, line 3: skipped")


def test_comment_containing_form_feed_is_one_comment() -> None:
    parsed = jobfile.parse(f"{HEADER}\n# page\x0cbreak\n1,run_command,a\n", FILE)
    assert parsed.steps == [step(1, "a")]


def test_step_zero_is_accepted_or_rejected_clearly() -> None:
    content = f"{HEADER}\n0,run_command,a\n1,run_command,b\n"
    try:
        parsed = jobfile.parse(content, FILE)
    except JobFileError as err:
        assert "waits for itself" not in err.problem
        assert (err.line, err.column) == (2, "job_step")
        return
    assert parsed.steps == [step(0, "a"), step(1, "b")]


# --------------------------------------------------------------------------- JSON

STEP1 = '{"job_step": 1, "job_step_function": "run_command", "job_step_command": "a"}'

GOOD_JSON = [
    pytest.param(
        json.dumps(
            {
                "job_name": "nightly",
                "job_group": "etl",
                "description": "Nightly load",
                "steps": [
                    {
                        "job_step": 10,
                        "job_step_description": "extract",
                        "job_step_function": "run_command",
                        "job_step_command": "extract.sh %step_5%",
                        "job_step_args": "mode=full",
                        "job_step_ignore_error": True,
                        "job_step_capture_output": False,
                        "job_step_wait_step": 0,
                        "job_step_alt_wait_step": 0,
                        "skip_step": True,
                    },
                    {
                        "job_step": 20,
                        "job_step_function": "start_process",
                        "job_step_command": "p",
                        "job_step_wait_step": 10,
                    },
                ],
            }
        ),
        [
            step(
                10,
                "extract.sh %step_5%",
                job_step_description="extract",
                job_step_args="mode=full",
                job_step_ignore_error=True,
                skip_step=True,
            ),
            step(20, "p", "start_process", job_step_wait_step=10),
        ],
        id="full",
    ),
    pytest.param(
        '  \n{"steps": [{"job_step": 1, "job_step_function": "run_command", "job_step_command": "a",'
        ' "job_step_ignore_error": 1, "job_step_capture_output": "yes", "skip_step": 0}]}',
        [step(1, "a", job_step_ignore_error=True, job_step_capture_output=True)],
        id="bool-from-int-and-text-leading-whitespace",
    ),
    pytest.param(
        '{"steps": [{"job_step": "5", "job_step_function": "run_command", "job_step_command": "a",'
        ' "job_step_wait_step": ""}]}',
        [step(5, "a")],
        id="step-number-as-text",
    ),
    pytest.param(
        '{"steps": [{"job_step": 1, "job_step_function": "run_command", "job_step_command": "a",'
        ' "job_step_args": {"table": "orders", "n": 2}}]}',
        [step(1, "a", job_step_args='{"table": "orders", "n": 2}')],
        id="args-object-becomes-json-text",
    ),
    pytest.param(
        '{"steps": [{"job_step": 2, "job_step_function": "run_command", "job_step_command": "b"},'
        ' {"job_step": 1, "job_step_function": "run_command", "job_step_command": "a"}]}',
        [step(2, "b"), step(1, "a")],
        id="file-order-kept",
    ),
]


@pytest.mark.parametrize(("content", "expected"), GOOD_JSON)
def test_parse_good_json(content: str, expected: list[StepDef]) -> None:
    parsed = jobfile.parse(content, JFILE)
    assert parsed.steps == expected
    assert parsed.warnings == []
    assert jobfile.parse_json(content, JFILE).steps == expected


def test_json_ignores_csv_delimiter() -> None:
    content = '{"steps": [{"job_step": 1, "job_step_function": "run_command", "job_step_command": "a;b|c"}]}'
    assert jobfile.parse(content, JFILE, ";").steps == [step(1, "a;b|c")]


def _steps_doc(*items: str) -> str:
    return '{"steps": [\n' + ",\n".join(f"  {item}" for item in items) + "\n]}\n"


BAD_JSON = [
    pytest.param('{"steps": [\n  {"job_step": 1,,}\n]}', 2, 18, "invalid JSON: Expecting property name", id="syntax"),
    pytest.param('{"steps": [\n', 2, 1, "invalid JSON: Expecting value", id="truncated"),
    pytest.param('{"steps": []}\n{}', 2, 1, "invalid JSON: Extra data", id="extra-data"),
    pytest.param(
        _steps_doc(STEP1, '{"job_step": "x", "job_step_function": "run_command", "job_step_command": "b"}'),
        3,
        "job_step",
        "steps[1]: 'x' is not a step number",
        id="step-number-text",
    ),
    pytest.param(
        _steps_doc('{"job_step": true, "job_step_function": "run_command", "job_step_command": "b"}'),
        2,
        "job_step",
        "steps[0]: True is not a step number",
        id="step-number-bool",
    ),
    pytest.param(
        _steps_doc('{"job_step": 1.5, "job_step_function": "run_command", "job_step_command": "b"}'),
        2,
        "job_step",
        "steps[0]: 1.5 is not a step number",
        id="step-number-float",
    ),
    pytest.param(
        _steps_doc('{"job_step": -2, "job_step_function": "run_command", "job_step_command": "b"}'),
        2,
        "job_step",
        "steps[0]: -2 is not a step number",
        id="step-number-negative",
    ),
    pytest.param(
        _steps_doc(
            STEP1,
            '{"job_step": 2,\n   "job_step_function": "run_command",\n   "job_step_command": "b",\n'
            '   "job_step_ignore_error": "maybe"}',
        ),
        6,
        "job_step_ignore_error",
        "steps[1]: 'maybe' is not a boolean",
        id="bool-text",
    ),
    pytest.param(
        _steps_doc('{"job_step": 1, "job_step_function": "run_command", "job_step_command": "a",\n   "skip_step": 2}'),
        3,
        "skip_step",
        "steps[0]: 2 is not a boolean",
        id="bool-int-2",
    ),
    pytest.param(
        _steps_doc(
            '{"job_step": 1, "job_step_function": "run_command", "job_step_command": "a",\n'
            '   "job_step_capture_output": null}'
        ),
        3,
        "job_step_capture_output",
        "steps[0]: None is not a boolean",
        id="bool-null",
    ),
    pytest.param(
        _steps_doc('{"job_step": 1,\n   "job_step_function": 5, "job_step_command": "a"}'),
        3,
        "job_step_function",
        "steps[0]: 5 is not text",
        id="function-not-text",
    ),
    pytest.param(
        _steps_doc(
            '{"job_step": 1, "job_step_function": "run_command", "job_step_command": "a",\n   "job_step_args": [1, 2]}'
        ),
        3,
        "job_step_args",
        "steps[0]: [1, 2] is not text",
        id="args-list",
    ),
    pytest.param(
        _steps_doc(
            STEP1,
            '{"job_step": 2, "job_step_function": "run_command", "job_step_command": "b",\n'
            '   "job_step_wait_step": "one"}',
        ),
        4,
        "job_step_wait_step",
        "steps[1]: 'one' is not a step number",
        id="wait-step-text",
    ),
    pytest.param(
        _steps_doc(STEP1, '{"job_step": 2,\n   "bogus": 1}'),
        4,
        "bogus",
        "steps[1]: unknown field 'bogus'",
        id="unknown-field",
    ),
    pytest.param(
        _steps_doc(STEP1, '{"job_step": 2, "job_step_command": "b"}'),
        3,
        3,
        "steps[1]: missing field 'job_step_function'",
        id="missing-field",
    ),
    pytest.param(
        _steps_doc('{"job_step_function": "run_command", "job_step_command": "b"}'),
        2,
        3,
        "steps[0]: missing field 'job_step'",
        id="missing-step-number",
    ),
    pytest.param(_steps_doc(STEP1, "[1, 2]"), 3, 3, "steps[1] must be an object", id="step-not-object"),
    pytest.param(
        _steps_doc(STEP1, STEP1),
        3,
        "job_step",
        "steps[1]: step 1 is already defined in steps[0]",
        id="duplicate-step",
    ),
    pytest.param('{"steps": {"job_step": 1}}', 1, 1, 'must be an object with a "steps" list', id="steps-not-list"),
    pytest.param('{"steps": null}', 1, 1, 'must be an object with a "steps" list', id="steps-null"),
    pytest.param('{"job_name": "x"}', 1, 1, 'must be an object with a "steps" list', id="no-steps-key"),
    pytest.param(
        '{"steps": [], "colour": 1, "b": 2}',
        1,
        1,
        "unknown top-level key(s): b, colour",
        id="unknown-top-level",
    ),
]


@pytest.mark.parametrize(("content", "line", "column", "fragment"), BAD_JSON)
def test_parse_bad_json(content: str, line: int, column: str | int, fragment: str) -> None:
    err = parse_error(content, file=JFILE)
    assert_names_file(err, JFILE)
    assert (err.line, err.column) == (line, column)
    assert fragment in err.problem
    assert str(err).startswith(f"{JFILE}, line {line}, column {column}: ")


@pytest.mark.parametrize(
    ("content", "line", "column"),
    [("[1, 2]", 1, 1), ('"steps"', 1, 1), ("[\n", 2, 1)],
)
def test_parse_json_rejects_non_object(content: str, line: int, column: int) -> None:
    with pytest.raises(JobFileError) as info:
        jobfile.parse_json(content, JFILE)
    assert (info.value.line, info.value.column) == (line, column)
    assert_names_file(info.value, JFILE)


def test_json_empty_steps_list() -> None:
    err = parse_error('{"steps": []}', file=JFILE)
    assert str(err) == f"{JFILE}: no steps (every row was a comment or skipped)"


def test_json_wait_step_cycle() -> None:
    content = _steps_doc(
        '{"job_step": 10, "job_step_function": "run_command", "job_step_command": "a", "job_step_wait_step": 20}',
        '{"job_step": 20, "job_step_function": "run_command", "job_step_command": "b", "job_step_wait_step": 10}',
    )
    err = parse_error(content, file=JFILE)
    assert err.column == "job_step_wait_step"
    assert "cycle: 10 -> 20 -> 10" in str(err)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("[" * 100_000, id="open-arrays"),
        pytest.param('{"steps": ' + "[" * 100_000, id="open-arrays-in-steps"),
        pytest.param('{"steps": ' + "[" * 100_000 + "]" * 100_000 + "}", id="closed-arrays"),
        pytest.param('{"steps": [' + '{"a": ' * 50_000 + "1" + "}" * 50_000 + "]}", id="nested-objects"),
    ],
)
def test_json_deep_nesting_is_a_job_file_error(content: str) -> None:
    with pytest.raises(JobFileError) as info:
        jobfile.parse_json(content, JFILE)
    assert_names_file(info.value, JFILE)
    assert "nested too deeply" in info.value.problem


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("[" * 100_000, id="csv-route"),
        pytest.param('{"steps": ' + "[" * 100_000 + "]" * 100_000 + "}", id="json-route"),
    ],
)
def test_parse_deep_nesting_is_a_job_file_error(content: str) -> None:
    err = parse_error(content, file=JFILE)
    assert_names_file(err, JFILE)


def test_json_huge_integer_is_a_job_file_error() -> None:
    content = (
        '{"steps": [{"job_step": ' + "1" * 5000 + ', "job_step_function": "run_command", "job_step_command": "a"}]}'
    )
    with pytest.raises(JobFileError):
        jobfile.parse(content, JFILE)


def test_json_line_when_a_value_is_the_word_steps() -> None:
    content = (
        '{"job_name": "steps", "job_group": "g[1, 2]",\n'
        ' "steps": [\n'
        f"  {STEP1},\n"
        '  {"job_step": "x", "job_step_function": "run_command", "job_step_command": "b"}\n'
        "]}\n"
    )
    err = parse_error(content, file=JFILE)
    assert (err.line, err.column) == (4, "job_step")


# --------------------------------------------------------------------------- export and round trip

ROUND_TRIP = [
    pytest.param([step(1)], id="single"),
    pytest.param(
        [
            step(10, "echo a,b", job_step_description='say "hi"'),
            step(20, "C:\\tmp\\ \\", job_step_description="back\\slash", job_step_wait_step=10),
            step(
                30,
                "load %step_10% %step_20%",
                job_step_args="src=%step_10% dst='a b'",
                job_step_alt_wait_step=20,
            ),
        ],
        id="delimiter-quote-backslash-variables",
    ),
    pytest.param(
        [
            step(
                5,
                '"quoted"',
                "start_process",
                job_step_description="#not a comment",
                job_step_ignore_error=True,
                job_step_capture_output=True,
                skip_step=True,
            ),
            step(1, ",;|:\t", job_step_description=" lead and trail "),
        ],
        id="booleans-and-odd-text",
    ),
    pytest.param(
        [step(1, "", job_step_args='{"a": "x,y", "b": "q\\"r"}'), step(2, "\u00e9\u2603\U0001f600")],
        id="json-args-and-unicode",
    ),
    pytest.param(
        [step(100, "a"), step(7, "b"), step(50, "c", job_step_wait_step=7, job_step_alt_wait_step=7)],
        id="unsorted",
    ),
]


@pytest.mark.parametrize("steps", ROUND_TRIP)
@pytest.mark.parametrize("delimiter", [",", ";", "|", "\t", ":"])
def test_csv_round_trip(steps: list[StepDef], delimiter: str) -> None:
    text = jobfile.to_csv(steps, delimiter)
    assert jobfile.parse(text, FILE, delimiter).steps == steps


@pytest.mark.parametrize("steps", ROUND_TRIP)
def test_json_round_trip(steps: list[StepDef]) -> None:
    text = jobfile.to_json(steps)
    assert json.loads(text)["steps"] == [s.to_dict() for s in steps]
    assert jobfile.parse(text, JFILE).steps == steps


def test_to_csv_layout() -> None:
    text = jobfile.to_csv([step(1, "a,b", job_step_ignore_error=True)], job="nightly")
    assert text == (f"# loadmgr job file for nightly\n{FULL_HEADER}\n1,,run_command,a\\,b,,True,False,0,0,False\n")
    assert jobfile.parse(text, FILE).steps == [step(1, "a,b", job_step_ignore_error=True)]


def test_to_json_layout() -> None:
    document = json.loads(jobfile.to_json([step(3, "x", skip_step=True)]))
    assert document == {
        "steps": [
            {
                "job_step": 3,
                "job_step_function": "run_command",
                "job_step_command": "x",
                "job_step_description": "",
                "job_step_args": "",
                "job_step_ignore_error": False,
                "job_step_capture_output": False,
                "job_step_wait_step": 0,
                "job_step_alt_wait_step": 0,
                "skip_step": True,
            }
        ]
    }


@pytest.mark.parametrize("char", ["\u2028", "\x85", "\x0c"], ids=["U+2028", "NEL", "form-feed"])
def test_csv_round_trip_with_unicode_line_separators(char: str) -> None:
    steps = [step(1, "a", job_step_description=f"before{char}after")]
    assert jobfile.parse(jobfile.to_csv(steps), FILE).steps == steps


_LINE_BREAKS = "\n\r\x85\u2028\u2029\x0b\x0c\x1c\x1d\x1e"
_TEXT = st.text(alphabet=st.characters(exclude_categories=("Cc", "Cs"), exclude_characters=_LINE_BREAKS))
_TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=6)
_VALUE = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789_%.-", max_size=8)
_ARGS = st.one_of(
    st.just(""),
    st.lists(st.tuples(_TOKEN, _VALUE), min_size=1, max_size=4).map(
        lambda pairs: " ".join(f"{k}={v}" for k, v in pairs)
    ),
)


@st.composite
def step_lists(draw: st.DrawFn) -> list[StepDef]:
    numbers = draw(st.lists(st.integers(min_value=1, max_value=999_999_999), min_size=1, max_size=8, unique=True))
    return [
        StepDef(
            job_step=number,
            job_step_function=draw(_TEXT),
            job_step_command=draw(_TEXT),
            job_step_description=draw(_TEXT),
            job_step_args=draw(_ARGS),
            job_step_ignore_error=draw(st.booleans()),
            job_step_capture_output=draw(st.booleans()),
            skip_step=draw(st.booleans()),
        )
        for number in numbers
    ]


@settings(max_examples=200, deadline=None)
@given(steps=step_lists(), delimiter=st.sampled_from([",", ";", "|", "\t"]))
def test_csv_round_trip_property(steps: list[StepDef], delimiter: str) -> None:
    assert jobfile.parse(jobfile.to_csv(steps, delimiter), FILE, delimiter).steps == steps


@settings(max_examples=100, deadline=None)
@given(steps=step_lists())
def test_json_round_trip_property(steps: list[StepDef]) -> None:
    assert jobfile.parse(jobfile.to_json(steps), JFILE).steps == steps


# --------------------------------------------------------------------------- wait graph


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        pytest.param([step(1)], {1: ()}, id="single-step"),
        pytest.param([step(1), step(2), step(3)], {1: (), 2: (1,), 3: (2,)}, id="sequential"),
        pytest.param([step(30), step(10), step(20)], {10: (), 20: (10,), 30: (20,)}, id="sequential-by-number"),
        pytest.param(
            [step(10), step(20), step(30, job_step_wait_step=10), step(40)],
            {10: (), 20: (10,), 30: (10,), 40: (30,)},
            id="explicit-wait",
        ),
        pytest.param(
            [step(10), step(20), step(30, job_step_alt_wait_step=10)],
            {10: (), 20: (10,), 30: (10,)},
            id="alt-wait-only",
        ),
        pytest.param(
            [
                step(10),
                step(20, job_step_wait_step=10),
                step(30, job_step_wait_step=10, job_step_alt_wait_step=20),
            ],
            {10: (), 20: (10,), 30: (10, 20)},
            id="both-waits",
        ),
        pytest.param(
            [step(1, job_step_wait_step=2), step(2)],
            {1: (2,), 2: (1,)},
            id="first-step-explicit",
        ),
        pytest.param([], {}, id="empty"),
    ],
)
def test_prerequisites(steps: list[StepDef], expected: dict[int, tuple[int, ...]]) -> None:
    assert jobfile.prerequisites(steps) == expected


@pytest.mark.parametrize(
    "graph",
    [
        pytest.param({}, id="empty"),
        pytest.param({1: ()}, id="single"),
        pytest.param({1: (), 2: (1,), 3: (2,)}, id="chain"),
        pytest.param({1: (), 2: (1,), 3: (1,), 4: (2, 3)}, id="diamond"),
        pytest.param({1: (99,), 2: (1, 98)}, id="unknown-targets-ignored"),
        pytest.param({5: (1, 2, 3), 1: (), 2: (1,), 3: (1, 2)}, id="dense-dag"),
    ],
)
def test_find_cycle_none_on_dag(graph: dict[int, tuple[int, ...]]) -> None:
    assert jobfile.find_cycle(graph) is None


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        pytest.param({1: (1,)}, [1, 1], id="self-loop"),
        pytest.param({10: (20,), 20: (10,)}, [10, 20, 10], id="two"),
        pytest.param({1: (), 2: (4,), 3: (2,), 4: (3,)}, [2, 4, 3, 2], id="three"),
        pytest.param({1: (2,), 2: (3,), 3: (2,)}, [2, 3, 2], id="cycle-reached-from-tail"),
        pytest.param({1: (), 2: (1,), 3: (1, 4), 4: (3,)}, [3, 4, 3], id="cycle-beside-dag"),
    ],
)
def test_find_cycle_reports_closed_chain(graph: dict[int, tuple[int, ...]], expected: list[int]) -> None:
    assert jobfile.find_cycle(graph) == expected


def test_find_cycle_on_prerequisites_of_parsed_file() -> None:
    steps = [step(1), step(2, job_step_wait_step=3), step(3)]
    assert jobfile.find_cycle(jobfile.prerequisites(steps)) == [2, 3, 2]


# --------------------------------------------------------------------------- small helpers


@pytest.mark.parametrize("text", ["maybe", "2", "tru", "oui", "-1"])
def test_parse_bool_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="is not a boolean"):
        jobfile.parse_bool(text)


def test_step_def_from_mapping_ignores_extra_keys() -> None:
    row = {**step(4, "x").to_dict(), "job_step_id": 99, "job_id": 3}
    assert StepDef.from_mapping(row) == step(4, "x")


def test_parsed_job_file_defaults() -> None:
    assert ParsedJobFile([]).warnings == []
