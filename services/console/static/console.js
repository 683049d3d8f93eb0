// Shared helpers of every console page: the API key (this browser session only), calls
// through the console's same-origin proxy (/api/<service>/<path>), error boxes with their
// codes, progress bars and hand-drawn SVG line charts.
"use strict";

const Console = (() => {
  const KEY_NAME = "agssp.apiKey";
  const config = JSON.parse(document.body.dataset.config || "{}");

  class ApiError extends Error {
    constructor(status, code, detail, body) {
      super(`${status} ${code}: ${detail}`);
      this.status = status;
      this.code = code;
      this.detail = detail;
      this.body = body;
    }
  }

  function apiKey() {
    return sessionStorage.getItem(KEY_NAME) || "";
  }

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    const key = apiKey();
    if (key) h["X-API-Key"] = key;
    return h;
  }

  async function errorOf(response) {
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    const code = (body && body.code) || `http_${response.status}`;
    let detail = (body && body.detail) || response.statusText;
    if (body && Array.isArray(body.errors)) {
      detail += ": " + body.errors.map((e) => `${(e.loc || []).join(".")} ${e.msg}`).join("; ");
    }
    return new ApiError(response.status, code, String(detail), body);
  }

  // One API call. options: method, json, form (FormData), body, query (object), accept, signal.
  async function api(service, path, options) {
    const o = options || {};
    const query = new URLSearchParams();
    for (const [k, v] of Object.entries(o.query || {})) {
      if (v !== undefined && v !== null && v !== "") query.append(k, String(v));
    }
    const qs = query.toString() ? `?${query}` : "";
    const init = { method: o.method || "GET", headers: headers({ Accept: o.accept || "application/json" }) };
    if (o.signal) init.signal = o.signal; // an AbortController's: a superseded request stops
    if (o.json !== undefined) {
      init.body = JSON.stringify(o.json);
      init.headers["Content-Type"] = "application/json";
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

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k === "dataset") Object.assign(node.dataset, v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function showError(target, err) {
    const box = typeof target === "string" ? document.getElementById(target) : target;
    if (!box) return;
    box.replaceChildren();
    if (!err) return;
    const code = err.code || "client_error";
    box.append(
      el("div", { class: "error", role: "alert", dataset: { code } },
        el("code", { text: code }), " ", err.status ? `(${err.status}) ` : "", err.detail || err.message)
    );
  }

  function progressBar(percent, state) {
    const p = Math.max(0, Math.min(100, Number(percent) || 0));
    return el("div", { class: `bar ${String(state || "").toLowerCase()}`, role: "progressbar",
      "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": p.toFixed(1) },
      el("div", { class: "fill", style: `width:${p.toFixed(1)}%` }),
      el("span", { class: "label", text: `${p.toFixed(0)}%` }));
  }

  function duration(seconds) {
    if (!Number.isFinite(seconds) || seconds < 0) return "";
    const s = Math.round(seconds);
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  }

  function when(iso) {
    return iso ? new Date(iso).toLocaleString() : "";
  }

  // A colour scale from dark blue through cyan and yellow to red (jet-like, perceptually
  // ordered enough for a heat map); t in [0, 1] -> [r, g, b].
  const STOPS = [
    [0.0, [12, 7, 134]], [0.25, [33, 145, 200]], [0.5, [94, 201, 98]],
    [0.75, [253, 231, 37]], [1.0, [220, 30, 30]],
  ];
  function colour(t) {
    const x = Math.max(0, Math.min(1, t));
    for (let i = 1; i < STOPS.length; i += 1) {
      const [t1, c1] = STOPS[i];
      const [t0, c0] = STOPS[i - 1];
      if (x <= t1) {
        const f = (x - t0) / (t1 - t0);
        return c0.map((v, j) => Math.round(v + f * (c1[j] - v)));
      }
    }
    return STOPS[STOPS.length - 1][1];
  }

  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }

  // series: [{name, points: [[x, y], ...]}]; a plain SVG chart with axes and a legend.
  function lineChart(title, series, xLabel) {
    const W = 420, H = 220, L = 48, R = 10, T = 24, B = 34;
    const all = series.flatMap((s) => s.points);
    const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
    let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    if (x0 === x1) x1 = x0 + 1;
    if (y0 === y1) { y0 -= 0.5; y1 += 0.5; }
    const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
    const sy = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": title });
    root.append(svg("text", { x: L, y: 15, class: "chart-title" }));
    root.lastChild.textContent = title;
    root.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
    root.append(svg("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }));
    for (const [v, y] of [[y0, H - B], [y1, T]]) {
      const label = svg("text", { x: L - 4, y: y + 4, class: "tick", "text-anchor": "end" });
      label.textContent = Number(v.toPrecision(3)).toString();
      root.append(label);
    }
    for (const [v, x] of [[x0, L], [x1, W - R]]) {
      const label = svg("text", { x, y: H - B + 14, class: "tick", "text-anchor": "middle" });
      label.textContent = Number(v.toPrecision(3)).toString();
      root.append(label);
    }
    const xl = svg("text", { x: (L + W - R) / 2, y: H - 4, class: "tick", "text-anchor": "middle" });
    xl.textContent = xLabel;
    root.append(xl);
    series.forEach((s, i) => {
      const hue = (i * 137) % 360;
      const d = s.points.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
      root.append(svg("path", { d, class: "series", stroke: `hsl(${hue} 70% 45%)`, "data-series": s.name }));
      const key = svg("text", { x: W - R - 4, y: T + 12 * (i + 1), class: "legend", "text-anchor": "end", fill: `hsl(${hue} 70% 40%)` });
      key.textContent = s.name;
      root.append(key);
    });
    return root;
  }

  function setupKeyForm() {
    const form = document.getElementById("key-form");
    const input = document.getElementById("api-key");
    const state = document.getElementById("key-state");
    const show = () => { state.textContent = apiKey() ? "key set for this session" : "no key"; };
    input.value = apiKey();
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(KEY_NAME, input.value.trim());
      show();
      document.dispatchEvent(new CustomEvent("console:key"));
    });
    document.getElementById("key-forget").addEventListener("click", () => {
      sessionStorage.removeItem(KEY_NAME);
      input.value = "";
      show();
    });
    show();
  }

  async function categories() {
    const answer = await api("anomaly_map", "v1/categories");
    return answer.items || [];
  }

  // The anomaly-map methods as the service publishes them (/readyz details.methods, built
  // from its method catalogue), in its order: the console keeps no list of its own. A 503
  // answer (a dependency missing) still carries them.
  async function methods() {
    const response = await fetch("/api/anomaly_map/readyz", { headers: headers({ Accept: "application/json" }) });
    const body = await response.json().catch(() => ({}));
    const found = (body.details && body.details.methods) || {};
    return Object.entries(found).map(([name, m]) => ({ name, label: m.label || name, ready: Boolean(m.ready), reason: m.reason || "" }));
  }

  // Fill a <select> with the methods, keeping its leading options (e.g. "category default");
  // a method that cannot serve now stays selectable, marked with the reason.
  async function fillMethods(select, keep) {
    const items = await methods();
    const fixed = [...select.options].slice(0, keep || 0);
    const options = items.map((m) => el("option", { value: m.name, text: m.ready ? m.label : `${m.label} (not ready)`, title: m.reason }));
    select.replaceChildren(...fixed, ...options);
    return items;
  }

  // The detector families as the finetune service publishes them (/v1/detector-families,
  // built from its family table): the console keeps no list of its own.
  async function detectorFamilies() {
    const answer = await api("finetune", "v1/detector-families");
    return { default: answer.default, items: answer.items || [] };
  }

  // Stored results (maps, overlays, loss curves, reports) through the pipeline API's
  // /v1/objects. Fetched with the key and shown from a blob: URL, because a plain link or
  // <img> would not send the X-API-Key header.
  function objectPath(key) {
    return `v1/objects/${key.split("/").map(encodeURIComponent).join("/")}`;
  }

  async function openBlob(service, path) {
    const blob = await api(service, path, { accept: "*/*" });
    window.open(URL.createObjectURL(blob), "_blank", "noopener");
  }

  function fileList(keys, onError) {
    return el("ul", { class: "files" }, keys.map((item) => {
      const name = item.key.split("/").slice(-2).join("/");
      const link = el("a", { href: "#", class: "object", dataset: { key: item.key }, text: name,
        onclick: (e) => { e.preventDefault(); openBlob("pipeline", objectPath(item.key)).catch(onError); } });
      const li = el("li", {}, link, el("span", { class: "muted", text: ` ${Math.ceil(item.size / 1024)} KiB` }));
      if (/\.(png|jpe?g)$/i.test(item.key)) {
        api("pipeline", objectPath(item.key), { accept: "image/*" })
          .then((blob) => li.prepend(el("img", { class: "thumb", alt: name, src: URL.createObjectURL(blob) })))
          .catch(() => null);
      }
      return li;
    }));
  }

  // Where the pipeline and step forms start, from the pipeline API: the newest pipeline's
  // request (and its maps output), else the demo's uploads when the store holds them
  // (scripts/run.sh puts them there), else nothing, so the fields show their placeholders.
  // Looked up once per page and key.
  const DEMO = { unlabelled: "uploads/demo-det/unlabelled/", labelled: "uploads/demo-det/labelled/", format: "voc", category: "demo-surface" };
  const NONE = { unlabelled: "", labelled: "", format: "auto", category: "", mapsPrefix: "", source: "none" };
  let defaults = null;

  async function newestPipeline() {
    const items = await api("pipeline", "v1/pipelines", { query: { limit: 1 } });
    return items.length ? api("pipeline", `v1/pipelines/${encodeURIComponent(items[0].id)}`) : null;
  }

  async function lookUpDefaults() {
    const record = await newestPipeline().catch(() => null);
    if (record) {
      const r = record.request;
      const maps = (record.steps || []).find((s) => s.name === "maps");
      const mapsPrefix = (maps && maps.outputs && maps.outputs.maps_prefix) || "";
      return { unlabelled: r.unlabelled_prefix, labelled: r.labelled.prefix, format: r.labelled.format, category: r.category, mapsPrefix, source: `pipeline ${record.id}` };
    }
    const demo = await api("pipeline", "v1/objects", { query: { prefix: DEMO.unlabelled, limit: 1 } }).catch(() => ({ keys: [] }));
    return demo.keys.length ? { ...DEMO, mapsPrefix: "", source: "demo uploads" } : NONE;
  }

  function formDefaults() {
    defaults = defaults || lookUpDefaults();
    return defaults;
  }

  document.addEventListener("console:key", () => { defaults = null; });
  document.addEventListener("DOMContentLoaded", setupKeyForm);
  return { config, api, ApiError, el, showError, progressBar, duration, when, colour, lineChart, categories, methods, fillMethods, detectorFamilies, objectPath, openBlob, fileList, formDefaults };
})();
