"""Method registry and dispatch: JSON-RPC method name → access level, params model, handler."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from loadmgrd.access import AccessPolicy, Peer
from loadmgrd.errors import ErrorCode, InvalidInput, LoadmgrError, PermissionDenied, ProtocolError
from loadmgrd.protocol import Params, Request, validate_params

if TYPE_CHECKING:
    from loadmgrd.config import Config
    from loadmgrd.repository import Repository

log = logging.getLogger("loadmgrd.rpc")

P = TypeVar("P", bound=Params)
Handler = Callable[["Context", Any], Awaitable[Any]]


@dataclass
class Context:
    """What a handler may use: the repository, the config, the engine, and who is asking."""

    repo: Repository
    config: Config
    peer: Peer
    services: Any = None  # the daemon (engine, shutdown state); typed loosely to avoid a cycle


@dataclass(frozen=True)
class Method:
    name: str
    admin: bool
    params: type[Params]
    handler: Handler
    summary: str


METHODS: dict[str, Method] = {}


def method(
    name: str, *, admin: bool, params: type[P]
) -> Callable[[Callable[[Context, P], Awaitable[Any]]], Callable[[Context, P], Awaitable[Any]]]:
    """Register ``handler`` as JSON-RPC method ``name``; its docstring's first line is its summary."""

    def register(handler: Callable[[Context, P], Awaitable[Any]]) -> Callable[[Context, P], Awaitable[Any]]:
        if name in METHODS:
            raise RuntimeError(f"method {name} registered twice")
        summary = (handler.__doc__ or "").strip().splitlines()[0] if handler.__doc__ else ""
        METHODS[name] = Method(name, admin, params, handler, summary)
        return handler

    return register


async def dispatch(request: Request, ctx: Context, policy: AccessPolicy) -> Any:
    """Run one request; raises ``LoadmgrError`` for every failure meant for the caller."""
    entry = METHODS.get(request.method)
    if entry is None:
        raise ProtocolError(ErrorCode.METHOD_NOT_FOUND, f"unknown method {request.method!r}")
    if entry.admin and not policy.is_admin(ctx.peer):
        raise PermissionDenied(policy.refusal(ctx.peer, request.method))
    params = validate_params(entry.params, request.params, request.method)
    try:
        return await entry.handler(ctx, params)
    except LoadmgrError:
        raise
    except OverflowError as exc:
        raise InvalidInput(f"{request.method}: a number is out of range ({exc})") from None
    except Exception as exc:  # a bug must not take the daemon down; the caller gets a reference
        log.exception("internal error in %s", request.method)
        raise LoadmgrError(f"internal error in {request.method}: {type(exc).__name__}: {exc}") from exc
