"""Unit tests for loadmgrd.mail: which run log lines go into a mail, how a mail is built
(multipart/alternative, escaped HTML, headers), subjects and address checks. Pure: no I/O."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

import pytest

from loadmgrd import mail

# One run log line per level, in the format RunLog writes them.
DEBUG = "2026-01-02 03:04:05.001 DEBUG   [step 10] debug-line"
INFO = "2026-01-02 03:04:05.002 INFO    [step 10] info-line"
STDERR = "2026-01-02 03:04:05.003 STDERR  [step 10] stderr-line"
WARNING = "2026-01-02 03:04:05.004 WARNING [step 20] step 20 warning: exit code 1, 0.010 s"
ERROR = "2026-01-02 03:04:05.005 ERROR   [step 30] step 30 failure: exit code 2, 0.010 s"
RUN_ERROR = "2026-01-02 03:04:05.006 ERROR   run 1260102030405 failed: step 30 failed"
CRITICAL = "2026-01-02 03:04:05.007 CRITICAL something very bad"
LOG = "\n".join([DEBUG, INFO, STDERR, WARNING, ERROR, RUN_ERROR, CRITICAL]) + "\n"


# --------------------------------------------------------------------------- filter_log


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("INFO", [INFO, STDERR, WARNING, ERROR, RUN_ERROR, CRITICAL]),
        ("WARNING", [STDERR, WARNING, ERROR, RUN_ERROR, CRITICAL]),
        ("ERROR", [ERROR, RUN_ERROR, CRITICAL]),
    ],
)
def test_filter_log_keeps_lines_at_the_level_or_above(level: str, expected: list[str]) -> None:
    assert mail.filter_log(LOG, level, 200) == expected


def test_filter_log_counts_stderr_as_warning() -> None:
    assert STDERR in mail.filter_log(LOG, "WARNING", 200)
    assert STDERR not in mail.filter_log(LOG, "ERROR", 200)
    assert mail.filter_log(STDERR, "WARNING", 10) == [STDERR]


def test_filter_log_level_is_case_insensitive() -> None:
    assert mail.filter_log(LOG, "error", 200) == mail.filter_log(LOG, "ERROR", 200)
    assert mail.filter_log(LOG, "info", 200) == mail.filter_log(LOG, "INFO", 200)


def test_filter_log_never_keeps_debug_lines() -> None:
    for level in ("INFO", "WARNING", "ERROR"):
        assert DEBUG not in mail.filter_log(LOG, level, 200)


def test_filter_log_limit_keeps_the_last_lines() -> None:
    assert mail.filter_log(LOG, "INFO", 2) == [RUN_ERROR, CRITICAL]
    assert mail.filter_log(LOG, "WARNING", 3) == [ERROR, RUN_ERROR, CRITICAL]
    assert mail.filter_log(LOG, "INFO", 1) == [CRITICAL]


def test_filter_log_limit_larger_than_the_log_keeps_everything() -> None:
    assert mail.filter_log(LOG, "ERROR", 1000) == [ERROR, RUN_ERROR, CRITICAL]


def test_filter_log_limit_zero_keeps_nothing() -> None:
    assert mail.filter_log(LOG, "INFO", 0) == []
    assert mail.filter_log(LOG, "ERROR", 0) == []


def test_filter_log_ignores_malformed_lines() -> None:
    malformed = [
        "",
        "garbage",
        "ERROR at the start of a line",
        "2026-01-02 ERROR too few fields",
        "2026-01-02 03:04:05.008 error lower-case level",
        "   2026-01-02 03:04:05.009 ERROR indented",
        "2026-01-02 03:04:05.010 ERROR",  # nothing after the level
        "\tcontinuation of a traceback: ERROR",
    ]
    text = "\n".join([malformed[0], ERROR, *malformed[1:], RUN_ERROR])
    assert mail.filter_log(text, "INFO", 200) == [ERROR, RUN_ERROR]
    assert mail.filter_log("\n".join(malformed), "INFO", 200) == []


def test_filter_log_of_an_empty_log_is_empty() -> None:
    assert mail.filter_log("", "INFO", 200) == []


def test_filter_log_keeps_the_lines_as_they_are_and_in_order() -> None:
    text = f"{ERROR}\r\n{STDERR}\r\n{RUN_ERROR}"  # CRLF too
    assert mail.filter_log(text, "WARNING", 200) == [ERROR, STDERR, RUN_ERROR]


# --------------------------------------------------------------------------- message


def build(**overrides: object) -> EmailMessage:
    kwargs: dict[str, object] = {
        "subject_line": "FAILURE-loadmgr:sales",
        "sender": "loadmgr@mail.example.org",
        "recipients": ["ops@example.com", "dba@example.com"],
        "title": "loadmgr: job sales failed",
        "fields": [("Job", "sales"), ("Status", "Failed"), ("Run id", "1260102030405"), ("End step", None)],
        "lines": [ERROR, RUN_ERROR],
        "lines_title": "Run log lines at WARNING or above:",
    }
    kwargs.update(overrides)
    return mail.message(**kwargs)  # type: ignore[arg-type]


def transported(msg: EmailMessage) -> EmailMessage:
    """The mail as a receiver parses it (serialised to bytes and back)."""
    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def parts(msg: EmailMessage) -> dict[str, str]:
    body = {}
    for part in msg.iter_parts():
        assert isinstance(part, EmailMessage)
        body[part.get_content_type()] = part.get_content()
    return body


def test_message_is_multipart_alternative_with_text_then_html() -> None:
    msg = transported(build())
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]


def test_message_headers() -> None:
    msg = transported(build())
    assert msg["Subject"] == "FAILURE-loadmgr:sales"
    assert msg["From"] == "loadmgr@mail.example.org"
    assert msg["To"] == "ops@example.com, dba@example.com"
    assert [a.addr_spec for a in msg["To"].addresses] == ["ops@example.com", "dba@example.com"]
    assert msg["Date"] is not None and msg["Date"].datetime is not None
    assert msg["Message-ID"].strip("<>").endswith("@mail.example.org")


def test_message_ids_differ() -> None:
    assert build()["Message-ID"] != build()["Message-ID"]


def test_message_text_part_lists_title_fields_and_lines() -> None:
    text = parts(transported(build()))["text/plain"]
    lines = text.splitlines()
    assert lines[0] == "loadmgr: job sales failed"
    assert "Job       sales" in lines
    assert "Status    Failed" in lines
    assert "Run id    1260102030405" in lines
    assert "End step" in [line.strip() for line in lines]  # None shows as empty
    assert "None" not in text
    title_at = lines.index("Run log lines at WARNING or above:")
    assert lines[title_at + 1 :] == [ERROR, RUN_ERROR]


def test_message_html_part_lists_title_fields_and_lines() -> None:
    html = parts(transported(build()))["text/html"]
    assert "<h2>loadmgr: job sales failed</h2>" in html
    assert '<th align="left">Status</th><td>Failed</td>' in html
    assert '<th align="left">Run id</th><td>1260102030405</td>' in html
    assert '<th align="left">End step</th><td></td>' in html
    assert "Run log lines at WARNING or above:" in html
    assert ERROR in html and RUN_ERROR in html


def test_message_without_lines_has_no_lines_section() -> None:
    body = parts(transported(build(lines=[], lines_title="Run log lines at WARNING or above:")))
    assert "Run log lines" not in body["text/plain"]
    assert "Run log lines" not in body["text/html"]
    assert "<pre" not in body["text/html"]


def test_message_html_escapes_values_keys_title_and_lines() -> None:
    script = "<script>alert('x')</script>"
    msg = transported(
        build(
            title=f"job {script}",
            fields=[("Reason", script), ("<b>key</b>", "a & b")],
            lines=[f"{ERROR} {script}"],
        )
    )
    body = parts(msg)
    html = body["text/html"]
    assert "<script>" not in html
    assert "<b>key</b>" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert "&lt;b&gt;key&lt;/b&gt;" in html
    assert "a &amp; b" in html
    # the plain-text part shows the values as they are
    assert f"job {script}" in body["text/plain"]
    assert script in body["text/plain"].splitlines()[2]
    assert "a & b" in body["text/plain"]


def test_message_carries_non_ascii_text() -> None:
    msg = transported(build(fields=[("Job", "ventes_été")], title="loadmgr: job ventes_été failed"))
    body = parts(msg)
    assert "ventes_été" in body["text/plain"]
    assert "ventes_été" in body["text/html"]


def test_message_with_one_recipient() -> None:
    msg = transported(build(recipients=["ops@example.com"]))
    assert msg["To"] == "ops@example.com"


# --------------------------------------------------------------------------- subject


@pytest.mark.parametrize(
    ("status", "name", "expected"),
    [
        ("FAILURE", "sales", "FAILURE-loadmgr:sales"),
        ("WARNING", "sales_daily", "WARNING-loadmgr:sales_daily"),
        ("SUCCESS", "a.b-c", "SUCCESS-loadmgr:a.b-c"),
        ("CRITICAL ERROR", "host1", "CRITICAL ERROR-loadmgr:host1"),
        ("TEST", "host1.example.com", "TEST-loadmgr:host1.example.com"),
    ],
)
def test_subject(status: str, name: str, expected: str) -> None:
    assert mail.subject(status, name) == expected


# --------------------------------------------------------------------------- valid_address


@pytest.mark.parametrize(
    "address",
    ["ops@example.com", "first.last+tag@sub.example.org", "a@b.co", "o'brien@example.ie", "x_y-z@mail-1.example.com"],
)
def test_valid_address_accepts(address: str) -> None:
    assert mail.valid_address(address)


@pytest.mark.parametrize(
    "address",
    [
        "",
        "ops",
        "ops@",
        "@example.com",
        "ops@example",
        "ops@@example.com",
        "ops@exa@mple.com",
        "ops @example.com",
        "ops@example .com",
        " ops@example.com",
        "ops@example.com ",
        "a@example.com,b@example.com",
        "a@example.com;b@example.com",
        "<ops@example.com>",
        "Ops <ops@example.com>",
        "not-an-address",
        "ops@example.com\nBcc: evil@example.com",
    ],
)
def test_valid_address_refuses(address: str) -> None:
    assert not mail.valid_address(address)


# --------------------------------------------------------------------------- run_fields


def test_run_fields_in_order_with_duration_and_empty_reason() -> None:
    run = {
        "status": "Completed",
        "start_local": "2026-01-02 03:04:05 UTC",
        "run_id": "1260102030405",
        "log_file": "/var/log/loadmgr/loadmgr_sales.log",
        "start_step": 10,
        "end_step": 30,
        "last_completed_step": 30,
        "status_reason": None,
    }
    assert mail.run_fields("sales", run, 12.345) == [
        ("Job", "sales"),
        ("Status", "Completed"),
        ("Start time", "2026-01-02 03:04:05 UTC"),
        ("Run id", "1260102030405"),
        ("Log file", "/var/log/loadmgr/loadmgr_sales.log"),
        ("Start step", 10),
        ("End step", 30),
        ("Last completed step", 30),
        ("Duration (s)", "12.3"),
        ("Reason", ""),
    ]
    assert dict(mail.run_fields("sales", run, None))["Duration (s)"] == ""
