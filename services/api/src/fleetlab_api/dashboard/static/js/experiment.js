// Experiment: status, reason and timeline; options; actions; notes autosaved; metric charts
// (live); results and FGLab _charts; the live log; output files; the code snapshot; usage.
import {
  $, $$, api, Chart, clear, debounce, fmtBytes, fmtTime, fmtValue, h, live, optional, showError,
  appendUsage, settled, statusBadge, toast, usageCharts,
} from "./lib.js";

const ref = document.body.dataset.ref;
const TERMINAL = new Set(["succeeded", "failed", "stopped", "lost"]);
const MAX_SHOWN = 20000;
const IMAGE = /\.(png|jpe?g|gif|webp|svg)$/i;
let exp = null;
const charts = new Map();
const extraTimeline = [];

// -- the record ---------------------------------------------------------------------------------

function renderRecord() {
  $("#title").textContent = exp.name || exp.id;
  document.title = `${exp.name || exp.id.slice(0, 8)} · Fleetlab`;
  clear($("#status"), statusBadge(exp.status));
  $("#reason").textContent = exp.status_reason || (exp.exit_code !== null && exp.exit_code !== undefined ? `exit code ${exp.exit_code}` : "");
  const link = $("#project-link");
  link.textContent = exp.project;
  link.href = `/projects/${encodeURIComponent(exp.project)}`;
  $("#stop").hidden = TERMINAL.has(exp.status);
  $("#delete").disabled = !TERMINAL.has(exp.status);
  $("#delete").title = TERMINAL.has(exp.status) ? "" : "Stop it first";
  $("#measurements").href = `/api/v1/experiments/${exp.id}/measurements.json`;
  $("#log-download").href = `/api/v1/experiments/${exp.id}/logs?download=true`;
  const steps = [["Submitted", exp.created_at]];
  if (exp.started_at) steps.push([`Started on ${exp.agent_id || "an agent"}${exp.attempt > 1 ? ` (attempt ${exp.attempt})` : ""}`, exp.started_at]);
  steps.push(...extraTimeline);
  if (exp.finished_at) steps.push([`Ended ${exp.status}${exp.exit_code !== null && exp.exit_code !== undefined ? `, exit code ${exp.exit_code}` : ""}${exp.signal ? `, signal ${exp.signal}` : ""}`, exp.finished_at]);
  steps.sort((a, b) => Date.parse(a[1]) - Date.parse(b[1]));
  clear($("#timeline"), steps.map(([what, when]) => h("li", {}, h("time", { datetime: when }, fmtTime(when)), " — ", what)));
  const opts = Object.entries(exp.options || {});
  clear($("#options"), opts.length ? opts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, fmtValue(v))]) : h("dd", { class: "muted" }, "none"));
  if (exp.tags && exp.tags.length) $("#options").append(h("dt", {}, "tags"), h("dd", {}, exp.tags.join(", ")));
  renderResults(exp.results || {});
  if (exp.code) codeSnapshot(exp.code);
}

function renderResults(results) {
  const box = $("#results");
  const scores = results._scores || {};
  const other = Object.entries(results).filter(([k]) => !["_scores", "_charts"].includes(k));
  const parts = [];
  if (Object.keys(scores).length) {
    parts.push(h("table", { class: "data", id: "scores" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Score"), h("th", { scope: "col", class: "num" }, "Value"))),
      h("tbody", {}, Object.entries(scores).map(([k, v]) => h("tr", {}, h("td", {}, k), h("td", { class: "num" }, fmtValue(v)))))));
  }
  if (other.length) parts.push(h("dl", { class: "kv" }, other.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, fmtValue(v))])));
  clear(box, parts.length ? parts : h("p", { class: "muted" }, "None yet."));
  fglabCharts(results._charts);
}

// FGLab's _charts: c3-style {data: {x?, columns: [[name, ...values], ...]}} objects.
function fglabCharts(list) {
  if (!Array.isArray(list)) return;
  const box = $("#charts");
  if (box.querySelector(".muted")) clear(box);
  list.forEach((spec, i) => {
    const data = (spec && spec.data) || {};
    const columns = data.columns || [];
    if (!columns.length) return;
    const xName = data.x;
    const xCol = columns.find((c) => c[0] === xName);
    const title = (spec.title && (spec.title.text || spec.title)) || `chart ${i + 1}`;
    const key = `_charts:${i}`;
    if (charts.has(key)) return;
    const chart = new Chart(box, String(title), { xLabel: xName || "x" });
    charts.set(key, chart);
    chart.set(columns.filter((c) => c !== xCol).map((c) => ({
      label: String(c[0]),
      points: c.slice(1).map((y, j) => [xCol ? Number(xCol[j + 1]) : j, Number(y)]),
    })));
  });
}

async function reload() {
  exp = await api(`/api/v1/experiments/${encodeURIComponent(ref)}`);
  renderRecord();
  return exp;
}

// The read model follows the events: read it again until it shows what the event said.
async function settle(expected) {
  exp = await settled(`/api/v1/experiments/${exp.id}`, (x) => !expected || x.status === expected);
  renderRecord();
}

// -- actions ------------------------------------------------------------------------------------

function actions() {
  $("#stop").addEventListener("click", async () => {
    try {
      await api(`/api/v1/experiments/${exp.id}/stop`, { method: "POST", body: { reason: "stopped from the dashboard" } });
      $("#reason").textContent = "stopping…";
      $("#stop").disabled = true;
    } catch (err) { toast(err.message); }
  });
  $("#restart").addEventListener("click", async () => {
    try {
      const again = await api(`/api/v1/experiments/${exp.id}/restart`, { method: "POST" });
      location.href = `/experiments/${again.id}`;
    } catch (err) { toast(err.message); }
  });
  $("#rename").addEventListener("click", async () => {
    const name = prompt("New name of the experiment", exp.name || "");
    if (name === null) return;
    try {
      exp = await api(`/api/v1/experiments/${exp.id}`, { method: "PATCH", body: { name } });
      renderRecord();
    } catch (err) { toast(`Not renamed: ${err.message}`); }
  });
  $("#delete").addEventListener("click", async () => {
    if (!confirm(`Delete experiment ${exp.name || exp.id}? Its record goes; this cannot be undone.`)) return;
    try {
      await api(`/api/v1/experiments/${exp.id}`, { method: "DELETE" });
      location.href = `/projects/${encodeURIComponent(exp.project)}`;
    } catch (err) { toast(err.message); }
  });
}

// -- notes --------------------------------------------------------------------------------------

function notes() {
  const area = $("#notes");
  const state = $("#notes-state");
  // The page came with the notes; anything typed before this script ran is saved below.
  let saved = area.defaultValue;
  const save = debounce(async () => {
    const text = area.value;
    if (text === saved) return;
    state.textContent = "Saving…";
    try {
      await api(`/api/v1/experiments/${exp.id}`, { method: "PATCH", body: { notes: text } });
      saved = text;
      state.textContent = `Saved at ${new Date().toLocaleTimeString()}`;
    } catch (err) { state.textContent = `Not saved: ${err.message}`; }
  }, 300);
  area.addEventListener("input", save);
  area.addEventListener("blur", () => save.flush());
  if (area.value !== saved) save();
  window.addEventListener("beforeunload", () => save.flush());
}

// -- metrics ------------------------------------------------------------------------------------

function chartFor(name) {
  if (!charts.has(name)) {
    const box = $("#charts");
    if (box.querySelector(".muted")) clear(box);
    charts.set(name, new Chart(box, name));
  }
  return charts.get(name);
}

const xOf = (p, i) => (p.step !== null && p.step !== undefined ? p.step : i);

async function metrics() {
  let data;
  try { data = await api(`/api/v1/experiments/${exp.id}/metrics?points=2000`); } catch (err) {
    clear($("#charts"), h("p", { class: "muted" }, `Metrics unavailable: ${err.message}`));
    return;
  }
  for (const s of data.series) {
    chartFor(s.name).set([{ label: s.name, points: s.points.map((p, i) => [xOf(p, i), p.value]) }]);
  }
  if (Object.keys(data.scores || {}).length) renderResults({ ...(exp.results || {}), _scores: { ...((exp.results || {})._scores || {}), ...data.scores } });
}

function onMetrics(ev) {
  const byName = new Map();
  for (const p of ev.points) {
    if (!byName.has(p.name)) byName.set(p.name, []);
    const chart = charts.get(p.name);
    const n = chart ? chart.points() + byName.get(p.name).length : byName.get(p.name).length;
    byName.get(p.name).push([xOf(p, n), p.value]);
  }
  for (const [name, points] of byName) chartFor(name).append(name, points);
  if (Object.keys(ev.scores || {}).length) {
    exp.results = { ...(exp.results || {}), _scores: { ...((exp.results || {})._scores || {}), ...ev.scores } };
    renderResults(exp.results);
  }
}

// -- the log ------------------------------------------------------------------------------------

class LogView {
  constructor() {
    this.box = $("#log");
    this.follow = $("#follow");
    this.search = $("#log-search");
    this.pending = [];
    this.source = null;
    this.lines = 0;
    $("#log-stream").addEventListener("change", () => this.open());
    this.search.addEventListener("input", debounce(() => this.highlight(true), 200));
    this.follow.addEventListener("change", () => { if (this.follow.checked) this.scroll(); });
    // Scrolling up stops following; back at the bottom follows again.
    this.box.addEventListener("scroll", () => {
      const atBottom = this.box.scrollHeight - this.box.scrollTop - this.box.clientHeight < 30;
      if (this.programmatic) { this.programmatic = false; return; }
      this.follow.checked = atBottom;
    });
  }

  open() {
    if (this.source) this.source.close();
    clear(this.box);
    this.lines = 0;
    this.trimmed = null;
    this.trimmedCount = 0;
    const stream = $("#log-stream").value;
    const q = stream ? `?stream=${stream}` : "";
    const source = new EventSource(`/api/v1/experiments/${exp.id}/logs/stream${q}`);
    this.source = source;
    $("#log-state").textContent = "connecting…";
    source.addEventListener("line", (ev) => {
      this.pending.push(JSON.parse(ev.data));
      this.schedule();
      // Output means a process runs it, whatever an older read of the record said.
      if (exp.status === "queued") { exp.status = "running"; exp.status_reason = null; renderRecord(); }
    });
    source.addEventListener("skipped", (ev) => {
      const s = JSON.parse(ev.data);
      this.flush();
      const href = `/api/v1/experiments/${exp.id}/logs?from_seq=${s.from_seq}&to_seq=${s.to_seq}`;
      this.box.append(h("div", { class: "skip-marker", role: "note" },
        `… ${s.skipped.toLocaleString("en")} lines skipped (lines ${s.from_seq}–${s.to_seq}) · `,
        h("a", { href, target: "_blank", rel: "noopener" }, "read them")));
    });
    source.addEventListener("end", (ev) => {
      const end = JSON.parse(ev.data);
      this.flush();
      this.box.append(h("div", { class: "end-marker" }, `— ended: ${end.status}${end.exit_code !== null && end.exit_code !== undefined ? `, exit code ${end.exit_code}` : ""}${end.reason ? ` (${end.reason})` : ""} —`));
      $("#log-state").textContent = `ended · ${this.lines.toLocaleString("en")} lines shown`;
      source.close();
      this.scroll();
    });
    source.addEventListener("open", () => { $("#log-state").textContent = "live"; });
    source.addEventListener("error", () => {
      if (source.readyState !== EventSource.CLOSED) $("#log-state").textContent = "reconnecting…";
    });
  }

  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => this.flush());
  }

  flush() {
    this.scheduled = false;
    if (!this.pending.length) return;
    const frag = document.createDocumentFragment();
    const q = this.search.value.trim().toLowerCase();
    for (const ln of this.pending) {
      const node = h("span", { class: `ln ${ln.stream}${q && ln.line.toLowerCase().includes(q) ? " hit" : ""}`, "data-seq": ln.seq },
        h("span", { class: "seq" }, String(ln.seq)), ln.line, "\n");
      frag.append(node);
    }
    this.lines += this.pending.length;
    this.pending = [];
    this.box.append(frag);
    this.trim();
    if (q) this.count();
    $("#log-state").textContent = `live · ${this.lines.toLocaleString("en")} lines shown`;
    if (this.follow.checked) this.scroll();
  }

  // A run that prints for hours keeps the page light: past MAX_SHOWN lines the oldest go (the
  // first lines, the skip marker and the download keep the whole log within reach).
  trim() {
    const extra = this.box.querySelectorAll(".ln").length - MAX_SHOWN;
    if (extra <= 0) return;
    const after = this.box.querySelector(".skip-marker") || this.trimmed;
    let node = after ? after.nextElementSibling : this.box.firstElementChild;
    let removed = 0;
    while (node && removed < extra + 1000) {
      const next = node.nextElementSibling;
      if (node.classList.contains("ln")) { node.remove(); removed++; }
      node = next;
    }
    if (!this.trimmed) {
      this.trimmed = h("div", { class: "skip-marker", role: "note" });
      if (after) after.after(this.trimmed); else this.box.prepend(this.trimmed);
    }
    this.trimmedCount = (this.trimmedCount || 0) + removed;
    this.trimmed.textContent = `… ${this.trimmedCount.toLocaleString("en")} earlier lines left out of the page (Download has them) …`;
  }

  scroll() { this.programmatic = true; this.box.scrollTop = this.box.scrollHeight; }

  highlight(jump) {
    const q = this.search.value.trim().toLowerCase();
    let first = null;
    for (const node of $$(".ln", this.box)) {
      const hit = q !== "" && node.textContent.toLowerCase().includes(q);
      node.classList.toggle("hit", hit);
      if (hit && !first) first = node;
    }
    this.count();
    if (jump && first) { this.follow.checked = false; first.scrollIntoView({ block: "center" }); }
  }

  count() {
    const q = this.search.value.trim();
    $("#log-hits").textContent = q ? `${$$(".ln.hit", this.box).length} matching lines` : "";
  }
}

// -- files, code, usage -------------------------------------------------------------------------

async function files() {
  let list;
  try { list = await api(`/api/v1/experiments/${exp.id}/artifacts`); } catch { return; }
  const box = $("#files");
  if (!list.length) { clear(box, h("p", { class: "muted" }, TERMINAL.has(exp.status) ? "No output files." : "None yet.")); return; }
  clear(box, h("table", { class: "data files" },
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "File"), h("th", { scope: "col" }, "Kind"), h("th", { scope: "col", class: "num" }, "Size"))),
    h("tbody", {}, list.map((f) => {
      const url = `/api/v1/experiments/${exp.id}/artifacts/${f.name.split("/").map(encodeURIComponent).join("/")}`;
      return h("tr", {},
        h("td", {}, h("a", { href: url, download: f.name.split("/").pop() }, f.name),
          IMAGE.test(f.name) ? h("img", { src: url, alt: `Preview of ${f.name}`, loading: "lazy" }) : null),
        h("td", {}, f.kind), h("td", { class: "num" }, fmtBytes(f.size)));
    }))));
}

let codeShown = null;
async function codeSnapshot(digest) {
  if (codeShown === digest) return;
  codeShown = digest;
  let snap;
  try { snap = await optional(`/api/v1/code/${encodeURIComponent(digest)}`); } catch { return; }
  if (!snap) return;
  $("#code-box").hidden = false;
  const view = h("pre", { class: "code", tabindex: "0", "aria-label": "File content" });
  clear($("#code"), h("p", { class: "muted" }, `${snap.digest} · ${snap.file_count} files · ${fmtBytes(snap.unpacked_size)}`),
    h("ul", {}, snap.files.map((f) => h("li", {}, h("button", {
      type: "button", class: "linkish",
      onclick: async () => {
        const res = await fetch(`/api/v1/code/${encodeURIComponent(digest)}/files/${f.path.split("/").map(encodeURIComponent).join("/")}`);
        view.textContent = res.ok ? await res.text() : `(${res.status})`;
      },
    }, f.path), ` ${fmtBytes(f.size)}`))), view);
}

let usageSeen = new Map();
async function usage() {
  let data;
  try { data = await optional(`/api/v1/experiments/${exp.id}/usage`); } catch { return; }
  if (!data || !(data.samples || []).length) return;
  usageSeen = usageCharts($("#usage"), data.samples);
  $("#usage-box").hidden = usageSeen.size === 0;
}

function onUsage(ev) {
  $("#usage-box").hidden = false;
  appendUsage($("#usage"), usageSeen, ev.sample);
}

function onResults(ev) {
  const old = exp.results || {};
  const fresh = ev.results || {};
  exp.results = { ...old, ...fresh, _scores: { ...(old._scores || {}), ...(fresh._scores || {}) } };
  if (!Object.keys(exp.results._scores).length) delete exp.results._scores;
  renderResults(exp.results);
}

// -- live ---------------------------------------------------------------------------------------

function onExperiment(ev) {
  if (ev.type === "api.experiment.stop_requested") {
    extraTimeline.push(["Stop requested", ev.occurred_at]);
    renderRecord();
    return;
  }
  if (ev.type === "scheduler.experiment.assigned") extraTimeline.push([`Assigned to ${ev.agent_id}`, ev.occurred_at]);
  if (!ev.status) return;
  exp.status = ev.status;
  if (ev.reason !== undefined) exp.status_reason = ev.reason;
  if (ev.agent_id) exp.agent_id = ev.agent_id;
  if (ev.exit_code !== undefined && ev.exit_code !== null) exp.exit_code = ev.exit_code;
  if (ev.status === "running" && !exp.started_at) exp.started_at = ev.occurred_at;
  if (TERMINAL.has(ev.status) && !exp.finished_at) exp.finished_at = ev.occurred_at;
  renderRecord();
  if (TERMINAL.has(ev.status)) settle(ev.status).then(files).then(usage);
  if (ev.type === "scheduler.experiment.lost" && ev.status === "queued") settle("queued");
}

async function main() {
  try { await reload(); } catch (err) { showError("#page-error", err); return; }
  actions();
  notes();
  const log = new LogView();
  let started = false;
  live({
    experiment: onExperiment,
    metrics: onMetrics,
    results: onResults,
    usage: onUsage,
    resync: () => { reload(); metrics(); },
    ready: () => {
      // Read again once subscribed, and once more when the API has surely applied an event
      // published just before the subscription: a change in between is not missed.
      reload().catch(() => {});
      setTimeout(() => reload().catch(() => {}), 2000);
      if (started) return;
      started = true;
      metrics();
      log.open();
    },
  }, { experiment: exp.id });
  files();
  usage();
}

main();
