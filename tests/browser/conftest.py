"""Headless Chromium driven by Playwright against real pushgate nodes (subprocesses).

Debian's ``chromium`` (/usr/bin/chromium, or $PUSHGATE_CHROMIUM) and the ``playwright`` Python
package (the ``test`` extra) are needed; without either the tests skip and say why. Each test gets
a fresh user-data-dir. Screenshots go to ``test-artifacts/browser/`` (git-ignored; override with
$PUSHGATE_ARTIFACTS).
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from ..helpers import timeout

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("PUSHGATE_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(os.environ.get("PUSHGATE_ARTIFACTS", ROOT / "test-artifacts")) / "browser"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # plus --headless, which Playwright adds


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Any]:
    """One Chromium (a persistent context on a fresh user-data-dir); pages come from ``new_page``."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install -e '.[test]')")
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "user-data"), executable_path=str(CHROMIUM), headless=True, args=FLAGS,
            viewport={"width": 1200, "height": 800})
        context.set_default_timeout(timeout(10) * 1000)
        try:
            yield context
        finally:
            await context.close()


@pytest.fixture
def shot(request: pytest.FixtureRequest) -> Callable[[Any, str], Any]:
    """``await shot(page, "name")`` saves a full-page screenshot as a test artefact."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    test = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)

    async def save(page: Any, name: str) -> Path:
        path = ARTIFACTS / f"{test}-{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        return path

    return save
