/*!
 * pushgate.js — dependency-free browser client for the pushgate WebSocket protocol.
 *
 * Three ways to load it, one source (this file), no build step:
 *   <script src="/pushgate.js">                     classic script: the global `Pushgate`
 *   import { Client } from '/static/pushgate.mjs'    ES module with named exports (pushgate.mjs)
 *   import { Client } from 'pushgate-client'         the npm package (package.json beside this file;
 *   const { Client } = require('pushgate-client')   `npm pack` it), types in pushgate.d.ts
 *
 *   const client = new Pushgate.Client('/ws', { user: 'alice' });
 *   await client.subscribe('news', (msg) => console.log(msg.data, msg.offset));
 *   await client.publish('news', { text: 'hello' });
 *   client.on('direct', (msg) => console.log('from', msg.from, msg.data));
 *
 * Protocol: docs/protocol.md (reconnect policy: "Close codes"; this client: "The browser
 * client"). ES2018, runs in browsers and in Node >= 20 (global WebSocket, fetch).
 */
(function (root, factory) {
  'use strict';
  const api = factory();
  api.default = api; // `import Pushgate from 'pushgate-client'` under CommonJS interop too
  if (typeof module === 'object' && module && module.exports) module.exports = api;
  if (root) root.Pushgate = api;
})(typeof globalThis !== 'undefined' ? globalThis : typeof self !== 'undefined' ? self : this, function () {
  'use strict';

  /** Connection states reported to `onStateChange` and the 'state' event. */
  const STATES = Object.freeze({
    CONNECTING: 'connecting', // opening a socket / waiting for welcome
    CONNECTED: 'connected', // welcome received, commands flow
    DISCONNECTED: 'disconnected', // socket lost, a reconnect is scheduled
    CLOSED: 'closed', // terminal: close() was called or the server said "do not reconnect"
  });

  /** Push types that can be observed with `client.on(type, fn)`. */
  const EVENTS = ['welcome', 'state', 'message', 'direct', 'broadcast', 'join', 'leave', 'subscribed', 'resync', 'error'];

  /**
   * What a client should do after the socket closed with `code`.
   * @param {number} code WebSocket close code
   * @returns {'stop'|'now'|'backoff'}
   */
  function closeCodeAction(code) {
    // The same table as pushgate.errors.close_action (tests/test_backoff.py runs both).
    if (code === 1012 || code === 4002) return 'now'; // restart/drain, insufficient state
    if ((code >= 4500 && code <= 4999) || code === 1008) return 'stop'; // kicked, protocol/policy violation
    return 'backoff'; // 1000 (server-initiated), 1006, 1009, 1011, 4000-4499, anything else
  }

  /** 4xx statuses of a refused handshake that still mean "later". */
  const TRANSIENT_4XX = [408, 425, 429];

  /**
   * True when an HTTP status refusing the handshake will not change by retrying: a 4xx other than
   * 408/425/429 (bad user id, missing/invalid/expired token, refused origin or connect hook). The
   * client then stops instead of retrying bad credentials forever. 5xx (503 while draining) is
   * retried with backoff. The same rule as pushgate.client.handshake_is_fatal (tests run both).
   * @param {number} status
   * @returns {boolean}
   */
  function handshakeIsFatal(status) {
    return status >= 400 && status < 500 && TRANSIENT_4XX.indexOf(status) < 0;
  }

  /** Reconnect window defaults (ms), the same as pushgate.backoff (0.5 s .. 20 s). */
  const DEFAULT_MIN_DELAY = 500;
  const DEFAULT_MAX_DELAY = 20000;
  /** "Reconnect now" (1012, 4002) waits a random delay in [0, nowJitter] ms: a node's crowd of
   *  clients must not come back to the survivors in the same millisecond. */
  const DEFAULT_NOW_JITTER = 1000;

  /**
   * The one backoff policy of pushgate (src/pushgate/backoff.py has the reasoning): the delay
   * before retry number `attempt` (0, 1, 2, ...) of a run of failures is uniform in
   * [0, min(maxDelay, minDelay * 2^attempt)] — random from the first retry on (full jitter),
   * doubling, capped. A crowd of clients that lost the same node comes back spread out.
   * @param {number} attempt failures so far in this run (0 for the first retry)
   * @param {number} [minDelay=500] ms
   * @param {number} [maxDelay=20000] ms
   * @returns {number} delay in whole ms
   */
  function backoffDelay(attempt, minDelay, maxDelay) {
    const lo = minDelay === undefined ? DEFAULT_MIN_DELAY : minDelay;
    const hi = maxDelay === undefined ? DEFAULT_MAX_DELAY : maxDelay;
    const cap = Math.min(hi, lo * Math.pow(2, Math.max(0, attempt)));
    return Math.round(Math.random() * cap);
  }

  /** Refresh a token this long (ms) before its exp at the latest ... */
  const REFRESH_MARGIN = 30000;

  /**
   * The `exp` claim of a JWT (Unix seconds), read WITHOUT verifying (the server verifies; the
   * client only needs to know when to fetch a new one). null when the token has none.
   * @param {string} token
   * @returns {number|null}
   */
  function tokenExpiry(token) {
    if (typeof token !== 'string') return null;
    const parts = token.split('.');
    if (parts.length !== 3) return null;
    try {
      let b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
      while (b64.length % 4) b64 += '=';
      const claims = JSON.parse(atob(b64));
      const exp = claims && typeof claims === 'object' ? claims.exp : undefined;
      return typeof exp === 'number' && isFinite(exp) ? exp : null;
    } catch (err) {
      return null;
    }
  }

  /**
   * How long (ms) to wait before refreshing a token that expires at `expMs`: 85% of the remaining
   * lifetime or 30 s before exp, whichever is sooner, but never before half of it (a short-lived
   * token must not be refreshed in a busy loop). The same rule as pushgate.client._token.
   * @param {number} expMs expiry, ms since the epoch
   * @param {number} [nowMs=Date.now()]
   * @returns {number} ms
   */
  function refreshDelay(expMs, nowMs) {
    const remaining = expMs - (nowMs === undefined ? Date.now() : nowMs);
    if (!(remaining > 0)) return 0;
    return Math.max(Math.min(0.85 * remaining, remaining - REFRESH_MARGIN), 0.5 * remaining);
  }

  /** Error type used to reject command promises. `code` is the server's snake_case code,
   *  or one of the client-side codes: timeout, disconnected, closed, message_too_big. */
  class PushgateError extends Error {
    /** @param {string} code @param {string} message @param {object} [reply] */
    constructor(code, message, reply) {
      super(message || code);
      this.name = 'PushgateError';
      this.code = code;
      this.reply = reply || null;
    }
  }

  function byteLength(str) {
    if (typeof TextEncoder !== 'undefined') return new TextEncoder().encode(str).length;
    return unescape(encodeURIComponent(str)).length;
  }

  /**
   * Resolve '/ws', 'http://h/ws' or 'ws://h/ws' into an absolute URL with the query: ws(s):// for
   * a WebSocket, or http(s):// when `http` is true (SSE). An array value repeats the parameter.
   */
  function buildUrl(url, params, http) {
    const base = typeof location !== 'undefined' && location.href ? location.href : undefined;
    const u = base ? new URL(url, base) : new URL(url);
    const map = http ? { 'ws:': 'http:', 'wss:': 'https:' } : { 'http:': 'ws:', 'https:': 'wss:' };
    if (map[u.protocol]) u.protocol = map[u.protocol];
    for (const key of Object.keys(params)) { // user_since '<epoch>:<offset>': ':' is fine in a query
      const value = params[key];
      if (Array.isArray(value)) for (const v of value) u.searchParams.append(key, v);
      else if (value !== undefined && value !== null && value !== '') u.searchParams.set(key, value);
    }
    return u.toString();
  }

  /** The SSE endpoint beside a WebSocket endpoint: '/ws' -> '/sse' (same host, same port). */
  function sseUrlFor(url) {
    const base = typeof location !== 'undefined' && location.href ? location.href : undefined;
    const u = base ? new URL(url, base) : new URL(url);
    u.pathname = /\/ws\/?$/.test(u.pathname) ? u.pathname.replace(/\/ws\/?$/, '/sse') : u.pathname.replace(/\/?$/, '/sse');
    u.search = '';
    return u.toString();
  }

  /**
   * The SSE fallback transport (GET /sse, docs/protocol.md "Server-Sent Events"), read with fetch()
   * rather than EventSource: fetch can read the status and JSON body of a refused handshake (a
   * browser cannot for a WebSocket), and the client keeps its own reconnect policy instead of
   * EventSource's (which would retry an expired token forever). It looks like a WebSocket to the
   * client: onopen, onmessage({data}), onclose({code, reason}), plus onrefused({status, code,
   * message}) for an HTTP refusal. Receive only: send() throws.
   */
  class SseTransport {
    constructor(url, fetchImpl) {
      this.url = url;
      this.readyState = 0;
      this.onopen = this.onmessage = this.onclose = this.onrefused = null;
      this._abort = typeof AbortController !== 'undefined' ? new AbortController() : null;
      this._done = false;
      const opts = { headers: { Accept: 'text/event-stream' }, cache: 'no-store', credentials: 'same-origin' };
      if (this._abort) opts.signal = this._abort.signal;
      fetchImpl(url, opts).then((res) => this._start(res), (err) => this._end(1006, 'SSE request failed: ' + String(err && err.message || err)));
    }

    async _start(res) {
      if (this._done) return;
      if (!res.ok) {
        let body = null;
        try { body = await res.json(); } catch (err) { /* not JSON */ }
        const e = (body && body.error) || {};
        this._done = true;
        this.readyState = 3;
        if (this.onrefused) this.onrefused({ status: res.status, code: e.code || 'http_' + res.status, message: e.message || res.statusText || '' });
        return;
      }
      this.readyState = 1;
      if (this.onopen) this.onopen({});
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buf = '';
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += decoder.decode(value, { stream: true });
          let cut;
          while ((cut = buf.search(/\r?\n\r?\n/)) >= 0) {
            const block = buf.slice(0, cut);
            buf = buf.slice(cut).replace(/^\r?\n\r?\n/, '');
            this._event(block);
            if (this._done) return;
          }
        }
      } catch (err) {
        this._end(1006, 'SSE stream failed: ' + String(err && err.message || err));
        return;
      }
      this._end(1006, 'SSE stream ended');
    }

    _event(block) { // text/event-stream: "event:" and "data:" lines; comments (": ping") ignored
      let type = 'message';
      const data = [];
      for (const line of block.split(/\r?\n/)) {
        if (line.startsWith('event:')) type = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      }
      if (!data.length) return;
      const text = data.join('\n');
      if (type === 'close') { // the server ends the stream with a close code (4005 at the token's exp)
        let info = {};
        try { info = JSON.parse(text) || {}; } catch (err) { /* keep {} */ }
        this._end(typeof info.code === 'number' ? info.code : 1006, String(info.reason || ''));
      } else if (this.onmessage) {
        this.onmessage({ data: text });
      }
    }

    _end(code, reason) {
      if (this._done) return;
      this._done = true;
      this.readyState = 3;
      if (this._abort) this._abort.abort();
      if (this.onclose) this.onclose({ code: code, reason: reason });
    }

    send() { throw new PushgateError('not_supported', 'this connection fell back to SSE, which only receives'); }

    close(code, reason) { // like WebSocket.close: onclose follows, asynchronously
      setTimeout(() => this._end(code || 1000, reason || ''), 0);
    }
  }

  class Client {
    /**
     * Create a client and connect at once (unless `autoConnect: false`).
     * @param {string} url WebSocket endpoint, e.g. 'ws://host:8080/ws' or '/ws' (resolved against the page).
     * @param {object} [options]
     * @param {string} [options.user] dev-mode identity, sent as ?user=
     * @param {string|function(): (string|Promise<string>)} [options.token] JWT, sent as ?token=;
     *   a function is called before every (re)connect so a fresh token can be fetched, and shortly
     *   before the token's `exp` (see refreshDelay) to send a `refresh` command over the open
     *   connection; if that fails the client reconnects with a fresh token (as after close 4005).
     * @param {function(object)} [options.onWelcome] called with the welcome frame on every (re)connect
     * @param {function(string, object)} [options.onStateChange] called with (state, {code, reason, delay})
     * @param {number} [options.minDelay=500] base reconnect delay in ms
     * @param {number} [options.maxDelay=20000] cap of the reconnect delay in ms
     * @param {number} [options.requestTimeout=10000] ms before a command promise rejects with 'timeout'
     * @param {number} [options.maxMessageSize=65536] frames larger than this are refused locally
     * @param {number} [options.pingInterval=0] if > 0, send a protocol ping this often (ms) and
     *   reconnect when no pong arrives within requestTimeout (browsers cannot see WS-level pings)
     * @param {number} [options.nowJitter=1000] after a close that says "reconnect now" (1012, 4002)
     *   the first attempt waits a random delay in [0, nowJitter] ms (0 = at once)
     * @param {{epoch: string, offset: number}} [options.userSince] user-stream position to start
     *   from (one persisted from userPosition() or a direct's {epoch, offset}); without it a fresh
     *   client gets the direct messages its user has not acknowledged yet
     * @param {boolean} [options.autoAck=false] ack each direct message once the 'direct' handlers
     *   have returned (coalesced, see ack())
     * @param {boolean} [options.autoConnect=true]
     * @param {function} [options.WebSocket] WebSocket constructor to use instead of the global one
     * @param {string[]} [options.transports=['websocket', 'sse']] what to try, in order: a
     *   WebSocket that fails before it opens is followed at once by an SSE attempt (receive only);
     *   it also reads the JSON body of a refused handshake, which a browser hides for a WebSocket
     * @param {string} [options.sseUrl] the SSE endpoint (default: url with /ws replaced by /sse)
     * @param {function} [options.fetch] fetch implementation for SSE (default: the global fetch)
     * @param {EventTarget|null} [options.network] where 'online'/'offline' events come from
     *   (default: window in a browser; null = no offline detection)
     */
    constructor(url, options) {
      const o = options || {};
      this.url = url;
      this.options = Object.assign({ minDelay: DEFAULT_MIN_DELAY, maxDelay: DEFAULT_MAX_DELAY, requestTimeout: 10000,
        maxMessageSize: 65536, pingInterval: 0, nowJitter: DEFAULT_NOW_JITTER, autoAck: false, autoConnect: true }, o);
      /** @type {string} one of Pushgate.STATES */
      this.state = STATES.DISCONNECTED;
      /** Data from the last welcome frame. */
      this.clientId = null;
      this.userId = null;
      this.node = null;
      this._ws = null;
      this._nextId = 1;
      this._pending = new Map(); // id -> {resolve, reject, timer, sent}
      this._queue = []; // [id, frame] waiting for the connection
      this._subs = new Map(); // channel -> {handler, epoch, offset, ready}
      this._handlers = {};
      this._attempts = 0;
      this._reconnectTimer = null;
      this._pingTimer = null;
      this._refreshTimer = null;
      this._token = null; // the token of the current connection (only kept with a token function)
      this._connectedAt = 0;
      this._immediateUsed = false; // one "reconnect now" per healthy period, then backoff
      this._gen = 0; // bumped by connect()/close() so a stale token await cannot open a socket
      this._closed = false;
      // The user stream: position of the last direct handed to the 'direct' handlers (dedupe and
      // the handshake's user_since); the user_since of the current connection; coalesced acks.
      const since = o.userSince;
      this._userPos = since && typeof since.offset === 'number' ? { epoch: since.epoch, offset: since.offset } : null;
      this._connSince = null;
      this._acks = { target: null, targetWaiters: [], inflight: null, inflightWaiters: [] };
      /** 'websocket' or 'sse' while connected (or connecting), else null. */
      this.transport = null;
      /** How the last connection ended: {code, reason} of a close, or {code: null, reason,
       *  status, error} for a refused handshake (HTTP status and the server's error code). */
      this.lastClose = null;
      /** False while the browser says it is offline (no reconnect attempts until 'online'). */
      this.online = true;
      this._fallback = false; // a WebSocket failed to open and SSE worked: stay on SSE for now
      this._sseChannels = null; // channels the current SSE stream was opened with
      this._reopenTimer = null;
      this._upgradeTimer = null;
      this._watchNetwork(o.network);
      if (this.options.autoConnect) this.connect();
    }

    _watchNetwork(target) {
      const net = target !== undefined ? target
        : typeof window !== 'undefined' && window && typeof window.addEventListener === 'function' ? window : null;
      if (!net) return;
      if (typeof navigator !== 'undefined' && navigator && navigator.onLine === false) this.online = false;
      const listeners = { offline: () => this._onOffline(), online: () => this._onOnline() };
      // removed by close() (a page that makes a client per login must not keep the old ones
      // listening), added again by connect()
      this._network = { target: net, listeners: listeners, on: false };
      this._listenNetwork(true);
    }

    _listenNetwork(on) {
      const n = this._network;
      if (!n || n.on === on) return;
      n.on = on;
      for (const type of ['offline', 'online']) {
        if (on) n.target.addEventListener(type, n.listeners[type]);
        else if (typeof n.target.removeEventListener === 'function') n.target.removeEventListener(type, n.listeners[type]);
      }
    }

    _onOffline() {
      // Browsers fire 'offline' when the network goes away; a socket may linger for minutes before
      // it notices, so drop it at once and wait for 'online' instead of burning backoff attempts.
      this.online = false;
      if (this._closed) return;
      const ws = this._ws;
      if (ws) {
        this._ws = null;
        try { ws.close(4000, 'offline'); } catch (err) { /* still connecting */ }
        this._onClose(1006, 'offline');
      } else if (this._reconnectTimer) {
        clearTimeout(this._reconnectTimer);
        this._reconnectTimer = null;
        this._setState(STATES.DISCONNECTED, { code: null, reason: 'offline', delay: null });
      }
    }

    _onOnline() {
      this.online = true;
      if (this._closed || this._ws || this.state === STATES.CONNECTING) return;
      this._attempts = 0; // the network is back: a fresh start, right now
      this.connect();
    }

    // ----------------------------------------------------------------------------- events

    /**
     * Listen for an event: 'message' (every publication), 'direct', 'broadcast', 'join', 'leave',
     * 'welcome' (the frame, plus userSince: the position this connection passed or null, and
     * maybeMissed: true when it passed one and stream.recovered is false), 'state',
     * 'subscribed' ({channel, recovered, epoch, offset, resubscribe}), 'resync' ({channel, epoch,
     * offset}, or {stream: 'user', epoch, offset} for the user stream: messages before it may be
     * lost; reload), 'error'. A direct that no 'direct' handler takes does not move userPosition()
     * and is not acked: register 'direct' handlers before the client connects.
     * @returns {function()} call it to remove the listener
     */
    on(type, fn) {
      if (EVENTS.indexOf(type) < 0) throw new Error('unknown event: ' + type);
      (this._handlers[type] = this._handlers[type] || []).push(fn);
      return () => this.off(type, fn);
    }

    /** Remove a listener added with on(). */
    off(type, fn) {
      const list = this._handlers[type];
      if (list) this._handlers[type] = list.filter((f) => f !== fn);
    }

    _emit(type, payload) {
      for (const fn of (this._handlers[type] || []).slice()) {
        try { fn(payload); } catch (err) { setTimeout(() => { throw err; }, 0); }
      }
    }

    _setState(state, info) {
      if (this.state === state) return;
      this.state = state;
      const detail = info || {};
      if (this.options.onStateChange) {
        try { this.options.onStateChange(state, detail); } catch (err) { setTimeout(() => { throw err; }, 0); }
      }
      this._emit('state', Object.assign({ state: state }, detail));
    }

    // ------------------------------------------------------------------------- connection

    /** Open the connection (called by the constructor unless autoConnect is false). */
    async connect() {
      this._closed = false;
      this._listenNetwork(true);
      if (this._ws || this.state === STATES.CONNECTING) return;
      clearTimeout(this._reconnectTimer);
      this._reconnectTimer = null;
      if (!this.online) {
        this._setState(STATES.DISCONNECTED, { code: null, reason: 'offline', delay: null });
        return; // the 'online' event connects
      }
      this._setState(STATES.CONNECTING);
      const gen = ++this._gen;
      let token = this.options.token;
      try {
        // always a turn of the event loop's microtasks, also for a fixed token: subscriptions made
        // right after `new Client(...)` then go into an SSE stream's URL at once
        token = typeof token === 'function' ? await token() : await token;
      } catch (err) {
        this._emit('error', { type: 'error', code: 'token', message: String(err) });
        this._scheduleReconnect(4000, 'token provider failed');
        return;
      }
      if (this._closed || gen !== this._gen) return;
      this._token = typeof this.options.token === 'function' ? token : null;
      const pos = this._userPos;
      this._connSince = pos ? { epoch: pos.epoch, offset: pos.offset } : null;
      const params = { user: this.options.user, token: token, user_since: pos ? pos.epoch + ':' + pos.offset : undefined };
      const transports = this.options.transports || ['websocket', 'sse'];
      const WS = this.options.WebSocket || (typeof WebSocket !== 'undefined' ? WebSocket : null);
      const canWs = transports.indexOf('websocket') >= 0 && WS;
      const canSse = transports.indexOf('sse') >= 0 && this._fetch();
      if (canWs && !(this._fallback && canSse)) this._openWebSocket(WS, params, canSse);
      else if (canSse) this._openSse(params);
      else throw new Error('Pushgate: no transport available (no WebSocket, no fetch)');
    }

    _fetch() {
      const f = this.options.fetch || (typeof fetch === 'function' ? fetch : null);
      return f ? (f === fetch ? fetch.bind(globalThis) : f) : null;
    }

    _openWebSocket(WS, params, canSse) {
      let ws;
      try {
        ws = new WS(buildUrl(this.url, params));
      } catch (err) {
        this._scheduleReconnect(1006, String(err));
        return;
      }
      this._ws = ws;
      this.transport = 'websocket';
      let opened = false;
      let failed = false;
      // A WebSocket that never opens: blocked by a proxy, server down, or a refused handshake (a
      // browser shows none of these apart: 1006). An SSE attempt tells them apart: it works (the
      // WebSocket is blocked: stay on SSE), it is refused with a JSON body saying why, or it
      // cannot connect either (the server is down: back off).
      const fail = (code, reason) => {
        if (failed || this._ws !== ws) return;
        failed = true;
        if (!opened && canSse && code === 1006) {
          this._ws = null;
          this._openSse(params, true);
        } else {
          this._onClose(code, reason);
        }
      };
      ws.onopen = () => { opened = true; };
      ws.onmessage = (ev) => { if (this._ws === ws) { opened = true; this._onFrame(ev.data); } };
      ws.onclose = (ev) => fail(ev.code, ev.reason);
      // Per spec an error is always followed by close; some runtimes (Node 20's undici on a failed
      // handshake) never fire close, so treat a lingering error as an abnormal closure (1006).
      ws.onerror = () => {
        setTimeout(() => {
          if (this._ws !== ws || failed) return;
          try { ws.close(); } catch (err) { /* still connecting */ }
          fail(1006, 'connection error');
        }, 250);
      };
    }

    _openSse(params, afterWebSocket) {
      const channels = Array.from(this._subs.keys());
      const since = [];
      for (const channel of channels) {
        const sub = this._subs.get(channel);
        if (sub.seenEpoch !== null && sub.seenOffset !== null) since.push(channel + ':' + sub.seenEpoch + ':' + sub.seenOffset);
      }
      const url = buildUrl(this.options.sseUrl || sseUrlFor(this.url),
        Object.assign({}, params, { channel: channels, since: since }), true);
      const sse = new SseTransport(url, this._fetch());
      this._ws = sse;
      this.transport = 'sse';
      this._sseChannels = channels;
      let opened = false;
      sse.onopen = () => { opened = true; };
      sse.onmessage = (ev) => { if (this._ws === sse) this._onFrame(ev.data); };
      sse.onclose = (ev) => {
        if (this._ws !== sse) return;
        if (!opened) this._fallback = false; // neither transport connects: the server is down
        this._onClose(ev.code, ev.reason);
      };
      sse.onrefused = (refusal) => { if (this._ws === sse) this._onRefused(refusal); };
      if (afterWebSocket) this._fallback = true;
    }

    /** The handshake was refused over HTTP (read from the SSE attempt: same handshake as /ws). */
    _onRefused(refusal) {
      this._ws = null;
      this.transport = null;
      this._fallback = false;
      const info = { code: null, reason: refusal.message, status: refusal.status, error: refusal.code };
      this.lastClose = info;
      this._emit('error', { type: 'error', code: refusal.code, message: refusal.message, status: refusal.status });
      if (!handshakeIsFatal(refusal.status)) { // 503 draining / unavailable, 429: later
        this._teardown('disconnected', 'handshake refused (' + refusal.status + ')');
        this._scheduleReconnect(null, refusal.message, false, info);
        return;
      }
      // A bad token or a refused user will not get better by retrying: stop, and say why.
      this._closed = true;
      this._listenNetwork(false);
      const err = new PushgateError(refusal.code, refusal.message);
      err.status = refusal.status;
      this._teardown(err);
      for (const sub of this._subs.values()) if (sub.ready.pending) sub.ready.reject(err);
      this._setState(STATES.CLOSED, info);
    }

    /** Close for good: no reconnect, pending commands reject with code 'closed'. */
    close() {
      this._closed = true;
      this._gen += 1;
      clearTimeout(this._reconnectTimer);
      this._reconnectTimer = null;
      clearTimeout(this._reopenTimer);
      this._reopenTimer = null;
      this._listenNetwork(false);
      this.transport = null;
      const ws = this._ws;
      this._teardown('closed', 'client closed');
      if (ws) {
        try { ws.close(1000, 'client closed'); } catch (err) { /* already closing */ }
      }
      this._setState(STATES.CLOSED, { code: 1000, reason: 'client closed' });
    }

    _teardown(code, message) {
      this._ws = null;
      this._sseChannels = null;
      clearInterval(this._pingTimer);
      this._pingTimer = null;
      clearTimeout(this._refreshTimer);
      this._refreshTimer = null;
      clearTimeout(this._upgradeTimer);
      this._upgradeTimer = null;
      // Commands already on the wire may or may not have been applied: fail them.
      // Queued (unsent) ones survive a reconnect unless the client is closing for good.
      for (const [id, p] of Array.from(this._pending)) {
        if (p.sent || this._closed) this._settle(id, code instanceof PushgateError ? code : new PushgateError(code, message));
      }
      if (this._closed) this._queue = [];
    }

    _onClose(code, reason) {
      this.transport = null;
      this.lastClose = { code: code, reason: reason || '' };
      const uptime = this._connectedAt ? Date.now() - this._connectedAt : 0;
      this._connectedAt = 0;
      if (uptime > this.options.maxDelay) { // it was a healthy connection
        this._attempts = 0;
        this._immediateUsed = false;
      }
      const action = closeCodeAction(code);
      if (action === 'stop') this._closed = true;
      const why = 'connection closed (' + code + (reason ? ' ' + reason : '') + ')';
      this._teardown(code === 1009 ? 'message_too_big' : action === 'stop' ? 'closed' : 'disconnected', why);
      if (action === 'stop') {
        this._listenNetwork(false);
        for (const sub of this._subs.values()) if (sub.ready.pending) sub.ready.reject(new PushgateError('closed', why));
        this._setState(STATES.CLOSED, { code: code, reason: reason });
        return;
      }
      this._scheduleReconnect(code, reason, action === 'now');
    }

    _scheduleReconnect(code, reason, immediate, extra) {
      if (this._closed) return;
      this._ws = null;
      this.transport = null;
      if (!this.online) { // wait for the browser's 'online' event instead of a timer
        this._setState(STATES.DISCONNECTED, Object.assign({ code: code, reason: reason, delay: null, offline: true }, extra || {}));
        return;
      }
      let delay;
      if (this._reopening) { // the SSE stream reopens with another channel list: at once
        this._reopening = false;
        delay = 0;
      } else if (immediate && !this._immediateUsed) {
        this._immediateUsed = true; // a server closing with 1012/4002 again soon gets backoff
        delay = Math.round(Math.random() * Math.max(0, this.options.nowJitter || 0)); // "now", spread out
      } else {
        delay = backoffDelay(this._attempts, this.options.minDelay, this.options.maxDelay);
        this._attempts += 1;
      }
      this._setState(STATES.DISCONNECTED, Object.assign({ code: code, reason: reason, delay: delay }, extra || {}));
      clearTimeout(this._reconnectTimer);
      this._reconnectTimer = setTimeout(() => { this._reconnectTimer = null; this.connect(); }, delay);
    }

    _onWelcome(frame) {
      this.clientId = frame.client;
      this.userId = frame.user === undefined ? null : frame.user;
      this.node = frame.node;
      this._connectedAt = Date.now();
      const since = this._connSince;
      frame.userSince = since;
      frame.maybeMissed = !!(since && frame.stream && frame.stream.recovered !== true);
      // The head is not taken as the position (the replay that follows moves it), except for a
      // new epoch: history was lost, so ask for the new epoch from its start next time.
      const st = frame.stream;
      if (st && this._userPos && typeof st.epoch === 'string' && st.epoch !== this._userPos.epoch) {
        this._userPos = { epoch: st.epoch, offset: 0 };
      }
      this._setState(STATES.CONNECTED);
      if (this.options.onWelcome) {
        try { this.options.onWelcome(frame); } catch (err) { setTimeout(() => { throw err; }, 0); }
      }
      this._emit('welcome', frame);
      // Resubscribe everything, recovering from the last seen position.
      for (const channel of Array.from(this._subs.keys())) this._sendSubscribe(channel);
      const queued = this._queue;
      this._queue = [];
      for (const item of queued) if (this._pending.has(item[0])) this._transmit(item[0], item[1]);
      if (this.transport === 'sse') { // no commands over SSE: no refresh (4005 reconnects), no ping
        this._scheduleUpgrade();
        return;
      }
      this._scheduleRefresh();
      if (this.options.pingInterval > 0) {
        this._pingTimer = setInterval(() => {
          this.ping().catch((err) => {
            if (err.code === 'timeout' && this._ws) this._ws.close(4000, 'pong timeout');
          });
        }, this.options.pingInterval);
      }
    }

    /** On SSE after a WebSocket failed: every maxDelay, check whether a WebSocket opens now (the
     *  proxy let it through, or the failure was a fluke); if so, reconnect over it. */
    _scheduleUpgrade() {
      clearTimeout(this._upgradeTimer);
      const WS = this.options.WebSocket || (typeof WebSocket !== 'undefined' ? WebSocket : null);
      if (!this._fallback || !WS || (this.options.transports || ['websocket']).indexOf('websocket') < 0) return;
      const sse = this._ws;
      this._upgradeTimer = setTimeout(() => {
        this._upgradeTimer = null;
        if (this._ws !== sse) return;
        let probe;
        try { probe = new WS(buildUrl(this.url, { user: this.options.user, token: this._token || (typeof this.options.token === 'string' ? this.options.token : undefined) })); } catch (err) { this._scheduleUpgrade(); return; }
        let done = false;
        const finish = (works) => {
          if (done) return;
          done = true;
          try { probe.close(1000, 'probe'); } catch (err) { /* still connecting */ }
          if (this._ws !== sse) return;
          if (!works) { this._scheduleUpgrade(); return; }
          this._fallback = false; // WebSockets work again: reconnect over one, recovering with since
          this._reopening = true;
          sse.close(4000, 'upgrading to WebSocket');
        };
        probe.onmessage = () => finish(true); // the probe's welcome
        probe.onclose = () => finish(false);
        probe.onerror = () => finish(false);
      }, this.options.maxDelay);
    }

    /** Arm one timer to refresh the token before its exp (only a token function gives new ones). */
    _scheduleRefresh() {
      clearTimeout(this._refreshTimer);
      this._refreshTimer = null;
      const exp = tokenExpiry(this._token);
      if (exp === null || !this._ws) return;
      const ws = this._ws;
      this._refreshTimer = setTimeout(() => { this._refreshTimer = null; this._refresh(ws); },
        refreshDelay(exp * 1000, Date.now()));
    }

    async _refresh(ws) {
      if (this._ws !== ws) return;
      let token;
      try {
        token = await this.options.token();
        if (!token) throw new Error('the token provider returned no token');
        await this.request({ type: 'refresh', token: token });
      } catch (err) {
        if (this._ws !== ws || this._closed) return; // that connection is gone already
        // provider failed or the server refused the token: start over with a fresh one
        this._emit('error', { type: 'error', code: 'token', message: 'token refresh failed: ' + String(err.message || err) });
        try { ws.close(4000, 'token refresh failed'); } catch (e) { /* already closing */ }
        return;
      }
      if (this._ws !== ws) return;
      this._token = token;
      this._scheduleRefresh();
    }

    // --------------------------------------------------------------------------- frames

    _onFrame(raw) {
      if (typeof raw !== 'string') return; // the protocol is text-only
      let msg;
      try { msg = JSON.parse(raw); } catch (err) { return; }
      if (!msg || typeof msg !== 'object') return;
      if (msg.id !== undefined && msg.id !== null && this._pending.has(msg.id)) {
        if (msg.type === 'error') this._settle(msg.id, new PushgateError(msg.code, msg.message, msg));
        else this._settle(msg.id, null, msg);
        return;
      }
      switch (msg.type) {
        case 'welcome': this._onWelcome(msg); break;
        case 'message': this._onPublication(msg); break;
        case 'resync': if (msg.stream === 'user') this._onUserResync(msg); else this._onResync(msg); break;
        case 'direct': this._onDirect(msg); break;
        case 'error': this._onErrorFrame(msg); break;
        case 'broadcast': case 'join': case 'leave':
          this._emit(msg.type, msg); break;
        default: break; // unknown push types are ignored for forward compatibility
      }
    }

    /** An error push. Over SSE a channel the stream could not subscribe is reported as an error
     *  whose message starts with '<channel>: ': that subscription is dropped, as a refused one. */
    _onErrorFrame(msg) {
      if (this.transport === 'sse' && typeof msg.message === 'string') {
        for (const [channel, sub] of this._subs) {
          if (msg.message.indexOf(channel + ': ') !== 0) continue;
          this._subs.delete(channel);
          const err = new PushgateError(msg.code, msg.message, msg);
          if (sub.ready.pending) { sub.ready.reject(err); return; }
          this._emit('error', Object.assign({}, msg, { channel: channel }));
          return;
        }
      }
      this._emit('error', msg);
    }

    /**
     * The server could not keep a channel's stream whole (its history lost what the node missed).
     * The subscription stays and goes on from {epoch, offset}; what came before may be lost, so
     * the app hears a 'resync' event ({channel, epoch, offset}) and should reload its state.
     */
    _onResync(msg) {
      const sub = this._subs.get(msg.channel);
      if (!sub || typeof msg.offset !== 'number') return;
      sub.epoch = sub.seenEpoch = msg.epoch;
      sub.offset = sub.seenOffset = msg.offset;
      this._emit('resync', msg);
    }

    /** The user stream goes on from {epoch, offset} (what came before may be lost). */
    _onUserResync(msg) {
      if (typeof msg.offset !== 'number' || typeof msg.epoch !== 'string') return;
      this._userPos = { epoch: msg.epoch, offset: msg.offset };
      this._emit('resync', msg);
    }

    /** A direct message: drop duplicates by user-stream position, hand it to the handlers, then
     *  move the position (and auto-ack) if some handler took it. */
    _onDirect(msg) {
      const positioned = typeof msg.offset === 'number' && typeof msg.epoch === 'string';
      const pos = this._userPos;
      if (positioned && pos && pos.epoch === msg.epoch && msg.offset <= pos.offset) return; // duplicate
      const taken = (this._handlers.direct || []).length > 0;
      this._emit('direct', msg);
      if (!positioned || !taken) return; // an older server without user streams, or nobody listening
      this._userPos = { epoch: msg.epoch, offset: msg.offset };
      if (this.options.autoAck) this._wantAck(this._userPos, null);
    }

    _onPublication(msg) {
      const sub = this._subs.get(msg.channel);
      if (!sub) return; // straggler after unsubscribe
      if (typeof msg.offset === 'number') {
        // De-duplicate against what was delivered (replays can overlap live publications).
        if (sub.seenEpoch === msg.epoch && sub.seenOffset !== null && msg.offset <= sub.seenOffset) return;
        sub.seenEpoch = msg.epoch;
        sub.seenOffset = msg.offset;
        advance(sub, msg.epoch, msg.offset);
      }
      try { sub.handler(msg); } catch (err) { setTimeout(() => { throw err; }, 0); }
      this._emit('message', msg);
    }

    // ------------------------------------------------------------------------- requests

    _settle(id, err, value) {
      const p = this._pending.get(id);
      if (!p) return;
      this._pending.delete(id);
      clearTimeout(p.timer);
      if (err) p.reject(err); else p.resolve(value);
    }

    _transmit(id, frame) {
      const p = this._pending.get(id);
      try {
        this._ws.send(frame);
        if (p) p.sent = true;
      } catch (err) {
        this._settle(id, new PushgateError('disconnected', String(err)));
      }
    }

    /**
     * Send a command with a fresh id; resolves with the reply frame, rejects with PushgateError.
     * While not connected the command waits (up to requestTimeout) for the next connection.
     * @param {object} command e.g. {type: 'publish', channel: 'news', data: 1}
     * @returns {Promise<object>}
     */
    request(command) {
      if (this._closed) return Promise.reject(new PushgateError('closed', 'client is closed'));
      if (this.transport === 'sse' && this.state === STATES.CONNECTED) {
        return Promise.reject(new PushgateError('not_supported', command.type + ' needs a WebSocket; this connection fell back to SSE (receive only)'));
      }
      const id = this._nextId++;
      const frame = JSON.stringify(Object.assign({}, command, { id: id }));
      if (byteLength(frame) > this.options.maxMessageSize) {
        return Promise.reject(new PushgateError('message_too_big', 'frame exceeds maxMessageSize'));
      }
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => this._settle(id, new PushgateError('timeout', command.type + ' timed out')),
          this.options.requestTimeout);
        this._pending.set(id, { resolve: resolve, reject: reject, timer: timer, sent: false });
        if (this.state === STATES.CONNECTED && this._ws) this._transmit(id, frame);
        else this._queue.push([id, frame]);
      });
    }

    /**
     * Subscribe to a channel. The handler receives every publication once, in order:
     * {type:'message', channel, data, offset, epoch}. The subscription survives reconnects and is
     * recovered from the last seen {epoch, offset}. Resolves with the ok reply ({epoch, offset, recovered?}).
     * @param {string} channel
     * @param {function(object)} handler
     * @param {{since?: {epoch: string, offset: number}}} [opts] start from a known position
     * @returns {Promise<object>}
     */
    subscribe(channel, handler, opts) {
      if (this._subs.has(channel)) {
        return Promise.reject(new PushgateError('already_subscribed', 'already subscribed: ' + channel));
      }
      if (this._closed) return Promise.reject(new PushgateError('closed', 'client is closed'));
      const since = opts && opts.since;
      // epoch/offset: recovery position sent as `since`; seenEpoch/seenOffset: last delivered.
      const sub = { handler: handler || function () {}, epoch: null, offset: null,
        seenEpoch: null, seenOffset: null, ready: deferred(), inflight: false, retries: 0 };
      if (since) sub.epoch = sub.seenEpoch = since.epoch;
      if (since) sub.offset = sub.seenOffset = since.offset;
      this._subs.set(channel, sub);
      if (this.state === STATES.CONNECTED) this._sendSubscribe(channel);
      return sub.ready.promise;
    }

    _sendSubscribe(channel) {
      const sub = this._subs.get(channel);
      if (!sub || sub.inflight || this.state !== STATES.CONNECTED) return;
      if (this.transport === 'sse') {
        if (this._sseChannels && this._sseChannels.indexOf(channel) >= 0) { // opened with the stream
          const resubscribe = !sub.ready.pending;
          const reply = { type: 'ok', channel: channel, epoch: sub.epoch, offset: sub.offset, transport: 'sse' };
          if (sub.ready.pending) sub.ready.resolve(reply);
          this._emit('subscribed', { channel: channel, epoch: sub.epoch, offset: sub.offset, recovered: null, resubscribe: resubscribe });
        } else {
          this._reopenSse();
        }
        return;
      }
      sub.inflight = true;
      const resubscribe = !sub.ready.pending;
      const cmd = { type: 'subscribe', channel: channel };
      if (sub.epoch !== null && sub.offset !== null) cmd.since = { epoch: sub.epoch, offset: sub.offset };
      this.request(cmd).then((reply) => {
        sub.inflight = false;
        sub.retries = 0;
        if (this._subs.get(channel) !== sub) return;
        // After a recovered replay the replayed publications move the position themselves: jumping
        // to the reply's offset now would skip the rest of a replay cut short by a disconnect.
        if (reply.recovered !== true) advance(sub, reply.epoch, reply.offset);
        const info = { channel: channel, epoch: reply.epoch, offset: reply.offset,
          recovered: cmd.since ? reply.recovered === true : null, resubscribe: resubscribe };
        if (sub.ready.pending) sub.ready.resolve(reply);
        this._emit('subscribed', info);
      }, (err) => {
        sub.inflight = false;
        if (this._subs.get(channel) !== sub) return;
        if (err.code === 'disconnected' || err.code === 'timeout' || err.code === 'message_too_big') {
          if (err.code === 'timeout' && this._ws) this._ws.close(4000, 'subscribe timeout');
          return; // retried on the next welcome
        }
        if (err.code === 'unavailable') { // broker down: retry this channel with backoff
          const delay = backoffDelay(sub.retries++, this.options.minDelay, this.options.maxDelay);
          setTimeout(() => { if (this._subs.get(channel) === sub) this._sendSubscribe(channel); }, delay);
          return;
        }
        this._subs.delete(channel); // refused for good (permission_denied, rejected, limit_exceeded, ...)
        if (sub.ready.pending) sub.ready.reject(err);
        else this._emit('error', { type: 'error', code: err.code, message: err.message, channel: channel });
      });
    }

    /** Stop receiving a channel. Resolves even if the server says not_subscribed. */
    unsubscribe(channel) {
      const sub = this._subs.get(channel);
      if (!sub) return Promise.resolve({ type: 'ok' });
      this._subs.delete(channel);
      if (sub.ready.pending) sub.ready.reject(new PushgateError('unsubscribed', 'unsubscribed before confirmation'));
      if (this.transport === 'sse') this._reopenSse();
      if (this.state !== STATES.CONNECTED || this.transport === 'sse') return Promise.resolve({ type: 'ok' });
      return this.request({ type: 'unsubscribe', channel: channel }).catch((err) => {
        if (err.code === 'not_subscribed' || err.code === 'disconnected') return { type: 'ok' };
        throw err;
      });
    }

    /** An SSE stream carries a fixed channel list: reopen it (soon, once for a burst of changes),
     *  recovering every channel from its last seen position. */
    _reopenSse() {
      if (this._reopenTimer) return;
      this._reopenTimer = setTimeout(() => {
        this._reopenTimer = null;
        const sse = this._ws;
        if (this.transport !== 'sse' || !sse) return;
        this._reopening = true;
        sse.close(4000, 'channels changed');
      }, 0);
    }

    /** Last seen position of a subscribed channel, e.g. to persist it: {epoch, offset} or null. */
    position(channel) {
      const sub = this._subs.get(channel);
      return sub && sub.epoch !== null ? { epoch: sub.epoch, offset: sub.offset } : null;
    }

    /** Channels currently subscribed (including ones waiting for a reconnect). */
    channels() {
      return Array.from(this._subs.keys());
    }

    /** Publish to a channel; resolves with {epoch, offset, ...}. Options: {idempotencyKey} makes a retry safe. */
    publish(channel, data, options) {
      const cmd = { type: 'publish', channel: channel, data: data === undefined ? null : data };
      // With an idempotency key a retry is safe: the server applies the same key once per window.
      if (options && options.idempotencyKey) cmd.idempotency_key = options.idempotencyKey;
      return this.request(cmd);
    }

    /**
     * Send data to every connection of each named user; they get {type:'direct', from, data,
     * offset, epoch}. Resolves with the reply: positions {user: {epoch, offset}} in each user's
     * stream. Options: {idempotencyKey} makes a retry safe (applied once per recipient).
     */
    send(users, data, options) {
      const cmd = { type: 'send', to: Array.isArray(users) ? users : [users], data: data === undefined ? null : data };
      if (options && options.idempotencyKey) cmd.idempotency_key = options.idempotencyKey;
      return this.request(cmd);
    }

    /** The user-stream position of the last direct handed to the 'direct' handlers (or resynced
     *  to): {epoch, offset} or null. Persist it and pass it as the userSince option later. */
    userPosition() {
      return this._userPos ? { epoch: this._userPos.epoch, offset: this._userPos.offset } : null;
    }

    /**
     * Acknowledge the user stream up to a direct message or an {epoch, offset}: the server records
     * that the user processed everything up to it, so a device connecting without a position no
     * longer gets it. Resolves with the server's acked {epoch, offset}. Coalesced: at most one ack
     * is in flight; acks asked for meanwhile go out as one, for the highest offset, after the reply.
     * @param {{epoch: string, offset: number}} msgOrPosition
     * @returns {Promise<{epoch: string, offset: number}>}
     */
    ack(msgOrPosition) {
      const m = msgOrPosition || {};
      if (typeof m.epoch !== 'string' || typeof m.offset !== 'number') {
        return Promise.reject(new PushgateError('bad_request', 'ack needs {epoch, offset} (a direct from a server with user streams)'));
      }
      if (this._closed) return Promise.reject(new PushgateError('closed', 'client is closed'));
      return new Promise((resolve, reject) => this._wantAck({ epoch: m.epoch, offset: m.offset },
        { resolve: resolve, reject: reject }));
    }

    _wantAck(pos, waiter) {
      const a = this._acks;
      if (a.inflight && !a.target && covers(a.inflight, pos)) { // answered by the ack on the wire
        if (waiter) a.inflightWaiters.push(waiter);
        return;
      }
      if (!a.target || !covers(a.target, pos)) a.target = pos; // higher, or another epoch
      if (waiter) a.targetWaiters.push(waiter);
      if (!a.inflight) this._sendAck();
    }

    _sendAck() {
      const a = this._acks;
      if (!a.target) return;
      const pos = a.target;
      a.inflight = pos;
      a.inflightWaiters = a.targetWaiters;
      a.target = null;
      a.targetWaiters = [];
      const done = (err, reply) => {
        const waiters = a.inflightWaiters;
        a.inflight = null;
        a.inflightWaiters = [];
        for (const w of waiters) {
          if (err) w.reject(err); else w.resolve({ epoch: reply.epoch, offset: reply.offset });
        }
        // an auto-ack lost with its socket: send it again on the next connection
        if (err && err.code === 'disconnected' && !waiters.length && !a.target) a.target = pos;
        this._sendAck();
      };
      this.request({ type: 'ack', epoch: pos.epoch, offset: pos.offset }).then((reply) => done(null, reply), (err) => done(err));
    }

    /** Who is subscribed to a channel; resolves with {users: [...], connections: N, ...}. */
    presence(channel) {
      return this.request({ type: 'presence', channel: channel });
    }

    /** Call a server-side handler; resolves with its result (the reply's `data`). */
    rpc(method, data) {
      return this.request({ type: 'rpc', method: method, data: data === undefined ? null : data })
        .then((reply) => reply.data);
    }

    /** Round trip to the server; resolves with the round-trip time in ms. */
    ping() {
      const start = Date.now();
      return this.request({ type: 'ping' }).then(() => Date.now() - start);
    }
  }

  /** True when position a includes b: same epoch, offset at least b's. */
  function covers(a, b) {
    return a.epoch === b.epoch && a.offset >= b.offset;
  }

  /** Move a subscription's recovery position forward (or onto a new epoch). */
  function advance(sub, epoch, offset) {
    if (typeof offset !== 'number' || epoch === undefined) return;
    if (sub.epoch !== epoch || sub.offset === null || offset > sub.offset) {
      sub.epoch = epoch;
      sub.offset = offset;
    }
  }

  function deferred() {
    const d = { pending: true };
    d.promise = new Promise((resolve, reject) => {
      d.resolve = (v) => { d.pending = false; resolve(v); };
      d.reject = (e) => { d.pending = false; reject(e); };
    });
    d.promise.catch(() => {}); // a refused subscribe is reported to the caller, never "unhandled"
    return d;
  }

  return { Client: Client, PushgateError: PushgateError, STATES: STATES, closeCodeAction: closeCodeAction,
    handshakeIsFatal: handshakeIsFatal, backoffDelay: backoffDelay, tokenExpiry: tokenExpiry,
    refreshDelay: refreshDelay, version: '0.2.0' };
});
