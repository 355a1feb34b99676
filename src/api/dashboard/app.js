// spillway dashboard: polls /api/v1/status and draws what it reads.
//
// Guarantees: at most one request is outstanding (the next poll is
// scheduled when the previous one ends, and a request is abandoned after
// FETCH_TIMEOUT_MS); the sample ring holds at most MAX_SAMPLES documents
// (the oldest is dropped when full), starting with the server's own
// history (/api/v1/status/history); when the server goes away the last
// numbers stay on screen, marked "disconnected", and polling goes on.
// Rates are counter deltas over the server's uptime deltas, so they do not
// depend on this browser's clock or on how regularly polls happen.
// Every number shown sits in an element with a stable data-field
// attribute (tests read the page by them).
"use strict";

const STATUS_URL = "/api/v1/status";
// The server's last minutes of samples, loaded once so charts start full.
const HISTORY_URL = "/api/v1/status/history";
const POLL_MS = 1000;
const FETCH_TIMEOUT_MS = 3000;
// Five minutes at one sample a second.
const MAX_SAMPLES = 300;
// Rates are taken over the last few seconds, smoothing poll jitter.
const RATE_WINDOW_S = 5;
// The reasons a webhook answers 429 (X-Spillway-Reason).
const REFUSAL_REASONS = ["rate_limited", "bus_full", "shed"];
// Outcomes that end an invocation (a retry does not).
const COMPLETED_OUTCOMES = ["success", "failure", "dlq", "dropped", "backlog"];
const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1", "#edc948", "#9c755f"];
const SVG_NS = "http://www.w3.org/2000/svg";
const CHART_W = 600;
const CHART_H = 200;
const PAD = { left: 52, right: 12, top: 12, bottom: 24 };

// Ring of { uptime, status, rates }, oldest first.
const samples = [];

function sum(items, value) {
  return items.reduce((total, item) => total + value(item), 0);
}

function triggerKey(t) {
  return t.sensor + "/" + t.trigger;
}

function outcome(counts, name) {
  return (counts && counts[name]) || 0;
}

function completed(t) {
  return sum(COMPLETED_OUTCOMES, (o) => outcome(t.invocations, o));
}

function refusedBy(status, reason) {
  return sum(status.sources || [], (s) => outcome(s.outcomes, reason));
}

function oldestAge(status) {
  const ages = status.triggers
    .map((t) => t.oldest_unacked_age_seconds)
    .filter((a) => a !== null && a !== undefined);
  return ages.length ? Math.max(...ages) : null;
}

// Per second growth of counter(status) from the oldest sample inside
// RATE_WINDOW_S (or the newest one, if none is that recent) to `now`; null
// until there are two samples.
function rate(now, counter) {
  let base = null;
  for (const s of samples) {
    if (now.uptime - s.uptime <= RATE_WINDOW_S && s.uptime < now.uptime) {
      base = s;
      break;
    }
  }
  if (base === null && samples.length) {
    // Polls further apart than the window (a reconnect): the last one.
    base = samples[samples.length - 1];
  }
  if (base === null || base.uptime >= now.uptime) {
    return null;
  }
  const delta = counter(now.status) - counter(base.status);
  return delta < 0 ? null : delta / (now.uptime - base.uptime);
}

function record(status) {
  const last = samples[samples.length - 1];
  if (last && status.uptime_seconds < last.uptime) {
    // The server restarted: its counters began again.
    samples.length = 0;
  }
  const sample = { uptime: status.uptime_seconds, status, rates: {} };
  sample.rates.ingest = rate(sample, (s) => s.bus.published);
  sample.rates.trigger = rate(sample, (s) => sum(s.triggers, completed));
  for (const reason of REFUSAL_REASONS) {
    sample.rates[reason] = rate(sample, (s) => refusedBy(s, reason));
  }
  samples.push(sample);
  if (samples.length > MAX_SAMPLES) {
    samples.shift();
  }
  return sample;
}

// ---- formatting -------------------------------------------------------

function fmtInt(n) {
  return n === null || n === undefined ? "unlimited" : Math.round(n).toLocaleString("en-US");
}

function fmtRate(x) {
  if (x === null || x === undefined) {
    return "–";
  }
  return x < 100 ? x.toFixed(1) : Math.round(x).toLocaleString("en-US");
}

function fmtSeconds(x) {
  return x === null || x === undefined ? "–" : x.toFixed(1);
}

function fmtBytes(n) {
  if (n === null || n === undefined) {
    return "unlimited";
  }
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return (unit === 0 ? value.toString() : value.toFixed(1)) + " " + units[unit];
}

function fmtAxis(x) {
  if (x >= 1e6) return (x / 1e6).toFixed(x % 1e6 ? 1 : 0) + "M";
  if (x >= 1e3) return (x / 1e3).toFixed(x % 1e3 ? 1 : 0) + "k";
  return Number.isInteger(x) ? x.toString() : x.toFixed(1);
}

function fmtDuration(seconds) {
  const s = Math.floor(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return (h ? h + "h " : "") + (h || m ? m + "m " : "") + (s % 60) + "s";
}

function setField(name, text) {
  for (const el of document.querySelectorAll('[data-field="' + name + '"]')) {
    el.textContent = text;
  }
}

function cell(row, text, field, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (field) td.dataset.field = field;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function fillBar(id, value, max) {
  const el = document.getElementById(id);
  const ratio = max ? Math.min(1, value / max) : 0;
  el.style.width = (ratio * 100).toFixed(1) + "%";
  el.className = "fill" + (ratio >= 0.9 ? " bad" : ratio >= 0.7 ? " warn" : "");
}

// ---- charts -----------------------------------------------------------

function svgEl(name, attrs, parent) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (parent) parent.appendChild(el);
  return el;
}

// A round upper bound for the y axis, and its tick step.
function niceScale(max) {
  if (!(max > 0)) return { top: 1, step: 0.25 };
  const raw = max / 4;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  return { top: step * Math.ceil(max / step), step };
}

// series: [{ name, color, dashed, points: [[uptime, value|null], …], latest }]
function drawChart(id, series, format) {
  const svg = document.getElementById("chart-" + id);
  svg.setAttribute("viewBox", "0 0 " + CHART_W + " " + CHART_H);
  svg.replaceChildren();
  const now = samples.length ? samples[samples.length - 1].uptime : 0;
  const first = samples.length ? samples[0].uptime : 0;
  const span = Math.max(30, now - first);
  const values = series.flatMap((s) => s.points.map((p) => p[1])).filter((v) => v !== null);
  const { top, step } = niceScale(Math.max(0, ...values));
  const plotW = CHART_W - PAD.left - PAD.right;
  const plotH = CHART_H - PAD.top - PAD.bottom;
  const x = (t) => PAD.left + plotW * (1 - (now - t) / span);
  const y = (v) => PAD.top + plotH * (1 - v / top);

  for (let v = 0; v <= top + step / 2; v += step) {
    svgEl("line", { x1: PAD.left, x2: CHART_W - PAD.right, y1: y(v), y2: y(v), class: "grid" }, svg);
    const label = svgEl("text", { x: PAD.left - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" }, svg);
    label.textContent = fmtAxis(v);
  }
  for (const back of [span, span / 2, 0]) {
    const label = svgEl("text", { x: x(now - back), y: CHART_H - 6, class: "tick", "text-anchor": back === span ? "start" : back === 0 ? "end" : "middle" }, svg);
    label.textContent = back === 0 ? "now" : "-" + fmtDuration(back).trim();
  }
  // Limits (dashed) first, so a value sitting at its limit stays visible.
  const drawOrder = series.filter((s) => s.dashed).concat(series.filter((s) => !s.dashed));
  for (const s of drawOrder) {
    let d = "";
    let pen = "M";
    for (const [t, v] of s.points) {
      if (v === null || v === undefined) {
        pen = "M";
        continue;
      }
      d += pen + x(t).toFixed(1) + " " + y(v).toFixed(1) + " ";
      pen = "L";
    }
    if (d) {
      svgEl("path", { d, stroke: s.color, class: "line" + (s.dashed ? " dashed" : "") }, svg);
    }
  }
  const legend = document.getElementById("legend-" + id);
  legend.replaceChildren();
  if (!series.length) {
    legend.textContent = "nothing to show";
  }
  for (const s of series) {
    const item = document.createElement("span");
    item.className = "item";
    const swatch = document.createElement("i");
    swatch.style.borderColor = s.color;
    if (s.dashed) swatch.className = "dashed";
    item.appendChild(swatch);
    item.appendChild(document.createTextNode(s.name + " " + format(s.latest)));
    legend.appendChild(item);
  }
}

function seriesOf(name, color, value, dashed) {
  const points = samples.map((s) => [s.uptime, value(s)]);
  const latest = points.length ? points[points.length - 1][1] : null;
  return { name, color, dashed: !!dashed, points, latest };
}

// Keys present in the newest document, so a removed trigger disappears.
function triggerSeries(value, dashedValue, dashedSuffix) {
  const now = samples[samples.length - 1].status;
  const out = [];
  now.triggers.forEach((t, i) => {
    const key = triggerKey(t);
    const color = PALETTE[i % PALETTE.length];
    const pick = (s, f) => {
      const found = s.status.triggers.find((u) => triggerKey(u) === key);
      return found ? f(found) : null;
    };
    out.push(seriesOf(key, color, (s) => pick(s, value)));
    if (dashedValue) {
      out.push(seriesOf(key + " " + dashedSuffix, color, (s) => pick(s, dashedValue), true));
    }
  });
  return out;
}

function drawCharts() {
  const depth = [seriesOf("depth", PALETTE[0], (s) => s.status.bus.messages)];
  if (samples[samples.length - 1].status.bus.limits.max_msgs !== null) {
    depth.push(seriesOf("max_msgs", PALETTE[3], (s) => s.status.bus.limits.max_msgs, true));
  }
  drawChart("depth", depth, fmtInt);
  drawChart("lag", triggerSeries((t) => t.lag), fmtInt);
  drawChart(
    "rates",
    [
      seriesOf("ingest", PALETTE[0], (s) => s.rates.ingest),
      seriesOf("trigger", PALETTE[2], (s) => s.rates.trigger),
    ],
    fmtRate
  );
  drawChart(
    "refused",
    REFUSAL_REASONS.map((r, i) => seriesOf(r, PALETTE[[1, 3, 5][i]], (s) => s.rates[r])),
    fmtRate
  );
  drawChart("age", triggerSeries((t) => t.oldest_unacked_age_seconds), fmtSeconds);
  drawChart(
    "inflight",
    triggerSeries((t) => t.inflight, (t) => t.concurrency_limit, "limit"),
    fmtInt
  );
}

// ---- numbers and tables -----------------------------------------------

function renderTiles(sample) {
  const st = sample.status;
  const bus = st.bus;
  setField("bus.stream", bus.stream);
  setField("bus.backend", bus.backend);
  setField("bus.limits.discard", bus.limits.discard);
  setField("state", st.draining ? "draining" : st.ready ? "ready" : "starting");
  setField("uptime", fmtDuration(st.uptime_seconds));
  setField("bus.messages", fmtInt(bus.messages));
  setField("bus.limits.max_msgs", fmtInt(bus.limits.max_msgs));
  fillBar("depth-fill", bus.messages, bus.limits.max_msgs);
  setField("bus.bytes", fmtBytes(bus.bytes));
  setField("bus.limits.max_bytes", fmtBytes(bus.limits.max_bytes));
  fillBar("bytes-fill", bus.bytes, bus.limits.max_bytes);
  setField("bus.published", fmtInt(bus.published));
  setField("rate.ingest", fmtRate(sample.rates.ingest));
  setField("triggers.completed", fmtInt(sum(st.triggers, completed)));
  setField("rate.trigger", fmtRate(sample.rates.trigger));
  const refusedRates = REFUSAL_REASONS.map((r) => sample.rates[r]);
  setField("rate.refused", fmtRate(refusedRates.includes(null) ? null : sum(refusedRates, (x) => x)));
  setField("sources.refused", fmtInt(sum(REFUSAL_REASONS, (r) => refusedBy(st, r))));
  setField("age.oldest", fmtSeconds(oldestAge(st)));
  setField("workflows.pending", fmtInt(sum(st.workflows || [], (w) => w.pending)));
  setField("workflows.running", fmtInt(sum(st.workflows || [], (w) => w.running)));
  const firing = (st.alerts || []).filter((a) => a.state === "firing").length;
  setField("alerts.firing", fmtInt(firing));
  setField("alerts.pending", fmtInt((st.alerts || []).length - firing));
  document.getElementById("alerts-tile").classList.toggle("alarm", firing > 0);
  setField("samples", fmtInt(samples.length));
}

function renderTriggers(st) {
  const body = document.getElementById("triggers");
  body.replaceChildren();
  if (!st.triggers.length) {
    const row = body.insertRow();
    cell(row, "no triggers", null, "empty").colSpan = 12;
  }
  for (const t of st.triggers) {
    const key = triggerKey(t);
    const f = (name) => "trigger." + key + "." + name;
    const row = body.insertRow();
    cell(row, key, f("name"), "name");
    cell(row, fmtInt(t.lag), f("lag"));
    cell(row, fmtInt(t.ack_pending), f("ack_pending"));
    cell(row, t.oldest_unacked_age_seconds === null ? "–" : fmtSeconds(t.oldest_unacked_age_seconds) + " s", f("oldest_unacked_age_seconds"));
    const full = t.inflight >= t.concurrency_limit;
    cell(row, fmtInt(t.inflight), f("inflight"), full ? "hot" : "");
    cell(row, fmtInt(t.concurrency_limit), f("concurrency_limit"));
    cell(row, fmtInt(t.max_in_flight), f("max_in_flight"));
    const pending = t.max_pending === null || t.max_pending === undefined ? fmtInt(t.pending) : fmtInt(t.pending) + " / " + fmtInt(t.max_pending);
    cell(row, pending, f("pending"));
    for (const o of ["success", "failure", "retry", "dlq"]) {
      cell(row, fmtInt(outcome(t.invocations, o)), f(o));
    }
  }
}

function renderSources(st) {
  const body = document.getElementById("sources");
  body.replaceChildren();
  const sources = st.sources || [];
  if (!sources.length) {
    const row = body.insertRow();
    cell(row, "no event sources", null, "empty").colSpan = 6;
  }
  for (const s of sources) {
    const key = s.source + "/" + s.event;
    const f = (name) => "source." + key + "." + name;
    const row = body.insertRow();
    cell(row, key, f("name"), "name");
    cell(row, fmtInt(outcome(s.outcomes, "accepted")), f("accepted"));
    for (const r of REFUSAL_REASONS) {
      const n = outcome(s.outcomes, r);
      cell(row, fmtInt(n), f(r), n ? "hot" : "");
    }
    const other = Object.entries(s.outcomes || {})
      .filter(([o]) => o !== "accepted" && !REFUSAL_REASONS.includes(o))
      .reduce((total, [, n]) => total + n, 0);
    cell(row, fmtInt(other), f("other"));
  }
}

function renderWorkflows(st) {
  const body = document.getElementById("workflows");
  body.replaceChildren();
  const workflows = st.workflows || [];
  if (!workflows.length) {
    const row = body.insertRow();
    cell(row, "no workflow templates", null, "empty").colSpan = 4;
  }
  for (const w of workflows) {
    const f = (name) => "workflow." + w.template + "." + name;
    const row = body.insertRow();
    cell(row, w.template, f("name"), "name");
    cell(row, w.semaphore || "–", f("semaphore"));
    cell(row, fmtInt(w.pending), f("pending"));
    cell(row, fmtInt(w.running), f("running"));
  }
}

function renderAlerts(st) {
  const list = document.getElementById("alerts");
  list.replaceChildren();
  const alerts = (st.alerts || []).slice().sort((a, b) => (a.state === b.state ? 0 : a.state === "firing" ? -1 : 1));
  if (!alerts.length) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = "no alerts pending or firing";
    list.appendChild(li);
  }
  for (const a of alerts) {
    const li = document.createElement("li");
    li.className = a.state + " " + a.severity;
    li.dataset.alert = a.alertname;
    const head = document.createElement("b");
    head.textContent = a.state.toUpperCase() + " " + a.alertname;
    const labels = Object.entries(a.labels || {}).map(([k, v]) => k + "=" + v).join(", ");
    const rest = document.createElement("span");
    rest.textContent = " [" + a.severity + "] {" + labels + "} since " + a.active_since + ": " + a.summary;
    li.append(head, rest);
    list.appendChild(li);
  }
}

function render(sample) {
  renderTiles(sample);
  renderTriggers(sample.status);
  renderSources(sample.status);
  renderWorkflows(sample.status);
  renderAlerts(sample.status);
  drawCharts();
}

// ---- polling ----------------------------------------------------------

function connection(ok, why) {
  const el = document.getElementById("conn");
  el.textContent = ok ? "live" : "disconnected (" + why + "), retrying";
  el.className = "conn " + (ok ? "ok" : "down");
  document.body.classList.toggle("disconnected", !ok);
}

async function poll() {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), FETCH_TIMEOUT_MS);
  try {
    const response = await fetch(STATUS_URL, { cache: "no-store", signal: abort.signal });
    if (!response.ok) {
      throw new Error("HTTP " + response.status);
    }
    const status = await response.json();
    render(record(status));
    connection(true);
  } catch (err) {
    connection(false, err.name === "AbortError" ? "timed out" : err.message || "unreachable");
  } finally {
    clearTimeout(timer);
    setTimeout(poll, POLL_MS);
  }
}

// Loads the server's history (best effort: without it the charts start
// empty), then polls.
async function start() {
  document.getElementById("max-samples").textContent = MAX_SAMPLES;
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), FETCH_TIMEOUT_MS);
  try {
    const response = await fetch(HISTORY_URL, { cache: "no-store", signal: abort.signal });
    if (response.ok) {
      for (const status of await response.json()) {
        record(status);
      }
    }
  } catch (err) {
    // The first poll reports the connection state.
  } finally {
    clearTimeout(timer);
  }
  poll();
}

start();
