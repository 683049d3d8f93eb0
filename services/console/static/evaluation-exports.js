// @ts-check
// Exports for review from the Evaluation page: a model version's predictions on the split
// shown, or a pool's pseudo boxes, as a COCO or YOLO zip a labelling tool opens and the
// dataset import takes back. A small set is packed inside one request (GET
// /v1/review-exports/...); a large one by a job (POST /v1/review-exports) whose progress
// shows here and whose stored zip is then fetched under the same file name.
import { api, byId, el, input, Latest, select, showError } from "./console.js";
import { progressBar } from "./draw.js";
import { followJob } from "./lookups.js";
import { save } from "./review.js";

/** @typedef {import("@api/finetune").components["schemas"]["EvaluationDocument"]} EvaluationDocument */
/** @typedef {import("@api/finetune").components["schemas"]["JobRecord"]} JobRecord */
/** @typedef {import("@api/finetune").components["schemas"]["PredictionsExportParams"]} PredictionsExport */
/** @typedef {import("@api/finetune").components["schemas"]["PseudoLabelsExportParams"]} PseudoExport */
/** @typedef {import("@api/finetune").paths["/v1/review-exports/predictions"]["get"]["parameters"]["query"]} PredictionsQuery */

// A split of more images than this is packed by a job: downloading, copying and deflating
// a few thousand images takes minutes, longer than a proxy or the browser waits for one
// answer, and it would hold an API thread and a scratch folder all that time.
const DIRECT_MAX_IMAGES = 200;
const enc = encodeURIComponent;
// A newer export of the same panel stops the polling of the one before.
const predictionJobs = new Latest();
const pseudoJobs = new Latest();

/**
 * @param {HTMLElement} status
 * @param {Blob} blob
 * @param {string} name
 */
function saved(status, blob, name) {
  save(blob, name);
  const text = `${name} (${Math.ceil(blob.size / 1024)} KiB)`;
  status.replaceChildren(el("span", { class: "ok export-done", dataset: { bytes: String(blob.size) }, text }));
}

/**
 * The zip packed inside the request.
 * @param {HTMLElement} status
 * @param {"v1/review-exports/predictions" | "v1/review-exports/pseudo-labels"} path
 * @param {object} query
 * @param {string} name
 */
async function download(status, path, query, name) {
  status.replaceChildren(el("span", { class: "muted", text: "preparing the zip…" }));
  try {
    /** @type {Blob} */
    const blob = await api("finetune", path, { query, accept: "application/zip" });
    saved(status, blob, name);
  } catch (err) {
    showError(status, err);
  }
}

/**
 * The zip packed by a job: queued, followed until it ends, then fetched from the store.
 * @param {HTMLElement} status
 * @param {PredictionsExport | PseudoExport} body
 * @param {string} name
 * @param {Latest} latest
 */
async function exportJob(status, body, name, latest) {
  const signal = latest.next();
  status.replaceChildren(el("span", { class: "muted", text: "queuing the export…" }));
  try {
    /** @type {JobRecord} */
    const queued = await api("finetune", "v1/review-exports", { method: "POST", json: body, signal });
    const job = await follow(status, queued.id, signal);
    if (!job) return;
    if (job.state !== "SUCCEEDED") {
      const state = job.state || "FAILED";
      showError(status, { code: job.error_code || state.toLowerCase(), detail: job.error || state });
      return;
    }
    /** @type {Blob} */
    const blob = await api("finetune", `v1/review-exports/${enc(job.id)}/zip`, { accept: "application/zip", signal });
    saved(status, blob, name);
  } catch (err) {
    if (!signal.aborted) showError(status, err);
  }
}

/**
 * Follow the export job, showing its progress.
 * @param {HTMLElement} status
 * @param {string} id
 * @param {AbortSignal} signal
 * @returns {Promise<JobRecord | null>} the ended record; null once a newer export took over
 */
function follow(status, id, signal) {
  return followJob("finetune", id, signal, (job) => {
    const state = job.state || "";
    const line = el(
      "div",
      { class: "row export-job", dataset: { jobId: id, state } },
      progressBar(job.progress, state),
      el("span", { class: "muted", text: job.message || state }),
    );
    status.replaceChildren(line);
  });
}

/**
 * @param {{ name: string, version: string } | null} ref
 * @param {EvaluationDocument | null} doc
 */
export function exportPredictions(ref, doc) {
  if (!ref || !doc) return;
  const format = /** @type {PredictionsQuery["format"]} */ (select("export-format").value);
  const model = `${ref.name}:${ref.version}`;
  const name = `${ref.name}-${ref.version}-${doc.split}-${format}.zip`;
  const status = byId("export-status");
  if (doc.images > DIRECT_MAX_IMAGES) {
    /** @type {PredictionsExport} */
    const body = { source: "predictions", model, dataset: doc.dataset, split: doc.split, format };
    exportJob(status, body, name, predictionJobs);
    return;
  }
  /** @type {PredictionsQuery} */
  const query = { model, dataset: doc.dataset, split: doc.split, format };
  download(status, "v1/review-exports/predictions", query, name);
}

/**
 * Pseudo boxes always go through the job: the page knows a pool only by the prefix typed in,
 * not its size (it would have to list the pool first), and a pseudo-label pool is usually a
 * line's whole image set, thousands of images; a small pool costs one poll more.
 * @param {SubmitEvent} event
 */
export function exportPseudo(event) {
  event.preventDefault();
  const labels = input("pseudo-labels").value.trim();
  const format = /** @type {PseudoExport["format"]} */ (select("pseudo-format").value);
  const images = input("pseudo-images").value.trim();
  /** @type {PseudoExport} */
  const body = { source: "pseudo-labels", labels_prefix: labels, images_prefix: images || null, format };
  const stem =
    labels
      .replace(/\/(labels\/)?$/, "")
      .split("/")
      .pop() || "pseudo";
  exportJob(byId("pseudo-status"), body, `pseudo-${stem}-${format}.zip`, pseudoJobs);
}
