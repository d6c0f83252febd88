// One sweep: progress, best trial so far, the metric over trials, its trials.
import { $, api, Chart, clear, fmtTime, fmtValue, h, live, settled, showError } from "./lib.js";
import { progress } from "./sweeps.js";
import { ExperimentTable } from "./table.js";

const ref = document.body.dataset.ref;
let chart = null;

function valueOf(e, metric) {
  if (!metric) return null;
  const path = metric.includes(".") ? metric.split(".") : ["results", "_scores", metric];
  let v = e;
  for (const part of path) v = v && typeof v === "object" ? v[part] : undefined;
  return typeof v === "number" ? v : null;
}

async function trialsChart(s) {
  if (!s.metric || s.metric.startsWith("metrics.")) return;
  const page = await api(`/api/v1/experiments?sweep=${s.id}&sort=created_at&limit=1000`);
  const points = page.items.map((e, i) => [i + 1, valueOf(e, s.metric)]).filter((p) => p[1] !== null);
  if (!chart) chart = new Chart(clear($("#trial-chart")), s.metric, { xLabel: "trial" });
  chart.set([{ label: s.metric, points }]);
}

const TERMINAL = new Set(["succeeded", "failed", "stopped", "lost"]);
const ended = new Set(); // trials known to have ended (from the table and the events)
let chain = Promise.resolve(null);

// Read the sweep; after an event, until its count of ended trials has caught up with it.
function load() {
  chain = chain.then(async () => {
    try {
      const s = await settled(`/api/v1/sweeps/${encodeURIComponent(ref)}`, (x) => x.done >= ended.size);
      render(s);
      return s;
    } catch (err) { showError("#page-error", err); return null; }
  });
  return chain;
}

function render(s) {
  $("#title").textContent = `Sweep ${s.name || s.id.slice(0, 8)}`;
  $("#stop").hidden = s.status !== "running";
  clear($("#summary"),
    h("dt", {}, "Project"), h("dd", {}, h("a", { href: `/projects/${encodeURIComponent(s.project)}` }, s.project)),
    h("dt", {}, "Status"), h("dd", {}, h("span", { class: `status ${s.status}` }, s.status)),
    h("dt", {}, "Progress"), h("dd", {}, progress(s)),
    h("dt", {}, "Method"), h("dd", {}, `${s.method}${s.parallelism ? `, ${s.parallelism} at a time` : ""}${s.seed !== null ? `, seed ${s.seed}` : ""}`),
    h("dt", {}, "Parameters"), h("dd", {}, JSON.stringify(s.parameters)),
    h("dt", {}, "Best"), h("dd", {}, s.best ? [h("a", { href: `/experiments/${s.best.id}` }, s.best.name || s.best.id.slice(0, 8)), ` ${s.metric} = ${fmtValue(s.best_value)} (${s.goal})`] : "none yet"),
    h("dt", {}, "Created"), h("dd", {}, fmtTime(s.created_at)));
  trialsChart(s).catch(() => {});
}

async function main() {
  const s = await load();
  if (!s) return;
  $("#stop").addEventListener("click", async () => {
    try { await api(`/api/v1/sweeps/${s.id}/stop`, { method: "POST" }); await load(); } catch (err) { showError("#page-error", err); }
  });
  const table = new ExperimentTable({ sweep: s.id });
  await table.load();
  for (const e of table.rows) if (TERMINAL.has(e.status)) ended.add(e.id);
  live({
    experiment: async (ev) => {
      let trial = table.rows.some((e) => e.id === ev.experiment_id);
      if (!trial && ev.status) {
        try { trial = (await api(`/api/v1/experiments/${ev.experiment_id}`)).sweep_id === s.id; } catch { /* gone */ }
        if (trial && !table.rows.some((e) => e.id === ev.experiment_id)) table.reload();
      }
      table.onEvent(ev);
      if (!trial || !ev.status) return;
      if (TERMINAL.has(ev.status)) ended.add(ev.experiment_id);
      load();
    },
    // A trial's score can change the best one: read the sweep once the trial shows it.
    scores: async (ev) => { if (await table.onScores(ev)) load(); },
    resync: () => { table.reload(); load(); },
    ready: () => { table.sync(); load(); },
  });
}

main();
