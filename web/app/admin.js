// admin.js - users (admins) and API tokens (everyone: their own; admins: the
// tenant's).
import { useEffect, useState } from 'preact/hooks';
import { can, del, get, patch, post, session } from './api.js';
import { html, fmtTime, ErrorMsg, Dialog, useConfirm, useLoad } from './ui.js';

const ROLES = ['viewer', 'operator', 'admin'];

export function Users() {
  const list = useLoad((signal) => get('/users', { signal }), []);
  const [adding, setAdding] = useState(false), [err, setErr] = useState(null);
  const [confirmEl, ask] = useConfirm();
  useEffect(() => { document.title = 'Users · thinghz'; }, []);
  const act = async (fn) => { setErr(null); try { await fn(); list.reload(); } catch (e) { setErr(e); } };
  const add = async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    await act(() => post('/users', { email: f.get('email'), password: f.get('password'), role: f.get('role') }));
    setAdding(false);
  };
  return html`<h1>Users</h1>
    <div class="toolbar"><button type="button" class="primary" onClick=${() => setAdding(true)}>New user</button></div>
    <${ErrorMsg} error=${err || list.error} />
    <div class="scroll"><table id="users"><thead><tr><th scope="col">Email</th><th scope="col">Role</th><th scope="col">State</th><th scope="col" class="hide-sm">Created</th><th scope="col">Actions</th></tr></thead>
      <tbody>${(list.data?.items || []).map((u) => html`<tr key=${u.id}><td>${u.email}</td>
        <td><label class="sr" for=${'role-' + u.id}>Role of ${u.email}</label>
          <select id=${'role-' + u.id} value=${u.role} disabled=${u.id === session.me?.user?.id}
            onChange=${(e) => act(() => patch(`/users/${u.id}`, { role: e.target.value }))}>${ROLES.map((r) => html`<option>${r}</option>`)}</select></td>
        <td>${u.disabled ? 'disabled' : 'active'}</td><td class="hide-sm">${fmtTime(u.created_at)}</td>
        <td>${u.id !== session.me?.user?.id && html`<div class="row">
          <button type="button" onClick=${() => act(() => patch(`/users/${u.id}`, { disabled: !u.disabled }))}>${u.disabled ? 'Enable' : 'Disable'}</button>
          <button type="button" class="danger" aria-label=${'Delete ' + u.email} onClick=${() => act(async () => {
            if (await ask(`Delete the user ${u.email}? Their tokens are revoked.`, 'Delete')) await del(`/users/${u.id}`);
          })}>Delete</button></div>`}</td></tr>`)}</tbody></table></div>
    ${adding && html`<${Dialog} title="New user" onClose=${() => setAdding(false)}><form onSubmit=${add}>
      <div class="field"><label for="u-email">Email</label><input id="u-email" name="email" type="email" required /></div>
      <div class="field"><label for="u-pass">Password (8+ characters)</label><input id="u-pass" name="password" type="password" minlength="8" required autocomplete="new-password" /></div>
      <div class="field"><label for="u-role">Role</label><select id="u-role" name="role">${ROLES.map((r) => html`<option>${r}</option>`)}</select></div>
      <div class="actions"><button type="button" onClick=${() => setAdding(false)}>Cancel</button><button class="primary">Create</button></div>
    </form></${Dialog}>`}
    ${confirmEl}`;
}

export function Tokens() {
  const list = useLoad((signal) => get('/tokens', { signal }), []);
  const [adding, setAdding] = useState(false), [shown, setShown] = useState(null), [err, setErr] = useState(null);
  const [confirmEl, ask] = useConfirm();
  useEffect(() => { document.title = 'Tokens · thinghz'; }, []);
  const add = async (e) => {
    e.preventDefault();
    const f = new FormData(e.target), days = Number(f.get('days'));
    const body = { name: f.get('name'), role: f.get('role') };
    if (days > 0) body.expires_in_s = Math.round(days * 86400);
    try { setShown(await post('/tokens', body)); setAdding(false); list.reload(); } catch (x) { setErr(x); }
  };
  const mine = ROLES.slice(0, ROLES.indexOf(session.me?.role) + 1);
  return html`<h1>API tokens</h1>
    <p class="muted">${can('admin') ? "Every token of the tenant." : 'Your tokens.'} Tokens let scripts, Grafana and services use the API.</p>
    <div class="toolbar"><button type="button" class="primary" onClick=${() => setAdding(true)}>New token</button></div>
    <${ErrorMsg} error=${err || list.error} />
    <div class="scroll"><table id="tokens"><thead><tr><th scope="col">Name</th><th scope="col">Role</th><th scope="col">Expires</th><th scope="col" class="hide-sm">Last used</th><th scope="col">Actions</th></tr></thead>
      <tbody>${(list.data?.items || []).map((t) => html`<tr key=${t.id}><td>${t.name}</td><td>${t.role}</td><td>${t.expires_at ? fmtTime(t.expires_at) : 'never'}</td>
        <td class="hide-sm">${fmtTime(t.last_used_at)}</td>
        <td><button type="button" class="danger" aria-label=${'Revoke ' + t.name} onClick=${async () => {
          if (!(await ask(`Revoke the token ${t.name}?`, 'Revoke'))) return;
          try { await del(`/tokens/${t.id}`); list.reload(); } catch (x) { setErr(x); }
        }}>Revoke</button></td></tr>`)}</tbody></table></div>
    ${adding && html`<${Dialog} title="New API token" onClose=${() => setAdding(false)}><form onSubmit=${add}>
      <div class="field"><label for="t-name">Name</label><input id="t-name" name="name" required /></div>
      <div class="field"><label for="t-role">Role</label><select id="t-role" name="role">${mine.map((r) => html`<option>${r}</option>`)}</select></div>
      <div class="field"><label for="t-days">Expires after (days, 0 = never)</label><input id="t-days" name="days" type="number" min="0" value="30" /></div>
      <div class="actions"><button type="button" onClick=${() => setAdding(false)}>Cancel</button><button class="primary">Create</button></div>
    </form></${Dialog}>`}
    ${shown && html`<${Dialog} title=${'Token ' + shown.name} onClose=${() => setShown(null)}>
      <p>The token is shown <strong>only now</strong>:</p><code class="secret">${shown.token}</code>
      <div class="actions"><button type="button" onClick=${() => navigator.clipboard?.writeText(shown.token)}>Copy</button>
        <button type="button" class="primary" onClick=${() => setShown(null)}>Done</button></div></${Dialog}>`}
    ${confirmEl}`;
}
