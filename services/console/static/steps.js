// @ts-check
// The steps the Pipelines & jobs page starts one at a time, each a POST to one API. Every body
// is built by a function typed with that API's request schema (from its OpenAPI), so tsc
// refuses a body that drifts from it; the page shows the body for editing before it is sent.

/** @typedef {import("@api/anomaly_map").components["schemas"]["MapJobRequest"]} MapJobRequest */
/** @typedef {import("@api/pretrain").components["schemas"]["PseudoLabelJobRequest"]} PseudoLabelJobRequest */
/** @typedef {import("@api/pretrain").components["schemas"]["PretrainJobRequest"]} PretrainJobRequest */
/** @typedef {import("@api/pretrain").components["schemas"]["AgbpConfig"]} AgbpConfig */
/** @typedef {import("@api/finetune").components["schemas"]["FinetuneJobRequest"]} FinetuneJobRequest */
/** @typedef {Record<string, string>} Values */
/**
 * @typedef {object} Step
 * @property {string} label
 * @property {import("@api/routes").JobService} service
 * @property {string} path
 * @property {string} help
 * @property {[string, string, string][]} fields name, label, placeholder
 * @property {(v: Values) => unknown} body
 */

/** @type {AgbpConfig} */
const TINY_AGBP = {
  backbone: "yolov8n",
  objective: "distill",
  epochs: 1,
  batch_size: 4,
  input_size: 64,
  resize_base: 64,
  amp: false,
  checkpoint_every: 0,
  num_workers: 0,
};

/**
 * @param {Values} v
 * @returns {MapJobRequest}
 */
function mapsBody(v) {
  return { category: v.category, prefix: v.prefix, mode: v.mode || undefined };
}

/**
 * @param {Values} v
 * @returns {PseudoLabelJobRequest}
 */
function pseudoBody(v) {
  return { category: v.category, images_prefix: v.images_prefix, maps_prefix: v.maps_prefix };
}

/**
 * @param {Values} v
 * @returns {PretrainJobRequest}
 */
function agbpBody(v) {
  return {
    sources: [{ category: v.category, images_prefix: v.images_prefix, maps_prefix: v.maps_prefix }],
    config: TINY_AGBP,
  };
}

/**
 * @param {Values} v
 * @returns {FinetuneJobRequest}
 */
function finetuneBody(v) {
  const config = { epochs: 1, batch: 4, imgsz: 64, seed: 0 };
  return { dataset: v.dataset, scale: "n", model_name: v.model_name, config };
}

/** @type {[string, string, string][]} */
const FROM_MAPS = [
  ["category", "category", ""],
  ["images_prefix", "images prefix", "uploads/line-1/unlabelled/"],
  ["maps_prefix", "maps prefix", "maps/<category>/<job id>/"],
];
/** @type {Record<string, Step>} */
export const STEPS = {
  maps: {
    label: "1 · Dataset anomaly maps",
    service: "anomaly_map",
    path: "v1/anomaly-map-jobs",
    help: "a map for every image under a store prefix",
    fields: [
      ["category", "category", ""],
      ["prefix", "images prefix", "uploads/line-1/unlabelled/"],
      ["mode", "method", ""],
    ],
    body: mapsBody,
  },
  pseudo: {
    label: "2 · Pseudo-defect boxes",
    service: "pretrain",
    path: "v1/pseudo-label-jobs",
    help: "boxes from a finished map job's output prefix",
    fields: FROM_MAPS,
    body: pseudoBody,
  },
  agbp: {
    label: "3 · AGBP pretraining (cpu-demo: YOLOv8n, 1 epoch, 64 px)",
    service: "pretrain",
    path: "v1/pretrain-jobs",
    help: "distil the maps into a backbone",
    fields: FROM_MAPS,
    body: agbpBody,
  },
  finetune: {
    label: "4 · Finetune a detector (cpu-demo: YOLOv8n, 1 epoch, 64 px)",
    service: "finetune",
    path: "v1/finetune-jobs",
    help: "train on an imported dataset; the version lands in the registry",
    fields: [
      ["dataset", "dataset", ""],
      ["model_name", "model name", "steel-det"],
    ],
    body: finetuneBody,
  },
};
