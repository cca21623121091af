// ui.js - shared pieces: the html tag, formatting, dialogs, the time-range
// picker, sparklines and small hooks.
import { h } from 'preact';
import { useEffect, useRef, useState, useCallback } from 'preact/hooks';
import htm from 'htm';

export const html = htm.bind(h);

// ---- formatting ----
export function fmtNum(v, unit = '') {
  if (v === null || v === undefined) return '—';
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (typeof v !== 'number') return String(v);
  const a = Math.abs(v);
  const s = a !== 0 && (a >= 1e6 || a < 1e-3) ? v.toExponential(3) : String(Math.round(v * 1000) / 1000);
  return unit ? `${s} ${unit}` : s;
}
export function fmtTime(t) {
  if (!t) return '—';
  const d = new Date(t);
  return isNaN(d) ? String(t) : d.toLocaleString();
}
export function ago(t) {
  if (!t) return 'never';
  const s = Math.round((Date.now() - new Date(t).getTime()) / 1000);
  if (s < 5) return 'just now';
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 129600) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}
export const rate = (r) => (r === undefined || r === null ? '—' : (Math.round(r * 10) / 10).toString());

// ---- time ranges ----
export const RANGES = [['5m', 'Last 5 minutes'], ['15m', 'Last 15 minutes'], ['1h', 'Last hour'], ['6h', 'Last 6 hours'],
  ['24h', 'Last 24 hours'], ['7d', 'Last 7 days'], ['30d', 'Last 30 days']];
const UNIT = { s: 1e3, m: 6e4, h: 36e5, d: 864e5, w: 6048e5 };
export function durMs(s) {
  const m = /^(\d+(?:\.\d+)?)([smhdw])$/.exec(s || '');
  return m ? Number(m[1]) * UNIT[m[2]] : null;
}
// A range is {rel: '1h'} (sliding, live) or {from: ms, to: ms} (fixed).
export function resolve(range) {
  if (range.rel) { const to = Date.now(); return { from: to - durMs(range.rel), to }; }
  return { from: range.from, to: range.to };
}
// Dashboard form ("now-1h"/"now" or RFC 3339) <-> range.
export function fromDef(t) {
  const m = /^now-(\w+)$/.exec(t?.from || '');
  if (m && (t.to || 'now') === 'now' && durMs(m[1])) return { rel: m[1] };
  const f = Date.parse(t?.from), to = Date.parse(t?.to);
  return isNaN(f) || isNaN(to) ? { rel: '1h' } : { from: f, to };
}
export function toDef(r) {
  return r.rel ? { from: 'now-' + r.rel, to: 'now' } : { from: new Date(r.from).toISOString(), to: new Date(r.to).toISOString() };
}
const localInput = (ms) => { const d = new Date(ms - new Date(ms).getTimezoneOffset() * 6e4); return d.toISOString().slice(0, 16); };

// The picker: presets plus a custom from/to. onChange gets a range.
export function RangePicker({ value, onChange, id = 'range' }) {
  const [custom, setCustom] = useState(!value.rel);
  const r = resolve(value);
  const [from, setFrom] = useState(localInput(r.from));
  const [to, setTo] = useState(localInput(r.to));
  useEffect(() => { if (!value.rel) { setCustom(true); setFrom(localInput(value.from)); setTo(localInput(value.to)); } }, [value.from, value.to]);
  const sel = custom ? 'custom' : value.rel;
  return html`<div class="row" role="group" aria-label="Time range">
    <div class="field"><label for=${id}>Time range</label>
      <select id=${id} value=${sel} onChange=${(e) => {
        const v = e.target.value;
        if (v === 'custom') { setCustom(true); return; }
        setCustom(false); onChange({ rel: v });
      }}>
        ${RANGES.map(([k, l]) => html`<option value=${k}>${l}</option>`)}
        <option value="custom">Custom…</option>
      </select></div>
    ${custom && html`
      <div class="field"><label for=${id + '-from'}>From</label>
        <input id=${id + '-from'} type="datetime-local" value=${from} onInput=${(e) => setFrom(e.target.value)} /></div>
      <div class="field"><label for=${id + '-to'}>To</label>
        <input id=${id + '-to'} type="datetime-local" value=${to} onInput=${(e) => setTo(e.target.value)} /></div>
      <button type="button" onClick=${() => {
        const f = new Date(from).getTime(), t = new Date(to).getTime();
        if (!isNaN(f) && !isNaN(t) && t > f) onChange({ from: f, to: t });
      }}>Apply</button>`}
  </div>`;
}

// ---- dialogs (native <dialog>: focus trap, Escape) ----
export function Dialog({ title, onClose, children }) {
  const ref = useRef();
  useEffect(() => {
    const d = ref.current;
    d.showModal();
    const close = () => onClose && onClose();
    d.addEventListener('close', close);
    return () => { d.removeEventListener('close', close); if (d.open) d.close(); };
  }, []);
  return html`<dialog ref=${ref} aria-labelledby="dlg-title">
    <h2 id="dlg-title" style="margin-top:0">${title}</h2>${children}</dialog>`;
}

// useConfirm(): [element, ask]; ask(text, label) resolves true/false.
export function useConfirm() {
  const [st, setSt] = useState(null);
  const ask = useCallback((text, label = 'Confirm') => new Promise((res) => setSt({ text, label, res })), []);
  const done = (v) => { const s = st; setSt(null); s.res(v); };
  const el = st && html`<${Dialog} title="Please confirm" onClose=${() => done(false)}>
    <p>${st.text}</p>
    <div class="actions"><button type="button" onClick=${() => done(false)}>Cancel</button>
      <button type="button" class="danger" onClick=${() => done(true)}>${st.label}</button></div>
  </${Dialog}>`;
  return [el, ask];
}

// ---- data hooks ----
// useLoad(fn, deps): {data, error, loading, reload}; fn gets an AbortSignal.
export function useLoad(fn, deps) {
  const [st, setSt] = useState({ data: null, error: null, loading: true });
  const [n, setN] = useState(0);
  useEffect(() => {
    const ac = new AbortController();
    setSt((s) => ({ ...s, loading: true }));
    fn(ac.signal).then((data) => { if (!ac.signal.aborted) setSt({ data, error: null, loading: false }); },
      (error) => { if (!ac.signal.aborted) setSt({ data: null, error, loading: false }); });
    return () => ac.abort();
  }, [...deps, n]);
  return { ...st, reload: () => setN((x) => x + 1), set: (data) => setSt({ data, error: null, loading: false }) };
}

export const ErrorMsg = ({ error }) => error && html`<p class="error" role="alert">${error.message || String(error)}</p>`;

// ---- sparkline (SVG, no library) ----
export function Sparkline({ points, width = 120, height = 28, label }) {
  const vals = (points || []).filter((p) => typeof p[1] === 'number');
  if (vals.length < 2) return html`<span class="muted">—</span>`;
  const xs = vals.map((p) => Date.parse(p[0])), ys = vals.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  const sx = (x) => ((x - x0) / (x1 - x0 || 1)) * (width - 2) + 1;
  const sy = (y) => height - 1 - ((y - y0) / (y1 - y0 || 1)) * (height - 2);
  const d = xs.map((x, i) => `${i ? 'L' : 'M'}${sx(x).toFixed(1)},${sy(ys[i]).toFixed(1)}`).join('');
  return html`<svg class="spark" width=${width} height=${height} role="img" aria-label=${label || `from ${fmtNum(ys[0])} to ${fmtNum(ys[ys.length - 1])}`}>
    <path d=${d} fill="none" stroke="#0b5cad" stroke-width="1.5" /></svg>`;
}

// Lines "k=v" <-> object of strings (tags).
export const tagsToText = (t) => Object.entries(t || {}).map(([k, v]) => `${k}=${v}`).join('\n');
export function textToTags(s) {
  const o = {};
  for (const line of s.split(/[\n,]/)) {
    const i = line.indexOf('=');
    if (i > 0) o[line.slice(0, i).trim()] = line.slice(i + 1).trim();
  }
  return o;
}

// Saves a JSON document as a file download.
export function download(name, obj) {
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob([JSON.stringify(obj, null, 2)], { type: 'application/json' }));
  a.download = name;
  document.body.append(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
}
