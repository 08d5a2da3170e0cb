// labfleet's page, live or static: the dashboard fetches the read-only JSON API and refetches when the
// server's event stream says the ledger changed; `labfleet report` inlines the same document (the
// #labfleet-data block) and this page draws it once. Charts are Apache ECharts (static/vendor). Colours,
// labels, time units and number formats live here and nowhere else. Ledger text only ever goes into
// textContent, or through esc() into a chart's tooltip.
"use strict";

const DOC = (() => {
  const block = document.getElementById("labfleet-data");
  return block ? JSON.parse(block.textContent) : null;
})();
const STATIC = DOC !== null;
const TOKEN = new URLSearchParams(location.search).get("token");

// --------------------------------------------------------------------------- one palette, one set of formats

const COLOURS = {
  baseline: "#1f5fa8", kept: "#2a9d3c", discarded: "#a9a9a9", pending: "#9ec5e8", running: "#f2b827",
  crashed: "#d62728", timeout: "#f07f1a", lost: "#8e5cc2", cancelled: "#cfcfcf", best: "#145a24",
  failed: "#d62728", neutral: "#b8c2cc", spend: "#4c78a8", offRange: "#bbbbbb",
};
const OUTCOME_LABELS = {
  baseline: "baseline", kept: "kept", discarded: "discarded", pending: "awaiting decision", running: "running",
  crashed: "failed / crashed", timeout: "timeout", lost: "lost (retried)", cancelled: "cancelled",
};
const SPECIAL_RUNS = "validate / confirm / noise / calibrate run";
const BANDS = ["#eef3fa", "#faf5ea"];  // alternating phase backgrounds
const DIMINISHING = { name: "diminishing returns", colour: "#fbeaea" };
const MAX_ROWS = 500;
const LABEL_CHARS = 26;  // kept experiments' labels on the progress chart
const FONT = '-apple-system, "Segoe UI", "Helvetica Neue", Arial, "DejaVu Sans", sans-serif';

const $ = (id) => document.getElementById(id);
const finite = (v) => typeof v === "number" && Number.isFinite(v);

function fmtMetric(v) {
  if (!finite(v)) return "n/a";
  return Math.abs(v) < 1000 ? v.toFixed(4) : v.toLocaleString("en-US", { maximumFractionDigits: 1 });
}

function fmtSigned(v) { return finite(v) ? (v > 0 ? "+" : v < 0 ? "−" : "") + fmtMetric(Math.abs(v)) : "n/a"; }

function fmtDuration(s) {
  if (!finite(s)) return "n/a";
  if (s < 120) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  if (s < 7200) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(2)} h`;
}

function fmtUsd(v) {
  if (!finite(v)) return "n/a";
  return "$" + v.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: v < 1 && v > 0 ? 4 : 2 });
}

function fmtNumber(v, digits = 2) {
  if (!finite(v)) return "–";
  return Math.abs(v) >= 100 ? Math.round(v).toLocaleString("en-US") : v.toFixed(digits);
}

const fmtTick = (v) => (Math.abs(v) >= 100 ? fmtNumber(v) : String(+v.toPrecision(3)));
const fmtPct = (v) => (finite(v) ? `${Math.round(v * 100)}%` : "n/a");
const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
const short = (text, n) => { const t = String(text || "").split(/\s+/).join(" "); return t.length > n ? t.slice(0, n - 1) + "…" : t; };
const esc = (text) => echarts.format.encodeHTML(String(text ?? ""));

// The time axis: hours for a long session, minutes or seconds for a short one.
function timeUnits(span) {
  if (span >= 3 * 3600) return { name: "h", long: "hours", seconds: 3600 };
  if (span >= 180) return { name: "min", long: "minutes", seconds: 60 };
  return { name: "s", long: "seconds", seconds: 1 };
}

// --------------------------------------------------------------------------- state, fetching

const state = {
  status: null, progress: null, timeline: null, experiments: [], analysis: null,
  offset: 0,             // server clock minus this clock, seconds
  sort: { key: "id", asc: false },
  detail: null,          // the open experiment's id
  lastUpdate: 0, refreshing: false, dirty: false, timer: null,
};
const charts = {};
// what tests and the PNG export read: whether every chart is drawn, and the chart instances
window.labfleet = { rendered: false, charts, state };

const nowServer = () => (STATIC ? state.timeline.end : Date.now() / 1000 + state.offset);

function url(path) {
  if (!TOKEN) return path;
  return path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(TOKEN);
}

async function api(path) {
  const response = await fetch(url(path), { cache: "no-store" });
  if (!response.ok) {
    const error = new Error(`${path}: HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return response.json();
}

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null) continue;
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function scheduleRefresh(delay = 120) {
  if (state.refreshing) { state.dirty = true; return; }
  if (state.timer) return;
  state.timer = setTimeout(() => { state.timer = null; refresh(); }, delay);
}

function renderAll() {
  renderStatus(); renderProgress(); renderTimeline(); renderTable(); renderAnalysis();
  window.labfleet.rendered = true;
}

async function refresh() {
  state.refreshing = true;
  state.dirty = false;
  try {
    const status = await api("api/status");
    state.offset = status.now - Date.now() / 1000;
    state.status = status;
    if (status.session === null || status.session === undefined) {
      renderStatus();
      showBanner(status.message || "waiting for a session", false);
    } else {
      hideBanner();
      const [progress, timeline, experiments, analysis] = await Promise.all([
        api("api/progress"), api("api/timeline"), api("api/experiments"), api("api/analysis"),
      ]);
      state.progress = progress; state.timeline = timeline;
      state.experiments = experiments.experiments; state.analysis = analysis;
      renderAll();
      if (state.detail !== null) openDetail(state.detail, true);
    }
    state.lastUpdate = Date.now();
  } catch (error) {
    showBanner(error.status === 401 ? "the dashboard needs its token: open it with ?token=…"
      : `cannot read the dashboard (${error.message}); retrying`, true);
  } finally {
    state.refreshing = false;
    if (state.dirty) scheduleRefresh(50);
  }
}

function showStatic() {
  state.status = DOC.status; state.progress = DOC.progress; state.timeline = DOC.timeline;
  state.experiments = DOC.experiments; state.analysis = DOC.analysis;
  const live = $("live");
  live.textContent = "static report"; live.className = "live";
  $("updated").textContent = "built " + new Date(DOC.report.built_at * 1000).toISOString().slice(0, 16).replace("T", " ")
    + " UTC";
  $("target").textContent = DOC.report.title;
  const holdout = DOC.report.holdout || [];
  if (holdout.length) {
    $("panel-holdout").hidden = false;
    $("holdout").replaceChildren(findings(holdout));
  }
  renderAll();
}

function showBanner(text, error) {
  const banner = $("banner");
  banner.textContent = text;
  banner.className = error ? "banner error" : "banner";
  banner.hidden = false;
}
function hideBanner() { $("banner").hidden = true; }

function connect() {
  const live = $("live");
  const source = new EventSource(url("api/stream"));
  source.addEventListener("hello", () => { live.textContent = "live"; live.className = "live on"; scheduleRefresh(); });
  source.addEventListener("changed", () => { live.textContent = "live"; live.className = "live on"; scheduleRefresh(); });
  source.onerror = () => { live.textContent = "reconnecting"; live.className = "live off"; };
}

function tick() {
  if (state.lastUpdate) {
    const ago = Math.round((Date.now() - state.lastUpdate) / 1000);
    $("updated").textContent = ago < 2 ? "updated just now" : ago < 120 ? `updated ${ago} s ago` : `updated ${fmtDuration(ago)} ago`;
  }
  if (state.timeline && state.timeline.running) drawTimeline();  // running bars grow without a refetch
  tickRunning();
  // a lost stream must not freeze the page: poll slowly while it reconnects
  if ($("live").classList.contains("off") && Date.now() - state.lastUpdate > 10000) scheduleRefresh();
}

// --------------------------------------------------------------------------- headline

function renderStatus() {
  const s = state.status;
  $("target").textContent = s.target || "";
  document.title = STATIC ? DOC.report.title : `labfleet · ${s.target || ""}`;
  if (STATIC) $("target").textContent = DOC.report.title;
  const stateEl = $("state");
  const alarm = $("alarm");
  alarm.textContent = s.alarm || "";
  alarm.hidden = !s.alarm;
  if (s.session === null || s.session === undefined) {
    stateEl.textContent = "no session"; stateEl.className = "pill";
    $("session-line").textContent = "";
    return;
  }
  stateEl.textContent = s.state; stateEl.className = `pill ${s.state}`;
  const budget = s.config && s.config.budget_seconds ? ` · ${s.config.budget_seconds} s budget` : "";
  const simulated = s.surrogate ? ` · simulated against the surrogate ${s.surrogate}` : "";
  $("session-line").textContent = `session ${s.session} · ${s.researcher} researcher · branch ${s.branch} · `
    + `${plural(s.workers, "worker")}${budget} · ${fmtDuration(s.elapsed_seconds)}${simulated}`;
  const better = s.direction === "maximize" ? "higher" : "lower";
  $("card-best-label").textContent = `best ${s.metric}` + (s.best ? ` · e${s.best.id}` : "");
  $("card-best-label").title = `${better} is better`;
  $("card-best").textContent = s.best ? fmtMetric(s.best.metric) : "n/a";
  const gain = $("card-gain");
  gain.replaceChildren();
  if (finite(s.gain)) {
    const se = finite(s.gain_se) ? ` ± ${fmtMetric(s.gain_se)}` : "";
    gain.append(el("span", { class: s.gain > 0 ? "good" : s.gain < 0 ? "bad" : "", text: `${fmtSigned(s.gain)}${se}` }),
      ` vs baseline ${fmtMetric(s.baseline_metric)}`);
  } else if (finite(s.baseline_metric)) {
    gain.textContent = `baseline ${fmtMetric(s.baseline_metric)}`;
  } else {
    gain.textContent = "baseline running";
  }
  const e = s.experiments;
  $("card-decided").textContent = String(e.decided);
  $("card-decided-sub").textContent = `${e.done} done / ${e.failed} failed · ${e.kept} kept · ${e.running} running`
    + ` · ${e.queued} queued`;
  $("card-decided-sub").title = `${e.kept} kept, ${e.discarded} discarded, ${e.failed} failed; ${e.running} running,`
    + ` ${e.queued} queued`;
  $("card-rate").textContent = fmtNumber(s.per_hour, 1);
  $("card-rate-sub").textContent = `${s.finished_runs} runs finished`;
  $("card-util").textContent = fmtPct(s.utilization);
  $("card-util-sub").textContent = `${(s.running || []).length} of ${plural(s.workers, "worker")} busy now`;
  $("card-cost").textContent = s.priced ? fmtUsd(s.cost_usd) : "$0";
  $("card-cost-sub").textContent = s.priced ? "price × busy time" : "no prices set";
  $("card-llm").textContent = fmtUsd(s.llm.usd);
  $("card-llm-sub").textContent = s.llm.calls
    ? `${plural(s.llm.calls, "call")} · ${(s.llm.input_tokens + s.llm.output_tokens).toLocaleString("en-US")} tokens`
    : "no model calls";
  $("card-phase").textContent = s.phase;
  $("card-phase").title = s.phase;
  $("card-phase-sub").textContent = s.diminishing ? `${s.since_keep} without a keep`
    : `${s.since_keep} since the last keep`;
  renderRunning();
}

// --------------------------------------------------------------------------- charts (Apache ECharts)

const AXIS = { axisLine: { lineStyle: { color: "#c9cdd3" } }, axisLabel: { color: "#555", fontSize: 11 },
  splitLine: { lineStyle: { color: "#eef0f2" } }, nameTextStyle: { color: "#555", fontSize: 11 } };
const LEGEND = { bottom: 0, icon: "roundRect", itemWidth: 12, itemHeight: 9, textStyle: { color: "#6b7280", fontSize: 12 } };

// One chart per container, created once and redrawn in place; none at all when there is nothing to draw.
function chartIn(id, height, message) {
  const box = $(id);
  box.style.height = `${height}px`;
  if (message) {
    if (charts[id]) { charts[id].dispose(); delete charts[id]; }
    box.replaceChildren(el("p", { class: "empty", text: message }));
    return null;
  }
  if (!charts[id]) {
    box.replaceChildren();
    charts[id] = echarts.init(box, null, { renderer: "canvas" });
    charts[id].on("click", (params) => {
      const exp = params.data && params.data.experiment;
      if (exp !== undefined && exp !== null) openDetail(exp);
    });
  }
  return charts[id];
}

function draw(chart, option) {
  chart.setOption({ animation: false, textStyle: { fontFamily: FONT }, ...option }, { notMerge: true });
}

// A diagonal hatch over a colour: repeats (validate, confirm, noise, calibrate) and interactions.
const hatches = {};
function hatch(colour) {
  if (!hatches[colour]) {
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = 8;
    const g = canvas.getContext("2d");
    g.fillStyle = colour; g.fillRect(0, 0, 8, 8);
    g.strokeStyle = "rgba(0,0,0,0.45)"; g.lineWidth = 1.4;
    g.beginPath(); g.moveTo(0, 8); g.lineTo(8, 0); g.moveTo(-2, 2); g.lineTo(2, -2); g.moveTo(6, 10); g.lineTo(10, 6);
    g.stroke();
    hatches[colour] = { image: canvas, repeat: "repeat" };
  }
  return hatches[colour];
}

// Error bars: a custom series over [x, low, high] (vertical) or [y, low, high] (horizontal) items.
function errorBars(name, data, horizontal, colour = "#222") {
  return {
    type: "custom", name, data, z: 5, silent: true, tooltip: { show: false }, encode: horizontal ? { x: [1, 2], y: 0 } : { x: 0, y: [1, 2] },
    renderItem(params, api) {
      const at = api.value(0), lo = api.value(1), hi = api.value(2);
      const a = api.coord(horizontal ? [lo, at] : [at, lo]), b = api.coord(horizontal ? [hi, at] : [at, hi]);
      const cap = 5;
      const style = { stroke: colour, lineWidth: 1.3, fill: null };
      const line = (x1, y1, x2, y2) => ({ type: "line", shape: { x1, y1, x2, y2 }, style });
      return { type: "group", children: horizontal
        ? [line(a[0], a[1], b[0], b[1]), line(a[0], a[1] - cap, a[0], a[1] + cap), line(b[0], b[1] - cap, b[0], b[1] + cap)]
        : [line(a[0], a[1], b[0], b[1]), line(a[0] - cap, a[1], a[0] + cap, a[1]), line(b[0] - cap, b[1], b[0] + cap, b[1])] };
    },
  };
}

function metricLabel(metric, direction) {
  return `${metric} (${direction === "maximize" ? "higher" : "lower"} is better)`;
}

// --------------------------------------------------------------------------- 1. progress

// From just past the best to a bit past the baseline: crashes and outliers must not squash it.
function progressRange(p) {
  const values = p.points.map((q) => q.metric).filter(finite);
  const sign = p.direction === "maximize" ? -1 : 1;
  const base = finite(p.baseline_metric) ? p.baseline_metric : values[Math.floor(values.length / 2)];
  const best = finite(p.best_metric) ? p.best_metric : (sign > 0 ? Math.min(...values) : Math.max(...values));
  let span = Math.abs(base - best), worse = 0.55;
  if (!(span > 0)) {  // nothing kept yet: room for most of the results around the baseline
    const near = values.map((v) => Math.abs(v - base)).filter((d) => d > 0).sort((a, b) => a - b);
    span = near.length ? near[Math.floor(near.length * 0.8)] : Math.abs(base) * 0.02 || 1;
    worse = 1.15;
  }
  const low = Math.min(best, base), high = Math.max(best, base);
  // worse results get more room than better ones: they are most of the dots; the labels go on the good side
  return sign > 0 ? [low - 0.35 * span, high + worse * span] : [low - worse * span, high + 0.35 * span];
}

function renderProgress() {
  const p = state.progress;
  const valued = p.points.filter((q) => finite(q.metric));
  $("progress-note").textContent = p.points.length
    ? `${p.metric}, ${plural(p.points.length, "decided experiment")} in decision order` : "";
  $("progress-findings").replaceChildren(findings(p.findings && p.findings.length ? p.findings
    : ["no phases yet: no experiment has been kept"]));
  renderKeeps(p);
  const chart = chartIn("progress", 380, valued.length ? null : "no finished experiment with a metric yet");
  if (!chart) return;
  const [lo, hi] = progressRange(p);
  const minimize = p.direction !== "maximize";
  const x0 = -0.6, x1 = Math.max(p.points.length - 0.4, 1.4);
  const grid = { left: 64, right: 16, top: 14, bottom: 62 };
  const plotWidth = Math.max(chart.getWidth() - grid.left - grid.right, 100);
  const badEdge = minimize ? hi - (hi - lo) * 0.03 : lo + (hi - lo) * 0.03;
  const kinds = { baseline: [], kept: [], discarded: [], pending: [], failed: [], off: [] };
  for (const q of p.points) {
    const item = { experiment: q.experiment, q };
    if (!finite(q.metric) || q.decision === "failed") kinds.failed.push({ ...item, value: [q.x, badEdge] });
    else if (q.metric < lo || q.metric > hi) kinds.off.push({ ...item, value: [q.x, q.metric > hi ? hi : lo],
      symbolRotate: q.metric > hi ? 0 : 180 });
    else (kinds[q.decision] || kinds.discarded).push({ ...item, value: [q.x, q.metric] });
  }
  const labelled = new Set(keepsToLabel(p));
  for (const item of kinds.kept) {
    if (labelled.has(item.experiment)) item.label = { show: true, formatter: short(item.q.description, LABEL_CHARS) };
  }
  const tip = (params) => {
    const q = params.data && params.data.q;
    if (!q) return esc(params.name || "");
    return `<b>e${q.experiment}</b> · ${esc(q.decision)} · ${fmtMetric(q.metric)} · ${esc(q.group)}<br>${esc(short(q.description, 90))}`;
  };
  const dots = (name, data, colour, extra = {}) => ({ type: "scatter", name, data, itemStyle: { color: colour }, z: 3,
    symbolSize: 7, tooltip: { formatter: tip }, ...extra });
  const bands = p.phases.map((ph, i) => {
    const diminishing = ph.name === DIMINISHING.name;
    const chars = Math.floor(((ph.x1 - ph.x0) / (x1 - x0)) * plotWidth / 6.4);
    const name = chars >= Math.min(ph.name.length, 6) ? short(ph.name, chars) : "";
    return [{ xAxis: ph.x0, name, ph, itemStyle: { color: diminishing ? DIMINISHING.colour : BANDS[i % 2] } },
      { xAxis: ph.x1 }];
  });
  draw(chart, {
    grid,
    tooltip: { trigger: "item", confine: true },
    legend: { ...LEGEND, data: ["baseline", "kept", "discarded", "awaiting decision", "failed", "beyond the y range", "running best"]
      .filter((n) => n === "running best" ? p.best.length : (kinds[{ "awaiting decision": "pending", "beyond the y range": "off" }[n] || n] || []).length) },
    xAxis: { ...AXIS, type: "value", min: x0, max: x1, minInterval: 1, splitLine: { show: false },
      name: "experiment # (in decision order; 0 is the baseline)", nameLocation: "middle", nameGap: 26,
      axisLabel: { ...AXIS.axisLabel, formatter: (v) => (Number.isInteger(v) ? String(v) : "") } },
    yAxis: { ...AXIS, type: "value", min: lo, max: hi, scale: true, name: metricLabel(p.metric, p.direction),
      nameLocation: "middle", nameGap: 50,
      axisLabel: { ...AXIS.axisLabel, formatter: (v) => fmtMetric(v), showMinLabel: false, showMaxLabel: false } },
    series: [
      { type: "line", name: "phases", data: [], silent: false, markArea: { silent: false, data: bands,
        label: { position: minimize ? "insideBottomLeft" : "insideTopLeft", color: "#666", fontStyle: "italic", fontSize: 11 },
        tooltip: { formatter: (params) => { const ph = params.data.ph; return ph ? `${esc(ph.name)}: e${ph.first}–e${ph.last}, `
          + `${plural(ph.keeps, "keep")}, gain ${fmtMetric(ph.gain)}` : ""; } } } },
      { type: "line", name: "running best", step: "end", symbol: "none", z: 2, silent: true,
        data: p.best.map((b) => [b.x, Math.min(Math.max(b.metric, lo), hi)]), lineStyle: { color: COLOURS.best, width: 2 },
        itemStyle: { color: COLOURS.best } },
      dots("discarded", kinds.discarded, COLOURS.discarded, { symbolSize: 6, itemStyle: { color: COLOURS.discarded, opacity: 0.85 } }),
      dots("awaiting decision", kinds.pending, COLOURS.pending, { symbolSize: 6 }),
      dots("kept", kinds.kept, COLOURS.kept, { symbolSize: 11, z: 4, itemStyle: { color: COLOURS.kept, borderColor: "#0f4a1a", borderWidth: 1 },
        // below-left of the point when lower is better (nothing earlier is better there), above-left otherwise
        label: { show: false, position: "left", offset: [0, minimize ? 11 : -11], color: "#0f4a1a", fontSize: 11, distance: 2 },
        // a label that would leave the plot on the left goes right of its point; overlapping ones are hidden
        labelLayout: (params) => (params.labelRect.x < grid.left + 2
          ? { x: params.rect.x + params.rect.width + 3, align: "left", hideOverlap: true } : { hideOverlap: true }) }),
      dots("baseline", kinds.baseline, COLOURS.baseline, { symbol: "diamond", symbolSize: 13, z: 4,
        itemStyle: { color: COLOURS.baseline, borderColor: "#000", borderWidth: 0.6 } }),
      dots("failed", kinds.failed, COLOURS.crashed, { symbol: "path://M0,0L2,0L5,3L8,0L10,0L6,4L10,8L8,8L5,5L2,8L0,8L4,4Z",
        symbolSize: 9 }),
      dots("beyond the y range", kinds.off, COLOURS.offRange, { symbol: "triangle", symbolSize: 8 }),
    ],
  });
}

// Every keep, or the biggest steps when there are many (the table below lists them all).
function keepsToLabel(p) {
  const keeps = p.keeps || [];
  const chosen = keeps.length <= 14 ? keeps : [...keeps].sort((a, b) => b.step - a.step).slice(0, 14);
  return chosen.map((k) => k.id);
}

function renderKeeps(p) {
  const keeps = p.keeps || [];
  $("keeps").replaceChildren(keeps.length
    ? table(["id", "description", "changed", "metric", "gain over previous best", "gain over the baseline"],
      keeps.map((k) => [el("button", { class: "link", type: "button", text: `e${k.id}`, onclick: () => openDetail(k.id) }),
        k.description, k.group, fmtMetric(k.metric), fmtSigned(k.step), fmtSigned(k.total)]), [3, 4, 5])
    : el("p", { class: "note", text: "no experiment has been kept yet" }));
}

// --------------------------------------------------------------------------- 2. timeline (one row per worker)

function renderTimeline() {
  const t = state.timeline;
  $("timeline-note").textContent = `fleet utilization ${fmtPct(t.utilization)} (busy time / (workers × span)) · busy `
    + fmtDuration(t.busy_seconds);
  drawTimeline();
}

function drawTimeline() {
  const t = state.timeline;
  const rows = t.workers;
  const placed = rows.some((w) => w.runs.length);
  const rowH = Math.max(12, Math.min(30, 320 / Math.max(rows.length, 1)));
  const chart = chartIn("timeline", Math.max(220, Math.round(70 + rowH * rows.length)), placed ? null : "no run has started yet");
  if (!chart) return;
  const now = nowServer();
  const end = t.running ? Math.max(now, t.end) : t.end;
  const span = Math.max(end - t.start, 1);
  const units = timeUnits(span);
  const at = (s) => (s - t.start) / units.seconds;
  const series = {};
  const outcomeSeries = (key, special) => {
    const id = special ? "special" : key;
    if (!series[id]) {
      series[id] = { id, type: "custom", name: special ? SPECIAL_RUNS : OUTCOME_LABELS[key] || key, data: [],
        renderItem: (params, api) => renderBar(params, api, series[id].data[params.dataIndex]), encode: { x: [1, 2], y: 0 }, itemStyle: { color: special ? hatch("#ffffff") : COLOURS[key] || "#999" },
        tooltip: { formatter: runTip } };
    }
    return series[id];
  };
  rows.forEach((w, i) => {
    for (const r of w.runs) {
      const stop = r.end === null ? Math.max(now, r.start) : r.end;
      const special = r.role !== "screen";
      const item = { value: [i, at(r.start), at(stop)], experiment: r.experiment, run: r, took: stop - r.start,
        colour: COLOURS[r.outcome] || "#999", special };
      outcomeSeries(r.outcome, false).data.push(item);
      if (special) outcomeSeries(r.outcome, true);  // only for the legend entry
    }
  });
  const order = [...Object.keys(OUTCOME_LABELS), "special"];
  draw(chart, {
    grid: { left: 8, right: 18, top: 8, bottom: 58, containLabel: true },
    tooltip: { trigger: "item", confine: true },
    legend: { ...LEGEND },
    xAxis: { ...AXIS, type: "value", min: 0, max: at(end), name: `${units.long} since the session started`,
      nameLocation: "middle", nameGap: 24,
      axisLabel: { ...AXIS.axisLabel, showMaxLabel: false, formatter: (v) => `${+v.toFixed(2)} ${units.name}` } },
    yAxis: { ...AXIS, type: "category", inverse: true, data: rows.map((w) => short(`${w.worker} (${w.hardware})`, 22)),
      axisTick: { show: false }, splitLine: { show: false },
      axisLabel: { ...AXIS.axisLabel, fontSize: rows.length > 30 ? 9 : 11 } },
    series: order.filter((k) => series[k]).map((k) => series[k]),
  });
}

function renderBar(params, api, item) {
  const row = api.value(0);
  const a = api.coord([api.value(1), row]), b = api.coord([api.value(2), row]);
  const height = api.size([0, 1])[1] * 0.72;
  const shape = echarts.graphic.clipRectByRect({ x: a[0], y: a[1] - height / 2, width: Math.max(b[0] - a[0], 1.5), height },
    { x: params.coordSys.x, y: params.coordSys.y, width: params.coordSys.width, height: params.coordSys.height });
  if (!shape || !item) return null;
  return { type: "rect", shape, style: { fill: item.special ? hatch(item.colour) : item.colour,
    stroke: item.special ? "#333" : null, lineWidth: item.special ? 0.6 : 0 } };
}

function runTip(params) {
  const d = params.data;
  if (!d || !d.run) return "";
  const r = d.run;
  return `<b>r${r.run} · e${r.experiment}</b> · ${esc(r.role)} · ${esc(OUTCOME_LABELS[r.outcome] || r.outcome)} · `
    + `${fmtDuration(d.took)}${r.end === null ? " so far" : ""}${finite(r.metric) ? " · " + fmtMetric(r.metric) : ""}`
    + `<br>${esc(short(r.description, 90))}`;
}

// The pixel width of a run's bar (tests watch a running one grow).
window.labfleet.barWidth = (runId) => {
  const chart = charts.timeline;
  if (!chart) return null;
  for (const s of chart.getOption().series) {
    const item = s.data.find((d) => d.run && d.run.run === runId);
    if (item) return chart.convertToPixel({ gridIndex: 0 }, [item.value[2], 0])[0] - chart.convertToPixel({ gridIndex: 0 }, [item.value[1], 0])[0];
  }
  return null;
};
function renderRunning() {
  const s = state.status;
  const box = $("running-now");
  const running = (s && s.running) || [];
  if (!running.length) {
    box.replaceChildren(el("p", { class: "note", text: s && s.state === "running"
      ? "no run in progress right now" : "nothing running: the session is not running" }));
    return;
  }
  const fetched = s.now;
  box.replaceChildren(el("table", { class: "running" }, el("tbody", {}, running.map((r) => {
    const elapsed = el("td", { class: "num elapsed", "data-seconds": r.seconds, "data-at": fetched });
    elapsed.textContent = fmtDuration(r.seconds);
    return el("tr", { class: "clickable", onclick: () => openDetail(r.experiment) },
      el("td", { class: "mono", text: r.worker || "–" }), el("td", { class: "num", text: `e${r.experiment}` }),
      el("td", { class: "desc", text: r.description, title: r.description }), elapsed);
  }))));
}

function tickRunning() {
  for (const td of document.querySelectorAll("#running-now td.elapsed")) {
    const seconds = Number(td.dataset.seconds) + (nowServer() - Number(td.dataset.at));
    td.textContent = fmtDuration(Math.max(seconds, 0));
  }
}

// --------------------------------------------------------------------------- experiments table

const FILTERS = ["f-status", "f-decision", "f-role", "f-wave"];

function fillSelect(select, rows) {
  const key = select.dataset.key;
  const current = select.value;
  const values = [...new Set(rows.map((r) => String(r[key] ?? "")).filter((v) => v !== ""))].sort(
    (a, b) => (key === "wave" ? Number(a) - Number(b) || a.localeCompare(b) : a.localeCompare(b)));
  select.replaceChildren(el("option", { value: "", text: `${select.title}: all` }),
    ...values.map((v) => el("option", { value: v, text: key === "wave" ? `wave ${v}` : v })));
  select.value = values.includes(current) ? current : "";
}

function sortValue(row, key) {
  const v = row[key];
  if (key === "id" || key === "metric") return finite(v) ? v : null;
  return v === null || v === undefined ? "" : String(v).toLowerCase();
}

function renderTable() {
  const rows = state.experiments;
  for (const id of FILTERS) fillSelect($(id), rows);
  const text = $("f-text").value.trim().toLowerCase();
  const wanted = FILTERS.map((id) => [$(id).dataset.key, $(id).value]).filter(([, v]) => v !== "");
  const shown = rows.filter((r) => wanted.every(([k, v]) => String(r[k] ?? "") === v)
    && (!text || `e${r.id} ${r.description} ${r.worker || ""} ${r.hardware || ""} ${r.reason || ""}`.toLowerCase().includes(text)));
  const { key, asc } = state.sort;
  shown.sort((a, b) => {
    const x = sortValue(a, key), y = sortValue(b, key);
    if (x === y) return b.id - a.id;
    if (x === null) return 1;
    if (y === null) return -1;
    return (x < y ? -1 : 1) * (asc ? 1 : -1);
  });
  for (const th of document.querySelectorAll("#experiments th[data-sort]")) {
    th.classList.toggle("sorted", th.dataset.sort === key);
    th.classList.toggle("asc", th.dataset.sort === key && asc);
  }
  const body = document.querySelector("#experiments tbody");
  const metricName = state.status ? state.status.metric : "metric";
  body.replaceChildren(...shown.slice(0, MAX_ROWS).map((r) => {
    const metric = el("td", { class: "num" }, fmtMetric(r.metric));
    if (finite(r.uncertainty)) metric.append(el("span", { class: "unc", text: ` ±${fmtMetric(r.uncertainty)}` }));
    const tr = el("tr", { class: r.id === state.detail ? "selected" : "", onclick: () => openDetail(r.id) },
      el("td", { class: "num", text: `e${r.id}` }),
      el("td", { class: `status-${r.status}`, text: r.status }),
      el("td", {}, el("span", { class: `pill ${r.decision}`, text: r.decision })),
      el("td", { text: r.role }),
      el("td", { text: r.wave }),
      metric,
      el("td", { text: r.worker ? `${r.worker}` : "–", title: r.hardware || "" }),
      el("td", { class: "desc", text: r.description, title: r.reason ? `${r.description}\n${r.reason}` : r.description }));
    return tr;
  }));
  const more = shown.length > MAX_ROWS ? ` (first ${MAX_ROWS} shown)` : "";
  $("table-note").textContent = `${shown.length} of ${rows.length}${more} · ${metricName} ± 1 s.e.`;
}

function setupTable() {
  for (const th of document.querySelectorAll("#experiments th[data-sort]")) {
    th.addEventListener("click", () => {
      const key = th.dataset.sort;
      state.sort = state.sort.key === key ? { key, asc: !state.sort.asc }
        : { key, asc: !(key === "id" || key === "metric" && state.status && state.status.direction === "maximize") };
      renderTable();
    });
  }
  for (const id of FILTERS) $(id).addEventListener("change", renderTable);
  $("f-text").addEventListener("input", renderTable);
}

// --------------------------------------------------------------------------- detail panel

function diffBlock(diff) {
  const pre = el("pre", { class: "diff" });
  for (const line of diff.replace(/\n$/, "").split("\n")) {
    let cls = "ctx";
    if (line.startsWith("+++") || line.startsWith("---") || line.startsWith("diff ") || line.startsWith("index ")) cls = "meta";
    else if (line.startsWith("+")) cls = "add";
    else if (line.startsWith("-")) cls = "del";
    else if (line.startsWith("@@")) cls = "hunk";
    pre.append(el("span", { class: cls, text: line || " " }));
  }
  return pre;
}

function kv(pairs) {
  const dl = el("dl", { class: "kv" });
  for (const [k, v] of pairs) dl.append(el("dt", { text: k }), el("dd", {}, v));
  return dl;
}

async function openDetail(id, quiet = false) {
  const drawer = $("detail");
  const body = $("detail-body");
  state.detail = id;
  for (const tr of document.querySelectorAll("#experiments tbody tr")) {
    tr.classList.toggle("selected", tr.firstChild && tr.firstChild.textContent === `e${id}`);
  }
  drawer.hidden = false;
  if (!quiet) { $("detail-title").textContent = `e${id}`; body.replaceChildren(el("p", { class: "note", text: "loading…" })); }
  if (STATIC) { staticDetail(id); return; }
  let d;
  try {
    d = await api(`api/experiments/${encodeURIComponent(id)}`);
  } catch (error) {
    body.replaceChildren(el("p", { class: "note", text: error.status === 404 ? `no experiment ${id}` : error.message }));
    return;
  }
  if (state.detail !== id) return;
  const scroll = body.scrollTop;
  const title = $("detail-title");
  title.replaceChildren(`e${d.experiment} `, el("span", { class: `pill ${d.parent === null ? "baseline" : d.decision}`,
    text: d.parent === null ? "baseline" : d.decision }));
  const parent = d.parent === null ? "–" : el("button", { class: "link", type: "button", text: `e${d.parent}`,
    onclick: () => openDetail(d.parent) });
  const tags = Object.entries(d.tags || {}).map(([k, v]) => el("span", { class: "chip", text: `${k}=${v}` }));
  const knobs = Object.entries(d.knobs || {}).map(([k, v]) => el("span", { class: "chip", text: `${k}=${v}` }));
  const parts = [
    el("h3", { text: d.description }),
    d.hypothesis ? el("p", { text: d.hypothesis }) : el("p", { class: "note", text: "no hypothesis given" }),
    kv([
      ["metric", fmtMetric(d.metric)], ["parent", parent],
      ["commit", el("span", { class: "mono", text: d.commit || "–" })],
      ["session", String(d.session)],
      ["tags", tags.length ? el("div", { class: "chips" }, tags) : "–"],
      ["knobs", knobs.length ? el("div", { class: "chips" }, knobs) : "–"],
    ]),
    el("h4", { text: `runs (${d.runs.length})` }),
  ];
  const runs = el("table", {}, el("thead", {}, el("tr", {}, ["run", "role", "status", "worker", "seed", "metric", "time"]
    .map((h) => el("th", { text: h })))));
  const rbody = el("tbody");
  for (const r of d.runs) {
    const took = r.started_at ? fmtDuration((r.ended_at ?? nowServer()) - r.started_at) : "–";
    rbody.append(el("tr", {},
      el("td", { text: `r${r.run}` }), el("td", { text: r.role }), el("td", { class: `status-${r.status}`, text: r.status }),
      el("td", { text: r.worker ? `${r.worker} (${r.hardware})` : "–" }), el("td", { text: r.seed ?? "–" }),
      el("td", { class: "num", text: fmtMetric(r.metric) }), el("td", { class: "num", text: took })));
    const figures = Object.entries(r.figures || {});
    if (figures.length || r.reason) {
      const chips = figures.map(([k, v]) => el("span", { class: "chip", text: `${k}: ${typeof v === "number" ? +v.toPrecision(6) : v}` }));
      if (r.reason) chips.push(el("span", { class: "chip", text: `reason: ${r.reason}` }));
      rbody.append(el("tr", {}, el("td", {}), el("td", { colspan: 6 }, el("div", { class: "chips" }, chips))));
    }
  }
  runs.append(rbody);
  parts.push(runs);
  parts.push(el("h4", { text: "diff" }), d.diff ? diffBlock(d.diff) : el("p", { class: "note", text: "no change (the baseline)" }));
  parts.push(el("h4", { text: "log tail" }), d.log_tail ? el("pre", { text: d.log_tail }) : el("p", { class: "note", text: "no log yet" }));
  body.replaceChildren(...parts);
  if (quiet) body.scrollTop = scroll;
}

// The static report has the table's row, not the diff and the log: it says where they are.
function staticDetail(id) {
  const r = state.experiments.find((row) => row.id === id);
  const body = $("detail-body");
  if (!r) { body.replaceChildren(el("p", { class: "note", text: `no experiment ${id}` })); return; }
  const decision = r.parent === null ? "baseline" : r.decision;
  $("detail-title").replaceChildren(`e${r.id} `, el("span", { class: `pill ${decision}`, text: decision }));
  body.replaceChildren(el("h3", { text: r.description }), kv([
    ["metric", fmtMetric(r.metric) + (finite(r.uncertainty) ? ` ± ${fmtMetric(r.uncertainty)}` : "")],
    ["parent", r.parent === null ? "–" : `e${r.parent}`], ["status", r.status], ["role", r.role],
    ["runs done", String(r.runs_done)], ["worker", r.worker ? `${r.worker} (${r.hardware})` : "–"],
    ["commit", el("span", { class: "mono", text: r.commit || "–" })], ["reason", r.reason || "–"],
  ]), el("p", { class: "note", text: `the diff and the log: labfleet show ${r.id}, or labfleet dashboard` }));
}

function closeDetail() {
  state.detail = null;
  $("detail").hidden = true;
  for (const tr of document.querySelectorAll("#experiments tbody tr.selected")) tr.classList.remove("selected");
}

// --------------------------------------------------------------------------- analysis: tables, sentences

function table(headers, rows, numeric = []) {
  return el("table", {}, el("thead", {}, el("tr", {}, headers.map((h, i) => el("th", { class: numeric.includes(i) ? "num" : null, text: h })))),
    el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c, i) => el("td", { class: numeric.includes(i) ? "num" : null }, c))))));
}

function findings(lines) {
  return lines && lines.length ? el("ul", { class: "findings" }, lines.map((l) => el("li", { text: l }))) : null;
}

function renderAnalysis() {
  const a = state.analysis;
  renderHardware(a);
  renderEffects(a);
  renderCost(a);
  const noise = $("noise");
  noise.replaceChildren(
    a.noise.length ? table(["class", "sd of one run", "degrees of freedom", "repeated experiments"],
      a.noise.map((n) => [n.hardware, fmtMetric(n.sd), String(n.df), String(n.groups)]), [1, 2, 3]) : null,
    findings(a.noise_findings));
  const ph = a.phases.phases || [];
  $("phases").replaceChildren(
    ph.length ? table(["phase", "experiments", "keeps", "gain"],
      ph.map((p) => [p.name, `e${p.first}–e${p.last} (${p.experiments})`, String(p.keeps), fmtMetric(p.gain)]), [2, 3])
      : el("p", { class: "note", text: "no phases yet: no experiment has been kept" }),
    findings(a.phases.findings));
}

// --------------------------------------------------------------------------- 3. hardware

function renderHardware(a) {
  const classes = Object.values(a.hardware.classes || {});
  const ref = a.hardware.reference;
  $("hardware").replaceChildren(
    classes.length ? table(["class", "runs", "steps / run", "steps / s", "tokens / s", "$ / h", "speed vs " + ref, `${a.metric} offset`],
      classes.map((c) => [c.hardware + (c.hardware === ref ? " (ref)" : ""), String(c.runs), fmtNumber(c.steps_per_run),
        fmtNumber(c.steps_per_second), fmtNumber(c.tokens_per_second), c.price_per_hour ? fmtUsd(c.price_per_hour) : "–",
        c.hardware === ref ? "1.00×" : finite(c.speed_ratio) ? `${c.speed_ratio.toFixed(2)}×` : "–",
        c.hardware === ref ? "0" : finite(c.metric_offset)
          ? fmtSigned(c.metric_offset) + (finite(c.offset_se) ? ` ± ${fmtMetric(c.offset_se)}` : "") : "–"]),
      [1, 2, 3, 4, 5, 6, 7]) : null,
    findings((a.hardware.findings.length ? a.hardware.findings : ["one hardware class: nothing to compare"])));
  const same = a.hardware.same_code || [];
  const chart = chartIn("hardware-chart", 300, classes.length || same.length ? null : "no finished run yet");
  if (!chart) return;
  let speed = null;
  for (const [key, label] of [["steps_per_second", "training steps per second"], ["tokens_per_second", "tokens per second"]]) {
    if (classes.some((c) => finite(c[key]))) { speed = { key, label }; break; }
  }
  const names = classes.map((c) => c.hardware).sort();
  const byName = Object.fromEntries(classes.map((c) => [c.hardware, c]));
  const sameClasses = [...new Set(same.map((s) => s.hardware))].sort();
  const subjects = [...new Set(same.map((s) => s.subject))];
  const subjectColour = (s) => (s === "baseline" ? COLOURS.baseline : COLOURS.kept);
  const series = [];
  if (speed) {
    series.push({ type: "bar", name: speed.label, xAxisIndex: 0, yAxisIndex: 0, barMaxWidth: 70,
      itemStyle: { color: COLOURS.spend }, data: names.map((n) => byName[n][speed.key]),
      label: { show: true, position: "top", fontSize: 11, lineHeight: 15, color: "#444", formatter: (p) => {
        const c = byName[names[p.dataIndex]];
        return `${fmtNumber(p.value)}\n${plural(c.runs, "run")}${c.price_per_hour ? `, ${fmtUsd(c.price_per_hour)}/h` : ""}`;
      } } });
  }
  subjects.forEach((subject, k) => {
    const offset = (k - (subjects.length - 1) / 2) * 0.22;
    const rows = same.filter((s) => s.subject === subject);
    const xy = rows.map((s) => [sameClasses.indexOf(s.hardware) + offset, s.mean]);
    series.push({ type: "scatter", name: subject, xAxisIndex: 1, yAxisIndex: 1, symbolSize: 10, z: 6,
      itemStyle: { color: subjectColour(subject) },
      data: rows.map((s, i) => ({ value: xy[i], experiment: s.experiment, s })),
      tooltip: { formatter: (p) => `${esc(p.data.s.subject)} on ${esc(p.data.s.hardware)}: ${fmtMetric(p.data.s.mean)} ± `
        + `${fmtMetric(p.data.s.sd)} (${plural(p.data.s.runs, "run")})` } });
    series.push({ ...errorBars(`${subject} ± 1 sd`, rows.map((s, i) => [xy[i][0], s.mean - s.sd, s.mean + s.sd]), false,
      subjectColour(subject)), xAxisIndex: 1, yAxisIndex: 1 });
  });
  const values = same.flatMap((s) => [s.mean - s.sd, s.mean + s.sd]);
  const pad = (Math.max(...values) - Math.min(...values)) * 0.25 || Math.abs(values[0] || 1) * 0.01;
  draw(chart, {
    title: [{ text: speed ? speed.label : "no speed figures (num_steps, tokens_per_second) in the runs' results",
      left: "2%", top: 0, textStyle: { fontSize: 12, fontWeight: "normal", color: "#444" } },
    { text: `${a.metric} of the same code per class (± 1 sd)`, left: "53%", top: 0,
      textStyle: { fontSize: 12, fontWeight: "normal", color: "#444" } }],
    tooltip: { trigger: "item", confine: true },
    legend: { ...LEGEND, data: subjects },
    grid: [{ left: "2%", width: "42%", top: 44, bottom: 36, containLabel: true },
      { left: "53%", right: "2%", top: 44, bottom: 36, containLabel: true }],
    xAxis: [{ ...AXIS, type: "category", gridIndex: 0, data: names },
      { ...AXIS, type: "value", gridIndex: 1, min: -0.5, max: Math.max(sameClasses.length - 0.5, 0.5),
        splitLine: { show: false }, axisTick: { customValues: sameClasses.map((_, i) => i) },
        axisLabel: { ...AXIS.axisLabel, customValues: sameClasses.map((_, i) => i), formatter: (v) => sameClasses[v] ?? "" } }],
    yAxis: [{ ...AXIS, type: "value", gridIndex: 0, axisLabel: { ...AXIS.axisLabel, formatter: fmtTick } },
      { ...AXIS, type: "value", gridIndex: 1, scale: true, min: values.length ? Math.min(...values) - pad : null,
        max: values.length ? Math.max(...values) + pad : null, axisLine: { ...AXIS.axisLine, onZero: false },
        axisLabel: { ...AXIS.axisLabel, formatter: (v) => fmtMetric(v), showMinLabel: false, showMaxLabel: false } }],
    series,
  });
}

// --------------------------------------------------------------------------- 4. effects (main effects, interactions, 95% CI)

function effectColour(b, minimize) {
  if (!b.significant) return COLOURS.neutral;
  if (b.interaction) return COLOURS.lost;
  return (b.estimate < 0) === minimize ? COLOURS.kept : COLOURS.crashed;
}

function renderEffects(a) {
  const bars = a.effects.bars;
  const minimize = a.direction !== "maximize";
  $("effects").replaceChildren(bars.length ? findings(a.effects.findings)
    : el("p", { class: "note", text: a.effects.note || "no effects yet" }));
  $("effects-caption").hidden = !bars.length;
  $("panel-effects").dataset.empty = bars.length ? "" : "1";
  const chart = chartIn("effects-chart", bars.length ? 90 + 22 * bars.length : 0, bars.length ? null : " ");
  if (!chart) { $("effects-chart").style.height = "0"; return; }
  const labels = bars.map((b) => short(`wave ${b.wave} · ${b.name}`, 44));
  const waves = [];
  bars.forEach((b, i) => { if (!i || bars[i - 1].wave !== b.wave) waves.push([i, i]); else waves[waves.length - 1][1] = i; });
  draw(chart, {
    grid: { left: 8, right: 24, top: 8, bottom: 64, containLabel: true },
    tooltip: { trigger: "item", confine: true },
    legend: { ...LEGEND, data: [`improves ${a.metric}`, `worsens ${a.metric}`, "within noise (CI includes 0) or unknown",
      "interaction beyond noise"] },
    xAxis: { ...AXIS, type: "value", scale: false, axisLabel: { ...AXIS.axisLabel, formatter: (v) => fmtSigned(v) },
      name: `effect on ${a.metric}: mean at the high level minus mean at the low level (95% CI)`, nameLocation: "middle", nameGap: 26 },
    yAxis: { ...AXIS, type: "category", inverse: true, data: labels, axisTick: { show: false }, splitLine: { show: false } },
    series: [
      { type: "bar", name: "effects", barWidth: "62%", z: 2,
        data: bars.map((b) => ({ value: b.estimate, b, itemStyle: { color: b.interaction && b.significant
          ? hatch(COLOURS.lost) : effectColour(b, minimize) } })),
        tooltip: { formatter: (p) => `${esc(labels[p.dataIndex])}: ${fmtSigned(p.data.b.estimate)}`
          + (finite(p.data.b.low) ? ` (95% CI ${fmtSigned(p.data.b.low)} to ${fmtSigned(p.data.b.high)})` : "") },
        markLine: { silent: true, symbol: "none", label: { show: false }, lineStyle: { color: "#333", type: "solid", width: 1 },
          data: [{ xAxis: 0 }] },
        markArea: { silent: true, data: waves.filter((_, i) => i % 2 === 1).map(([s, e]) => [
          { yAxis: labels[s], itemStyle: { color: "#f5f6f8" } }, { yAxis: labels[e] }]) } },
      errorBars("95% CI", bars.map((b, i) => (finite(b.low) && finite(b.high) ? [i, b.low, b.high] : null)).filter(Boolean), true),
      // legend entries only
      { type: "bar", name: `improves ${a.metric}`, data: [], itemStyle: { color: COLOURS.kept } },
      { type: "bar", name: `worsens ${a.metric}`, data: [], itemStyle: { color: COLOURS.crashed } },
      { type: "bar", name: "within noise (CI includes 0) or unknown", data: [], itemStyle: { color: COLOURS.neutral } },
      { type: "bar", name: "interaction beyond noise", data: [], itemStyle: { color: hatch(COLOURS.lost) } },
    ],
  });
}

// --------------------------------------------------------------------------- 5. cost

function renderCost(a) {
  const cost = a.cost;
  $("cost").replaceChildren(
    cost.workers.length ? table(["worker", "class", "$ / h", "busy", "cost"],
      cost.workers.map((w) => [w.worker, w.hardware, fmtUsd(w.price_per_hour), fmtDuration(w.busy_seconds), fmtUsd(w.usd)]),
      [2, 3, 4]) : null,
    findings(cost.findings));
  const chart = chartIn("cost-chart", 300, cost.spend.length ? null : "no run has finished yet");
  if (!chart) return;
  const span = Math.max(cost.end - cost.start, 1);
  const units = timeUnits(span);
  const total = cost.spend[cost.spend.length - 1].total;
  // without prices the spend is worker time, in the units that read best
  const work = timeUnits(total);
  const amount = (v) => (cost.priced ? v : v / work.seconds);
  const unit = cost.priced ? "GPU dollars" : `worker-${work.long}`;
  const fmtAmount = (v) => (cost.priced ? fmtUsd(v) : `${fmtNumber(v)} ${work.name}`);
  const best = cost.best.map((b) => [amount(b.spend), b.metric]);
  if (best.length) best.push([amount(total), best[best.length - 1][1]]);
  const bestValues = best.map((b) => b[1]);
  const bestPad = (Math.max(...bestValues) - Math.min(...bestValues)) * 0.15 || Math.abs(bestValues[0] || 1) * 0.01;
  const lowBest = bestValues.length ? Math.min(...bestValues) - bestPad : null;
  const highBest = bestValues.length ? Math.max(...bestValues) + bestPad : null;
  const title = (text, left) => ({ text, left, top: 0, textStyle: { fontSize: 12, fontWeight: "normal", color: "#444" } });
  draw(chart, {
    title: [title(`${cost.priced ? fmtUsd(total) : `${fmtNumber(amount(total))} ${unit}`} on finished runs`
      + (cost.priced ? "" : " (no prices set: $0)"), "2%"), title("running best against spend", "53%")],
    tooltip: { trigger: "axis", confine: true },
    grid: [{ left: "2%", width: "42%", top: 36, bottom: 40, containLabel: true },
      { left: "53%", right: "2%", top: 36, bottom: 40, containLabel: true }],
    xAxis: [{ ...AXIS, type: "value", gridIndex: 0, min: 0, max: span / units.seconds, name: `${units.long} since the session started`,
      nameLocation: "middle", nameGap: 24, axisLabel: { ...AXIS.axisLabel, formatter: (v) => `${+v.toFixed(2)}` } },
    { ...AXIS, type: "value", gridIndex: 1, min: 0, name: `cumulative ${unit}`, nameLocation: "middle", nameGap: 24 }],
    yAxis: [{ ...AXIS, type: "value", gridIndex: 0, min: 0, name: `cumulative ${unit}`, nameLocation: "middle", nameGap: 56,
      axisLabel: { ...AXIS.axisLabel, formatter: (v) => (cost.priced ? "$" + fmtTick(v) : fmtTick(v)) } },
    { ...AXIS, type: "value", gridIndex: 1, scale: true, name: `best ${a.metric} so far`, nameLocation: "middle", nameGap: 58,
      min: lowBest, max: highBest,
      axisLabel: { ...AXIS.axisLabel, formatter: (v) => fmtMetric(v) } }],
    series: [
      { type: "line", name: "spend", xAxisIndex: 0, yAxisIndex: 0, step: "end", symbol: "none",
        data: [[0, 0], ...cost.spend.map((s) => [(s.at - cost.start) / units.seconds, amount(s.total)])],
        lineStyle: { color: COLOURS.spend, width: 2 }, areaStyle: { color: COLOURS.spend, opacity: 0.15 },
        tooltip: { valueFormatter: (v) => fmtAmount(cost.priced ? v : v * work.seconds) } },
      { type: "line", name: `best ${a.metric}`, xAxisIndex: 1, yAxisIndex: 1, step: "end", data: best,
        lineStyle: { color: COLOURS.best, width: 2 }, itemStyle: { color: COLOURS.kept }, symbolSize: 7,
        showSymbol: true, tooltip: { valueFormatter: (v) => fmtMetric(v) } },
    ],
  });
}

// --------------------------------------------------------------------------- start

setupTable();
$("detail-close").addEventListener("click", closeDetail);
document.addEventListener("keydown", (event) => { if (event.key === "Escape") closeDetail(); });
let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => {
    for (const chart of Object.values(charts)) chart.resize();
    if (state.progress) { renderProgress(); drawTimeline(); renderAnalysis(); }
  }, 200);
});
if (STATIC) {
  showStatic();
} else {
  setInterval(tick, 1000);
  refresh();
  connect();
}
