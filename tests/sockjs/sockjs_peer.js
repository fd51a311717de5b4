// sockjs-client + @stomp/stompjs 7 under Node against pushgate (driven by tests/sockjs/test_interop.py).
// Usage: node sockjs_peer.js <http-url-of-the-stomp-endpoint> <transport>
// NODE_PATH names a node_modules with sockjs-client and @stomp/stompjs. <transport> is a SockJS
// transport name ('websocket', 'xhr-streaming', 'xhr-polling'): the only one the client may use,
// so with an xhr transport WebSocket is unavailable to it.
// Prints one JSON object per line: {"event": "connected" | "receipt" | "message" | "error" | "done" | "timeout", ...}.
'use strict';
const SockJS = require('sockjs-client');
const { Client } = require('@stomp/stompjs');

const [url, transport] = process.argv.slice(2);
const print = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
let sock = null;
let count = 0;

const client = new Client({
  webSocketFactory: () => (sock = new SockJS(url, null, { transports: [transport] })),
  connectHeaders: { login: 'jsuser' },
  heartbeatIncoming: 1000,
  heartbeatOutgoing: 1000,
  reconnectDelay: 0,
});

client.onConnect = (frame) => {
  print({ event: 'connected', headers: frame.headers, transport: sock && sock.transport });
  const onMessage = (m) => {
    print({ event: 'message', headers: m.headers, body: m.body });
    if (++count === 3) {
      client.deactivate().then(() => { print({ event: 'done' }); process.exit(0); });
    }
  };
  client.subscribe('/topic/js', onMessage);
  client.subscribe('/user/queue/inbox', onMessage);
  client.watchForReceipt('ready', () => {
    print({ event: 'receipt' });
    client.publish({ destination: '/topic/js', body: JSON.stringify({ from: 'js', pad: 'x'.repeat(300) }) });
  });
  client.subscribe('/topic/news', onMessage, { receipt: 'ready' });
};
client.onStompError = (frame) => { print({ event: 'error', headers: frame.headers, body: frame.body }); process.exit(1); };
client.onWebSocketClose = (ev) => { if (count < 3) { print({ event: 'error', close: ev.code, reason: ev.reason }); process.exit(1); } };
client.activate();
setTimeout(() => { print({ event: 'timeout' }); process.exit(2); }, 20000);
