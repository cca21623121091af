// main.js - the thinghz web app: session, hash routing, the page frame.
// Pages: #/fleet, #/devices/ID, #/dashboards, #/dashboards/ID,
// #/manage/devices, #/admin/users, #/admin/tokens (docs/DASHBOARD.md).
import { render } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import { session, can, login, logout, whoami, live } from './api.js';
import { html, ErrorMsg } from './ui.js';
import { Fleet } from './fleet.js';
import { Device } from './device.js';
import { Dashboards, Dashboard } from './dashboards.js';
import { ManageDevices } from './manage.js';
import { Users, Tokens } from './admin.js';

function parseHash() {
  const parts = (location.hash.replace(/^#\/?/, '') || 'fleet').split('/').map(decodeURIComponent);
  return parts;
}

function Login() {
  const [err, setErr] = useState(null), [busy, setBusy] = useState(false);
  const email = useRef();
  useEffect(() => { email.current?.focus(); document.title = 'Log in · thinghz'; }, []);
  const submit = async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    setBusy(true); setErr(null);
    try {
      await login(f.get('email'), f.get('password'));
      if (!location.hash || location.hash === '#/login') location.hash = '#/fleet';
    } catch (x) {
      setErr(x.status === 401 ? new Error('Wrong email or password.') : x);
    } finally { setBusy(false); }
  };
  return html`<main id="main" class="login-page">
    <form class="login card" onSubmit=${submit} aria-labelledby="login-title">
      <h1 id="login-title">thinghz — log in</h1>
      <label for="email">Email</label>
      <input id="email" name="email" type="email" autocomplete="username" required ref=${email} />
      <label for="password">Password</label>
      <input id="password" name="password" type="password" autocomplete="current-password" required />
      <${ErrorMsg} error=${err} />
      <button type="submit" class="primary" disabled=${busy}>${busy ? 'Logging in…' : 'Log in'}</button>
    </form></main>`;
}

const NAV = [
  ['fleet', 'Fleet', 'viewer'], ['dashboards', 'Dashboards', 'viewer'], ['manage/devices', 'Devices', 'viewer'],
  ['admin/tokens', 'Tokens', 'viewer'], ['admin/users', 'Users', 'admin'],
];

function LiveState() {
  const [s, setS] = useState(live.state);
  useEffect(() => { live.stateListeners.add(setS); return () => live.stateListeners.delete(setS); }, []);
  const text = { live: 'live', connecting: 'connecting…', off: 'not live', unavailable: 'live updates unavailable' }[s] || s;
  return html`<span class="muted" style="color:#cfd8e3" role="status" aria-live="polite">● ${text}</span>`;
}

function Page({ parts }) {
  const [a, b, c] = parts;
  if (a === 'devices' && b) return html`<${Device} id=${b} />`;
  if (a === 'dashboards' && b) return html`<${Dashboard} id=${b} />`;
  if (a === 'dashboards') return html`<${Dashboards} />`;
  if (a === 'manage' && b === 'devices') return html`<${ManageDevices} />`;
  if (a === 'admin' && b === 'users') return can('admin') ? html`<${Users} />` : html`<p>Only admins manage users.</p>`;
  if (a === 'admin' && b === 'tokens') return html`<${Tokens} />`;
  if (a === 'fleet' || !a) return html`<${Fleet} />`;
  return html`<h1>Not found</h1><p><a href="#/fleet">Back to the fleet</a></p>`;
}

function App() {
  const [parts, setParts] = useState(parseHash());
  const [, setN] = useState(0);
  const [boot, setBoot] = useState(!!session.token && !session.me);
  const main = useRef();
  useEffect(() => {
    const onHash = () => setParts(parseHash());
    const onSession = () => setN((n) => n + 1);
    addEventListener('hashchange', onHash);
    session.listeners.add(onSession);
    if (session.token && !session.me) whoami().catch(() => {}).finally(() => setBoot(false));
    return () => { removeEventListener('hashchange', onHash); session.listeners.delete(onSession); };
  }, []);
  // A new page: move focus to it, as a screen reader would expect.
  useEffect(() => { main.current?.focus({ preventScroll: true }); }, [parts.join('/')]);
  if (boot) return html`<main id="main"><p>Loading…</p></main>`;
  if (!session.me) return html`<${Login} />`;
  const path = parts.join('/');
  const me = session.me;
  return html`
    <a class="skip" href="#main" onClick=${(e) => { e.preventDefault(); main.current?.focus(); }}>Skip to content</a>
    <header class="top">
      <a class="brand" href="#/fleet">thinghz</a>
      <nav aria-label="Main"><ul>
        ${NAV.filter(([, , r]) => can(r)).map(([p, l]) => html`<li><a href=${'#/' + p}
          aria-current=${path === p || (p !== 'fleet' && path.startsWith(p)) || (p === 'fleet' && parts[0] === 'devices') ? 'page' : undefined}>${l}</a></li>`)}
      </ul></nav>
      <div class="who"><${LiveState} />
        <span>${me.user?.email} (<span data-role>${me.role}</span>)</span>
        <button type="button" class="link" onClick=${async () => { await logout(); location.hash = '#/login'; }}>Log out</button></div>
    </header>
    <main id="main" tabindex="-1" ref=${main}><${Page} parts=${parts} key=${path} /></main>`;
}

// The static login form in index.html (what GET / shows without scripts) is
// replaced, not hydrated.
const root = document.getElementById('app');
root.textContent = '';
render(html`<${App} />`, root);
