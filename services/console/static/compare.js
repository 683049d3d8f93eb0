// @ts-check
// Compare: the evaluation shown (A) against another model version's on the same dataset
// version and split (B; by default the '<name>-scratch' baseline a pipeline trains beside
// AGSSP): every image with both models' misses and false alarms, largest difference first
// (GET /v1/evaluations/compare), and both models' boxes over the picked image.
import { api, byId, el, input, isAbort, Latest, on, select, showError, table } from "./console.js";
import { datasetImageKey, figure, pct } from "./review.js";

/** @typedef {import("./review.js").Mark} Mark */
/** @typedef {import("@api/finetune").components["schemas"]["ModelDetailResponse"]} ModelDetail */
/** @typedef {import("@api/finetune").components["schemas"]["EvaluationDocument"]} EvaluationDocument */
/** @typedef {import("@api/finetune").components["schemas"]["EvaluationComparison"]} EvaluationComparison */
/** @typedef {import("@api/finetune").components["schemas"]["ImageDifference"]} ImageDifference */
/** @typedef {NonNullable<import("@api/finetune").paths["/v1/evaluations/compare"]["get"]["parameters"]["query"]>} CompareQuery */
/** @typedef {{ name: string, version: string, doc: EvaluationDocument, models: string[] }} Shown */

const enc = encodeURIComponent;
/** @type {string | null} */
let wantedB = new URLSearchParams(location.search).get("compare"); // first view only
/**
 * @type {{ a: { name: string, version: string, doc: EvaluationDocument } | null,
 *   docs: { a: EvaluationDocument, b: EvaluationDocument } | null, models: string[] }}
 */
const state = { a: null, docs: null, models: [] };
const comparing = new Latest(); // a newer choice supersedes the last

/**
 * The AGSSP model's scratch baseline, or the other way round; else the same model.
 * @param {string} name
 * @param {string[]} models
 */
function defaultOther(name, models) {
  if (models.includes(`${name}-scratch`)) return `${name}-scratch`;
  if (name.endsWith("-scratch") && models.includes(name.slice(0, -8))) return name.slice(0, -8);
  return name;
}

/**
 * @param {string} name
 * @param {string} [keep]
 */
async function fillVersions(name, keep) {
  /** @type {ModelDetail} */
  const detail = await api("finetune", `v1/models/${enc(name)}`);
  const versions = detail.versions.slice().reverse();
  const choice = select("compare-version");
  choice.replaceChildren(...versions.map((v) => el("option", { value: v.version, text: v.version })));
  const a = state.a;
  const others = versions.filter((v) => !(a && name === a.name && v.version === a.version));
  if (keep && versions.some((v) => v.version === keep)) choice.value = keep;
  else if (others.length) choice.value = others[0].version;
}

/** @param {Shown} shown */
async function follow(shown) {
  const { name, version, doc, models } = shown;
  state.a = { name, version, doc };
  state.models = models;
  byId("compare-panel").hidden = !doc.errors;
  byId("label-a").textContent = `A ${name}:${version}`;
  const [bName, bVersion] = (wantedB || "").split(":");
  wantedB = null;
  const other = bName && models.includes(bName) ? bName : defaultOther(name, models);
  select("compare-model").replaceChildren(...models.map((m) => el("option", { value: m, text: m })));
  select("compare-model").value = other;
  try {
    await fillVersions(other, bVersion);
    if (doc.errors) await compare();
  } catch (err) {
    showError("compare-error", err);
  }
}

async function compare() {
  const a = state.a;
  const bName = select("compare-model").value;
  const bVersion = select("compare-version").value;
  if (!a || !bName || !bVersion) return;
  const signal = comparing.next();
  const where = { dataset: a.doc.dataset, split: a.doc.split };
  /** @type {CompareQuery} */
  const query = { a: `${a.name}:${a.version}`, b: `${bName}:${bVersion}`, ...where };
  showError("compare-error", null);
  try {
    const evaluation = /** @type {const} */ (`v1/models/${enc(bName)}/versions/${enc(bVersion)}/evaluation`);
    /** @type {[EvaluationComparison, EvaluationDocument]} */
    const [diff, b] = await Promise.all([
      api("finetune", "v1/evaluations/compare", { query, signal }),
      api("finetune", evaluation, { query: where, signal }),
    ]);
    if (signal.aborted) return;
    state.docs = { a: a.doc, b };
    render(diff);
  } catch (err) {
    if (signal.aborted || isAbort(err)) return;
    table("diff-table").tBodies[0].replaceChildren();
    byId("compare-headline").textContent = "";
    showError("compare-error", err);
  }
}

/**
 * @param {number} b
 * @param {number} a
 */
function side(b, a) {
  return b > a ? "worse" : b < a ? "better" : "";
}

/** @param {ImageDifference} im */
function diffRow(im) {
  const change = im.change > 0 ? "B worse" : im.change < 0 ? "B better" : "mixed";
  const row = el(
    "tr",
    { class: "diff-row clickable", dataset: { file: im.file_name, difference: String(im.difference) } },
    el("td", {}, el("code", { text: im.file_name })),
    el("td", { text: im.difference ? `${im.difference} (${change})` : "0" }),
    el("td", { text: String(im.a.misses) }),
    el("td", { text: String(im.a.false_alarms) }),
    el("td", { class: side(im.b.misses, im.a.misses), text: String(im.b.misses) }),
    el("td", { class: side(im.b.false_alarms, im.a.false_alarms), text: String(im.b.false_alarms) }),
  );
  row.addEventListener("click", () => draw(im.file_name, row));
  return row;
}

/** @param {EvaluationComparison} diff */
function render(diff) {
  const { a, b } = diff;
  byId("label-b").textContent = `B ${b.model}`;
  byId("compare-headline").textContent =
    `A ${a.model}: mAP@0.5 ${pct(a.map50)} %, ${a.misses} misses, ${a.false_alarms} false alarms · ` +
    `B ${b.model}: mAP@0.5 ${pct(b.map50)} %, ${b.misses} misses, ${b.false_alarms} false alarms (score ≥ ${a.conf} / ${b.conf}, ${a.dataset} ${a.split})`;
  const rows = diff.images.map(diffRow);
  table("diff-table").tBodies[0].replaceChildren(...rows);
  if (rows.length) draw(diff.images[0].file_name, rows[0]);
}

/**
 * @param {EvaluationDocument} doc
 * @param {string} fileName
 * @param {string} cls
 * @param {string} label
 * @returns {Mark[]}
 */
function boxesOf(doc, fileName, cls, label) {
  const errors = doc.errors;
  const image = errors?.images.find((im) => im.file_name === fileName);
  if (!errors || !image) return [];
  return image.dets.map((d) => ({
    box: d.box,
    cls,
    title: `${label}: ${errors.classes[d.class_id]} ${d.score.toFixed(2)}${d.tp ? "" : " (false alarm)"}`,
  }));
}

/**
 * @param {string} fileName
 * @param {HTMLElement} row
 */
async function draw(fileName, row) {
  for (const r of document.querySelectorAll("#diff-table tr.selected")) r.classList.remove("selected");
  row.classList.add("selected");
  if (!state.docs) return;
  const { a, b } = state.docs;
  const errors = a.errors;
  const image = errors?.images.find((im) => im.file_name === fileName);
  if (!errors || !image) return;
  const stage = byId("compare-stage");
  stage.dataset.file = fileName;
  const truth = image.gt.map((g) => ({ box: g.box, cls: "gt", title: `ground truth: ${errors.classes[g.class_id]}` }));
  const boxes = [...truth, ...boxesOf(a, fileName, "box-a", "A"), ...boxesOf(b, fileName, "box-b", "B")];
  const text = `${fileName}: ground truth (green), A (blue), B (orange, dashed)`;
  const caption = el("figcaption", { id: "compare-caption", text });
  try {
    const frame = await figure(datasetImageKey(a.dataset, fileName), image.width, image.height, boxes);
    if (stage.dataset.file !== fileName) return;
    toggle(frame);
    stage.replaceChildren(caption, frame);
  } catch (err) {
    stage.replaceChildren(caption);
    showError(stage, err);
  }
}

/** @param {Element | null} [frame] */
function toggle(frame) {
  const target = frame || document.querySelector("#compare-stage .ev-frame");
  if (!target) return;
  target.classList.toggle("hide-a", !input("show-a").checked);
  target.classList.toggle("hide-b", !input("show-b").checked);
}

on("console:evaluation", follow);
byId("compare-form", HTMLFormElement).addEventListener("submit", (e) => {
  e.preventDefault();
  compare();
});
select("compare-model").addEventListener("change", () =>
  fillVersions(select("compare-model").value).catch((err) => showError("compare-error", err)),
);
input("show-a").addEventListener("change", () => toggle());
input("show-b").addEventListener("change", () => toggle());
