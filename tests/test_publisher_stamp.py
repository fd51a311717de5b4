"""Who published a channel message: the server stamps a client's publication with its user id
("from"), through live delivery, recovery and the history API, on memory and Redis."""

from __future__ import annotations

from pathlib import Path

from pushgate.protocol.jsonwire import message_frame, stamp, unstamp

from .conftest import Running, ServerFactory


def test_stamp_round_trip_and_plain_json_untouched() -> None:
    assert unstamp(stamp("alice", b'{"t":1}')) == ("alice", b'{"t":1}')
    assert unstamp(b'{"t":1}') == (None, b'{"t":1}')
    assert unstamp(b'"=not a stamp"') == (None, b'"=not a stamp"')  # JSON never starts with "="
    assert unstamp(b"=\xff\n1") == ("\ufffd", b"1")  # a corrupt entry from a broker does not raise
    frame = message_frame("c", stamp("bob", b"[1]"), 3, "e")
    assert frame == b'{"type":"message","channel":"c","data":[1],"offset":3,"epoch":"e","from":"bob"}'


async def test_client_publications_carry_their_publisher(server: Running) -> None:
    alice = await server.client("user=alice")
    anon = await server.client()
    watcher = await server.client("user=watcher")
    await watcher.ok({"type": "subscribe", "channel": "room"})
    await alice.ok({"type": "publish", "channel": "room", "data": {"text": "hi"}})
    await anon.ok({"type": "publish", "channel": "room", "data": "anonymous"})
    await server.api("POST", "/api/publish", {"channel": "room", "data": "from a backend"})
    got = await watcher.messages(3)
    assert [(m["data"], m.get("from")) for m in got] == [
        ({"text": "hi"}, "alice"), ("anonymous", None), ("from a backend", None)]

    # recovery and the history API keep it
    late = await server.client("user=late")
    await late.ok({"type": "subscribe", "channel": "room", "since": {"epoch": got[0]["epoch"], "offset": 0}})
    recovered = await late.messages(3)
    assert [m.get("from") for m in recovered] == ["alice", None, None]
    status, body = await server.api("GET", "/api/history/room")
    assert status == 200
    assert [(p["data"], p.get("from")) for p in body["publications"]] == [
        ({"text": "hi"}, "alice"), ("anonymous", None), ("from a backend", None)]


async def test_a_namespace_can_leave_publications_unstamped(make_server: ServerFactory, tmp_path: Path) -> None:
    cfg = tmp_path / "ns.toml"
    cfg.write_text("[namespaces.quiet]\npublish = true\nstamp_publisher = false\n")
    server = await make_server(config_file=str(cfg))
    alice = await server.client("user=alice")
    await alice.ok({"type": "subscribe", "channel": "quiet:x"})
    await alice.ok({"type": "subscribe", "channel": "loud"})
    await alice.ok({"type": "publish", "channel": "quiet:x", "data": 1})
    await alice.ok({"type": "publish", "channel": "loud", "data": 2})
    first, second = await alice.messages(2)
    assert "from" not in first and second["from"] == "alice"


def test_the_python_client_reads_the_publisher() -> None:
    from pushgate.client._events import parse_message

    stamped = parse_message({"type": "message", "channel": "c", "data": 1, "offset": 2, "epoch": "e", "from": "al"})
    plain = parse_message({"type": "message", "channel": "c", "data": 1, "offset": 2, "epoch": "e"})
    assert stamped is not None and stamped.sender == "al"
    assert plain is not None and plain.sender is None
