// Pipelines (the pipeline API, /v1/pipelines): start one from a form with the presets, follow
// each step's progress, open a step's job in the jobs table below, cancel, resume, report.
"use strict";

(() => {
  const { api, el, showError, progressBar, when } = Console;
  const $ = (id) => document.getElementById(id);
  const ACTIVE = new Set(["RUNNING"]);
  let selected = null;
  let pipelines = [];

  // The pipeline's `maps` values besides auto (the default) and provided (needs maps_prefix).
  const PIPELINE_MAPS = ["kead", "tocoad"];

  function request() {
    const body = {
      name: $("pl-name").value.trim(),
      category: $("pl-category").value,
      unlabelled_prefix: $("pl-unlabelled").value.trim(),
      labelled: { prefix: $("pl-labelled").value.trim(), format: $("pl-format").value },
      maps: $("pl-maps").value,
      baseline: $("pl-baseline").checked,
    };
    if ($("pl-preset").value) body.preset = $("pl-preset").value;
    if ($("pl-promote").value) body.promote = $("pl-promote").value;
    if ($("pl-detector").value) body.detector = $("pl-detector").value;
    return body;
  }

  function syncBody() {
    $("pl-body").value = JSON.stringify(request(), null, 2);
  }

  // Every choice from the APIs that publish it: categories, presets (pipeline /v1/presets),
  // map methods (anomaly_map /readyz), detector families; prefixes and format from
  // Console.formDefaults (the newest pipeline, else the demo's uploads).
  async function loadForm() {
    const [categories, found] = await Promise.all([Console.categories().catch(() => []), Console.formDefaults()]);
    const names = categories.map((c) => c.name);
    $("pl-category").replaceChildren(...names.map((n) => el("option", { value: n, text: n })));
    if (names.includes(found.category)) $("pl-category").value = found.category;
    $("pl-unlabelled").value = found.unlabelled;
    $("pl-labelled").value = found.labelled;
    $("pl-format").value = found.format || "auto";
    $("pl-defaults").textContent = found.source === "none" ? "" : `prefixes from ${found.source}`;
    await Promise.all([fillDetectors(), fillPresets(), fillMaps()]);
    syncBody();
  }

  async function fillPresets() {
    try {
      const presets = await api("pipeline", "v1/presets");
      const names = Object.keys(presets);
      $("pl-preset").replaceChildren(...names.map((n) => el("option", { value: n, text: n })));
      if (names.includes("cpu-demo")) $("pl-preset").value = "cpu-demo";
      $("pl-presets").textContent = JSON.stringify(presets, null, 2);
    } catch (err) {
      $("pl-presets").textContent = `presets unavailable: ${err.message}`;
    }
  }

  // auto: KeAD when the anomaly-map service says it is ready, else ToCoAD (the pipeline's
  // own rule); the label says which it is now.
  async function fillMaps() {
    const methods = (await Console.methods().catch(() => [])).filter((m) => PIPELINE_MAPS.includes(m.name));
    const kead = methods.find((m) => m.name === "kead");
    const now = methods.length ? (kead && kead.ready ? "KeAD" : "ToCoAD") : "";
    const auto = el("option", { value: "auto", text: now ? `auto (now ${now})` : "auto" });
    const options = methods.map((m) => el("option", { value: m.name, text: m.ready ? m.label : `${m.label} (not ready)`, title: m.reason }));
    $("pl-maps").replaceChildren(auto, ...options);
  }

  // The finetune service's families; without an answer the select stays empty and the
  // request leaves `detector` out (the pipeline's default family).
  async function fillDetectors() {
    const families = await Console.detectorFamilies().catch(() => ({ items: [] }));
    $("pl-detector").replaceChildren(...families.items.map((f) => el("option", { value: f.name, text: f.label, title: f.summary })));
    if (families.default) $("pl-detector").value = families.default;
  }

  async function start(event) {
    event.preventDefault();
    showError("pipeline-error", null);
    let body;
    try {
      body = JSON.parse($("pl-body").value);
    } catch (err) {
      return showError("pipeline-error", { code: "bad_json", detail: err.message });
    }
    try {
      const record = await api("pipeline", "v1/pipelines", { method: "POST", json: body });
      selected = record.id;
      await poll();
    } catch (err) {
      showError("pipeline-error", err);
    }
  }

  async function act(id, action) {
    try {
      await api("pipeline", `v1/pipelines/${id}/${action}`, { method: "POST" });
      await poll();
    } catch (err) {
      showError("pipeline-error", err);
    }
  }

  function stepRow(step) {
    const job = step.job_id
      ? el("a", { href: "#job-detail", text: step.job_id, onclick: () => document.dispatchEvent(new CustomEvent("console:select-job", { detail: step.job_id })) })
      : "";
    const message = step.error
      ? el("span", { class: "error-inline" }, el("code", { text: step.error_code || "error" }), " ", step.error)
      : step.message;
    return el("tr", { class: "step", dataset: { step: step.name, state: step.state, progress: String(step.progress) } },
      el("td", { text: step.name }), el("td", { text: step.service }),
      el("td", {}, el("span", { class: `state ${step.state.toLowerCase()}`, text: step.state })),
      el("td", {}, progressBar(step.progress, step.state)), el("td", {}, message), el("td", {}, job));
  }

  async function renderDetail() {
    $("pipeline-detail").hidden = !selected;
    if (!selected) return;
    try {
      const record = await api("pipeline", `v1/pipelines/${selected}`);
      $("pl-title").textContent = `${record.request.name} · ${record.id} · ${record.state}`;
      const actions = [];
      if (ACTIVE.has(record.state)) actions.push(el("button", { type: "button", class: "quiet", id: "pl-cancel", text: record.cancel_requested ? "cancelling…" : "Cancel", disabled: record.cancel_requested, onclick: () => act(record.id, "cancel") }));
      if (["FAILED", "CANCELED"].includes(record.state)) actions.push(el("button", { type: "button", class: "quiet", id: "pl-resume", text: "Resume", onclick: () => act(record.id, "resume") }));
      if (record.report_key) {
        actions.push(el("a", { href: "#", id: "pl-report", text: "HTML report", onclick: (e) => {
          e.preventDefault();
          Console.openBlob("pipeline", `v1/pipelines/${record.id}/report`).catch((err) => showError("pipeline-error", err));
        } }));
      }
      if (record.error) actions.push(el("span", { class: "error-inline", text: record.error }));
      $("pl-actions").replaceChildren(...actions);
      $("step-table").tBodies[0].replaceChildren(...record.steps.map(stepRow));
    } catch (err) {
      showError("pipeline-error", err);
    }
  }

  function row(p) {
    return el("tr", { class: `pipeline clickable ${p.id === selected ? "selected" : ""}`, dataset: { pipelineId: p.id, state: p.state, progress: String(p.progress) }, onclick: () => { selected = p.id; render(); } },
      el("td", {}, el("code", { class: "id", text: p.id })), el("td", { text: p.name }),
      el("td", {}, el("span", { class: `state ${p.state.toLowerCase()}`, text: p.state })),
      el("td", {}, progressBar(p.progress, p.state)), el("td", { text: p.current_step || "" }),
      el("td", { text: when(p.updated_at) }));
  }

  function render() {
    $("pipeline-table").tBodies[0].replaceChildren(...pipelines.map(row));
    return renderDetail();
  }

  async function poll() {
    try {
      pipelines = await api("pipeline", "v1/pipelines", { query: { limit: 20 } });
      $("pipelines-panel").classList.remove("unavailable");
      await render();
    } catch (err) {
      showError("pipeline-error", err);
    }
  }

  async function loop() {
    await poll();
    const busy = pipelines.some((p) => ACTIVE.has(p.state));
    const every = Console.config.poll_interval_ms || 1000;
    setTimeout(loop, busy ? every : 3 * every);
  }

  $("pipeline-form").addEventListener("input", (e) => { if (e.target.id !== "pl-body") syncBody(); });
  $("pipeline-form").addEventListener("change", (e) => { if (e.target.id !== "pl-body") syncBody(); });
  $("pipeline-form").addEventListener("submit", start);
  document.addEventListener("console:key", () => { loadForm(); poll(); });
  loadForm();
  loop();
})();
