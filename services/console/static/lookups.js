// @ts-check
// What the APIs publish that several pages choose from: categories, map methods, detector
// families, stored objects, and where the pipeline and step forms start.
import { api, el, headers, on, pollMs } from "./console.js";

/** @typedef {import("@api/anomaly_map").components["schemas"]["CategoryResponse"]} Category */
/** @typedef {import("@api/anomaly_map").components["schemas"]["CategoryList"]} CategoryList */
/** @typedef {import("@api/finetune").components["schemas"]["DetectorFamilyList"]} DetectorFamilyList */
/** @typedef {import("@api/pipeline").components["schemas"]["PipelineRecord"]} PipelineRecord */
/** @typedef {import("@api/pipeline").components["schemas"]["PipelineSummary"]} PipelineSummary */
/** @typedef {{ keys: { key: string, size: number }[] }} ObjectList */
/** @typedef {import("@api/routes").Service} Service */
/** @typedef {import("@api/routes").JobService} JobService */
/** @typedef {{ name: string, label: string, ready: boolean, reason: string }} Method */

/**
 * @param {AbortSignal} [signal]
 * @returns {Promise<Category[]>}
 */
export async function categories(signal) {
  /** @type {CategoryList} */
  const answer = await api("anomaly_map", "v1/categories", { signal });
  return answer.items || [];
}

/**
 * The anomaly-map methods as the service publishes them (/readyz details.methods, built
 * from its method catalogue), in its order: the console keeps no list of its own. A 503
 * answer (a dependency missing) still carries them.
 * @returns {Promise<Method[]>}
 */
export async function methods() {
  const response = await fetch("/api/anomaly_map/readyz", { headers: headers({ Accept: "application/json" }) });
  /** @type {{ details?: { methods?: Record<string, { label?: string, ready?: boolean, reason?: string }> } }} */
  const body = await response.json().catch(() => ({}));
  const found = body.details?.methods || {};
  return Object.entries(found).map(([name, m]) => ({
    name,
    label: m.label || name,
    ready: Boolean(m.ready),
    reason: m.reason || "",
  }));
}

/**
 * Fill a <select> with the methods, keeping its leading options (e.g. "category default");
 * a method that cannot serve now stays selectable, marked with the reason.
 * @param {HTMLSelectElement} target
 * @param {number} keep
 */
export async function fillMethods(target, keep) {
  const items = await methods();
  const fixed = [...target.options].slice(0, keep || 0);
  const options = items.map((m) =>
    el("option", { value: m.name, text: m.ready ? m.label : `${m.label} (not ready)`, title: m.reason }),
  );
  target.replaceChildren(...fixed, ...options);
  return items;
}

/**
 * The detector families as the finetune service publishes them (/v1/detector-families,
 * built from its family table): the console keeps no list of its own.
 */
export async function detectorFamilies() {
  /** @type {DetectorFamilyList} */
  const answer = await api("finetune", "v1/detector-families");
  return { default: answer.default, items: answer.items || [] };
}

/**
 * Stored results (maps, overlays, loss curves, reports) through the pipeline API's
 * /v1/objects. Fetched with the key and shown from a blob: URL, because a plain link or
 * <img> would not send the X-API-Key header.
 * @param {string} key
 * @returns {`v1/objects/${string}`}
 */
export function objectPath(key) {
  return `v1/objects/${key.split("/").map(encodeURIComponent).join("/")}`;
}

/**
 * @param {Service} service
 * @param {string} path
 */
export async function openBlob(service, path) {
  // any route of any service: what comes back is whatever the route serves
  const blob = /** @type {Blob} */ (await api(service, path, { accept: "*/*" }));
  window.open(URL.createObjectURL(await withBase(blob)), "_blank", "noopener");
}

/**
 * An HTML page opened from a `blob:` address cannot resolve its relative links (a
 * report's `/evaluation?...`); a `<base>` of the console's origin lets it.
 * @param {Blob} blob
 */
async function withBase(blob) {
  if (!blob.type.startsWith("text/html")) return blob;
  const page = await blob.text();
  const base = `<base href="${location.origin}/">`;
  const at = page.search(/<head[^>]*>/i);
  const html = at < 0 ? base + page : page.replace(/<head[^>]*>/i, (head) => head + base);
  return new Blob([html], { type: blob.type });
}

/**
 * @param {{ key: string, size: number }[]} keys
 * @param {(err: unknown) => void} onError
 */
export function fileList(keys, onError) {
  return el(
    "ul",
    { class: "files" },
    keys.map((item) => {
      const name = item.key.split("/").slice(-2).join("/");
      const link = el("a", {
        href: "#",
        class: "object",
        dataset: { key: item.key },
        text: name,
        /** @param {MouseEvent} e */
        onclick: (e) => {
          e.preventDefault();
          openBlob("pipeline", objectPath(item.key)).catch(onError);
        },
      });
      const li = el("li", {}, link, el("span", { class: "muted", text: ` ${Math.ceil(item.size / 1024)} KiB` }));
      if (/\.(png|jpe?g)$/i.test(item.key)) {
        api("pipeline", objectPath(item.key), { accept: "image/*" })
          .then((blob) => li.prepend(el("img", { class: "thumb", alt: name, src: URL.createObjectURL(blob) })))
          .catch(() => null);
      }
      return li;
    }),
  );
}

/**
 * @typedef {object} FormDefaults
 * @property {string} unlabelled
 * @property {string} labelled
 * @property {string} format
 * @property {string} category
 * @property {string} mapsPrefix
 * @property {string} source
 */

// Where the pipeline and step forms start, from the pipeline API: the newest pipeline's
// request (and its maps output), else the demo's uploads when the store holds them
// (scripts/run.sh puts them there), else nothing, so the fields show their placeholders.
// Looked up once per page and key.
const DEMO = {
  unlabelled: "uploads/demo-det/unlabelled/",
  labelled: "uploads/demo-det/labelled/",
  format: "voc",
  category: "demo-surface",
};
/** @type {FormDefaults} */
const NONE = { unlabelled: "", labelled: "", format: "auto", category: "", mapsPrefix: "", source: "none" };
/** @type {Promise<FormDefaults> | null} */
let defaults = null;

/** @returns {Promise<PipelineRecord | null>} */
async function newestPipeline() {
  /** @type {PipelineSummary[]} */
  const items = await api("pipeline", "v1/pipelines", { query: { limit: 1 } });
  return items.length ? api("pipeline", `v1/pipelines/${encodeURIComponent(items[0].id)}`) : null;
}

/** @returns {Promise<FormDefaults>} */
async function lookUpDefaults() {
  const record = await newestPipeline().catch(() => null);
  if (record) {
    const r = record.request;
    const maps = (record.steps || []).find((s) => s.name === "maps");
    const mapsPrefix = String(maps?.outputs?.maps_prefix || "");
    const source = `pipeline ${record.id}`;
    const { category, unlabelled_prefix: unlabelled } = r;
    return {
      unlabelled,
      labelled: r.labelled.prefix || "",
      format: r.labelled.format || "auto",
      category,
      mapsPrefix,
      source,
    };
  }
  const query = { prefix: DEMO.unlabelled, limit: 1 };
  // the listing's schema is an open object: ObjectList is what it holds
  const list = api("pipeline", "v1/objects", { query }).catch(() => ({ keys: [] }));
  const demo = /** @type {ObjectList} */ (await list);
  return demo.keys.length ? { ...DEMO, mapsPrefix: "", source: "demo uploads" } : NONE;
}

export function formDefaults() {
  defaults = defaults || lookUpDefaults();
  return defaults;
}

on("console:key", () => {
  defaults = null;
});

const JOB_ENDED = new Set(["SUCCEEDED", "FAILED", "CANCELED"]);

/**
 * Poll a job record until the job ends, handing each record seen to `draw`.
 * @param {JobService} service
 * @param {string} id
 * @param {AbortSignal} signal a newer job (or key) aborts the polling of this one
 * @param {(job: import("@api/finetune").components["schemas"]["JobRecord"]) => void} draw
 * @returns {Promise<import("@api/finetune").components["schemas"]["JobRecord"] | null>}
 *   the ended record; null once `signal` aborted
 */
export async function followJob(service, id, signal, draw) {
  while (!signal.aborted) {
    /** @type {import("@api/finetune").components["schemas"]["JobRecord"]} */
    const job = await api(service, `v1/jobs/${encodeURIComponent(id)}`, { signal });
    draw(job);
    if (JOB_ENDED.has(job.state || "")) return job;
    await new Promise((resolve) => setTimeout(resolve, pollMs()));
  }
  return null;
}
