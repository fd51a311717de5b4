// Integration tests for src/pushgate/static/pushgate.js against a REAL pushgate server.
//
// Run:  PUSHGATE_URL=http://127.0.0.1:8080 node --experimental-websocket --test tests/js/
// (tests/test_js_client.py starts a server and does this). Without PUSHGATE_URL the server
// tests are skipped. The 1012 test puts a small TCP proxy between the client and the server:
// the proxy plays the part of a node going away (it sends a WebSocket close frame with 1012 and
// drops the upstream connection) and holds the reconnect for a moment so that publications
// happen while the client is disconnected.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import net from 'node:net';
import { createHmac, randomBytes } from 'node:crypto';

const require = createRequire(import.meta.url);
const Pushgate = require('../../src/pushgate/static/pushgate.js');

const BASE = (process.env.PUSHGATE_URL || '').replace(/\/+$/, '');
const skip = !BASE
  ? 'PUSHGATE_URL not set'
  : typeof WebSocket !== 'function'
    ? 'no global WebSocket (run node with --experimental-websocket)'
    : false;

const uid = (prefix) => `${prefix}_${randomBytes(4).toString('hex')}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const clients = [];

/** Create a client and wait for its welcome frame. */
async function connect(user, extra = {}, base = BASE) {
  const opts = Object.assign({ minDelay: 100, maxDelay: 1000, requestTimeout: 5000 }, extra);
  if (user !== null) opts.user = user;
  let welcome;
  const welcomed = new Promise((resolve) => { welcome = resolve; });
  const client = new Pushgate.Client(base + '/ws', opts);
  clients.push(client);
  client.on('welcome', welcome);
  const frame = await withTimeout(welcomed, 5000, 'welcome');
  return { client, welcome: frame };
}

async function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
  });
  try { return await Promise.race([promise, timeout]); } finally { clearTimeout(timer); }
}

async function waitFor(predicate, what, ms = 5000) {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

async function api(method, path, body) {
  const res = await fetch(BASE + path, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  assert.equal(res.status, 200, `${method} ${path} -> ${res.status} ${text}`);
  return JSON.parse(text);
}

function closeAll() {
  while (clients.length) clients.pop().close();
}

/** A TCP proxy that can inject a WebSocket close frame and hold new connections. */
async function startProxy(target) {
  const pairs = new Set();
  let held = [];
  let holding = false;
  const server = net.createServer((down) => {
    down.on('error', () => {});
    const open = () => {
      const up = net.connect(target.port, target.hostname);
      const pair = { up, down, injected: false };
      pairs.add(pair);
      const drop = () => {
        if (pair.injected) return;
        pairs.delete(pair);
        up.destroy();
        down.destroy();
      };
      up.on('error', drop);
      up.on('close', drop);
      down.on('close', drop);
      down.pipe(up);
      up.pipe(down);
    };
    if (holding) held.push(open); else open();
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    heldCount: () => held.length,
    hold() { holding = true; },
    release() { holding = false; const h = held; held = []; h.forEach((open) => open()); },
    /** Close every proxied WebSocket from the "server" side with `code`. Call only when idle. */
    inject(code) {
      for (const pair of pairs) {
        pair.injected = true;
        pair.up.unpipe(pair.down);
        pair.down.unpipe(pair.up);
        pair.up.destroy();
        pair.down.resume(); // discard the client's close reply
        pair.down.end(Buffer.from([0x88, 0x02, code >> 8, code & 0xff]));
      }
      pairs.clear();
    },
    close() { for (const p of pairs) { p.up.destroy(); p.down.destroy(); } server.close(); },
  };
}

test('closeCodeAction follows the close-code table', () => {
  const { closeCodeAction } = Pushgate;
  for (const code of [1012, 4002]) assert.equal(closeCodeAction(code), 'now', String(code));
  for (const code of [1008, 4500, 4501, 4999]) assert.equal(closeCodeAction(code), 'stop', String(code));
  for (const code of [1000, 1006, 1009, 1011, 4000, 4001, 4003, 4499]) {
    assert.equal(closeCodeAction(code), 'backoff', String(code));
  }
});

test('resync push: the subscription goes on from the new position, the app hears it, no reconnect', async () => {
  // A scripted socket stands in for the server: this checks the client's own bookkeeping.
  const sockets = [];
  class ScriptedSocket {
    constructor(url) {
      this.url = url;
      sockets.push(this);
      setTimeout(() => this.push({ type: 'welcome', client: 'c1', user: 'a', node: 'n1' }), 0);
    }
    push(frame) { this.onmessage({ data: JSON.stringify(frame) }); }
    send(text) {
      const cmd = JSON.parse(text);
      if (cmd.type === 'subscribe') {
        setTimeout(() => this.push({ id: cmd.id, type: 'ok', channel: cmd.channel, epoch: 'e1', offset: 3, recovered: false }), 0);
      }
    }
    close() {}
  }
  const client = new Pushgate.Client('ws://scripted.invalid/ws', { user: 'a', WebSocket: ScriptedSocket });
  clients.push(client);
  const got = [];
  const resyncs = [];
  client.on('resync', (ev) => resyncs.push(ev));
  await withTimeout(client.subscribe('feed', (msg) => got.push(msg.offset)), 2000, 'subscribe');
  const ws = sockets[0];
  ws.push({ type: 'message', channel: 'feed', data: 1, offset: 4, epoch: 'e1' });
  ws.push({ type: 'resync', channel: 'feed', epoch: 'e2', offset: 0 });  // history was reset
  ws.push({ type: 'message', channel: 'feed', data: 2, offset: 1, epoch: 'e2' });
  ws.push({ type: 'message', channel: 'feed', data: 2, offset: 1, epoch: 'e2' });  // a duplicate
  assert.deepEqual(got, [4, 1]);
  assert.deepEqual(resyncs.map((r) => [r.channel, r.epoch, r.offset]), [['feed', 'e2', 0]]);
  assert.deepEqual(client.position('feed'), { epoch: 'e2', offset: 1 });
  assert.equal(sockets.length, 1);
  client.close();
});

// ------------------------------------------------------- user streams, against a scripted socket
// The scripted socket plays the server exactly as docs/protocol.md writes it: a welcome with the
// `stream` the test chooses from the handshake URL, pong for ping; every other command is recorded
// in `sent` for the test to answer. This pins the client's own bookkeeping without a server.

function scripted(streamFor) {
  const sockets = [];
  class ScriptedSocket {
    constructor(url) {
      this.url = url;
      this.query = new URL(url).searchParams;
      this.sent = [];
      sockets.push(this);
      const welcome = { type: 'welcome', client: 'c' + sockets.length, user: 'bob', node: 'n1' };
      const stream = streamFor ? streamFor(this.query, sockets.length) : null;
      if (stream) welcome.stream = stream;
      setTimeout(() => this.push(welcome), 0);
    }
    push(frame) { if (this.onmessage) this.onmessage({ data: JSON.stringify(frame) }); }
    send(text) {
      const cmd = JSON.parse(text);
      if (cmd.type === 'ping') setTimeout(() => this.push({ id: cmd.id, type: 'pong' }), 0);
      else this.sent.push(cmd);
    }
    reply(cmd, fields) { this.push(Object.assign({ id: cmd.id, type: 'ok' }, fields || {})); }
    /** The server closes with `code`. */
    drop(code) { const h = this.onclose; this.onmessage = null; if (h) h({ code, reason: 'scripted' }); }
    close() {}
  }
  return { sockets, ScriptedSocket };
}

function scriptedClient(script, extra = {}) {
  const client = new Pushgate.Client('ws://scripted.invalid/ws', Object.assign({ user: 'bob',
    WebSocket: script.ScriptedSocket, minDelay: 10, maxDelay: 50, nowJitter: 10, requestTimeout: 2000 }, extra));
  clients.push(client);
  return client;
}

const direct = (offset, epoch = 'e1') => ({ type: 'direct', from: 'alice', data: offset, offset, epoch });

test('directs: positions, duplicates dropped, a new epoch starts a new sequence', async (t) => {
  t.after(closeAll);
  const script = scripted(() => ({ epoch: 'e1', offset: 0, recovered: false }));
  const client = scriptedClient(script);
  const got = [];
  client.on('direct', (m) => got.push([m.epoch, m.offset]));
  await waitFor(() => client.state === 'connected', 'welcome', 2000);
  const ws = script.sockets[0];
  assert.equal(ws.query.get('user_since'), null);
  for (const f of [direct(1), direct(2), direct(2), direct(1), direct(3)]) ws.push(f);
  ws.push({ type: 'direct', from: null, data: 'old server' });  // no position: delivered as is
  ws.push(direct(1, 'e2'));
  assert.deepEqual(got, [['e1', 1], ['e1', 2], ['e1', 3], [undefined, undefined], ['e2', 1]]);
  assert.deepEqual(client.userPosition(), { epoch: 'e2', offset: 1 });
});

test('user_since on every handshake; the welcome says whether the stream was recovered', async (t) => {
  t.after(closeAll);
  const heads = [['e1', 7, true], ['e1', 8, true], ['e2', 3, false], ['e2', 3, true]];
  const script = scripted((q, n) => ({ epoch: heads[n - 1][0], offset: heads[n - 1][1], recovered: heads[n - 1][2] }));
  const client = scriptedClient(script, { userSince: { epoch: 'e1', offset: 5 } });
  const got = [];
  const welcomes = [];
  client.on('direct', (m) => got.push(m.epoch + ':' + m.offset));
  client.on('welcome', (w) => welcomes.push(w));
  await waitFor(() => welcomes.length === 1, 'welcome', 2000);
  let ws = script.sockets[0];
  assert.equal(ws.query.get('user_since'), 'e1:5');
  assert.deepEqual(welcomes[0].userSince, { epoch: 'e1', offset: 5 });
  assert.equal(welcomes[0].maybeMissed, false);
  ws.push(direct(6));
  ws.push(direct(7));

  ws.drop(1012);
  await waitFor(() => welcomes.length === 2, 'second welcome', 2000);
  ws = script.sockets[1];
  assert.equal(ws.query.get('user_since'), 'e1:7');
  assert.equal(welcomes[1].maybeMissed, false);
  ws.push(direct(7));  // the replay overlaps: dropped
  ws.push(direct(8));

  ws.drop(4000);
  await waitFor(() => welcomes.length === 3, 'third welcome', 2000);
  ws = script.sockets[2];
  assert.equal(ws.query.get('user_since'), 'e1:8');
  assert.equal(welcomes[2].maybeMissed, true);  // history lost: tell the app
  assert.deepEqual(client.userPosition(), { epoch: 'e2', offset: 0 });
  ws.push(direct(2, 'e2'));
  ws.push(direct(3, 'e2'));

  ws.drop(4000);
  await waitFor(() => welcomes.length === 4, 'fourth welcome', 2000);
  assert.equal(script.sockets[3].query.get('user_since'), 'e2:3');
  assert.deepEqual(got, ['e1:6', 'e1:7', 'e1:8', 'e2:2', 'e2:3']);
});

test('a direct that no handler takes does not move the position', async (t) => {
  t.after(closeAll);
  const script = scripted(() => ({ epoch: 'e1', offset: 0, recovered: false }));
  const client = scriptedClient(script, { autoAck: true });
  await waitFor(() => client.state === 'connected', 'welcome', 2000);
  script.sockets[0].push(direct(1));
  await client.ping();
  assert.equal(client.userPosition(), null);
  assert.deepEqual(script.sockets[0].sent, []);
});

test('user-stream resync moves the position and emits the frame', async (t) => {
  t.after(closeAll);
  const script = scripted(() => ({ epoch: 'e1', offset: 0, recovered: false }));
  const client = scriptedClient(script);
  const got = [];
  const resyncs = [];
  client.on('direct', (m) => got.push(m.epoch + ':' + m.offset));
  client.on('resync', (r) => resyncs.push(r));
  await waitFor(() => client.state === 'connected', 'welcome', 2000);
  const ws = script.sockets[0];
  ws.push(direct(1));
  ws.push({ type: 'resync', stream: 'user', epoch: 'e3', offset: 10 });
  ws.push(direct(10, 'e3'));
  ws.push(direct(11, 'e3'));
  assert.deepEqual(got, ['e1:1', 'e3:11']);
  assert.deepEqual(resyncs.map((r) => [r.stream, r.epoch, r.offset]), [['user', 'e3', 10]]);
  assert.deepEqual(client.userPosition(), { epoch: 'e3', offset: 11 });
  assert.equal(script.sockets.length, 1);
});

test('acks are coalesced: one in flight, then one for the highest; autoAck acks taken directs', async (t) => {
  t.after(closeAll);
  const script = scripted(() => ({ epoch: 'e1', offset: 0, recovered: false }));
  const client = scriptedClient(script);
  await waitFor(() => client.state === 'connected', 'welcome', 2000);
  const ws = script.sockets[0];
  const first = client.ack({ epoch: 'e1', offset: 1 });
  const later = [client.ack({ epoch: 'e1', offset: 3 }), client.ack(direct(2))];
  assert.deepEqual(ws.sent.map((c) => [c.type, c.epoch, c.offset]), [['ack', 'e1', 1]]);
  ws.reply(ws.sent[0], { epoch: 'e1', offset: 1 });
  assert.deepEqual(await first, { epoch: 'e1', offset: 1 });
  assert.deepEqual(ws.sent.slice(1).map((c) => [c.type, c.offset]), [['ack', 3]]);
  ws.reply(ws.sent[1], { epoch: 'e1', offset: 3 });
  assert.deepEqual(await Promise.all(later), [{ epoch: 'e1', offset: 3 }, { epoch: 'e1', offset: 3 }]);
  assert.equal(ws.sent.length, 2);
  await assert.rejects(client.ack({ type: 'direct', data: 1 }), (err) => err.code === 'bad_request');

  const autoScript = scripted(() => ({ epoch: 'e1', offset: 0, recovered: false }));
  const auto = scriptedClient(autoScript, { autoAck: true });
  const taken = [];
  auto.on('direct', (m) => taken.push(m.offset));
  await waitFor(() => auto.state === 'connected', 'welcome', 2000);
  const sock = autoScript.sockets[0];
  for (const n of [1, 2, 3]) sock.push(direct(n));
  assert.deepEqual(taken, [1, 2, 3]);
  assert.deepEqual(sock.sent.map((c) => [c.type, c.offset]), [['ack', 1]]);  // one in flight
  sock.reply(sock.sent[0], { epoch: 'e1', offset: 1 });
  await waitFor(() => sock.sent.length === 2, 'the coalesced ack', 2000);
  assert.deepEqual([sock.sent[1].type, sock.sent[1].offset], ['ack', 3]);
});

test('send carries idempotency_key and resolves with the positions', async (t) => {
  t.after(closeAll);
  const script = scripted(() => ({ epoch: 'e1', offset: 0, recovered: false }));
  const client = scriptedClient(script);
  await waitFor(() => client.state === 'connected', 'welcome', 2000);
  const ws = script.sockets[0];
  const sent = client.send(['bob', 'carol'], { hi: 1 }, { idempotencyKey: 'k-1' });
  const cmd = ws.sent[0];
  assert.deepEqual([cmd.type, cmd.to, cmd.data, cmd.idempotency_key], ['send', ['bob', 'carol'], { hi: 1 }, 'k-1']);
  ws.reply(cmd, { positions: { bob: { epoch: 'b1', offset: 7 } } });
  assert.deepEqual((await sent).positions, { bob: { epoch: 'b1', offset: 7 } });
});

test('reconnect "now" after 1012 waits a random delay within nowJitter', async (t) => {
  t.after(closeAll);
  const delays = [];
  for (const nowJitter of [300, 300, 300, 0]) {
    const script = scripted(null);
    const states = [];
    const client = scriptedClient(script, { nowJitter, onStateChange: (state, info) => states.push({ state, info }) });
    await waitFor(() => client.state === 'connected', 'welcome', 2000);
    script.sockets[0].drop(1012);
    const disc = states.find((s) => s.state === 'disconnected');
    assert.equal(disc.info.code, 1012);
    assert.ok(disc.info.delay >= 0 && disc.info.delay <= nowJitter, String(disc.info.delay));
    delays.push(disc.info.delay);
    client.close();
  }
  assert.equal(delays[3], 0);
  assert.ok(new Set(delays.slice(0, 3)).size > 1, 'jittered: ' + delays);
});

test('welcome carries client id, user and node', { skip }, async (t) => {
  t.after(closeAll);
  const user = uid('alice');
  const { client, welcome } = await connect(user);
  assert.equal(welcome.type, 'welcome');
  assert.equal(welcome.user, user);
  assert.equal(typeof welcome.client, 'string');
  assert.ok(welcome.client.length > 0);
  assert.equal(typeof welcome.node, 'string');
  assert.equal(client.state, 'connected');
  assert.equal(client.userId, user);
  assert.equal(typeof (await client.ping()), 'number');

  const anon = await connect(null);
  assert.equal(anon.welcome.user, null);
  assert.notEqual(anon.welcome.client, welcome.client);
});

test('subscribe + publish round trip, and HTTP publish', { skip }, async (t) => {
  t.after(closeAll);
  const channel = uid('news');
  const { client } = await connect(uid('alice'));
  const got = [];
  const sub = await client.subscribe(channel, (msg) => got.push(msg));
  assert.equal(sub.type, 'ok');
  assert.equal(typeof sub.epoch, 'string');
  assert.equal(typeof sub.offset, 'number');

  const pub = await client.publish(channel, { text: 'hello', n: 1 });
  assert.equal(pub.epoch, sub.epoch);
  assert.ok(pub.offset > sub.offset);
  await waitFor(() => got.length === 1, 'the publication');
  assert.deepEqual(got[0].data, { text: 'hello', n: 1 });
  assert.equal(got[0].channel, channel);
  assert.equal(got[0].offset, pub.offset);
  assert.equal(got[0].epoch, pub.epoch);

  const viaHttp = await api('POST', '/api/publish', { channel, data: ['from', 'http'] });
  assert.equal(viaHttp.offset, pub.offset + 1);
  await waitFor(() => got.length === 2, 'the HTTP publication');
  assert.deepEqual(got[1].data, ['from', 'http']);
  assert.equal(got[1].offset, viaHttp.offset);
  assert.deepEqual(client.position(channel), { epoch: viaHttp.epoch, offset: viaHttp.offset });

  await client.unsubscribe(channel);
  await client.publish(channel, 'after unsubscribe');
  await client.ping(); // a round trip: anything still in flight has arrived
  assert.equal(got.length, 2);
});

test('presence lists subscribed users', { skip }, async (t) => {
  t.after(closeAll);
  const channel = uid('room');
  const alice = uid('alice');
  const { client } = await connect(alice);
  await client.subscribe(channel, () => {});
  const reply = await client.presence(channel);
  assert.ok(Array.isArray(reply.users));
  assert.ok(reply.users.includes(alice), JSON.stringify(reply));
  assert.ok(reply.connections >= 1);
  const viaHttp = await api('GET', '/api/presence/' + encodeURIComponent(channel));
  assert.equal(viaHttp.channel, channel);
  assert.ok(viaHttp.users.includes(alice));
});

test('direct messages carry the server-stamped sender', { skip }, async (t) => {
  t.after(closeAll);
  const alice = uid('alice');
  const bob = uid('bob');
  const a = await connect(alice);
  const b1 = await connect(bob);
  const b2 = await connect(bob); // every connection of bob receives it
  const inbox1 = [];
  const inbox2 = [];
  b1.client.on('direct', (m) => inbox1.push(m));
  b2.client.on('direct', (m) => inbox2.push(m));

  await a.client.send([bob], { hi: 1 });
  await waitFor(() => inbox1.length === 1 && inbox2.length === 1, 'direct message on both connections');
  assert.equal(inbox1[0].from, alice);
  assert.deepEqual(inbox1[0].data, { hi: 1 });
  assert.equal(inbox2[0].from, alice);

  // A client cannot forge `from`: send a raw frame claiming to be someone else.
  const raw = new WebSocket(BASE.replace(/^http/, 'ws') + '/ws?user=' + encodeURIComponent(alice));
  const replies = [];
  raw.onmessage = (ev) => replies.push(JSON.parse(ev.data));
  await waitFor(() => replies.some((m) => m.type === 'welcome'), 'raw welcome');
  raw.send(JSON.stringify({ id: 7, type: 'send', to: [bob], from: 'mallory', data: 'forged?' }));
  await waitFor(() => inbox1.length === 2, 'second direct message');
  assert.equal(inbox1[1].from, alice);
  assert.equal(inbox1[1].data, 'forged?');
  assert.ok(replies.some((m) => m.id === 7 && m.type === 'ok'), JSON.stringify(replies));
  raw.close();
});

test('errors reject with the server code and keep the connection open', { skip }, async (t) => {
  t.after(closeAll);
  const { client } = await connect(uid('alice'));
  await assert.rejects(client.request({ type: 'no_such_command' }), (err) => err.code === 'unknown_type');
  await assert.rejects(client.request({ type: 'publish', data: 1 }), (err) => err.code === 'bad_request');
  await assert.rejects(client.request({ type: 'unsubscribe', channel: uid('never') }),
    (err) => err.code === 'not_subscribed');
  await assert.rejects(client.rpc(uid('no_such_method'), {}), (err) => typeof err.code === 'string');
  // Locally refused: larger than the default 64 KiB limit, never sent.
  await assert.rejects(client.publish(uid('big'), 'x'.repeat(70 * 1024)), (err) => err.code === 'message_too_big');
  assert.equal(client.state, 'connected');
  assert.equal(typeof (await client.ping()), 'number');
});

test('close 1012: reconnects soon (within nowJitter) and recovers what was published meanwhile', { skip }, async (t) => {
  const proxy = await startProxy(new URL(BASE));
  t.after(() => { closeAll(); proxy.close(); });
  const channel = uid('recover');
  const states = [];
  const { client, welcome } = await connect(uid('carol'), {
    nowJitter: 200,
    onStateChange: (state, info) => states.push({ state, code: info.code, delay: info.delay }),
  }, proxy.url);
  const got = [];
  const subscribed = [];
  client.on('subscribed', (info) => subscribed.push(info));
  await client.subscribe(channel, (msg) => got.push(msg.data));
  await client.publish(channel, 'before');
  await waitFor(() => got.length === 1, 'first publication');
  await sleep(100); // idle: no frame in flight when the proxy cuts in

  proxy.hold();
  proxy.inject(1012);
  await waitFor(() => states.some((s) => s.state === 'disconnected' && s.code === 1012), 'close 1012');
  const disc = states.find((s) => s.state === 'disconnected');
  assert.ok(disc.delay >= 0 && disc.delay <= 200, 'reconnect after 1012 within nowJitter: ' + disc.delay);
  await waitFor(() => proxy.heldCount() === 1, 'the reconnect attempt', 2000);

  for (const n of [1, 2, 3]) await api('POST', '/api/publish', { channel, data: `missed ${n}` });
  const reconnected = new Promise((resolve) => client.on('welcome', resolve));
  proxy.release();
  const again = await withTimeout(reconnected, 5000, 'welcome after reconnect');
  assert.notEqual(again.client, welcome.client);

  await waitFor(() => subscribed.some((s) => s.resubscribe), 'resubscribe reply');
  const re = subscribed.find((s) => s.resubscribe);
  assert.equal(re.recovered, true, JSON.stringify(re));
  await client.publish(channel, 'after');
  await waitFor(() => got.length >= 5, 'recovered + live publications');
  await client.ping();
  assert.deepEqual(got, ['before', 'missed 1', 'missed 2', 'missed 3', 'after']);
});

/** A client whose 'direct' handler is registered before the welcome (the replay follows it). */
async function connectForDirects(user, extra = {}, base = BASE) {
  const opts = Object.assign({ user, minDelay: 100, maxDelay: 1000, requestTimeout: 5000 }, extra);
  const client = new Pushgate.Client(base + '/ws', opts);
  clients.push(client);
  const got = [];
  client.on('direct', (m) => got.push(m));
  const welcome = await withTimeout(new Promise((resolve) => client.on('welcome', resolve)), 5000, 'welcome');
  return { client, got, welcome };
}

async function apiSend(user, data) {
  const reply = await api('POST', '/api/send', { users: [user], data });
  return reply.positions[user];
}

test('user stream: directs missed while reconnecting arrive in order, once', { skip }, async (t) => {
  const proxy = await startProxy(new URL(BASE));
  t.after(() => { closeAll(); proxy.close(); });
  const bob = uid('bob');
  const { client, got } = await connectForDirects(bob, { nowJitter: 100 }, proxy.url);
  const first = await apiSend(bob, 'before');
  await waitFor(() => got.length === 1, 'first direct');
  assert.deepEqual(client.userPosition(), first);
  await sleep(100); // idle: no frame in flight when the proxy cuts in

  proxy.hold();
  proxy.inject(1012);
  await waitFor(() => proxy.heldCount() === 1, 'the reconnect attempt', 2000);
  const missed = [];
  for (const n of [1, 2, 3]) missed.push(await apiSend(bob, `missed ${n}`));
  const reconnected = new Promise((resolve) => client.on('welcome', resolve));
  proxy.release();
  const again = await withTimeout(reconnected, 5000, 'welcome after reconnect');
  assert.deepEqual(again.userSince, first);
  assert.equal(again.stream.recovered, true);
  assert.equal(again.maybeMissed, false);
  const live = await apiSend(bob, 'live');
  await waitFor(() => got.length >= 5, 'missed + live directs');
  await client.ping();
  assert.deepEqual(got.map((m) => m.data), ['before', 'missed 1', 'missed 2', 'missed 3', 'live']);
  assert.deepEqual(got.map((m) => ({ epoch: m.epoch, offset: m.offset })), [first, ...missed, live]);
});

test('user stream: ack decides what a device without a position gets', { skip }, async (t) => {
  t.after(closeAll);
  const carol = uid('carol');
  const sent = [];
  for (let n = 0; n < 5; n++) sent.push(await apiSend(carol, n));  // carol is offline
  const phone = await connectForDirects(carol);
  await waitFor(() => phone.got.length === 5, 'the offline inbox');
  assert.deepEqual(phone.got.map((m) => m.data), [0, 1, 2, 3, 4]);
  assert.deepEqual(await phone.client.ack(phone.got[2]), sent[2]);

  const laptop = await connectForDirects(carol);  // a new device: no userSince
  await waitFor(() => laptop.got.length === 2, 'the unacknowledged directs');
  await laptop.client.ping();
  assert.deepEqual(laptop.got.map((m) => ({ epoch: m.epoch, offset: m.offset })), sent.slice(3));

  // autoAck, then a client resuming from a persisted position
  const tablet = await connectForDirects(carol, { autoAck: true, userSince: sent[4] });
  assert.deepEqual(tablet.welcome.userSince, sent[4]);
  const later = await apiSend(carol, 'later');
  await waitFor(() => tablet.got.length === 1, 'the direct after the position');
  assert.deepEqual(tablet.client.userPosition(), later);
  assert.deepEqual(await tablet.client.ack(later), later); // coalesced with the auto-ack: the server has it
  const fresh = await connectForDirects(carol);
  await fresh.client.ping();
  assert.deepEqual(fresh.got, []);
});

test('POST /api/disconnect closes with 4500 and the client stays closed', { skip }, async (t) => {
  t.after(closeAll);
  const user = uid('dave');
  const states = [];
  const { client } = await connect(user, { onStateChange: (state, info) => states.push({ state, code: info.code }) });
  await api('POST', '/api/disconnect', { user });
  await waitFor(() => client.state === 'closed', 'closed state');
  assert.equal(states[states.length - 1].code, 4500);
  await sleep(600); // more than maxDelay/2 of this client: no reconnect must happen
  assert.equal(client.state, 'closed');
  assert.deepEqual(states.map((s) => s.state), ['connecting', 'connected', 'closed']);
  await assert.rejects(client.publish('x', 1), (err) => err.code === 'closed');
});

// ---------------------------------------------------------------------- token refresh (JWT)
// tests/test_js_client.py also starts a JWT-mode node: PUSHGATE_JWT_URL + PUSHGATE_JWT_SECRET.

const JWT_BASE = (process.env.PUSHGATE_JWT_URL || '').replace(/\/+$/, '');
const JWT_SECRET = process.env.PUSHGATE_JWT_SECRET || '';
const skipJwt = skip || (!JWT_BASE || !JWT_SECRET ? 'PUSHGATE_JWT_URL / PUSHGATE_JWT_SECRET not set' : false);

/** A HS256 JWT signed here (node:crypto), as the application's auth service would. */
function sign(claims) {
  const enc = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
  const input = enc({ alg: 'HS256', typ: 'JWT' }) + '.' + enc(claims);
  return input + '.' + createHmac('sha256', JWT_SECRET).update(input).digest('base64url');
}

test('tokenExpiry reads exp without verifying; refreshDelay is early but never a busy loop', () => {
  const { tokenExpiry, refreshDelay } = Pushgate;
  assert.equal(tokenExpiry(sign({ sub: 'a', exp: 1234 })), 1234);
  assert.equal(tokenExpiry(sign({ sub: 'a' })), null);
  for (const bad of [undefined, '', 'a.b', 'a.!!!.c', 'a.' + Buffer.from('{"exp":"soon"}').toString('base64url') + '.c']) {
    assert.equal(tokenExpiry(bad), null, String(bad));
  }
  // the same table as tests/client/test_token_refresh.py (ms here)
  for (const [lifetime, delay] of [[3600e3, 3060e3], [120e3, 90e3], [40e3, 20e3], [3e3, 1.5e3], [0, 0], [-5e3, 0]]) {
    assert.equal(refreshDelay(1e6 + lifetime, 1e6), delay, String(lifetime));
  }
});

test('a token function is refreshed over the connection before exp', { skip: skipJwt }, async (t) => {
  t.after(closeAll);
  const channel = uid('news');
  const issued = [];
  const tokenFn = async () => {
    const token = sign({ sub: 'alice', exp: Date.now() / 1000 + 2.5 });
    issued.push(token);
    return token;
  };
  const { client } = await connect(null, { token: tokenFn }, JWT_BASE);
  let welcomes = 0;
  client.on('welcome', () => { welcomes += 1; });
  const got = [];
  await client.subscribe(channel, (msg) => got.push(msg.data));
  await sleep(Pushgate.tokenExpiry(issued[0]) * 1000 - Date.now() + 1000); // past the first exp
  const res = await fetch(JWT_BASE + '/api/publish', { method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ channel, data: 'after the first exp' }) });
  assert.equal(res.status, 200, await res.text());
  await waitFor(() => got.length === 1, 'the publication after exp');
  assert.deepEqual(got, ['after the first exp']);
  assert.ok(issued.length >= 2, 'the token function was asked again');
  assert.equal(welcomes, 0, 'no reconnect: the same connection all along');
  assert.equal(client.state, 'connected');
});
