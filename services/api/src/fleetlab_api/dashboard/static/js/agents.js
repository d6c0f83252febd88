// Agents: hardware, labels, capacity in use, running experiments, drain; live from the events.
import { $, api, appendUsage, clear, fmtBytes, fmtTime, h, live, optional, showError, usageCharts } from "./lib.js";

export function agentCard(a, { compact = false, onDrain } = {}) {
  const hw = a.hardware || {};
  const gpus = (hw.gpus || []).map((g) => `${g.name} (${fmtBytes(g.memory_mb * 1024 * 1024)})`);
  const used = a.slots ? Math.min(100, Math.round((100 * a.busy) / a.slots)) : 0;
  const state = a.online ? (a.draining ? "online, draining" : "online") : "offline";
  const card = h("article", { class: "card", "data-agent": a.id },
    h(compact ? "h3" : "h2", {},
      h("span", { class: `dot${a.online ? " online" : ""}`, "aria-hidden": "true" }),
      a.id, h("span", { class: "sr" }, ` (${state})`)),
    h("p", { class: "muted" }, `${state} · ${a.busy} of ${a.slots} slots in use`),
    h("div", { class: "bar", role: "img", "aria-label": `${used}% of capacity in use` }, h("span", { style: `width:${used}%` })),
    h("dl", { class: "kv" },
      h("dt", {}, "Host"), h("dd", {}, hw.hostname || a.hostname || ""),
      h("dt", {}, "CPU"), h("dd", {}, `${hw.cpu_count || "?"} × ${hw.cpu_model || "CPU"}`),
      h("dt", {}, "Memory"), h("dd", {}, hw.memory_mb ? fmtBytes(hw.memory_mb * 1024 * 1024) : ""),
      gpus.length ? [h("dt", {}, "GPUs"), h("dd", {}, gpus.join(", "))] : null,
      compact ? null : [h("dt", {}, "OS"), h("dd", {}, hw.os || ""), h("dt", {}, "Last seen"), h("dd", {}, fmtTime(a.last_seen))]),
    (a.labels || []).length ? h("p", { class: "labels" }, a.labels.map((l) => h("span", {}, l))) : null);
  if (!compact) {
    const running = a.running || [];
    card.append(h("p", {}, running.length ? "Running: " : "Running nothing.",
      running.map((id, i) => [i ? ", " : "", h("a", { href: `/experiments/${id}` }, id.slice(0, 8))])));
    card.append(h("button", {
      type: "button", "data-drain": a.id,
      onclick: () => onDrain && onDrain(a, !a.draining),
    }, a.draining ? "Resume (undrain)" : "Drain"));
    card.append(h("div", { class: "usage charts", "data-usage": a.id }));
  }
  return card;
}

const usageByAgent = new Map(); // agent id -> {box, charts}

async function usage(a) {
  const box = document.querySelector(`[data-usage="${CSS.escape(a.id)}"]`);
  if (!box) return;
  let data;
  try { data = await optional(`/api/v1/agents/${encodeURIComponent(a.id)}/usage?points=200`); } catch { return; }
  if (data && (data.samples || []).length && box.isConnected) {
    usageByAgent.set(a.id, { box, charts: usageCharts(box, data.samples) });
  }
}

function onUsage(ev) {
  const known = usageByAgent.get(ev.agent_id);
  if (known && known.box.isConnected) appendUsage(known.box, known.charts, ev.sample);
}

async function page() {
  const box = $("#agent-list");
  const agents = new Map();
  const render = () => {
    if (!agents.size) { clear(box, h("p", {}, "No agents yet. Start one with `fleetlab agent`.")); return; }
    clear(box, [...agents.values()].map((a) => agentCard(a, { onDrain: drain })));
    for (const a of agents.values()) usage(a);
  };
  const load = async () => {
    try {
      agents.clear();
      for (const a of await api("/api/v1/agents")) agents.set(a.id, a);
      showError("#page-error", null);
      render();
    } catch (err) { showError("#page-error", err); clear(box); }
  };
  async function drain(a, draining) {
    try {
      const updated = await api(`/api/v1/agents/${encodeURIComponent(a.id)}/drain`, { method: "POST", body: { draining } });
      agents.set(a.id, updated);
      render();
    } catch (err) { showError("#page-error", err); }
  }
  await load();
  live({
    ready: load,
    resync: load,
    usage: onUsage,
    agent: (ev) => {
      const a = agents.get(ev.agent_id);
      if (!a) { load(); return; }
      a.online = ev.online;
      if (ev.slots !== undefined) Object.assign(a, { slots: ev.slots, busy: ev.busy, running: ev.running });
      const old = document.querySelector(`[data-agent="${CSS.escape(a.id)}"]`);
      if (old) old.replaceWith(agentCard(a, { onDrain: drain }));
      usage(a);
    },
  });
}

if (document.body.dataset.page === "agents") page();
