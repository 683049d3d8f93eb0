// @ts-check
// Inspect: one image -> the anomaly map (drawn over the image with a colour bar, from the
// float map the anomaly-map API returns) and the served detector's boxes, side by side.
import { api, byId, el, formOf, input, on, select, showError, table } from "./console.js";
import { colour, decodeFloats } from "./draw.js";
import { categories, fillMethods, objectPath } from "./lookups.js";

/** @typedef {import("@api/anomaly_map").components["schemas"]["AnomalyMapResponse"]} AnomalyMapResponse */
/** @typedef {import("@api/anomaly_map").components["schemas"]["MapPayload"]} MapPayload */
/** @typedef {import("@api/anomaly_map").paths["/v1/anomaly-maps"]["post"]} MapOperation */
/** @typedef {Omit<NonNullable<MapOperation["requestBody"]>["content"]["multipart/form-data"], "image">} MapForm */
/** @typedef {import("@api/inference").components["schemas"]["DetectResponse"]} DetectResponse */
/** @typedef {import("@api/inference").components["schemas"]["DetectionOut"]} Detection */
/** @typedef {NonNullable<import("@api/inference").paths["/v1/detect"]["post"]["parameters"]["query"]>} DetectQuery */
/** @typedef {{ h: number, w: number, values: Float32Array }} FloatMap */

const canvas = (/** @type {string} */ id) => byId(id, HTMLCanvasElement);
/** @type {{ image: ImageBitmap | null, file: File | null, map: FloatMap | null, detections: Detection[], raw: Record<string, unknown> }} */
const view = { image: null, file: null, map: null, detections: [], raw: {} };

async function loadCategories() {
  try {
    const items = await categories();
    const options = items.map((c) => el("option", { value: c.name, text: `${c.name} (v ${c.version}, ${c.method})` }));
    select("category").replaceChildren(...options);
    if (!items.length)
      showError("map-error", { code: "no_categories", detail: "create a category first (Categories page)" });
    byId("inspect-status").textContent = items.length ? "" : "No categories yet: create one on the Categories page.";
  } catch (err) {
    showError("inspect-status", err);
  }
}

/** @param {File | null | undefined} file */
function pick(file) {
  if (!file) return;
  byId("file-name").textContent = `${file.name} (${Math.round(file.size / 1024)} KiB)`;
  view.file = file;
}

/**
 * @param {MapPayload} payload
 * @returns {FloatMap}
 */
function decodeMap(payload) {
  const [h, w] = payload.shape;
  if (typeof payload.data !== "string") return { h, w, values: Float32Array.from(payload.data.flat()) };
  return decodeFloats({ shape: payload.shape, data: payload.data });
}

/**
 * @param {HTMLCanvasElement} target
 * @param {ImageBitmap} image
 */
function fitCanvas(target, image) {
  const scale = Math.min(480 / image.width, 480 / image.height);
  target.width = Math.max(1, Math.round(image.width * scale));
  target.height = Math.max(1, Math.round(image.height * scale));
  return scale;
}

/** @param {HTMLCanvasElement} target */
function context(target) {
  const ctx = target.getContext("2d");
  if (!ctx) throw new Error("no 2d canvas");
  return ctx;
}

/** @param {ImageBitmap} image */
function drawMap(image) {
  const target = canvas("map-canvas");
  const ctx = context(target);
  fitCanvas(target, image);
  ctx.drawImage(image, 0, 0, target.width, target.height);
  if (!view.map) return;
  const { h, w, values } = view.map;
  let lo = Number.POSITIVE_INFINITY;
  let hi = Number.NEGATIVE_INFINITY;
  for (const v of values) {
    lo = Math.min(lo, v);
    hi = Math.max(hi, v);
  }
  const span = hi - lo || 1;
  const small = el("canvas", { width: w, height: h });
  const pixels = context(small).createImageData(w, h);
  values.forEach((v, i) => {
    const [r, g, b] = colour((v - lo) / span);
    pixels.data.set([r, g, b, 255], i * 4);
  });
  context(small).putImageData(pixels, 0, 0);
  ctx.globalAlpha = Number(input("alpha").value);
  ctx.imageSmoothingEnabled = true; // bilinear upsampling of the patch grid
  ctx.drawImage(small, 0, 0, target.width, target.height);
  ctx.globalAlpha = 1;
  drawColourBar(lo, hi);
}

/**
 * @param {number} lo
 * @param {number} hi
 */
function drawColourBar(lo, hi) {
  const bar = canvas("colorbar");
  const ctx = context(bar);
  for (let y = 0; y < bar.height; y += 1) {
    const [r, g, b] = colour(1 - y / (bar.height - 1));
    ctx.fillStyle = `rgb(${r},${g},${b})`;
    ctx.fillRect(0, y, bar.width, 1);
  }
  byId("bar-max").textContent = hi.toFixed(3);
  byId("bar-min").textContent = lo.toFixed(3);
}

/** @param {ImageBitmap} image */
function drawDetections(image) {
  const target = canvas("det-canvas");
  const ctx = context(target);
  const scale = fitCanvas(target, image);
  ctx.drawImage(image, 0, 0, target.width, target.height);
  const threshold = Number(input("threshold").value);
  byId("threshold-value").textContent = threshold.toFixed(2);
  const kept = view.detections.filter((d) => d.score >= threshold);
  ctx.lineWidth = 2;
  ctx.font = "12px sans-serif";
  for (const d of kept) {
    const [x1, y1, x2, y2] = d.box_xyxy.map((v) => v * scale);
    const hue = (d.class_id * 67) % 360;
    ctx.strokeStyle = `hsl(${hue} 90% 50%)`;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    ctx.fillStyle = ctx.strokeStyle;
    ctx.fillText(`${d.class_name} ${d.score.toFixed(2)}`, x1 + 2, Math.max(12, y1 - 3));
  }
  byId("det-count").textContent = `${kept.length} box${kept.length === 1 ? "" : "es"} ≥ ${threshold.toFixed(2)}`;
  const rows = kept
    .slice(0, 50)
    .map((d) =>
      el(
        "tr",
        { class: "det-row" },
        el("td", { text: d.class_name }),
        el("td", { text: d.score.toFixed(3) }),
        el("td", { text: d.box_xyxy.map((v) => v.toFixed(0)).join(", ") }),
      ),
    );
  table("det-table").tBodies[0].replaceChildren(...rows);
}

function showRaw() {
  const raw = JSON.parse(JSON.stringify(view.raw));
  if (raw.anomaly_map?.map) raw.anomaly_map.map.data = "(float32 map, base64; shown above)";
  byId("raw-json").textContent = JSON.stringify(raw, null, 2);
}

/** @param {unknown} err what a failed call leaves in the raw JSON */
function rawOf(err) {
  return (err && typeof err === "object" && "body" in err && err.body) || { error: String(err) };
}

/** @param {File} file */
async function runMap(file) {
  const mode = /** @type {MapForm["mode"]} */ (select("mode").value || undefined);
  /** @type {MapForm} */
  const fields = { category: select("category").value, mode, map_encoding: "base64" };
  const form = formOf(fields);
  form.append("image", file);
  try {
    /** @type {AnomalyMapResponse} */
    const answer = await api("anomaly_map", "v1/anomaly-maps", { method: "POST", form });
    view.raw.anomaly_map = answer;
    view.map = answer.map ? decodeMap(answer.map) : null;
    byId("score").textContent = answer.image_score.toFixed(4);
    const meta = `${answer.mode} · ${answer.model} · map ${answer.map_shape.join("×")} · v ${answer.category_version}`;
    byId("map-meta").textContent = meta;
  } catch (err) {
    view.map = null;
    view.raw.anomaly_map = rawOf(err);
    byId("score").textContent = "–";
    showError("map-error", err);
  }
}

/** @param {File} file */
async function runDetect(file) {
  const form = new FormData();
  form.append("image", file);
  /** @type {DetectQuery} */
  const query = { conf: 0.01 };
  const model = input("model").value.trim();
  if (model) query.model = model;
  try {
    /** @type {DetectResponse} */
    const answer = await api("inference", "v1/detect", { method: "POST", form, query });
    view.raw.detect = answer;
    view.detections = answer.detections;
    byId("det-model").textContent = `${answer.model.name} v ${answer.model.version}`;
  } catch (err) {
    view.detections = [];
    view.raw.detect = rawOf(err);
    showError("det-error", err);
  }
}

/** @param {SubmitEvent} event */
async function run(event) {
  event.preventDefault();
  const file = view.file || input("image").files?.[0];
  if (!file) return showError("inspect-status", { code: "no_image", detail: "pick or drop an image first" });
  showError("inspect-status", null);
  showError("map-error", null);
  showError("det-error", null);
  const button = byId("run", HTMLButtonElement);
  button.disabled = true;
  byId("inspect-status").textContent = "running…";
  try {
    view.image = await createImageBitmap(file);
  } catch (err) {
    button.disabled = false;
    const detail = `the browser cannot show this file: ${err instanceof Error ? err.message : err}`;
    return showError("inspect-status", { code: "undecodable_image", detail });
  }
  view.raw = {};
  await Promise.all([runMap(file), runDetect(file)]);
  byId("results").hidden = false;
  drawMap(view.image);
  drawDetections(view.image);
  showRaw();
  byId("inspect-status").textContent = "";
  button.disabled = false;
  document.body.dataset.inspected = String(Date.now());
}

async function loadMethods() {
  try {
    await fillMethods(select("mode"), 1);
  } catch (err) {
    showError("inspect-status", err);
  }
}

// /inspect?key=<store key> (the gallery's link): the stored image, fetched with the key
// through the pipeline API's /v1/objects, is picked as if it had been dropped here.
/** @param {string} key */
async function pickStored(key) {
  try {
    /** @type {Blob} */
    const blob = await api("pipeline", objectPath(key), { accept: "image/*" });
    pick(new File([blob], key.split("/").pop() || key, { type: blob.type }));
  } catch (err) {
    showError("inspect-status", err);
  }
}

const drop = byId("drop");
drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  pick(e.dataTransfer?.files[0]);
});
input("image").addEventListener("change", () => pick(input("image").files?.[0]));
byId("inspect-form", HTMLFormElement).addEventListener("submit", run);
input("alpha").addEventListener("input", () => view.image && drawMap(view.image));
input("threshold").addEventListener("input", () => view.image && drawDetections(view.image));
on("console:key", () => {
  loadCategories();
  loadMethods();
});
loadCategories();
loadMethods();
const stored = new URLSearchParams(location.search).get("key");
if (stored) pickStored(stored);
