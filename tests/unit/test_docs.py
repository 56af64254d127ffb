"""The documentation keeps up with the code: every method and every config key is written down."""

from __future__ import annotations

import re
from pathlib import Path

import loadmgrd.handlers  # noqa: F401 - registers the methods
from loadmgrd.config import _SECTIONS
from loadmgrd.errors import ErrorCode
from loadmgrd.rpc import METHODS

ROOT = Path(__file__).resolve().parents[2]


def test_every_method_is_documented_with_its_access() -> None:
    text = (ROOT / "docs" / "protocol.md").read_text()
    for name, entry in METHODS.items():
        rows = [line for line in text.splitlines() if line.startswith("|") and f"`{name}`" in line]
        assert rows, f"{name} is missing from docs/protocol.md"
        access = "admin" if entry.admin else "read"
        assert any(f"| {access} |" in row for row in rows), f"{name} is documented with the wrong access"


def test_every_error_code_is_documented() -> None:
    text = (ROOT / "docs" / "protocol.md").read_text()
    for code in ErrorCode:
        assert re.search(rf"^\| {code.value} \| {code.name} \|", text, re.M), f"{code.name} is undocumented"


def test_every_config_key_is_in_the_example_file() -> None:
    text = (ROOT / "etc" / "loadmgr_config.cfg.example").read_text()
    for section, model in _SECTIONS.items():
        assert f"[{section}]" in text
        if section == "targets":
            assert "default_target" in text
            continue
        for key in model.model_fields:
            assert re.search(rf"^#? ?{key} =", text, re.M), f"{section}.{key} is missing from the example"


def _job_file_blocks() -> list[tuple[str, str]]:
    """(where, text) of every ```csv block in docs/ and every ```json block that is a job file."""
    blocks = []
    for doc in sorted((ROOT / "docs").glob("*.md")):
        for match in re.finditer(r"```(csv|json)\n(.*?)```", doc.read_text(), re.S):
            language, body = match.groups()
            if language == "json" and '"steps"' not in body:
                continue  # a protocol message, not a job file
            line = doc.read_text().count("\n", 0, match.start()) + 1
            blocks.append((f"{doc.name}:{line}", body))
    return blocks


def test_every_job_file_in_the_docs_parses() -> None:
    from loadmgrd.jobfile import JobFileError, parse

    blocks = _job_file_blocks()
    assert len(blocks) >= 5, blocks  # job-files, scheduling, notifications, processes (2)
    for where, body in blocks:
        try:
            parsed = parse(body, where)
        except JobFileError as exc:
            raise AssertionError(f"the job file at docs/{where} does not import: {exc}") from None
        assert parsed.steps, where
