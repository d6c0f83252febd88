// Sweeps: each with its progress and best trial so far.
import { $, api, clear, fmtTime, fmtValue, h, live, optional, showError } from "./lib.js";

export function progress(s) {
  const pct = s.count ? Math.round((100 * s.done) / s.count) : 0;
  return h("div", {},
    h("div", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": s.count, "aria-valuenow": s.done, "aria-label": "Trials ended" },
      h("span", { style: `width:${pct}%` })),
    h("span", { class: "muted" }, `${s.done} of ${s.count} trials ended · ` +
      Object.entries(s.counts || {}).filter(([, n]) => n).map(([k, n]) => `${n} ${k}`).join(", ")));
}

async function main() {
  const box = $("#sweep-list");
  let page;
  try { page = await optional("/api/v1/sweeps?limit=100"); } catch (err) { showError("#page-error", err); clear(box); return; }
  if (page === undefined) { clear(box, h("p", {}, "Sweeps are not available on this server.")); return; }
  if (!page.items.length) { clear(box, h("p", {}, "No sweeps yet. Start one from a project's page.")); return; }
  clear(box, h("table", { class: "data", id: "sweeps" },
    h("thead", {}, h("tr", {}, ["Sweep", "Project", "Status", "Progress", "Best", "Created"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, page.items.map((s) => h("tr", { "data-id": s.id },
      h("td", {}, h("a", { href: `/sweeps/${s.id}` }, s.name || s.id.slice(0, 8))),
      h("td", {}, h("a", { href: `/projects/${encodeURIComponent(s.project)}` }, s.project)),
      h("td", {}, h("span", { class: `status ${s.status}` }, s.status)),
      h("td", {}, progress(s)),
      h("td", {}, s.best ? [h("a", { href: `/experiments/${s.best.id}` }, s.best.name || s.best.id.slice(0, 8)), ` ${s.metric || ""} = ${fmtValue(s.best_value)}`] : "—"),
      h("td", {}, fmtTime(s.created_at)))))));
}

if (document.body.dataset.page === "sweeps") {
  main();
  live({ experiment: (ev) => { if (ev.status && ev.status !== "queued") main(); } });
}
