// @ts-check
// Evaluation: a model version's saved evaluation on a dataset split (finetune API): AP per
// class, PR curves, the confusion matrix, misses and false alarms per image with the boxes
// over the image; an evaluation job started from here; predictions and pseudo boxes
// exported for review. The compare panel (compare.js) follows the evaluation shown here.
import { api, byId, el, emit, input, isAbort, Latest, on, select, showError, table } from "./console.js";
import { progressBar } from "./draw.js";
import { classTable, confusion, prCurves } from "./evaluation-charts.js";
import { exportPredictions, exportPseudo } from "./evaluation-exports.js";
import { followJob } from "./lookups.js";
import { datasetImageKey, figure, pct } from "./review.js";

/** @typedef {import("@api/finetune").components["schemas"]["ModelList"]} ModelList */
/** @typedef {import("@api/finetune").components["schemas"]["ModelDetailResponse"]} ModelDetail */
/** @typedef {import("@api/finetune").components["schemas"]["ModelVersion"]} ModelVersion */
/** @typedef {import("@api/finetune").components["schemas"]["EvaluationDocument"]} EvaluationDocument */
/** @typedef {import("@api/finetune").components["schemas"]["ErrorAnalysis"]} ErrorAnalysis */
/** @typedef {import("@api/finetune").components["schemas"]["ImageErrors"]} ImageErrors */
/** @typedef {import("@api/finetune").components["schemas"]["EvaluationRequest"]} EvaluationRequest */
/** @typedef {import("@api/finetune").components["schemas"]["JobRecord"]} JobRecord */
/** @typedef {import("@api/finetune").paths["/v1/models/{name}/versions/{version}/evaluation"]["get"]} EvaluationRoute */
/** @typedef {NonNullable<EvaluationRoute["parameters"]["query"]>} EvaluationQuery */
/** @typedef {{ name: string, version: string, doc: EvaluationDocument, models: string[] }} Shown */

const enc = encodeURIComponent;
const wanted = Object.fromEntries(new URLSearchParams(location.search));
/**
 * @type {{ models: string[], versions: ModelVersion[], doc: EvaluationDocument | null,
 *   ref: { name: string, version: string } | null }}
 */
const state = { models: [], versions: [], doc: null, ref: null };
const showing = new Latest(); // a newer choice supersedes the last
const following = new Latest(); // a newer evaluation job stops the polling of the last

async function loadModels() {
  showError("eval-error", null);
  try {
    /** @type {ModelList} */
    const answer = await api("finetune", "v1/models");
    state.models = answer.items.map((m) => m.name);
    select("eval-model").replaceChildren(...state.models.map((n) => el("option", { value: n, text: n })));
    if (wanted.model && state.models.includes(wanted.model)) select("eval-model").value = wanted.model;
    if (state.models.length) await loadVersions(select("eval-model").value);
  } catch (err) {
    showError("eval-error", err);
  }
}

/** @param {string} name */
async function loadVersions(name) {
  /** @type {ModelDetail} */
  const detail = await api("finetune", `v1/models/${enc(name)}`);
  state.versions = detail.versions.slice().reverse();
  const options = state.versions.map((v) => el("option", { value: v.version, text: versionLabel(v) }));
  select("eval-version").replaceChildren(...options);
  if (wanted.version && state.versions.some((v) => v.version === wanted.version)) {
    select("eval-version").value = wanted.version;
  }
}

/** @param {ModelVersion} v */
function versionLabel(v) {
  const map = v.metrics?.map50;
  const score = typeof map === "number" ? `mAP@0.5 ${pct(map)}` : null;
  const parts = [v.version, score, v.stages.length ? v.stages.join(", ") : null];
  return parts.filter(Boolean).join(" · ");
}

async function show() {
  const name = select("eval-model").value;
  const version = select("eval-version").value;
  if (!name || !version) return;
  const signal = showing.next();
  /** @type {EvaluationQuery} */
  const query = { dataset: input("eval-dataset").value.trim(), split: input("eval-split").value.trim() || "val" };
  const params = {
    model: name,
    version,
    split: query.split || "val",
    ...(query.dataset ? { dataset: query.dataset } : {}),
  };
  window.history.replaceState(null, "", `?${new URLSearchParams(params)}`);
  showError("eval-error", null);
  try {
    const path = /** @type {const} */ (`v1/models/${enc(name)}/versions/${enc(version)}/evaluation`);
    /** @type {EvaluationDocument} */
    const doc = await api("finetune", path, { query, signal });
    if (!signal.aborted) render(name, version, doc);
  } catch (err) {
    if (signal.aborted || isAbort(err)) return;
    byId("eval-detail").hidden = true;
    byId("compare-panel").hidden = true;
    byId("eval-headline").textContent = "";
    showError("eval-error", err);
  }
}

/**
 * @param {string} name
 * @param {string} version
 * @param {EvaluationDocument} doc
 */
function render(name, version, doc) {
  state.doc = doc;
  state.ref = { name, version };
  const t = doc.errors?.totals;
  const counts = t
    ? ` · at score ≥ ${doc.conf}: ${t.misses} of ${t.gt} boxes missed, ${t.false_alarms} false alarms, ${t.confused} confused`
    : " · saved before per-image records: evaluate again to see them";
  const headline = byId("eval-headline");
  headline.textContent = `${name}:${version} on ${doc.dataset}, split ${doc.split} (${doc.images} images): mAP@0.5 ${pct(doc.map50)} %, mAP@0.5:0.95 ${pct(doc.map50_95)} %${counts}`;
  headline.dataset.dataset = doc.dataset;
  byId("eval-detail").hidden = false;
  classTable(doc);
  prCurves(doc);
  confusion(doc.errors);
  errorList();
  /** @type {Shown} */
  const shown = { name, version, doc, models: state.models };
  emit("console:evaluation", shown);
}

/** @type {Record<string, (im: ImageErrors) => boolean>} */
const FILTERS = {
  all: () => true,
  miss: (im) => im.misses > 0,
  false_alarm: (im) => im.false_alarms > 0,
  either: (im) => im.misses > 0 || im.false_alarms > 0,
};

/** @param {ImageErrors} im */
function errorRow(im) {
  const dataset = { file: im.file_name, misses: String(im.misses), falseAlarms: String(im.false_alarms) };
  const row = el(
    "tr",
    { class: "error-row clickable", dataset },
    el("td", {}, el("code", { text: im.file_name })),
    el("td", { text: String(im.gt.length) }),
    el("td", { text: String(im.dets.length) }),
    el("td", { class: im.misses ? "worse" : "", text: String(im.misses) }),
    el("td", { class: im.false_alarms ? "worse" : "", text: String(im.false_alarms) }),
    el("td", { text: String(im.confused) }),
  );
  row.addEventListener("click", () => drawError(im, row));
  return row;
}

function errorList() {
  const errors = state.doc?.errors;
  const images = errors ? errors.images.filter(FILTERS[select("error-filter").value]) : [];
  byId("error-count").textContent = errors ? `${images.length} of ${errors.images.length} images` : "";
  const rows = images.map(errorRow);
  table("error-table").tBodies[0].replaceChildren(...rows);
  if (rows.length) drawError(images[0], rows[0]);
  else {
    const none = el("figcaption", { id: "error-caption", class: "muted", text: "No image to show." });
    byId("error-stage").replaceChildren(none);
  }
}

/**
 * @param {ImageErrors} image
 * @param {HTMLElement} row
 */
async function drawError(image, row) {
  for (const r of document.querySelectorAll("#error-table tr.selected")) r.classList.remove("selected");
  row.classList.add("selected");
  const doc = state.doc;
  if (!doc?.errors) return;
  const classes = doc.errors.classes;
  const stage = byId("error-stage");
  stage.dataset.file = image.file_name;
  const boxes = [
    ...image.gt.map((g) => ({
      box: g.box,
      cls: g.found ? "gt" : "miss",
      title: `${classes[g.class_id]} (ground truth${g.found ? "" : ", missed"})`,
    })),
    ...image.dets.map((d) => ({
      box: d.box,
      cls: d.tp ? "tp" : "fa",
      title: `${classes[d.class_id]} ${d.score.toFixed(2)}${d.tp ? "" : " (false alarm)"}`,
    })),
  ];
  const text = `${image.file_name}: ${image.misses} missed, ${image.false_alarms} false alarms`;
  const caption = el("figcaption", { id: "error-caption", text });
  try {
    const frame = await figure(datasetImageKey(doc.dataset, image.file_name), image.width, image.height, boxes);
    if (stage.dataset.file === image.file_name) stage.replaceChildren(caption, frame);
  } catch (err) {
    stage.replaceChildren(caption);
    showError(stage, err);
  }
}

async function evaluate() {
  const name = select("eval-model").value;
  const version = select("eval-version").value;
  const info = state.versions.find((v) => v.version === version);
  const trained = info?.lineage?.dataset;
  const dataset = input("eval-dataset").value.trim() || (typeof trained === "string" ? trained : "");
  showError("eval-error", null);
  if (!dataset) {
    showError("eval-error", { code: "dataset_required", detail: "name the dataset to evaluate on" });
    return;
  }
  /** @type {EvaluationRequest} */
  const body = {
    model: `${name}:${version}`,
    dataset,
    split: input("eval-split").value.trim() || "val",
    conf: Number(input("eval-conf").value) || 0.25,
  };
  try {
    /** @type {JobRecord} */
    const job = await api("finetune", "v1/evaluations", { method: "POST", json: body });
    await follow(job.id, following.next());
  } catch (err) {
    if (!isAbort(err)) showError("eval-error", err);
  }
}

/**
 * Follow the evaluation job until it ends; a newer job (or key) aborts this one.
 * @param {string} id
 * @param {AbortSignal} signal
 */
async function follow(id, signal) {
  const job = await followJob("finetune", id, signal, (record) => {
    const state = record.state || "";
    const line = el(
      "div",
      { class: "row", dataset: { jobId: id, state } },
      el("code", { class: "id", text: id }),
      progressBar(record.progress, state),
      el("span", { class: "muted", text: record.message || state }),
    );
    byId("eval-job").replaceChildren(line);
  });
  const state = job?.state || "";
  if (job && state === "SUCCEEDED") {
    input("eval-dataset").value = String(job.params?.dataset ?? "");
    await show();
  } else if (job && (state === "FAILED" || state === "CANCELED")) {
    showError("eval-error", { code: job.error_code || state.toLowerCase(), detail: job.error || state });
  }
}

byId("eval-form", HTMLFormElement).addEventListener("submit", (e) => {
  e.preventDefault();
  show();
});
select("eval-model").addEventListener("change", async () => {
  await loadVersions(select("eval-model").value).catch((err) => showError("eval-error", err));
  show();
});
select("eval-version").addEventListener("change", () => show());
byId("eval-run").addEventListener("click", () => evaluate());
select("error-filter").addEventListener("change", () => errorList());
byId("export-predictions").addEventListener("click", () => exportPredictions(state.ref, state.doc));
byId("pseudo-form", HTMLFormElement).addEventListener("submit", exportPseudo);
on("console:key", () => loadModels().then(show));
if (wanted.dataset) input("eval-dataset").value = wanted.dataset;
if (wanted.split) input("eval-split").value = wanted.split;
if (wanted.filter && FILTERS[wanted.filter]) select("error-filter").value = wanted.filter;
loadModels().then(() => {
  if (wanted.model) show();
});
