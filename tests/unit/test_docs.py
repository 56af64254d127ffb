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
