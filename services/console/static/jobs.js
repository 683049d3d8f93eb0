// @ts-check
// Jobs: follow every job record (progress bar, ETA, message, error code, artifacts), cancel,
// and draw metric curves from the records; a job started from the form (job-form.js) is
// selected and followed.
//
// The job records (GET /v1/jobs on each API, one shared store) are the source of truth.
import { api, byId, el, isAbort, Latest, on, pollMs, select, showError, table } from "./console.js";
import { duration, lineChart, progressBar } from "./draw.js";
import { wireJobForm } from "./job-form.js";
import { fileList, objectPath, openBlob } from "./lookups.js";

/** @typedef {import("./draw.js").Series} Series */
/** @typedef {import("./lookups.js").ObjectList} ObjectList */
/** @typedef {import("@api/routes").JobService} JobService */
/** @typedef {import("@api/finetune").components["schemas"]["JobRecord"]} JobRecord */
/** @typedef {NonNullable<import("@api/finetune").paths["/v1/jobs"]["get"]["parameters"]["query"]>} JobQuery */
/** @typedef {{ x: number, updated_at: string | undefined, metrics: Record<string, unknown> }} Seen */

/** @type {JobService[]} */
const JOB_SERVICES = ["anomaly_map", "pretrain", "finetune"];
const TERMINAL = new Set(["SUCCEEDED", "FAILED", "CANCELED"]);
/** @type {Map<string, Seen[]>} job id -> the records seen while polling */
const history = new Map();
/** @type {Map<string, JobService>} job id -> an API that listed it */
const serviceOf = new Map();
/** @type {Map<string, ObjectList["keys"] | null>} job id -> its outputs (read once it finished) */
const files = new Map();
/** @type {JobRecord[]} */
let jobs = [];
/** @type {string | null} */
let selected = null;
const polling = new Latest(); // a poll the user asked for supersedes the one in flight

/**
 * @param {AbortSignal} signal
 * @returns {Promise<JobRecord[]>}
 */
async function listAll(signal) {
  const state = /** @type {JobQuery["state"]} */ (select("state-filter").value || undefined);
  /** @type {JobQuery} */
  const query = { limit: 50, state };
  /** @type {PromiseSettledResult<JobRecord[]>[]} */
  const answers = await Promise.allSettled(JOB_SERVICES.map((s) => api(s, "v1/jobs", { query, signal })));
  /** @type {Map<string, JobRecord>} */
  const merged = new Map();
  answers.forEach((a, i) => {
    if (a.status !== "fulfilled") return;
    for (const job of a.value) {
      merged.set(job.id, job);
      if (!serviceOf.has(job.id)) serviceOf.set(job.id, JOB_SERVICES[i]);
    }
  });
  const first = answers[0];
  if (!merged.size && answers.every((a) => a.status === "rejected") && first.status === "rejected") throw first.reason;
  return [...merged.values()].sort((a, b) => (b.created_at || "").localeCompare(a.created_at || ""));
}

/** @param {JobRecord} job */
function eta(job) {
  const progress = job.progress || 0;
  if (job.state !== "RUNNING" || !job.started_at || progress <= 0) return "";
  const elapsed = (Date.now() - Date.parse(job.started_at)) / 1000;
  return duration((elapsed * (100 - progress)) / progress);
}

/** @param {unknown} v */
const finite = (v) => typeof v === "number" && Number.isFinite(v);

/** @param {JobRecord} job */
function record(job) {
  const seen = history.get(job.id) || [];
  const last = seen[seen.length - 1];
  if (!last || last.updated_at !== job.updated_at) {
    const m = job.metrics || {};
    const x = Number(finite(m.epoch) ? m.epoch : finite(m.step) ? m.step : job.progress);
    seen.push({ x, updated_at: job.updated_at, metrics: m });
  }
  history.set(job.id, seen);
}

/** @param {JobRecord} job */
function artifactLinks(job) {
  // One line per artifact: a model version links to Models, a stored object opens.
  return (job.artifacts || []).map((ref) => {
    const [name, version] = ref.split(":");
    /** @param {MouseEvent} e */
    const openObject = (e) => {
      e.preventDefault();
      e.stopPropagation();
      openBlob("pipeline", objectPath(ref)).catch((err) => showError("jobs-error", err));
    };
    const href = `/models?name=${encodeURIComponent(name)}&version=${encodeURIComponent(version)}`;
    const link = version
      ? el("a", { href, text: ref })
      : el("a", { href: "#", class: "object", text: ref, onclick: openObject });
    return el("div", { class: "artifact" }, link);
  });
}

/** @param {JobRecord} job */
function row(job) {
  const state = job.state || "";
  const cancel = TERMINAL.has(state)
    ? null
    : el("button", {
        type: "button",
        class: "quiet cancel",
        text: job.cancel_requested ? "cancelling…" : "Cancel",
        disabled: job.cancel_requested,
        /** @param {MouseEvent} e */
        onclick: (e) => {
          e.stopPropagation();
          cancelJob(job);
        },
      });
  const message = job.error
    ? el("span", { class: "error-inline" }, el("code", { text: job.error_code || "error" }), " ", job.error)
    : job.message;
  const dataset = { jobId: job.id, state, progress: String(job.progress) };
  const select = () => {
    selected = job.id;
    render();
  };
  return el(
    "tr",
    { class: `job clickable ${job.id === selected ? "selected" : ""}`, dataset, onclick: select },
    el("td", {}, el("code", { class: "id", text: job.id })),
    el("td", { text: job.kind }),
    el("td", {}, el("span", { class: `state ${state.toLowerCase()}`, text: state })),
    el("td", {}, progressBar(job.progress, state)),
    el("td", { class: "eta", text: eta(job) }),
    el("td", {}, message),
    el("td", {}, artifactLinks(job)),
    el("td", {}, cancel),
  );
}

/** @param {JobRecord} job */
async function cancelJob(job) {
  try {
    await api(serviceOf.get(job.id) || JOB_SERVICES[0], `v1/jobs/${job.id}/cancel`, { method: "POST" });
    await poll();
  } catch (err) {
    showError("jobs-error", err);
  }
}

// Numeric metrics seen over the polls (a record keeps the latest values), plus any metric
// that is already a list of numbers; losses and mAPs get their own charts.
/** @param {JobRecord} job */
function charts(job) {
  const seen = history.get(job.id) || [];
  /** @type {Record<"loss" | "mAP" | "other", Series[]>} */
  const groups = { loss: [], mAP: [], other: [] };
  const keys = new Set(seen.flatMap((s) => Object.keys(s.metrics)));
  for (const key of keys) {
    const last = seen[seen.length - 1].metrics[key];
    /** @type {[number, number][]} */
    let points;
    if (Array.isArray(last) && last.every(finite)) points = last.map((v, i) => [i, Number(v)]);
    else points = seen.filter((s) => finite(s.metrics[key])).map((s) => [s.x, Number(s.metrics[key])]);
    if (points.length < 2 || points.every((p) => p[1] === points[0][1])) continue; // flat: no curve
    if (["epoch", "step", "epochs", "total"].includes(key)) continue;
    const group = /loss/i.test(key) ? "loss" : /map/i.test(key) ? "mAP" : "other";
    groups[group].push({ name: key, points });
  }
  const byEpoch = seen.some((s) => finite(s.metrics.epoch));
  const xLabel = byEpoch ? "epoch" : seen.some((s) => finite(s.metrics.step)) ? "step" : "progress %";
  // Losses share one chart and mAPs another; any other metric gets its own scale.
  const drawn = /** @type {const} */ (["loss", "mAP"])
    .filter((g) => groups[g].length)
    .map((g) => lineChart(g, groups[g], xLabel));
  return drawn.concat(groups.other.slice(0, 4).map((s) => lineChart(s.name, [s], xLabel)));
}

function renderDetail() {
  const job = jobs.find((j) => j.id === selected);
  byId("job-detail").hidden = !job;
  if (!job) return;
  byId("detail-title").textContent = `${job.kind} · ${job.id} · ${job.state}`;
  showError("detail-error", job.error ? { code: job.error_code || "error", detail: job.error } : null);
  const drawn = charts(job);
  const none =
    "No metric curves yet: they are drawn from the metrics the record shows while this page follows the job.";
  byId("detail-charts").replaceChildren(...(drawn.length ? drawn : [el("p", { class: "muted", text: none })]));
  byId("detail-json").textContent = JSON.stringify(job, null, 2);
  const box = byId("detail-files");
  if (TERMINAL.has(job.state || "")) {
    showFiles(job);
  } else if (box.dataset.job !== "") {
    box.dataset.job = "";
    box.textContent = "Shown when the job has finished.";
  }
}

// Where a finished job wrote: its output prefixes, or the folder of each name:version.
/** @param {JobRecord} job */
function prefixes(job) {
  const found = Object.entries(job.outputs || {})
    .filter(([k, v]) => /prefix$/.test(k) && typeof v === "string" && v.endsWith("/"))
    .map(([, v]) => String(v));
  for (const ref of job.artifacts || []) {
    const [name, version] = ref.split(":");
    if (version) found.push(`models/${name}/${version}/`);
  }
  return [...new Set(found)];
}

/** @param {JobRecord} job */
async function showFiles(job) {
  if (!files.has(job.id)) {
    files.set(job.id, null);
    // the listing's schema is an open object: ObjectList is what it holds
    const list = (/** @type {string} */ prefix) =>
      /** @type {Promise<ObjectList>} */ (api("pipeline", "v1/objects", { query: { prefix, limit: 200 } }));
    const lists = await Promise.allSettled(prefixes(job).map(list));
    const keys = lists.flatMap((l) => (l.status === "fulfilled" ? l.value.keys : []));
    // Pictures first (overlays, examples, loss curves), then the rest, at most 40.
    keys.sort((a, b) => Number(/\.png$/.test(b.key)) - Number(/\.png$/.test(a.key)));
    files.set(job.id, keys.slice(0, 40));
  }
  const keys = files.get(job.id);
  const box = byId("detail-files");
  if (!keys || job.id !== selected) return;
  if (box.dataset.job === job.id) return; // already shown; thumbnails load once
  box.dataset.job = job.id;
  const none = el("p", { class: "muted", text: "No stored files found for this job." });
  box.replaceChildren(keys.length ? fileList(keys, (err) => showError("detail-error", err)) : none);
}

function render() {
  table("job-table").tBodies[0].replaceChildren(...jobs.map(row));
  renderDetail();
}

async function poll() {
  const signal = polling.next();
  try {
    const found = await listAll(signal);
    if (signal.aborted) return;
    jobs = found;
    jobs.forEach(record);
    showError("jobs-error", null);
    byId("jobs-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    render();
  } catch (err) {
    if (!isAbort(err)) showError("jobs-error", err);
  }
}

async function loop() {
  await poll();
  const busy = jobs.some((j) => !TERMINAL.has(j.state || ""));
  setTimeout(loop, busy ? pollMs() : 3 * pollMs());
}

const form = wireJobForm((service, record) => {
  serviceOf.set(record.id, service);
  selected = record.id;
  return poll();
});
select("state-filter").addEventListener("change", poll);
on("console:key", () => {
  form.refresh();
  poll();
});
on("console:select-job", (/** @type {string} */ id) => {
  selected = id;
  render();
});
loop();
