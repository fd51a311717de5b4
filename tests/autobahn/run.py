"""Run the Autobahn|Testsuite fuzzing client against pushgate's WebSocket layer and summarise it.

Usage (``.ci/run`` does this when Python 2.7 is available)::

    python tests/autobahn/run.py --wstest /path/to/py27-env/bin/wstest [--cases 1-10] [--timeout 900]

It starts ``pushgate serve`` on a free port with ``PUSHGATE_TEST_ECHO=1`` (the echo endpoint
exists only then, see ``pushgate.web.app.EchoHandler``), points ``wstest -m fuzzingclient`` at
``/_test/echo``, and writes ``report-summary.json`` (every case's verdicts, counts per verdict)
and ``report-summary.md`` next to this file; the full HTML/JSON report stays in ``--reports``
(a temporary directory unless given). Exit status 1 if any case is not OK, NON-STRICT,
INFORMATIONAL or UNIMPLEMENTED, or if its close behaviour is not OK or INFORMATIONAL.

The compression cases (12.*, 13.*) are not run: pushgate never negotiates permessage-deflate,
because a frame must be byte-identical for every subscriber (``docs/architecture.md``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ACCEPTED = {"OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED"}
ACCEPTED_CLOSE = {"OK", "INFORMATIONAL", "UNIMPLEMENTED"}
#: Cases 9.* send messages of up to 16 MiB; the echo is given room for them (the default
#: ``max_message_size`` would answer 1009, which is a limit, not a conformance result).
MAX_MESSAGE_SIZE = 16 * 1024 * 1024 + 1024


#: Why a case is not plain OK, by case-id prefix (shown in report-summary.md).
NOTES = {
    "7.1.6": "informational by design (a 256 KiB message, a close, then a ping: what is echoed before the close "
             "is the peer's choice).",
    "7.13.": "close codes 5000 and 65535 are outside RFC 6455's ranges; informational in the suite, and pushgate "
             "answers 1002.",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"pushgate exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("pushgate did not become ready")


def case_sort_key(case_id: str) -> tuple[int, ...]:
    return tuple(int(p) for p in case_id.split("."))


def summarise(index: dict[str, Any], cases: list[str], seconds: float) -> dict[str, Any]:
    behaviors = collections.Counter(v["behavior"] for v in index.values())
    closes = collections.Counter(v["behaviorClose"] for v in index.values())
    rows = {k: {"behavior": v["behavior"], "behaviorClose": v["behaviorClose"],
                "remoteCloseCode": v.get("remoteCloseCode"), "ms": v.get("duration")}
            for k, v in sorted(index.items(), key=lambda kv: case_sort_key(kv[0]))}
    failed = [k for k, v in rows.items() if v["behavior"] not in ACCEPTED or v["behaviorClose"] not in ACCEPTED_CLOSE]
    return {
        "agent": "pushgate /_test/echo (pushgate.web.lean front, pushgate.protocol.wsframe parser and writer)",
        "cases": cases,
        "excluded": ["12.*", "13.*"],
        "total": len(rows),
        "seconds": round(seconds, 1),
        "behavior": dict(sorted(behaviors.items())),
        "behaviorClose": dict(sorted(closes.items())),
        "not_accepted": failed,
        "results": rows,
    }


def compact_json(summary: dict[str, Any]) -> str:
    """Indented JSON with one line per case, so the committed file stays small and diffable."""
    head = {k: v for k, v in summary.items() if k != "results"}
    text = json.dumps(head, indent=1)[:-2]
    cases = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in summary["results"].items())
    return f"{text},\n \"results\": {{\n{cases}\n }}\n}}\n"


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        "# Autobahn|Testsuite: pushgate's WebSocket layer",
        "",
        f"`wstest -m fuzzingclient` against `/_test/echo` (`PUSHGATE_TEST_ECHO=1`), cases "
        f"{', '.join(summary['cases'])}; compression cases 12.* and 13.* excluded (pushgate never "
        "negotiates permessage-deflate). Regenerate with `python tests/autobahn/run.py --wstest ...`.",
        "",
        f"{summary['total']} cases in {summary['seconds']} s.",
        "",
        "| verdict | cases | close behaviour | cases |",
        "|---|---|---|---|",
    ]
    b, c = list(summary["behavior"].items()), list(summary["behaviorClose"].items())
    for i in range(max(len(b), len(c))):
        left = b[i] if i < len(b) else ("", "")
        right = c[i] if i < len(c) else ("", "")
        lines.append(f"| {left[0]} | {left[1]} | {right[0]} | {right[1]} |")
    lines += ["", "Cases not OK:", ""]
    others = [(k, v) for k, v in summary["results"].items() if v["behavior"] != "OK" or v["behaviorClose"] != "OK"]
    lines += [f"- {k}: {v['behavior']} / close {v['behaviorClose']} (peer close code {v['remoteCloseCode']})"
              for k, v in others] or ["- none"]
    notes = [(prefix, note) for prefix, note in NOTES.items() if any(k.startswith(prefix) for k, _ in others)]
    if notes:
        lines += ["", "Why:", ""] + [f"- {prefix}*: {note}" for prefix, note in notes]
    lines += ["", "Found by an earlier run and fixed: 7.9.5 (a close frame with code 1006) was FAILED / WRONG CODE, "
              "because aiohttp's reader accepts every code of its own `WSCloseCode` enum, 1006 included. The "
              "server's own parser answers 1002 to codes RFC 6455 §7.4 forbids "
              "(`pushgate.protocol.wsframe.peer_close_code_valid`); the aiohttp path (build_app mounted in another "
              "application) checks them the same way."]
    lines += ["", f"Not accepted (fail the CI step): {', '.join(summary['not_accepted']) or 'none'}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wstest", required=True, help="the wstest executable of a Python 2.7 autobahntestsuite")
    parser.add_argument("--cases", default="1-10", help="case groups, e.g. 1-10 or 1,2,5 [%(default)s]")
    parser.add_argument("--reports", default=None, help="directory for the full report [temporary]")
    parser.add_argument("--out", default=str(HERE), help="where report-summary.{json,md} go [%(default)s]")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds for the whole run [%(default)s]")
    args = parser.parse_args(argv)

    if "-" in args.cases:
        first, last = (int(x) for x in args.cases.split("-"))
        groups = list(range(first, last + 1))
    else:
        groups = [int(x) for x in args.cases.split(",")]
    cases = [f"{g}.*" for g in groups if g not in (12, 13)]
    reports = Path(args.reports or tempfile.mkdtemp(prefix="pushgate-autobahn-"))
    reports.mkdir(parents=True, exist_ok=True)

    port = free_port()
    env = {**os.environ, "PUSHGATE_TEST_ECHO": "1"}
    log_path = reports / "pushgate.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "pushgate", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--max-message-size", str(MAX_MESSAGE_SIZE), "--log-level", "warning"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        wait_ready(f"http://127.0.0.1:{port}", server, 20)
        spec = {
            "outdir": str(reports / "servers"),
            "servers": [{"agent": "pushgate", "url": f"ws://127.0.0.1:{port}/_test/echo"}],
            "cases": cases,
            "exclude-cases": ["12.*", "13.*"],
            "exclude-agent-cases": {},
        }
        spec_path = reports / "fuzzingclient.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        started = time.monotonic()
        with open(reports / "wstest.log", "wb") as wlog:
            try:
                subprocess.run([args.wstest, "-m", "fuzzingclient", "-s", str(spec_path)], cwd=reports,
                               stdout=wlog, stderr=subprocess.STDOUT, timeout=args.timeout, check=True)
            except subprocess.TimeoutExpired:
                print(f"autobahn: wstest did not finish within {args.timeout:.0f}s", file=sys.stderr)
                return 1
            except subprocess.CalledProcessError as exc:
                print(f"autobahn: wstest exited with {exc.returncode}; see {reports / 'wstest.log'}", file=sys.stderr)
                return 1
        elapsed = time.monotonic() - started
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()

    index = json.loads((reports / "servers" / "index.json").read_text())["pushgate"]
    summary = summarise(index, cases, elapsed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report-summary.json").write_text(compact_json(summary))
    (out / "report-summary.md").write_text(markdown(summary))
    print(f"autobahn: {summary['total']} cases in {elapsed:.0f}s: {summary['behavior']}, "
          f"close {summary['behaviorClose']}; full report in {reports / 'servers'}")
    if summary["not_accepted"]:
        print(f"autobahn: not accepted: {', '.join(summary['not_accepted'])}", file=sys.stderr)
    # the closing line CI reads, like a test runner's
    print(f"autobahn: {summary['total'] - len(summary['not_accepted'])} passed, {len(summary['not_accepted'])} failed")
    return 1 if summary["not_accepted"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
