"""The wire protocol: newline-delimited JSON-RPC 2.0 envelopes and the shared parameter types.

One JSON object (or a batch array) per line, UTF-8. Requests without an ``id`` are
notifications and get no reply. Errors carry a stable code from ``loadmgrd.errors.ErrorCode``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from loadmgrd.errors import ErrorCode, LoadmgrError, ProtocolError

JSONRPC = "2.0"
MAX_NAME_LENGTH = 200
RESERVED_NAMES = frozenset({"ALL"})


def _check_name(value: str) -> str:
    """Names of jobs, groups, events, processes: printable, one line, safe inside a file name."""
    if not value or not value.strip():
        raise ValueError("must not be empty")
    if value != value.strip():
        raise ValueError("must not start or end with spaces")
    if len(value) > MAX_NAME_LENGTH:
        raise ValueError(f"must be at most {MAX_NAME_LENGTH} characters")
    if any(ch in value for ch in "/\\") or any(not ch.isprintable() for ch in value):
        raise ValueError("must not contain '/', '\\', line breaks or control characters")
    if value in (".", "..") or value.startswith("-"):
        raise ValueError("must not be '.', '..' or start with '-'")
    return value


def _check_job_name(value: str) -> str:
    _check_name(value)
    if value in RESERVED_NAMES:
        raise ValueError(f"{value!r} is reserved (it means every job)")
    return value


def _check_text(value: str) -> str:
    if "\0" in value or "\n" in value or "\r" in value:
        raise ValueError("must be one line without NUL bytes")
    return value


Name = Annotated[str, AfterValidator(_check_name)]
JobName = Annotated[str, AfterValidator(_check_job_name)]
Line = Annotated[str, AfterValidator(_check_text)]


class Params(BaseModel):
    """Base of every method's params: unknown params are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class NoParams(Params):
    pass


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jsonrpc: str
    method: str
    params: dict[str, Any] | list[Any] | None = None
    id: int | str | None = None
    is_notification: bool = False


def parse_request(obj: Any) -> Request:
    """Validate one JSON-RPC request object (already decoded from JSON)."""
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "a request must be a JSON object")
    if obj.get("jsonrpc") != JSONRPC:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, 'a request must have "jsonrpc": "2.0"')
    if not isinstance(obj.get("method"), str):
        raise ProtocolError(ErrorCode.INVALID_REQUEST, 'a request must have a "method" string')
    if "id" in obj and (isinstance(obj["id"], bool) or not isinstance(obj["id"], int | str | None)):
        raise ProtocolError(ErrorCode.INVALID_REQUEST, '"id" must be a number, a string or null')
    params = obj.get("params")
    if params is not None and not isinstance(params, dict | list):
        raise ProtocolError(ErrorCode.INVALID_REQUEST, '"params" must be an object or an array')
    extra = set(obj) - {"jsonrpc", "method", "params", "id"}
    if extra:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, f"unknown request member(s): {', '.join(sorted(extra))}")
    return Request(
        jsonrpc=JSONRPC,
        method=obj["method"],
        params=params,
        id=obj.get("id"),
        is_notification="id" not in obj,
    )


def validate_params(model: type[Params], params: dict[str, Any] | list[Any] | None, method: str) -> Params:
    if isinstance(params, list):
        if params:
            raise ProtocolError(ErrorCode.INVALID_PARAMS, f"{method}: params must be an object with named members")
        params = {}
    try:
        return model.model_validate(params or {})
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "params"
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown parameter"
        raise ProtocolError(ErrorCode.INVALID_PARAMS, f"{method}: {where}: {message}", data={"param": where}) from None


def result_line(request_id: Any, result: Any) -> bytes:
    return _encode({"jsonrpc": JSONRPC, "id": request_id, "result": result})


def error_object(exc: LoadmgrError) -> dict[str, Any]:
    error: dict[str, Any] = {"code": int(exc.code), "message": exc.message}
    if exc.data:
        error["data"] = exc.data
    return error


def error_line(request_id: Any, exc: LoadmgrError) -> bytes:
    return _encode({"jsonrpc": JSONRPC, "id": request_id, "error": error_object(exc)})


def _encode(obj: Any) -> bytes:
    # ASCII with escapes: any string a client sent (a lone surrogate included) can be echoed back.
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":"), default=str).encode("ascii") + b"\n"
