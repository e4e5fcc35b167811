"""The page `/latency` serves to browsers: one self-contained HTML document (inline CSS and JS, no
external scripts or fonts) that polls the JSON every second and plots the percentiles live in a
hand-drawn SVG chart, with a per-route table below."""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>gatewayd latency</title>
<style>
  :root { --bg:#0f1419; --panel:#171d24; --line:#263040; --text:#d8dee6; --muted:#8a96a6;
          --p50:#4cc38a; --p90:#e6c84a; --p99:#f08a4b; --p999:#e5534b; --max:#9a7cf0; }
  * { box-sizing: border-box; }
  body { margin: 0; padding: 20px 28px; background: var(--bg); color: var(--text);
         font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
  h1 { font-size: 18px; font-weight: 600; margin: 0 0 4px; }
  .sub { color: var(--muted); font-size: 12px; margin-bottom: 16px; }
  .cards { display: flex; gap: 12px; flex-wrap: wrap; margin-bottom: 16px; }
  .card { background: var(--panel); border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; min-width: 130px; }
  .card .k { color: var(--muted); font-size: 11px; text-transform: uppercase; letter-spacing: .05em; }
  .card .v { font-size: 20px; font-variant-numeric: tabular-nums; margin-top: 2px; }
  .panel { background: var(--panel); border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; margin-bottom: 16px; }
  .bar { display: flex; align-items: center; gap: 14px; margin-bottom: 8px; flex-wrap: wrap; }
  .legend span { display: inline-flex; align-items: center; gap: 5px; margin-right: 12px; font-size: 12px; color: var(--muted); }
  .legend i { width: 14px; height: 3px; border-radius: 2px; display: inline-block; }
  select { background: var(--bg); color: var(--text); border: 1px solid var(--line); border-radius: 5px; padding: 3px 6px; }
  svg { width: 100%; height: 300px; display: block; }
  svg text { fill: var(--muted); font-size: 11px; }
  table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
  th, td { text-align: right; padding: 5px 8px; border-bottom: 1px solid var(--line); white-space: nowrap; }
  th:first-child, td:first-child { text-align: left; }
  th { color: var(--muted); font-weight: 500; font-size: 12px; }
  tr.overall td { font-weight: 600; }
  .err { color: var(--p999); }
  #status { font-size: 12px; color: var(--muted); }
</style>
</head>
<body>
<h1>gatewayd latency</h1>
<div class="sub" id="sub">waiting for the first figures&hellip;</div>
<div class="cards">
  <div class="card"><div class="k">requests / s (10 s)</div><div class="v" id="rps">&ndash;</div></div>
  <div class="card"><div class="k">p50 (10 s)</div><div class="v" id="c50">&ndash;</div></div>
  <div class="card"><div class="k">p99 (10 s)</div><div class="v" id="c99">&ndash;</div></div>
  <div class="card"><div class="k">4xx / 5xx (60 s)</div><div class="v" id="cerr">&ndash;</div></div>
  <div class="card"><div class="k">workers</div><div class="v" id="cw">&ndash;</div></div>
</div>
<div class="panel">
  <div class="bar">
    <label>time <select id="metric"><option value="server_ms">server (to response start)</option><option value="total_ms">total (to end of body)</option></select></label>
    <label>route <select id="route"><option value="">all requests</option></select></label>
    <span class="legend">
      <span><i style="background:var(--p50)"></i>p50</span><span><i style="background:var(--p90)"></i>p90</span>
      <span><i style="background:var(--p99)"></i>p99</span><span><i style="background:var(--p999)"></i>p99.9</span>
      <span><i style="background:var(--max)"></i>max</span>
    </span>
    <span id="status"></span>
  </div>
  <svg id="chart" viewBox="0 0 1000 300" preserveAspectRatio="none" aria-label="latency percentiles over time (last 10 s window), log scale"></svg>
</div>
<div class="panel">
  <div class="bar"><label>window <select id="window"></select></label></div>
  <table id="table"><thead></thead><tbody></tbody></table>
</div>
<script>
"use strict";
const HISTORY = 120, SERIES = [["p50","--p50"],["p90","--p90"],["p99","--p99"],["p99.9","--p999"],["max","--max"]];
const history = [];  // {t, doc}
let latest = null;
const $ = (id) => document.getElementById(id);
const css = (v) => getComputedStyle(document.documentElement).getPropertyValue(v).trim();
const fmt = (v) => v == null ? "\u2013" : (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2));
const NS = "http://www.w3.org/2000/svg";
function el(name, attrs, parent) {
  const e = document.createElementNS(NS, name);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (parent) parent.appendChild(e);
  return e;
}
function pick(doc) {
  const route = $("route").value;
  return route ? (doc.routes[route] || null) : doc.overall;
}
function draw() {
  const svg = $("chart"); while (svg.firstChild) svg.removeChild(svg.firstChild);
  const W = 1000, H = 300, L = 64, R = 12, T = 12, B = 26;
  const metric = $("metric").value;
  const points = history.map((h) => { const s = pick(h.doc); return s ? s["10s"][metric] : null; });
  let lo = Infinity, hi = 0;
  for (const p of points) if (p) for (const [q] of SERIES) if (p[q] > 0) { lo = Math.min(lo, p[q]); hi = Math.max(hi, p[q]); }
  if (!(hi > 0)) { lo = 0.1; hi = 10; }
  // a log scale over whole decades: p50 and p99.9 can be three orders of magnitude apart
  const d0 = Math.floor(Math.log10(lo)), d1 = Math.max(Math.ceil(Math.log10(hi)), d0 + 1);
  const y = (v) => T + (H - T - B) * (1 - (Math.log10(Math.max(v, Math.pow(10, d0))) - d0) / (d1 - d0));
  for (let d = d0; d <= d1; d++) {
    const v = Math.pow(10, d), yy = y(v);
    el("line", {x1: L, x2: W - R, y1: yy, y2: yy, stroke: css("--line"), "stroke-width": 1}, svg);
    const t = el("text", {x: L - 6, y: yy + 4, "text-anchor": "end"}, svg);
    t.textContent = (v >= 1 ? v.toFixed(0) : v.toPrecision(1)) + " ms";
  }
  const n = Math.max(points.length, 2);
  const x = (i) => L + (W - L - R) * (i + HISTORY - n) / (HISTORY - 1);
  const ago = el("text", {x: L, y: H - 6}, svg); ago.textContent = HISTORY + " s ago";
  const now = el("text", {x: W - R, y: H - 6, "text-anchor": "end"}, svg); now.textContent = "now";
  let drawn = 0;
  for (const [q, color] of SERIES) {
    let d = "";
    points.forEach((p, i) => {
      if (!p || p[q] == null) return;
      d += (d ? "L" : "M") + x(i).toFixed(1) + "," + y(p[q]).toFixed(1);
      drawn++;
    });
    if (d) el("path", {d, fill: "none", stroke: css(color), "stroke-width": q === "max" ? 1 : 2,
                       "stroke-dasharray": q === "max" ? "4 3" : "", class: "series", "data-q": q}, svg);
  }
  svg.setAttribute("data-points", String(drawn));
}
function table() {
  if (!latest) return;
  const win = $("window").value || "10s", metric = $("metric").value;
  const cols = ["count", "4xx", "5xx"].concat(latest.quantiles);
  $("table").tHead.innerHTML = "<tr><th>route</th>" + cols.map((c) => "<th>" + c + (latest.quantiles.includes(c) ? " ms" : "") + "</th>").join("") + "</tr>";
  const rows = [["all requests", latest.overall, "overall"]].concat(Object.entries(latest.routes).map(([k, v]) => [k, v, ""]));
  const body = $("table").tBodies[0]; body.textContent = "";
  for (const [name, w, cls] of rows) {
    const s = w[win], tr = document.createElement("tr"); tr.className = cls;
    const cells = [name, s.count, s.errors_4xx, s.errors_5xx].concat(latest.quantiles.map((q) => fmt(s[metric][q])));
    cells.forEach((c, i) => { const td = document.createElement("td"); td.textContent = c;
      if ((i === 2 || i === 3) && c > 0) td.className = "err"; tr.appendChild(td); });
    body.appendChild(tr);
  }
}
function cards(doc) {
  const o = doc.overall;
  $("rps").textContent = (o["10s"].count / 10).toFixed(1);
  $("c50").textContent = fmt(o["10s"][$("metric").value].p50) + " ms";
  $("c99").textContent = fmt(o["10s"][$("metric").value].p99) + " ms";
  $("cerr").textContent = o["60s"].errors_4xx + " / " + o["60s"].errors_5xx;
  $("cw").textContent = doc.workers;
  $("sub").textContent = (doc.recording === false ? "RECORDING OFF (observability.record: false) \u00b7 " : "") + "all workers of this host \u00b7 quantiles within " + (doc.relative_error * 100) + "% \u00b7 chart: last 10 s window, sampled every second \u00b7 updated " + new Date().toLocaleTimeString();
}
function options(doc) {
  const sel = $("route"), have = new Set(Array.from(sel.options).map((o) => o.value));
  for (const name of Object.keys(doc.routes)) if (!have.has(name)) { const o = document.createElement("option"); o.value = o.textContent = name; sel.appendChild(o); }
  const w = $("window");
  if (!w.options.length) for (const name of doc.windows) { const o = document.createElement("option"); o.value = name; o.textContent = name.replace("_", " "); w.appendChild(o); }
}
async function poll() {
  try {
    const r = await fetch(location.pathname + "?format=json", {headers: {accept: "application/json"}, cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    latest = await r.json();
    history.push({t: Date.now(), doc: latest});
    if (history.length > HISTORY) history.shift();
    options(latest); cards(latest); draw(); table();
    $("status").textContent = "";
  } catch (e) {
    $("status").textContent = "no answer: " + e.message;
  }
}
for (const id of ["metric", "route", "window"]) $(id).addEventListener("change", () => { if (latest) { cards(latest); draw(); table(); } });
poll();
setInterval(poll, 1000);
</script>
</body>
</html>
"""
