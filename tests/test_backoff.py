"""The one backoff policy (pushgate.backoff): bounds, growth, cap, a random first delay, and
the browser client (pushgate.js) following the same formula and defaults."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pushgate.backoff import DEFAULT_MAX_DELAY, DEFAULT_MIN_DELAY, backoff, backoff_cap, check_window

JS = Path(__file__).resolve().parents[1] / "src" / "pushgate" / "static" / "pushgate.js"


class Ceiling(random.Random):
    """Always draws the top of the window, so the sequence shows the caps themselves."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_every_delay_within_zero_and_its_cap() -> None:
    for seed in range(100):
        delays = backoff(0.1, 5.0, rng=random.Random(seed))
        for n in range(40):
            d = next(delays)
            assert 0.0 <= d <= min(5.0, 0.1 * 2**n), (seed, n, d)


def test_caps_double_then_stay_at_max() -> None:
    caps = backoff(0.5, 20.0, rng=Ceiling())
    assert [next(caps) for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 20, 20, 20]
    assert [backoff_cap(n, 0.5, 20.0) for n in range(9)] == [0.5, 1, 2, 4, 8, 16, 20, 20, 20]
    tripled = backoff(1.0, 10.0, factor=3.0, rng=Ceiling())
    assert [next(tripled) for _ in range(4)] == [1, 3, 9, 10]


def test_first_delay_is_random_within_min() -> None:
    firsts = [next(backoff(0.5, 20.0)) for _ in range(200)]
    assert all(0.0 <= d <= 0.5 for d in firsts)
    assert len(set(firsts)) > 190  # jittered, not a constant
    assert min(firsts) < 0.1 and max(firsts) > 0.4  # spread over the whole window


def test_delays_grow_on_average() -> None:
    rng = random.Random(7)
    runs = [[next(d) for _ in range(6)] for d in (backoff(0.1, 100.0, rng=rng) for _ in range(400))]
    means = [sum(run[n] for run in runs) / len(runs) for n in range(6)]
    for n in range(6):  # full jitter: the mean is half the cap, within sampling noise
        assert means[n] == pytest.approx(0.1 * 2**n / 2, rel=0.15)


def test_runs_forever_without_overflow() -> None:
    delays = backoff(0.5, 20.0)
    for _ in range(5000):
        assert 0.0 <= next(delays) <= 20.0
    assert backoff_cap(10**9, 0.5, 20.0, factor=10.0) == 20.0


def test_defaults_and_bad_windows() -> None:
    assert (DEFAULT_MIN_DELAY, DEFAULT_MAX_DELAY) == (0.5, 20.0)
    assert next(backoff(rng=Ceiling())) == DEFAULT_MIN_DELAY
    for bad in [(0, 1), (-1, 1), (2, 1)]:
        with pytest.raises(ValueError):
            next(backoff(*bad))
        with pytest.raises(ValueError):
            check_window(*bad)
    with pytest.raises(ValueError):
        next(backoff(0.1, 1.0, factor=0.5))


def test_client_uses_the_shared_policy() -> None:
    import pushgate.backoff
    import pushgate.client

    assert pushgate.client.backoff is pushgate.backoff.backoff


def test_backoff_module_imports_nothing_of_pushgate() -> None:
    code = (
        "import sys; import pushgate.backoff; "
        "print(sorted(m for m in sys.modules if m.startswith('pushgate') or m in ('redis', 'aiohttp', 'asyncio')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30)
    # pushgate/__init__ loads the exception tree only; nothing heavy comes with the backoff.
    assert json.loads(out.stdout.replace("'", '"')) == ["pushgate", "pushgate.backoff", "pushgate.errors"]


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_pushgate_js_follows_the_same_formula_and_defaults() -> None:
    script = f"""
const P = require({json.dumps(str(JS))});
const out = {{}};
Math.random = () => 1;  // the top of every window: the caps
out.caps = [...Array(9).keys()].map((n) => P.backoffDelay(n, 500, 20000));
out.defaults = [P.backoffDelay(0), P.backoffDelay(50)];
Math.random = () => 0;
out.floor = P.backoffDelay(3, 500, 20000);
console.log(JSON.stringify(out));
"""
    out = subprocess.run(["node", "-e", script], capture_output=True, text=True, check=True, timeout=30)
    got = json.loads(out.stdout)
    expected = [round(backoff_cap(n, 0.5, 20.0) * 1000) for n in range(9)]
    assert got["caps"] == expected == [500, 1000, 2000, 4000, 8000, 16000, 20000, 20000, 20000]
    assert got["defaults"] == [DEFAULT_MIN_DELAY * 1000, DEFAULT_MAX_DELAY * 1000]
    assert got["floor"] == 0


CLOSE_CODES = [None, 1000, 1001, 1006, 1008, 1009, 1011, 1012, 4000, 4001, 4002, 4003, 4499, 4500, 4501, 4502, 4503,
               4504, 4999, 5000]


def test_close_code_table_is_one_table() -> None:
    from pushgate.client import Action, close_code_action
    from pushgate.errors import CloseCode, close_action

    assert [close_action(c) for c in (1012, 4002)] == ["now", "now"]
    assert [close_action(c) for c in (1008, 4500, 4501, 4999)] == ["stop"] * 4
    assert [close_action(c) for c in (None, 1000, 1006, 1011, 4000, 4001, 4003, 4499, 5000)] == ["backoff"] * 9
    assert all(close_code_action(c) == Action(close_action(c)) for c in CLOSE_CODES)
    assert [c for c in CloseCode if not c.reconnect] == [
        CloseCode.POLICY_VIOLATION, CloseCode.DISCONNECTED, CloseCode.PROTOCOL_VIOLATION,
        CloseCode.BAD_REQUEST, CloseCode.UNAUTHORIZED, CloseCode.FORBIDDEN]


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_pushgate_js_follows_the_same_close_code_table() -> None:
    from pushgate.errors import close_action

    codes = [c for c in CLOSE_CODES if c is not None]
    script = f"const P = require({json.dumps(str(JS))}); console.log(JSON.stringify({codes}.map(P.closeCodeAction)));"
    out = subprocess.run(["node", "-e", script], capture_output=True, text=True, check=True, timeout=30)
    assert json.loads(out.stdout) == [close_action(c) for c in codes]


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_pushgate_js_gives_up_on_the_same_refused_handshakes() -> None:
    from pushgate.client import handshake_is_fatal

    statuses = [400, 401, 403, 404, 405, 408, 410, 425, 429, 451, 499, 500, 502, 503, 504, 301]
    script = (f"const P = require({json.dumps(str(JS))}); "
              f"console.log(JSON.stringify({statuses}.map(P.handshakeIsFatal)));")
    out = subprocess.run(["node", "-e", script], capture_output=True, text=True, check=True, timeout=30)
    assert json.loads(out.stdout) == [handshake_is_fatal(s) for s in statuses]
