// Peer: Node.js + the `ws` package (single process, single thread), same contract as pushgate:
//   GET /healthz -> 200, GET /ws -> welcome frame then broadcasts,
//   POST /api/broadcast {"data": <json>} -> sends {"type":"broadcast","data":<json>} to every client.
// `ws` must be resolvable (bench/fanout.py installs it into a cache dir and sets NODE_PATH).
// Run: NODE_PATH=/path/node_modules node bench/peers/ws_peer.js --host 127.0.0.1 --port 8004
'use strict';
const http = require('http');
const { WebSocketServer, WebSocket } = require('ws');

const args = process.argv.slice(2);
const opt = (name, dflt) => { const i = args.indexOf(name); return i >= 0 ? args[i + 1] : dflt; };
const host = opt('--host', '127.0.0.1');
const port = parseInt(opt('--port', '8004'), 10);

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/healthz') { res.end('ok'); return; }
  if (req.method === 'POST' && req.url === '/api/broadcast') {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = JSON.parse(Buffer.concat(chunks).toString());
      const text = JSON.stringify({ type: 'broadcast', data: body.data });
      let sent = 0;
      for (const ws of wss.clients) {
        if (ws.readyState === WebSocket.OPEN) { ws.send(text); sent++; }
      }
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ sent }));
    });
    return;
  }
  res.statusCode = 404; res.end();
});
server.on('upgrade', (req, socket, head) => {
  if (req.url !== '/ws') { socket.destroy(); return; }
  wss.handleUpgrade(req, socket, head, (ws) => {
    wss.emit('connection', ws, req);
  });
});
let nextId = 0;
wss.on('connection', (ws) => {
  ws.on('error', () => {});
  ws.send(JSON.stringify({ type: 'welcome', client: nextId++ }));
});
server.listen({ host, port, backlog: 4096 });
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
