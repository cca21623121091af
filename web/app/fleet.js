// fleet.js - the fleet overview: counts, the device table (status, last seen,
// messages/s, sparkline of the main metric), search and filters, kept live by
// the WebSocket fleet subscription.
import { useEffect, useMemo, useState } from 'preact/hooks';
import { allDevices, enc, get, live } from './api.js';
import { html, ago, rate, ErrorMsg, Sparkline, useLoad } from './ui.js';

const PAGE = 200;

export function Fleet() {
  const [q, setQ] = useState(''), [tag, setTag] = useState(''), [group, setGroup] = useState(''), [status, setStatus] = useState('');
  const [appliedTag, setAppliedTag] = useState('');
  const [shown, setShown] = useState(PAGE);
  const [liveState, setLive] = useState({}); // id -> {online, last_seen, rate}
  const [summary, setSummary] = useState(null);
  const [sparks, setSparks] = useState({});
  useEffect(() => { document.title = 'Fleet · thinghz'; }, []);
  const groups = useLoad((signal) => get('/groups', { signal }).then((r) => r.items).catch(() => []), []);
  const devs = useLoad(() => {
    const p = {};
    if (appliedTag) p.tag = appliedTag;
    if (group) p.group = group;
    return allDevices(p);
  }, [appliedTag, group]);
  useEffect(() => { get('/fleet').then(setSummary, () => {}); }, []);

  // Live: presence per device and the 2-second fleet frames.
  useEffect(() => live.subscribe('fleet', (m) => {
    if (m.type === 'presence') {
      setLive((s) => ({ ...s, [m.device]: { ...s[m.device], online: m.online, last_seen: m.time } }));
    } else if (m.type === 'fleet') {
      setSummary((s) => ({ ...(s || {}), devices: m.total, online: m.online, offline: m.total - m.online }));
      setLive((s) => {
        const n = { ...s };
        for (const [id, d] of Object.entries(m.devices || {})) n[id] = { ...n[id], ...d };
        return n;
      });
    }
  }), []);

  const rows = useMemo(() => {
    const needle = q.trim().toLowerCase();
    return (devs.data || []).map((d) => ({ ...d, ...(liveState[d.id] || {}), rate: liveState[d.id]?.rate })).filter((d) =>
      (!needle || d.id.toLowerCase().includes(needle) || (d.name || '').toLowerCase().includes(needle)) &&
      (!status || (status === 'online') === !!d.online));
  }, [devs.data, liveState, q, status]);
  const visible = rows.slice(0, shown);
  const idsKey = visible.map((d) => d.id).join(',');

  // Sparklines of the visible devices, refreshed every 30 s.
  useEffect(() => {
    if (!visible.length) return;
    let stop = false;
    const load = () => get(`/fleet/sparklines?ids=${enc(idsKey)}&minutes=60&points=30`).then((r) => { if (!stop) setSparks(r.devices || {}); }, () => {});
    load();
    const t = setInterval(load, 30000);
    return () => { stop = true; clearInterval(t); };
  }, [idsKey]);

  const total = summary?.devices ?? devs.data?.length;
  const online = summary?.online ?? (devs.data || []).filter((d) => d.online).length;
  return html`<h1>Fleet</h1>
    <section class="counts" aria-label="Fleet counts">
      <div class="count"><b data-count="total">${total ?? '—'}</b>devices</div>
      <div class="count"><b data-count="online" style="color:var(--ok)">${online ?? '—'}</b>online</div>
      <div class="count"><b data-count="offline" style="color:var(--bad)">${total != null ? total - online : '—'}</b>offline</div>
      <div class="count"><b>${summary?.messages_in_per_s != null ? rate(summary.messages_in_per_s) : '—'}</b>messages/s in</div>
    </section>
    <form class="toolbar" role="search" onSubmit=${(e) => { e.preventDefault(); setAppliedTag(tag.trim()); }}>
      <div class="field"><label for="f-q">Search</label>
        <input id="f-q" type="search" placeholder="id or name" value=${q} onInput=${(e) => { setQ(e.target.value); setShown(PAGE); }} /></div>
      <div class="field"><label for="f-tag">Tag (k=v)</label>
        <input id="f-tag" placeholder="site=north" value=${tag} onInput=${(e) => setTag(e.target.value)}
          onBlur=${() => setAppliedTag(tag.trim())} /></div>
      <div class="field"><label for="f-group">Group</label>
        <select id="f-group" value=${group} onChange=${(e) => setGroup(e.target.value)}>
          <option value="">All groups</option>
          ${(groups.data || []).map((g) => html`<option value=${g.id}>${g.name || g.id}</option>`)}
        </select></div>
      <div class="field"><label for="f-status">Status</label>
        <select id="f-status" value=${status} onChange=${(e) => setStatus(e.target.value)}>
          <option value="">Any</option><option value="online">Online</option><option value="offline">Offline</option>
        </select></div>
      <button type="submit">Filter</button>
    </form>
    <${ErrorMsg} error=${devs.error} />
    ${devs.loading && !devs.data ? html`<p>Loading devices…</p>` : html`
    <p class="muted" aria-live="polite">${rows.length} device${rows.length === 1 ? '' : 's'} shown</p>
    <div class="scroll"><table id="fleet-table">
      <caption class="sr">Devices</caption>
      <thead><tr><th scope="col">Status</th><th scope="col">Device</th><th scope="col" class="hide-sm">Name</th>
        <th scope="col">Last seen</th><th scope="col" class="num">Msgs/s</th><th scope="col" class="hide-sm">Main metric (1 h)</th></tr></thead>
      <tbody>${visible.map((d) => html`<tr key=${d.id} data-device=${d.id}>
        <td><span class=${'status ' + (d.online ? 'on' : 'off')}>${d.online ? 'online' : 'offline'}</span></td>
        <td><a href=${'#/devices/' + enc(d.id)}>${d.id}</a>${d.enabled === false ? html` <span class="muted">(disabled)</span>` : ''}</td>
        <td class="hide-sm">${d.name || ''}</td>
        <td title=${d.last_seen || ''}>${ago(d.last_seen)}</td>
        <td class="num">${rate(d.rate)}</td>
        <td class="hide-sm">${sparks[d.id]?.metric ? html`<span class="muted">${sparks[d.id].metric} </span>` : ''}
          <${Sparkline} points=${sparks[d.id]?.points} label=${sparks[d.id]?.metric ? `${sparks[d.id].metric} over the last hour` : ''} /></td>
      </tr>`)}</tbody></table></div>
    ${rows.length > shown && html`<p><button type="button" onClick=${() => setShown(shown + PAGE)}>Show more (${rows.length - shown} left)</button></p>`}
    ${!rows.length && html`<p>No devices match.</p>`}`}`;
}
