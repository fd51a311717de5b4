/* pushgate demo & admin page. Uses window.Pushgate from /pushgate.js; no other dependencies. */
(function () {
  'use strict';

  const $ = (id) => document.getElementById(id);
  const MAX_LOG = 500;
  let client = null;
  const presence = {}; // channel -> last presence reply, or an error string

  // ------------------------------------------------------------------ helpers

  /** Parse a text box as JSON; fall back to the plain string. Empty -> null. */
  function parseData(text) {
    const t = text.trim();
    if (t === '') return null;
    try { return JSON.parse(t); } catch (err) { return text; }
  }

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
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
    if ($('autoscroll').checked) item.scrollIntoView({ block: 'nearest' });
  }

  function fail(what) {
    return (err) => log('error', what + ' failed: ' + (err.code || '') + ' ' + (err.message || err), err.reply || undefined);
  }

  function setConnected(on) {
    document.querySelectorAll('.needs-conn').forEach((b) => { b.disabled = !on; });
    $('ping-btn').disabled = !on;
  }

  // ------------------------------------------------------------ connection

  function connect() {
    if (client) client.close();
    for (const key of Object.keys(presence)) delete presence[key];
    const user = $('user').value.trim();
    const token = $('token').value.trim();
    const wsUrl = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';
    client = new Pushgate.Client(wsUrl, {
      user: user || undefined,
      token: token || undefined,
      onStateChange: onState,
      onWelcome: (w) => {
        $('identity').textContent = (w.user ? 'user ' + w.user : 'anonymous') + ' · client ' + w.client + ' · node ' + w.node;
        log('welcome', 'connected to node ' + w.node, w);
        if (w.maybeMissed) log('info', 'direct messages may have been missed (user stream not recovered)');
      },
    });
    // Direct messages carry their place in this user's stream (replayed after reconnects).
    client.on('direct', (m) => log('direct', 'from ' + (m.from === null ? '(server)' : m.from) +
      (typeof m.offset === 'number' ? ' · #' + m.offset : ''), m.data));
    client.on('broadcast', (m) => log('broadcast', 'to everyone', m.data));
    client.on('join', (m) => { log('join', m.user + ' joined ' + m.channel); refreshPresence(m.channel); });
    client.on('leave', (m) => { log('leave', m.user + ' left ' + m.channel); refreshPresence(m.channel); });
    client.on('error', (m) => log('error', (m.code || 'error') + ': ' + (m.message || ''), m));
    client.on('subscribed', (s) => {
      if (s.resubscribe) {
        log('info', 'resubscribed ' + s.channel + (s.recovered ? ' — recovered missed messages' : ' — could NOT recover, gap possible'));
      }
      refreshPresence(s.channel);
    });
    $('disconnect-btn').disabled = false;
    const url = new URL(location.href);
    if (user) url.searchParams.set('user', user); else url.searchParams.delete('user');
    history.replaceState(null, '', url);
  }

  function onState(state, info) {
    const badge = $('state');
    badge.textContent = state;
    badge.className = 'badge badge-' + state;
    setConnected(state === 'connected');
    if (state === 'disconnected') {
      log('info', 'disconnected (code ' + info.code + '), reconnecting in ' + info.delay + ' ms');
    } else if (state === 'closed') {
      log('info', 'closed' + (info.code ? ' (code ' + info.code + (info.code >= 4500 ? ', will not reconnect' : '') + ')' : ''));
      $('identity').textContent = '';
      $('disconnect-btn').disabled = true;
    }
    renderSubs();
  }

  // ---------------------------------------------------------------- channels

  function subscribe(channel) {
    client.subscribe(channel, (m) => { log('message', m.channel + ' #' + m.offset, m.data); scheduleRender(); })
      .then((reply) => { log('info', 'subscribed ' + channel + ' at offset ' + reply.offset + ' (epoch ' + reply.epoch + ')'); renderSubs(); })
      .catch((err) => { fail('subscribe ' + channel)(err); renderSubs(); });
    renderSubs();
  }

  function unsubscribe(channel) {
    delete presence[channel];
    client.unsubscribe(channel).then(() => log('info', 'unsubscribed ' + channel), fail('unsubscribe'));
    renderSubs();
  }

  function refreshPresence(channel) {
    if (!client || client.channels().indexOf(channel) < 0) return;
    client.presence(channel).then((reply) => { presence[channel] = reply; renderSubs(); },
      (err) => { presence[channel] = err.code || String(err); renderSubs(); });
  }

  let renderTimer = null;
  /** Re-render the subscription list soon (at most twice a second while messages stream in). */
  function scheduleRender() {
    if (renderTimer === null) renderTimer = setTimeout(() => { renderTimer = null; renderSubs(); }, 500);
  }

  function renderSubs() {
    const list = $('subs');
    const datalist = $('sub-list');
    list.textContent = '';
    datalist.textContent = '';
    const channels = client ? client.channels() : [];
    if (!channels.length) list.appendChild(el('li', 'muted empty', 'No subscriptions.'));
    for (const channel of channels) {
      const li = el('li');
      li.appendChild(el('strong', null, channel));
      const pos = client.position(channel);
      li.appendChild(el('span', 'muted', pos ? ' @' + pos.offset : ' (pending)'));
      const p = presence[channel];
      const text = !p ? '' : typeof p === 'string' ? 'presence: ' + p
        : p.connections + ' conn · ' + (p.users.length ? p.users.join(', ') : 'no named users');
      li.appendChild(el('div', 'presence muted', text));
      const who = el('button', 'small', 'presence');
      who.type = 'button';
      who.onclick = () => refreshPresence(channel);
      const un = el('button', 'small', 'unsubscribe');
      un.type = 'button';
      un.onclick = () => unsubscribe(channel);
      li.appendChild(who);
      li.appendChild(un);
      list.appendChild(li);
      datalist.appendChild(el('option')).value = channel;
    }
  }

  // ---------------------------------------------------------------- online

  async function pollOnline() {
    const key = $('api-key').value.trim();
    const errBox = $('online-error');
    try {
      const res = await fetch('/api/online', { headers: key ? { Authorization: 'Bearer ' + key } : {} });
      const body = await res.json().catch(() => ({}));
      if (!res.ok) {
        const e = new Error('HTTP ' + res.status + ((body.error && ' ' + body.error.message) || ''));
        e.status = res.status;
        throw e;
      }
      const nodes = body.nodes || {};
      const names = Object.keys(nodes).sort();
      $('stat-connections').textContent = body.connections;
      $('stat-users').textContent = body.users;
      $('stat-nodes').textContent = names.length;
      $('online').textContent = 'online: ' + body.connections + ' conn · ' + body.users + ' users · ' + names.length + ' nodes';
      const tbody = $('nodes').querySelector('tbody');
      tbody.textContent = '';
      for (const name of names) {
        const tr = el('tr');
        tr.appendChild(el('td', null, name));
        tr.appendChild(el('td', null, String(nodes[name].connections)));
        tr.appendChild(el('td', null, String(nodes[name].users)));
        tbody.appendChild(tr);
      }
      errBox.hidden = true;
    } catch (err) {
      errBox.hidden = false;
      errBox.textContent = 'GET /api/online: ' + err.message +
        (err.status === 401 ? ' — set the API key below' : '');
      $('online').textContent = 'online: ?';
    }
  }

  // ---------------------------------------------------------------- wiring

  $('connect-form').addEventListener('submit', (e) => { e.preventDefault(); connect(); });
  $('disconnect-btn').addEventListener('click', () => { if (client) client.close(); });
  $('ping-btn').addEventListener('click', () => client.ping().then((ms) => log('info', 'pong in ' + ms + ' ms'), fail('ping')));

  $('subscribe-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const channel = $('sub-channel').value.trim();
    if (channel) subscribe(channel);
    $('sub-channel').value = '';
  });

  $('publish-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const channel = $('pub-channel').value.trim();
    client.publish(channel, parseData($('pub-data').value))
      .then((r) => log('info', 'published to ' + channel + ' at offset ' + r.offset), fail('publish'));
  });

  $('send-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const users = $('send-users').value.split(',').map((u) => u.trim()).filter(Boolean);
    client.send(users, parseData($('send-data').value))
      .then(() => log('info', 'sent to ' + users.join(', ')), fail('send'));
  });

  $('rpc-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const method = $('rpc-method').value.trim();
    client.rpc(method, parseData($('rpc-data').value)).then((data) => log('rpc', method + ' returned', data), fail('rpc ' + method));
  });

  $('clear-log').addEventListener('click', () => { $('log').textContent = ''; });

  const keyBox = $('api-key');
  try { keyBox.value = sessionStorage.getItem('pushgate.apiKey') || ''; } catch (err) { /* storage disabled */ }
  keyBox.addEventListener('change', () => {
    try { sessionStorage.setItem('pushgate.apiKey', keyBox.value); } catch (err) { /* storage disabled */ }
    pollOnline();
  });

  pollOnline();
  setInterval(pollOnline, 2000);

  // ?user=alice in the page URL pre-fills the box and connects at once.
  const preset = new URL(location.href).searchParams.get('user');
  if (preset !== null) {
    $('user').value = preset;
    connect();
  }
})();
