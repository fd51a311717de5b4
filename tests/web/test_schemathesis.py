"""Schemathesis against the HTTP API a real node serves: generated requests, valid and invalid,
from ``/api/openapi.json``; no 5xx, and every error under ``/api`` in the documented shape
``{"error": {"code": str, "message": str}}`` whatever the request was.

The node runs in its own process (schemathesis' calls are blocking ``requests`` calls, so an
in-process server would share their thread); the schema is fetched from that node, so this also
proves the document it serves is loadable. Each operation gets a bounded number of examples
(``EXAMPLES``): a few hundred requests in all, a few seconds.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from ..conftest import Process
from ..helpers import free_port

EXAMPLES = 40


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    log = Path(tmp_path_factory.mktemp("schemathesis")) / "node.log"
    proc = Process([], free_port(), log_path=log)
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.kill()


def _schema_dict() -> dict[str, Any]:
    # The document is a pure function of the code; the served copy is compared with it below.
    from pushgate.web.openapi import openapi_document

    return openapi_document()


schema = schemathesis.openapi.from_dict(_schema_dict())


def test_the_served_document_is_the_one_fuzzed(node: Process) -> None:
    with urllib.request.urlopen(node.url + "/api/openapi.json", timeout=5) as r:
        assert json.loads(r.read()) == json.loads(json.dumps(_schema_dict()))


def error_shape(response: Any, path: str) -> None:
    """Every 4xx/5xx under /api carries exactly the documented error object."""
    if response.status_code < 400 or not path.startswith("/api"):
        return
    content_type = (response.headers.get("content-type") or [""])[0]  # schemathesis: lower-case, lists
    assert content_type.startswith("application/json"), (
        f"{response.status_code} error without a JSON body: {response.text[:200]!r}")
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict), body
    assert isinstance(error.get("code"), str) and error["code"], body
    assert isinstance(error.get("message"), str), body


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_api_never_500s_and_errors_keep_their_shape(case: Any, node: Process) -> None:
    response = case.call(base_url=node.url, timeout=10)
    case.validate_response(response, checks=[not_a_server_error])
    error_shape(response, case.path)
