// The experiments table: sortable by any column (option, score, metric), filters, editable
// notes, multi-select to compare, CSV export, keyset paging ("Load more" follows `next`),
// statuses kept live from the event stream.
import { $, $$, api, ApiError, clear, debounce, fmtTime, fmtValue, h, settled, statusBadge, toast } from "./lib.js";

const PAGE = 50;

export class ExperimentTable {
  constructor({ project = null, sweep = null, optionKeys = [] } = {}) {
    this.root = $("#exp-table");
    this.table = $("#experiments");
    this.filters = $("#filters");
    this.project = project;
    this.optionKeys = optionKeys;
    this.scoreKeys = [];
    this.rows = [];
    this.next = null;
    this.selected = new Set();
    const params = new URLSearchParams(location.search);
    for (const key of ["status", "tag", "sweep", "sort"]) {
      if (params.get(key)) this.filters[key].value = params.get(key);
    }
    if (sweep) { this.filters.sweep.value = sweep; this.filters.sweep.closest("label").hidden = true; }
    this.filters.addEventListener("submit", (e) => { e.preventDefault(); this.reload(true); });
    this.filters.status.addEventListener("change", () => this.reload(true));
    $("#more").addEventListener("click", () => this.load());
    $("#compare").addEventListener("click", () => {
      location.href = `/compare?ids=${[...this.selected].join(",")}`;
    });
  }

  query(extra = {}) {
    const q = new URLSearchParams();
    if (this.project) q.set("project", this.project);
    for (const key of ["status", "tag", "sweep", "sort"]) {
      const v = this.filters[key].value.trim();
      if (v) q.set(key, v);
    }
    for (const [k, v] of Object.entries(extra)) q.set(k, v);
    return q;
  }

  async reload(pushState = false) {
    if (pushState) {
      const q = this.query();
      q.delete("project");
      history.replaceState(null, "", `${location.pathname}${q.toString() ? "?" + q : ""}`);
    }
    this.rows = [];
    this.next = null;
    this.generation = (this.generation || 0) + 1;
    if (pushState) this.selected.clear();
    await this.load();
  }

  async load() {
    const q = this.query({ limit: String(PAGE) });
    if (this.next) q.set("cursor", this.next);
    const exportQ = this.query({ format: "csv" });
    $("#export").href = `/api/v1/experiments/export?${exportQ}`;
    const generation = this.generation;
    try {
      const page = await api(`/api/v1/experiments?${q}`);
      if (generation !== this.generation) return; // a reload started meanwhile
      $("#table-error").textContent = "";
      const have = new Set(this.rows.map((e) => e.id));
      this.rows.push(...page.items.filter((e) => !have.has(e.id)));
      this.next = page.next;
      this.render();
      await this.loadMetrics(page.items);
    } catch (err) {
      $("#table-error").textContent = err.message;
      const field = err instanceof ApiError && Object.keys(err.fields)[0];
      if (field && this.filters[field]) this.filters[field].setAttribute("aria-invalid", "true");
    }
  }

  // Each row's metrics (last value), one request per page; the table works without them.
  async loadMetrics(items) {
    this.metrics = this.metrics || new Map();
    const ids = items.map((e) => e.id).filter((id) => !this.metrics.has(id));
    if (!ids.length) return;
    try {
      const all = await api(`/api/v1/metrics/compare?experiments=${ids.join(",")}&points=1`);
      for (const m of all) this.metrics.set(m.experiment_id, Object.fromEntries(m.summary.map((x) => [x.name, x])));
      this.render();
    } catch { /* metrics unavailable: options and scores still sort */ }
  }

  metric(e, name) {
    const m = this.metrics && this.metrics.get(e.id);
    return m && m[name] ? m[name].last : undefined;
  }

  columns() {
    const optionKeys = new Set(this.optionKeys);
    const scoreKeys = new Set();
    const metricKeys = new Set();
    for (const m of (this.metrics || new Map()).values()) for (const k of Object.keys(m)) metricKeys.add(k);
    for (const e of this.rows) {
      for (const k of Object.keys(e.options || {})) optionKeys.add(k);
      for (const k of Object.keys((e.results || {})._scores || {})) scoreKeys.add(k);
    }
    const list = $("#sort-keys");
    clear(list, ["created_at", "name", "status", "agent_id", "finished_at",
      ...[...optionKeys].map((k) => `options.${k}`),
      ...[...scoreKeys].map((k) => `results._scores.${k}`),
      ...[...metricKeys].map((k) => `metrics.${k}`)].flatMap((k) => [h("option", { value: k }), h("option", { value: `-${k}` })]));
    return [
      { key: "name", label: "Experiment", cell: (e) => h("a", { href: `/experiments/${e.id}` }, e.name || e.id.slice(0, 8)) },
      this.project ? null : { key: "project", label: "Project", cell: (e) => h("a", { href: `/projects/${encodeURIComponent(e.project)}` }, e.project) },
      { key: "status", label: "Status", cell: (e) => statusBadge(e.status) },
      ...[...optionKeys].map((k) => ({ key: `options.${k}`, label: k, num: true, cell: (e) => fmtValue((e.options || {})[k]) })),
      ...[...scoreKeys].map((k) => ({ key: `results._scores.${k}`, label: `★ ${k}`, num: true, cell: (e) => fmtValue(((e.results || {})._scores || {})[k]) })),
      ...[...metricKeys].sort().map((k) => ({ key: `metrics.${k}`, label: `${k} (last)`, num: true, cell: (e) => fmtValue(this.metric(e, k)) })),
      { key: "agent_id", label: "Agent", cell: (e) => e.agent_id || "" },
      { key: "created_at", label: "Created", cell: (e) => h("time", { datetime: e.created_at }, fmtTime(e.created_at)) },
      { key: null, label: "Notes", cell: (e) => this.notesCell(e) },
    ].filter(Boolean);
  }

  notesCell(e) {
    const area = h("textarea", { rows: 1, "aria-label": `Notes of ${e.name || e.id}`, "data-notes": e.id }, e.notes || "");
    const save = debounce(async () => {
      try {
        await api(`/api/v1/experiments/${e.id}`, { method: "PATCH", body: { notes: area.value } });
        e.notes = area.value;
        area.removeAttribute("aria-invalid");
      } catch (err) { area.setAttribute("aria-invalid", "true"); toast(`Notes not saved: ${err.message}`); }
    }, 400);
    area.addEventListener("input", () => { e.notes = area.value; save(); });
    area.addEventListener("blur", () => save.flush());
    return h("div", { class: "notes-cell" }, area);
  }

  render() {
    // Typing in a notes cell survives a re-render (an event, a page of metrics).
    const active = document.activeElement;
    const typing = active && active.dataset && active.dataset.notes;
    const caret = typing ? [active.selectionStart, active.selectionEnd] : null;
    const cols = this.columns();
    const sort = this.filters.sort.value.trim();
    const head = h("tr", {},
      h("th", { scope: "col" }, h("span", { class: "sr" }, "Select")),
      cols.map((c) => {
        if (!c.key) return h("th", { scope: "col" }, c.label);
        const dir = sort === c.key ? "ascending" : sort === `-${c.key}` ? "descending" : null;
        return h("th", { scope: "col", "aria-sort": dir || undefined, class: c.num ? "num" : undefined },
          h("button", {
            type: "button", "data-sort": c.key,
            onclick: () => { this.filters.sort.value = sort === c.key ? `-${c.key}` : c.key; this.reload(true); },
          }, c.label, dir === "ascending" ? " ▲" : dir === "descending" ? " ▼" : ""));
      }));
    clear(this.table.tHead, head);
    const body = this.table.tBodies[0];
    clear(body, this.rows.map((e) => this.row(e, cols)));
    $("#more").hidden = !this.next;
    $("#count").textContent = `${this.rows.length} shown${this.next ? ", more to load" : ""}`;
    this.updateCompare();
    if (!this.rows.length) body.append(h("tr", {}, h("td", { colspan: cols.length + 1 }, "No experiments match.")));
    if (typing) {
      const area = this.table.querySelector(`textarea[data-notes="${typing}"]`);
      if (area) { area.focus(); area.setSelectionRange(...caret); }
    }
  }

  row(e, cols) {
    const box = h("input", {
      type: "checkbox", "aria-label": `Select ${e.name || e.id}`, value: e.id, checked: this.selected.has(e.id),
      onchange: (ev) => { ev.target.checked ? this.selected.add(e.id) : this.selected.delete(e.id); this.updateCompare(); },
    });
    return h("tr", { "data-id": e.id }, h("td", {}, box),
      cols.map((c) => h("td", { class: c.num ? "num" : undefined, "data-col": c.key || "notes" }, c.cell(e))));
  }

  updateCompare() {
    const button = $("#compare");
    button.disabled = this.selected.size < 2;
    button.textContent = `Compare selected (${this.selected.size})`;
  }

  // An event from /api/v1/events.
  async onEvent(ev) {
    const row = this.table.querySelector(`tr[data-id="${ev.experiment_id}"]`);
    const known = this.rows.find((e) => e.id === ev.experiment_id);
    if (known && ev.status) {
      known.status = ev.status;
      if (ev.agent_id) known.agent_id = ev.agent_id;
      if (row) {
        row.querySelector("[data-field=status]").replaceWith(statusBadge(ev.status));
        const agent = row.querySelector('[data-col="agent_id"]');
        if (agent && ev.agent_id) agent.textContent = ev.agent_id;
      }
      if (["agent.experiment.finished", "scheduler.experiment.cancelled", "scheduler.experiment.lost"].includes(ev.type)) {
        this.refresh(ev.experiment_id, ev.status);
      }
    } else if (!known && ev.type === "api.experiment.submitted" && !this.filters.sort.value.trim()
               && (!this.project || ev.project === this.project)) {
      try {
        const e = await api(`/api/v1/experiments/${ev.experiment_id}`);
        if (this.rows.some((x) => x.id === e.id)) return;
        if (this.filters.status.value && e.status !== this.filters.status.value) return;
        if (this.filters.tag.value && !e.tags.includes(this.filters.tag.value)) return;
        if (this.filters.sweep.value && e.sweep_id !== this.filters.sweep.value) return;
        this.rows.unshift(e);
        this.render();
      } catch { /* deleted meanwhile */ }
    }
  }

  // Once the event stream is subscribed: what changed before it, on the first page, without
  // losing the pages already loaded.
  async sync() {
    const generation = this.generation;
    try {
      const page = await api(`/api/v1/experiments?${this.query({ limit: String(PAGE) })}`);
      if (generation !== this.generation) return;
      if (!this.rows.length) {
        this.rows = page.items;
        this.next = page.next;
      } else {
        const byId = new Map(this.rows.map((e, i) => [e.id, i]));
        const newest = this.rows[0].created_at;
        const fresh = [];
        for (const e of page.items) {
          if (byId.has(e.id)) this.rows[byId.get(e.id)] = e;
          else if (!this.filters.sort.value.trim() && e.created_at >= newest) fresh.push(e);
        }
        this.rows.unshift(...fresh);
      }
      this.render();
    } catch { /* the table stays as it was */ }
  }

  // New scores of a row: its record, once the API holds them.
  async onScores(ev) {
    if (!this.rows.some((x) => x.id === ev.experiment_id)) return;
    const has = (e) => Object.keys(ev.scores).every((k) => k in ((e.results || {})._scores || {}));
    try {
      const e = await settled(`/api/v1/experiments/${ev.experiment_id}`, has);
      const i = this.rows.findIndex((x) => x.id === e.id);
      if (i >= 0) { this.rows[i] = e; this.render(); }
      return e;
    } catch { return null; }
  }

  // Scores arrive with the end: read the record again (a moment later it holds them).
  async refresh(id, status) {
    try {
      const e = await settled(`/api/v1/experiments/${id}`, (x) => x.status === status);
      const i = this.rows.findIndex((x) => x.id === id);
      if (i >= 0 && $$("textarea:focus", this.table).length === 0) {
        this.rows[i] = { ...e, status: this.rows[i].status };
        this.render();
      }
    } catch { /* gone */ }
  }
}
