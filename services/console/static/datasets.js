// @ts-check
// Datasets: the imported labelled sets (finetune API) and, per version, the summary the
// import stored before any training: images per split with defective / defect-free /
// unlabelled counts, boxes per class, the box-size histogram at the training input size
// (boxes that vanish there flagged), duplicate groups and images that did not decode.
import { api, byId, el, emit, isAbort, Latest, on, select, showError, table } from "./console.js";
import { datasetGroup } from "./gallery-sources.js";

/** @typedef {import("@api/finetune").components["schemas"]["DatasetList"]} DatasetList */
/** @typedef {import("@api/finetune").components["schemas"]["DatasetDetail"]} DatasetDetail */
/** @typedef {import("@api/finetune").components["schemas"]["DatasetVersion"]} DatasetVersion */
/**
 * The import's summary, stored with the version (the schema leaves it a free object).
 * @typedef {object} ImportSummary
 * @property {number} images
 * @property {string[]} classes
 * @property {Record<string, SplitCounts>} [splits]
 * @property {BoxSizes} box_sizes
 * @property {{ groups: number, images: number, examples: string[][] }} [duplicates]
 * @property {string[]} [failed_to_decode]
 */
/** @typedef {{ images: number, defective: number, defect_free: number, unlabelled: number, boxes?: Record<string, number> }} SplitCounts */
/** @typedef {{ edges_px: number[], counts: number[], vanishing: number, vanish_px: number, imgsz: number }} BoxSizes */

/** @type {DatasetDetail | null} */
let detail = null;
const opening = new Latest(); // a newer pick supersedes the one loading

/** @param {import("@api/finetune").components["schemas"]["DatasetSummary"]} d */
function datasetRow(d) {
  /** @param {MouseEvent} e */
  const follow = (e) => {
    e.preventDefault();
    open(d.name);
  };
  return el(
    "tr",
    { class: "clickable", dataset: { dataset: d.name }, onclick: () => open(d.name) },
    el("td", {}, el("a", { href: `?name=${encodeURIComponent(d.name)}`, onclick: follow, text: d.name })),
    el("td", {}, el("code", { text: d.latest || "" })),
    el("td", { text: String(d.versions) }),
  );
}

async function refresh() {
  showError("datasets-error", null);
  try {
    /** @type {DatasetList} */
    const answer = await api("finetune", "v1/datasets");
    table("dataset-table").tBodies[0].replaceChildren(...answer.items.map(datasetRow));
  } catch (err) {
    showError("datasets-error", err);
  }
}

/** @param {string} name */
async function open(name) {
  window.history.replaceState(null, "", `?name=${encodeURIComponent(name)}`);
  const signal = opening.next();
  /** @type {DatasetDetail} */
  let found;
  try {
    found = await api("finetune", `v1/datasets/${encodeURIComponent(name)}`, { signal });
  } catch (err) {
    if (!isAbort(err)) showError("datasets-error", err);
    return;
  }
  detail = found;
  byId("dataset-detail").hidden = false;
  byId("dataset-title").textContent = `${found.name} · latest ${found.latest || "none"}`;
  const versions = found.versions.slice().reverse();
  select("dataset-version").replaceChildren(
    ...versions.map((v) => el("option", { value: v.version, text: v.version })),
  );
  show(versions[0]);
}

/** @param {ImportSummary} summary */
function splitTable(summary) {
  const classes = summary.classes || [];
  const titles = ["split", "images", "with defects", "defect-free", "unlabelled", ...classes];
  const head = el(
    "tr",
    {},
    titles.map((h) => el("th", { text: h })),
  );
  const rows = Object.entries(summary.splits || {}).map(([name, c]) =>
    el(
      "tr",
      { class: "split-row", dataset: { split: name, images: String(c.images), defective: String(c.defective) } },
      el("td", {}, el("code", { text: name }), name.startsWith("mini-") ? " (of train)" : ""),
      el("td", { text: String(c.images) }),
      el("td", { text: String(c.defective) }),
      el("td", { text: String(c.defect_free) }),
      el("td", { class: c.unlabelled ? "warn" : "", text: String(c.unlabelled) }),
      classes.map((k) => el("td", { text: String(c.boxes?.[k] || 0) })),
    ),
  );
  return el("table", { class: "compact", id: "split-table" }, el("thead", {}, head), el("tbody", {}, rows));
}

/** @param {BoxSizes} sizes */
function sizeHistogram(sizes) {
  const edges = sizes.edges_px;
  const labels = [
    `< ${edges[0]}`,
    ...edges.slice(1).map((e, i) => `${edges[i]}-${e}`),
    `>= ${edges[edges.length - 1]}`,
  ];
  const peak = Math.max(1, ...sizes.counts);
  const rows = sizes.counts.map((n, i) =>
    el(
      "tr",
      { class: `size-bin${i === 0 && n ? " vanishing" : ""}`, dataset: { count: String(n) } },
      el("td", { text: `${labels[i]} px` }),
      el("td", {}, el("div", { class: "hbar", style: `width:${((100 * n) / peak).toFixed(1)}%`, title: String(n) })),
      el("td", { text: String(n) }),
    ),
  );
  const warning = `${sizes.vanishing} boxes are under ${sizes.vanish_px} px at ${sizes.imgsz} px: train at a larger imgsz or tile the images.`;
  const note = sizes.vanishing ? el("p", { class: "warn", id: "vanishing", text: warning }) : null;
  const histogram = el("table", { class: "compact histogram", id: "size-histogram" }, el("tbody", {}, rows));
  return [el("h3", { text: `Box shorter side at ${sizes.imgsz} px` }), histogram, note];
}

/** @param {DatasetVersion | undefined} version */
function show(version) {
  if (version && detail) {
    const splits = datasetGroup(detail.name, version.version, version.splits || {});
    emit("console:gallery-sources", { groups: [splits], choose: true });
  }
  const box = byId("dataset-summary");
  const summary = /** @type {ImportSummary | undefined} */ (version?.summary);
  if (!version || !summary) {
    const text = "This version was imported before summaries were stored: re-import it to see one.";
    box.replaceChildren(el("p", { text }));
    return;
  }
  const dups = summary.duplicates || { groups: 0, images: 0, examples: [] };
  const failed = summary.failed_to_decode || [];
  const warnings = /** @type {string[]} */ (version.warnings || []);
  const examples = dups.examples
    .slice(0, 2)
    .map((g) => g.join(" = "))
    .join("; ");
  const dupText = dups.groups
    ? `${dups.groups} groups (${dups.images} images), each kept on one side of every split; e.g. ${examples}`
    : "none found";
  const headline = `${summary.images} images · classes ${summary.classes.join(", ")} · ${version.layout || version.format || ""}`;
  const failedText = `Left out, not decodable: ${failed.slice(0, 20).join(", ")}`;
  const parts = [
    el("p", { id: "dataset-headline", text: headline }),
    ...warnings.map((w) => el("p", { class: "warn import-warning", text: w })),
    splitTable(summary),
    ...sizeHistogram(summary.box_sizes),
    el("h3", { text: "Duplicates" }),
    el("p", { id: "duplicates", dataset: { groups: String(dups.groups) }, text: dupText }),
    failed.length ? el("p", { class: "warn", id: "failed", text: failedText }) : null,
  ];
  box.replaceChildren(...parts.filter((part) => part !== null));
}

select("dataset-version").addEventListener("change", () =>
  show(detail?.versions.find((v) => v.version === select("dataset-version").value)),
);
on("console:key", () => refresh());
const params = new URLSearchParams(location.search);
refresh().then(() => {
  const name = params.get("name");
  if (name) open(name);
});
