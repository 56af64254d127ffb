"""The pure helpers of the data steps: counting records in (compressed) files, dates in file
names, and splitting SQL scripts into statements."""

from __future__ import annotations

import bz2
import gzip
import lzma
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from loadmgrd.datasteps import count_records, date_from_name
from loadmgrd.targets import split_statements

# ---------------------------------------------------------------------------- count_records

WRITERS: dict[str, Callable[[Path, bytes], None]] = {
    "": lambda path, data: path.write_bytes(data),
    ".gz": lambda path, data: path.write_bytes(gzip.compress(data)),
    ".bz2": lambda path, data: path.write_bytes(bz2.compress(data)),
    ".xz": lambda path, data: path.write_bytes(lzma.compress(data)),
}


@pytest.mark.parametrize(
    ("content", "records"),
    [
        pytest.param(b"a,1\nb,2\nc,3\n", 3, id="trailing-newline"),
        pytest.param(b"a,1\nb,2\nc,3", 3, id="no-trailing-newline"),
        pytest.param(b"", 0, id="empty"),
        pytest.param(b"\n", 1, id="one-empty-line"),
        pytest.param(b"only line", 1, id="one-line-no-newline"),
        pytest.param(b"a\r\nb\r\n", 2, id="crlf"),
        pytest.param(b"x\n\n\ny\n", 4, id="blank-lines-count"),
    ],
)
@pytest.mark.parametrize("suffix", ["", ".gz", ".bz2", ".xz"], ids=["plain", "gz", "bz2", "xz"])
def test_count_records(tmp_path: Path, suffix: str, content: bytes, records: int) -> None:
    path = tmp_path / f"sales_20241201.csv{suffix}"
    WRITERS[suffix](path, content)
    assert count_records(path) == records


@pytest.mark.parametrize("suffix", ["", ".gz", ".bz2", ".xz"], ids=["plain", "gz", "bz2", "xz"])
def test_count_records_across_read_chunks(tmp_path: Path, suffix: str) -> None:
    """More than the 1 MiB read chunk, the last line without a newline."""
    lines = [f"{i:08d},some payload to make the file bigger than one chunk".encode() for i in range(25_000)]
    data = b"\n".join(lines)
    assert len(data) > (1 << 20)
    path = tmp_path / f"big.csv{suffix}"
    WRITERS[suffix](path, data)
    assert count_records(path) == 25_000


def test_count_records_suffix_is_case_insensitive(tmp_path: Path) -> None:
    path = tmp_path / "SALES.CSV.GZ"
    path.write_bytes(gzip.compress(b"1\n2\n"))
    assert count_records(path) == 2


def _flip(data: bytes, start: int, end: int) -> bytes:
    """``data`` with the bits of ``data[start:end]`` inverted (a corrupt deflate stream)."""
    return data[:start] + bytes(b ^ 0xFF for b in data[start:end]) + data[end:]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        pytest.param("bad.csv.gz", b"this is not gzip data\n", id="gz-garbage"),
        pytest.param("truncated.csv.gz", gzip.compress(b"a\n" * 10_000)[:40], id="gz-truncated"),
        pytest.param(
            "flipped.csv.gz",
            _flip(gzip.compress(b"row\n" * 5000), 20, 40),
            id="gz-corrupt-deflate",
        ),
        pytest.param("bad.csv.bz2", b"not bzip2 at all", id="bz2-garbage"),
        pytest.param("bad.csv.xz", b"not xz at all", id="xz-garbage"),
    ],
)
def test_count_records_of_a_corrupt_file_raises(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises((OSError, EOFError, lzma.LZMAError, zlib.error)):
        count_records(path)


def test_count_records_of_a_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        count_records(tmp_path / "nope.csv")


# ---------------------------------------------------------------------------- date_from_name


@pytest.mark.parametrize(
    ("name", "date_format", "expected"),
    [
        pytest.param("sales_20241201.csv", "yyyyMMdd", "2024-12-01", id="java-compact"),
        pytest.param("sales_20241202.csv.gz", "yyyyMMdd", "2024-12-02", id="java-compact-gz"),
        pytest.param("sales_2024-12-03.csv", "yyyy-MM-dd", "2024-12-03", id="java-dashes"),
        pytest.param("sales_03.12.2024.csv", "dd.MM.yyyy", "2024-12-03", id="java-dots-literal"),
        pytest.param("sales_241204.csv", "yyMMdd", "2024-12-04", id="java-two-digit-year"),
        pytest.param("sales_20241205_2359.csv", "yyyyMMdd_HHmm", "2024-12-05", id="java-with-time"),
        pytest.param("sales_20241206.csv", "%Y%m%d", "2024-12-06", id="strftime-compact"),
        pytest.param("sales_2024-12-07.csv", "%Y-%m-%d", "2024-12-07", id="strftime-dashes"),
        pytest.param("x_07122024_y.txt", "%d%m%Y", "2024-12-07", id="strftime-day-first"),
        pytest.param("sales.csv", "yyyyMMdd", None, id="no-match"),
        pytest.param("sales_2024120.csv", "yyyyMMdd", None, id="too-few-digits"),
        pytest.param("sales_2024-12-01.csv", "yyyyMMdd", None, id="other-layout"),
        pytest.param("sales_20241341.csv", "yyyyMMdd", None, id="impossible-date"),
        pytest.param("sales_20240230.csv", "%Y%m%d", None, id="impossible-date-strftime"),
        pytest.param("sales_2024.12.01.csv", "yyyy-MM-dd", None, id="dash-is-literal"),
    ],
)
def test_date_from_name(name: str, date_format: str, expected: str | None) -> None:
    assert date_from_name(name, date_format) == expected


# ---------------------------------------------------------------------------- split_statements


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        pytest.param("SELECT 1", ["SELECT 1"], id="one"),
        pytest.param("SELECT 1; SELECT 2", ["SELECT 1", "SELECT 2"], id="two"),
        pytest.param("SELECT 1;", ["SELECT 1"], id="trailing-semicolon"),
        pytest.param("SELECT 1;;\n ; \n", ["SELECT 1"], id="empty-statements-dropped"),
        pytest.param("", [], id="empty"),
        pytest.param("  ;\n;  ", [], id="only-semicolons"),
        pytest.param("-- nothing here", [], id="only-a-comment"),
        pytest.param("SELECT 'a;b'; SELECT 2", ["SELECT 'a;b'", "SELECT 2"], id="semicolon-in-single-quotes"),
        pytest.param(
            "SELECT 'it''s; here'; SELECT 2", ["SELECT 'it''s; here'", "SELECT 2"], id="doubled-quote-in-literal"
        ),
        pytest.param("SELECT '';SELECT 2", ["SELECT ''", "SELECT 2"], id="empty-literal"),
        pytest.param(
            'SELECT "odd;name" FROM t; SELECT 2', ['SELECT "odd;name" FROM t', "SELECT 2"], id="quoted-identifier"
        ),
        pytest.param("SELECT `a;b` FROM t; SELECT 2", ["SELECT `a;b` FROM t", "SELECT 2"], id="backtick-identifier"),
        pytest.param("SELECT 1 -- one; two\n; SELECT 2", ["SELECT 1", "SELECT 2"], id="semicolon-in-line-comment"),
        pytest.param("SELECT /* ; */ 1; SELECT 2", ["SELECT  1", "SELECT 2"], id="semicolon-in-block-comment"),
        pytest.param("SELECT 1 /* unterminated ; comment", ["SELECT 1"], id="unterminated-block-comment"),
        pytest.param("SELECT '-- not a comment;' AS x", ["SELECT '-- not a comment;' AS x"], id="comment-in-literal"),
        pytest.param("SELECT 'a;b", ["SELECT 'a;b"], id="unterminated-literal"),
        pytest.param(
            "INSERT INTO t VALUES ('x');\nINSERT INTO t VALUES ('y');\nSELECT count(*) FROM t;\n",
            ["INSERT INTO t VALUES ('x')", "INSERT INTO t VALUES ('y')", "SELECT count(*) FROM t"],
            id="script-lines",
        ),
        pytest.param(
            "SELECT 10 - 3; SELECT 4 / 2", ["SELECT 10 - 3", "SELECT 4 / 2"], id="minus-and-slash-are-operators"
        ),
    ],
)
def test_split_statements(script: str, expected: list[str]) -> None:
    assert split_statements(script) == expected
