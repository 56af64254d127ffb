"""Email notifications, end to end: a real loadmgrd mails a real SMTP server (aiosmtpd on
127.0.0.1) about failed, warned, stopped, completed and refused runs; ``send_email`` steps;
``loadmgrctl notify test``; a dead, silent or slow mail server; configuration errors; and the
CRITICAL ERROR mail of a daemon that cannot open its repository.

Synchronisation never sleeps for a state: mails are awaited on the SMTP handler's condition
variable (with a timeout), runs with ``start --wait`` or the ``watch`` long poll; only the
daemon's log file is polled (short loop with a deadline), as nothing else signals a log line.

Mail ordering is used as a barrier: loadmgrd sends its notifications one at a time, in the
order they were queued, so once a later mail has arrived every earlier one has too.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import functools
import html
import json
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller

from tests import support
from tests.conftest import Daemon, make_daemon
from tests.support import assert_exit, by_step, call, current_run, q, wait_for_status

WAIT = 30.0  # upper bound for any mail, state or log line we wait for; normally well under a second
POLL = 0.05  # the daemon's log file only
ANSWER = "250 2.0.0 Ok: queued as LMTEST42"  # what the test SMTP server answers to DATA
FROM_DOMAIN = "notify.example"
SUCCESS_LIST = ["dev@example.com"]
FAILURE_LIST = ["ops1@example.com", "ops2@example.com"]

# New sections follow the config file's last line directly (email_section starts with its own blank line).
configure = functools.partial(support.configure, blank_line=False)


# ============================================================================ the SMTP server


@dataclass(frozen=True)
class Received:
    """One mail as the SMTP server got it."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    def body(self, subtype: str) -> str:
        """The text/SUBTYPE body part (not an attachment)."""
        for part in self.message.walk():
            if part.get_content_type() == f"text/{subtype}" and not part.is_attachment():
                assert isinstance(part, EmailMessage)
                content = part.get_content()
                assert isinstance(content, str)
                return content.replace("\r\n", "\n")  # SMTP carries CRLF line ends
        raise AssertionError(f"no text/{subtype} part in {self.subject!r}: {self.message.as_string()[:2000]}")

    @property
    def text(self) -> str:
        return self.body("plain")

    @property
    def html(self) -> str:
        return self.body("html")

    def attachments(self) -> dict[str, bytes]:
        found = {}
        for part in self.message.iter_attachments():
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            found[str(part.get_filename())] = payload
        return found


class Inbox:
    """An aiosmtpd handler that keeps every mail and lets tests wait for them."""

    def __init__(self, delay: float = 0.0, held: bool = False) -> None:
        self.delay = delay  # seconds every DATA takes before the server answers
        self.released = threading.Event()  # while not set, DATA is held (at most WAIT s)
        if not held:
            self.released.set()
        self._cond = threading.Condition()
        self._mails: list[Received] = []
        self.data_started = threading.Event()  # set when the first DATA command arrives

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.data_started.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        if not self.released.is_set():
            await asyncio.to_thread(self.released.wait, WAIT)
        raw = envelope.original_content or envelope.content
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        received = Received(str(envelope.mail_from), tuple(envelope.rcpt_tos), message)
        with self._cond:
            self._mails.append(received)
            self._cond.notify_all()
        return ANSWER

    def mails(self, match: Callable[[Received], bool] = lambda _: True) -> list[Received]:
        with self._cond:
            return [m for m in self._mails if match(m)]

    def wait_for(
        self, match: Callable[[Received], bool] = lambda _: True, count: int = 1, timeout: float = WAIT
    ) -> list[Received]:
        """The matching mails once there are at least ``count`` of them."""
        with self._cond:
            if not self._cond.wait_for(lambda: len([m for m in self._mails if match(m)]) >= count, timeout):
                got = [(m.subject, m.rcpt_tos) for m in self._mails]
                raise AssertionError(f"fewer than {count} matching mail(s) after {timeout} s; got: {got}")
            return [m for m in self._mails if match(m)]


def subject_is(subject: str) -> Callable[[Received], bool]:
    return lambda m: m.subject == subject


def for_job(job: str) -> Callable[[Received], bool]:
    return lambda m: m.subject.endswith(f"-loadmgr:{job}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def smtp_server(delay: float = 0.0, held: bool = False) -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox(delay, held)
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        inbox.released.set()
        controller.stop()


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    with smtp_server() as server:
        yield server


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A port nothing listens on: bound (so nothing else takes it) but not listening, so refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (kernel backlog) but never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield int(sock.getsockname()[1])


# ============================================================================ daemons


def email_section(port: int, **keys: Any) -> str:
    values: dict[str, Any] = {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "from_domain": FROM_DOMAIN,
        "success_list": ", ".join(SUCCESS_LIST),
        "failure_list": ", ".join(FAILURE_LIST),
    }
    values.update(keys)
    return "\n[email]\n" + "".join(f"{key} = {value}\n" for key, value in values.items())


running_daemon = support.configured_daemon


@pytest.fixture(scope="module")
def shared_smtp() -> Iterator[tuple[Inbox, int]]:
    with smtp_server() as server:
        yield server


@pytest.fixture(scope="module")
def mailer(shared_smtp: tuple[Inbox, int]) -> Iterator[Daemon]:
    """One daemon per module mailing ``shared_smtp`` with the default lists (tests use their own job names)."""
    with running_daemon(email_section(shared_smtp[1])) as d:
        yield d


@pytest.fixture
def inbox(shared_smtp: tuple[Inbox, int]) -> Inbox:
    return shared_smtp[0]


@pytest.fixture(scope="module")
def dead_mailer() -> Iterator[tuple[Daemon, int]]:
    """A daemon whose mail server is down: refused connections, 2 attempts, 1 s timeout."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
        with running_daemon(email_section(port, send_attempts=2, timeout=1)) as d:
            yield d, port


# ============================================================================ jobs and runs


def step(
    number: int,
    command: str,
    *,
    function: str = "run_command",
    args: str | dict[str, Any] = "",
    ignore_error: bool = False,
) -> dict[str, Any]:
    return {
        "job_step": number,
        "job_step_function": function,
        "job_step_command": command,
        "job_step_args": args,
        "job_step_ignore_error": ignore_error,
    }


def import_job(d: Daemon, tmp_path: Path, name: str, steps: list[dict[str, Any]]) -> None:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"steps": steps}, indent=1))
    d.ok("job", "import", name, str(path))


def run_job(d: Daemon, job: str, *args: str, code: int = 0) -> dict[str, Any]:
    """``start --wait``; the run as status shows it afterwards."""
    assert_exit(d.ctl("start", "--wait", *args, job), code)
    return current_run(d, job)


TS = r"(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"  # a daemon log line's time


def log_time(match: re.Match[str]) -> float:
    return datetime.strptime(match["ts"], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def wait_for_log(d: Daemon, pattern: str, timeout: float = WAIT) -> re.Match[str]:
    """The first match of ``pattern`` in the daemon's log, once it is there."""
    compiled = re.compile(pattern, re.MULTILINE)
    deadline = time.monotonic() + timeout
    while (match := compiled.search(d.log())) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"{pattern!r} not in the daemon log after {timeout} s:\n{d.log()}")
        time.sleep(POLL)
    return match


@pytest.fixture
def gates(tmp_path: Path) -> Iterator[Callable[[str], tuple[str, Path]]]:
    """Blocking step commands: (command, release file); every release file is created at the end."""
    made: list[Path] = []

    def make(name: str) -> tuple[str, Path]:
        release = tmp_path / f"{name}.release"
        made.append(release)
        return f"while [ ! -f {q(str(release))} ]; do sleep 0.05; done", release

    yield make
    for release in made:
        release.touch()


# ============================================================================ assertions on mails


def fields_of(mail: Received) -> dict[str, str]:
    """The mail's ``key: value`` table, read from both parts (which must agree)."""
    cells = re.findall(r"<tr><th[^>]*>(.*?)</th><td[^>]*>(.*?)</td></tr>", mail.html, re.DOTALL)
    from_html = {html.unescape(k): html.unescape(v) for k, v in cells}
    from_text = {}
    for key in from_html:
        match = re.search(rf"^{re.escape(key)}( +(?P<value>.*))?$", mail.text, re.MULTILINE)
        assert match is not None, f"{key!r} is in the HTML part but not in the text part:\n{mail.text}"
        from_text[key] = match["value"] or ""
    assert from_text == from_html, "the text and HTML parts disagree"
    return from_html


def field(mail: Received, key: str, value: Any) -> None:
    """``key`` shows ``value`` in both the text and the HTML part."""
    shown = fields_of(mail)
    assert key in shown, f"no {key!r} in {shown}"
    assert shown[key] == str(value), f"{key}: {shown[key]!r}, wanted {value!r}"


def has_line(mail: Received, level: str, text: str) -> bool:
    """A run log line at ``level`` containing ``text`` is in both parts (in neither → False)."""
    pattern = re.compile(rf"\d\d:\d\d:\d\d\.\d+ {level}\s+{re.escape(text)}")
    in_text, in_html = bool(pattern.search(mail.text)), bool(pattern.search(html.unescape(mail.html)))
    assert in_text == in_html, f"the text and HTML parts disagree on {level} {text!r}"
    return in_text


def assert_run_mail(mail: Received, *, subject: str, recipients: list[str], job: str, run: dict[str, Any]) -> None:
    assert mail.subject == subject
    assert list(mail.rcpt_tos) == recipients
    assert mail.mail_from == f"loadmgr@{FROM_DOMAIN}"
    assert [a.addr_spec for a in mail.message["To"].addresses] == recipients
    assert mail.message.get_content_type() == "multipart/alternative"
    field(mail, "Job", job)
    field(mail, "Status", run["status"])
    field(mail, "Run id", run["run_id"])


# ============================================================================ run notifications


def test_failed_run_mails_the_failure_list_with_the_run_and_its_warnings(
    mailer: Daemon, inbox: Inbox, tmp_path: Path
) -> None:
    job = "nt_fail"
    import_job(
        mailer,
        tmp_path,
        job,
        [
            step(10, "echo info-line; echo warn-line >&2"),
            step(20, "exit 5", ignore_error=True),
            step(30, "echo before-failure; exit 4"),
            step(40, "echo never"),
        ],
    )
    run = run_job(mailer, job, code=1)
    assert run["status"] == "Failed"
    [mail] = inbox.wait_for(subject_is(f"FAILURE-loadmgr:{job}"))
    assert_run_mail(mail, subject=f"FAILURE-loadmgr:{job}", recipients=FAILURE_LIST, job=job, run=run)
    assert [p.get_content_type() for p in mail.message.iter_parts()] == ["text/plain", "text/html"]
    field(mail, "Status", "Failed")
    field(mail, "Log file", run["log_file"])
    field(mail, "Start step", 10)
    field(mail, "End step", 40)
    field(mail, "Last completed step", 20)
    field(mail, "Reason", "step 30 failed")
    shown_fields = fields_of(mail)
    assert re.fullmatch(r"\d+\.\d", shown_fields["Duration (s)"]), shown_fields
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+", shown_fields["Start time"]), shown_fields
    # [email] logging_level = WARNING (the default): stderr, warnings and errors; no INFO lines
    assert has_line(mail, "STDERR", "[step 10] warn-line")
    assert has_line(mail, "WARNING", "[step 20] step 20 warning: exit code 5")
    assert has_line(mail, "ERROR", "[step 30] step 30 failure: exit code 4")
    assert has_line(mail, "ERROR", f"run {run['run_id']} failed: step 30 failed")
    for info in ("info-line", "before-failure", "step 10 started", f"run {run['run_id']} of job {job} started"):
        assert info not in mail.text and info not in mail.html, info
    assert "never" not in mail.text
    # every log line the mail shows is really in the run's log
    log_lines = Path(run["log_file"]).read_text().splitlines()
    shown = mail.text.split("Run log lines at WARNING or above:\n", 1)[1].splitlines()
    assert shown and all(line in log_lines for line in shown), shown
    # nothing to the success list
    assert not inbox.mails(lambda m: for_job(job)(m) and m.subject != f"FAILURE-loadmgr:{job}")


def test_run_completed_with_warnings_mails_warning_to_the_failure_list(
    mailer: Daemon, inbox: Inbox, tmp_path: Path
) -> None:
    job = "nt_warn"
    import_job(mailer, tmp_path, job, [step(10, "exit 3", ignore_error=True), step(20, "true")])
    run = run_job(mailer, job)
    assert run["status"] == "Completed"
    assert by_step(run)[10]["status"] == "Warning"
    [mail] = inbox.wait_for(for_job(job))
    assert_run_mail(mail, subject=f"WARNING-loadmgr:{job}", recipients=FAILURE_LIST, job=job, run=run)
    field(mail, "Status", "Completed")
    field(mail, "Last completed step", 20)
    assert has_line(mail, "WARNING", "[step 10] step 10 warning: exit code 3")
    assert not inbox.mails(subject_is(f"SUCCESS-loadmgr:{job}"))


def test_clean_run_mails_success_to_the_success_list(mailer: Daemon, inbox: Inbox, tmp_path: Path) -> None:
    job = "nt_ok"
    import_job(mailer, tmp_path, job, [step(10, "echo fine"), step(20, "true")])
    run = run_job(mailer, job)
    [mail] = inbox.wait_for(for_job(job))
    assert_run_mail(mail, subject=f"SUCCESS-loadmgr:{job}", recipients=SUCCESS_LIST, job=job, run=run)
    field(mail, "Status", "Completed")
    field(mail, "Start step", 10)
    field(mail, "End step", 20)
    field(mail, "Last completed step", 20)
    field(mail, "Log file", run["log_file"])
    assert "fine" not in mail.text  # an INFO line


def test_no_success_email_sends_nothing_for_that_run_only(mailer: Daemon, inbox: Inbox, tmp_path: Path) -> None:
    job = "nt_quiet"
    import_job(mailer, tmp_path, job, [step(10, "true")])
    quiet = run_job(mailer, job, "--no-success-email")
    assert quiet["status"] == "Completed" and quiet["no_success_email"] is True
    loud = run_job(mailer, job)
    assert loud["run_id"] != quiet["run_id"]
    [mail] = inbox.wait_for(for_job(job))
    # mails go out in order: had the first run been mailed, its mail would have come before this one
    field(mail, "Run id", loud["run_id"])
    assert mail.subject == f"SUCCESS-loadmgr:{job}"
    assert [m.subject for m in inbox.mails(for_job(job))] == [f"SUCCESS-loadmgr:{job}"]
    assert all(fields_of(m)["Run id"] != quiet["run_id"] for m in inbox.mails())


def test_no_success_email_still_mails_a_failure(mailer: Daemon, inbox: Inbox, tmp_path: Path) -> None:
    job = "nt_quiet_fail"
    import_job(mailer, tmp_path, job, [step(10, "exit 1")])
    run = run_job(mailer, job, "--no-success-email", code=1)
    [mail] = inbox.wait_for(for_job(job))
    assert_run_mail(mail, subject=f"FAILURE-loadmgr:{job}", recipients=FAILURE_LIST, job=job, run=run)


def test_refused_start_of_a_running_job_mails_warning_to_the_failure_list(
    mailer: Daemon, inbox: Inbox, tmp_path: Path, gates: Callable[[str], tuple[str, Path]]
) -> None:
    job = "nt_busy"
    command, release = gates(job)
    import_job(mailer, tmp_path, job, [step(10, command)])
    mailer.ok("start", job)
    wait_for_status(mailer, job, "Running")
    dry = mailer.ctl("start", "--dry-run", job)  # refused too, but a dry run mails nothing
    assert dry.returncode != 0 and "already running" in dry.stderr, dry
    refused = mailer.ctl("start", job)
    assert refused.returncode != 0 and "already running" in refused.stderr, refused
    [warning] = inbox.wait_for(for_job(job))
    run_id = current_run(mailer, job)["run_id"]
    field(warning, "Running run id", run_id)
    # Refused again while the same run is in the way: logged, not mailed again (a schedule that
    # fires every minute at an overrunning job would otherwise mail every minute).
    again = mailer.ctl("start", job)
    assert again.returncode != 0 and "already running" in again.stderr, again
    wait_for_log(mailer, re.escape(f"refused start of {job}: already mailed for run {run_id}"))
    assert warning.subject == f"WARNING-loadmgr:{job}"
    assert list(warning.rcpt_tos) == FAILURE_LIST
    assert warning.mail_from == f"loadmgr@{FROM_DOMAIN}"
    assert [p.get_content_type() for p in warning.message.iter_parts()] == ["text/plain", "text/html"]
    field(warning, "Job", job)
    for part in (warning.text, warning.html):
        assert "already running" in part
        assert job in part
    release.touch()
    wait_for_status(mailer, job, "Completed")
    mails = inbox.wait_for(for_job(job), count=2)
    # the success mail came after the warning, so nothing else was queued for this job in between
    assert [m.subject for m in mails] == [f"WARNING-loadmgr:{job}", f"SUCCESS-loadmgr:{job}"]
    assert list(mails[1].rcpt_tos) == SUCCESS_LIST


def test_stopped_run_mails_warning_to_the_failure_list(
    mailer: Daemon, inbox: Inbox, tmp_path: Path, gates: Callable[[str], tuple[str, Path]]
) -> None:
    job = "nt_stop"
    command, release = gates(job)
    import_job(mailer, tmp_path, job, [step(10, command), step(20, "true")])
    mailer.ok("start", job)
    wait_for_status(mailer, job, "Running")
    mailer.ok("stop", job)
    release.touch()
    wait_for_status(mailer, job, "Stopped")
    run = current_run(mailer, job)
    [mail] = inbox.wait_for(for_job(job))
    assert_run_mail(mail, subject=f"WARNING-loadmgr:{job}", recipients=FAILURE_LIST, job=job, run=run)
    field(mail, "Status", "Stopped")
    field(mail, "Last completed step", 10)
    assert "stopped by an operator" in mail.text


def test_run_stopped_by_a_shutdown_is_mailed_before_the_daemon_exits(
    tmp_path: Path, gates: Callable[[str], tuple[str, Path]]
) -> None:
    job = "nt_shutdown"
    command, _ = gates(job)
    # a server that takes 1 s per mail: the mail is still in flight when the runs are stopped
    with smtp_server(delay=1) as (box, port), running_daemon(email_section(port)) as d:
        import_job(d, tmp_path, job, [step(10, command)])
        d.ok("start", job)
        wait_for_status(d, job, "Running")
        run_id = current_run(d, job)["run_id"]
        assert d.stop() == 0
        # the daemon waited (up to 5 s) for the queued mail before it exited: the server answered it
        assert re.search(rf"INFO \S+: sent WARNING mail for run {run_id} of {job} to ops1@example\.com", d.log()), (
            d.log()
        )
        assert [m.subject for m in box.mails()] == [f"WARNING-loadmgr:{job}"]
        [mail] = box.mails()
        assert list(mail.rcpt_tos) == FAILURE_LIST
        field(mail, "Status", "Stopped")
        assert "shut down" in mail.text


# ============================================================================ logging_level, empty lists


@pytest.mark.parametrize(
    ("level", "limit", "present", "absent"),
    [
        (
            "ERROR",
            200,
            ["[step 30] step 30 failure", "run {run_id} failed"],
            ["err-line", "out-line", "step 20 warning", "step 10 started"],
        ),
        (
            "INFO",
            200,
            ["out-line", "err-line", "step 10 started", "step 20 warning", "step 30 failure", "run {run_id} failed"],
            [],
        ),
        ("INFO", 2, ["step 30 failure", "run {run_id} failed"], ["out-line", "err-line", "step 20 warning"]),
    ],
    ids=["error", "info", "info-last-2"],
)
def test_logging_level_and_max_log_lines_choose_the_lines(
    smtp: tuple[Inbox, int], tmp_path: Path, level: str, limit: int, present: list[str], absent: list[str]
) -> None:
    box, port = smtp
    job = "nt_level"
    with running_daemon(email_section(port, logging_level=level, max_log_lines=limit)) as d:
        import_job(
            d,
            tmp_path,
            job,
            [step(10, "echo out-line; echo err-line >&2"), step(20, "exit 1", ignore_error=True), step(30, "exit 2")],
        )
        run = run_job(d, job, code=1)
        [mail] = box.wait_for(for_job(job))
    assert mail.subject == f"FAILURE-loadmgr:{job}"
    title = f"Run log lines at {level} or above:"
    assert title in mail.text and title in mail.html
    shown = mail.text.split(title + "\n", 1)[1].splitlines()
    if limit == 2:  # the last two lines at INFO or above
        assert len(shown) == 2, shown
        assert "step 30 failure" in shown[0] and f"run {run['run_id']} failed" in shown[1], shown
    for template in present:
        text = template.format(run_id=run["run_id"])
        assert any(text in line for line in shown), f"{text!r} not in {shown}"
        assert text in mail.html
    for text in absent:
        assert text not in mail.text and text not in mail.html, text


def test_empty_lists_send_nothing_and_log_no_error(
    smtp: tuple[Inbox, int], tmp_path: Path, gates: Callable[[str], tuple[str, Path]]
) -> None:
    box, port = smtp
    command, release = gates("nt_empty_busy")
    sections = email_section(port, success_list="", failure_list="")
    with running_daemon(sections, daemon_keys={"log_level": "DEBUG"}) as d:
        import_job(d, tmp_path, "nt_empty_ok", [step(10, "true")])
        import_job(d, tmp_path, "nt_empty_fail", [step(10, "exit 1")])
        import_job(d, tmp_path, "nt_empty_busy", [step(10, command)])
        assert run_job(d, "nt_empty_ok")["status"] == "Completed"
        assert run_job(d, "nt_empty_fail", code=1)["status"] == "Failed"
        d.ok("start", "nt_empty_busy")
        wait_for_status(d, "nt_empty_busy", "Running")
        assert "already running" in d.ctl("start", "nt_empty_busy").stderr
        release.touch()
        wait_for_status(d, "nt_empty_busy", "Completed")
        # the notifier decided, at each event, that there was no one to mail
        wait_for_log(d, r"no SUCCESS mail for nt_empty_ok: the list is empty")
        wait_for_log(d, r"no FAILURE mail for nt_empty_fail: the list is empty")
        wait_for_log(d, r"no refused-start mail for nt_empty_busy: the failure list is empty")
        wait_for_log(d, r"no SUCCESS mail for nt_empty_busy: the list is empty")
        test = d.ctl("notify", "test")
        assert_exit(test, 0)
        assert "both empty" in test.stderr and "nothing sent" in test.stderr
        log = d.log()
    assert box.mails() == []
    assert not box.data_started.is_set()
    errors = [line for line in log.splitlines() if " ERROR " in line or " CRITICAL " in line]
    assert errors == [], errors
    assert "could not send" not in log and "Traceback" not in log


# ============================================================================ a dead, silent or slow server


def test_dead_mail_server_delays_no_run_and_the_failure_is_logged(
    dead_mailer: tuple[Daemon, int], tmp_path: Path
) -> None:
    d, port = dead_mailer
    import_job(d, tmp_path, "nt_dead_fail", [step(10, "exit 1")])
    import_job(d, tmp_path, "nt_dead_ok", [step(10, "true")])
    failed = run_job(d, "nt_dead_fail", code=1)
    ok = run_job(d, "nt_dead_ok")
    again = run_job(d, "nt_dead_ok")  # the job is free again at once, whatever the mail is doing
    for run in (failed, ok, again):
        assert run["duration"] < 5, run
    where = rf"127\.0\.0\.1:{port}: "
    what = rf"FAILURE mail for run {failed['run_id']} of nt_dead_fail"
    given_up = wait_for_log(
        d, rf"^{TS} ERROR \S+: could not send {what} after 2 attempt\(s\): {where}(?P<reason>\S.*)$"
    )
    retried = wait_for_log(d, rf"^{TS} WARNING \S+: sending {what} failed \(attempt 1 of 2, again in 1 s\): {where}\S")
    ended = wait_for_log(d, rf"^{TS} INFO \S+: job nt_dead_fail run {failed['run_id']}: Failed")
    # the run ended at once; the mail's attempts went on in the background, with the pause between them
    assert log_time(ended) <= log_time(retried)
    assert log_time(given_up) - log_time(retried) >= 0.9
    wait_for_log(
        d, rf"could not send SUCCESS mail for run {ok['run_id']} of nt_dead_ok after 2 attempt\(s\): {where}\S"
    )
    assert call(d, "status", {"job": "nt_dead_ok"})["status"] == "Completed"  # the daemon still answers


def test_silent_mail_server_times_out_and_delays_no_run(silent_port: int, tmp_path: Path) -> None:
    job = "nt_silent"
    with running_daemon(email_section(silent_port, send_attempts=2, timeout=1)) as d:
        flag = tmp_path / "failed-once"
        import_job(d, tmp_path, job, [step(10, f"test -f {q(str(flag))} && exit 0; touch {q(str(flag))}; exit 1")])
        run = run_job(d, job, code=1)
        assert run["duration"] < 5
        # the job is free again while the first run's mail is still in flight (no mail for this one)
        second = run_job(d, job, "--no-success-email")
        assert second["run_id"] != run["run_id"]
        what = rf"FAILURE mail for run {run['run_id']} of {job}"
        given_up = wait_for_log(
            d,
            rf"^{TS} ERROR \S+: could not send {what} after 2 attempt\(s\): "
            rf"127\.0\.0\.1:{silent_port}: (?P<reason>.+)$",
        )
        ended = wait_for_log(d, rf"^{TS} INFO \S+: job {job} run {run['run_id']}: Failed")
    assert "timed out" in given_up["reason"].lower(), given_up["reason"]
    # attempt (1 s timeout), 1 s pause, attempt (1 s timeout)
    assert log_time(given_up) - log_time(ended) >= 2.5


@pytest.mark.parametrize("server", ["slow", "stalled"])
def test_slow_mail_server_delays_no_run(tmp_path: Path, server: str) -> None:
    """slow: the server takes 3 s to answer DATA; stalled: it answers only once the test lets it
    (so the second run below certainly runs while the first run's mail is in flight)."""
    job = "nt_slow"
    slow = server == "slow"
    with (
        smtp_server(delay=3 if slow else 0, held=not slow) as (box, port),
        running_daemon(email_section(port, timeout=WAIT)) as d,
    ):
        import_job(d, tmp_path, job, [step(10, "true")])
        first = run_job(d, job)
        assert box.data_started.wait(WAIT), "the success mail never reached the server"
        # the server holds the mail: the job can run again meanwhile (no mail for this run)
        second = run_job(d, job, "--no-success-email")
        for run in (first, second):
            assert run["status"] == "Completed"
            assert run["duration"] < 2, run
        if not slow:
            assert box.mails() == []  # still in flight
            box.released.set()
        [mail] = box.wait_for(for_job(job))
    assert mail.subject == f"SUCCESS-loadmgr:{job}"
    field(mail, "Run id", first["run_id"])


# ============================================================================ notify test


def test_notify_test_mails_both_lists_and_prints_the_answers(mailer: Daemon, shared_smtp: tuple[Inbox, int]) -> None:
    inbox, port = shared_smtp
    host = socket.gethostname()
    before = len(inbox.mails(subject_is(f"TEST-loadmgr:{host}")))
    result = mailer.ctl("notify", "test")
    assert_exit(result, 0)
    answer = ANSWER.split(" ", 1)[1]  # without the code
    lines = result.stdout.splitlines()
    assert f"success_list ({', '.join(SUCCESS_LIST)}): sent via 127.0.0.1:{port}: {answer}" in lines, lines
    assert f"failure_list ({', '.join(FAILURE_LIST)}): sent via 127.0.0.1:{port}: {answer}" in lines, lines
    # notify test sends at once: both mails are there when the command returns
    mails = inbox.mails(subject_is(f"TEST-loadmgr:{host}"))[before:]
    assert sorted(m.rcpt_tos for m in mails) == sorted([tuple(SUCCESS_LIST), tuple(FAILURE_LIST)])
    for mail in mails:
        assert mail.mail_from == f"loadmgr@{FROM_DOMAIN}"
        assert [p.get_content_type() for p in mail.message.iter_parts()] == ["text/plain", "text/html"]
        listed = "success_list" if list(mail.rcpt_tos) == SUCCESS_LIST else "failure_list"
        field(mail, "List", listed)
        field(mail, "Server", f"127.0.0.1:{port}")


def test_notify_test_with_the_server_down_exits_1(dead_mailer: tuple[Daemon, int]) -> None:
    d, port = dead_mailer
    result = d.ctl("notify", "test")
    assert_exit(result, 1)
    errors = [line for line in result.stderr.splitlines() if "not sent" in line]
    assert len(errors) == 2, result.stderr
    assert any(line.startswith("loadmgrctl: error: success_list (dev@example.com): not sent:") for line in errors)
    assert any(f"failure_list ({', '.join(FAILURE_LIST)}): not sent: 127.0.0.1:{port}" in line for line in errors)


# ============================================================================ STARTTLS and login


USER, PASSWORD = "loadmgr-mailer", "s3cret pass"


@contextlib.contextmanager
def tls_smtp_server(ca: trustme.CA) -> Iterator[tuple[Inbox, int, list[tuple[str, str]]]]:
    """aiosmtpd that insists on STARTTLS (a certificate of ``ca`` for 127.0.0.1) and then on a
    login; yields (inbox, port, the logins it accepted)."""
    from aiosmtpd.smtp import AuthResult, LoginPassword

    logins: list[tuple[str, str]] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (USER.encode(), PASSWORD.encode())
        if ok:
            logins.append((mechanism, data.login.decode()))
        return AuthResult(success=ok, handled=False)

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    inbox = Inbox()
    port = free_port()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=port,
        tls_context=context,
        require_starttls=True,
        auth_required=True,
        auth_require_tls=True,
        authenticator=authenticator,
    )
    controller.start()
    try:
        yield inbox, port, logins
    finally:
        controller.stop()


def test_starttls_with_a_private_ca_and_a_login(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    password_file = tmp_path / "smtp_password"
    password_file.write_text(PASSWORD + "\n")
    with tls_smtp_server(ca) as (inbox, port, logins):
        keys = {"starttls": "true", "username": USER, "password_file": password_file, "ca_file": ca_file}
        with running_daemon(email_section(port, **keys)) as d:
            result = d.ctl("notify", "test")
            assert_exit(result, 0)
            assert len(inbox.mails()) == 2
            assert logins and all(login == USER for _, login in logins), logins
        # The same server without our CA: the certificate is not trusted, nothing is sent.
        del keys["ca_file"]
        with running_daemon(email_section(port, **keys)) as d:
            result = d.ctl("notify", "test")
            assert_exit(result, 1)
            assert "CERTIFICATE_VERIFY_FAILED" in result.stderr or "certificate verify failed" in result.stderr
        # A wrong password: refused by the server, and the refusal is what the operator sees.
        password_file.write_text("wrong\n")
        with running_daemon(email_section(port, **keys, ca_file=ca_file)) as d:
            result = d.ctl("notify", "test")
            assert_exit(result, 1)
            assert "535" in result.stderr or "uthentication" in result.stderr, result.stderr
        assert len(inbox.mails()) == 2


def test_ca_file_without_tls_or_missing_is_a_config_error(tmp_path: Path) -> None:
    for keys, words in (
        ({"ca_file": tmp_path}, ["email", "ca_file is for TLS"]),
        ({"starttls": "true", "ca_file": tmp_path / "absent.pem"}, ["email", "is not a readable file"]),
    ):
        d = make_daemon()
        try:
            configure(d, sections=email_section(25, **keys))
            d.start(expect_ready=False)
            assert d.proc is not None
            assert d.proc.wait(timeout=WAIT) != 0
            for word in words:
                assert word in d.log(), d.log()
        finally:
            d.stop()
            shutil.rmtree(d.home, ignore_errors=True)


# ============================================================================ the send_email step


def send_email_step(
    number: int, recipients: Any, subject: str, args: dict[str, Any], *, ignore_error: bool = False
) -> dict[str, Any]:
    command = json.dumps({"recipients": recipients, "subject": subject})
    return step(number, command, function="send_email", args=args, ignore_error=ignore_error)


def test_send_email_step_html_body_params_and_attachments(mailer: Daemon, inbox: Inbox, tmp_path: Path) -> None:
    job = "nt_step_html"
    report = tmp_path / "file.csv"
    data = b"id,name\r\n1,\xc3\xa9l\xc3\xa8ve\r\n2,<b>bold</b>\r\n\x00\xff"
    report.write_bytes(data)
    missing = tmp_path / "missing.txt"
    import_job(
        mailer,
        tmp_path,
        job,
        [
            send_email_step(
                10,
                ["a@example.com", "b@example.com"],
                "Report",
                {
                    "email_body": "<html><body>Hello {{ name }}</body></html>",
                    "params": {"name": "<Bob>"},
                    "attachments": [str(report), str(missing)],
                },
            )
        ],
    )
    run = run_job(mailer, job)
    assert run["status"] == "Completed"
    [mail] = inbox.wait_for(subject_is("Report"))  # the step sent it before the run ended
    assert list(mail.rcpt_tos) == ["a@example.com", "b@example.com"]
    assert mail.mail_from == f"loadmgr@{FROM_DOMAIN}"
    assert mail.message["To"] == "a@example.com, b@example.com"
    assert "Hello &lt;Bob&gt;" in mail.html
    assert "<Bob>" not in mail.html
    assert mail.attachments() == {"file.csv": data}
    steps = by_step(run)
    assert steps[10]["status"] == "Success"
    assert steps[10]["output"] == ANSWER.split(" ", 1)[1]  # the server's answer is the step's result
    log = Path(run["log_file"]).read_text()
    assert re.search(rf"WARNING\s+\[step 10\] attachment {re.escape(str(missing))} does not exist", log), log


def test_send_email_step_body_from_a_txt_file_in_a_csv_job(mailer: Daemon, inbox: Inbox, tmp_path: Path) -> None:
    job = "nt_step_txt"
    body = tmp_path / "body.txt"
    body.write_text("Dear {{ name }},\nrows loaded: {{ rows }}\n")
    command = json.dumps({"recipients": "c@example.com, d@example.com", "subject": "Sales loaded"})
    args = f'email_body={body} params=\'{{"name": "<Ann>", "rows": 1200}}\''

    def csv_field(text: str) -> str:
        return "".join("\\" + ch if ch in (",", '"', "\\") else ch for ch in text)

    path = tmp_path / f"{job}.csv"
    path.write_text(
        "job_step,job_step_function,job_step_command,job_step_args\n"
        f"50,send_email,{csv_field(command)},{csv_field(args)}\n"
    )
    mailer.ok("job", "import", job, str(path))
    run = run_job(mailer, job)
    assert by_step(run)[50]["status"] == "Success"
    [mail] = inbox.wait_for(subject_is("Sales loaded"))
    assert list(mail.rcpt_tos) == ["c@example.com", "d@example.com"]
    assert mail.message.get_content_type() == "text/plain"
    assert mail.text == "Dear <Ann>,\nrows loaded: 1200\n"  # a text body: nothing escaped


def test_send_email_step_tempargs_override_subject_and_recipients(mailer: Daemon, inbox: Inbox, tmp_path: Path) -> None:
    job = "nt_step_override"
    import_job(
        mailer,
        tmp_path,
        job,
        [send_email_step(10, ["a@example.com"], "Original subject", {"email_body": "plain words"})],
    )
    run_job(mailer, job, "--tempargs", "subject:Override", "--tempargs", "recipients:c@example.com,d@example.com")
    [mail] = inbox.wait_for(subject_is("Override"))
    assert list(mail.rcpt_tos) == ["c@example.com", "d@example.com"]
    assert mail.text.strip() == "plain words"
    assert not inbox.mails(subject_is("Original subject"))
    run_job(mailer, job)  # only for that run
    [mail] = inbox.wait_for(subject_is("Original subject"))
    assert list(mail.rcpt_tos) == ["a@example.com"]
    assert len(inbox.mails(subject_is("Override"))) == 1


@pytest.mark.parametrize(
    ("case", "recipients", "args", "words"),
    [
        (
            "undefined",
            ["a@example.com"],
            {"email_body": "Hi {{ undefined_name }}", "params": {"name": "x"}},
            ["email_body template error", "undefined_name"],
        ),
        (
            "syntax",
            ["a@example.com"],
            {"email_body": "<html><body>Hi {% if %}</body></html>", "params": {"name": "x"}},
            ["email_body template error"],
        ),
        ("directory", ["a@example.com"], {"email_body": "hi", "attachments": ["{tmp}"]}, ["{tmp}", "directory"]),
        (
            "bad_recipient",
            ["a@example.com", "not-an-address"],
            {"email_body": "hi"},
            ["bad recipients", "not-an-address"],
        ),
        ("bad_params", ["a@example.com"], {"email_body": "hi {{ x }}", "params": "[1, 2]"}, ["params"]),
    ],
)
def test_send_email_step_errors_fail_the_step_and_send_nothing(
    mailer: Daemon,
    inbox: Inbox,
    tmp_path: Path,
    case: str,
    recipients: list[str],
    args: dict[str, Any],
    words: list[str],
) -> None:
    job = f"nt_step_err_{case}"
    subject = f"Never sent {case}"
    args = {k: ([a.format(tmp=tmp_path) for a in v] if isinstance(v, list) else v) for k, v in args.items()}
    import_job(mailer, tmp_path, job, [send_email_step(10, recipients, subject, args), step(20, "true")])
    run = run_job(mailer, job, code=1)
    assert run["status"] == "Failed"
    steps = by_step(run)
    assert steps[10]["status"] == "Failure"
    assert steps[20]["status"] == "Pending"
    message = steps[10]["message"] or ""
    for template in words:
        word = template.format(tmp=tmp_path)
        assert word in message, f"{word!r} not in {message!r}"
        assert word in run["status_reason"]
    [failure] = inbox.wait_for(for_job(job))  # the run's own FAILURE mail names the reason
    assert failure.subject == f"FAILURE-loadmgr:{job}"
    field(failure, "Reason", run["status_reason"])
    # the step sends synchronously: had it sent anything, it would be here before the run ended
    assert not inbox.mails(subject_is(subject))


def test_send_email_step_with_the_server_down_fails_the_step(dead_mailer: tuple[Daemon, int], tmp_path: Path) -> None:
    d, port = dead_mailer
    job = "nt_step_dead"
    import_job(d, tmp_path, job, [send_email_step(10, ["a@example.com"], "Lost", {"email_body": "hi"})])
    run = run_job(d, job, code=1)
    step10 = by_step(run)[10]
    assert step10["status"] == "Failure"
    assert step10["message"].startswith(f"mail not sent: 127.0.0.1:{port}: "), step10["message"]
    assert run["duration"] < 5  # one attempt, refused at once


def test_send_email_step_with_ignore_error_and_the_server_down_is_a_warning(
    dead_mailer: tuple[Daemon, int], tmp_path: Path
) -> None:
    d, _ = dead_mailer
    job = "nt_step_dead_ignored"
    import_job(
        d, tmp_path, job, [send_email_step(10, ["a@example.com"], "Lost", {"email_body": "hi"}, ignore_error=True)]
    )
    run = run_job(d, job)
    assert run["status"] == "Completed"
    assert by_step(run)[10]["status"] == "Warning"
    assert "mail not sent" in by_step(run)[10]["message"]


# ============================================================================ configuration errors


@pytest.mark.parametrize(
    ("keys", "words"),
    [
        ({"failure_list": "not-an-address"}, ["email.failure_list", "not-an-address"]),
        ({"success_list": "dev@example.com, oops"}, ["email.success_list", "'oops'"]),
        ({"starttls": "yes", "use_tls": "yes"}, ["starttls", "use_tls"]),
        ({"logging_level": "DEBUG"}, ["email.logging_level"]),
        ({"send_attempts": "0"}, ["email.send_attempts"]),
    ],
    ids=["failure_list", "success_list", "tls", "logging_level", "send_attempts"],
)
def test_bad_email_config_stops_the_daemon_with_exit_2(keys: dict[str, str], words: list[str]) -> None:
    d = make_daemon()
    try:
        configure(d, sections=email_section(free_port(), **keys))
        text = d.config_file.read_text().splitlines()
        first_key = next(iter(keys))
        if first_key in ("starttls",):  # a cross-key check names the section's line
            line = text.index("[email]") + 1
        else:
            line = next(i for i, t in enumerate(text, 1) if t.startswith(f"{first_key} ="))
        proc = d.start(expect_ready=False)
        assert proc.wait(timeout=WAIT) == 2, d.log()
        log = d.log()
        for word in words:
            assert word in log, log
        assert f"line {line}" in log, log
        assert "Traceback" not in log
        assert not d.socket.exists()
    finally:
        d.stop()
        shutil.rmtree(d.home, ignore_errors=True)


# ============================================================================ CRITICAL ERROR


@pytest.fixture
def unusable_repository(smtp: tuple[Inbox, int]) -> Iterator[tuple[Daemon, Inbox]]:
    """A daemon (not yet started) whose database file is not an SQLite database; a working [email]."""
    box, port = smtp
    d = make_daemon()
    try:
        configure(d, sections=email_section(port))
        d.database.parent.mkdir(parents=True)
        d.database.write_bytes(b"this is not an SQLite database\n" * 200)
        yield d, box
    finally:
        d.stop()  # SIGTERM, then SIGKILL: also ends a daemon that did not exit by itself
        shutil.rmtree(d.home, ignore_errors=True)


def test_unusable_repository_mails_critical_error_and_exits_1(unusable_repository: tuple[Daemon, Inbox]) -> None:
    d, box = unusable_repository
    proc = d.start(expect_ready=False)
    try:
        code = proc.wait(timeout=WAIT)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"loadmgrd still running {WAIT} s after start:\n{d.log()}") from None
    assert code == 1, d.log()
    # sent before the daemon exited
    [mail] = box.mails()
    host = socket.gethostname()
    assert mail.subject == f"CRITICAL ERROR-loadmgr:{host}"
    assert list(mail.rcpt_tos) == FAILURE_LIST
    assert mail.mail_from == f"loadmgr@{FROM_DOMAIN}"
    assert [p.get_content_type() for p in mail.message.iter_parts()] == ["text/plain", "text/html"]
    field(mail, "Host", host)
    field(mail, "Repository", str(d.database))
    field(mail, "Problem", f"cannot open repository {d.database}: file is not a database")
    log = d.log()
    assert "CRITICAL ERROR mail sent to ops1@example.com, ops2@example.com" in log, log
    assert "Traceback" not in log
    assert not d.socket.exists()
