"""Decoding text files with a useful position for the first bad byte. Pure."""

from __future__ import annotations

import codecs


class DecodeFailure(ValueError):
    def __init__(self, line: int, column: int, byte: int) -> None:
        super().__init__(f"line {line}, column {column}: byte 0x{byte:02x} is not UTF-8 text")
        self.line = line
        self.column = column
        self.byte = byte


def decode_utf8(data: bytes) -> str:
    """UTF-8 with an optional BOM; a failure says the line and the character column of the bad byte."""
    offset = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[offset:].decode("utf-8")
    except UnicodeDecodeError as exc:
        index = exc.start + offset
        line_start = data.rfind(b"\n", 0, index) + 1
        prefix = data[max(line_start, offset) : index].decode("utf-8", errors="replace")
        raise DecodeFailure(data.count(b"\n", 0, index) + 1, len(prefix) + 1, data[index]) from None
