// Compare: the evaluation shown (A) against another model version's on the same dataset
// version and split (B; by default the '<name>-scratch' baseline a pipeline trains beside
// AGSSP): every image with both models' misses and false alarms, largest difference first
// (GET /v1/evaluations/compare), and both models' boxes over the picked image.
"use strict";

(() => {
  const { api, el, showError } = Console;
  const { datasetImageKey, figure, pct } = Review;
  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;
  let wantedB = new URLSearchParams(location.search).get("compare"); // first view only
  const state = { a: null, docs: null, models: [], controller: null };

  // The AGSSP model's scratch baseline, or the other way round; else the same model.
  function defaultOther(name, models) {
    if (models.includes(`${name}-scratch`)) return `${name}-scratch`;
    if (name.endsWith("-scratch") && models.includes(name.slice(0, -8))) return name.slice(0, -8);
    return name;
  }

  async function fillVersions(name, keep) {
    const detail = await api("finetune", `v1/models/${enc(name)}`);
    const versions = detail.versions.slice().reverse();
    $("compare-version").replaceChildren(...versions.map((v) => el("option", { value: v.version, text: v.version })));
    const others = versions.filter((v) => !(name === state.a.name && v.version === state.a.version));
    if (keep && versions.some((v) => v.version === keep)) $("compare-version").value = keep;
    else if (others.length) $("compare-version").value = others[0].version;
  }

  async function follow(event) {
    const { name, version, doc, models } = event.detail;
    state.a = { name, version, doc };
    state.models = models;
    $("compare-panel").hidden = !doc.errors;
    $("label-a").textContent = `A ${name}:${version}`;
    const [bName, bVersion] = (wantedB || "").split(":");
    wantedB = null;
    const other = bName && models.includes(bName) ? bName : defaultOther(name, models);
    $("compare-model").replaceChildren(...models.map((m) => el("option", { value: m, text: m })));
    $("compare-model").value = other;
    try {
      await fillVersions(other, bVersion);
      if (doc.errors) await compare();
    } catch (err) {
      showError("compare-error", err);
    }
  }

  async function compare() {
    const a = state.a, bName = $("compare-model").value, bVersion = $("compare-version").value;
    if (!a || !bName || !bVersion) return;
    if (state.controller) state.controller.abort();
    const controller = (state.controller = new AbortController());
    const signal = controller.signal;
    const where = { dataset: a.doc.dataset, split: a.doc.split };
    showError("compare-error", null);
    try {
      const [diff, b] = await Promise.all([
        api("finetune", "v1/evaluations/compare", { query: { a: `${a.name}:${a.version}`, b: `${bName}:${bVersion}`, ...where }, signal }),
        api("finetune", `v1/models/${enc(bName)}/versions/${enc(bVersion)}/evaluation`, { query: where, signal }),
      ]);
      if (signal.aborted) return;
      state.docs = { a: a.doc, b };
      render(diff);
    } catch (err) {
      if (signal.aborted) return;
      $("diff-table").tBodies[0].replaceChildren();
      $("compare-headline").textContent = "";
      showError("compare-error", err);
    }
  }

  function render(diff) {
    const { a, b } = diff;
    $("label-b").textContent = `B ${b.model}`;
    $("compare-headline").textContent = `A ${a.model}: mAP@0.5 ${pct(a.map50)} %, ${a.misses} misses, ${a.false_alarms} false alarms · `
      + `B ${b.model}: mAP@0.5 ${pct(b.map50)} %, ${b.misses} misses, ${b.false_alarms} false alarms (score ≥ ${a.conf} / ${b.conf}, ${a.dataset} ${a.split})`;
    const rows = diff.images.map((im) => el("tr", { class: "diff-row clickable", dataset: { file: im.file_name, difference: String(im.difference) }, onclick: (e) => draw(im.file_name, e.currentTarget) },
      el("td", {}, el("code", { text: im.file_name })), el("td", { text: im.difference ? `${im.difference} (${im.change > 0 ? "B worse" : im.change < 0 ? "B better" : "mixed"})` : "0" }),
      el("td", { text: String(im.a.misses) }), el("td", { text: String(im.a.false_alarms) }),
      el("td", { class: side(im.b.misses, im.a.misses), text: String(im.b.misses) }), el("td", { class: side(im.b.false_alarms, im.a.false_alarms), text: String(im.b.false_alarms) })));
    $("diff-table").tBodies[0].replaceChildren(...rows);
    if (rows.length) draw(diff.images[0].file_name, rows[0]);
  }

  function side(b, a) {
    return b > a ? "worse" : b < a ? "better" : "";
  }

  function boxesOf(doc, fileName, cls, label) {
    const image = doc.errors.images.find((im) => im.file_name === fileName);
    const classes = doc.errors.classes;
    return image ? image.dets.map((d) => ({ box: d.box, cls, title: `${label}: ${classes[d.class_id]} ${d.score.toFixed(2)}${d.tp ? "" : " (false alarm)"}` })) : [];
  }

  async function draw(fileName, row) {
    document.querySelectorAll("#diff-table tr.selected").forEach((r) => r.classList.remove("selected"));
    row.classList.add("selected");
    const { a, b } = state.docs;
    const image = a.errors.images.find((im) => im.file_name === fileName);
    const stage = $("compare-stage");
    stage.dataset.file = fileName;
    const boxes = [
      ...image.gt.map((g) => ({ box: g.box, cls: "gt", title: `ground truth: ${a.errors.classes[g.class_id]}` })),
      ...boxesOf(a, fileName, "box-a", "A"),
      ...boxesOf(b, fileName, "box-b", "B"),
    ];
    const caption = el("figcaption", { id: "compare-caption", text: `${fileName}: ground truth (green), A (blue), B (orange, dashed)` });
    try {
      const frame = await figure(datasetImageKey(a.dataset, fileName), image.width, image.height, boxes);
      if (stage.dataset.file !== fileName) return;
      toggle(frame);
      stage.replaceChildren(caption, frame);
    } catch (err) {
      stage.replaceChildren(caption);
      showError(stage, err);
    }
  }

  function toggle(frame) {
    const target = frame || document.querySelector("#compare-stage .ev-frame");
    if (!target) return;
    target.classList.toggle("hide-a", !$("show-a").checked);
    target.classList.toggle("hide-b", !$("show-b").checked);
  }

  document.addEventListener("console:evaluation", (e) => follow(e));
  $("compare-form").addEventListener("submit", (e) => { e.preventDefault(); compare(); });
  $("compare-model").addEventListener("change", (e) => fillVersions(e.target.value).catch((err) => showError("compare-error", err)));
  $("show-a").addEventListener("change", () => toggle());
  $("show-b").addEventListener("change", () => toggle());
})();
