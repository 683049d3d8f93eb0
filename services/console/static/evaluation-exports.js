// @ts-check
// Exports for review from the Evaluation page: a model version's predictions on the split
// shown, or a pool's pseudo boxes, as a COCO or YOLO zip a labelling tool opens and the
// dataset import takes back.
import { api, byId, el, input, select, showError } from "./console.js";
import { save } from "./review.js";

/** @typedef {import("@api/finetune").components["schemas"]["EvaluationDocument"]} EvaluationDocument */
/** @typedef {import("@api/finetune").paths["/v1/review-exports/predictions"]["get"]["parameters"]["query"]} PredictionsQuery */
/** @typedef {import("@api/finetune").paths["/v1/review-exports/pseudo-labels"]["get"]["parameters"]["query"]} PseudoQuery */

/**
 * @param {HTMLElement} status
 * @param {string} path
 * @param {object} query
 * @param {string} name
 */
async function download(status, path, query, name) {
  status.replaceChildren(el("span", { class: "muted", text: "preparing the zip…" }));
  try {
    /** @type {Blob} */
    const blob = await api("finetune", path, { query, accept: "application/zip" });
    save(blob, name);
    const text = `${name} (${Math.ceil(blob.size / 1024)} KiB)`;
    status.replaceChildren(el("span", { class: "ok export-done", dataset: { bytes: String(blob.size) }, text }));
  } catch (err) {
    showError(status, err);
  }
}

/**
 * @param {{ name: string, version: string } | null} ref
 * @param {EvaluationDocument | null} doc
 */
export function exportPredictions(ref, doc) {
  if (!ref || !doc) return;
  const format = /** @type {PredictionsQuery["format"]} */ (select("export-format").value);
  /** @type {PredictionsQuery} */
  const query = { model: `${ref.name}:${ref.version}`, dataset: doc.dataset, split: doc.split, format };
  download(
    byId("export-status"),
    "v1/review-exports/predictions",
    query,
    `${ref.name}-${ref.version}-${doc.split}-${format}.zip`,
  );
}

/** @param {SubmitEvent} event */
export function exportPseudo(event) {
  event.preventDefault();
  const labels = input("pseudo-labels").value.trim();
  const format = /** @type {PseudoQuery["format"]} */ (select("pseudo-format").value);
  /** @type {PseudoQuery} */
  const query = { labels_prefix: labels, images_prefix: input("pseudo-images").value.trim(), format };
  const stem =
    labels
      .replace(/\/(labels\/)?$/, "")
      .split("/")
      .pop() || "pseudo";
  download(byId("pseudo-status"), "v1/review-exports/pseudo-labels", query, `pseudo-${stem}-${format}.zip`);
}
