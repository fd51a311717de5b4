"""Who may connect and what they may do: JWT (HS256, RS256, ES256), dev mode, origins,
namespace and token permissions, and the HTTP API key. Every test runs a real server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pushgate.errors import CloseCode

from .conftest import Running, ServerFactory

SECRET = "test-secret-that-is-long-enough-for-hs256!"


def hs256(claims: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


def claims(sub: str = "alice", **extra: Any) -> dict[str, Any]:
    return {"sub": sub, "exp": int(time.time()) + 300, **extra}


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forged(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    """A token built by hand, as an attacker would (PyJWT refuses to make these)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    sig = b"" if key is None else hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(sig)}"


def public_pem(private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


async def refused(running: Running, query: str = "", **kwargs: Any) -> int:
    """Try a WebSocket handshake that must fail; the HTTP status it failed with."""
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await running.client(query, **kwargs)
    return info.value.status


async def refused_browser(running: Running, query: str, origin: str) -> int | None:
    """A browser's failed handshake (it sends an Origin): upgraded, then the close code it got."""
    async with aiohttp.ClientSession() as s, s.ws_connect(
            running.ws_url + (f"?{query}" if query else ""), origin=origin) as ws:
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.CLOSE, msg
        return ws.close_code


async def handshake_body(running: Running, query: str = "", headers: dict[str, str] | None = None
                         ) -> tuple[int, Any]:
    """Status and JSON body of a refused upgrade request (the body a non-browser client can read)."""
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode()}
    async with aiohttp.ClientSession() as s, s.get(
        running.ws_url.replace("ws://", "http://") + (f"?{query}" if query else ""),
        headers={**upgrade, **(headers or {})},
    ) as r:
        return r.status, await r.json(content_type=None)


# -- JWT HS256 ----------------------------------------------------------------------------------

async def test_hs256_token_in_query_identifies_the_user(make_server: ServerFactory) -> None:
    running = await make_server(jwt_secret=SECRET)
    client = await running.client(f"token={hs256(claims('alice'))}")
    assert client.welcome["user"] == "alice"
    await client.ok({"type": "subscribe", "channel": "news"})


async def test_hs256_token_in_bearer_header(make_server: ServerFactory) -> None:
    running = await make_server(jwt_secret=SECRET)
    client = await running.client(headers={"Authorization": f"Bearer {hs256(claims('bob'))}"})
    assert client.welcome["user"] == "bob"


async def test_a_user_in_the_query_is_ignored_in_jwt_mode(make_server: ServerFactory) -> None:
    running = await make_server(jwt_secret=SECRET)
    client = await running.client(f"token={hs256(claims('alice'))}&user=mallory")
    assert client.welcome["user"] == "alice"
    assert await refused(running, "user=mallory") == 401


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(None, id="missing"),
        pytest.param(hs256(claims(), secret="another-secret-of-sufficient-length!!"), id="bad-signature"),
        pytest.param(hs256({"sub": "alice", "exp": int(time.time()) - 60}), id="expired"),
        pytest.param(forged({"alg": "none", "typ": "JWT"}, claims(), None), id="alg-none"),
        pytest.param(forged({"alg": "HS512", "typ": "JWT"}, claims(), SECRET.encode()), id="other-hmac-alg"),
        pytest.param(hs256({"exp": int(time.time()) + 300}), id="no-sub"),
        pytest.param(hs256(claims("bad user")), id="invalid-sub"),
        pytest.param(hs256(claims(channels="news")), id="channels-not-a-list"),
        pytest.param("not.a.jwt", id="garbage"),
    ],
)
async def test_bad_tokens_are_refused_with_401(make_server: ServerFactory, token: str | None) -> None:
    running = await make_server(jwt_secret=SECRET)
    assert await refused(running, f"token={token}" if token else "") == 401
    assert await refused(running, headers={"Authorization": f"Bearer {token}"} if token else {}) == 401


async def test_refused_handshake_explains_in_json(make_server: ServerFactory) -> None:
    running = await make_server(jwt_secret=SECRET)
    status, body = await handshake_body(running, f"token={hs256({'sub': 'a', 'exp': 1})}")
    assert status == 401
    assert body["error"]["code"] == "unauthorized"
    assert "expired" in body["error"]["message"]
    # the server keeps serving good tokens
    assert (await running.client(f"token={hs256(claims())}")).welcome["user"] == "alice"


# -- JWT with public keys ------------------------------------------------------------------------

async def test_rs256_public_key_file(make_server: ServerFactory, tmp_path: Path,
                                     rsa_key: rsa.RSAPrivateKey) -> None:
    pem = tmp_path / "rsa.pem"
    pem.write_bytes(public_pem(rsa_key))
    running = await make_server(jwt_public_key=str(pem))

    good = jwt.encode(claims("carol"), rsa_key, algorithm="RS256")
    assert (await running.client(f"token={good}")).welcome["user"] == "carol"

    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert await refused(running, f"token={jwt.encode(claims(), other_key, algorithm='RS256')}") == 401
    # a token may not pick a weaker RSA variant or any other algorithm than the pinned one
    ps = jwt.encode(claims(), rsa_key, algorithm="PS256")
    assert await refused(running, f"token={ps}") == 401


async def test_rs256_refuses_hs256_signed_with_the_public_key(
    make_server: ServerFactory, tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """Algorithm confusion: the public key is public, so an HMAC made with it proves nothing."""
    pem_bytes = public_pem(rsa_key)
    pem = tmp_path / "rsa.pem"
    pem.write_bytes(pem_bytes)
    running = await make_server(jwt_public_key=str(pem))
    for key in (pem_bytes, pem_bytes.strip()):
        token = forged({"alg": "HS256", "typ": "JWT"}, claims("mallory"), key)
        assert await refused(running, f"token={token}") == 401
    assert await refused(running, f"token={forged({'alg': 'none'}, claims('mallory'), None)}") == 401


async def test_es256_public_key_file(make_server: ServerFactory, tmp_path: Path,
                                     ec_key: ec.EllipticCurvePrivateKey,
                                     rsa_key: rsa.RSAPrivateKey) -> None:
    pem = tmp_path / "ec.pem"
    pem.write_bytes(public_pem(ec_key))
    running = await make_server(jwt_public_key=str(pem))

    good = jwt.encode(claims("dave"), ec_key, algorithm="ES256")
    assert (await running.client(f"token={good}")).welcome["user"] == "dave"
    assert await refused(running, f"token={jwt.encode(claims(), rsa_key, algorithm='RS256')}") == 401
    other = ec.generate_private_key(ec.SECP256R1())
    assert await refused(running, f"token={jwt.encode(claims(), other, algorithm='ES256')}") == 401


async def test_public_key_given_as_pem_text(make_server: ServerFactory, ec_key: ec.EllipticCurvePrivateKey
                                            ) -> None:
    running = await make_server(jwt_public_key=public_pem(ec_key).decode())
    good = jwt.encode(claims("erin"), ec_key, algorithm="ES256")
    assert (await running.client(f"token={good}")).welcome["user"] == "erin"


# -- audience and issuer -------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("extra", "accepted"),
    [
        ({"aud": "pushgate", "iss": "https://auth.example"}, True),
        ({"aud": ["other", "pushgate"], "iss": "https://auth.example"}, True),
        ({"iss": "https://auth.example"}, False),  # aud missing
        ({"aud": "other", "iss": "https://auth.example"}, False),
        ({"aud": "pushgate"}, False),  # iss missing
        ({"aud": "pushgate", "iss": "https://evil.example"}, False),
    ],
)
async def test_audience_and_issuer_are_enforced(make_server: ServerFactory, extra: dict[str, Any],
                                                accepted: bool) -> None:
    running = await make_server(jwt_secret=SECRET, jwt_audience="pushgate", jwt_issuer="https://auth.example")
    query = f"token={hs256(claims('alice', **extra))}"
    if accepted:
        assert (await running.client(query)).welcome["user"] == "alice"
    else:
        assert await refused(running, query) == 401


async def test_aud_claim_is_not_checked_when_no_audience_is_configured(make_server: ServerFactory) -> None:
    running = await make_server(jwt_secret=SECRET)
    client = await running.client(f"token={hs256(claims('alice', aud='whatever'))}")
    assert client.welcome["user"] == "alice"


# -- what a token allows -------------------------------------------------------------------------

async def test_channels_claim_limits_subscriptions(make_server: ServerFactory) -> None:
    running = await make_server(jwt_secret=SECRET)
    client = await running.client(f"token={hs256(claims(channels=['news', 'chat:*']))}")
    await client.ok({"type": "subscribe", "channel": "news"})
    await client.ok({"type": "subscribe", "channel": "chat:room1"})
    for channel in ("secret", "newsroom", "chat"):
        reply = await client.request({"type": "subscribe", "channel": channel})
        assert reply["type"] == "error" and reply["code"] == "permission_denied", reply
    # the refusal leaves the connection usable and subscribed where it was allowed
    await client.ok({"type": "unsubscribe", "channel": "news"})


async def test_empty_channels_claim_allows_nothing(make_server: ServerFactory) -> None:
    running = await make_server(jwt_secret=SECRET)
    client = await running.client(f"token={hs256(claims(channels=[]))}")
    reply = await client.request({"type": "subscribe", "channel": "news"})
    assert reply["code"] == "permission_denied"


async def test_client_publish_refused_in_jwt_mode_unless_namespace_allows(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    conf = tmp_path / "pushgate.toml"
    conf.write_text("[namespaces.chat]\npublish = true\n")
    running = await make_server(jwt_secret=SECRET, config_file=str(conf))
    client = await running.client(f"token={hs256(claims())}")

    reply = await client.request({"type": "publish", "channel": "news", "data": 1})
    assert reply["type"] == "error" and reply["code"] == "permission_denied"

    await client.ok({"type": "subscribe", "channel": "chat:room1"})
    await client.ok({"type": "publish", "channel": "chat:room1", "data": {"text": "hi"}})
    msg = await client.next("message")
    assert msg["channel"] == "chat:room1" and msg["data"] == {"text": "hi"}


async def test_authenticated_namespace_refuses_anonymous(make_server: ServerFactory, tmp_path: Path) -> None:
    conf = tmp_path / "pushgate.toml"
    conf.write_text('[namespaces.private]\nsubscribe = "authenticated"\n')
    running = await make_server(config_file=str(conf))

    anonymous = await running.client()
    assert anonymous.welcome["user"] is None
    reply = await anonymous.request({"type": "subscribe", "channel": "private:inbox"})
    assert reply["code"] == "permission_denied"
    await anonymous.ok({"type": "subscribe", "channel": "news"})  # other namespaces stay open

    alice = await running.client("user=alice")
    await alice.ok({"type": "subscribe", "channel": "private:inbox"})


# -- dev mode ------------------------------------------------------------------------------------

async def test_dev_mode_trusts_the_user_parameter(server: Running) -> None:
    assert (await server.client("user=alice")).welcome["user"] == "alice"
    assert (await server.client()).welcome["user"] is None
    # a token means nothing without a key: the connection is still anonymous/user-named
    assert (await server.client(f"token={hs256(claims('mallory'))}")).welcome["user"] is None


@pytest.mark.parametrize("user", ["bad%20user", "a%22b", "x" * 256, "caf%C3%A9"])
async def test_dev_mode_invalid_user_id_is_400(server: Running, user: str) -> None:
    assert await refused(server, f"user={user}") == 400


# -- origins -------------------------------------------------------------------------------------

ORIGINS = "https://app.example.com,https://*.example.org"


@pytest.mark.parametrize("origin", ["https://app.example.com", "https://www.example.org"])
async def test_allowed_origin_connects(make_server: ServerFactory, origin: str) -> None:
    running = await make_server(allowed_origins=ORIGINS)
    client = await running.client("user=alice", origin=origin)
    assert client.welcome["user"] == "alice"


@pytest.mark.parametrize(
    "origin",
    ["https://evil.example.com", "http://app.example.com", "https://example.org", "https://app.example.com.evil.io"],
)
async def test_other_origin_is_refused_with_4504(make_server: ServerFactory, origin: str) -> None:
    running = await make_server(allowed_origins=ORIGINS)
    assert await refused_browser(running, "user=alice", origin) == CloseCode.FORBIDDEN


async def test_missing_origin_is_403_when_origins_are_configured(make_server: ServerFactory) -> None:
    running = await make_server(allowed_origins=ORIGINS)
    status, body = await handshake_body(running, "user=alice")
    assert status == 403 and body["error"]["code"] == "forbidden"
    assert await refused(running, "user=alice") == 403


async def test_origin_is_checked_before_the_token(make_server: ServerFactory) -> None:
    running = await make_server(jwt_secret=SECRET, allowed_origins=ORIGINS)
    token = hs256(claims())
    assert await refused_browser(running, f"token={token}", "https://evil.example.com") == CloseCode.FORBIDDEN
    client = await running.client(f"token={token}", origin="https://app.example.com")
    assert client.welcome["user"] == "alice"


# -- HTTP API key --------------------------------------------------------------------------------

async def test_api_key_is_required_when_configured(make_server: ServerFactory) -> None:
    running = await make_server(api_key="k")
    status, body = await running.api("GET", "/api/online")
    assert status == 401 and body["error"]["code"] == "unauthorized"
    assert (await running.api("GET", "/api/online", headers={"Authorization": "Bearer nope"}))[0] == 401
    assert (await running.api("GET", "/api/online", headers={"Authorization": "k"}))[0] == 401
    status, body = await running.api("GET", "/api/online", headers={"Authorization": "Bearer k"})
    assert status == 200 and body["connections"] == 0

    status, _ = await running.api("POST", "/api/publish", {"channel": "news", "data": 1})
    assert status == 401
    status, body = await running.api("POST", "/api/publish", {"channel": "news", "data": 1},
                                     headers={"Authorization": "Bearer k"})
    assert status == 200 and body["offset"] == 1


async def test_health_endpoints_need_no_api_key(make_server: ServerFactory) -> None:
    running = await make_server(api_key="k")
    assert (await running.api("GET", "/healthz"))[0] == 200
    assert (await running.api("GET", "/readyz"))[0] == 200


async def test_without_api_key_loopback_may_call_the_api(server: Running) -> None:
    """Without a key only loopback peers may call /api (403 otherwise); a test client is on
    127.0.0.1, so only the allowed side is observable here."""
    status, body = await server.api("GET", "/api/online")
    assert status == 200 and body["connections"] == 0
    status, body = await server.api("POST", "/api/publish", {"channel": "news", "data": 1})
    assert status == 200 and body["offset"] == 1
