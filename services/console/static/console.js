// @ts-check
// Shared helpers of every console page, as an ES module the page scripts import: the API key
// (this browser session only), calls through the console's same-origin proxy
// (/api/<service>/<path>), error boxes with their codes, progress bars and hand-drawn SVG
// line charts. Types of request and response bodies come from each service's OpenAPI
// (scripts/console_types.py writes them; `@api/<service>` in tsconfig.json).

/** @typedef {{ poll_interval_ms?: number, services?: string[] }} PageConfig */
/** @typedef {import("@api/anomaly_map").components["schemas"]["CategoryResponse"]} Category */
/** @typedef {import("@api/anomaly_map").components["schemas"]["CategoryList"]} CategoryList */
/** @typedef {import("@api/finetune").components["schemas"]["DetectorFamilyList"]} DetectorFamilyList */
/** @typedef {import("@api/pipeline").components["schemas"]["PipelineRecord"]} PipelineRecord */
/** @typedef {import("@api/pipeline").components["schemas"]["PipelineSummary"]} PipelineSummary */
/** @typedef {{ keys: { key: string, size: number }[] }} ObjectList */
/** @typedef {{ name: string, label: string, ready: boolean, reason: string }} Method */
/**
 * What a failure shows: an ApiError, an Error, or a plain {code, detail} of the page's own.
 * @typedef {{ code?: string, status?: number, detail?: string, message?: string }} Problem
 */
/**
 * @typedef {object} ApiOptions
 * @property {string} [method]
 * @property {unknown} [json] a body sent as JSON
 * @property {FormData} [form]
 * @property {BodyInit} [body]
 * @property {object} [query] names to values; empty, null and undefined values are left out
 * @property {string} [accept]
 * @property {AbortSignal} [signal] an AbortController's: a superseded request stops
 */

const KEY_NAME = "agssp.apiKey";
/** @type {PageConfig} */
export const config = JSON.parse(document.body.dataset.config || "{}");
export const pollMs = () => config.poll_interval_ms || 1000;

export class ApiError extends Error {
  /**
   * @param {number} status
   * @param {string} code
   * @param {string} detail
   * @param {unknown} body
   */
  constructor(status, code, detail, body) {
    super(`${status} ${code}: ${detail}`);
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.body = body;
  }
}

/**
 * The element with this id, checked to be of the kind the caller needs.
 * @template {Element} [T=HTMLElement]
 * @param {string} id
 * @param {{ new (): T, prototype: T }} [kind] e.g. HTMLInputElement
 * @returns {T}
 */
export function byId(id, kind) {
  const node = document.getElementById(id);
  const want = kind || HTMLElement;
  if (!(node instanceof want)) throw new Error(`#${id} is missing or not a ${want.name}`);
  return /** @type {T} */ (/** @type {unknown} */ (node));
}

/** @param {string} id */
export const input = (id) => byId(id, HTMLInputElement);
/** @param {string} id */
export const select = (id) => byId(id, HTMLSelectElement);
/** @param {string} id */
export const textarea = (id) => byId(id, HTMLTextAreaElement);
/** @param {string} id */
export const table = (id) => byId(id, HTMLTableElement);

/** @param {unknown} err true for the rejection of a request its AbortController stopped */
export function isAbort(err) {
  return err instanceof DOMException && err.name === "AbortError";
}

/**
 * One kind of request that a newer one supersedes (a redraw, a poll, a choice): `next()`
 * aborts the one before and hands out the new one's signal.
 */
export class Latest {
  /** @type {AbortController | null} */
  #controller = null;

  next() {
    this.abort();
    this.#controller = new AbortController();
    return this.#controller.signal;
  }

  abort() {
    if (this.#controller) this.#controller.abort();
  }

  get signal() {
    return this.#controller ? this.#controller.signal : undefined;
  }
}

/**
 * Listen for a page event (`console:<name>`) with its detail.
 * @template T
 * @param {string} name
 * @param {(detail: T) => void} handler
 */
export function on(name, handler) {
  document.addEventListener(name, (event) => handler(/** @type {CustomEvent<T>} */ (event).detail));
}

/**
 * @param {string} name
 * @param {unknown} [detail]
 */
export function emit(name, detail) {
  document.dispatchEvent(new CustomEvent(name, { detail }));
}

function apiKey() {
  return sessionStorage.getItem(KEY_NAME) || "";
}

/** @param {Record<string, string>} extra */
function headers(extra) {
  /** @type {Record<string, string>} */
  const h = { ...extra };
  const key = apiKey();
  if (key) h["X-API-Key"] = key;
  return h;
}

/**
 * @param {Response} response
 * @returns {Promise<ApiError>}
 */
async function errorOf(response) {
  /** @type {any} */
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  const code = body?.code || `http_${response.status}`;
  let detail = body?.detail || response.statusText;
  if (body && Array.isArray(body.errors)) {
    /** @type {{ loc?: unknown[], msg: string }[]} */
    const errors = body.errors;
    detail += `: ${errors.map((e) => `${(e.loc || []).join(".")} ${e.msg}`).join("; ")}`;
  }
  return new ApiError(response.status, code, String(detail), body);
}

/**
 * The body of a form as the API's schema names its fields; files are appended by the caller.
 * @param {object} fields
 */
export function formOf(fields) {
  const form = new FormData();
  for (const [k, v] of Object.entries(fields)) {
    if (v !== undefined && v !== null && v !== "") form.append(k, String(v));
  }
  return form;
}

/**
 * One API call: JSON answers are parsed, anything else comes back as a Blob.
 * @param {string} service
 * @param {string} path
 * @param {ApiOptions} [options]
 * @returns {Promise<any>}
 */
export async function api(service, path, options) {
  const o = options || {};
  const query = new URLSearchParams();
  for (const [k, v] of Object.entries(o.query || {})) {
    if (v !== undefined && v !== null && v !== "") query.append(k, String(v));
  }
  const qs = query.toString() ? `?${query}` : "";
  const sent = headers({ Accept: o.accept || "application/json" });
  /** @type {RequestInit} */
  const init = { method: o.method || "GET", headers: sent };
  if (o.signal) init.signal = o.signal;
  if (o.json !== undefined) {
    init.body = JSON.stringify(o.json);
    sent["Content-Type"] = "application/json";
  } else if (o.form) {
    init.body = o.form;
  } else if (o.body) {
    init.body = o.body;
  }
  const response = await fetch(`/api/${service}/${path}${qs}`, init);
  if (!response.ok) throw await errorOf(response);
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.blob();
}

/** @typedef {Node | string | number | boolean | null | undefined} Child */
/**
 * Attributes of `el`: `class`, `text`, `dataset`, `on<event>` handlers, and plain attributes
 * (false, null and undefined leave one out; true sets it empty).
 * @typedef {{ [name: string]: unknown, dataset?: Record<string, string> }} Attrs
 */

/**
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {Attrs} [attrs]
 * @param {...(Child | Child[])} children
 * @returns {HTMLElementTagNameMap[K]}
 */
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = String(v);
    else if (k === "text") node.textContent = String(v);
    else if (k.startsWith("on") && typeof v === "function")
      node.addEventListener(k.slice(2), /** @type {EventListener} */ (v));
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/**
 * What a caught failure says, whatever was thrown.
 * @param {unknown} err
 * @returns {Problem}
 */
function problemOf(err) {
  if (err && typeof err === "object") return /** @type {Problem} */ (err);
  return { message: String(err) };
}

/**
 * Show a failure with its code in a box (by id or the element); null clears the box.
 * @param {string | HTMLElement} target
 * @param {unknown} err
 */
export function showError(target, err) {
  const box = typeof target === "string" ? document.getElementById(target) : target;
  if (!box) return;
  box.replaceChildren();
  if (!err) return;
  const p = problemOf(err);
  const code = p.code || "client_error";
  box.append(
    el(
      "div",
      { class: "error", role: "alert", dataset: { code } },
      el("code", { text: code }),
      " ",
      p.status ? `(${p.status}) ` : "",
      p.detail || p.message,
    ),
  );
}

/**
 * @param {number | undefined} percent
 * @param {string} [state]
 */
export function progressBar(percent, state) {
  const p = Math.max(0, Math.min(100, Number(percent) || 0));
  return el(
    "div",
    {
      class: `bar ${String(state || "").toLowerCase()}`,
      role: "progressbar",
      "aria-valuemin": "0",
      "aria-valuemax": "100",
      "aria-valuenow": p.toFixed(1),
    },
    el("div", { class: "fill", style: `width:${p.toFixed(1)}%` }),
    el("span", { class: "label", text: `${p.toFixed(0)}%` }),
  );
}

/** @param {number} seconds */
export function duration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

/** @param {string | null | undefined} iso */
export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

/** @typedef {[number, number, number]} Rgb */
// A colour scale from dark blue through cyan and yellow to red (jet-like, perceptually
// ordered enough for a heat map); t in [0, 1] -> [r, g, b].
/** @type {[number, Rgb][]} */
const STOPS = [
  [0.0, [12, 7, 134]],
  [0.25, [33, 145, 200]],
  [0.5, [94, 201, 98]],
  [0.75, [253, 231, 37]],
  [1.0, [220, 30, 30]],
];

/**
 * @param {number} t
 * @returns {Rgb}
 */
export function colour(t) {
  const x = Math.max(0, Math.min(1, t));
  for (let i = 1; i < STOPS.length; i += 1) {
    const [t1, c1] = STOPS[i];
    const [t0, c0] = STOPS[i - 1];
    if (x <= t1) {
      const f = (x - t0) / (t1 - t0);
      return /** @type {Rgb} */ (c0.map((v, j) => Math.round(v + f * (c1[j] - v))));
    }
  }
  return STOPS[STOPS.length - 1][1];
}

/**
 * A decoded float map: `data` is base64 of float32 little-endian, row-major.
 * @param {{ shape: number[], data: string }} payload
 */
export function decodeFloats(payload) {
  const [h, w] = payload.shape;
  const bytes = Uint8Array.from(atob(payload.data), (c) => c.charCodeAt(0));
  const data = new DataView(bytes.buffer);
  const values = new Float32Array(h * w);
  for (let i = 0; i < values.length; i += 1) values[i] = data.getFloat32(i * 4, true);
  return { h, w, values };
}

const SVG = "http://www.w3.org/2000/svg";

/**
 * @param {string} tag
 * @param {Record<string, string | number>} [attrs]
 * @param {string} [text]
 * @returns {SVGElement}
 */
export function svg(tag, attrs, text) {
  const node = /** @type {SVGElement} */ (document.createElementNS(SVG, tag));
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** @typedef {{ name: string, points: [number, number][] }} Series */

/**
 * A plain SVG chart with axes and a legend.
 * @param {string} title
 * @param {Series[]} series
 * @param {string} xLabel
 */
export function lineChart(title, series, xLabel) {
  const [W, H, L, R, T, B] = [420, 220, 48, 10, 24, 34];
  const all = series.flatMap((s) => s.points);
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  if (x0 === x1) x1 = x0 + 1;
  if (y0 === y1) {
    y0 -= 0.5;
    y1 += 0.5;
  }
  /** @param {number} x */
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  /** @param {number} y */
  const sy = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": title });
  root.append(svg("text", { x: L, y: 15, class: "chart-title" }, title));
  root.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
  root.append(svg("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }));
  for (const [v, y] of [
    [y0, H - B],
    [y1, T],
  ]) {
    const tick = Number(v.toPrecision(3)).toString();
    root.append(svg("text", { x: L - 4, y: y + 4, class: "tick", "text-anchor": "end" }, tick));
  }
  for (const [v, x] of [
    [x0, L],
    [x1, W - R],
  ]) {
    const tick = Number(v.toPrecision(3)).toString();
    root.append(svg("text", { x, y: H - B + 14, class: "tick", "text-anchor": "middle" }, tick));
  }
  root.append(svg("text", { x: (L + W - R) / 2, y: H - 4, class: "tick", "text-anchor": "middle" }, xLabel));
  series.forEach((s, i) => {
    const hue = (i * 137) % 360;
    const d = s.points.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
    root.append(svg("path", { d, class: "series", stroke: `hsl(${hue} 70% 45%)`, "data-series": s.name }));
    const key = {
      x: W - R - 4,
      y: T + 12 * (i + 1),
      class: "legend",
      "text-anchor": "end",
      fill: `hsl(${hue} 70% 40%)`,
    };
    root.append(svg("text", key, s.name));
  });
  return root;
}

function setupKeyForm() {
  const form = byId("key-form", HTMLFormElement);
  const field = input("api-key");
  const state = byId("key-state");
  const show = () => {
    state.textContent = apiKey() ? "key set for this session" : "no key";
  };
  field.value = apiKey();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_NAME, field.value.trim());
    show();
    emit("console:key");
  });
  byId("key-forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_NAME);
    field.value = "";
    show();
  });
  show();
}

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
 */
export function objectPath(key) {
  return `v1/objects/${key.split("/").map(encodeURIComponent).join("/")}`;
}

/**
 * @param {string} service
 * @param {string} path
 */
export async function openBlob(service, path) {
  /** @type {Blob} */
  const blob = await api(service, path, { accept: "*/*" });
  window.open(URL.createObjectURL(blob), "_blank", "noopener");
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
  /** @type {ObjectList} */
  const demo = await api("pipeline", "v1/objects", { query }).catch(() => ({ keys: [] }));
  return demo.keys.length ? { ...DEMO, mapsPrefix: "", source: "demo uploads" } : NONE;
}

export function formDefaults() {
  defaults = defaults || lookUpDefaults();
  return defaults;
}

on("console:key", () => {
  defaults = null;
});
document.addEventListener("DOMContentLoaded", setupKeyForm);
