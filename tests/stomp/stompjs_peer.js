// @stomp/stompjs 7 under Node against pushgate (driven by tests/stomp/test_interop.py).
// Usage: node stompjs_peer.js <ws-url> ; NODE_PATH names a node_modules with @stomp/stompjs and ws.
// Prints one JSON object per line: {"event": "connected" | "message" | "receipt" | "error" | "done", ...}.
'use strict';
const { Client } = require('@stomp/stompjs');
const WebSocket = require('ws');

const url = process.argv[2];
const print = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const messages = [];

const client = new Client({
  webSocketFactory: () => new WebSocket(url, ['v10.stomp', 'v11.stomp', 'v12.stomp']),
  connectHeaders: { login: 'jsuser' },
  heartbeatIncoming: 1000,
  heartbeatOutgoing: 1000,
  reconnectDelay: 0,
  splitLargeFrames: true,        // one frame across several WebSocket messages
  maxWebSocketChunkSize: 64,
});

client.onConnect = (frame) => {
  print({ event: 'connected', headers: frame.headers });
  const onMessage = (m) => {
    messages.push({ destination: m.headers.destination, body: m.body, offset: m.headers.offset });
    print({ event: 'message', headers: m.headers, body: m.body });
    if (messages.length === 3) {
      client.deactivate().then(() => { print({ event: 'done' }); process.exit(0); });
    }
  };
  client.subscribe('/topic/js', onMessage);
  client.subscribe('/user/queue/inbox', onMessage, { ack: 'client-individual' });
  client.watchForReceipt('sub-ready', () => {
    print({ event: 'receipt', id: 'sub-ready' });
    client.publish({ destination: '/topic/js', body: JSON.stringify({ from: 'js', pad: 'x'.repeat(300) }) });
    client.publish({ destination: '/app/echo', body: JSON.stringify({ n: 7 }) });
  });
  client.subscribe('/topic/echo', onMessage, { receipt: 'sub-ready' });
};
client.onStompError = (frame) => { print({ event: 'error', headers: frame.headers, body: frame.body }); process.exit(1); };
client.activate();
setTimeout(() => { print({ event: 'timeout' }); process.exit(2); }, 15000);
