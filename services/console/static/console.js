// @ts-check
// The core every console page imports (an ES module; no build step): the API key (this
// browser session only), calls through the console's same-origin proxy
// (/api/<service>/<path>), elements, error boxes with their codes, and AbortController-based
// supersession of requests. Drawing helpers are in draw.js, look-ups of what the APIs
// publish in lookups.js. Body types come from each service's OpenAPI (scripts/console_types.py
// writes them; `@api/<service>` in tsconfig.json).

/** @typedef {{ poll_interval_ms?: number, services?: string[] }} PageConfig */
/**
 * What a failure shows: an ApiError, an Error, or a plain {code, detail} of the page's own.
 * @typedef {{ code?: string, status?: number, detail?: string, message?: string }} Problem
 */
/** @typedef {import("@api/routes").Service} Service */
/** @typedef {import("@api/routes").Method} Method */
/**
 * What a call answers: the success body of the route its service, method and path match
 * (`v1/models/${string}` matches `v1/models/{name}`); unknown for a path typed `string`.
 * @template {Service} S
 * @template {Method} M
 * @template {string} P
 * @typedef {import("@api/routes").Answer<S, M, P>} Answer
 */
/**
 * @typedef {object} ApiOptions
 * @property {Method} [method]
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

/**
 * Request headers with the session's API key.
 * @param {Record<string, string>} extra
 */
export function headers(extra) {
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
 * One API call: JSON answers are parsed, anything else comes back as a Blob. The answer's
 * type is the route's (scripts/console_types.py writes them from the OpenAPI): a literal or
 * template-string path types it; a path built at run time answers `unknown`, to be cast.
 * @template {Service} S
 * @template {string} P
 * @template {Method} [M="GET"]
 * @param {S} service
 * @param {P} path
 * @param {ApiOptions & { method?: M }} [options]
 * @returns {Promise<Answer<S, M, P>>}
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
  const answer = type.includes("json") ? await response.json() : await response.blob();
  return /** @type {Answer<S, M, P>} */ (answer);
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

document.addEventListener("DOMContentLoaded", setupKeyForm);
