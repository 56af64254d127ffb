"""Unit tests for loadmgrd.stepargs: step args (JSON or shell-style key=value) and --tempargs."""

from __future__ import annotations

import pytest

from loadmgrd.errors import ErrorCode, InvalidInput
from loadmgrd.stepargs import parse_args, parse_tempargs


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", {}, id="empty"),
        pytest.param("   \t ", {}, id="whitespace"),
        pytest.param("{}", {}, id="empty-json-object"),
        pytest.param('{"table": "orders"}', {"table": "orders"}, id="json-string"),
        pytest.param(
            '{"n": 2, "f": 1.5, "yes": true, "no": false, "none": null}',
            {"n": "2", "f": "1.5", "yes": "true", "no": "false", "none": ""},
            id="json-scalars-become-text",
        ),
        pytest.param(
            '{"list": [1, "a"], "obj": {"k": "v"}}',
            {"list": '[1, "a"]', "obj": '{"k": "v"}'},
            id="json-containers-become-json-text",
        ),
        pytest.param('  {"a": "x y"}  ', {"a": "x y"}, id="json-surrounding-whitespace"),
        pytest.param('{"1": "one"}', {"1": "one"}, id="json-numeric-key"),
        pytest.param("a=1", {"a": "1"}, id="one-pair"),
        pytest.param("a='x y' b=2", {"a": "x y", "b": "2"}, id="single-quoted-value"),
        pytest.param('k="x y" z=""', {"k": "x y", "z": ""}, id="double-quoted-and-empty"),
        pytest.param("a=", {"a": ""}, id="empty-value"),
        pytest.param("a=b=c", {"a": "b=c"}, id="value-with-equals"),
        pytest.param("a=1 a=2", {"a": "2"}, id="last-wins"),
        pytest.param("a=x\\ y", {"a": "x y"}, id="backslash-escaped-space"),
        pytest.param("path=%step_10%/out.csv", {"path": "%step_10%/out.csv"}, id="variable-reference"),
        pytest.param('q="it\'s" r=\'say "hi"\'', {"q": "it's", "r": 'say "hi"'}, id="nested-quotes"),
        pytest.param("  a=1\n  b=2  ", {"a": "1", "b": "2"}, id="newline-separated"),
    ],
)
def test_parse_args_good(text: str, expected: dict[str, str]) -> None:
    assert parse_args(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("[1, 2]", "step args in JSON must be an object, not a list", id="json-list"),
        pytest.param('{"a":', "step args are not valid JSON: Expecting value at column 6", id="bad-json"),
        pytest.param(
            '{"a" 1}',
            "step args are not valid JSON: Expecting ':' delimiter at column 6",
            id="bad-json-colon",
        ),
        pytest.param('{"a": 1} x', "step args are not valid JSON: Extra data at column 10", id="json-extra-data"),
        pytest.param("novalue", "step arg 'novalue' is not in key=value form", id="token-without-equals"),
        pytest.param("a=1 novalue b=2", "step arg 'novalue' is not in key=value form", id="middle-token"),
        pytest.param("=v", "step arg '=v' is not in key=value form", id="empty-key"),
        pytest.param("a=1 # b=2", "step arg '#' is not in key=value form", id="hash-is-not-a-comment"),
        pytest.param("a='x", "step args cannot be split: No closing quotation", id="unclosed-single-quote"),
        pytest.param('a="x y', "step args cannot be split: No closing quotation", id="unclosed-double-quote"),
        pytest.param("a=x\\", "step args cannot be split: No escaped character", id="trailing-backslash"),
    ],
)
def test_parse_args_errors(text: str, message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_args(text)
    assert str(info.value) == message
    assert info.value.message == message
    assert info.value.code == ErrorCode.INVALID_INPUT


@pytest.mark.parametrize(
    "text",
    [pytest.param('["a=1"]', id="one-string"), pytest.param('["a=1", "b=2"]', id="two-strings")],
)
def test_parse_args_rejects_json_array_of_pairs(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_args(text)


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        pytest.param([], {}, id="none"),
        pytest.param(["k:v"], {"k": "v"}, id="one"),
        pytest.param(["a:1", "b:2"], {"a": "1", "b": "2"}, id="two"),
        pytest.param(["t:2024-01-01 00:00:00"], {"t": "2024-01-01 00:00:00"}, id="value-with-colons"),
        pytest.param(["url:http://h:80/x"], {"url": "http://h:80/x"}, id="url-value"),
        pytest.param(["k:"], {"k": ""}, id="empty-value"),
        pytest.param([" k :v "], {"k": "v "}, id="key-stripped-value-kept"),
        pytest.param(["k:1", "k:2"], {"k": "2"}, id="last-wins"),
        pytest.param(["k:a=b"], {"k": "a=b"}, id="equals-in-value"),
    ],
)
def test_parse_tempargs_good(items: list[str], expected: dict[str, str]) -> None:
    assert parse_tempargs(items) == expected


@pytest.mark.parametrize(
    ("items", "bad"),
    [
        pytest.param(["novalue"], "novalue", id="no-colon"),
        pytest.param([":v"], ":v", id="empty-key"),
        pytest.param(["  :v"], "  :v", id="blank-key"),
        pytest.param(["a:1", "b=2"], "b=2", id="second-item-bad"),
        pytest.param([""], "", id="empty-item"),
    ],
)
def test_parse_tempargs_errors(items: list[str], bad: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_tempargs(items)
    assert str(info.value) == f"temp arg {bad!r} is not in key:value form"
    assert info.value.code == ErrorCode.INVALID_INPUT
