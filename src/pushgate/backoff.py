"""The one reconnect backoff policy of pushgate: exponential growth, full jitter, a cap.

Every reconnect loop in the project follows it: the Python client (:mod:`pushgate.client`),
the browser client (``static/pushgate.js``, ``backoffDelay``), the server's Redis pub/sub links
and the cluster slot-map refresh (:mod:`pushgate.backends.redis`). The formula, for the n-th
delay of a run of failures (n = 0, 1, 2, ...)::

    cap(n)   = min(max_delay, min_delay * factor ** n)
    delay(n) = uniform(0, cap(n))

with ``factor`` = 2 unless a caller says otherwise. Defaults: ``min_delay`` = 0.5 s,
``max_delay`` = 20 s (pushgate.js: ``minDelay`` = 500 ms, ``maxDelay`` = 20000 ms). Server-side
links sit next to their Redis and pass a tighter window (0.1 s .. 5 s, see ``LinkOptions``).

Why this shape:

* The first delay is already random in ``[0, min_delay]``: when a node restarts, every client
  (or every node that lost the same Redis) notices in the same millisecond, and a constant first
  delay would bring them all back in one wave.
* Full jitter (the whole window, not its upper half) spreads each later wave over the whole
  window too; the expected delay is ``cap(n) / 2``, the load on the server is flat.
* The cap stops the growth at ``max_delay``; the generator runs forever without overflowing.
* A caller restarts the generator (calls :func:`backoff` again) once a connection has been
  healthy for a while (the clients use ``max_delay``), so one old outage does not slow the next
  reconnect.

Pure Python with no pushgate imports: the client imports it without loading any server code.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

__all__ = ["DEFAULT_FACTOR", "DEFAULT_MAX_DELAY", "DEFAULT_MIN_DELAY", "backoff", "backoff_cap", "check_window"]

DEFAULT_MIN_DELAY = 0.5
DEFAULT_MAX_DELAY = 20.0
DEFAULT_FACTOR = 2.0


def check_window(min_delay: float, max_delay: float, factor: float = DEFAULT_FACTOR) -> None:
    """Raise ValueError unless ``0 < min_delay <= max_delay`` and ``factor >= 1``."""
    if not 0 < min_delay <= max_delay:
        raise ValueError("need 0 < min_delay <= max_delay")
    if factor < 1:
        raise ValueError("factor must be >= 1")


def backoff_cap(attempt: int, min_delay: float, max_delay: float, factor: float = DEFAULT_FACTOR) -> float:
    """``cap(attempt)`` of the module docstring: the upper bound of the attempt's delay.

    Multiplied step by step and stopped at ``max_delay``, so a huge ``attempt`` cannot overflow.
    """
    cap = min_delay
    for _ in range(max(0, attempt)):
        if cap >= max_delay:
            break
        cap *= factor
    return min(cap, max_delay)


def backoff(
    min_delay: float = DEFAULT_MIN_DELAY,
    max_delay: float = DEFAULT_MAX_DELAY,
    *,
    factor: float = DEFAULT_FACTOR,
    rng: random.Random | None = None,
) -> Iterator[float]:
    """Reconnect delays in seconds, forever: ``uniform(0, cap(n))`` for n = 0, 1, 2, ...

    ``rng`` makes the sequence reproducible in tests. Raises ValueError (on the first ``next``)
    for a window that is not ``0 < min_delay <= max_delay`` or a ``factor`` below 1.
    """
    check_window(min_delay, max_delay, factor)
    draw = rng.uniform if rng is not None else random.uniform
    cap = min_delay
    while True:
        yield draw(0.0, cap)
        cap = min(max_delay, cap * factor)
