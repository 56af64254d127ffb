"""Notification mails: what they say. Pure (no sending, no clock, no files).

Every mail has a plain-text and an HTML part. Subjects are ``STATUS-loadmgr:JOB``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from jinja2 import Environment

LEVELS = {"DEBUG": 10, "INFO": 20, "STDERR": 30, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
_LINE = re.compile(r"^\S+ \S+ (?P<level>[A-Z]+)\s")

_ENV = Environment(autoescape=True, keep_trailing_newline=True)
_HTML = _ENV.from_string(
    """<html><body style="font-family: sans-serif">
<h2>{{ title }}</h2>
<table cellpadding="3">
{% for key, value in fields %}<tr><th align="left">{{ key }}</th><td>{{ value }}</td></tr>
{% endfor %}</table>
{% if lines %}<h3>{{ lines_title }}</h3>
<pre style="font-size: small">{% for line in lines %}{{ line }}
{% endfor %}</pre>{% endif %}
</body></html>
"""
)


_ADDRESS = re.compile(r"^[^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>]+$")


def valid_address(address: str) -> bool:
    return bool(_ADDRESS.fullmatch(address))


def subject(status: str, name: str) -> str:
    return f"{status}-loadmgr:{name}"


def filter_log(text: str, level: str, limit: int) -> list[str]:
    """Run log lines at ``level`` or above (a step's stderr counts as WARNING); the last ``limit``."""
    threshold = LEVELS.get(level.upper(), 30)
    kept = []
    for line in text.splitlines():
        match = _LINE.match(line)
        if match and LEVELS.get(match.group("level"), 20) >= threshold:
            kept.append(line)
    return kept[-limit:] if limit else []


def message(
    *,
    subject_line: str,
    sender: str,
    recipients: Sequence[str],
    title: str,
    fields: Sequence[tuple[str, Any]],
    lines: Sequence[str] = (),
    lines_title: str = "",
) -> EmailMessage:
    """A multipart/alternative mail: the same fields as text and as HTML."""
    msg = EmailMessage()
    msg["Subject"] = subject_line
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain=sender.rsplit("@", maxsplit=1)[-1])
    shown = [(key, "" if value is None else str(value)) for key, value in fields]
    width = max((len(k) for k, _ in shown), default=0)
    text = [title, "", *(f"{k.ljust(width)}  {v}" for k, v in shown)]
    if lines:
        text += ["", lines_title, *lines]
    msg.set_content("\n".join(text) + "\n")
    msg.add_alternative(_HTML.render(title=title, fields=shown, lines=lines, lines_title=lines_title), subtype="html")
    return msg


def run_fields(job: str, run: Mapping[str, Any], duration: float | None) -> list[tuple[str, Any]]:
    return [
        ("Job", job),
        ("Status", run.get("status")),
        ("Start time", run.get("start_local")),
        ("Run id", run.get("run_id")),
        ("Log file", run.get("log_file")),
        ("Start step", run.get("start_step")),
        ("End step", run.get("end_step")),
        ("Last completed step", run.get("last_completed_step")),
        ("Duration (s)", f"{duration:.1f}" if duration is not None else ""),
        ("Reason", run.get("status_reason") or ""),
    ]
