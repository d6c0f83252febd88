// Compare: options side by side (differences marked), metric curves overlaid, and a
// parallel-coordinates view of the options against a chosen metric.
import { $, api, Chart, clear, colour, fmtValue, h, showError } from "./lib.js";

const ids = (new URLSearchParams(location.search).get("ids") || "").split(",").filter(Boolean);
const label = (e) => e.name || e.id.slice(0, 8);

function sideBySide(exps) {
  const keys = [...new Set(exps.flatMap((e) => Object.keys(e.options || {})))].sort();
  const scores = [...new Set(exps.flatMap((e) => Object.keys((e.results || {})._scores || {})))].sort();
  const row = (name, values) => {
    const differs = new Set(values.map((v) => JSON.stringify(v ?? null))).size > 1;
    return h("tr", { class: differs ? "diff" : undefined, "data-key": name },
      h("th", { scope: "row" }, name, differs ? h("span", { class: "diff-mark", title: "values differ" }, " ≠") : null,
        differs ? h("span", { class: "sr" }, " (differs)") : null),
      values.map((v) => h("td", {}, fmtValue(v))));
  };
  clear($("#side"),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, ""), exps.map((e, i) => h("th", { scope: "col" },
      h("span", { class: "dot", style: `background:${colour(i)}`, "aria-hidden": "true" }),
      h("a", { href: `/experiments/${e.id}` }, label(e)))))),
    h("tbody", {},
      row("project", exps.map((e) => e.project)),
      row("status", exps.map((e) => e.status)),
      keys.map((k) => row(k, exps.map((e) => (e.options || {})[k]))),
      scores.map((k) => row(`★ ${k}`, exps.map((e) => ((e.results || {})._scores || {})[k])))));
}

function curves(exps, metrics) {
  const box = clear($("#curves"));
  const names = [...new Set(metrics.flatMap((m) => m.series.map((s) => s.name)))].sort();
  if (!names.length) { box.append(h("p", { class: "muted" }, "These experiments have no metrics.")); return; }
  for (const name of names) {
    const chart = new Chart(box, name);
    chart.set(metrics.map((m, i) => {
      const s = m.series.find((x) => x.name === name);
      return { label: label(exps[i]), points: s ? s.points.map((p, j) => [p.step ?? j, p.value]) : [] };
    }));
  }
}

// Values of one metric per experiment: scores first, then each metric's last value.
function metricChoices(exps, metrics) {
  const choices = new Map();
  exps.forEach((e, i) => {
    for (const [k, v] of Object.entries((e.results || {})._scores || {})) {
      if (!choices.has(`★ ${k}`)) choices.set(`★ ${k}`, new Array(exps.length).fill(null));
      choices.get(`★ ${k}`)[i] = v;
    }
    for (const s of metrics[i].summary) {
      if (!choices.has(s.name)) choices.set(s.name, new Array(exps.length).fill(null));
      choices.get(s.name)[i] = s.last;
    }
  });
  return choices;
}

function parallel(exps, choices, metric) {
  const keys = [...new Set(exps.flatMap((e) => Object.keys(e.options || {})))].sort();
  let axes = keys.map((k) => ({ name: k, values: exps.map((e) => (e.options || {})[k]) }));
  // Options that differ tell the story; the same value everywhere is left out.
  const varying = axes.filter((a) => new Set(a.values.map((v) => JSON.stringify(v ?? null))).size > 1);
  if (varying.length) axes = varying;
  if (metric && choices.has(metric)) axes.push({ name: metric, values: choices.get(metric), metric: true });
  const W = Math.max(480, axes.length * 160), H = 300, pad = 60;
  const x = (i) => pad + (axes.length > 1 ? (i * (W - 2 * pad)) / (axes.length - 1) : (W - 2 * pad) / 2);
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H + 40}`);
  svg.style.width = `${W}px`;
  svg.style.maxWidth = "100%";
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `Parallel coordinates of ${axes.map((a) => a.name).join(", ")}`);
  const el = (tag, attrs, text) => {
    const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    svg.append(n);
    return n;
  };
  const scales = axes.map((a) => {
    const nums = a.values.filter((v) => typeof v === "number");
    if (nums.length === a.values.filter((v) => v !== null && v !== undefined).length && nums.length) {
      const lo = Math.min(...nums), hi = Math.max(...nums);
      return { f: (v) => (typeof v === "number" ? (hi === lo ? 0.5 : (v - lo) / (hi - lo)) : null), lo: fmtValue(lo), hi: fmtValue(hi) };
    }
    const cats = [...new Set(a.values.map((v) => JSON.stringify(v ?? null)))];
    return { f: (v) => (cats.length > 1 ? cats.indexOf(JSON.stringify(v ?? null)) / (cats.length - 1) : 0.5), lo: fmtValue(JSON.parse(cats[0])), hi: fmtValue(JSON.parse(cats[cats.length - 1])) };
  });
  const y = (t) => 20 + (1 - t) * (H - 20);
  axes.forEach((a, i) => {
    el("line", { x1: x(i), x2: x(i), y1: 20, y2: H, stroke: "#57606a" });
    el("text", { x: x(i), y: H + 22, "text-anchor": "middle", "font-size": 13, "font-weight": a.metric ? 700 : 400, fill: "#1b1f24" }, a.name);
    el("text", { x: x(i) + 4, y: 14, "font-size": 11, fill: "#57606a" }, scales[i].hi);
    el("text", { x: x(i) + 4, y: H + 36, "font-size": 11, fill: "#57606a" }, scales[i].lo);
  });
  exps.forEach((e, j) => {
    const pts = axes.map((a, i) => [x(i), scales[i].f(a.values[j])]).filter((p) => p[1] !== null).map(([px, t]) => `${px},${y(t)}`);
    const line = el("polyline", { points: pts.join(" "), fill: "none", stroke: colour(j), "stroke-width": 2.5, "data-experiment": e.id });
    const title = document.createElementNS(NS, "title");
    title.textContent = label(e);
    line.append(title);
  });
  clear($("#parallel"), svg);
}

async function main() {
  if (ids.length < 2) { showError("#page-error", "Choose two or more experiments to compare (from an experiments table)."); return; }
  let exps, metrics;
  try {
    exps = await Promise.all(ids.map((id) => api(`/api/v1/experiments/${encodeURIComponent(id)}`)));
  } catch (err) { showError("#page-error", err); return; }
  sideBySide(exps);
  try {
    metrics = await api(`/api/v1/metrics/compare?experiments=${exps.map((e) => e.id).join(",")}&points=1000`);
  } catch (err) {
    showError("#page-error", `Metrics unavailable: ${err.message}`);
    metrics = exps.map((e) => ({ experiment_id: e.id, series: [], summary: [], scores: {} }));
  }
  curves(exps, metrics);
  const choices = metricChoices(exps, metrics);
  const select = $("#pc-metric");
  clear(select, h("option", { value: "" }, "(options only)"), [...choices.keys()].map((k) => h("option", { value: k }, k)));
  if (choices.size) select.value = [...choices.keys()][0];
  select.addEventListener("change", () => parallel(exps, choices, select.value));
  parallel(exps, choices, select.value);
}

main();
