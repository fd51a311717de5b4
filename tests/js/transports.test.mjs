// pushgate.js as a package (ES module, CommonJS, global), its SSE fallback, refusals a browser can
// read, and offline/online detection; against a REAL server where PUSHGATE_URL is set (see
// tests/test_js_client.py, which starts one in dev mode and one in JWT mode).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { createHmac, randomBytes } from 'node:crypto';
import * as esm from '../../src/pushgate/static/pushgate.mjs';
import PushgateDefault, { Client, closeCodeAction, handshakeIsFatal } from '../../src/pushgate/static/pushgate.mjs';

const require = createRequire(import.meta.url);
const cjs = require('../../src/pushgate/static/pushgate.js');

const BASE = (process.env.PUSHGATE_URL || '').replace(/\/+$/, '');
const JWT_BASE = (process.env.PUSHGATE_JWT_URL || '').replace(/\/+$/, '');
const JWT_SECRET = process.env.PUSHGATE_JWT_SECRET || '';
const skip = BASE ? false : 'PUSHGATE_URL not set';
const skipJwt = JWT_BASE && JWT_SECRET ? false : 'PUSHGATE_JWT_URL / PUSHGATE_JWT_SECRET not set';

const uid = (prefix) => `${prefix}_${randomBytes(4).toString('hex')}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const clients = [];
const closeAll = () => { while (clients.length) clients.pop().close(); };

async function waitFor(predicate, what, ms = 5000) {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

async function publish(channel, data, base = BASE) {
  const res = await fetch(base + '/api/publish', { method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ channel, data }) });
  const text = await res.text();
  assert.equal(res.status, 200, text);
  return JSON.parse(text);
}

/** A WebSocket that a proxy blocks: it never opens, the browser reports 1006. */
class BlockedWebSocket {
  constructor(url) {
    BlockedWebSocket.attempts.push(url);
    setTimeout(() => { if (this.onerror) this.onerror({}); if (this.onclose) this.onclose({ code: 1006, reason: '' }); }, 5);
  }
  send() { throw new Error('not open'); }
  close() {}
}
BlockedWebSocket.attempts = [];

function sign(claims) {
  const enc = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
  const input = enc({ alg: 'HS256', typ: 'JWT' }) + '.' + enc(claims);
  return input + '.' + createHmac('sha256', JWT_SECRET).update(input).digest('base64url');
}

test('one source, three ways in: named ES exports, CommonJS, the global', () => {
  assert.equal(typeof Client, 'function');
  assert.equal(Client, cjs.Client);
  assert.equal(globalThis.Pushgate.Client, Client);
  assert.equal(PushgateDefault.Client, Client);
  for (const name of ['Client', 'PushgateError', 'STATES', 'closeCodeAction', 'handshakeIsFatal', 'backoffDelay',
    'tokenExpiry', 'refreshDelay', 'version']) {
    assert.ok(name in esm, `named export ${name}`);
    assert.equal(esm[name], cjs[name], name);
  }
  assert.equal(closeCodeAction(4500), 'stop');
  assert.deepEqual([400, 401, 403, 404, 408, 429, 500, 503].map(handshakeIsFatal),
    [true, true, true, true, false, false, false, false]);
});

test('WebSocket blocked: falls back to SSE, receives, recovers, reopens for a new channel', { skip }, async (t) => {
  t.after(closeAll);
  const user = uid('sse');
  const a = uid('news');
  const b = uid('chat');
  const states = [];
  const client = new Client(BASE + '/ws', { user, WebSocket: BlockedWebSocket, minDelay: 50, maxDelay: 60000,
    onStateChange: (state, info) => states.push([state, info.code]) });
  clients.push(client);
  const got = [];
  await client.subscribe(a, (m) => got.push([m.channel, m.data]));
  assert.equal(client.transport, 'sse');
  assert.equal(client.state, 'connected');
  assert.equal(client.userId, user);
  await publish(a, 'one');
  await waitFor(() => got.length === 1, 'the first publication over SSE');
  // a new channel reopens the stream with both channels; the first recovers from its position
  const reopened = client.subscribe(b, (m) => got.push([m.channel, m.data]));
  await publish(a, 'two'); // may land while the stream reopens: recovered with since
  await reopened;
  await publish(b, 'three');
  await waitFor(() => got.length === 3, 'three publications');
  assert.deepEqual(got.slice().sort(), [[a, 'one'], [a, 'two'], [b, 'three']].sort());
  assert.deepEqual(client.position(a).offset, 2);
  await assert.rejects(client.publish(a, 'x'), (err) => err.code === 'not_supported');
  const directs = [];
  client.on('direct', (m) => directs.push(m.data));
  const res = await fetch(BASE + '/api/send', { method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ users: [user], data: 'dm' }) });
  assert.equal(res.status, 200);
  await waitFor(() => directs.length === 1, 'a direct over SSE');
  assert.ok(BlockedWebSocket.attempts.length >= 1);
});

test('a refused handshake is diagnosed: status, code and the server\'s message; no retry loop', { skip: skipJwt },
  async (t) => {
    t.after(closeAll);
    const expired = sign({ sub: 'alice', exp: Math.floor(Date.now() / 1000) - 60 });
    const infos = [];
    const errors = [];
    const client = new Client(JWT_BASE + '/ws', { token: expired, minDelay: 50, maxDelay: 100,
      onStateChange: (state, info) => infos.push(Object.assign({ state }, info)) });
    clients.push(client);
    client.on('error', (e) => errors.push(e));
    const sub = client.subscribe('news', () => {});
    await assert.rejects(sub, (err) => err.code === 'unauthorized' && err.status === 401);
    await waitFor(() => client.state === 'closed', 'closed');
    const last = infos[infos.length - 1];
    assert.equal(last.status, 401);
    assert.equal(last.error, 'unauthorized');
    assert.match(last.reason, /expired/i);
    assert.deepEqual(client.lastClose, { code: null, reason: last.reason, status: 401, error: 'unauthorized' });
    assert.equal(errors.length, 1);
    await sleep(300); // more than maxDelay: nothing reconnects
    assert.equal(client.state, 'closed');
    assert.deepEqual(infos.map((i) => i.state), ['connecting', 'closed']);
  });

test('a WebSocket-only client reports the server\'s close code and reason', { skip }, async (t) => {
  t.after(closeAll);
  const user = uid('kick');
  const client = new Client(BASE + '/ws', { user, transports: ['websocket'] });
  clients.push(client);
  await waitFor(() => client.state === 'connected', 'connected');
  const res = await fetch(BASE + '/api/disconnect', { method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ user }) });
  assert.equal(res.status, 200);
  await waitFor(() => client.state === 'closed', 'closed');
  assert.equal(client.lastClose.code, 4500);
  assert.ok(client.lastClose.reason.length > 0, 'a reason');
});

test('offline drops the connection and waits; online reconnects at once and resubscribes', { skip }, async (t) => {
  t.after(closeAll);
  const network = new EventTarget();
  const channel = uid('net');
  const states = [];
  const client = new Client(BASE + '/ws', { user: uid('net'), network, minDelay: 5000, maxDelay: 20000,
    onStateChange: (state, info) => states.push([state, info.reason]) });
  clients.push(client);
  const got = [];
  await client.subscribe(channel, (m) => got.push(m.data));
  network.dispatchEvent(new Event('offline'));
  assert.equal(client.state, 'disconnected');
  assert.equal(client.online, false);
  await publish(channel, 'while offline');
  await sleep(200);
  assert.equal(client.state, 'disconnected', 'no reconnect while offline');
  network.dispatchEvent(new Event('online'));
  // minDelay is 5 s: reconnecting within 3 s shows the 'online' event did it, not the backoff
  await waitFor(() => client.state === 'connected', 'reconnected on online', 3000);
  await waitFor(() => got.length === 1, 'the publication missed while offline', 3000);
  assert.deepEqual(got, ['while offline']);
  assert.ok(states.some(([s, reason]) => s === 'disconnected' && reason === 'offline'), JSON.stringify(states));
});

test('close() stops listening to the network, connect() listens again', () => {
  const counts = { add: 0, remove: 0 };
  const target = { addEventListener: () => { counts.add += 1; }, removeEventListener: () => { counts.remove += 1; } };
  const client = new Client('ws://127.0.0.1:9/ws', { network: target, autoConnect: false });
  assert.deepEqual(counts, { add: 2, remove: 0 }); // offline + online
  client.close();
  client.close();
  assert.deepEqual(counts, { add: 2, remove: 2 });
  client.connect();
  assert.deepEqual(counts, { add: 4, remove: 2 });
  client.close();
});

test('on SSE the token\'s exp ends the stream with close 4005; a token function reconnects with a fresh one',
  { skip: skipJwt }, async (t) => {
    t.after(closeAll);
    const channel = uid('exp');
    const issued = [];
    const token = () => { const tk = sign({ sub: 'alice', exp: Math.floor(Date.now() / 1000) + 2 }); issued.push(tk); return tk; };
    const closes = [];
    const client = new Client(JWT_BASE + '/ws', { token, WebSocket: BlockedWebSocket, minDelay: 50, maxDelay: 60000,
      onStateChange: (state, info) => { if (state === 'disconnected') closes.push([info.code, info.reason]); } });
    clients.push(client);
    let welcomes = 0;
    client.on('welcome', () => { welcomes += 1; });
    const got = [];
    await client.subscribe(channel, (m) => got.push(m.data));
    assert.equal(client.transport, 'sse');
    await waitFor(() => welcomes >= 2, 'a second welcome after exp', 8000);
    assert.equal(closes[0][0], 4005, JSON.stringify(closes));
    assert.match(closes[0][1], /expired/);
    assert.ok(issued.length >= 2);
    await publish(channel, 'after the new token', JWT_BASE);
    await waitFor(() => got.length === 1, 'a publication on the new stream');
  });

test('the SSE reader: events split anywhere across chunks, CRLF, comments, close event, refusal body', async (t) => {
  t.after(closeAll);
  const enc = new TextEncoder();
  const stream = ['data: {"type":"welcome","client":"c1","user":"u","node":"n1"}\r\n\r',
    '\n: ping\n\nid: e1:1\nda', 'ta: {"type":"message","channel":"a","data":"x\\ny","offset":1,"epoch":"e1"}\n\n',
    'event: close\ndata: {"code": 4500, "reason": "kicked by admin"}\n\n'];
  const fakeFetch = async (url) => {
    fakeFetch.urls.push(url);
    if (fakeFetch.urls.length > 1) {
      return new Response(JSON.stringify({ error: { code: 'banned', message: 'go away' } }),
        { status: 403, headers: { 'content-type': 'application/json' } });
    }
    return new Response(new ReadableStream({
      async pull(controller) {
        const next = stream.shift();
        if (next === undefined) { controller.close(); return; }
        await sleep(5);
        controller.enqueue(enc.encode(next));
      },
    }), { status: 200, headers: { 'content-type': 'text/event-stream' } });
  };
  fakeFetch.urls = [];
  const infos = [];
  const client = new Client('http://scripted.invalid/ws', { user: 'u', transports: ['sse'], fetch: fakeFetch,
    onStateChange: (state, info) => infos.push([state, info.code, info.reason]) });
  clients.push(client);
  const got = [];
  client.subscribe('a', (m) => got.push(m.data));
  await waitFor(() => client.state === 'closed', 'closed by the close event');
  assert.deepEqual(got, ['x\ny']);
  assert.deepEqual(infos[infos.length - 1], ['closed', 4500, 'kicked by admin']);
  const url = new URL(fakeFetch.urls[0]);
  assert.equal(url.pathname, '/sse');
  assert.deepEqual(url.searchParams.getAll('channel'), ['a']);
  assert.equal(url.searchParams.get('user'), 'u');

  // a refusal's JSON body: status, the server's code and message
  const refused = new Client('http://scripted.invalid/ws', { user: 'u', transports: ['sse'], fetch: fakeFetch });
  clients.push(refused);
  await waitFor(() => refused.state === 'closed', 'refused');
  assert.deepEqual(refused.lastClose, { code: null, reason: 'go away', status: 403, error: 'banned' });
});
