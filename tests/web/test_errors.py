"""``classify``: one mapping from exception to (status, code, message) for every door of the web edge."""

from __future__ import annotations

import json

import pytest
import redis.exceptions
from aiohttp import web

from pushgate.errors import AuthError, BrokerUnavailable, ClientError, Reject
from pushgate.web.errors import Classified, classify, error_body, error_response


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ClientError("bad_request", "invalid channel"), (400, "bad_request", "invalid channel")),
        (ClientError("permission_denied", "no"), (403, "permission_denied", "no")),
        (ClientError("not_found", "gone"), (404, "not_found", "gone")),
        (ClientError("too_large", "big"), (413, "too_large", "big")),
        (ClientError("connection_limit", "full"), (503, "connection_limit", "full")),
        (ClientError("draining", "bye"), (503, "draining", "bye")),
        (ClientError("unavailable", "later"), (503, "unavailable", "later")),
        # codes that only occur on a connection are still the client's fault
        (ClientError("already_subscribed", "twice"), (400, "already_subscribed", "twice")),
        (Reject("mallory is banned"), (403, "rejected", "mallory is banned")),
        # an application's own refusal code keeps 403: it is a refusal whatever it is called
        (Reject("not today", code="banned"), (403, "banned", "not today")),
        (AuthError("token expired"), (401, "unauthorized", "token expired")),
        (AuthError("origin 'x' is not allowed", status=403), (403, "forbidden", "origin 'x' is not allowed")),
        (AuthError("invalid user id", status=400), (400, "bad_request", "invalid user id")),
    ],
)
def test_client_mistakes_keep_their_message(exc: BaseException, expected: tuple[int, str, str]) -> None:
    verdict = classify(exc)
    assert verdict == expected
    assert not verdict.internal


@pytest.mark.parametrize(
    "exc",
    [
        BrokerUnavailable("link down"),
        ConnectionResetError("peer reset"),
        TimeoutError(),
        redis.exceptions.ConnectionError("Connection refused"),
        redis.exceptions.TimeoutError("Timeout reading from socket"),
    ],
)
def test_broker_outage_is_503_unavailable_without_the_details(exc: BaseException) -> None:
    assert classify(exc) == (503, "unavailable", "broker unavailable, retry later")


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (web.HTTPNotFound(), 404, "not_found"),
        (web.HTTPMethodNotAllowed("GET", ["POST"]), 405, "method_not_allowed"),
        (web.HTTPRequestEntityTooLarge(max_size=10, actual_size=20), 413, "too_large"),
        (web.HTTPBadRequest(), 400, "bad_request"),
        (web.HTTPTooManyRequests(), 429, "http_error"),
    ],
)
def test_aiohttp_http_errors_keep_their_status(exc: web.HTTPException, status: int, code: str) -> None:
    verdict = classify(exc)
    assert (verdict.status, verdict.code, verdict.message) == (status, code, exc.reason)


@pytest.mark.parametrize("exc", [RuntimeError("db password is hunter2"), KeyError("secret"), ValueError("x")])
def test_anything_else_is_internal_and_leaks_nothing(exc: BaseException) -> None:
    verdict = classify(exc)
    assert verdict == (500, "internal", "internal error")
    assert verdict.internal  # the caller logs it with the traceback


def test_classified_unpacks_as_status_code_message() -> None:
    status, code, message = classify(Reject("no"))
    assert (status, code, message) == (403, "rejected", "no")
    assert isinstance(classify(Reject("no")), Classified)


def test_error_body_and_response() -> None:
    assert json.loads(error_body("rejected", 'say "no"')) == {"error": {"code": "rejected", "message": 'say "no"'}}
    resp = error_response(*classify(ClientError("connection_limit", "full")))
    assert resp.status == 503 and resp.content_type == "application/json"
    assert resp.text is not None
    assert json.loads(resp.text) == {"error": {"code": "connection_limit", "message": "full"}}
