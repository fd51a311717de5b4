"""When to refresh a token, without I/O: read a JWT's ``exp`` (unverified) and pick the moment.

The client never verifies a token (it has no key, and the server does that); it only reads the
``exp`` claim to know when to ask its token provider for a new one and send it as a ``refresh``
command before the server closes the connection with 4005. ``pushgate.js`` has the same two
functions (``tokenExpiry``, ``refreshDelay``) with the same rule.
"""

from __future__ import annotations

import base64
import binascii
import math

import msgspec

__all__ = ["refresh_delay", "token_expiry"]

#: Refresh this long before ``exp`` at the latest (clock skew, a slow token provider, a round trip).
REFRESH_MARGIN = 30.0
#: ... or at this fraction of the remaining lifetime, whichever is sooner ...
REFRESH_FRACTION = 0.85
#: ... but never before this fraction: a short-lived token must not be refreshed in a busy loop.
REFRESH_FLOOR = 0.5


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT (Unix seconds), read without verifying; None if there is none."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        claims = msgspec.json.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, int | float) and not isinstance(exp, bool) and math.isfinite(exp):
        return float(exp)
    return None


def refresh_delay(exp: float, now: float) -> float:
    """Seconds from ``now`` until the refresh of a token expiring at ``exp``.

    85% of the remaining lifetime or 30 s before ``exp``, whichever is sooner, but not sooner than
    half the remaining lifetime: a 1 h token is refreshed 9 min before it expires, a 2 min token
    30 s before, a 3 s token after 1.5 s.
    """
    remaining = exp - now
    if remaining <= 0:
        return 0.0
    return max(min(REFRESH_FRACTION * remaining, remaining - REFRESH_MARGIN), REFRESH_FLOOR * remaining)
