// api.js - the REST client (bearer token kept in sessionStorage) and the live
// WebSocket client of /api/v1/ws/live (docs/DASHBOARD.md).
const KEY = 'thz.token';

export const session = {
  token: sessionStorage.getItem(KEY),
  me: null, // whoami: {user, tenant, role}
  listeners: new Set(),
};

const RANK = { viewer: 1, operator: 2, admin: 3 };
// True if the logged-in role is at least `role`.
export const can = (role) => !!session.me && RANK[session.me.role] >= RANK[role];

function changed() { for (const f of session.listeners) f(); }

export class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

export async function api(method, path, body, opts = {}) {
  const headers = {};
  if (session.token) headers.Authorization = 'Bearer ' + session.token;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let r;
  try {
    r = await fetch('/api/v1' + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal: opts.signal });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'network', 'the server cannot be reached');
  }
  if (r.status === 204) return null;
  let j = null;
  try { j = await r.json(); } catch { /* not JSON */ }
  if (!r.ok) {
    if (r.status === 401 && session.token && path !== '/auth/login') { clearSession(); }
    throw new ApiError(r.status, j?.error?.code || 'http_' + r.status, j?.error?.message || r.statusText);
  }
  return j;
}
export const get = (p, o) => api('GET', p, undefined, o);
export const post = (p, b) => api('POST', p, b === undefined ? {} : b);
export const put = (p, b) => api('PUT', p, b);
export const patch = (p, b) => api('PATCH', p, b);
export const del = (p) => api('DELETE', p);

export async function login(email, password) {
  const r = await api('POST', '/auth/login', { email, password });
  session.token = r.token;
  sessionStorage.setItem(KEY, r.token);
  await whoami();
}

export async function whoami() {
  session.me = await get('/auth/whoami');
  changed();
  return session.me;
}

export function clearSession() {
  session.token = null;
  session.me = null;
  sessionStorage.removeItem(KEY);
  live.stop();
  changed();
}

export async function logout() {
  try { await post('/auth/logout'); } catch { /* the token is dropped anyway */ }
  clearSession();
}

// Every device page of a listing (the API pages by 1000 at most).
export async function allDevices(params = {}, max = 5000) {
  const out = [];
  let cursor = null;
  do {
    const q = new URLSearchParams({ ...params, limit: '1000' });
    if (cursor) q.set('cursor', cursor);
    const r = await get('/devices?' + q);
    out.push(...r.items);
    cursor = r.next_cursor;
  } while (cursor && out.length < max);
  return out;
}

export const enc = encodeURIComponent;

// ---- live WebSocket ----
// Subscriptions are reference counted by key ('fleet' or 'd:ID'); they are
// sent again after every reconnect. Handlers get each frame as an object.
class Live {
  constructor() {
    this.ws = null; this.ready = false; this.subs = new Map(); this.retry = 0; this.timer = null;
    this.state = 'off'; this.stateListeners = new Set(); this.dropped = 0;
  }
  setState(s) { this.state = s; for (const f of this.stateListeners) f(s); }
  start() {
    if (this.ws || !session.token) return;
    clearTimeout(this.timer);
    const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/api/v1/ws/live');
    this.ws = ws;
    this.setState('connecting');
    let opened = false;
    ws.onopen = () => { opened = true; ws.send(JSON.stringify({ op: 'auth', token: session.token })); };
    ws.onmessage = (ev) => {
      let m;
      try { m = JSON.parse(ev.data); } catch { return; }
      if (m.dropped) this.dropped += m.dropped;
      if (m.type === 'ready') {
        this.ready = true; this.retry = 0; this.setState('live');
        for (const k of this.subs.keys()) this.send(k, 'subscribe');
        return;
      }
      if (m.type === 'error' || m.type === 'pong') return;
      const keys = [];
      if (m.device) keys.push('d:' + m.device);
      if (m.type === 'fleet' || m.type === 'presence') keys.push('fleet');
      for (const k of keys) for (const h of this.subs.get(k) || []) h(m);
    };
    ws.onclose = (ev) => {
      this.ws = null; this.ready = false;
      // A server without the live route answers the handshake with 404: the
      // socket never opens. Retry with back-off either way, but say which.
      this.setState(opened ? 'off' : 'unavailable');
      if (session.token && this.subs.size && ev.code !== 1008) {
        const d = Math.min(30000, 1000 * 2 ** this.retry++);
        this.timer = setTimeout(() => this.start(), d);
      }
    };
  }
  send(key, op) {
    if (!this.ws || !this.ready) return;
    const m = key === 'fleet' ? { op, fleet: true } : { op, device: key.slice(2) };
    this.ws.send(JSON.stringify(m));
  }
  // Subscribes handler to key; returns the function that unsubscribes.
  subscribe(key, handler) {
    let set = this.subs.get(key);
    if (!set) { set = new Set(); this.subs.set(key, set); this.send(key, 'subscribe'); }
    set.add(handler);
    this.start();
    return () => {
      set.delete(handler);
      if (!set.size && this.subs.get(key) === set) { this.subs.delete(key); this.send(key, 'unsubscribe'); }
    };
  }
  stop() {
    clearTimeout(this.timer);
    this.subs.clear();
    if (this.ws) { this.ws.onclose = null; this.ws.close(1000); }
    this.ws = null; this.ready = false; this.retry = 0; this.setState('off');
  }
}
export const live = new Live();
