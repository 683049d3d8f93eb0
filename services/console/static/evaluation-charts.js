// @ts-check
// The Evaluation page's three views of one saved evaluation: AP and errors per class, the
// precision-recall curves (hand-drawn SVG), and the confusion matrix with its background
// row and column.
import { byId, el, table } from "./console.js";
import { svg } from "./draw.js";
import { pct } from "./review.js";

/** @typedef {import("@api/finetune").components["schemas"]["EvaluationDocument"]} EvaluationDocument */
/** @typedef {import("@api/finetune").components["schemas"]["ErrorAnalysis"]} ErrorAnalysis */

/** @param {EvaluationDocument} doc */
export function classTable(doc) {
  const errors = doc.errors;
  const labels = errors ? errors.confusion.labels : [];
  const rows = Object.entries(doc.per_class).map(([cls, ap]) => {
    const k = labels.indexOf(cls);
    const m = errors && k >= 0 ? errors.confusion.matrix : null;
    const misses = m ? m[k].reduce((s, v, j) => s + (j === k ? 0 : v), 0) : "";
    const alarms = m ? m.reduce((s, row, i) => s + (i === k ? 0 : row[k]), 0) : "";
    return el(
      "tr",
      { class: "class-row", dataset: { cls } },
      el("td", { text: cls }),
      el("td", { text: String(ap.num_gt) }),
      el("td", { text: ap.map50 === null ? "no boxes" : pct(ap.map50) }),
      el("td", { text: pct(ap.map50_95) }),
      el("td", { text: String(misses) }),
      el("td", { text: String(alarms) }),
    );
  });
  table("class-table").tBodies[0].replaceChildren(...rows);
}

// One chart, recall 0..1 across, precision 0..1 up; each class up to the recall it reaches.
/** @param {EvaluationDocument} doc */
export function prCurves(doc) {
  const curves = doc.pr_curves;
  if (!curves) {
    byId("pr-curves").replaceChildren(el("p", { class: "muted", text: "Not saved with this evaluation." }));
    return;
  }
  const [W, H, L, R, T, B] = [300, 230, 36, 10, 22, 30];
  /** @param {number} r */
  const sx = (r) => L + r * (W - L - R);
  /** @param {number} p */
  const sy = (p) => H - B - p * (H - T - B);
  const root = svg("svg", {
    class: "pr",
    viewBox: `0 0 ${W} ${H}`,
    role: "img",
    "aria-label": "precision-recall curves",
  });
  root.append(svg("text", { x: L, y: 14, class: "title" }, "Precision-recall, IoU 0.5"));
  for (const v of [0, 0.5, 1]) {
    root.append(svg("line", { x1: sx(0), y1: sy(v), x2: sx(1), y2: sy(v), class: v ? "grid" : "axis" }));
    root.append(svg("text", { x: L - 4, y: sy(v) + 3, "text-anchor": "end" }, String(v)));
    root.append(svg("text", { x: sx(v), y: H - B + 12, "text-anchor": "middle" }, String(v)));
  }
  root.append(svg("line", { x1: sx(0), y1: sy(0), x2: sx(0), y2: sy(1), class: "axis" }));
  root.append(svg("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" }, "recall"));
  Object.entries(curves.classes).forEach(([cls, curve], i) => {
    const colour = `hsl(${(i * 137) % 360} 70% 42%)`;
    const points = curves.recall.map((r, j) => [r, curve.precision[j]]).filter(([r]) => r <= curve.max_recall);
    const d = points.map(([r, p], j) => `${j ? "L" : "M"}${sx(r).toFixed(1)},${sy(p).toFixed(1)}`).join(" ");
    if (d) root.append(svg("path", { d, class: "curve", stroke: colour, "data-class": cls }));
    const ap = doc.per_class[cls]?.map50;
    root.append(
      svg("text", { x: W - R - 2, y: T + 12 * (i + 1), "text-anchor": "end", fill: colour }, `${cls} ${pct(ap)}`),
    );
  });
  byId("pr-curves").replaceChildren(root);
}

/** @param {ErrorAnalysis | null | undefined} errors */
export function confusion(errors) {
  const target = table("confusion");
  if (!errors) {
    target.replaceChildren();
    return;
  }
  const { labels, matrix } = errors.confusion;
  const peak = Math.max(1, ...matrix.flat());
  const head = el(
    "tr",
    {},
    el("th", { text: "truth \\ said" }),
    labels.map((l) => el("th", { text: l })),
  );
  /**
   * @param {number} n
   * @param {boolean} diagonal
   */
  const cell = (n, diagonal) => {
    const shade = `background: rgba(${diagonal ? "29,127,70" : "179,38,30"}, ${(0.12 + (0.6 * n) / peak).toFixed(2)})`;
    return el("td", {
      class: diagonal ? "diagonal" : "",
      text: String(n),
      dataset: { count: String(n) },
      style: n ? shade : "",
    });
  };
  const rows = matrix.map((row, i) =>
    el(
      "tr",
      { dataset: { truth: labels[i] } },
      el("th", { class: "gt-label", text: labels[i] }),
      row.map((n, j) => cell(n, i === j)),
    ),
  );
  target.replaceChildren(el("thead", {}, head), el("tbody", {}, rows));
}
