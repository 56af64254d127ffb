"""Sending notifications over SMTP, off the runs' path.

Run endings and refused starts are queued and sent by one background task, each mail with a
bounded number of attempts; a slow or dead mail server delays nothing and fails nothing — the
failure is logged with its reason. ``send_now`` is the direct path used by the ``send_email``
step and ``notify test``, whose failures belong to the caller.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

import aiosmtplib

from loadmgrd import mail
from loadmgrd.states import RunStatus
from loadmgrd.timefmt import from_ts

if TYPE_CHECKING:
    from loadmgrd.config import Config, EmailConfig

log = logging.getLogger("loadmgrd.notifier")

RETRY_DELAYS = (1.0, 5.0, 15.0, 30.0)
QUEUE_LIMIT = 1000


class SendError(Exception):
    pass


def sender(config: EmailConfig) -> str:
    return f"loadmgr@{config.from_domain}"


async def send_now(config: EmailConfig, msg: EmailMessage) -> str:
    """Send one mail once; the server's answer, or ``SendError`` with the reason."""
    recipients = [a.strip() for a in (msg["To"] or "").split(",") if a.strip()]
    try:
        password = config.secret()
    except OSError as exc:
        raise SendError(f"cannot read [email] password_file: {exc.strerror}") from None
    try:
        errors, answer = await aiosmtplib.send(
            msg,
            sender=sender(config),
            recipients=recipients,
            hostname=config.smtp_host,
            port=config.smtp_port,
            use_tls=config.use_tls,
            start_tls=config.starttls,
            cert_bundle=str(config.ca_file) if config.ca_file is not None else None,
            username=config.username or None,
            password=password or None,
            timeout=config.timeout,
        )
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        raise SendError(f"{config.smtp_host}:{config.smtp_port}: {exc}") from None
    if errors:
        refused = ", ".join(f"{addr} ({resp.code} {resp.message})" for addr, resp in errors.items())
        raise SendError(f"recipients refused: {refused}")
    return str(answer)


class Notifier:
    """Queues notification mails and sends them in the background."""

    def __init__(self, config: Callable[[], Config]) -> None:
        self._config = config
        self._queue: asyncio.Queue[tuple[EmailMessage, str]] = asyncio.Queue(QUEUE_LIMIT)
        self._refusals_mailed: dict[str, str] = {}  # job → the run a refused-start mail was sent for
        self.sent = 0
        self.failed = 0

    @property
    def email(self) -> EmailConfig:
        return self._config().email

    async def run(self) -> None:
        """The sender task: one mail at a time, each with bounded attempts."""
        while True:
            msg, what = await self._queue.get()
            try:
                await self._deliver(msg, what)
            finally:
                self._queue.task_done()

    async def _deliver(self, msg: EmailMessage, what: str) -> None:
        attempts = self.email.send_attempts
        for attempt in range(1, attempts + 1):
            try:
                answer = await send_now(self.email, msg)
            except SendError as exc:
                if attempt == attempts:
                    self.failed += 1
                    log.error("could not send %s after %d attempt(s): %s", what, attempts, exc)
                    return
                delay = RETRY_DELAYS[min(attempt - 1, len(RETRY_DELAYS) - 1)]
                log.warning(
                    "sending %s failed (attempt %d of %d, again in %g s): %s", what, attempt, attempts, delay, exc
                )
                await asyncio.sleep(delay)
            else:
                self.sent += 1
                log.info("sent %s to %s (%s)", what, msg["To"], answer.strip())
                return

    def _queue_mail(self, msg: EmailMessage, what: str) -> None:
        try:
            self._queue.put_nowait((msg, what))
        except asyncio.QueueFull:
            log.error("notification queue full (%d mails waiting): dropped %s", QUEUE_LIMIT, what)

    async def drain(self, timeout: float) -> None:
        """At shutdown: give queued mails a moment to go out."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            log.warning("%d notification(s) not sent before shutdown", self._queue.qsize())

    # ------------------------------------------------------------------ what is sent

    def run_mail(
        self, job: str, status: str, *, warnings: bool, no_success_email: bool
    ) -> tuple[str, list[str]] | None:
        """The label and recipients of the mail a run's end sends, or None when it sends none."""
        if status == RunStatus.COMPLETED:
            if warnings:
                label, recipients = "WARNING", self.email.failure_list
            elif no_success_email:
                log.debug("run of %s completed: no success mail (--no-success-email)", job)
                return None
            else:
                label, recipients = "SUCCESS", self.email.success_list
        elif status in (RunStatus.FAILED, RunStatus.STOPPED):
            label, recipients = ("FAILURE" if status == RunStatus.FAILED else "WARNING"), self.email.failure_list
        else:
            return None
        if not recipients:
            log.debug("no %s mail for %s: the list is empty", label, job)
            return None
        return label, recipients

    def run_ended(self, job: str, run: dict[str, Any], *, warnings: bool, log_text: str) -> None:
        status = run["status"]
        chosen = self.run_mail(job, status, warnings=warnings, no_success_email=bool(run.get("no_success_email")))
        if chosen is None:
            return
        label, recipients = chosen
        email = self.email
        start = run.get("start_ts")
        fields = {**run, "start_local": _local(start)}
        lines = mail.filter_log(log_text, email.logging_level, email.max_log_lines)
        msg = mail.message(
            subject_line=mail.subject(label, job),
            sender=sender(email),
            recipients=recipients,
            title=f"loadmgr: job {job} {status.lower()}"
            + (" with warnings" if warnings and label == "WARNING" else ""),
            fields=mail.run_fields(job, fields, run.get("duration")),
            lines=lines,
            lines_title=f"Run log lines at {email.logging_level} or above:",
        )
        self._queue_mail(msg, f"{label} mail for run {run['run_id']} of {job}")

    def start_refused(self, job: str, reason: str, blocking_run: str | None = None) -> None:
        """A start refused because the job runs: one mail per run in the way (a schedule firing
        every minute at a job that overruns would otherwise mail every minute)."""
        email = self.email
        if not email.failure_list:
            log.debug("no refused-start mail for %s: the failure list is empty", job)
            return
        if blocking_run is not None:
            if self._refusals_mailed.get(job) == blocking_run:
                log.info("refused start of %s: already mailed for run %s", job, blocking_run)
                return
            self._refusals_mailed[job] = blocking_run
        msg = mail.message(
            subject_line=mail.subject("WARNING", job),
            sender=sender(email),
            recipients=email.failure_list,
            title=f"loadmgr: start of job {job} refused",
            fields=[
                ("Job", job),
                ("Reason", reason),
                *([("Running run id", blocking_run)] if blocking_run else []),
                ("Host", socket.gethostname()),
            ],
        )
        self._queue_mail(msg, f"refused-start mail for {job}")

    def test_mails(self) -> list[tuple[str, list[str], EmailMessage]]:
        email = self.email
        out = []
        for name, recipients in (("success_list", email.success_list), ("failure_list", email.failure_list)):
            if recipients:
                msg = mail.message(
                    subject_line=mail.subject("TEST", socket.gethostname()),
                    sender=sender(email),
                    recipients=recipients,
                    title=f"loadmgr test mail to the {name}",
                    fields=[
                        ("Host", socket.gethostname()),
                        ("List", name),
                        ("Server", f"{email.smtp_host}:{email.smtp_port}"),
                    ],
                )
                out.append((name, recipients, msg))
        return out


def critical_mail(config: Config, problem: str) -> EmailMessage | None:
    """The mail sent when the daemon cannot open its repository at start."""
    email = config.email
    if not email.failure_list:
        return None
    host = socket.gethostname()
    return mail.message(
        subject_line=mail.subject("CRITICAL ERROR", host),
        sender=sender(email),
        recipients=email.failure_list,
        title=f"loadmgr: loadmgrd on {host} could not start",
        fields=[("Host", host), ("Problem", problem), ("Repository", str(config.repository.database))],
    )


def _local(ts: str | None) -> str:
    if not ts:
        return ""
    return from_ts(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def read_log(path: str | None, limit_bytes: int = 4 * 1024 * 1024) -> str:
    """The end of a run log (at most ``limit_bytes``), for the mail body."""
    if not path:
        return ""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - limit_bytes))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
