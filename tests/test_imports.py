"""Import hygiene: an application that only uses the client must not load the server.

Runs in a fresh interpreter so modules other tests imported do not hide a regression.
"""

from __future__ import annotations

import json
import subprocess
import sys

SERVER_SIDE = (
    "aiohttp.web",
    "prometheus_client",
    "jwt",
    "redis",
    "pushgate.node",
    "pushgate.scheduler",
    "pushgate.server",
    "pushgate.hub",
    "pushgate.web",
    "pushgate.backends",
    "pushgate.publisher",
    "pushgate.app",
)


def _modules_after(statement: str) -> list[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return list(json.loads(out.stdout))


def _server_side(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == s or m.startswith(s + ".") for s in SERVER_SIDE)]


def test_importing_the_client_loads_no_server_code() -> None:
    assert _server_side(_modules_after("import pushgate.client")) == []


def test_importing_the_package_root_loads_no_server_code() -> None:
    # `pushgate.CloseCode` and the exception tree are light; App/Publisher load on first use.
    assert _server_side(_modules_after("import pushgate; pushgate.CloseCode")) == []


def test_server_names_still_resolve_from_the_package_root() -> None:
    modules = _modules_after("import pushgate; pushgate.App; pushgate.Publisher; pushgate.ClientInfo")
    assert "pushgate.app" in modules and "pushgate.publisher" in modules
