// @ts-check
// Drawing helpers of the console pages: progress bars, durations and times, the heat-map
// colour scale, float maps, and hand-drawn SVG line charts.
import { el } from "./console.js";

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
