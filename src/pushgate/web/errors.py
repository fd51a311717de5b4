"""One classification of exceptions for every door of the web edge, and one JSON error body.

The HTTP API, the WebSocket/SSE handshake and the JSON session all turn an exception into a
``(status, code, message)`` with :func:`classify`; HTTP replies carry it as
``{"error": {"code": ..., "message": ...}}`` (:func:`error_response`), the session as an error
frame (code and message only). Before this module each door had its own copy and they drifted
(a connect hook's ``Reject`` was 403 on ``/ws`` and 400 on ``/sse``).

What a client did wrong keeps its message; what the server did wrong (``internal``) never shows
its exception text to the client: the caller logs it with the traceback instead.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec
from aiohttp import web

from ..backends import is_unavailable
from ..errors import AuthError, ClientError, Reject

# HTTP status per error code. Codes that only occur on a connection (``already_subscribed``,
# ``limit_exceeded``, ...) fall back to 400: the request was wrong, not the server.
STATUS_BY_CODE: dict[str, int] = {
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "permission_denied": 403,
    "rejected": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "too_large": 413,
    "unsupported_media_type": 415,
    "request_timeout": 408,
    "rate_limited": 429,
    "too_many_connections": 429,
    "internal": 500,
    "connection_limit": 503,
    "draining": 503,
    "unavailable": 503,
}
CODE_BY_HTTP_STATUS: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
}
UNAVAILABLE_MESSAGE = "broker unavailable, retry later"
INTERNAL_MESSAGE = "internal error"


class Classified(NamedTuple):
    """An exception as a client sees it. Unpacks as ``status, code, message``."""

    status: int
    code: str
    message: str

    @property
    def internal(self) -> bool:
        """True for a server bug: log the exception with its traceback, the client gets no detail."""
        return self.code == "internal"


INTERNAL = Classified(500, "internal", INTERNAL_MESSAGE)


def classify(exc: BaseException) -> Classified:
    """The status, code and message a client gets for ``exc``.

    * :class:`~pushgate.errors.Reject` (an application hook refused): 403 whatever its code;
    * other :class:`~pushgate.errors.ClientError`: its ``code``, status from :data:`STATUS_BY_CODE`
      (400 when the code has no entry);
    * :class:`~pushgate.errors.AuthError`: its ``status``, code ``unauthorized`` (401),
      ``forbidden`` (403) or ``bad_request`` (400, e.g. an invalid dev-mode user id);
    * the broker cannot be reached (:func:`pushgate.backends.is_unavailable`): 503 ``unavailable``;
    * an aiohttp ``HTTPException`` ≥ 400 (unknown route, wrong method, body too large): its status;
    * anything else: 500 ``internal`` with a fixed message (see :attr:`Classified.internal`).
    """
    if isinstance(exc, Reject):
        return Classified(403, exc.code, exc.message)
    if isinstance(exc, ClientError):
        return Classified(STATUS_BY_CODE.get(exc.code, 400), exc.code, exc.message)
    if isinstance(exc, AuthError):
        return Classified(exc.status, CODE_BY_HTTP_STATUS.get(exc.status, "forbidden"), str(exc))
    if isinstance(exc, web.HTTPException) and exc.status >= 400:
        return Classified(exc.status, CODE_BY_HTTP_STATUS.get(exc.status, "http_error"), exc.reason)
    if is_unavailable(exc):
        return Classified(503, "unavailable", UNAVAILABLE_MESSAGE)
    return INTERNAL


def error_body(code: str, message: str) -> bytes:
    """The JSON error body of every HTTP refusal: ``{"error": {"code": ..., "message": ...}}``."""
    return msgspec.json.encode({"error": {"code": code, "message": message}})


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.Response(body=error_body(code, message), status=status, content_type="application/json")
