// @ts-check
// Models: the detector registry (finetune API), each version's metrics and lineage, and
// promotion to a stage (the inference service follows 'production').
import { api, byId, el, emit, isAbort, Latest, on, showError, table } from "./console.js";
import { when } from "./draw.js";
import { evaluationOption } from "./gallery-sources.js";

/** @typedef {import("@api/finetune").components["schemas"]["ModelList"]} ModelList */
/** @typedef {import("@api/finetune").components["schemas"]["ModelSummaryResponse"]} ModelSummary */
/** @typedef {import("@api/finetune").components["schemas"]["ModelDetailResponse"]} ModelDetail */
/** @typedef {import("@api/finetune").components["schemas"]["ModelVersion"]} ModelVersion */
/** @typedef {import("@api/finetune").components["schemas"]["PromoteRequest"]} PromoteRequest */
/** @typedef {import("@api/finetune").components["schemas"]["PromoteResponse"]} PromoteResponse */

const STAGES = ["production", "staging", "archived"];
/** @type {string | null} */
let openName = null;
const opening = new Latest(); // a newer pick supersedes the one loading

/** @param {Record<string, unknown> | undefined} obj */
function summary(obj) {
  const entries = Object.entries(obj || {}).filter(([, v]) => v !== null && typeof v !== "object");
  return entries
    .slice(0, 6)
    .map(([k, v]) => `${k}=${typeof v === "number" ? Number(v.toPrecision(4)) : v}`)
    .join(" · ");
}

/** @param {ModelSummary} m */
function modelRow(m) {
  /** @param {MouseEvent} e */
  const follow = (e) => {
    e.preventDefault();
    open(m.name);
  };
  return el(
    "tr",
    { class: "clickable", dataset: { model: m.name }, onclick: () => open(m.name) },
    el("td", {}, el("a", { href: `?name=${encodeURIComponent(m.name)}`, onclick: follow, text: m.name })),
    el("td", { text: m.kind || "" }),
    el("td", {}, el("code", { text: m.latest || "" })),
    el("td", { text: String(m.versions) }),
    el(
      "td",
      {},
      Object.entries(m.stages).map(([s, v]) => el("span", { class: "chip", text: `${s} → ${v}` })),
    ),
  );
}

async function refresh() {
  showError("models-error", null);
  try {
    /** @type {ModelList} */
    const answer = await api("finetune", "v1/models");
    table("model-table").tBodies[0].replaceChildren(...answer.items.map(modelRow));
  } catch (err) {
    showError("models-error", err);
  }
}

/** @param {unknown} value */
function percent(value) {
  return typeof value === "number" ? `${(100 * value).toFixed(1)} %` : "–";
}

/**
 * @param {string} name
 * @param {ModelVersion} v
 */
function versionRow(name, v) {
  const stage = el(
    "select",
    { class: "stage-select" },
    STAGES.map((s) => el("option", { value: s, text: s })),
  );
  const promoteIt = () => promote(name, v.version, stage.value);
  const button = el("button", { type: "button", class: "promote", text: "Promote", onclick: promoteIt });
  const lineage = v.lineage || {};
  const metrics = v.metrics || {};
  const evaluation = `/evaluation?${new URLSearchParams({ model: name, version: v.version })}`;
  const dataset = { version: v.version, stages: v.stages.join(","), map50: String(metrics.map50 ?? "") };
  const lineageText = JSON.stringify(lineage, null, 2);
  return el(
    "tr",
    { class: "version", dataset },
    el("td", {}, el("code", { class: "id", text: v.version })),
    el("td", { text: when(v.created_at) }),
    el("td", { text: v.kind || "" }),
    el(
      "td",
      { class: "map" },
      percent(metrics.map50),
      el("span", { class: "muted", text: ` / ${percent(metrics.map50_95)}` }),
    ),
    el("td", { text: summary(v.metrics) }),
    el(
      "td",
      {},
      el("details", {}, el("summary", { text: summary(lineage) || "lineage" }), el("pre", { text: lineageText })),
    ),
    el(
      "td",
      { class: "stages" },
      v.stages.map((s) => el("span", { class: `chip stage-${s}`, text: s })),
    ),
    el("td", {}, stage, " ", button),
    el(
      "td",
      {},
      el("a", {
        class: "evaluation-link",
        href: evaluation,
        text: v.evaluations.length ? "errors, compare" : "evaluate",
      }),
    ),
  );
}

// An evaluation is saved as `<dataset>-<version>-<split>.json`; the split is the last part (or a
// `mini-N` subset); a split named with a dash of its own is shown on the Evaluation page.
const SPLIT_SUFFIX = /-(mini-\d+|[A-Za-z0-9._]+)$/;

/**
 * Every saved evaluation of the model's versions, newest version first, as gallery sets.
 * @param {string} name
 * @param {ModelVersion[]} versions newest first
 */
function offerPredictions(name, versions) {
  const options = versions.flatMap((v) => {
    const names = v.evaluations.map((e) => e.replace(/\.json$/, ""));
    const splits = new Set(names.map((e) => SPLIT_SUFFIX.exec(e)?.[1]).filter((x) => x !== undefined));
    return [...splits].map((split) => evaluationOption(name, v.version, split));
  });
  emit("console:gallery-sources", { groups: [{ label: `${name}: predictions`, options }], choose: true });
}

/** @param {string} name */
async function open(name) {
  openName = name;
  const wanted = new URLSearchParams(location.search).get("version");
  const keep = wanted ? `&version=${encodeURIComponent(wanted)}` : "";
  window.history.replaceState(null, "", `?name=${encodeURIComponent(name)}${keep}`);
  const signal = opening.next();
  try {
    /** @type {ModelDetail} */
    const detail = await api("finetune", `v1/models/${encodeURIComponent(name)}`, { signal });
    byId("model-detail").hidden = false;
    byId("model-title").textContent = `${detail.name} · latest ${detail.latest || "none"}`;
    const newest = detail.versions.slice().reverse();
    table("version-table").tBodies[0].replaceChildren(...newest.map((v) => versionRow(name, v)));
    offerPredictions(name, newest);
    if (wanted) document.querySelector(`tr.version[data-version="${CSS.escape(wanted)}"]`)?.classList.add("selected");
  } catch (err) {
    if (!isAbort(err)) showError("models-error", err);
  }
}

/**
 * @param {string} name
 * @param {string} version
 * @param {string} stage
 */
async function promote(name, version, stage) {
  showError("promote-status", null);
  /** @type {PromoteRequest} */
  const body = { stage };
  const path = /** @type {const} */ (
    `v1/models/${encodeURIComponent(name)}/versions/${encodeURIComponent(version)}/promote`
  );
  try {
    /** @type {PromoteResponse} */
    const answer = await api("finetune", path, { method: "POST", json: body });
    const text = `${answer.name} ${answer.version} is now ${answer.stage}`;
    byId("promote-status").replaceChildren(el("div", { class: "ok", role: "status", text }));
    await Promise.all([refresh(), open(name)]);
  } catch (err) {
    showError("promote-status", err);
  }
}

on("console:key", () => {
  refresh();
  if (openName) open(openName);
});
const params = new URLSearchParams(location.search);
refresh().then(() => {
  const name = params.get("name");
  if (name) open(name);
});
