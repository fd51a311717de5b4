// Peer: uWebSockets.js through the npm package `uwebsockets` 3.0.6 (a third-party repackaging of the
// uWebSockets.js binaries: a benchmark peer only, never a pushgate dependency; bench/lib/targets.py
// installs it into a cache and runs this file as the unprivileged user `pgbench`).
// Same contract as pushgate:
//   GET /healthz -> 200, GET /ws -> welcome frame then broadcasts,
//   POST /api/broadcast {"data": <json>} -> {"type":"broadcast","data":<json>} to every client.
// Broadcast is uWS's own fan-out: every socket subscribes to one topic and the trigger calls
// app.publish() -- the idiomatic (and fastest) way to reach all sockets in uWS.
// maxBackpressure 1 MiB: a socket further behind is skipped by publish (counted as loss by the
// benchmark); pushgate closes such a socket at 256 KiB instead.
// Run: NODE_PATH=/path/node_modules node uws_peer.js --host 127.0.0.1 --port 8005
'use strict';
const uWS = require('uwebsockets');

const args = process.argv.slice(2);
const opt = (name, dflt) => { const i = args.indexOf(name); return i >= 0 ? args[i + 1] : dflt; };
const host = opt('--host', '127.0.0.1');
const port = parseInt(opt('--port', '8005'), 10);
const TOPIC = 'all';
let nextId = 0;

const app = uWS.App();
app.ws('/ws', {
  compression: uWS.DISABLED,
  maxPayloadLength: 64 * 1024,
  maxBackpressure: 1024 * 1024,
  idleTimeout: 120,
  sendPingsAutomatically: true,
  open: (ws) => {
    ws.subscribe(TOPIC);
    ws.send(JSON.stringify({ type: 'welcome', client: nextId++ }), false);
  },
  message: () => {},
});
app.get('/healthz', (res) => { res.end('ok'); });
app.post('/api/broadcast', (res) => {
  const chunks = [];
  res.onAborted(() => { res.aborted = true; });
  res.onData((chunk, isLast) => {
    chunks.push(Buffer.from(chunk)); // the ArrayBuffer is only valid during this callback
    if (!isLast) return;
    let text;
    try {
      text = JSON.stringify({ type: 'broadcast', data: JSON.parse(Buffer.concat(chunks).toString()).data });
    } catch (e) {
      if (!res.aborted) res.cork(() => { res.writeStatus('400 Bad Request').end('bad json'); });
      return;
    }
    app.publish(TOPIC, text, false);
    if (!res.aborted) res.cork(() => { res.writeHeader('content-type', 'application/json').end('{}'); });
  });
});
app.any('/*', (res) => { res.writeStatus('404 Not Found').end(); });
app.listen(host, port, (token) => {
  if (!token) { console.error(`cannot listen on ${host}:${port}`); process.exit(1); }
});
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
