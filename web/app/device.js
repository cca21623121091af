// device.js - one device: live charts of every numeric metric (points = the
// chart's pixel width; new points from the WebSocket, no polling), time range,
// zoom and pan, latest values, connection history, attributes and tags, raw
// messages.
import { useEffect, useRef, useState } from 'preact/hooks';
import { enc, get, live } from './api.js';
import { TimeChart, chartWidth, seriesOf } from './chart.js';
import { html, ago, fmtNum, fmtTime, ErrorMsg, RangePicker, resolve, useLoad } from './ui.js';

const MAX_MSGS = 100;

// Telemetry of metrics over [from,to) with at most `points` points each. An
// older server that refuses points= is asked with the equivalent step.
export async function telemetry(id, metrics, from, to, points, agg = 'avg', signal) {
  const q = new URLSearchParams({ metric: metrics.join(','), from: new Date(from).toISOString(), to: new Date(to).toISOString(), agg });
  try {
    return await get(`/devices/${enc(id)}/telemetry?${q}&points=${points}`, { signal });
  } catch (e) {
    if (e.status !== 400) throw e;
    return get(`/devices/${enc(id)}/telemetry?${q}&step=${Math.max(1, Math.ceil((to - from) / points / 1000))}s`, { signal });
  }
}

const payloadText = (m) => (m.payload != null ? m.payload : m.payload_base64 != null ? `base64: ${m.payload_base64}` : '');

export function Device({ id }) {
  const [range, setRange] = useState({ rel: '1h' });
  const [prevRange, setPrevRange] = useState(null); // what "reset zoom" returns to
  const [latest, setLatest] = useState({});
  const [series, setSeries] = useState(null); // metric -> [xs, ys]
  const [ver, setVer] = useState(0);
  const [events, setEvents] = useState(null), [msgs, setMsgs] = useState(null);
  const [err, setErr] = useState(null);
  const chartsBox = useRef();
  const rangeRef = useRef(range); rangeRef.current = range;
  const seriesRef = useRef(null); seriesRef.current = series;
  const dev = useLoad((signal) => get(`/devices/${enc(id)}`, { signal }), [id]);
  const devRef = useRef(dev); devRef.current = dev;
  useEffect(() => { document.title = `${id} · thinghz`; }, [id]);

  // Latest values, connection history and messages: once, then live.
  useEffect(() => {
    const ac = new AbortController(), signal = ac.signal;
    get(`/devices/${enc(id)}/latest`, { signal }).then((r) => setLatest(r.metrics || {}), (e) => { if (e.status !== 404) setErr(e); });
    get(`/devices/${enc(id)}/events?limit=50`, { signal }).then((r) => setEvents(r.events || []), () => setEvents([]));
    get(`/devices/${enc(id)}/messages?limit=50`, { signal }).then((r) => setMsgs(r.messages || []), () => setMsgs([]));
    return () => ac.abort();
  }, [id]);

  const metricNames = Object.keys(latest).filter((m) => typeof latest[m].value === 'number' || typeof latest[m].value === 'boolean').sort();
  const metricsKey = metricNames.join(',');

  // Chart data for the range, downsampled to the chart width.
  useEffect(() => {
    if (!metricNames.length) { setSeries({}); return; }
    const ac = new AbortController();
    const { from, to } = resolve(range);
    const w = chartWidth(chartsBox.current?.firstElementChild || chartsBox.current);
    telemetry(id, metricNames, from, to, Math.min(10000, w), 'avg', ac.signal)
      .then((j) => { setSeries(seriesOf(j)); setErr(null); }, (e) => { if (e.name !== 'AbortError') setErr(e); });
    return () => ac.abort();
  }, [id, metricsKey, range.rel, range.from, range.to]);

  // Live frames for this device.
  useEffect(() => live.subscribe('d:' + id, (m) => {
    if (m.type === 'telemetry') {
      const t = Date.parse(m.time) / 1000;
      setLatest((l) => {
        const n = { ...l };
        for (const [k, v] of Object.entries(m.metrics || {})) n[k] = { time: m.time, value: v };
        return n;
      });
      const s = seriesRef.current, r = rangeRef.current;
      if (!s || !r.rel) return; // a fixed (zoomed) range does not move
      const cut = t - resolve(r).to / 1000 + resolve(r).from / 1000;
      for (const [k, v] of Object.entries(m.metrics || {})) {
        if (typeof v !== 'number' && typeof v !== 'boolean') continue;
        const d = s[k] || (s[k] = [[], []]);
        if (d[0].length && t < d[0][d[0].length - 1]) continue; // out of order: next reload has it
        d[0].push(t); d[1].push(+v);
        while (d[0].length && d[0][0] < cut) { d[0].shift(); d[1].shift(); }
      }
      setVer((x) => x + 1);
    } else if (m.type === 'message') {
      setMsgs((l) => [m, ...(l || [])].slice(0, MAX_MSGS));
    } else if (m.type === 'presence') {
      setEvents((l) => [{ time: m.time, type: m.online ? 'connected' : 'disconnected', address: m.address, protocol: m.protocol, client_id: m.client_id, reason: m.reason }, ...(l || [])].slice(0, 200));
      const cur = devRef.current;
      cur.set({ ...(cur.data || {}), online: m.online, last_seen: m.time });
    }
  }), [id]); // not on dev.data: re-subscribing would drop frames in between

  const zoom = (f, t) => { if (!prevRange) setPrevRange(range); setRange({ from: Math.round(f), to: Math.round(t) }); };
  const pan = (dir) => {
    const { from, to } = resolve(range), d = ((to - from) / 2) * dir;
    if (!prevRange) setPrevRange(range);
    setRange({ from: from + d, to: to + d });
  };
  const zoomOut = () => {
    const { from, to } = resolve(range), d = (to - from) / 2;
    if (!prevRange) setPrevRange(range);
    setRange({ from: from - d, to: Math.min(Date.now(), to + d) });
  };
  const reset = () => { setRange(prevRange || { rel: '1h' }); setPrevRange(null); };

  const d = dev.data;
  if (dev.error) return html`<h1>${id}</h1><${ErrorMsg} error=${dev.error} /><p><a href="#/fleet">Back to the fleet</a></p>`;
  return html`<p><a href="#/fleet">← Fleet</a></p>
    <h1>${d?.name ? `${d.name} (${id})` : id} ${d && html`<span class=${'status ' + (d.online ? 'on' : 'off')} data-online=${String(!!d.online)}>${d.online ? 'online' : 'offline'}</span>`}</h1>
    ${d && html`<p class="muted">Last seen ${ago(d.last_seen)}${d.enabled === false ? ' · disabled' : ''}${d.type ? ' · type ' + d.type : ''}</p>`}
    <${ErrorMsg} error=${err} />
    <div class="toolbar">
      <${RangePicker} value=${range} onChange=${(r) => { setPrevRange(null); setRange(r); }} id="dev-range" />
      <div class="row" role="group" aria-label="Zoom and pan">
        <button type="button" onClick=${() => pan(-1)} aria-label="Pan left">◀</button>
        <button type="button" onClick=${() => pan(1)} aria-label="Pan right">▶</button>
        <button type="button" onClick=${zoomOut}>Zoom out</button>
        ${prevRange && html`<button type="button" onClick=${reset}>Reset zoom</button>`}
      </div>
      <span class="muted">${range.rel ? 'live' : `${fmtTime(range.from)} – ${fmtTime(range.to)}`}</span>
    </div>
    <section aria-labelledby="h-charts"><h2 id="h-charts">Charts</h2>
      <div class="charts" ref=${chartsBox} id="charts">
        ${series === null ? html`<p>Loading…</p>` : !metricNames.length ? html`<p>No numeric telemetry yet.</p>` :
          metricNames.map((m) => html`<div class="chart" key=${m} data-metric=${m}><h3>${m}</h3>
            <${TimeChart} data=${series[m] || [[], []]} labels=${[m]} version=${ver} label=${`${m} of ${id}`}
              onZoom=${zoom} onPan=${pan} onZoomOut=${zoomOut} /></div>`)}
      </div></section>
    <div class="grid2">
      <section aria-labelledby="h-latest"><h2 id="h-latest">Latest values</h2>
        <div class="scroll"><table id="latest"><thead><tr><th scope="col">Metric</th><th scope="col" class="num">Value</th><th scope="col">Time</th></tr></thead>
          <tbody>${Object.keys(latest).sort().map((m) => html`<tr data-metric=${m}><td>${m}</td>
            <td class="num" data-value>${fmtNum(latest[m].value)}</td><td>${fmtTime(latest[m].time)}</td></tr>`)}</tbody></table></div>
        ${!Object.keys(latest).length && html`<p class="muted">No values yet.</p>`}
      </section>
      <section aria-labelledby="h-attrs"><h2 id="h-attrs">Tags and attributes</h2>
        ${d && html`<table><tbody>
          ${Object.entries(d.tags || {}).map(([k, v]) => html`<tr><th scope="row">tag ${k}</th><td>${v}</td></tr>`)}
          ${Object.entries(d.attributes || {}).map(([k, v]) => html`<tr><th scope="row">${k}</th><td>${typeof v === 'string' ? v : JSON.stringify(v)}</td></tr>`)}
          ${(d.groups || []).length ? html`<tr><th scope="row">groups</th><td>${d.groups.join(', ')}</td></tr>` : ''}
          <tr><th scope="row">address</th><td>${d.client_address || '—'}</td></tr>
          <tr><th scope="row">messages in / out</th><td>${d.messages_in_total ?? '—'} / ${d.messages_out_total ?? '—'}</td></tr>
        </tbody></table>`}
      </section>
    </div>
    <section aria-labelledby="h-events"><h2 id="h-events">Connection history</h2>
      ${events === null ? html`<p>Loading…</p>` : !events.length ? html`<p class="muted">No history.</p>` : html`
      <div class="scroll"><table id="events"><thead><tr><th scope="col">Time</th><th scope="col">Event</th><th scope="col">Address</th><th scope="col" class="hide-sm">Client id</th><th scope="col">Reason</th></tr></thead>
        <tbody>${events.map((e) => html`<tr><td>${fmtTime(e.time)}</td><td>${e.type}</td><td>${e.address || ''}</td><td class="hide-sm">${e.client_id || ''}</td><td>${e.reason || ''}</td></tr>`)}</tbody></table></div>`}
    </section>
    <section aria-labelledby="h-msgs" class="msgs"><h2 id="h-msgs">Messages</h2>
      ${msgs === null ? html`<p>Loading…</p>` : !msgs.length ? html`<p class="muted">No messages.</p>` : html`
      <div class="scroll"><table id="messages"><thead><tr><th scope="col">Time</th><th scope="col">Topic</th><th scope="col" class="hide-sm">QoS</th><th scope="col">Payload</th></tr></thead>
        <tbody>${msgs.map((m) => html`<tr><td>${fmtTime(m.time)}</td><td>${m.topic}${m.retain ? ' (retained)' : ''}</td><td class="hide-sm">${m.qos}</td>
          <td><pre>${payloadText(m)}${m.truncated ? ` … (${m.size} bytes)` : ''}</pre></td></tr>`)}</tbody></table></div>`}
    </section>`;
}
