// @ts-check
// Pipelines (the pipeline API, /v1/pipelines): start one from a form with the presets, follow
// each step's progress, open a step's job in the jobs table below, cancel, resume, report.
import {
  api,
  byId,
  el,
  emit,
  input,
  isAbort,
  Latest,
  on,
  pollMs,
  select,
  showError,
  table,
  textarea,
} from "./console.js";
import { progressBar, when } from "./draw.js";
import { categories, detectorFamilies, formDefaults, methods, openBlob } from "./lookups.js";
import { offerSets } from "./pipeline-sets.js";

/** @typedef {import("./lookups.js").PipelineRecord} PipelineRecord */
/** @typedef {import("./lookups.js").PipelineSummary} PipelineSummary */
/** @typedef {import("@api/pipeline").components["schemas"]["PipelineRequest"]} PipelineRequest */
/** @typedef {import("@api/pipeline").components["schemas"]["LabelledSet"]} LabelledSet */
/** @typedef {import("@api/pipeline").components["schemas"]["StepRecord"]} StepRecord */

const ACTIVE = new Set(["RUNNING"]);
/** @type {string | null} */
let selected = null;
/** @type {PipelineSummary[]} */
let pipelines = [];
const polling = new Latest(); // a poll the user asked for supersedes the one in flight
const showing = new Latest(); // so does the detail of a newer selection

// The pipeline's `maps` values besides auto (the default) and provided (needs maps_prefix).
const PIPELINE_MAPS = ["kead", "tocoad"];

/**
 * The request the form describes; choices are typed as the schema's (the options come from
 * the APIs that publish them).
 * @returns {PipelineRequest}
 */
function request() {
  /** @type {PipelineRequest} */
  const body = {
    name: input("pl-name").value.trim(),
    category: select("pl-category").value,
    unlabelled_prefix: input("pl-unlabelled").value.trim(),
    labelled: {
      prefix: input("pl-labelled").value.trim(),
      format: /** @type {LabelledSet["format"]} */ (select("pl-format").value),
    },
    maps: /** @type {PipelineRequest["maps"]} */ (select("pl-maps").value),
    baseline: input("pl-baseline").checked,
  };
  const preset = select("pl-preset").value;
  const promote = select("pl-promote").value;
  const detector = select("pl-detector").value;
  if (preset) body.preset = /** @type {PipelineRequest["preset"]} */ (preset);
  if (promote) body.promote = /** @type {PipelineRequest["promote"]} */ (promote);
  if (detector) body.detector = /** @type {PipelineRequest["detector"]} */ (detector);
  return body;
}

function syncBody() {
  textarea("pl-body").value = JSON.stringify(request(), null, 2);
}

// Every choice from the APIs that publish it: categories, presets (pipeline /v1/presets),
// map methods (anomaly_map /readyz), detector families; prefixes and format from
// formDefaults (the newest pipeline, else the demo's uploads).
async function loadForm() {
  const [items, found] = await Promise.all([categories().catch(() => []), formDefaults()]);
  const names = items.map((c) => c.name);
  select("pl-category").replaceChildren(...names.map((n) => el("option", { value: n, text: n })));
  if (names.includes(found.category)) select("pl-category").value = found.category;
  input("pl-unlabelled").value = found.unlabelled;
  input("pl-labelled").value = found.labelled;
  select("pl-format").value = found.format || "auto";
  byId("pl-defaults").textContent = found.source === "none" ? "" : `prefixes from ${found.source}`;
  await Promise.all([fillDetectors(), fillPresets(), fillMaps()]);
  syncBody();
}

async function fillPresets() {
  try {
    /** @type {Record<string, unknown>} */
    const presets = await api("pipeline", "v1/presets");
    const names = Object.keys(presets);
    select("pl-preset").replaceChildren(...names.map((n) => el("option", { value: n, text: n })));
    if (names.includes("cpu-demo")) select("pl-preset").value = "cpu-demo";
    byId("pl-presets").textContent = JSON.stringify(presets, null, 2);
  } catch (err) {
    byId("pl-presets").textContent = `presets unavailable: ${err instanceof Error ? err.message : err}`;
  }
}

// auto: KeAD when the anomaly-map service says it is ready, else ToCoAD (the pipeline's
// own rule); the label says which it is now.
async function fillMaps() {
  const found = (await methods().catch(() => [])).filter((m) => PIPELINE_MAPS.includes(m.name));
  const kead = found.find((m) => m.name === "kead");
  const now = found.length ? (kead?.ready ? "KeAD" : "ToCoAD") : "";
  const auto = el("option", { value: "auto", text: now ? `auto (now ${now})` : "auto" });
  const options = found.map((m) =>
    el("option", { value: m.name, text: m.ready ? m.label : `${m.label} (not ready)`, title: m.reason }),
  );
  select("pl-maps").replaceChildren(auto, ...options);
}

// The finetune service's families; without an answer the select stays empty and the
// request leaves `detector` out (the pipeline's default family).
async function fillDetectors() {
  /** @type {Awaited<ReturnType<typeof detectorFamilies>>} */
  const none = { default: "", items: [] };
  const families = await detectorFamilies().catch(() => none);
  const options = families.items.map((f) => el("option", { value: f.name, text: f.label, title: f.summary }));
  select("pl-detector").replaceChildren(...options);
  if (families.default) select("pl-detector").value = families.default;
}

/** @param {SubmitEvent} event */
async function start(event) {
  event.preventDefault();
  showError("pipeline-error", null);
  let body;
  try {
    body = JSON.parse(textarea("pl-body").value);
  } catch (err) {
    return showError("pipeline-error", { code: "bad_json", detail: err instanceof Error ? err.message : String(err) });
  }
  try {
    /** @type {PipelineRecord} */
    const record = await api("pipeline", "v1/pipelines", { method: "POST", json: body });
    selected = record.id;
    await poll();
  } catch (err) {
    showError("pipeline-error", err);
  }
}

/**
 * @param {string} id
 * @param {"cancel" | "resume"} action
 */
async function act(id, action) {
  try {
    await api("pipeline", `v1/pipelines/${id}/${action}`, { method: "POST" });
    await poll();
  } catch (err) {
    showError("pipeline-error", err);
  }
}

/** @param {StepRecord} step */
function stepRow(step) {
  const id = step.job_id;
  const job = id ? el("a", { href: "#job-detail", text: id, onclick: () => emit("console:select-job", id) }) : "";
  const message = step.error
    ? el("span", { class: "error-inline" }, el("code", { text: step.error_code || "error" }), " ", step.error)
    : step.message;
  const state = step.state || "";
  return el(
    "tr",
    { class: "step", dataset: { step: step.name, state, progress: String(step.progress) } },
    el("td", { text: step.name }),
    el("td", { text: step.service }),
    el("td", {}, el("span", { class: `state ${state.toLowerCase()}`, text: state })),
    el("td", {}, progressBar(step.progress, state)),
    el("td", {}, message),
    el("td", {}, job),
  );
}

/** @param {PipelineRecord} record */
function actions(record) {
  const state = record.state || "";
  const found = [];
  if (ACTIVE.has(state)) {
    const text = record.cancel_requested ? "cancelling…" : "Cancel";
    const attrs = { type: "button", class: "quiet", id: "pl-cancel", text, disabled: record.cancel_requested };
    found.push(el("button", { ...attrs, onclick: () => act(record.id, "cancel") }));
  }
  if (["FAILED", "CANCELED"].includes(state)) {
    const attrs = { type: "button", class: "quiet", id: "pl-resume", text: "Resume" };
    found.push(el("button", { ...attrs, onclick: () => act(record.id, "resume") }));
  }
  if (record.report_key) {
    /** @param {MouseEvent} e */
    const report = (e) => {
      e.preventDefault();
      openBlob("pipeline", `v1/pipelines/${record.id}/report`).catch((err) => showError("pipeline-error", err));
    };
    found.push(el("a", { href: "#", id: "pl-report", text: "HTML report", onclick: report }));
  }
  if (record.error) found.push(el("span", { class: "error-inline", text: record.error }));
  return found;
}

async function renderDetail() {
  byId("pipeline-detail").hidden = !selected;
  if (!selected) return;
  const signal = showing.next();
  try {
    /** @type {PipelineRecord} */
    const record = await api("pipeline", `v1/pipelines/${selected}`, { signal });
    byId("pl-title").textContent = `${record.request.name} · ${record.id} · ${record.state}`;
    byId("pl-actions").replaceChildren(...actions(record));
    table("step-table").tBodies[0].replaceChildren(...record.steps.map(stepRow));
    offerSets(record);
  } catch (err) {
    if (!isAbort(err)) showError("pipeline-error", err);
  }
}

/** @param {PipelineSummary} p */
function row(p) {
  const choose = () => {
    selected = p.id;
    render();
  };
  const dataset = { pipelineId: p.id, state: p.state, progress: String(p.progress) };
  return el(
    "tr",
    { class: `pipeline clickable ${p.id === selected ? "selected" : ""}`, dataset, onclick: choose },
    el("td", {}, el("code", { class: "id", text: p.id })),
    el("td", { text: p.name }),
    el("td", {}, el("span", { class: `state ${p.state.toLowerCase()}`, text: p.state })),
    el("td", {}, progressBar(p.progress, p.state)),
    el("td", { text: p.current_step || "" }),
    el("td", { text: when(p.updated_at) }),
  );
}

function render() {
  table("pipeline-table").tBodies[0].replaceChildren(...pipelines.map(row));
  return renderDetail();
}

async function poll() {
  const signal = polling.next();
  try {
    /** @type {PipelineSummary[]} */
    const found = await api("pipeline", "v1/pipelines", { query: { limit: 20 }, signal });
    pipelines = found;
    byId("pipelines-panel").classList.remove("unavailable");
    await render();
  } catch (err) {
    if (!isAbort(err)) showError("pipeline-error", err);
  }
}

async function loop() {
  await poll();
  const busy = pipelines.some((p) => ACTIVE.has(p.state));
  setTimeout(loop, busy ? pollMs() : 3 * pollMs());
}

/** @param {Event} e */
const onEdit = (e) => {
  if (/** @type {HTMLElement} */ (e.target).id !== "pl-body") syncBody();
};
const form = byId("pipeline-form", HTMLFormElement);
form.addEventListener("input", onEdit);
form.addEventListener("change", onEdit);
form.addEventListener("submit", start);
on("console:key", () => {
  loadForm();
  poll();
});
loadForm();
loop();
