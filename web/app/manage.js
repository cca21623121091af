// manage.js - device management: create (the secret is shown once), edit
// name/tags/attributes, rotate the secret, disable/enable, delete.
import { useEffect, useState } from 'preact/hooks';
import { allDevices, can, del, enc, patch, post } from './api.js';
import { html, ago, ErrorMsg, Dialog, tagsToText, textToTags, useConfirm, useLoad } from './ui.js';

function SecretDialog({ info, onClose }) {
  return html`<${Dialog} title=${`Secret of ${info.id}`} onClose=${onClose}>
    <p>This is the device's MQTT password (user name: the device id). It is shown <strong>only now</strong>: copy it.</p>
    <code class="secret" id="device-secret">${info.secret}</code>
    <div class="actions"><button type="button" onClick=${() => navigator.clipboard?.writeText(info.secret)}>Copy</button>
      <button type="button" class="primary" onClick=${onClose}>Done</button></div></${Dialog}>`;
}

function DeviceForm({ device, onSave, onClose }) {
  const [err, setErr] = useState(null);
  const submit = async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    let attributes;
    try { attributes = JSON.parse(f.get('attributes') || '{}'); } catch { setErr(new Error('Attributes must be a JSON object.')); return; }
    const body = { name: f.get('name'), type: f.get('type'), tags: textToTags(f.get('tags')), attributes,
      groups: f.get('groups').split(',').map((s) => s.trim()).filter(Boolean) };
    if (!device) body.id = f.get('id');
    try { await onSave(body); } catch (x) { setErr(x); }
  };
  return html`<${Dialog} title=${device ? `Edit ${device.id}` : 'New device'} onClose=${onClose}>
    <form onSubmit=${submit}>
      ${!device && html`<div class="field"><label for="dv-id">Id</label><input id="dv-id" name="id" required pattern="[A-Za-z0-9_.:\\-]{1,128}"
        aria-describedby="dv-id-help" /><small id="dv-id-help" class="muted">1–128 of A–Z a–z 0–9 _ . : -</small></div>`}
      <div class="field"><label for="dv-name">Name</label><input id="dv-name" name="name" value=${device?.name || ''} /></div>
      <div class="field"><label for="dv-type">Type</label><input id="dv-type" name="type" value=${device?.type || ''} /></div>
      <div class="field"><label for="dv-tags">Tags (one k=v a line)</label><textarea id="dv-tags" name="tags" rows="3">${tagsToText(device?.tags)}</textarea></div>
      <div class="field"><label for="dv-attrs">Attributes (JSON object)</label><textarea id="dv-attrs" name="attributes" rows="3">${JSON.stringify(device?.attributes || {})}</textarea></div>
      <div class="field"><label for="dv-groups">Groups (comma separated)</label><input id="dv-groups" name="groups" value=${(device?.groups || []).join(', ')} /></div>
      <${ErrorMsg} error=${err} />
      <div class="actions"><button type="button" onClick=${onClose}>Cancel</button><button class="primary">${device ? 'Save' : 'Create'}</button></div>
    </form></${Dialog}>`;
}

export function ManageDevices() {
  const list = useLoad(() => allDevices(), []);
  const [form, setForm] = useState(null); // {device?}
  const [secret, setSecret] = useState(null), [err, setErr] = useState(null), [q, setQ] = useState('');
  const [confirmEl, ask] = useConfirm();
  const op = can('operator');
  useEffect(() => { document.title = 'Devices · thinghz'; }, []);
  const act = async (fn) => { setErr(null); try { await fn(); list.reload(); } catch (e) { setErr(e); } };
  const rows = (list.data || []).filter((d) => !q || d.id.includes(q) || (d.name || '').includes(q));
  return html`<h1>Devices</h1>
    <div class="toolbar">
      <div class="field"><label for="m-q">Search</label><input id="m-q" type="search" value=${q} onInput=${(e) => setQ(e.target.value)} /></div>
      ${op && html`<button type="button" class="primary" onClick=${() => setForm({})}>New device</button>`}
    </div>
    <${ErrorMsg} error=${err || list.error} />
    <div class="scroll"><table id="manage-devices"><thead><tr><th scope="col">Device</th><th scope="col" class="hide-sm">Name</th>
      <th scope="col">State</th><th scope="col" class="hide-sm">Last seen</th>${op && html`<th scope="col">Actions</th>`}</tr></thead>
      <tbody>${rows.map((d) => html`<tr key=${d.id} data-device=${d.id}>
        <td><a href=${'#/devices/' + enc(d.id)}>${d.id}</a></td><td class="hide-sm">${d.name || ''}</td>
        <td>${d.enabled === false ? 'disabled' : d.online ? 'online' : 'offline'}</td><td class="hide-sm">${ago(d.last_seen)}</td>
        ${op && html`<td><div class="row">
          <button type="button" onClick=${() => setForm({ device: d })} aria-label=${'Edit ' + d.id}>Edit</button>
          <button type="button" aria-label=${'Rotate the secret of ' + d.id} onClick=${() => act(async () => {
            if (await ask(`Rotate the secret of ${d.id}? The old one stops working at once.`, 'Rotate')) setSecret(await post(`/devices/${enc(d.id)}/rotate`));
          })}>Rotate</button>
          <button type="button" aria-label=${(d.enabled === false ? 'Enable ' : 'Disable ') + d.id}
            onClick=${() => act(() => post(`/devices/${enc(d.id)}/${d.enabled === false ? 'enable' : 'disable'}`))}>${d.enabled === false ? 'Enable' : 'Disable'}</button>
          <button type="button" class="danger" aria-label=${'Delete ' + d.id} onClick=${() => act(async () => {
            if (await ask(`Delete the device ${d.id}? It is disconnected and its registration is gone.`, 'Delete')) await del(`/devices/${enc(d.id)}`);
          })}>Delete</button></div></td>`}
      </tr>`)}</tbody></table></div>
    ${list.data && !rows.length && html`<p>No devices.</p>`}
    ${form && html`<${DeviceForm} device=${form.device} onClose=${() => setForm(null)} onSave=${async (body) => {
      if (form.device) await patch(`/devices/${enc(form.device.id)}`, body);
      else { const r = await post('/devices', body); setSecret({ id: r.id, secret: r.secret }); }
      setForm(null); list.reload();
    }} />`}
    ${secret && html`<${SecretDialog} info=${secret} onClose=${() => setSecret(null)} />`}
    ${confirmEl}`;
}
