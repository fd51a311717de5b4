"""An embedding application for ``pushgate serve --app tests.sample_app:app`` (see test_hooks.py)."""

from __future__ import annotations

from typing import Any

import pushgate
from pushgate import ClientInfo

app = pushgate.App()


@app.on_connect
def refuse_mallory(client: ClientInfo) -> None:
    if client.user == "mallory":
        raise pushgate.Reject("mallory is banned")


@app.on_publish
async def stamp(client: ClientInfo, channel: str, data: Any) -> Any:
    return {"text": data, "by": client.user}


@app.rpc("echo")
async def echo(client: ClientInfo, data: Any) -> Any:
    return {"echo": data, "user": client.user, "transport": client.transport}


@app.rpc("announce")
async def announce(client: ClientInfo, data: Any) -> Any:
    position = await app.publish("announcements", data)
    return {"offset": position.offset}


def factory() -> pushgate.App:
    """``--app tests.sample_app:factory``: a callable returning an App is accepted too."""
    return app


not_an_app = object()
