// Webhooks: endpoints, their deliveries with status, resend.
import { $, api, clear, fmtTime, h, showError, toast } from "./lib.js";

const EVENTS = ["experiment.submitted", "experiment.started", "experiment.finished", "experiment.stopped",
  "experiment.lost", "sweep.finished", "agent.online", "agent.offline"];

function createForm(reload) {
  const boxes = EVENTS.map((ev) => h("label", { class: "toggle" }, h("input", { type: "checkbox", value: ev, checked: ev === "experiment.finished" }), ev));
  const url = h("input", { id: "wh-url", type: "url", required: true, placeholder: "https://example.org/hook" });
  const error = h("p", { class: "error", "aria-live": "polite" });
  const form = h("form", { class: "form", novalidate: true },
    h("div", { class: "field" }, h("label", { for: "wh-url" }, "URL"), url),
    h("fieldset", { class: "row" }, h("legend", {}, "Events"), boxes),
    h("button", { type: "submit" }, "Add endpoint"), error);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    error.textContent = "";
    const events = boxes.map((b) => b.querySelector("input")).filter((i) => i.checked).map((i) => i.value);
    try {
      const hook = await api("/api/v1/webhooks", { method: "POST", body: { url: url.value.trim(), events } });
      if (hook.secret) toast(`Signing secret (shown once): ${hook.secret}`);
      reload();
    } catch (err) { error.textContent = err.message; }
  });
  return h("details", {}, h("summary", {}, "New endpoint"), form);
}

async function deliveries(hook) {
  const box = $("#deliveries");
  $("#deliveries-box").hidden = false;
  $("#del-h").textContent = `Deliveries to ${hook.url}`;
  let page;
  try { page = await api(`/api/v1/webhooks/${hook.id}/deliveries?limit=100`); } catch (err) { clear(box, h("p", { class: "error" }, err.message)); return; }
  if (!page.items.length) { clear(box, h("p", { class: "muted" }, "No deliveries yet.")); return; }
  clear(box, h("div", { class: "scroll" }, h("table", { class: "data", id: "deliveries-table" },
    h("thead", {}, h("tr", {}, ["Event", "State", "HTTP", "Attempts", "Last attempt", "Error", ""].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, page.items.map((d) => h("tr", { "data-id": d.id },
      h("td", {}, d.event_type), h("td", {}, h("span", { class: `status ${d.state === "succeeded" ? "succeeded" : d.state === "failed" ? "failed" : "queued"}` }, d.state)),
      h("td", {}, d.status_code ?? ""), h("td", { class: "num" }, d.attempts), h("td", {}, fmtTime(d.last_attempt_at)),
      h("td", {}, d.error || ""),
      h("td", {}, h("button", { type: "button", onclick: async () => {
        try { await api(`/api/v1/webhooks/${hook.id}/deliveries/${d.id}/resend`, { method: "POST" }); toast("Sent again."); deliveries(hook); } catch (err) { toast(err.message); }
      } }, "Resend"))))))));
}

async function main() {
  const box = $("#hook-list");
  let list;
  try { list = await api("/api/v1/webhooks"); } catch (err) { showError("#page-error", err); clear(box); return; }
  const hooks = list.items || [];
  clear(box,
    hooks.length ? h("table", { class: "data", id: "webhooks" },
      h("thead", {}, h("tr", {}, ["URL", "Events", "State", "Created", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, hooks.map((w) => h("tr", { "data-id": w.id },
        h("td", {}, w.url, w.kind === "fglab" ? h("span", { class: "muted" }, " (FGLab)") : null),
        h("td", {}, w.events.join(", ")),
        h("td", {}, w.paused ? `paused${w.paused_reason ? `: ${w.paused_reason}` : ""}` : w.failing_since ? `failing since ${fmtTime(w.failing_since)}` : "active"),
        h("td", {}, fmtTime(w.created_at)),
        h("td", {}, h("button", { type: "button", onclick: () => deliveries(w) }, "Deliveries"), " ",
          h("button", { type: "button", onclick: async () => {
            try { await api(`/api/v1/webhooks/${w.id}/${w.paused ? "resume" : "pause"}`, { method: "POST" }); main(); } catch (err) { toast(err.message); }
          } }, w.paused ? "Resume" : "Pause")))))) : h("p", {}, "No webhook endpoints yet."),
    createForm(main));
}

main();
