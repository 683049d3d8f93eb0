// Pipelines and jobs: start a step from a preset, follow every job record (progress bar,
// ETA, message, error code, artifacts), cancel, and draw metric curves from the records.
//
// The job records (GET /v1/jobs on each API, one shared store) are the source of truth.
// A step is {service, path, fields, body(values)}; a future /v1/pipelines resource plugs in
// as one more entry of STEPS whose body starts every step at once, and its record's steps
// would be listed with the same rows.
"use strict";

(() => {
  const { api, el, showError, progressBar, duration, lineChart, fileList } = Console;
  const $ = (id) => document.getElementById(id);
  const JOB_SERVICES = ["anomaly_map", "pretrain", "finetune"];
  const TERMINAL = new Set(["SUCCEEDED", "FAILED", "CANCELED"]);
  const history = new Map(); // job id -> [{x, metrics}] seen while polling
  const serviceOf = new Map(); // job id -> an API that listed it
  const files = new Map(); // job id -> [{key, size}] of its outputs (read once it finished)
  let jobs = [];
  let selected = null;

  const TINY_AGBP = { backbone: "yolov8n", objective: "distill", epochs: 1, batch_size: 4, input_size: 64, resize_base: 64, amp: false, checkpoint_every: 0, num_workers: 0 };
  const STEPS = {
    maps: {
      label: "1 · Dataset anomaly maps", service: "anomaly_map", path: "v1/anomaly-map-jobs",
      help: "a map for every image under a store prefix",
      fields: [["category", "category", ""], ["prefix", "images prefix", "uploads/line-1/unlabelled/"], ["mode", "method", ""]],
      body: (v) => ({ category: v.category, prefix: v.prefix, mode: v.mode || undefined }),
    },
    pseudo: {
      label: "2 · Pseudo-defect boxes", service: "pretrain", path: "v1/pseudo-label-jobs",
      help: "boxes from a finished map job's output prefix",
      fields: [["category", "category", ""], ["images_prefix", "images prefix", "uploads/line-1/unlabelled/"], ["maps_prefix", "maps prefix", "maps/<category>/<job id>/"]],
      body: (v) => ({ category: v.category, images_prefix: v.images_prefix, maps_prefix: v.maps_prefix }),
    },
    agbp: {
      label: "3 · AGBP pretraining (cpu-demo: YOLOv8n, 1 epoch, 64 px)", service: "pretrain", path: "v1/pretrain-jobs",
      help: "distil the maps into a backbone",
      fields: [["category", "category", ""], ["images_prefix", "images prefix", "uploads/line-1/unlabelled/"], ["maps_prefix", "maps prefix", "maps/<category>/<job id>/"]],
      body: (v) => ({ sources: [{ category: v.category, images_prefix: v.images_prefix, maps_prefix: v.maps_prefix }], config: TINY_AGBP }),
    },
    finetune: {
      label: "4 · Finetune a detector (cpu-demo: YOLOv8n, 1 epoch, 64 px)", service: "finetune", path: "v1/finetune-jobs",
      help: "train on an imported dataset; the version lands in the registry",
      fields: [["dataset", "dataset", ""], ["model_name", "model name", "steel-det"]],
      body: (v) => ({ dataset: v.dataset, scale: "n", model_name: v.model_name, config: { epochs: 1, batch: 4, imgsz: 64, seed: 0 } }),
    },
  };

  function presetValues(step) {
    const values = {};
    for (const [name] of step.fields) values[name] = ($(`field-${name}`) || {}).value || "";
    return values;
  }

  function syncBody() {
    const step = STEPS[$("preset").value];
    $("preset-target").textContent = `POST ${step.service} /${step.path}`;
    $("job-body").value = JSON.stringify(step.body(presetValues(step)), null, 2);
  }

  // The page load, a preset change and a new key each start a choosePreset; only the latest
  // may draw, or a slow answer to an earlier one would redraw the fields and the body over
  // what the user has chosen or typed since.
  let presetTicket = 0;

  async function choosePreset() {
    const ticket = ++presetTicket;
    const step = STEPS[$("preset").value];
    $("preset-help").textContent = step.help;
    const [categories, found] = await Promise.all([Console.categories().catch(() => []), Console.formDefaults()]);
    if (ticket !== presetTicket) return;
    const names = categories.map((c) => c.name);
    $("preset-fields").replaceChildren(...step.fields.map(([name, label, placeholder]) => {
      const input = fieldInput(name, placeholder, names, found);
      input.addEventListener("input", syncBody);
      input.addEventListener("change", syncBody);
      return el("label", {}, `${label} `, input);
    }));
    syncBody();
    if ($("field-mode")) await Console.fillMethods($("field-mode"), 1).catch(() => null);
  }

  // Field values from the APIs: categories (selected: the newest pipeline's), the methods
  // the anomaly-map service publishes, prefixes from Console.formDefaults; blank otherwise.
  const DEFAULT_OF = { prefix: "unlabelled", images_prefix: "unlabelled", maps_prefix: "mapsPrefix" };

  function fieldInput(name, placeholder, names, found) {
    const id = `field-${name}`;
    if (name === "category" && names.length) {
      const select = el("select", { id }, names.map((n) => el("option", { value: n, text: n })));
      if (names.includes(found.category)) select.value = found.category;
      return select;
    }
    if (name === "mode") return el("select", { id }, el("option", { value: "", text: "the category's method" }));
    const value = name in DEFAULT_OF ? found[DEFAULT_OF[name]] || "" : placeholder.includes("<") ? "" : placeholder;
    return el("input", { id, placeholder, value });
  }

  async function start(event) {
    event.preventDefault();
    showError("job-error", null);
    const step = STEPS[$("preset").value];
    let body;
    try {
      body = JSON.parse($("job-body").value);
    } catch (err) {
      return showError("job-error", { code: "bad_json", detail: err.message });
    }
    try {
      const record = await api(step.service, step.path, { method: "POST", json: body });
      serviceOf.set(record.id, step.service);
      selected = record.id;
      await poll();
    } catch (err) {
      showError("job-error", err);
    }
  }

  async function listAll() {
    const query = { limit: 50, state: $("state-filter").value };
    const answers = await Promise.allSettled(JOB_SERVICES.map((s) => api(s, "v1/jobs", { query })));
    const merged = new Map();
    answers.forEach((a, i) => {
      if (a.status !== "fulfilled") return;
      for (const job of a.value) {
        merged.set(job.id, job);
        if (!serviceOf.has(job.id)) serviceOf.set(job.id, JOB_SERVICES[i]);
      }
    });
    if (!merged.size && answers.every((a) => a.status === "rejected")) throw answers[0].reason;
    return [...merged.values()].sort((a, b) => b.created_at.localeCompare(a.created_at));
  }

  function eta(job) {
    if (job.state !== "RUNNING" || !job.started_at || job.progress <= 0) return "";
    const elapsed = (Date.now() - Date.parse(job.started_at)) / 1000;
    return duration((elapsed * (100 - job.progress)) / job.progress);
  }

  function record(job) {
    const seen = history.get(job.id) || [];
    const last = seen[seen.length - 1];
    if (!last || last.updated_at !== job.updated_at) {
      const m = job.metrics || {};
      const x = Number.isFinite(m.epoch) ? m.epoch : Number.isFinite(m.step) ? m.step : job.progress;
      seen.push({ x, updated_at: job.updated_at, metrics: m });
    }
    history.set(job.id, seen);
  }

  function artifactLinks(job) {
    // One line per artifact: a model version links to Models, a stored object opens.
    return (job.artifacts || []).map((ref) => {
      const [name, version] = ref.split(":");
      const link = version
        ? el("a", { href: `/models?name=${encodeURIComponent(name)}&version=${encodeURIComponent(version)}`, text: ref })
        : el("a", { href: "#", class: "object", text: ref, onclick: (e) => { e.preventDefault(); e.stopPropagation(); Console.openBlob("pipeline", Console.objectPath(ref)).catch((err) => showError("jobs-error", err)); } });
      return el("div", { class: "artifact" }, link);
    });
  }

  function row(job) {
    const cancel = TERMINAL.has(job.state) ? null : el("button", {
      type: "button", class: "quiet cancel", text: job.cancel_requested ? "cancelling…" : "Cancel", disabled: job.cancel_requested,
      onclick: (e) => { e.stopPropagation(); cancelJob(job); },
    });
    const message = job.error
      ? el("span", { class: "error-inline" }, el("code", { text: job.error_code || "error" }), " ", job.error)
      : job.message;
    return el("tr", { class: `job clickable ${job.id === selected ? "selected" : ""}`, dataset: { jobId: job.id, state: job.state, progress: String(job.progress) }, onclick: () => { selected = job.id; render(); } },
      el("td", {}, el("code", { class: "id", text: job.id })), el("td", { text: job.kind }),
      el("td", {}, el("span", { class: `state ${job.state.toLowerCase()}`, text: job.state })),
      el("td", {}, progressBar(job.progress, job.state)), el("td", { class: "eta", text: eta(job) }),
      el("td", {}, message), el("td", {}, artifactLinks(job)), el("td", {}, cancel));
  }

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
  function charts(job) {
    const seen = history.get(job.id) || [];
    const groups = { loss: [], mAP: [], other: [] };
    const keys = new Set(seen.flatMap((s) => Object.keys(s.metrics)));
    for (const key of keys) {
      const last = seen[seen.length - 1].metrics[key];
      let points;
      if (Array.isArray(last) && last.every(Number.isFinite)) points = last.map((v, i) => [i, v]);
      else points = seen.filter((s) => Number.isFinite(s.metrics[key])).map((s) => [s.x, s.metrics[key]]);
      if (points.length < 2 || points.every((p) => p[1] === points[0][1])) continue; // flat: no curve
      if (["epoch", "step", "epochs", "total"].includes(key)) continue;
      const group = /loss/i.test(key) ? "loss" : /map/i.test(key) ? "mAP" : "other";
      groups[group].push({ name: key, points });
    }
    const xLabel = seen.some((s) => Number.isFinite(s.metrics.epoch)) ? "epoch" : seen.some((s) => Number.isFinite(s.metrics.step)) ? "step" : "progress %";
    // Losses share one chart and mAPs another; any other metric gets its own scale.
    const drawn = ["loss", "mAP"].filter((g) => groups[g].length).map((g) => lineChart(g, groups[g], xLabel));
    return drawn.concat(groups.other.slice(0, 4).map((s) => lineChart(s.name, [s], xLabel)));
  }

  function renderDetail() {
    const job = jobs.find((j) => j.id === selected);
    $("job-detail").hidden = !job;
    if (!job) return;
    $("detail-title").textContent = `${job.kind} · ${job.id} · ${job.state}`;
    showError("detail-error", job.error ? { code: job.error_code || "error", detail: job.error } : null);
    const drawn = charts(job);
    $("detail-charts").replaceChildren(...(drawn.length ? drawn : [el("p", { class: "muted", text: "No metric curves yet: they are drawn from the metrics the record shows while this page follows the job." })]));
    $("detail-json").textContent = JSON.stringify(job, null, 2);
    if (TERMINAL.has(job.state)) {
      showFiles(job);
    } else if ($("detail-files").dataset.job !== "") {
      $("detail-files").dataset.job = "";
      $("detail-files").textContent = "Shown when the job has finished.";
    }
  }

  // Where a finished job wrote: its output prefixes, or the folder of each name:version.
  function prefixes(job) {
    const found = Object.entries(job.outputs || {})
      .filter(([k, v]) => /prefix$/.test(k) && typeof v === "string" && v.endsWith("/"))
      .map(([, v]) => v);
    for (const ref of job.artifacts || []) {
      const [name, version] = ref.split(":");
      if (version) found.push(`models/${name}/${version}/`);
    }
    return [...new Set(found)];
  }

  async function showFiles(job) {
    if (!files.has(job.id)) {
      files.set(job.id, null);
      const lists = await Promise.allSettled(prefixes(job).map((prefix) => api("pipeline", "v1/objects", { query: { prefix, limit: 200 } })));
      const keys = lists.filter((l) => l.status === "fulfilled").flatMap((l) => l.value.keys);
      // Pictures first (overlays, examples, loss curves), then the rest, at most 40.
      keys.sort((a, b) => Number(/\.png$/.test(b.key)) - Number(/\.png$/.test(a.key)));
      files.set(job.id, keys.slice(0, 40));
    }
    const keys = files.get(job.id);
    const box = $("detail-files");
    if (keys === null || job.id !== selected) return;
    if (box.dataset.job === job.id) return; // already shown; thumbnails load once
    box.dataset.job = job.id;
    box.replaceChildren(keys.length ? fileList(keys, (err) => showError("detail-error", err)) : el("p", { class: "muted", text: "No stored files found for this job." }));
  }

  function render() {
    $("job-table").tBodies[0].replaceChildren(...jobs.map(row));
    renderDetail();
  }

  async function poll() {
    try {
      jobs = await listAll();
      jobs.forEach(record);
      showError("jobs-error", null);
      $("jobs-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
      render();
    } catch (err) {
      showError("jobs-error", err);
    }
  }

  async function loop() {
    await poll();
    const busy = jobs.some((j) => !TERMINAL.has(j.state));
    setTimeout(loop, busy ? Console.config.poll_interval_ms || 1000 : 3 * (Console.config.poll_interval_ms || 1000));
  }

  $("preset").replaceChildren(...Object.entries(STEPS).map(([key, step]) => el("option", { value: key, text: step.label })));
  $("preset").addEventListener("change", choosePreset);
  $("job-form").addEventListener("submit", start);
  $("state-filter").addEventListener("change", poll);
  document.addEventListener("console:key", () => { choosePreset(); poll(); });
  document.addEventListener("console:select-job", (e) => { selected = e.detail; render(); });
  choosePreset();
  loop();
})();
