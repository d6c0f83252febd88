// Home: projects with counts by status, agents with a live online dot, latest experiments.
import { $, $$, api, ApiError, clear, fmtTime, h, live, statusBadge } from "./lib.js";
import { agentCard } from "./agents.js";

const agents = new Map();

async function loadAgents() {
  const box = $("#agents");
  try {
    const list = await api("/api/v1/agents");
    agents.clear();
    for (const a of list) agents.set(a.id, a);
    renderAgents();
  } catch (err) {
    clear(box, h("p", { class: "muted" }, `Agents are not available: ${err.message}`));
  }
}

function renderAgents() {
  const box = $("#agents");
  if (!agents.size) { clear(box, h("p", {}, "No agents yet. Start one with `fleetlab agent`.")); return; }
  clear(box, h("div", { class: "cards" }, [...agents.values()].map((a) => agentCard(a, { compact: true }))));
}

function onExperiment(ev) {
  const row = $(`#latest tr[data-id="${ev.experiment_id}"]`);
  if (row && ev.status) {
    const old = row.querySelector("[data-field=status]").textContent;
    row.querySelector("[data-field=status]").replaceWith(statusBadge(ev.status));
    if (ev.agent_id) row.querySelector("[data-field=agent_id]").textContent = ev.agent_id;
    bump(row.dataset.project, old, -1);
    bump(row.dataset.project, ev.status, +1);
  } else if (!row && ev.type === "api.experiment.submitted") {
    // The first experiment of all, or of a new project: the page has no row for it yet.
    const known = !ev.project || $(`#projects tr[data-project="${CSS.escape(ev.project)}"]`);
    if ((!$("#latest") || !known) && !$("details.newproject").open) location.reload();
    else addLatest(ev.experiment_id);
  }
}

function bump(project, status, by) {
  if (!project) return;
  const cell = $(`#projects tr[data-project="${CSS.escape(project)}"] td[data-status="${status}"]`);
  if (cell) cell.textContent = String(Math.max(0, Number(cell.textContent) + by));
}

async function addLatest(id) {
  const tbody = $("#latest tbody");
  if (!tbody) return;
  try {
    const e = await api(`/api/v1/experiments/${id}`);
    if ($(`#latest tr[data-id="${id}"]`)) return;
    tbody.prepend(h("tr", { "data-id": e.id, "data-project": e.project },
      h("td", {}, h("a", { href: `/experiments/${e.id}` }, e.name || e.id)),
      h("td", {}, h("a", { href: `/projects/${encodeURIComponent(e.project)}` }, e.project)),
      h("td", {}, statusBadge(e.status)),
      h("td", { "data-field": "agent_id" }, e.agent_id || ""),
      h("td", {}, h("time", { datetime: e.created_at }, fmtTime(e.created_at))),
      h("td", {}, h("a", { href: `/api/v1/experiments/${e.id}/logs` }, "log"))));
    bump(e.project, e.status, +1);
  } catch { /* deleted meanwhile */ }
}

function onAgent(ev) {
  const known = agents.get(ev.agent_id);
  if (!known) { loadAgents(); return; }
  Object.assign(known, { online: ev.online });
  if (ev.slots !== undefined) Object.assign(known, { slots: ev.slots, busy: ev.busy, running: ev.running });
  renderAgents();
}

function projectForm() {
  const form = $("#new-project");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    for (const p of $$(".error", form)) p.textContent = "";
    const body = { name: form.name.value.trim() };
    const command = form.command.value.split("\n").map((w) => w.trim()).filter(Boolean);
    if (command.length) body.command = command;
    if (form.schema.value.trim()) {
      try { body.schema = JSON.parse(form.schema.value); } catch (err) {
        $("#np-schema-error").textContent = `not valid JSON: ${err.message}`;
        form.schema.focus();
        return;
      }
    }
    try {
      const project = await api("/api/v1/projects", { method: "POST", body });
      location.href = `/projects/${encodeURIComponent(project.name)}`;
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      let shown = false;
      for (const [field, why] of Object.entries(err.fields)) {
        const top = field.split(".")[0];
        const slot = $(`#np-${top}-error`);
        if (slot) { slot.textContent = field === top ? why : `${field}: ${why}`; shown = true; }
      }
      if (!shown) $("#np-error").textContent = err.message;
    }
  });
}

for (const row of $$("#latest tbody tr")) row.dataset.project = row.children[1].textContent.trim();
// The server writes UTC; show the viewer's local time, as the other pages do.
for (const t of $$("#latest time[datetime]")) t.textContent = fmtTime(t.getAttribute("datetime"));
projectForm();
loadAgents();
live({ experiment: onExperiment, agent: onAgent, resync: () => location.reload(), ready: loadAgents });
