// labfleet dashboard: fetches the read-only JSON API, draws inline SVG, and refetches when the
// server's event stream says the ledger changed. Ledger text only ever goes into textContent.
"use strict";

const TOKEN = new URLSearchParams(location.search).get("token");
const COLOURS = {
  baseline: "#1f5fa8", kept: "#2a9d3c", discarded: "#a9a9a9", pending: "#9ec5e8", running: "#f2b827",
  crashed: "#d62728", timeout: "#f07f1a", lost: "#8e5cc2", cancelled: "#cfcfcf", best: "#145a24",
  failed: "#d62728",
};
const OUTCOME_LABELS = {
  baseline: "baseline", kept: "kept", discarded: "discarded", pending: "awaiting decision", running: "running",
  crashed: "failed / crashed", timeout: "timeout", lost: "lost (retried)", cancelled: "cancelled",
};
const BANDS = ["#eef3fa", "#faf5ea"];
const SVGNS = "http://www.w3.org/2000/svg";
const MAX_ROWS = 500;

const state = {
  status: null, progress: null, timeline: null, experiments: [], analysis: null,
  offset: 0,             // server clock minus this clock, seconds
  sort: { key: "id", asc: false },
  detail: null,          // the open experiment's id
  lastUpdate: 0, refreshing: false, dirty: false, timer: null,
  bars: [],              // timeline bars to stretch every second
};

// --------------------------------------------------------------------------- helpers

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

function svg(tag, attrs, parent) {
  const node = document.createElementNS(SVGNS, tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "text") node.textContent = value;
    else if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  if (parent) parent.append(node);
  return node;
}

function tip(node, text) { svg("title", { text }, node); return node; }

const $ = (id) => document.getElementById(id);
const nowServer = () => Date.now() / 1000 + state.offset;
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

const fmtPct = (v) => (finite(v) ? `${Math.round(v * 100)}%` : "n/a");
const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

function niceTicks(lo, hi, count = 5) {
  const span = hi - lo;
  if (!(span > 0)) return [lo];
  const raw = span / count;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => span / s <= count) || 10 * mag;
  const out = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(+t.toPrecision(12));
  return out;
}

function timeUnits(span) {
  if (span >= 3 * 3600) return { name: "h", seconds: 3600 };
  if (span >= 180) return { name: "min", seconds: 60 };
  return { name: "s", seconds: 1 };
}

function emptyChart(container, height, message) {
  const root = svg("svg", { viewBox: `0 0 600 ${height}`, height });
  svg("text", { x: 300, y: height / 2, "text-anchor": "middle", class: "empty", text: message }, root);
  container.replaceChildren(root);
}

// --------------------------------------------------------------------------- refresh cycle

function scheduleRefresh(delay = 120) {
  if (state.refreshing) { state.dirty = true; return; }
  if (state.timer) return;
  state.timer = setTimeout(() => { state.timer = null; refresh(); }, delay);
}

async function refresh() {
  state.refreshing = true;
  state.dirty = false;
  try {
    const status = await api("api/status");
    state.offset = status.now - Date.now() / 1000;
    state.status = status;
    renderStatus();
    if (status.session === null || status.session === undefined) {
      showBanner(status.message || "waiting for a session", false);
    } else {
      hideBanner();
      const [progress, timeline, experiments, analysis] = await Promise.all([
        api("api/progress"), api("api/timeline"), api("api/experiments"), api("api/analysis"),
      ]);
      state.progress = progress; state.timeline = timeline;
      state.experiments = experiments.experiments; state.analysis = analysis;
      renderProgress(); renderTimeline(); renderTable(); renderAnalysis();
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
  stretchBars();
  tickRunning();
  // a lost stream must not freeze the page: poll slowly while it reconnects
  if ($("live").classList.contains("off") && Date.now() - state.lastUpdate > 10000) scheduleRefresh();
}

// --------------------------------------------------------------------------- headline

function renderStatus() {
  const s = state.status;
  $("target").textContent = s.target || "";
  document.title = `labfleet · ${s.target || ""}`;
  const stateEl = $("state");
  if (s.session === null || s.session === undefined) {
    stateEl.textContent = "no session"; stateEl.className = "pill";
    $("session-line").textContent = "";
    return;
  }
  stateEl.textContent = s.state; stateEl.className = `pill ${s.state}`;
  const budget = s.config && s.config.budget_seconds ? ` · ${s.config.budget_seconds} s budget` : "";
  $("session-line").textContent = `session ${s.session} · ${s.researcher} researcher · ${plural(s.workers, "worker")}`
    + `${budget} · ${fmtDuration(s.elapsed_seconds)}`;
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
  $("card-decided-sub").textContent = `${e.kept} kept · ${e.running} running · ${e.queued} queued`;
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

// --------------------------------------------------------------------------- progress chart

function progressRange(p) {
  const values = p.points.map((q) => q.metric).filter(finite);
  const sign = p.direction === "maximize" ? -1 : 1;
  let base = finite(p.baseline_metric) ? p.baseline_metric : values[Math.floor(values.length / 2)];
  let best = finite(p.best_metric) ? p.best_metric : (sign > 0 ? Math.min(...values) : Math.max(...values));
  let span = Math.abs(base - best);
  if (!(span > 0)) {
    const near = values.map((v) => Math.abs(v - base)).filter((d) => d > 0).sort((a, b) => a - b);
    span = near.length ? near[Math.floor(near.length / 2)] : Math.abs(base) * 0.02 || 1;
  }
  const low = Math.min(best, base), high = Math.max(best, base);
  // worse results get more room than better ones: they are most of the dots
  return sign > 0 ? [low - 0.25 * span, high + 0.6 * span] : [low - 0.6 * span, high + 0.25 * span];
}

function renderProgress() {
  const p = state.progress;
  const box = $("progress");
  const height = 320;
  const valued = p.points.filter((q) => finite(q.metric));
  $("progress-note").textContent = p.points.length
    ? `${p.metric}, ${plural(p.points.length, "decided experiment")} in decision order` : "";
  if (!valued.length) { emptyChart(box, height, "no finished experiment with a metric yet"); return; }
  const width = Math.max(box.clientWidth, 320);
  const m = { l: 58, r: 12, t: 18, b: 30 };
  const [lo, hi] = progressRange(p);
  const x0 = -0.6, x1 = Math.max(p.points.length - 0.4, 1.4);
  const X = (x) => m.l + ((x - x0) / (x1 - x0)) * (width - m.l - m.r);
  const Y = (y) => m.t + (1 - (y - lo) / (hi - lo)) * (height - m.t - m.b);
  const minimize = p.direction !== "maximize";
  const badEdge = minimize ? m.t + 4 : height - m.b - 4;
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, height, role: "img", "aria-label": "progress" });

  // phases
  const bands = svg("g", {}, root);
  p.phases.forEach((ph, i) => {
    const diminishing = ph.name === "diminishing returns";
    const left = X(ph.x0), right = X(ph.x1);
    tip(svg("rect", { x: left, y: m.t, width: Math.max(right - left, 1), height: height - m.t - m.b,
      fill: diminishing ? "#fbeaea" : BANDS[i % 2] }, bands),
      `${ph.name}: e${ph.first}–e${ph.last}, ${plural(ph.keeps, "keep")}, gain ${fmtMetric(ph.gain)}`);
    const chars = Math.floor((right - left - 6) / 6.2);
    if (chars >= Math.min(ph.name.length, 6)) {
      const name = ph.name.length > chars ? ph.name.slice(0, chars - 1) + "…" : ph.name;
      svg("text", { x: left + 4, y: minimize ? height - m.b - 6 : m.t + 12, class: "phase-name", text: name }, bands);
    }
  });

  // axes
  const grid = svg("g", { class: "grid" }, root);
  const axis = svg("g", { class: "axis" }, root);
  for (const t of niceTicks(lo, hi, 6)) {
    svg("line", { x1: m.l, x2: width - m.r, y1: Y(t), y2: Y(t) }, grid);
    svg("text", { x: m.l - 6, y: Y(t) + 4, "text-anchor": "end", text: fmtMetric(t) }, axis);
  }
  for (const t of niceTicks(0, p.points.length - 1, 8).filter((t) => Number.isInteger(t))) {
    svg("text", { x: X(t), y: height - m.b + 14, "text-anchor": "middle", text: String(t) }, axis);
  }
  svg("line", { x1: m.l, x2: width - m.r, y1: height - m.b, y2: height - m.b }, axis);
  svg("text", { x: width - m.r, y: height - 2, "text-anchor": "end", text: "experiment # (0 is the baseline)" }, axis);

  // running best
  if (p.best.length) {
    let d = "";
    p.best.forEach((b, i) => {
      const y = Y(Math.min(Math.max(b.metric, lo), hi));
      d += i === 0 ? `M${X(b.x)},${y}` : `H${X(b.x)}V${y}`;
    });
    svg("path", { d, fill: "none", stroke: COLOURS.best, "stroke-width": 2 }, root);
  }

  // dots: discarded first, keeps on top
  const order = { failed: 0, discarded: 1, pending: 1, kept: 2, baseline: 3 };
  const dots = svg("g", {}, root);
  for (const q of [...p.points].sort((a, b) => (order[a.decision] ?? 1) - (order[b.decision] ?? 1))) {
    const label = `e${q.experiment} · ${q.decision} · ${fmtMetric(q.metric)} · ${q.group}\n${q.description}`;
    const cx = X(q.x);
    let node;
    if (!finite(q.metric) || q.decision === "failed") {
      node = svg("text", { x: cx, y: badEdge + 4, "text-anchor": "middle", fill: COLOURS.crashed,
        "font-weight": "bold", text: "×" }, dots);
    } else if (q.metric < lo || q.metric > hi) {
      const up = q.metric > hi;
      const y = up ? m.t + 2 : height - m.b - 2;
      node = svg("path", { d: up ? `M${cx - 4},${y + 7}L${cx + 4},${y + 7}L${cx},${y}Z`
        : `M${cx - 4},${y - 7}L${cx + 4},${y - 7}L${cx},${y}Z`, fill: "#bbb" }, dots);
    } else {
      const big = q.kept;
      node = svg("circle", { cx, cy: Y(q.metric), r: big ? 5.5 : 3.6,
        fill: COLOURS[q.decision] || COLOURS.discarded, stroke: big ? "#fff" : "none", "stroke-width": 1.5 }, dots);
    }
    node.setAttribute("class", "clickable");
    node.addEventListener("click", () => openDetail(q.experiment));
    tip(node, label);
  }
  box.replaceChildren(root);
}

// --------------------------------------------------------------------------- timeline

function renderTimeline() {
  const t = state.timeline;
  const box = $("timeline");
  const rows = t.workers;
  const placed = rows.some((w) => w.runs.length);
  $("timeline-note").textContent = `utilization ${fmtPct(t.utilization)} · busy ${fmtDuration(t.busy_seconds)}`;
  state.bars = [];
  if (!placed) { emptyChart(box, 120, "no run has started yet"); renderTimelineLegend(new Set(), false); return; }
  const rowH = Math.max(14, Math.min(34, 250 / rows.length));
  const width = Math.max(box.clientWidth, 320);
  const m = { l: 118, r: 12, t: 4, b: 24 };
  const height = m.t + m.b + rowH * rows.length;
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, height, role: "img", "aria-label": "worker timeline" });
  const defs = svg("defs", {}, root);
  const pattern = svg("pattern", { id: "hatch", width: 6, height: 6, patternUnits: "userSpaceOnUse",
    patternTransform: "rotate(45)" }, defs);
  svg("line", { x1: 0, y1: 0, x2: 0, y2: 6, stroke: "rgba(0,0,0,0.35)", "stroke-width": 2 }, pattern);
  const gridG = svg("g", { class: "grid" }, root);
  const axis = svg("g", { class: "axis" }, root);
  const outcomes = new Set();
  let special = false;
  rows.forEach((w, i) => {
    const y = m.t + i * rowH;
    if (i % 2 === 1) svg("rect", { x: m.l, y, width: width - m.l - m.r, height: rowH, fill: "#fafbfc" }, gridG);
    const name = `${w.worker} (${w.hardware})`;
    svg("text", { x: m.l - 6, y: y + rowH / 2 + 4, "text-anchor": "end",
      text: name.length > 18 ? name.slice(0, 17) + "…" : name }, axis);
    for (const r of w.runs) {
      outcomes.add(r.outcome);
      const g = svg("g", { class: "clickable" }, root);
      const rect = svg("rect", { y: y + rowH * 0.15, height: rowH * 0.7, rx: 2, fill: COLOURS[r.outcome] || "#999" }, g);
      let hatch = null;
      if (r.role !== "screen") {
        special = true;
        hatch = svg("rect", { y: y + rowH * 0.15, height: rowH * 0.7, rx: 2, fill: "url(#hatch)" }, g);
      }
      const title = svg("title", {}, g);
      g.addEventListener("click", () => openDetail(r.experiment));
      state.bars.push({ run: r, rect, hatch, title });
    }
  });
  const axisLine = svg("line", { y1: height - m.b, y2: height - m.b, x1: m.l, x2: width - m.r }, axis);
  const ticks = svg("g", {}, axis);
  state.timelineLayout = { start: t.start, end: t.end, running: t.running, width, m, height, ticks, axisLine };
  box.replaceChildren(root);
  stretchBars();
  renderTimelineLegend(outcomes, special);
}

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

function stretchBars() {
  const L = state.timelineLayout;
  if (!L || !state.bars.length) return;
  const now = nowServer();
  const end = L.running ? Math.max(now, L.end) : L.end;
  const span = Math.max(end - L.start, 1);
  const X = (at) => L.m.l + ((at - L.start) / span) * (L.width - L.m.l - L.m.r);
  for (const b of state.bars) {
    const r = b.run;
    const stop = r.end === null ? Math.max(now, r.start) : r.end;
    const x = X(r.start), w = Math.max(X(stop) - x, 1.5);
    b.rect.setAttribute("x", x); b.rect.setAttribute("width", w);
    if (b.hatch) { b.hatch.setAttribute("x", x); b.hatch.setAttribute("width", w); }
    const took = fmtDuration(stop - r.start) + (r.end === null ? " so far" : "");
    b.title.textContent = `r${r.run} · e${r.experiment} · ${r.role} · ${OUTCOME_LABELS[r.outcome] || r.outcome}`
      + ` · ${took}${finite(r.metric) ? " · " + fmtMetric(r.metric) : ""}\n${r.description}`;
  }
  const units = timeUnits(span);
  L.ticks.replaceChildren();
  for (const t of niceTicks(0, span / units.seconds, 6)) {
    const x = X(L.start + t * units.seconds);
    svg("line", { x1: x, x2: x, y1: L.height - L.m.b, y2: L.height - L.m.b + 4 }, L.ticks);
    svg("text", { x, y: L.height - L.m.b + 16, "text-anchor": "middle", text: `${+t.toFixed(2)} ${units.name}` }, L.ticks);
  }
}

function renderTimelineLegend(outcomes, special) {
  const legend = $("timeline-legend");
  legend.replaceChildren();
  for (const [key, label] of Object.entries(OUTCOME_LABELS)) {
    if (!outcomes.has(key)) continue;
    const swatch = el("i", { class: "swatch" });
    swatch.style.background = COLOURS[key];
    legend.append(el("span", {}, swatch, label));
  }
  if (special) legend.append(el("span", {}, el("i", { class: "swatch hatch" }), "validate / confirm / noise / calibrate"));
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

function closeDetail() {
  state.detail = null;
  $("detail").hidden = true;
  for (const tr of document.querySelectorAll("#experiments tbody tr.selected")) tr.classList.remove("selected");
}

// --------------------------------------------------------------------------- analysis

function table(headers, rows, numeric = []) {
  return el("table", {}, el("thead", {}, el("tr", {}, headers.map((h, i) => el("th", { class: numeric.includes(i) ? "num" : null, text: h })))),
    el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c, i) => el("td", { class: numeric.includes(i) ? "num" : null }, c))))));
}

function findings(lines) {
  return lines && lines.length ? el("ul", { class: "findings" }, lines.map((l) => el("li", { text: l }))) : null;
}

function renderAnalysis() {
  const a = state.analysis;
  // hardware
  const classes = Object.values(a.hardware.classes || {});
  const hw = $("hardware");
  if (!classes.length) hw.replaceChildren(el("p", { class: "note", text: "no finished run yet" }));
  else {
    const ref = a.hardware.reference;
    hw.replaceChildren(table(["class", "runs", "steps / run", "steps / s", "tokens / s", "$ / h", "speed vs " + ref, `${a.metric} offset`],
      classes.map((c) => [c.hardware + (c.hardware === ref ? " (ref)" : ""), String(c.runs), fmtNumber(c.steps_per_run),
        fmtNumber(c.steps_per_second), fmtNumber(c.tokens_per_second), c.price_per_hour ? fmtUsd(c.price_per_hour) : "–",
        c.hardware === ref ? "1.00×" : finite(c.speed_ratio) ? `${c.speed_ratio.toFixed(2)}×` : "–",
        c.hardware === ref ? "0" : finite(c.metric_offset)
          ? fmtSigned(c.metric_offset) + (finite(c.offset_se) ? ` ± ${fmtMetric(c.offset_se)}` : "") : "–"]),
      [1, 2, 3, 4, 5, 6, 7]),
    findings(a.hardware.findings.length ? a.hardware.findings : ["one hardware class: nothing to compare"]));
  }
  // noise
  const noise = $("noise");
  noise.replaceChildren(
    a.noise.length ? table(["class", "sd of one run", "degrees of freedom", "repeated experiments"],
      a.noise.map((n) => [n.hardware, fmtMetric(n.sd), String(n.df), String(n.groups)]), [1, 2, 3]) : null,
    findings(a.noise_findings));
  // effects
  const fx = $("effects");
  if (!a.effects.bars.length) fx.replaceChildren(el("p", { class: "note", text: a.effects.note || "no effects yet" }));
  else fx.replaceChildren(effectsChart(a.effects.bars, a.direction), findings(a.effects.findings));
  // phases and cost
  const ph = a.phases.phases || [];
  $("phases").replaceChildren(
    ph.length ? table(["phase", "experiments", "keeps", "gain"],
      ph.map((p) => [p.name, `e${p.first}–e${p.last} (${p.experiments})`, String(p.keeps), fmtMetric(p.gain)]), [2, 3])
      : el("p", { class: "note", text: "no phases yet: no experiment has been kept" }),
    findings(a.phases.findings));
  const cost = a.cost;
  $("cost").replaceChildren(
    cost.workers.length ? table(["worker", "class", "$ / h", "busy", "cost"],
      cost.workers.map((w) => [w.worker, w.hardware, fmtUsd(w.price_per_hour), fmtDuration(w.busy_seconds), fmtUsd(w.usd)]),
      [2, 3, 4]) : null,
    findings(cost.findings));
}

function effectsChart(bars, direction) {
  const box = el("div", { class: "chart" });
  const labels = bars.map((b) => `wave ${b.wave} · ${b.name}`);
  const longest = Math.min(Math.max(...labels.map((l) => l.length)), 40);
  const rowH = 20, m = { l: Math.round(longest * 6.3 + 14), r: 16, t: 6, b: 24 };
  const width = Math.max($("effects").clientWidth || 600, 360);
  const height = m.t + m.b + rowH * bars.length;
  const values = bars.flatMap((b) => [b.estimate, b.low, b.high]).filter(finite);
  let lo = Math.min(0, ...values), hi = Math.max(0, ...values);
  const pad = (hi - lo) * 0.08 || 1;
  lo -= pad; hi += pad;
  const X = (v) => m.l + ((v - lo) / (hi - lo)) * (width - m.l - m.r);
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, height });
  const defs = svg("defs", {}, root);
  const pattern = svg("pattern", { id: "fxhatch", width: 6, height: 6, patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" }, defs);
  svg("line", { x1: 0, y1: 0, x2: 0, y2: 6, stroke: "rgba(255,255,255,0.6)", "stroke-width": 2 }, pattern);
  const axis = svg("g", { class: "axis" }, root);
  for (const t of niceTicks(lo, hi, 5)) {
    svg("line", { x1: X(t), x2: X(t), y1: m.t, y2: height - m.b, stroke: "#eef0f2" }, root);
    svg("text", { x: X(t), y: height - 8, "text-anchor": "middle", text: fmtSigned(t) }, axis);
  }
  svg("line", { x1: X(0), x2: X(0), y1: m.t, y2: height - m.b, stroke: "#555" }, root);
  const minimize = direction !== "maximize";
  bars.forEach((b, i) => {
    const y = m.t + i * rowH;
    if (i > 0 && bars[i - 1].wave !== b.wave) svg("line", { x1: 0, x2: width, y1: y, y2: y, stroke: "#ddd", "stroke-dasharray": "4 3" }, root);
    const name = labels[i];
    svg("text", { x: m.l - 8, y: y + rowH / 2 + 4, "text-anchor": "end",
      text: name.length > longest ? name.slice(0, longest - 1) + "…" : name }, axis);
    let colour = "#b8c2cc";
    if (b.significant) colour = b.interaction ? COLOURS.lost : ((b.estimate < 0) === minimize ? COLOURS.kept : COLOURS.crashed);
    const x0 = X(Math.min(0, b.estimate)), x1 = X(Math.max(0, b.estimate));
    const g = svg("g", {}, root);
    svg("rect", { x: x0, y: y + 4, width: Math.max(x1 - x0, 1), height: rowH - 8, fill: colour }, g);
    if (b.interaction) svg("rect", { x: x0, y: y + 4, width: Math.max(x1 - x0, 1), height: rowH - 8, fill: "url(#fxhatch)" }, g);
    if (finite(b.low) && finite(b.high)) {
      const cy = y + rowH / 2;
      svg("path", { d: `M${X(b.low)},${cy}H${X(b.high)}M${X(b.low)},${cy - 4}V${cy + 4}M${X(b.high)},${cy - 4}V${cy + 4}`,
        stroke: "#222", fill: "none" }, g);
    }
    tip(g, `${name}: ${fmtSigned(b.estimate)}` + (finite(b.low) ? ` (95% CI ${fmtSigned(b.low)} to ${fmtSigned(b.high)})` : ""));
  });
  box.append(root);
  return box;
}

// --------------------------------------------------------------------------- start

setupTable();
$("detail-close").addEventListener("click", closeDetail);
document.addEventListener("keydown", (event) => { if (event.key === "Escape") closeDetail(); });
let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => { if (state.progress) { renderProgress(); renderTimeline(); renderAnalysis(); } }, 200);
});
setInterval(tick, 1000);
refresh();
connect();
