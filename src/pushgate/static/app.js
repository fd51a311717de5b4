// pushgate's own page: a small chat (rooms, direct messages, presence) and an admin panel over the
// HTTP API. An ES module that imports the client as an ES module too; no build step, no other
// assets. A room is a channel of the same name; the page publishes {text, user} and shows any other
// data as JSON (a backend's POST /api/publish to that channel appears too).
import { Client, handshakeIsFatal } from '/static/pushgate.mjs';

const $ = (id) => document.getElementById(id);
const NAME = /^[A-Za-z0-9_\-:.@/=+#$]{1,255}$/; // channel names and user ids (docs/protocol.md)
const MAX_MESSAGES = 200;
const MAX_LOG = 500;

const page = {
  client: null,
  user: '',
  rooms: [], // joined rooms, kept across Disconnect/Connect and reloads (localStorage, per user)
  positions: {}, // channel -> {epoch, offset} of the last message shown: `since` on the next subscribe
  convs: new Map(), // 'room:<name>' | 'dm:<user>' -> {kind, name, messages, unread}
  current: null,
  presence: null, // the current room's presence reply, or an error string
};

// ------------------------------------------------------------------------------------ helpers

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** A text box as JSON, falling back to the plain string; empty -> null. */
function parseData(text) {
  const t = text.trim();
  if (t === '') return null;
  try { return JSON.parse(t); } catch (err) { return text; }
}

function log(kind, summary, payload) {
  const list = $('log');
  const item = el('li', 'log-' + kind);
  item.appendChild(el('time', null, new Date().toLocaleTimeString()));
  item.appendChild(el('span', 'kind', kind));
  item.appendChild(el('span', 'summary', summary));
  if (payload !== undefined) item.appendChild(el('pre', null, JSON.stringify(payload, null, 1)));
  list.appendChild(item);
  while (list.children.length > MAX_LOG) list.removeChild(list.firstChild);
}

function banner(text, kind) {
  const b = $('banner');
  b.hidden = !text;
  b.textContent = text || '';
  b.className = 'banner' + (kind ? ' banner-' + kind : '');
}

function connected() {
  return !!page.client && page.client.state === 'connected';
}

function storageKey() {
  return 'pushgate.demo.' + (page.user || '(anonymous)');
}

function save() {
  try {
    localStorage.setItem(storageKey(), JSON.stringify({ rooms: page.rooms, positions: page.positions }));
  } catch (err) { /* storage disabled */ }
}

function restore(user) {
  try {
    const saved = JSON.parse(localStorage.getItem('pushgate.demo.' + (user || '(anonymous)')) || 'null');
    if (saved && Array.isArray(saved.rooms)) return saved;
  } catch (err) { /* storage disabled or corrupt */ }
  return null;
}

/** The HTTP API, with the key from the admin panel if one is set; throws Error(status + message). */
async function api(method, path, body) {
  const key = $('api-key').value.trim();
  const headers = key ? { Authorization: 'Bearer ' + key } : {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) {
    const err = new Error('HTTP ' + res.status + (data.error ? ' ' + data.error.code + ': ' + data.error.message : ''));
    err.status = res.status;
    throw err;
  }
  return data;
}

// ------------------------------------------------------------------------------ conversations

function conv(key) {
  let c = page.convs.get(key);
  if (!c) {
    const kind = key.slice(0, key.indexOf(':'));
    c = { key, kind, name: key.slice(kind.length + 1), messages: [], unread: 0 };
    page.convs.set(key, c);
  }
  return c;
}

function addMessage(key, msg) {
  const c = conv(key);
  c.messages.push(msg);
  if (c.messages.length > MAX_MESSAGES) c.messages.shift();
  if (page.current === key) appendMessage(msg);
  else c.unread += 1;
  renderConvs();
}

function select(key) {
  page.current = key;
  const c = conv(key);
  c.unread = 0;
  page.presence = null;
  $('conv-title').textContent = c.kind === 'room' ? '# ' + c.name : '@ ' + c.name;
  const list = $('messages');
  list.textContent = '';
  for (const m of c.messages) appendMessage(m);
  renderConvs();
  refreshPresence();
  renderControls();
}

function appendMessage(m) {
  const list = $('messages');
  const li = el('li', 'msg' + (m.own ? ' own' : '') + (m.system ? ' system' : ''));
  const head = el('div', 'msg-head');
  head.appendChild(el('span', 'who', m.from));
  // stamped by the server: a direct's sender, a room message a client published
  if (m.verified) head.appendChild(el('span', 'verified', '✓')).title = 'sender stamped by the server';
  head.appendChild(el('time', null, m.time.toLocaleTimeString()));
  if (m.offset !== undefined) head.appendChild(el('span', 'muted', '#' + m.offset));
  li.appendChild(head);
  li.appendChild(el('div', 'text', m.text));
  list.appendChild(li);
  while (list.children.length > MAX_MESSAGES) list.removeChild(list.firstChild);
  list.scrollTop = list.scrollHeight;
}

function textOf(data) {
  if (typeof data === 'string') return data;
  if (data && typeof data === 'object' && typeof data.text === 'string') return data.text;
  return JSON.stringify(data);
}

function renderConvs() {
  for (const [listId, kind] of [['rooms', 'room'], ['dms', 'dm']]) {
    const list = $(listId);
    list.textContent = '';
    const names = kind === 'room' ? page.rooms
      : Array.from(page.convs.values()).filter((c) => c.kind === 'dm').map((c) => c.name);
    if (!names.length) list.appendChild(el('li', 'muted', kind === 'room' ? 'No rooms yet.' : 'No conversations yet.'));
    for (const name of names) {
      const key = kind + ':' + name;
      const c = conv(key);
      const li = el('li', page.current === key ? 'active' : '');
      li.dataset.conv = key;
      const open = el('button', 'link', (kind === 'room' ? '# ' : '@ ') + name);
      open.type = 'button';
      open.onclick = () => select(key);
      li.appendChild(open);
      if (c.unread) li.appendChild(el('span', 'unread', String(c.unread)));
      if (kind === 'room') {
        const leave = el('button', 'small', 'leave');
        leave.type = 'button';
        leave.title = 'leave ' + name;
        leave.onclick = () => leaveRoom(name);
        li.appendChild(leave);
      }
      list.appendChild(li);
    }
  }
}

/** Enable exactly what works now: nothing that needs a connection stays live after a close. */
function renderControls() {
  const live = connected();
  const canSend = live && page.client.transport === 'websocket' && page.current !== null;
  $('composer-text').disabled = !canSend;
  $('composer-send').disabled = !canSend;
  $('composer-text').placeholder = page.current === null ? 'Join a room or open a conversation'
    : !live ? 'Not connected' : canSend ? 'Message' : 'Receive only (SSE fallback)';
  $('disconnect-btn').disabled = !page.client || page.client.state === 'closed';
}

// ------------------------------------------------------------------------------------ presence

function renderPresence() {
  const list = $('presence');
  list.textContent = '';
  const c = page.current ? conv(page.current) : null;
  const p = page.presence;
  $('presence-count').textContent = p && typeof p === 'object' ? '(' + p.users.length + ' users · ' + p.connections + ' connections)' : '';
  if (!c || c.kind !== 'room') { list.appendChild(el('li', 'muted', 'Join a room to see who is here.')); return; }
  if (!connected()) { list.appendChild(el('li', 'muted', 'Not connected.')); return; }
  if (!p) { list.appendChild(el('li', 'muted', '…')); return; }
  if (typeof p === 'string') { list.appendChild(el('li', 'error', 'presence: ' + p)); return; }
  for (const user of p.users) {
    const li = el('li');
    li.dataset.user = user;
    const b = el('button', 'link', user + (user === page.user ? ' (you)' : ''));
    b.type = 'button';
    b.title = 'direct message ' + user;
    b.onclick = () => { if (user !== page.user) select('dm:' + user); };
    li.appendChild(b);
    list.appendChild(li);
  }
  if (!p.users.length) list.appendChild(el('li', 'muted', 'Nobody named.'));
}

function refreshPresence() {
  const c = page.current ? conv(page.current) : null;
  const client = page.client;
  if (!c || c.kind !== 'room' || !connected() || client.transport !== 'websocket') { renderPresence(); return; }
  const key = page.current;
  client.presence(c.name).then((reply) => { if (page.current === key && page.client === client) page.presence = reply; renderPresence(); },
    (err) => { if (page.current === key) page.presence = err.code || String(err); renderPresence(); });
}

// ---------------------------------------------------------------------------------- connection

function connect() {
  const user = $('user').value.trim();
  const token = $('token').value.trim();
  if (user && !NAME.test(user)) { banner('Invalid user id: 1–255 characters of A-Z a-z 0-9 _ - : . @ / = + # $', 'bad'); return; }
  if (page.client) disconnect();
  if (user !== page.user) { // another user: their rooms, not these
    page.user = user;
    page.convs.clear();
    page.current = null;
    const saved = restore(user) || { rooms: [], positions: {} };
    page.rooms = saved.rooms;
    page.positions = saved.positions || {};
    $('messages').textContent = '';
    $('conv-title').textContent = 'No conversation';
  }
  // the constructor already reports 'connecting': `client` must exist by then
  let client = null;
  client = new Client('/ws', {
    user: user || undefined,
    token: token || undefined,
    autoAck: true,
    autoConnect: false,
    onStateChange: (state, info) => { if (page.client === client) onState(state, info); },
    onWelcome: (w) => {
      if (page.client !== client) return;
      $('identity').textContent = (w.user ? w.user : 'anonymous') + ' @ ' + w.node;
      log('welcome', 'connected to node ' + w.node + ' over ' + client.transport, w);
      if (w.maybeMissed) log('info', 'direct messages may have been missed (user stream not recovered)');
    },
  });
  page.client = client;
  client.on('direct', (m) => {
    const from = m.from === null ? 'server' : m.from;
    addMessage('dm:' + from, { from, text: textOf(m.data), time: new Date(), verified: true, offset: m.offset });
    log('direct', 'from ' + from, m.data);
  });
  client.on('broadcast', (m) => {
    log('broadcast', 'to everyone', m.data);
    banner('Broadcast: ' + textOf(m.data), 'info');
  });
  client.on('join', (m) => { if (page.current === 'room:' + m.channel) refreshPresence(); });
  client.on('leave', (m) => { if (page.current === 'room:' + m.channel) refreshPresence(); });
  client.on('error', (m) => log('error', (m.code || 'error') + ': ' + (m.message || ''), m));
  client.on('subscribed', (s) => {
    if (s.resubscribe) log('info', 'resubscribed ' + s.channel + (s.recovered ? ' — recovered missed messages' : s.recovered === false ? ' — could NOT recover, gap possible' : ''));
    if (page.current === 'room:' + s.channel) refreshPresence();
  });
  for (const room of page.rooms) subscribeRoom(room);
  client.connect();
  const url = new URL(location.href);
  if (user) url.searchParams.set('user', user); else url.searchParams.delete('user');
  history.replaceState(null, '', url);
  renderControls();
}

/** Close for good, keeping the rooms and their positions: Connect subscribes them again. */
function disconnect() {
  const client = page.client;
  if (!client) return;
  page.client = null;
  keepPositions(client);
  client.close();
  onState('closed', { code: 1000, reason: 'client closed' });
}

function onState(state, info) {
  const badge = $('state');
  badge.textContent = state;
  badge.className = 'badge badge-' + state;
  const client = page.client;
  const transport = $('transport');
  transport.hidden = !(client && client.transport);
  transport.textContent = client && client.transport ? client.transport : '';
  if (state === 'connected') {
    pollOnline(); // the counts include us now
    banner(client && client.transport === 'sse' ? 'WebSockets are blocked on the way: receiving over SSE (sending is off).' : '', 'warn');
  } else if (state === 'disconnected') {
    const why = info.reason === 'offline' ? 'offline — waiting for the network'
      : 'lost connection' + (info.code ? ' (' + info.code + (info.reason ? ' ' + info.reason : '') + ')' : info.reason ? ' (' + info.reason + ')' : '')
        + (info.delay !== null && info.delay !== undefined ? ', reconnecting in ' + (info.delay / 1000).toFixed(1) + ' s' : '');
    banner('Disconnected: ' + why, 'warn');
    log('info', 'disconnected: ' + why);
  } else if (state === 'closed') {
    $('identity').textContent = '';
    if (info.status) { // a refused handshake, read over SSE
      banner('Refused by the server: ' + info.status + ' ' + info.error + ' — ' + info.reason +
        (handshakeIsFatal(info.status) ? ' (not retrying: fix the user or token, then Connect)' : ''), 'bad');
      log('error', 'refused: ' + info.status + ' ' + info.error + ': ' + info.reason);
      if (info.status === 401) setMode('jwt');
    } else if (info.reason === 'client closed') {
      banner('');
      log('info', 'disconnected (rooms kept: Connect joins them again)');
    } else {
      banner('Closed by the server: ' + info.code + (info.reason ? ' — ' + info.reason : '') + ' (will not reconnect)', 'bad');
      log('info', 'closed by the server: ' + info.code + ' ' + (info.reason || ''));
    }
    if (page.client && page.client.state === 'closed') keepPositions(page.client); // the server stopped it
  }
  renderControls();
  renderPresence();
}

// ---------------------------------------------------------------------------------------- rooms

function subscribeRoom(room) {
  const client = page.client;
  if (!client) return;
  const channel = room;
  const since = page.positions[channel];
  client.subscribe(channel, (m) => {
    const data = m.data && typeof m.data === 'object' && !Array.isArray(m.data) ? m.data : { text: textOf(m.data) };
    // a client's publication carries its publisher, stamped by the server (m.from); a backend's
    // has none: then the name it wrote in data.user, if any
    const verified = typeof m.from === 'string';
    const from = verified ? m.from : typeof data.user === 'string' ? data.user : data.user === null ? 'anonymous' : '(no name)';
    page.positions[channel] = { epoch: m.epoch, offset: m.offset };
    addMessage('room:' + room, { from, verified, text: textOf(data), time: new Date(), own: !!page.user && from === page.user,
      offset: m.offset });
    scheduleSave();
  }, since ? { since } : undefined).then((reply) => {
    log('info', 'joined ' + room + ' at offset ' + reply.offset + (since ? (reply.recovered ? ' (recovered)' : reply.recovered === false ? ' (gap: not recovered)' : '') : ''));
  }, (err) => {
    // closed, or the whole connection was refused (the banner says why): the room stays
    if (err.code === 'closed' || err.code === 'unsubscribed' || err.status) return;
    log('error', 'cannot join ' + room + ': ' + err.code + ' ' + err.message);
    banner('Cannot join ' + room + ': ' + err.code + ' — ' + err.message, 'bad');
    leaveRoom(room);
  });
}

/** Remember where each room is (the last message, or the subscribe reply's position when none
 *  came), so that the next Connect subscribes with `since` and gets what was missed meanwhile. */
function keepPositions(client) {
  for (const room of page.rooms) {
    const pos = client.position(room);
    if (pos) page.positions[room] = pos;
  }
  save();
}

let saveTimer = null;
function scheduleSave() {
  if (saveTimer === null) saveTimer = setTimeout(() => { saveTimer = null; save(); }, 500);
}

function joinRoom(room) {
  if (!NAME.test(room)) { banner('Invalid room name: 1–255 characters of A-Z a-z 0-9 _ - : . @ / = + # $', 'bad'); return; }
  if (page.rooms.indexOf(room) < 0) {
    page.rooms.push(room);
    save();
    subscribeRoom(room);
  }
  select('room:' + room);
}

function leaveRoom(room) {
  page.rooms = page.rooms.filter((r) => r !== room);
  delete page.positions[room];
  save();
  if (page.client) page.client.unsubscribe(room).catch(() => {});
  page.convs.delete('room:' + room);
  if (page.current === 'room:' + room) {
    page.current = null;
    $('messages').textContent = '';
    $('conv-title').textContent = 'No conversation';
  }
  renderConvs();
  renderControls();
  renderPresence();
}

function sendMessage() {
  const box = $('composer-text');
  const text = box.value.trim();
  const c = page.current ? conv(page.current) : null;
  if (!text || !c || !connected()) return;
  const client = page.client;
  if (c.kind === 'room') {
    // the message comes back through the subscription, with its offset
    client.publish(c.name, { text, user: page.user || null }).then(() => { box.value = ''; },
      (err) => banner('Not sent: ' + err.code + ' — ' + err.message, 'bad'));
  } else {
    client.send([c.name], { text }).then(() => {
      box.value = '';
      addMessage(c.key, { from: page.user || 'you', text, time: new Date(), own: true });
    }, (err) => banner('Not sent: ' + err.code + ' — ' + err.message, 'bad'));
  }
}

// --------------------------------------------------------------------------------- server mode

function setMode(mode) {
  const badge = $('mode');
  badge.textContent = mode === 'jwt' ? 'JWT mode' : mode === 'dev' ? 'dev mode' : 'mode: ?';
  badge.title = mode === 'jwt' ? 'the server needs a token (the user id is its sub claim)'
    : mode === 'dev' ? 'no auth: the user id is whatever you type' : 'could not tell';
  badge.dataset.mode = mode;
  $('token').placeholder = mode === 'dev' ? 'not needed in dev mode' : 'JWT';
  $('user').placeholder = mode === 'jwt' ? 'ignored in JWT mode (the token names you)' : 'alice (empty = anonymous)';
}

/** Dev or JWT mode, without connecting: GET /api/info says it; where the API is closed to this
 *  page (no key, not loopback), an invalid ?user= tells it: refused before anything is opened,
 *  with 400 in dev mode (the user id is checked) and 401 in JWT mode (a token is required first). */
async function detectMode() {
  try {
    const info = await api('GET', '/api/info');
    if (info.mode === 'dev' || info.mode === 'jwt') { setMode(info.mode); return; }
  } catch (err) { /* the API needs a key here: ask the handshake instead */ }
  try {
    const res = await fetch('/sse?user=%20', { cache: 'no-store' });
    if (res.body) res.body.cancel().catch(() => {});
    setMode(res.status === 401 ? 'jwt' : res.status === 400 ? 'dev' : 'unknown');
  } catch (err) {
    setMode('unknown');
  }
}

// ---------------------------------------------------------------------------------------- admin

function adminError(err) {
  const box = $('admin-error');
  box.hidden = !err;
  box.textContent = err ? err.message + (err.status === 401 ? ' — set the API key' : err.status === 403 ? ' — from another machine the API needs a key' : '') : '';
}

function cell(tr, text) { tr.appendChild(el('td', null, String(text))); }

async function pollOnline() {
  try {
    const [online, nodes] = await Promise.all([api('GET', '/api/online'), api('GET', '/api/nodes')]);
    const per = online.nodes || {};
    $('online').textContent = 'online: ' + online.connections + ' conn · ' + online.users + ' users';
    const tbody = $('nodes').querySelector('tbody');
    tbody.textContent = '';
    for (const name of Array.from(new Set([...(nodes.nodes || []), ...Object.keys(per)])).sort()) {
      const tr = el('tr');
      cell(tr, name);
      cell(tr, per[name] ? per[name].connections : '–');
      cell(tr, per[name] ? per[name].users : '–');
      tbody.appendChild(tr);
    }
    adminError(null);
  } catch (err) {
    $('online').textContent = 'online: ?';
    adminError(err);
  }
}

async function pollChannels() {
  if ($('tab-admin').hidden) return;
  try {
    const body = await api('GET', '/api/channels');
    const tbody = $('channels').querySelector('tbody');
    tbody.textContent = '';
    for (const ch of body.channels || []) {
      const tr = el('tr');
      cell(tr, ch.channel);
      cell(tr, ch.subscribers);
      const td = el('td');
      const b = el('button', 'small', 'history');
      b.type = 'button';
      b.onclick = () => { $('history-channel').value = ch.channel; loadHistory(); };
      td.appendChild(b);
      tr.appendChild(td);
      tbody.appendChild(tr);
    }
    if (!(body.channels || []).length) {
      const tr = el('tr');
      tr.appendChild(el('td', 'muted', 'no subscribers on this node')).colSpan = 3;
      tbody.appendChild(tr);
    }
  } catch (err) { adminError(err); }
}

async function loadHistory() {
  const channel = $('history-channel').value.trim();
  if (!channel) return;
  try {
    const body = await api('GET', '/api/history/' + encodeURIComponent(channel) + '?limit=50');
    $('history-info').textContent = body.publications.length + ' kept · epoch ' + body.epoch + ' · newest offset ' + body.offset;
    const tbody = $('history').querySelector('tbody');
    tbody.textContent = '';
    for (const pub of body.publications.slice().reverse()) {
      const tr = el('tr');
      cell(tr, pub.offset);
      const td = el('td');
      td.appendChild(el('code', null, JSON.stringify(pub.data)));
      tr.appendChild(td);
      tbody.appendChild(tr);
    }
    adminError(null);
  } catch (err) { adminError(err); }
}

/** Where a user is: their connections on every node (GET /api/users/{user}/connections), each one
 *  this node holds with its transport and channels, and which of this node's channels list them. */
async function whereIs() {
  const user = $('where-user').value.trim();
  const out = $('where-result');
  try {
    const conns = await api('GET', '/api/users/' + encodeURIComponent(user) + '/connections');
    const { channels } = await api('GET', '/api/channels');
    const found = [];
    for (const ch of (channels || []).slice(0, 100)) {
      const p = await api('GET', '/api/presence/' + encodeURIComponent(ch.channel));
      if (p.users.indexOf(user) >= 0) found.push(ch.channel);
    }
    const here = conns.here.map((c) => c.id + ' (' + c.transport + (c.channels.length ? ': ' + c.channels.join(', ') : '') + ')');
    out.textContent = user + ': ' + conns.connections + ' connection(s) cluster-wide'
      + (here.length ? '; on ' + conns.node + ': ' + here.join('; ') : '')
      + (found.length ? '; in ' + found.join(', ') : '; in no channel this node knows of');
    adminError(null);
  } catch (err) { adminError(err); }
}

// A live chart of this node's message rates, drawn from /metrics (no key needed) on a canvas.
const rates = { last: null, points: [] };

function metric(text, name) {
  const m = text.match(new RegExp('^' + name + '(?:\\{[^}]*\\})? ([0-9.eE+-]+)$', 'm'));
  return m ? Number(m[1]) : null;
}

async function pollMetrics() {
  if ($('tab-admin').hidden) return;
  let text;
  try {
    text = await (await fetch('/metrics', { cache: 'no-store' })).text();
  } catch (err) { return; }
  const now = { t: performance.now(), pub: metric(text, 'pushgate_published_total'), out: metric(text, 'pushgate_messages_out_total') };
  if (rates.last && now.pub !== null) {
    const dt = (now.t - rates.last.t) / 1000;
    rates.points.push({ pub: Math.max(0, (now.pub - rates.last.pub) / dt), out: Math.max(0, ((now.out || 0) - (rates.last.out || 0)) / dt) });
    if (rates.points.length > 60) rates.points.shift();
    const p = rates.points[rates.points.length - 1];
    $('rate-now').textContent = p.pub.toFixed(1) + ' pub/s · ' + p.out.toFixed(1) + ' out/s';
  }
  rates.last = now;
  drawChart();
}

function drawChart() {
  const canvas = $('rate-chart');
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 300; // draw at the size it is shown, sharp on any screen
  const h = canvas.clientHeight || 160;
  if (canvas.width !== Math.round(w * ratio)) canvas.width = Math.round(w * ratio);
  if (canvas.height !== Math.round(h * ratio)) canvas.height = Math.round(h * ratio);
  const ctx = canvas.getContext('2d');
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const pts = rates.points;
  const max = Math.max(1, ...pts.map((p) => Math.max(p.pub, p.out)));
  ctx.strokeStyle = '#e3e6eb';
  ctx.fillStyle = '#6b7280';
  ctx.font = '11px system-ui, sans-serif';
  for (const frac of [0, 0.5, 1]) {
    const y = h - 14 - frac * (h - 24);
    ctx.beginPath(); ctx.moveTo(0, y); ctx.lineTo(w, y); ctx.stroke();
    ctx.fillText((max * frac).toFixed(max < 10 ? 1 : 0), 2, y - 2);
  }
  for (const [field, color] of [['out', '#d97706'], ['pub', '#2f6fed']]) {
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    pts.forEach((p, i) => {
      const x = w - 1 - (pts.length - 1 - i) * ((w - 2) / 59);
      const y = h - 14 - (p[field] / max) * (h - 24);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
}

// --------------------------------------------------------------------------------------- wiring

function showTab(name) {
  for (const b of document.querySelectorAll('.tabs [role=tab]')) b.setAttribute('aria-selected', String(b.dataset.tab === name));
  for (const tab of ['chat', 'admin', 'log']) $('tab-' + tab).hidden = tab !== name;
  if (name === 'admin') { pollChannels(); pollMetrics(); }
}

for (const b of document.querySelectorAll('.tabs [role=tab]')) b.addEventListener('click', () => showTab(b.dataset.tab));
$('connect-form').addEventListener('submit', (e) => { e.preventDefault(); connect(); });
$('disconnect-btn').addEventListener('click', disconnect);
$('room-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const room = $('room-name').value.trim();
  if (room) joinRoom(room);
  $('room-name').value = '';
});
$('dm-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const user = $('dm-user').value.trim();
  if (!NAME.test(user)) { banner('Invalid user id', 'bad'); return; }
  select('dm:' + user);
  $('dm-user').value = '';
});
$('composer').addEventListener('submit', (e) => { e.preventDefault(); sendMessage(); });
$('composer-text').addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); sendMessage(); }
});
$('history-form').addEventListener('submit', (e) => { e.preventDefault(); loadHistory(); });
$('where-form').addEventListener('submit', (e) => { e.preventDefault(); whereIs(); });
$('kick-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const user = $('kick-user').value.trim();
  const reason = $('kick-reason').value.trim();
  api('POST', '/api/disconnect', reason ? { user, reason } : { user })
    .then(() => log('info', 'kicked ' + user), (err) => adminError(err));
});
$('broadcast-form').addEventListener('submit', (e) => {
  e.preventDefault();
  api('POST', '/api/broadcast', { data: parseData($('broadcast-data').value) })
    .then(() => log('info', 'broadcast sent'), (err) => adminError(err));
});
$('clear-log').addEventListener('click', () => { $('log').textContent = ''; });

const keyBox = $('api-key');
try { keyBox.value = sessionStorage.getItem('pushgate.apiKey') || ''; } catch (err) { /* storage disabled */ }
keyBox.addEventListener('change', () => {
  try { sessionStorage.setItem('pushgate.apiKey', keyBox.value); } catch (err) { /* storage disabled */ }
  pollOnline();
});

detectMode();
pollOnline();
setInterval(pollOnline, 3000);
setInterval(pollChannels, 3000);
setInterval(pollMetrics, 2000);
setInterval(() => { if (page.current && page.current.startsWith('room:')) refreshPresence(); }, 5000);
renderConvs();
renderControls();

// ?user=alice pre-fills the box and connects at once; &room=lobby joins a room.
const params = new URL(location.href).searchParams;
if (params.get('token') !== null) $('token').value = params.get('token');
if (params.get('user') !== null || params.get('token') !== null) {
  $('user').value = params.get('user') || '';
  connect();
  const room = params.get('room');
  if (room) joinRoom(room);
}
window.pushgateDemo = page; // for the curious (and the browser tests): the page's state
