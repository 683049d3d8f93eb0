// @ts-check
// The image sets a gallery can show, and how a page of each is asked for (finetune API,
// /v1/galleries): a labelled dataset split (ground truth), a pseudo-label pool or any prefix
// (pseudo boxes, scores, maps), and a model version's saved evaluation on a split (ground
// truth, the detector's predictions, misses and false alarms). A page offers its own sets
// (`console:gallery-sources`); the Datasets page adds every stored pool.
import { api, el } from "./console.js";

/** @typedef {import("@api/finetune").components["schemas"]["GalleryPage"]} GalleryPage */
/** @typedef {import("@api/finetune").components["schemas"]["PoolList"]} PoolList */
/** @typedef {import("@api/finetune").components["schemas"]["PoolSummary"]} PoolSummary */
/** @typedef {import("@api/finetune").paths["/v1/galleries/datasets/{name}/{version}/{split}"]["get"]} DatasetRoute */
/** @typedef {NonNullable<DatasetRoute["parameters"]["query"]>} PageQuery */
/** @typedef {import("@api/finetune").paths["/v1/galleries/prefix"]["get"]["parameters"]["query"]} PrefixQuery */
/** @typedef {import("@api/finetune").paths["/v1/galleries/evaluations/{name}/{version}"]["get"]} EvaluationRoute */
/** @typedef {NonNullable<EvaluationRoute["parameters"]["query"]>} EvaluationQuery */
/**
 * @typedef {{ kind: "dataset", name: string, version: string, split: string }
 *   | { kind: "prefix", prefix: string }
 *   | { kind: "evaluation", name: string, version: string, split: string, dataset?: string }} Source
 */
/** @typedef {{ text: string, source: Source }} SourceOption */
/** @typedef {{ label: string, options: SourceOption[] }} SourceGroup */
/** @typedef {{ groups: SourceGroup[], choose?: boolean }} OfferedSources */

const enc = encodeURIComponent;

/**
 * One page of `s` with the filters of `q`.
 * @param {Source} s
 * @param {PageQuery} q
 * @param {AbortSignal} signal
 * @returns {Promise<GalleryPage>}
 */
export function fetchPage(s, q, signal) {
  if (s.kind === "dataset") {
    return api("finetune", `v1/galleries/datasets/${enc(s.name)}/${enc(s.version)}/${enc(s.split)}`, {
      query: q,
      signal,
    });
  }
  if (s.kind === "evaluation") {
    /** @type {EvaluationQuery} */
    const where = { ...q, split: s.split };
    if (s.dataset) where.dataset = s.dataset;
    return api("finetune", `v1/galleries/evaluations/${enc(s.name)}/${enc(s.version)}`, { query: where, signal });
  }
  /** @type {PrefixQuery} */
  const where = { ...q, prefix: s.prefix };
  return api("finetune", "v1/galleries/prefix", { query: where, signal });
}

/**
 * The stored pseudo-label pools, newest first, as a group of sets.
 * @returns {Promise<SourceGroup>}
 */
export async function poolGroup() {
  /** @type {PoolList} */
  const answer = await api("finetune", "v1/galleries/pools");
  const options = answer.items.map((p) => ({
    text: `${p.category} · ${p.job_id || p.prefix} (${p.images_with_boxes}/${p.images} with boxes)`,
    source: /** @type {Source} */ ({ kind: "prefix", prefix: p.prefix }),
  }));
  return { label: "Pools with pseudo boxes", options };
}

/**
 * The `<optgroup>`s of a source picker; each option's value is its source as JSON.
 * @param {SourceGroup[]} groups
 */
export function optionGroups(groups) {
  return groups
    .filter((g) => g.options.length)
    .map((g) =>
      el(
        "optgroup",
        { label: g.label },
        g.options.map((o) => el("option", { value: JSON.stringify(o.source), text: o.text })),
      ),
    );
}

/**
 * A labelled dataset version's splits, with their image counts.
 * @param {string} name
 * @param {string} version
 * @param {Record<string, number>} splits
 * @returns {SourceGroup}
 */
export function datasetGroup(name, version, splits) {
  const options = Object.entries(splits).map(([split, n]) => ({
    text: `${name}:${version} · ${split} (${n})`,
    source: /** @type {Source} */ ({ kind: "dataset", name, version, split }),
  }));
  return { label: `${name}:${version}`, options };
}

/**
 * A model version's predictions on a split, from its saved evaluation there.
 * @param {string} name
 * @param {string} version
 * @param {string} split
 * @param {string} [dataset] 'name:version'; default the newest evaluated
 * @returns {SourceOption}
 */
export function evaluationOption(name, version, split, dataset) {
  /** @type {Source} */
  const source = dataset
    ? { kind: "evaluation", name, version, split, dataset }
    : { kind: "evaluation", name, version, split };
  return { text: `${name}:${version} · predictions on ${dataset ? `${dataset} · ` : ""}${split}`, source };
}
