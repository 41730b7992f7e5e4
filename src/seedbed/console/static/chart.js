// Charts as SVG drawn with DOM calls (no inline styles, nothing evaluated): bars by category
// and a line over time. Colours come from the stylesheet's classes.
const NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, String(value));
  if (text !== undefined) el.textContent = text;
  return el;
}

// series: [{ label, values: [number per x] }]; xs: labels along the bottom
export function barChart({ title, xs, series, height = 180 }) {
  const width = Math.max(240, xs.length * 28 + 60);
  const root = svg("svg", { viewBox: `0 0 ${width} ${height + 40}`, role: "img", "aria-label": title, class: "chart" });
  root.append(svg("title", {}, title));
  const totals = xs.map((_, i) => series.reduce((sum, s) => sum + (s.values[i] || 0), 0));
  const top = Math.max(1, ...totals);
  const step = (width - 50) / Math.max(1, xs.length);
  root.append(svg("text", { x: 4, y: 12, class: "axis" }, String(top)), svg("line", { x1: 40, y1: height, x2: width, y2: height, class: "axis-line" }));
  xs.forEach((x, i) => {
    let base = height;
    series.forEach((s, k) => {
      const value = s.values[i] || 0;
      if (!value) return;
      const tall = (value / top) * (height - 20);
      base -= tall;
      const bar = svg("rect", { x: 45 + i * step, y: base, width: Math.max(2, Math.min(36, step - 6)), height: tall, class: `series-${k % 6}` });
      bar.append(svg("title", {}, `${x} · ${s.label}: ${value}`));
      root.append(bar);
    });
    if (xs.length <= 16 || i % Math.ceil(xs.length / 12) === 0) {
      root.append(svg("text", { x: 45 + i * step, y: height + 14, class: "axis" }, x));
    }
  });
  return root;
}

export function lineChart({ title, points, height = 140, unit = "" }) {
  const width = 480;
  const root = svg("svg", { viewBox: `0 0 ${width} ${height + 24}`, role: "img", "aria-label": title, class: "chart" });
  root.append(svg("title", {}, title));
  const top = Math.max(1, ...points.map((p) => p.y));
  const first = points.length ? points[0].x : 0;
  const span = Math.max(1, points.length ? points[points.length - 1].x - first : 1);
  const xy = (p) => `${40 + ((p.x - first) / span) * (width - 50)},${height - (p.y / top) * (height - 10)}`;
  root.append(svg("text", { x: 2, y: 12, class: "axis" }, `${Math.round(top * 100) / 100}${unit}`),
    svg("line", { x1: 40, y1: height, x2: width, y2: height, class: "axis-line" }));
  if (points.length) root.append(svg("polyline", { points: points.map(xy).join(" "), class: "line series-0" }));
  root.append(svg("text", { x: 40, y: height + 16, class: "axis" }, points.length ? new Date(first).toLocaleTimeString() : "no samples yet"));
  return root;
}
