// @ts-check
// The sets of a pipeline the gallery panel on the Pipelines page can show: its pool with the
// pseudo boxes, its labelled splits, and each finetuned model's predictions on the val split
// (from the evaluation the finetune saved). Offered again only when they change, so that the
// pipeline's polling does not reset the gallery.
import { emit } from "./console.js";
import { evaluationOption } from "./gallery-sources.js";

/** @typedef {import("./lookups.js").PipelineRecord} PipelineRecord */
/** @typedef {import("./gallery-sources.js").SourceOption} SourceOption */

let offered = "";

/**
 * A step's output, when the step has run.
 * @param {PipelineRecord} record
 * @param {string} name
 * @param {string} key
 * @returns {string | undefined}
 */
function outputOf(record, name, key) {
  const value = record.steps.find((s) => s.name === name)?.outputs?.[key];
  return typeof value === "string" ? value : undefined;
}

/**
 * What the pipeline made that a gallery can show: the pool with its pseudo boxes, the
 * labelled splits, and each finetuned model's predictions on the val split.
 * @param {PipelineRecord} record
 */
export function offerSets(record) {
  const req = record.request;
  const train = req.labelled.split || "train";
  const val = req.labelled.val_split || "val";
  const dataset = req.labelled.dataset || outputOf(record, "dataset", "dataset");
  const [dsName, dsVersion = "latest"] = (dataset || "").split(":");
  /** @type {SourceOption[]} */
  const options = [];
  const pool = outputOf(record, "pseudo_boxes", "out_prefix");
  if (pool) options.push({ text: `pool · pseudo boxes (${pool})`, source: { kind: "prefix", prefix: pool } });
  for (const split of dataset ? new Set([train, val]) : []) {
    options.push({
      text: `labelled ${dsName}:${dsVersion} · ${split}`,
      source: { kind: "dataset", name: dsName, version: dsVersion, split },
    });
  }
  for (const step of ["finetune", "baseline"]) {
    const [name, version] = (outputOf(record, step, "artifact") || "").split(":");
    if (name && version) options.push(evaluationOption(name, version, val, dataset));
  }
  const key = JSON.stringify(options);
  if (key === offered) return;
  offered = key;
  emit("console:gallery-sources", { groups: [{ label: `pipeline ${record.id}`, options }], choose: true });
}
