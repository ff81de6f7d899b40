"""Token authentication, role checks and the one mapping of NavError to gRPC status codes.

Clients send ``authorization: Bearer <token>`` metadata. Roles are ordered
viewer < technician < surgeon; each RPC names the least role it needs (:data:`REQUIRED_ROLE`),
approve and reject need a surgeon. Health checking and reflection need no token.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from navsvc.config import Config
from navsvc.errors import (
    Cancelled,
    InputError,
    NavError,
    NotBuiltYet,
    NotFound,
    PermissionDenied,
    PlanError,
    PreconditionFailed,
    RegistrationFailed,
    ResourceExhausted,
    TransformError,
    Unauthenticated,
)

log = logging.getLogger(__name__)

ROLES = ("viewer", "technician", "surgeon")
_RANK = {r: i for i, r in enumerate(ROLES)}

#: the least role each RPC of navsvc.v1.Navigation needs
REQUIRED_ROLE: dict[str, str] = {
    "CreateCase": "technician",
    "ListCases": "viewer",
    "GetCase": "viewer",
    "Upload": "technician",
    "LoadPlan": "technician",
    "StartRegistration": "technician",
    "WatchRegistration": "viewer",
    "GetRegistration": "viewer",
    "CancelRegistration": "technician",
    "ApproveRegistration": "surgeon",
    "RejectRegistration": "surgeon",
    "GetResultFile": "viewer",
    "SetCalibration": "technician",
    "StreamTargets": "viewer",
    "GetTargets": "viewer",
    "ListAudit": "viewer",
}
_SERVICE_PREFIX = "/navsvc.v1.Navigation/"
_OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")

#: NavError class -> status code, most specific first (the only such mapping)
STATUS_CODES: tuple[tuple[type[NavError], grpc.StatusCode], ...] = (
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (PreconditionFailed, grpc.StatusCode.FAILED_PRECONDITION),
    (Cancelled, grpc.StatusCode.CANCELLED),
    (NotBuiltYet, grpc.StatusCode.UNIMPLEMENTED),
    (InputError, grpc.StatusCode.INVALID_ARGUMENT),
    (PlanError, grpc.StatusCode.INVALID_ARGUMENT),
    (TransformError, grpc.StatusCode.INVALID_ARGUMENT),
    (RegistrationFailed, grpc.StatusCode.FAILED_PRECONDITION),
    (NavError, grpc.StatusCode.INTERNAL),
)


def status_for(error: NavError) -> grpc.StatusCode:
    for cls, code in STATUS_CODES:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.INTERNAL


@dataclass(frozen=True)
class Identity:
    name: str
    role: str

    def allows(self, required: str) -> bool:
        return _RANK[self.role] >= _RANK[required]


class Authenticator:
    """Maps bearer tokens to identities."""

    def __init__(self, tokens: dict[str, Identity]) -> None:
        if not tokens:
            raise ValueError("expected at least one token")
        self._tokens = dict(tokens)

    @classmethod
    def from_config(cls, config: Config, data_dir: Path) -> Authenticator:
        """Tokens from ``[auth]``; with none configured, one per role generated once and kept in
        ``<data_dir>/tokens.json`` (mode 0600) so local clients and restarts find them."""
        if config.auth.tokens:
            return cls({t.token: Identity(t.name or t.role, t.role) for t in config.auth.tokens})
        return cls({tok: Identity(role, role) for role, tok in local_tokens(data_dir).items()})

    def identify(self, metadata: Any) -> Identity:
        """Identity from call metadata; raises :class:`Unauthenticated`."""
        values = [v for k, v in (metadata or ()) if k == "authorization"]
        if not values:
            raise Unauthenticated(
                "no credentials: send metadata 'authorization: Bearer <token>' "
                "(CLI: --token or NAVSVC_TOKEN)"
            )
        scheme, _, token = str(values[0]).partition(" ")
        ident = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if ident is None:
            raise Unauthenticated("the token is not valid for this service; ask the administrator for one")
        return ident


def local_tokens(data_dir: Path) -> dict[str, str]:
    """role -> token, created on first use in ``data_dir/tokens.json`` (owner-only)."""
    path = Path(data_dir) / "tokens.json"
    if path.is_file():
        tokens: dict[str, str] = json.loads(path.read_text())
        return tokens
    tokens = {role: secrets.token_urlsafe(24) for role in ROLES}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(tokens, fh, indent=2)
    os.replace(tmp, path)
    log.warning("no [auth] tokens configured: generated one per role in %s", path)
    return tokens


def identity_of(context: grpc.ServicerContext, auth: Authenticator) -> Identity:
    return auth.identify(context.invocation_metadata())


def _abort(context: grpc.ServicerContext, exc: NavError, method: str) -> None:
    code = status_for(exc)
    log.info("%s -> %s: %s", method, code.name, exc)
    context.abort(code, str(exc))


def _wrap_unary(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    def run(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behavior(request, context)
        except NavError as exc:
            _abort(context, exc, method)

    return run


def _wrap_stream(behavior: Callable[..., Iterator[Any]], method: str) -> Callable[..., Iterator[Any]]:
    def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from behavior(request, context)
        except NavError as exc:
            _abort(context, exc, method)

    return run


def _denied(exc: NavError, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    def unary(request: Any, context: grpc.ServicerContext) -> Any:
        _abort(context, exc, method)

    def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        _abort(context, exc, method)
        yield from ()

    kw = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream, **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, **kw)
    return grpc.stream_stream_rpc_method_handler(stream, **kw)


class AuthInterceptor(grpc.ServerInterceptor):
    """Refuses calls without a valid token or with too low a role, and turns every
    :class:`NavError` raised by a servicer into its status code and message."""

    def __init__(self, auth: Authenticator,
                 on_denied: Callable[[str, Identity | None, NavError], None] | None = None) -> None:
        self.auth = auth
        self.on_denied = on_denied  # e.g. writes the refusal to the audit log

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        method = details.method
        if handler is None or method.startswith(_OPEN_PREFIXES):
            return handler
        name = method.removeprefix(_SERVICE_PREFIX)
        ident: Identity | None = None
        try:
            ident = self.auth.identify(details.invocation_metadata)
            required = REQUIRED_ROLE.get(name)
            if required is None:
                raise PermissionDenied(f"method {method} is not open to any role")
            if not ident.allows(required):
                raise PermissionDenied(f"{name} needs the {required} role; your token has role {ident.role}")
        except NavError as exc:
            if self.on_denied is not None:
                try:
                    self.on_denied(name, ident, exc)
                except Exception:  # auditing must not turn a refusal into a crash
                    log.exception("cannot record the refusal of %s", name)
            return _denied(exc, name, handler)
        kw = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(_wrap_unary(handler.unary_unary, name), **kw)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(_wrap_stream(handler.unary_stream, name), **kw)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(_wrap_unary(handler.stream_unary, name), **kw)
        return grpc.stream_stream_rpc_method_handler(_wrap_stream(handler.stream_stream, name), **kw)
