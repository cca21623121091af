// chart.js - uPlot time charts. Dragging across a chart selects a time range
// (onZoom), the arrow keys pan and - zooms out (onPan/onZoomOut) when the chart
// has focus. The chart is as wide as its box; callers fetch `points=` equal
// to that width (chartWidth) so the server downsamples to one point a pixel.
import { useEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';
import { html } from './ui.js';

export const COLORS = ['#0b5cad', '#c2410c', '#15803d', '#7e22ce', '#b91c1c', '#0e7490', '#a16207', '#be185d'];

// The pixel width a chart in `el` (or a default box) gets.
export const chartWidth = (el) => Math.max(100, Math.round((el?.clientWidth || 600) - 10));

// data: [xs (seconds), ys...]; labels: one per y series. version: bump it
// after mutating data in place (live points) to redraw.
export function TimeChart({ data, labels, units = [], height = 200, bars = false, onZoom, onPan, onZoomOut, label, version, thresholds }) {
  const box = useRef(), plot = useRef(), cb = useRef({});
  cb.current = { onZoom, onPan, onZoomOut };
  useEffect(() => {
    const el = box.current;
    const opts = {
      width: chartWidth(el), height,
      legend: { live: true },
      cursor: { drag: { x: true, y: false, setScale: false } },
      scales: { x: { time: true } },
      axes: [{}, { size: 56, values: (u, vals) => vals.map((v) => (Math.abs(v) >= 1e5 ? v.toExponential(1) : v)) }],
      series: [{}, ...labels.map((l, i) => ({
        label: units[i] ? `${l} (${units[i]})` : l,
        stroke: COLORS[i % COLORS.length], width: 1.5,
        fill: bars ? COLORS[i % COLORS.length] + '99' : undefined,
        paths: bars ? uPlot.paths.bars({ size: [0.7, 60] }) : undefined,
        spanGaps: false, points: { show: false },
      }))],
      hooks: {
        setSelect: [(u) => {
          if (u.select.width < 3) return;
          const f = u.posToVal(u.select.left, 'x'), t = u.posToVal(u.select.left + u.select.width, 'x');
          u.setSelect({ left: 0, width: 0, top: 0, height: 0 }, false);
          cb.current.onZoom?.(f * 1000, t * 1000);
        }],
        draw: [(u) => {
          if (!thresholds?.length) return;
          const { ctx, bbox } = u;
          ctx.save();
          for (const th of thresholds) {
            const y = u.valToPos(th.value, 'y', true);
            if (y < bbox.top || y > bbox.top + bbox.height) continue;
            ctx.strokeStyle = th.color || 'red'; ctx.setLineDash([4, 4]); ctx.lineWidth = 1;
            ctx.beginPath(); ctx.moveTo(bbox.left, y); ctx.lineTo(bbox.left + bbox.width, y); ctx.stroke();
          }
          ctx.restore();
        }],
      },
    };
    plot.current = new uPlot(opts, data, el);
    const ro = new ResizeObserver(() => {
      const w = chartWidth(el);
      if (plot.current && Math.abs(plot.current.width - w) > 2) plot.current.setSize({ width: w, height });
    });
    ro.observe(el);
    return () => { ro.disconnect(); plot.current.destroy(); plot.current = null; };
  }, [labels.join('\u0001'), units.join('\u0001'), bars, height, JSON.stringify(thresholds || [])]);
  useEffect(() => { plot.current?.setData(data); }, [data, version]);
  const onKey = (e) => {
    if (e.key === 'ArrowLeft') { cb.current.onPan?.(-1); e.preventDefault(); }
    else if (e.key === 'ArrowRight') { cb.current.onPan?.(1); e.preventDefault(); }
    else if (e.key === '-' || e.key === 'Escape') { cb.current.onZoomOut?.(); e.preventDefault(); }
  };
  const n = data[0]?.length || 0;
  return html`<div class="plot" ref=${box} tabindex="0" role="img" onKeyDown=${onKey}
    aria-label=${`${label || labels.join(', ')}: ${n} points. Drag to zoom; arrow keys pan; minus zooms out.`}
    data-points=${n}></div>`;
}

// Telemetry JSON (one metric or several) -> {metric: [[sec...], [val...]]}.
export function seriesOf(j) {
  const out = {};
  const add = (m, pts) => {
    const xs = [], ys = [];
    for (const p of pts || []) {
      xs.push(Date.parse(p[0]) / 1000);
      ys.push(typeof p[1] === 'number' ? p[1] : typeof p[1] === 'boolean' ? +p[1] : null);
    }
    out[m] = [xs, ys];
  };
  if (j?.series) for (const s of j.series) add(s.metric, s.points);
  else if (j?.metric) add(j.metric, j.points);
  return out;
}
