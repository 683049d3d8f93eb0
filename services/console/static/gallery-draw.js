// @ts-check
// What the gallery draws over one image: ground-truth boxes (a missed one dashed), pseudo
// boxes with their scores, a detector's predictions at the chosen confidence (a true
// positive solid, a false alarm marked), and the anomaly map on a canvas of its own grid.
import { el } from "./console.js";
import { colour, decodeFloats, svg } from "./draw.js";

/** @typedef {import("@api/finetune").components["schemas"]["GalleryItem"]} GalleryItem */
/** @typedef {import("@api/finetune").components["schemas"]["GalleryBox"]} GalleryBox */
/** @typedef {import("@api/finetune").components["schemas"]["MapPayload"]} MapPayload */
/** @typedef {{ h: number, w: number, values: Float32Array, min: number, max: number }} Grid */
/** @typedef {"truth" | "pseudo" | "pred"} BoxLayer */

const PSEUDO_STROKE = "#ff3fb4";
const HIT_STROKE = "#39d353";
const ALARM_STROKE = "#ff6a00";

/** @param {string} key */
export const keyPath = (key) => key.split("/").map(encodeURIComponent).join("/");
/** @param {GalleryItem} item */
export const truthOf = (item) => item.truth || [];
/** @param {GalleryItem} item */
export const pseudoOf = (item) => item.pseudo || [];
/**
 * A detector's boxes scoring at least `conf`.
 * @param {GalleryItem} item
 * @param {number} conf
 */
export const predictedOf = (item, conf) => (item.predicted || []).filter((b) => (b.score ?? 1) >= conf);

/**
 * @param {string[]} classes
 * @param {string} label
 */
const hue = (classes, label) => (Math.max(0, classes.indexOf(label)) * 137 + 200) % 360;

/**
 * @param {BoxLayer} layer
 * @param {GalleryBox} b
 * @param {string[]} classes
 */
function strokeOf(layer, b, classes) {
  if (layer === "pseudo") return PSEUDO_STROKE;
  if (layer === "pred") return b.tp === false ? ALARM_STROKE : HIT_STROKE;
  return `hsl(${hue(classes, b.label)} 90% 55%)`;
}

/**
 * The CSS classes of a box: its layer, and what the evaluation says of it.
 * @param {BoxLayer} layer
 * @param {GalleryBox} b
 */
function boxClass(layer, b) {
  /** @type {string[]} */
  const marks = [layer];
  if (layer === "truth" && b.found === false) marks.push("miss");
  if (layer === "pred" && b.tp === false) marks.push("false-alarm");
  return `box ${marks.join(" ")}`;
}

/**
 * @param {BoxLayer} layer
 * @param {GalleryBox} b
 */
function boxText(layer, b) {
  const score = b.score === null || b.score === undefined ? "" : ` ${b.score.toFixed(2)}`;
  const verdict = layer === "truth" && b.found === false ? " (missed)" : "";
  const alarm = layer === "pred" && b.tp === false ? " (false alarm)" : "";
  return `${b.label}${score}${verdict}${alarm}`;
}

/**
 * The boxes of one image in its own pixels; `fontPx` > 0 writes labels at that size on screen.
 * @param {GalleryItem} item
 * @param {string[]} classes
 * @param {{ width: number, height: number, fontPx: number, conf: number }} size
 */
export function overlay(item, classes, size) {
  const { width, height } = size;
  const root = svg("svg", { class: "overlay", viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none" });
  const font = Math.max(size.fontPx, 0);
  /** @type {[BoxLayer, GalleryBox[]][]} */
  const layers = [
    ["truth", truthOf(item)],
    ["pseudo", pseudoOf(item)],
    ["pred", predictedOf(item, size.conf)],
  ];
  for (const [layer, boxes] of layers) {
    const group = svg("g", { class: `layer-${layer}` });
    for (const b of boxes) {
      const text = boxText(layer, b);
      const at = { x: b.x1, y: b.y1, width: b.x2 - b.x1, height: b.y2 - b.y1 };
      const stroke = strokeOf(layer, b, classes);
      const rect = svg("rect", { class: boxClass(layer, b), ...at, stroke, "data-label": b.label });
      rect.append(svg("title", {}, text));
      group.append(rect);
      if (font) {
        const where = { x: b.x1 + font * 0.2, y: Math.max(font, b.y1 - font * 0.25), "font-size": font };
        group.append(svg("text", { class: "box-label", ...where }, text));
      }
    }
    root.append(group);
  }
  return root;
}

/**
 * One line under a tile: the name, the boxes, the evaluation's verdict, the anomaly score.
 * @param {GalleryItem} item
 * @param {number} conf
 */
export function caption(item, conf) {
  const boxes = truthOf(item).length + pseudoOf(item).length;
  const parts = [item.name, `${boxes} box${boxes === 1 ? "" : "es"}`];
  if (item.predicted) parts.push(`${predictedOf(item, conf).length} predicted`);
  if (item.misses) parts.push(`${item.misses} missed`);
  if (item.false_alarms) parts.push(`${item.false_alarms} false alarm${item.false_alarms === 1 ? "" : "s"}`);
  if (item.score !== null && item.score !== undefined) parts.push(`score ${item.score.toFixed(3)}`);
  return parts.join(" · ");
}

/**
 * @param {MapPayload} payload
 * @returns {Grid}
 */
export function decodeGrid(payload) {
  return { ...decodeFloats(payload), min: payload.min, max: payload.max };
}

/**
 * The map on a canvas of its own grid, coloured over its own range (as Inspect does); CSS
 * stretches it over the image, the browser smoothing the patch grid.
 * @param {Grid} grid
 */
export function mapCanvas(grid) {
  const canvas = el("canvas", { class: "layer-map", width: grid.w, height: grid.h });
  const ctx = canvas.getContext("2d");
  if (!ctx) return canvas;
  const pixels = ctx.createImageData(grid.w, grid.h);
  const span = grid.max - grid.min || 1;
  grid.values.forEach((v, i) => {
    pixels.data.set([...colour((v - grid.min) / span), 255], i * 4);
  });
  ctx.putImageData(pixels, 0, 0);
  return canvas;
}
