"""JWT verification with a JWKS URL: a real local HTTP server (aiohttp on 127.0.0.1:0) serves a
key set made here with ``cryptography``; keys are cached, a rotated-in key (new ``kid``) is
fetched on first use, unknown ``kid``s and bad signatures are refused with 401, and tokens with
random ``kid``s cannot make every handshake fetch the JWKS again."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from pushgate.auth import JwksKeys
from pushgate.errors import AuthError

from .conftest import Running, ServerFactory
from .helpers import timeout


@dataclass
class Jwks:
    """A JWKS endpoint whose key set a test can change; counts how often it was fetched."""

    url: str = ""
    keys: list[dict[str, Any]] = field(default_factory=list)
    fetches: int = 0
    down: bool = False

    def publish(self, kid: str, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> None:
        algorithm = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
        jwk: dict[str, Any] = json.loads(algorithm.to_jwk(key.public_key()))
        self.keys.append({**jwk, "kid": kid, "use": "sig"})

    async def handle(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.down:
            return web.Response(status=503)
        return web.json_response({"keys": self.keys})


@pytest.fixture
async def jwks() -> AsyncIterator[Jwks]:
    endpoint = Jwks()
    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", endpoint.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    endpoint.url = f"http://127.0.0.1:{port}/.well-known/jwks.json"
    yield endpoint
    await runner.cleanup()


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def signed(key: Any, kid: str | None, sub: str = "alice", algorithm: str = "RS256") -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 300}, key, algorithm=algorithm, headers=headers)


def hmac_forged(secret: bytes, kid: str) -> str:
    """A HS256 token made by hand, as an attacker would (PyJWT refuses a JWK as HMAC secret)."""
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    signing_input = f"{part({'alg': 'HS256', 'kid': kid})}.{part({'sub': 'mallory', 'exp': int(time.time()) + 60})}"
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"


async def status(running: Running, token: str) -> int:
    """101 when the handshake with ``token`` is accepted, else the HTTP status it was refused with."""
    try:
        client = await running.client(f"token={token}")
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status
    await client.close()
    running.clients.remove(client)
    return 101


async def test_tokens_verify_against_the_jwks_and_a_rotated_key_is_fetched(
    make_server: ServerFactory, jwks: Jwks
) -> None:
    first = rsa_key()
    jwks.publish("k1", first)
    running = await make_server(jwks_url=jwks.url)
    assert jwks.fetches == 0  # fetched on first use, not at start-up

    client = await running.client(f"token={signed(first, 'k1')}")
    assert client.welcome["user"] == "alice"
    assert await status(running, signed(first, "k1", sub="bob")) == 101
    assert jwks.fetches == 1  # cached

    # rotation: the identity provider adds k2 and drops k1
    second = ec.generate_private_key(ec.SECP256R1())
    jwks.keys.clear()
    jwks.publish("k2", second)
    assert await status(running, signed(second, "k2", algorithm="ES256")) == 101
    assert jwks.fetches == 2  # one refetch, for the unknown kid
    # the dropped key no longer verifies (the new set replaced it)
    assert await status(running, signed(first, "k1")) == 401


async def test_unknown_kid_bad_signature_and_algorithm_tricks_are_401(make_server: ServerFactory,
                                                                     jwks: Jwks) -> None:
    key = rsa_key()
    jwks.publish("k1", key)
    running = await make_server(jwks_url=jwks.url)
    assert await status(running, signed(key, "k1")) == 101

    intruder = rsa_key()
    assert await status(running, signed(intruder, "k9")) == 401  # unknown kid
    assert await status(running, signed(intruder, "k1")) == 401  # known kid, wrong key
    assert await status(running, signed(key, None)) == 401  # no kid: no key to pick
    # an HMAC made with the public JWK as secret proves nothing: the key pins RS256
    assert await status(running, hmac_forged(json.dumps(jwks.keys[0]).encode(), "k1")) == 401
    assert await status(running, "not.a.jwt") == 401
    # the server keeps serving good tokens
    assert await status(running, signed(key, "k1", sub="carol")) == 101


async def test_random_kids_do_not_hammer_the_jwks(make_server: ServerFactory, jwks: Jwks) -> None:
    key = rsa_key()
    jwks.publish("k1", key)
    running = await make_server(jwks_url=jwks.url)
    assert await status(running, signed(key, "k1")) == 101
    intruder = rsa_key()
    for i in range(5):
        assert await status(running, signed(intruder, f"random-{i}")) == 401
    # one refetch for the first unknown kid, then a cooldown
    assert jwks.fetches == 2


async def test_a_jwks_that_cannot_be_fetched_is_503_not_401(make_server: ServerFactory, jwks: Jwks) -> None:
    key = rsa_key()
    jwks.publish("k1", key)
    jwks.down = True
    running = await make_server(jwks_url=jwks.url)
    assert await status(running, signed(key, "k1")) == 503  # our side's outage: clients retry
    assert await status(running, signed(key, "k1")) == 503  # at once, without queueing a fetch
    assert jwks.fetches == 1
    jwks.down = False
    deadline = time.monotonic() + timeout(5)
    while await status(running, signed(key, "k1")) != 101:
        assert time.monotonic() < deadline, "not accepted after the JWKS came back"
        await asyncio.sleep(0.2)
    assert jwks.fetches == 2


async def test_hmac_keys_in_a_jwks_are_ignored(jwks: Jwks) -> None:
    """A shared secret published in a JWKS would let anyone sign: such keys never verify."""
    jwks.keys.append({"kty": "oct", "kid": "shared", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"})
    keys = JwksKeys(jwks.url)
    token = jwt.encode({"sub": "mallory"}, b"secret-secret-secret-secret-secret", algorithm="HS256",
                       headers={"kid": "shared"})
    with pytest.raises(AuthError, match="unknown signing key"):
        await keys.key_for(token)


async def test_an_old_key_set_is_refetched_and_an_outage_keeps_the_known_keys(jwks: Jwks) -> None:
    """After LIFESPAN the set is fetched again: a revoked key stops verifying; if the identity
    provider is down then, the known keys keep working (nobody is locked out)."""
    first, second = rsa_key(), rsa_key()
    jwks.publish("k1", first)
    jwks.publish("k2", second)
    keys = JwksKeys(jwks.url)
    keys.LIFESPAN = 0.2
    assert (await keys.key_for(signed(first, "k1"))).key_id == "k1"
    assert jwks.fetches == 1

    await asyncio.sleep(0.3)
    jwks.down = True
    assert (await keys.key_for(signed(first, "k1"))).key_id == "k1"  # stale, refetch failed: kept
    assert jwks.fetches == 2

    keys._failed_at = -math.inf  # skip the post-failure wait rather than sleep through it
    jwks.down = False
    jwks.keys.pop(0)  # k1 revoked
    with pytest.raises(AuthError, match="unknown signing key"):
        await keys.key_for(signed(first, "k1"))
    assert (await keys.key_for(signed(second, "k2"))).key_id == "k2"
