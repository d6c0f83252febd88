// Project: the new-experiment form generated from the schema, the run spec, a sweep form, and
// the project's experiments.
import { $, $$, api, ApiError, clear, fmtValue, h, live, optional, showError } from "./lib.js";
import { ExperimentTable } from "./table.js";

const ref = document.body.dataset.ref;

// One labelled input per option: int/float as numbers, bool as a toggle, string as text,
// enum as a select. Each returns {node, read()} where read() gives [value, error].
export function optionField(key, spec, prefix = "opt") {
  const id = `${prefix}-${key}`;
  const error = h("p", { class: "error", id: `${id}-error`, "data-error-for": `options.${key}`, "aria-live": "polite" });
  const described = { "aria-describedby": `${id}-error` };
  const hasDefault = spec.default !== undefined && spec.default !== null;
  let input;
  let read;
  if (spec.type === "bool") {
    input = h("input", { type: "checkbox", id, name: key, role: "switch", checked: spec.default === true, ...described });
    const label = h("label", { class: "toggle", for: id }, input, h("span", {}, key));
    read = () => [input.checked, null];
    return { node: h("div", { class: "field", "data-option": key }, label, error), read, input, error };
  }
  if (spec.type === "enum") {
    input = h("select", { id, name: key, ...described },
      hasDefault ? null : h("option", { value: "" }, "— choose —"),
      spec.values.map((v, i) => h("option", { value: String(i), selected: hasDefault && v === spec.default }, fmtValue(v))));
    read = () => (input.value === "" ? [undefined, "required: choose a value"] : [spec.values[Number(input.value)], null]);
  } else if (spec.type === "int" || spec.type === "float") {
    input = h("input", {
      type: "number", id, name: key, step: spec.type === "int" ? "1" : "any", inputmode: spec.type === "int" ? "numeric" : "decimal",
      value: hasDefault ? String(spec.default) : undefined, required: !hasDefault, ...described,
    });
    read = () => {
      if (input.validity.badInput) return [undefined, `must be ${spec.type === "int" ? "an integer" : "a number"}`];
      if (input.value.trim() === "") return hasDefault ? [undefined, null] : [undefined, "required: the option has no default"];
      if (input.validity.stepMismatch) return [undefined, "must be an integer"];
      return [Number(input.value), null];
    };
  } else {
    input = h("input", { type: "text", id, name: key, value: hasDefault ? String(spec.default) : undefined, required: !hasDefault, autocomplete: "off", ...described });
    read = () => (input.value === "" ? (hasDefault ? [undefined, null] : [undefined, "required: the option has no default"]) : [input.value, null]);
  }
  const label = h("label", { for: id }, key, h("span", { class: "muted" }, ` (${spec.type}${hasDefault ? `, default ${fmtValue(spec.default)}` : ""})`));
  return { node: h("div", { class: "field", "data-option": key }, label, input, error), read, input, error };
}

function runForm(project) {
  const form = $("#run-form");
  const fields = Object.entries(project.schema || {}).map(([key, spec]) => [key, optionField(key, spec)]);
  clear($("#run-fields"), fields.length ? fields.map(([, f]) => f.node) : h("p", { class: "muted" }, "This project has no options."));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    for (const p of $$(".error, .ok", form)) p.textContent = "";
    for (const i of $$("[aria-invalid]", form)) i.removeAttribute("aria-invalid");
    const options = {};
    let firstBad = null;
    for (const [key, f] of fields) {
      const [value, error] = f.read();
      if (error) {
        f.error.textContent = error;
        f.input.setAttribute("aria-invalid", "true");
        firstBad = firstBad || f.input;
      } else if (value !== undefined) options[key] = value;
    }
    if (firstBad) { firstBad.focus(); return; }
    const body = { project: project.name, options };
    if (form.__name.value.trim()) body.name = form.__name.value.trim();
    const tags = form.__tags.value.split(",").map((t) => t.trim()).filter(Boolean);
    if (tags.length) body.tags = tags;
    try {
      const experiment = await api("/api/v1/experiments", { method: "POST", body });
      clear($("#run-ok"), "Submitted ", h("a", { href: `/experiments/${experiment.id}` }, experiment.name || experiment.id), ".");
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      let shown = false;
      for (const [field, why] of Object.entries(err.fields)) {
        const slot = form.querySelector(`[data-error-for="${CSS.escape(field)}"]`);
        if (slot) {
          slot.textContent = why;
          const input = slot.parentElement.querySelector("input, select");
          if (input) { input.setAttribute("aria-invalid", "true"); if (!shown) input.focus(); }
          shown = true;
        }
      }
      if (!shown || Object.keys(err.fields).length === 0) $("#run-error").textContent = err.message;
    }
  });
}

function runSpec(project) {
  const show = (k, v) => [h("dt", {}, k), h("dd", {}, v)];
  const r = project.resources || {};
  clear($("#spec"),
    show("Command", project.command && project.command.length ? project.command.join(" ") : "the agents' own (FGMachine)"),
    show("Options passed as", `${project.option_style}, booleans ${project.boolean}`),
    project.labels && project.labels.length ? show("Agent labels", project.labels.join(", ")) : null,
    Object.keys(r).length ? show("Resources", Object.entries(r).filter(([, v]) => v !== null && v !== undefined).map(([k, v]) => `${k} ${fmtValue(v)}`).join(", ")) : null,
    project.capacity ? show("Capacity", String(project.capacity)) : null,
    project.timeout_s ? show("Timeout", `${project.timeout_s} s`) : null,
    show("Retries", String(project.max_retries)),
    project.workers > 1 ? show("Workers", String(project.workers)) : null,
    project.image ? show("Image", project.image) : null,
    project.code ? show("Code", project.code) : null,
    (project.inputs || []).length ? show("Inputs", project.inputs.map((i) => i.name).join(", ")) : null,
    Object.keys(project.env || {}).length ? show("Environment", Object.keys(project.env).join(", ")) : null);
}

function parseList(spec, text) {
  return text.split(",").map((s) => s.trim()).filter((s) => s !== "").map((s) => {
    if (spec.type === "int" || spec.type === "float") return Number(s);
    if (spec.type === "bool") return s === "true";
    if (spec.type === "enum") { const hit = spec.values.find((v) => String(v) === s); return hit === undefined ? s : hit; }
    return s;
  });
}

function sweepForm(project) {
  const box = $("#sweep-box");
  box.hidden = false;
  const rows = Object.entries(project.schema || {}).map(([key, spec]) => {
    const numeric = spec.type === "int" || spec.type === "float";
    const mode = numeric ? h("select", { "aria-label": `${key}: values or range` }, h("option", { value: "list" }, "values"), h("option", { value: "range" }, "range")) : null;
    const list = h("input", { "aria-label": `${key}: values, comma-separated`, placeholder: spec.type === "enum" ? spec.values.join(", ") : "comma-separated", size: 14 });
    const min = h("input", { type: "number", step: "any", "aria-label": `${key}: min`, placeholder: "min", size: 6 });
    const max = h("input", { type: "number", step: "any", "aria-label": `${key}: max`, placeholder: "max", size: 6 });
    const steps = h("input", { type: "number", min: 1, "aria-label": `${key}: steps`, placeholder: "steps", size: 4 });
    const scale = h("select", { "aria-label": `${key}: scale` }, h("option", {}, "linear"), h("option", {}, "log"));
    const range = h("span", { hidden: true }, min, max, steps, scale);
    if (mode) mode.addEventListener("change", () => { range.hidden = mode.value !== "range"; list.hidden = mode.value === "range"; });
    const error = h("p", { class: "error", "data-error-for": `parameters.${key}` });
    const node = h("fieldset", { class: "row" }, h("legend", {}, `${key} (${spec.type})`), mode, list, range, error);
    const read = () => {
      if (mode && mode.value === "range") {
        if (min.value === "" || max.value === "") return undefined;
        const r = { min: Number(min.value), max: Number(max.value), scale: scale.value };
        if (steps.value) r.steps = Number(steps.value);
        return r;
      }
      const values = parseList(spec, list.value);
      return values.length ? values : undefined;
    };
    return [key, read, node];
  });
  clear($("#sweep-fields"), h("p", { class: "muted" }, "Per option: a list of values, or a range; options left empty keep their default."),
    rows.map((r) => r[2]));
  const form = $("#sweep-form");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    for (const p of $$(".error", form)) p.textContent = "";
    const parameters = {};
    for (const [key, read] of rows) { const v = read(); if (v !== undefined) parameters[key] = v; }
    const body = { project: project.name, method: form.method.value, parameters, goal: form.goal.value };
    if (form.count.value) body.count = Number(form.count.value);
    if (form.parallelism.value) body.parallelism = Number(form.parallelism.value);
    if (form.metric.value.trim()) body.metric = form.metric.value.trim();
    try {
      const sweep = await api("/api/v1/sweeps", { method: "POST", body });
      location.href = `/sweeps/${sweep.id}`;
    } catch (err) {
      $("#sweep-error").textContent = err.message;
      for (const [field, why] of Object.entries(err.fields || {})) {
        const slot = form.querySelector(`[data-error-for="${CSS.escape(field)}"]`);
        if (slot) slot.textContent = why;
      }
    }
  });
}

async function main() {
  let project;
  try {
    project = await api(`/api/v1/projects/${encodeURIComponent(ref)}`);
  } catch (err) {
    showError("#page-error", err);
    return;
  }
  $("#title").textContent = project.name;
  document.title = `${project.name} · Fleetlab`;
  runForm(project);
  runSpec(project);
  try {
    if ((await optional("/api/v1/sweeps?limit=1")) !== undefined) sweepForm(project);
  } catch { /* sweeps unavailable */ }
  const table = new ExperimentTable({ project: project.name, optionKeys: Object.keys(project.schema || {}) });
  await table.load();
  // Read again once subscribed: nothing that happened in between is missed.
  live({
    experiment: (ev) => table.onEvent(ev),
    scores: (ev) => table.onScores(ev),
    resync: () => table.reload(),
    ready: () => table.sync(),
  });
}

main();
