// dashboards.js - dashboards stored by the API (/api/v1/dashboards): the list
// (create, import, export, delete) and one dashboard: a 12-column grid of
// panels (timeseries, stat, gauge, bar, table), each a SQL query or a metric
// of a device, a ${device} variable, time range and auto-refresh.
import { useEffect, useRef, useState } from 'preact/hooks';
import { allDevices, can, del, enc, get, post, put } from './api.js';
import { TimeChart, chartWidth } from './chart.js';
import { telemetry } from './device.js';
import { html, fmtNum, fmtTime, ErrorMsg, Dialog, RangePicker, download, fromDef, resolve, toDef, useConfirm, useLoad } from './ui.js';

const TYPES = ['timeseries', 'stat', 'gauge', 'bar', 'table'];
const REFRESH = ['off', '5s', '10s', '30s', '1m', '5m'];
export const emptyDefinition = () => ({ time: { from: 'now-1h', to: 'now' }, refresh: 'off', variables: { device: '' }, panels: [] });

export function Dashboards() {
  const list = useLoad((signal) => get('/dashboards', { signal }), []);
  const [creating, setCreating] = useState(false), [err, setErr] = useState(null);
  const [confirmEl, ask] = useConfirm();
  const fileRef = useRef();
  useEffect(() => { document.title = 'Dashboards · thinghz'; }, []);
  const create = async (title) => {
    try {
      const d = await post('/dashboards', { title, definition: emptyDefinition() });
      location.hash = `#/dashboards/${enc(d.id)}?edit`;
    } catch (e) { setErr(e); }
  };
  const importFile = async (e) => {
    const f = e.target.files[0];
    e.target.value = '';
    if (!f) return;
    try {
      const doc = JSON.parse(await f.text());
      if (typeof doc.title !== 'string' || typeof doc.definition !== 'object') throw new Error('not a dashboard export: it needs "title" and "definition"');
      const d = await post('/dashboards', { title: doc.title, definition: doc.definition });
      location.hash = `#/dashboards/${enc(d.id)}`;
    } catch (x) { setErr(x); }
  };
  const remove = async (d) => {
    if (!(await ask(`Delete the dashboard "${d.title}"?`, 'Delete'))) return;
    try { await del(`/dashboards/${enc(d.id)}`); list.reload(); } catch (x) { setErr(x); }
  };
  const missing = list.error?.status === 404;
  return html`<h1>Dashboards</h1>
    ${can('operator') && !missing && html`<div class="toolbar">
      <button type="button" class="primary" onClick=${() => setCreating(true)}>New dashboard</button>
      <button type="button" onClick=${() => fileRef.current.click()}>Import JSON…</button>
      <input type="file" accept="application/json,.json" ref=${fileRef} onChange=${importFile} class="sr" aria-label="Import a dashboard JSON file" id="import-file" />
    </div>`}
    <${ErrorMsg} error=${err} />
    ${missing ? html`<p class="notice">This server does not store dashboards yet.</p>` : html`<${ErrorMsg} error=${list.error} />`}
    ${list.data && (list.data.dashboards.length ? html`<div class="scroll"><table id="dashboards"><thead><tr><th scope="col">Title</th><th scope="col">Updated</th><th scope="col"><span class="sr">Actions</span></th></tr></thead>
      <tbody>${list.data.dashboards.map((d) => html`<tr key=${d.id}><td><a href=${'#/dashboards/' + enc(d.id)}>${d.title}</a></td>
        <td>${fmtTime(d.updated_at)}</td>
        <td class="actions">${can('operator') && html`<button type="button" onClick=${() => remove(d)} aria-label=${'Delete ' + d.title}>Delete</button>`}</td></tr>`)}
      </tbody></table></div>` : html`<p>No dashboards yet.</p>`)}
    ${creating && html`<${Dialog} title="New dashboard" onClose=${() => setCreating(false)}>
      <form onSubmit=${(e) => { e.preventDefault(); setCreating(false); create(new FormData(e.target).get('title')); }}>
        <label for="nd-title">Title</label><input id="nd-title" name="title" required maxlength="200" autofocus />
        <div class="actions"><button type="button" onClick=${() => setCreating(false)}>Cancel</button><button class="primary">Create</button></div>
      </form></${Dialog}>`}
    ${confirmEl}`;
}

// ${device}, ${from}, ${to} in a SQL text; strings are quoted as SQL wants.
const sqlQuote = (s) => `'${String(s).replaceAll("'", "''")}'`;
function expand(sql, vars, from, to) {
  return sql.replaceAll('${device}', sqlQuote(vars.device || ''))
    .replaceAll('${from}', sqlQuote(new Date(from).toISOString())).replaceAll('${to}', sqlQuote(new Date(to).toISOString()));
}
const isTime = (v) => typeof v === 'string' && /^\d{4}-\d\d-\d\dT/.test(v);

// Runs a panel's query: {kind: 'series', xs, ys: [{label, vals}]} or
// {kind: 'table', columns, rows}.
async function runPanel(p, vars, range, width, signal) {
  const { from, to } = resolve(range);
  const q = p.query || {};
  if (q.sql) {
    const r = await post('/query', { sql: expand(q.sql, vars, from, to) });
    const cols = r.columns || [], rows = r.rows || [];
    const tcol = rows.length ? cols.findIndex((_, i) => isTime(rows[0][i])) : -1;
    if (tcol >= 0) {
      const sorted = [...rows].sort((a, b) => Date.parse(a[tcol]) - Date.parse(b[tcol]));
      const num = cols.map((_, i) => i).filter((i) => i !== tcol && rows.some((r2) => typeof r2[i] === 'number'));
      return { kind: 'series', xs: sorted.map((r2) => Date.parse(r2[tcol]) / 1000),
        ys: num.map((i) => ({ label: cols[i], vals: sorted.map((r2) => (typeof r2[i] === 'number' ? r2[i] : null)) })), columns: cols, rows };
    }
    return { kind: 'table', columns: cols, rows };
  }
  const dev = (q.device || '').replaceAll('${device}', vars.device || '');
  if (!dev || !q.metric) throw new Error('pick a device and a metric');
  const j = await telemetry(dev, [q.metric], from, to, Math.min(10000, width), q.agg || 'avg', signal);
  const pts = j.points || j.series?.[0]?.points || [];
  return { kind: 'series', xs: pts.map((x) => Date.parse(x[0]) / 1000), ys: [{ label: q.metric, vals: pts.map((x) => x[1]) }],
    columns: ['time', q.metric], rows: pts };
}

function lastValue(res) {
  if (res.kind === 'series') {
    for (let i = res.xs.length - 1; i >= 0; i--) if (res.ys[0] && res.ys[0].vals[i] != null) return res.ys[0].vals[i];
    return null;
  }
  const r = res.rows[res.rows.length - 1];
  return r ? r.find((v) => typeof v === 'number') ?? null : null;
}
function colorFor(v, th) {
  let c = null;
  for (const t of [...(th || [])].sort((a, b) => a.value - b.value)) if (v != null && v >= t.value) c = t.color;
  return c;
}

function Gauge({ value, min = 0, max = 100, color, unit }) {
  const f = value == null ? 0 : Math.max(0, Math.min(1, (value - min) / (max - min || 1)));
  const a = Math.PI * (1 - f), x = 50 + 40 * Math.cos(a), y = 50 - 40 * Math.sin(a);
  return html`<svg viewBox="0 0 100 60" role="img" aria-label=${`gauge ${fmtNum(value, unit)} of ${min} to ${max}`} style="width:100%;max-height:100%">
    <path d="M10,50 A40,40 0 0 1 90,50" fill="none" stroke="#d3d8de" stroke-width="10" />
    ${value != null && html`<path d=${`M10,50 A40,40 0 0 1 ${x.toFixed(2)},${y.toFixed(2)}`} fill="none" stroke=${color || '#0b5cad'} stroke-width="10" />`}
    <text x="50" y="48" text-anchor="middle" font-size="14" font-weight="700" fill="#1b1f24">${fmtNum(value)}</text>
    <text x="50" y="58" text-anchor="middle" font-size="7" fill="#535b66">${unit || ''}</text></svg>`;
}

function Panel({ p, vars, range, tick, editing, onEdit, onRemove, onMove }) {
  const [res, setRes] = useState(null), [err, setErr] = useState(null);
  const box = useRef();
  useEffect(() => {
    const ac = new AbortController();
    runPanel(p, vars, range, chartWidth(box.current), ac.signal).then((r) => { setRes(r); setErr(null); }, (e) => { if (e.name !== 'AbortError') setErr(e); });
    return () => ac.abort();
  }, [JSON.stringify(p.query), p.type, vars.device, range.rel, range.from, range.to, tick]);
  const height = Math.max(60, (p.h || 4) * 56 + ((p.h || 4) - 1) * 12 - 70);
  let body = null;
  if (err) body = html`<${ErrorMsg} error=${err} />`;
  else if (!res) body = html`<p class="muted">Loading…</p>`;
  else if (p.type === 'stat' || p.type === 'gauge') {
    const v = lastValue(res), c = colorFor(v, p.thresholds);
    body = p.type === 'stat' ? html`<div class="stat" style=${c ? `color:${c}` : ''} data-value=${v}>${fmtNum(v, p.unit)}</div>`
      : html`<${Gauge} value=${v} min=${p.min ?? 0} max=${p.max ?? 100} color=${c} unit=${p.unit} />`;
  } else if (p.type === 'table') {
    body = html`<table><thead><tr>${res.columns.map((c) => html`<th scope="col">${c}</th>`)}</tr></thead>
      <tbody>${res.rows.slice(-200).reverse().map((r) => html`<tr>${r.map((v) => html`<td>${isTime(v) ? fmtTime(v) : fmtNum(v)}</td>`)}</tr>`)}</tbody></table>`;
  } else if (res.kind === 'series' && res.ys.length) {
    body = html`<${TimeChart} data=${[res.xs, ...res.ys.map((y) => y.vals)]} labels=${res.ys.map((y) => y.label)} units=${res.ys.map(() => p.unit || '')}
      height=${height} bars=${p.type === 'bar'} thresholds=${p.thresholds} label=${p.title} />`;
  } else if (p.type === 'bar' && res.kind === 'table') {
    const ni = res.columns.findIndex((_, i) => res.rows.some((r) => typeof r[i] === 'number'));
    const max = Math.max(...res.rows.map((r) => Math.abs(r[ni]) || 0), 1);
    body = ni < 0 ? html`<p class="muted">No numbers to draw.</p>` : html`<div class="bars">${res.rows.slice(0, 50).map((r) => html`<div>
      <span style="min-width:6em">${String(r.find((v, i) => i !== ni) ?? '')}</span>
      <span class="bar" style=${`width:${(Math.abs(r[ni]) / max) * 60}%;background:${colorFor(r[ni], p.thresholds) || ''}`}></span><span>${fmtNum(r[ni], p.unit)}</span></div>`)}</div>`;
  } else body = html`<p class="muted">No data.</p>`;
  return html`<section class="panel" style=${`grid-column: span ${Math.max(1, Math.min(12, p.w || 6))}; grid-row: span ${Math.max(2, p.h || 4)}`}
      aria-label=${p.title || 'panel'} data-panel=${p.id} data-type=${p.type}>
    <h3><span>${p.title || '(untitled)'}</span>
      ${editing && html`<button type="button" onClick=${() => onMove(-1)} aria-label=${'Move ' + p.title + ' earlier'}>↑</button>
        <button type="button" onClick=${() => onMove(1)} aria-label=${'Move ' + p.title + ' later'}>↓</button>
        <button type="button" onClick=${onEdit}>Edit</button><button type="button" onClick=${onRemove}>Remove</button>`}</h3>
    <div class="body" ref=${box}>${body}</div></section>`;
}

function PanelEditor({ panel, metrics, onSave, onClose }) {
  const [p, setP] = useState(() => JSON.parse(JSON.stringify(panel)));
  const mode = p.query?.sql !== undefined ? 'sql' : 'metric';
  const set = (k, v) => setP((o) => ({ ...o, [k]: v }));
  const setQ = (k, v) => setP((o) => ({ ...o, query: { ...o.query, [k]: v } }));
  const [th, setTh] = useState((panel.thresholds || []).map((t) => `${t.value}:${t.color}`).join(', '));
  const save = (e) => {
    e.preventDefault();
    const thresholds = th.split(',').map((s) => s.trim()).filter(Boolean).map((s) => { const [v, c] = s.split(':'); return { value: Number(v), color: (c || 'red').trim() }; }).filter((t) => !isNaN(t.value));
    const out = { ...p, thresholds };
    if (out.min === '' || out.min == null) delete out.min; else out.min = Number(out.min);
    if (out.max === '' || out.max == null) delete out.max; else out.max = Number(out.max);
    onSave(out);
  };
  return html`<${Dialog} title=${panel.title ? `Edit panel "${panel.title}"` : 'New panel'} onClose=${onClose}>
    <form onSubmit=${save}>
      <div class="field"><label for="pe-title">Title</label><input id="pe-title" value=${p.title} onInput=${(e) => set('title', e.target.value)} required /></div>
      <div class="field"><label for="pe-type">Type</label><select id="pe-type" value=${p.type} onChange=${(e) => set('type', e.target.value)}>
        ${TYPES.map((t) => html`<option value=${t}>${t}</option>`)}</select></div>
      <fieldset><legend>Query</legend>
        <label><input type="radio" name="pe-mode" checked=${mode === 'metric'} onChange=${() => set('query', { device: '${device}', metric: metrics[0] || '', agg: 'avg' })} /> Metric of a device</label>
        <label><input type="radio" name="pe-mode" checked=${mode === 'sql'} onChange=${() => set('query', { sql: "SELECT bin(time, 1m) AS t, avg(temp) FROM telemetry WHERE device = ${device} AND time > ago(1h) GROUP BY 1 ORDER BY 1" })} /> SQL</label>
        ${mode === 'sql' ? html`<div class="field"><label for="pe-sql">SQL (\${device}, \${from}, \${to} are replaced)</label>
            <textarea id="pe-sql" rows="5" value=${p.query.sql} onInput=${(e) => setQ('sql', e.target.value)}></textarea></div>`
          : html`<div class="field"><label for="pe-dev">Device (\${device} = the dashboard's)</label><input id="pe-dev" value=${p.query.device} onInput=${(e) => setQ('device', e.target.value)} /></div>
            <div class="field"><label for="pe-metric">Metric</label><input id="pe-metric" list="pe-metrics" value=${p.query.metric} onInput=${(e) => setQ('metric', e.target.value)} required />
              <datalist id="pe-metrics">${metrics.map((m) => html`<option value=${m} />`)}</datalist></div>
            <div class="field"><label for="pe-agg">Aggregate</label><select id="pe-agg" value=${p.query.agg || 'avg'} onChange=${(e) => setQ('agg', e.target.value)}>
              ${['avg', 'min', 'max', 'sum', 'count', 'first', 'last'].map((a) => html`<option>${a}</option>`)}</select></div>`}
      </fieldset>
      <div class="row">
        <div class="field"><label for="pe-unit">Unit</label><input id="pe-unit" size="6" value=${p.unit || ''} onInput=${(e) => set('unit', e.target.value)} /></div>
        <div class="field"><label for="pe-w">Width (1–12)</label><input id="pe-w" type="number" min="1" max="12" value=${p.w} onInput=${(e) => set('w', Number(e.target.value))} /></div>
        <div class="field"><label for="pe-h">Height (rows)</label><input id="pe-h" type="number" min="2" max="12" value=${p.h} onInput=${(e) => set('h', Number(e.target.value))} /></div>
        <div class="field"><label for="pe-min">Min</label><input id="pe-min" type="number" size="5" value=${p.min ?? ''} onInput=${(e) => set('min', e.target.value)} /></div>
        <div class="field"><label for="pe-max">Max</label><input id="pe-max" type="number" size="5" value=${p.max ?? ''} onInput=${(e) => set('max', e.target.value)} /></div>
      </div>
      <div class="field"><label for="pe-th">Thresholds (value:color, …)</label><input id="pe-th" placeholder="30:orange, 40:red" value=${th} onInput=${(e) => setTh(e.target.value)} /></div>
      <div class="actions"><button type="button" onClick=${onClose}>Cancel</button><button class="primary" id="pe-save">Save panel</button></div>
    </form></${Dialog}>`;
}

export function Dashboard({ id: rawId }) {
  const [id, qs] = rawId.split('?');
  const [doc, setDoc] = useState(null), [err, setErr] = useState(null), [dirty, setDirty] = useState(false);
  const [editing, setEditing] = useState(qs === 'edit' && can('operator'));
  const [edit, setEdit] = useState(null); // {panel, index}
  const [tick, setTick] = useState(0), [saved, setSaved] = useState('');
  const [devices, setDevices] = useState([]), [metrics, setMetrics] = useState([]);
  const [confirmEl, ask] = useConfirm();
  useEffect(() => {
    get(`/dashboards/${enc(id)}`).then((d) => {
      d.definition = { ...emptyDefinition(), ...(d.definition || {}) };
      setDoc(d); document.title = `${d.title} · thinghz`;
    }, setErr);
    allDevices({}, 1000).then((l) => setDevices(l.map((d) => d.id)), () => {});
  }, [id]);
  const def = doc?.definition;
  const range = def ? fromDef(def.time) : { rel: '1h' };
  const vars = def?.variables || {};
  useEffect(() => {
    if (!vars.device) return;
    get(`/devices/${enc(vars.device)}/latest`).then((r) => setMetrics(Object.keys(r.metrics || {}).sort()), () => setMetrics([]));
  }, [vars.device]);
  // Auto-refresh: re-run every panel's query.
  useEffect(() => {
    const ms = { '5s': 5e3, '10s': 1e4, '30s': 3e4, '1m': 6e4, '5m': 3e5 }[def?.refresh];
    if (!ms) return;
    const t = setInterval(() => setTick((x) => x + 1), ms);
    return () => clearInterval(t);
  }, [def?.refresh]);

  if (err) return html`<h1>Dashboard</h1><${ErrorMsg} error=${err} /><p><a href="#/dashboards">All dashboards</a></p>`;
  if (!doc) return html`<p>Loading…</p>`;
  const change = (d) => { setDoc({ ...doc, definition: { ...def, ...d } }); setDirty(true); setSaved(''); };
  const setPanels = (panels) => change({ panels: panels.map((p, i) => ({ ...p, x: 0, y: i })) });
  const save = async () => {
    try {
      const r = await put(`/dashboards/${enc(id)}`, { title: doc.title, definition: def });
      r.definition = { ...emptyDefinition(), ...(r.definition || {}) };
      setDoc(r); setDirty(false); setSaved('Saved.');
    } catch (e) { setErr(e); }
  };
  const newPanel = () => ({ id: 'p' + Date.now().toString(36), type: 'timeseries', title: '', x: 0, y: def.panels.length, w: 6, h: 4,
    query: { device: '${device}', metric: metrics[0] || '', agg: 'avg' } });
  const panels = [...def.panels].sort((a, b) => (a.y ?? 0) - (b.y ?? 0) || (a.x ?? 0) - (b.x ?? 0));
  const op = can('operator');
  return html`<p><a href="#/dashboards">← Dashboards</a></p>
    <h1>${editing ? html`<label class="sr" for="d-title">Title</label><input id="d-title" value=${doc.title} maxlength="200"
      onInput=${(e) => { setDoc({ ...doc, title: e.target.value }); setDirty(true); }} />` : doc.title}</h1>
    <div class="toolbar">
      <${RangePicker} value=${range} onChange=${(r) => change({ time: toDef(r) })} id="d-range" />
      <div class="field"><label for="d-refresh">Auto-refresh</label><select id="d-refresh" value=${def.refresh || 'off'} onChange=${(e) => change({ refresh: e.target.value })}>
        ${REFRESH.map((r) => html`<option value=${r}>${r}</option>`)}</select></div>
      <div class="field"><label for="d-device">Device (\${device})</label><input id="d-device" list="d-devices" value=${vars.device || ''}
        onChange=${(e) => change({ variables: { ...vars, device: e.target.value } })} />
        <datalist id="d-devices">${devices.map((d) => html`<option value=${d} />`)}</datalist></div>
      <button type="button" onClick=${() => setTick(tick + 1)}>Refresh</button>
      <button type="button" onClick=${() => download(`${doc.title.replace(/[^\w.-]+/g, '_') || 'dashboard'}.json`, { title: doc.title, definition: def })}>Export JSON</button>
      ${op && !editing && html`<button type="button" onClick=${() => setEditing(true)}>Edit</button>`}
      ${op && editing && html`<button type="button" onClick=${() => setEdit({ panel: newPanel(), index: -1 })}>Add panel</button>
        <button type="button" onClick=${async () => { if (await ask(`Delete the dashboard "${doc.title}"?`, 'Delete')) { await del(`/dashboards/${enc(id)}`); location.hash = '#/dashboards'; } }}>Delete</button>
        <button type="button" onClick=${() => setEditing(false)}>Done</button>`}
      ${op && html`<button type="button" class="primary" onClick=${save} disabled=${!dirty}>Save</button>`}
      <span role="status" class="muted">${dirty ? 'Unsaved changes' : saved}</span>
    </div>
    <div class="dash" id="dash">
      ${panels.map((p, i) => html`<${Panel} key=${p.id} p=${p} vars=${vars} range=${range} tick=${tick} editing=${editing}
        onEdit=${() => setEdit({ panel: p, index: i })}
        onRemove=${async () => { if (await ask(`Remove the panel "${p.title}"?`, 'Remove')) setPanels(panels.filter((x) => x !== p)); }}
        onMove=${(d) => { const a = [...panels], j = i + d; if (j < 0 || j >= a.length) return; [a[i], a[j]] = [a[j], a[i]]; setPanels(a); }} />`)}
    </div>
    ${!panels.length && html`<p class="muted">No panels yet.${op ? ' Edit the dashboard to add some.' : ''}</p>`}
    ${edit && html`<${PanelEditor} panel=${edit.panel} metrics=${metrics} onClose=${() => setEdit(null)}
      onSave=${(p) => { const a = [...panels]; if (edit.index < 0) a.push(p); else a[edit.index] = p; setPanels(a); setEdit(null); }} />`}
    ${confirmEl}`;
}
