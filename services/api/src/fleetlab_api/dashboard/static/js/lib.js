// Shared helpers of the dashboard: REST calls, DOM building, the live event stream, charts.

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.fields = (body && body.fields) || {};
  }
}

// JSON in, JSON out; a non-2xx answer throws ApiError with the server's message and fields.
export async function api(path, { method = "GET", body, signal } = {}) {
  const init = { method, headers: { Accept: "application/json" }, signal, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  if (res.status === 204) return null;
  let data = null;
  const text = await res.text();
  try { data = text ? JSON.parse(text) : null; } catch { data = { error: text }; }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

// The route exists on this server (another part of Fleetlab may not be installed).
export async function optional(path) {
  try {
    return await api(path);
  } catch (err) {
    if (err instanceof ApiError && (err.status === 404 || err.status === 405)) return undefined;
    throw err;
  }
}

// h("a", {href: "/x", class: "y"}, "text", child): text is always text, never markup.
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function clear(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
  return node;
}

export function toast(message) {
  const box = $("#toast");
  if (!box) return;
  box.textContent = message;
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.hidden = true; }, 6000);
}

export function showError(where, err) {
  const node = typeof where === "string" ? $(where) : where;
  if (node) node.textContent = err ? String(err.message || err) : "";
}

export function fmtTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function fmtValue(v) {
  if (v === undefined || v === null) return "";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : String(+v.toPrecision(6));
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

export function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let i = -1;
  do { n /= 1024; i++; } while (n >= 1024 && i < units.length - 1);
  return `${n.toFixed(1)} ${units[i]}`;
}

export function statusBadge(status) {
  return h("span", { class: `status ${status}`, "data-field": "status" }, status);
}

export function debounce(fn, ms) {
  let timer;
  const wrapped = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
  wrapped.flush = (...args) => { clearTimeout(timer); return fn(...args); };
  return wrapped;
}

// An event can reach the page a moment before the API's read model has applied it: read
// `path` again (a few times, briefly) until `ready(body)` holds; the last answer either way.
export async function settled(path, ready, { tries = 20, ms = 250 } = {}) {
  let body = null;
  for (let i = 0; i < tries; i++) {
    body = await api(path);
    if (ready(body)) return body;
    await new Promise((r) => setTimeout(r, ms));
  }
  return body;
}

// The live event stream (/api/v1/events): one EventSource per page, handlers by event name.
export function live(handlers, { experiment } = {}) {
  const badge = $("#live");
  const url = experiment ? `/api/v1/events?experiment=${encodeURIComponent(experiment)}` : "/api/v1/events";
  const source = new EventSource(url);
  if (badge) badge.hidden = false;
  const set = (on) => {
    if (!badge) return;
    badge.textContent = on ? "● live" : "○ reconnecting";
    badge.classList.toggle("on", on);
  };
  source.addEventListener("ready", () => { set(true); handlers.ready && handlers.ready(); });
  source.addEventListener("error", () => set(false));
  for (const [name, fn] of Object.entries(handlers)) {
    if (name === "ready") continue;
    source.addEventListener(name, (ev) => fn(JSON.parse(ev.data)));
  }
  window.addEventListener("pagehide", () => source.close());
  return source;
}

const STEP_INCRS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6, 1e7];
const PALETTE = ["#0550ae", "#bc4c00", "#116329", "#8250df", "#a40e26", "#1b7c83", "#6e7781", "#953800"];
export const colour = (i) => PALETTE[i % PALETTE.length];

// A line chart (uPlot) in `box`: series = [{label, points: [[x, y], ...]}]; x is a step or a time.
export class Chart {
  constructor(box, title, { xLabel = "step", time = false } = {}) {
    this.box = h("figure", { class: "chart", "data-chart": title });
    this.caption = h("h3", {}, title);
    this.plotBox = h("div");
    this.box.append(this.caption, this.plotBox);
    box.append(this.box);
    this.title = title;
    this.xLabel = xLabel;
    this.time = time;
    this.series = [];
    this.plot = null;
    this.observer = new ResizeObserver(() => this.resize());
    this.observer.observe(this.box);
  }

  width() { return Math.max(240, this.box.clientWidth - 16); }

  resize() { if (this.plot) this.plot.setSize({ width: this.width(), height: 220 }); }

  set(series) { this.series = series; this.draw(); }

  append(label, points) {
    let s = this.series.find((x) => x.label === label);
    if (!s) { s = { label, points: [] }; this.series.push(s); this.plot && this.plot.destroy(); this.plot = null; }
    s.points.push(...points);
    this.draw();
  }

  points() { return this.series.reduce((n, s) => n + s.points.length, 0); }

  data() {
    const xs = [...new Set(this.series.flatMap((s) => s.points.map((p) => p[0])))].sort((a, b) => a - b);
    const index = new Map(xs.map((x, i) => [x, i]));
    const ys = this.series.map((s) => {
      const col = new Array(xs.length).fill(null);
      for (const [x, y] of s.points) col[index.get(x)] = y;
      return col;
    });
    return [xs, ...ys];
  }

  draw() {
    this.box.dataset.points = String(this.points());
    if (typeof uPlot === "undefined") return;
    const data = this.data();
    if (this.plot && this.plot.series.length === data.length) { this.plot.setData(data); return; }
    if (this.plot) this.plot.destroy();
    const opts = {
      width: this.width(),
      height: 220,
      // One x value alone would stretch the axis over years: give it room around it.
      scales: { x: { time: this.time, range: (u, lo, hi) => (lo === hi ? [lo - (this.time ? 30 : 1), hi + (this.time ? 30 : 1)] : [lo, hi]) } },
      // Steps are whole numbers: no 0.5 ticks.
      axes: [{ label: this.xLabel, incrs: this.time ? undefined : STEP_INCRS }, {}],
      series: [{ label: this.xLabel }, ...this.series.map((s, i) => ({
        label: s.label, stroke: colour(i), width: 2, spanGaps: true, points: { show: s.points.length < 60 },
      }))],
    };
    this.plot = new uPlot(opts, data, this.plotBox);
  }
}

// Run `fn` once uPlot (a deferred classic script) is there.
export function whenCharts(fn) {
  if (typeof uPlot !== "undefined") fn();
  else window.addEventListener("load", fn, { once: true });
}

// Resource-usage samples ({ts, cpu_percent, rss_mb, ...}) as one chart per measure.
const USAGE = { cpu_percent: "CPU %", rss_mb: "memory (MB)", memory_used_mb: "memory used (MB)", gpu_percent: "GPU %", gpu_memory_mb: "GPU memory (MB)" };
export function usageCharts(box, samples) {
  clear(box);
  const charts = new Map();
  for (const sample of samples) appendUsage(box, charts, sample);
  return charts;
}

export function appendUsage(box, charts, sample) {
  // The ranks of a multi-worker run are sampled apart: one line each.
  const rank = sample.rank == null ? null : `rank ${sample.rank}`;
  for (const [key, title] of Object.entries(USAGE)) {
    if (typeof sample[key] !== "number") continue;
    if (!charts.has(key)) charts.set(key, new Chart(box, title, { xLabel: "time", time: true }));
    charts.get(key).append(rank ?? title, [[Date.parse(sample.ts) / 1000, sample[key]]]);
  }
}
