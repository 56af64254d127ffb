"""The project's exception hierarchy and the stable error codes of the wire protocol.

Every error meant for an operator derives from ``LoadmgrError`` and carries a code from
``ErrorCode``; the socket server turns it into a JSON-RPC error object, the client prints
its message. Codes are part of the public protocol (see docs/protocol.md): never renumber.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class ErrorCode(IntEnum):
    # JSON-RPC 2.0 reserved codes
    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    # loadmgr application codes
    NOT_FOUND = 1001
    ALREADY_EXISTS = 1002
    PERMISSION_DENIED = 1003
    INVALID_INPUT = 1004
    CONFLICT = 1005
    MAINTENANCE = 1006
    REQUEST_TOO_LARGE = 1007
    ALREADY_RUNNING = 1008
    NOT_RUNNING = 1009
    SHUTTING_DOWN = 1010


class LoadmgrError(Exception):
    """Base of every error the project raises on purpose. ``str(err)`` is for operators."""

    code: ErrorCode = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str, *, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class ConfigError(LoadmgrError):
    code = ErrorCode.INVALID_INPUT


class RepositoryError(LoadmgrError):
    code = ErrorCode.INTERNAL_ERROR


class NotFound(LoadmgrError):
    code = ErrorCode.NOT_FOUND


class AlreadyExists(LoadmgrError):
    code = ErrorCode.ALREADY_EXISTS


class PermissionDenied(LoadmgrError):
    code = ErrorCode.PERMISSION_DENIED


class InvalidInput(LoadmgrError):
    code = ErrorCode.INVALID_INPUT


class Conflict(LoadmgrError):
    code = ErrorCode.CONFLICT


class MaintenanceMode(LoadmgrError):
    code = ErrorCode.MAINTENANCE


class AlreadyRunning(LoadmgrError):
    code = ErrorCode.ALREADY_RUNNING


class NotRunning(LoadmgrError):
    code = ErrorCode.NOT_RUNNING


class ProtocolError(LoadmgrError):
    """A request that is not valid JSON-RPC; ``code`` is set per instance."""

    def __init__(self, code: ErrorCode, message: str, *, data: dict[str, Any] | None = None) -> None:
        super().__init__(message, data=data)
        self.code = code


class JobFileError(InvalidInput):
    """A job file that cannot be imported; names the file, line and column."""

    def __init__(self, file: str, line: int | None, column: str | int | None, problem: str) -> None:
        where = file
        if line is not None:
            where += f", line {line}"
        if column is not None:
            where += f", column {column}"
        super().__init__(f"{where}: {problem}", data={"file": file, "line": line, "column": column})
        self.file = file
        self.line = line
        self.column = column
        self.problem = problem
