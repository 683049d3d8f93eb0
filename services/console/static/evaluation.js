// Evaluation: a model version's saved evaluation on a dataset split (finetune API): AP per
// class, PR curves, the confusion matrix, misses and false alarms per image with the boxes
// over the image; an evaluation job started from here; predictions and pseudo boxes
// exported for review. The compare panel (compare.js) follows the evaluation shown here.
"use strict";

(() => {
  const { api, el, showError, config, progressBar } = Console;
  const { datasetImageKey, figure, save, pct } = Review;
  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;
  const wanted = Object.fromEntries(new URLSearchParams(location.search));
  const state = { models: [], versions: [], doc: null, ref: null, controller: null };

  async function loadModels() {
    showError("eval-error", null);
    try {
      const answer = await api("finetune", "v1/models");
      state.models = answer.items.map((m) => m.name);
      $("eval-model").replaceChildren(...state.models.map((n) => el("option", { value: n, text: n })));
      if (wanted.model && state.models.includes(wanted.model)) $("eval-model").value = wanted.model;
      if (state.models.length) await loadVersions($("eval-model").value);
    } catch (err) {
      showError("eval-error", err);
    }
  }

  async function loadVersions(name) {
    const detail = await api("finetune", `v1/models/${enc(name)}`);
    state.versions = detail.versions.slice().reverse();
    $("eval-version").replaceChildren(...state.versions.map((v) => el("option", { value: v.version, text: versionLabel(v) })));
    if (wanted.version && state.versions.some((v) => v.version === wanted.version)) $("eval-version").value = wanted.version;
  }

  function versionLabel(v) {
    const map = v.metrics && v.metrics.map50;
    const parts = [v.version, map !== undefined && map !== null ? `mAP@0.5 ${pct(map)}` : null, v.stages.length ? v.stages.join(", ") : null];
    return parts.filter(Boolean).join(" · ");
  }

  async function show() {
    const name = $("eval-model").value, version = $("eval-version").value;
    if (!name || !version) return;
    if (state.controller) state.controller.abort(); // a newer choice supersedes the last
    const controller = (state.controller = new AbortController());
    const query = { dataset: $("eval-dataset").value.trim(), split: $("eval-split").value.trim() || "val" };
    const params = { model: name, version, split: query.split, ...(query.dataset ? { dataset: query.dataset } : {}) };
    window.history.replaceState(null, "", `?${new URLSearchParams(params)}`);
    showError("eval-error", null);
    try {
      const doc = await api("finetune", `v1/models/${enc(name)}/versions/${enc(version)}/evaluation`, { query, signal: controller.signal });
      if (!controller.signal.aborted) render(name, version, doc);
    } catch (err) {
      if (controller.signal.aborted) return;
      $("eval-detail").hidden = true;
      $("compare-panel").hidden = true;
      $("eval-headline").textContent = "";
      showError("eval-error", err);
    }
  }

  function render(name, version, doc) {
    state.doc = doc;
    state.ref = { name, version };
    const errors = doc.errors;
    const t = errors && errors.totals;
    $("eval-headline").textContent = `${name}:${version} on ${doc.dataset}, split ${doc.split} (${doc.images} images): `
      + `mAP@0.5 ${pct(doc.map50)} %, mAP@0.5:0.95 ${pct(doc.map50_95)} %`
      + (t ? ` · at score ≥ ${doc.conf}: ${t.misses} of ${t.gt} boxes missed, ${t.false_alarms} false alarms, ${t.confused} confused` : " · saved before per-image records: evaluate again to see them");
    $("eval-headline").dataset.dataset = doc.dataset;
    $("eval-detail").hidden = false;
    classTable(doc);
    prCurves(doc);
    confusion(errors);
    errorList();
    document.dispatchEvent(new CustomEvent("console:evaluation", { detail: { name, version, doc, models: state.models } }));
  }

  function classTable(doc) {
    const errors = doc.errors;
    const labels = errors ? errors.confusion.labels : [];
    const rows = Object.entries(doc.per_class).map(([cls, ap]) => {
      const k = labels.indexOf(cls);
      const m = errors && k >= 0 ? errors.confusion.matrix : null;
      const misses = m ? m[k].reduce((s, v, j) => s + (j === k ? 0 : v), 0) : "";
      const alarms = m ? m.reduce((s, row, i) => s + (i === k ? 0 : row[k]), 0) : "";
      return el("tr", { class: "class-row", dataset: { cls } }, el("td", { text: cls }), el("td", { text: String(ap.num_gt) }),
        el("td", { text: ap.map50 === null ? "no boxes" : pct(ap.map50) }), el("td", { text: pct(ap.map50_95) }),
        el("td", { text: String(misses) }), el("td", { text: String(alarms) }));
    });
    $("class-table").tBodies[0].replaceChildren(...rows);
  }

  function svgNode(tag, attrs, text) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // One chart, recall 0..1 across, precision 0..1 up; each class up to the recall it reaches.
  function prCurves(doc) {
    const curves = doc.pr_curves;
    if (!curves) {
      $("pr-curves").replaceChildren(el("p", { class: "muted", text: "Not saved with this evaluation." }));
      return;
    }
    const W = 300, H = 230, L = 36, R = 10, T = 22, B = 30;
    const sx = (r) => L + r * (W - L - R), sy = (p) => H - B - p * (H - T - B);
    const root = svgNode("svg", { class: "pr", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "precision-recall curves" });
    root.append(svgNode("text", { x: L, y: 14, class: "title" }, "Precision-recall, IoU 0.5"));
    for (const v of [0, 0.5, 1]) {
      root.append(svgNode("line", { x1: sx(0), y1: sy(v), x2: sx(1), y2: sy(v), class: v ? "grid" : "axis" }));
      root.append(svgNode("text", { x: L - 4, y: sy(v) + 3, "text-anchor": "end" }, String(v)));
      root.append(svgNode("text", { x: sx(v), y: H - B + 12, "text-anchor": "middle" }, String(v)));
    }
    root.append(svgNode("line", { x1: sx(0), y1: sy(0), x2: sx(0), y2: sy(1), class: "axis" }));
    root.append(svgNode("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" }, "recall"));
    Object.entries(curves.classes).forEach(([cls, curve], i) => {
      const colour = `hsl(${(i * 137) % 360} 70% 42%)`;
      const points = curves.recall.map((r, j) => [r, curve.precision[j]]).filter(([r]) => r <= curve.max_recall);
      const d = points.map(([r, p], j) => `${j ? "L" : "M"}${sx(r).toFixed(1)},${sy(p).toFixed(1)}`).join(" ");
      if (d) root.append(svgNode("path", { d, class: "curve", stroke: colour, "data-class": cls }));
      const ap = doc.per_class[cls] && doc.per_class[cls].map50;
      root.append(svgNode("text", { x: W - R - 2, y: T + 12 * (i + 1), "text-anchor": "end", fill: colour }, `${cls} ${pct(ap)}`));
    });
    $("pr-curves").replaceChildren(root);
  }

  function confusion(errors) {
    const table = $("confusion");
    if (!errors) {
      table.replaceChildren();
      return;
    }
    const { labels, matrix } = errors.confusion;
    const peak = Math.max(1, ...matrix.flat());
    const head = el("tr", {}, el("th", { text: "truth \\ said" }), labels.map((l) => el("th", { text: l })));
    const rows = matrix.map((row, i) => el("tr", { dataset: { truth: labels[i] } }, el("th", { class: "gt-label", text: labels[i] }),
      row.map((n, j) => el("td", { class: i === j ? "diagonal" : "", text: String(n), dataset: { count: String(n) },
        style: n ? `background: rgba(${i === j ? "29,127,70" : "179,38,30"}, ${(0.12 + 0.6 * n / peak).toFixed(2)})` : "" }))));
    table.replaceChildren(el("thead", {}, head), el("tbody", {}, rows));
  }

  const FILTERS = {
    all: () => true,
    miss: (im) => im.misses > 0,
    false_alarm: (im) => im.false_alarms > 0,
    either: (im) => im.misses > 0 || im.false_alarms > 0,
  };

  function errorList() {
    const errors = state.doc && state.doc.errors;
    const images = errors ? errors.images.filter(FILTERS[$("error-filter").value]) : [];
    $("error-count").textContent = errors ? `${images.length} of ${errors.images.length} images` : "";
    const rows = images.map((im) => el("tr", { class: "error-row clickable", dataset: { file: im.file_name, misses: String(im.misses), falseAlarms: String(im.false_alarms) },
      onclick: (e) => drawError(im, e.currentTarget) },
      el("td", {}, el("code", { text: im.file_name })), el("td", { text: String(im.gt.length) }), el("td", { text: String(im.dets.length) }),
      el("td", { class: im.misses ? "worse" : "", text: String(im.misses) }), el("td", { class: im.false_alarms ? "worse" : "", text: String(im.false_alarms) }),
      el("td", { text: String(im.confused) })));
    $("error-table").tBodies[0].replaceChildren(...rows);
    if (rows.length) drawError(images[0], rows[0]);
    else $("error-stage").replaceChildren(el("figcaption", { id: "error-caption", class: "muted", text: "No image to show." }));
  }

  async function drawError(image, row) {
    document.querySelectorAll("#error-table tr.selected").forEach((r) => r.classList.remove("selected"));
    row.classList.add("selected");
    const doc = state.doc, classes = doc.errors.classes;
    const stage = $("error-stage");
    stage.dataset.file = image.file_name;
    const boxes = [
      ...image.gt.map((g) => ({ box: g.box, cls: g.found ? "gt" : "miss", title: `${classes[g.class_id]} (ground truth${g.found ? "" : ", missed"})` })),
      ...image.dets.map((d) => ({ box: d.box, cls: d.tp ? "tp" : "fa", title: `${classes[d.class_id]} ${d.score.toFixed(2)}${d.tp ? "" : " (false alarm)"}` })),
    ];
    const caption = el("figcaption", { id: "error-caption", text: `${image.file_name}: ${image.misses} missed, ${image.false_alarms} false alarms` });
    try {
      const frame = await figure(datasetImageKey(doc.dataset, image.file_name), image.width, image.height, boxes);
      if (stage.dataset.file === image.file_name) stage.replaceChildren(caption, frame);
    } catch (err) {
      stage.replaceChildren(caption);
      showError(stage, err);
    }
  }

  async function evaluate() {
    const name = $("eval-model").value, version = $("eval-version").value;
    const info = state.versions.find((v) => v.version === version);
    const dataset = $("eval-dataset").value.trim() || (info && info.lineage && info.lineage.dataset) || "";
    showError("eval-error", null);
    if (!dataset) {
      showError("eval-error", { code: "dataset_required", detail: "name the dataset to evaluate on" });
      return;
    }
    const body = { model: `${name}:${version}`, dataset, split: $("eval-split").value.trim() || "val", conf: Number($("eval-conf").value) || 0.25 };
    try {
      const job = await api("finetune", "v1/evaluations", { method: "POST", json: body });
      await follow(job.id);
    } catch (err) {
      showError("eval-error", err);
    }
  }

  async function follow(id) {
    for (;;) {
      const job = await api("finetune", `v1/jobs/${enc(id)}`);
      $("eval-job").replaceChildren(el("div", { class: "row", dataset: { jobId: id, state: job.state } },
        el("code", { class: "id", text: id }), progressBar(job.progress, job.state), el("span", { class: "muted", text: job.message || job.state })));
      if (job.state === "SUCCEEDED") {
        $("eval-dataset").value = job.params.dataset;
        await show();
        return;
      }
      if (job.state === "FAILED" || job.state === "CANCELED") {
        showError("eval-error", { code: job.error_code || job.state.toLowerCase(), detail: job.error || job.state });
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, config.poll_interval_ms || 1000));
    }
  }

  async function download(status, path, query, name) {
    status.replaceChildren(el("span", { class: "muted", text: "preparing the zip…" }));
    try {
      const blob = await api("finetune", path, { query, accept: "application/zip" });
      save(blob, name);
      status.replaceChildren(el("span", { class: "ok export-done", dataset: { bytes: String(blob.size) }, text: `${name} (${Math.ceil(blob.size / 1024)} KiB)` }));
    } catch (err) {
      showError(status, err);
    }
  }

  function exportPredictions() {
    const { name, version } = state.ref, doc = state.doc, format = $("export-format").value;
    const query = { model: `${name}:${version}`, dataset: doc.dataset, split: doc.split, format };
    download($("export-status"), "v1/review-exports/predictions", query, `${name}-${version}-${doc.split}-${format}.zip`);
  }

  function exportPseudo(event) {
    event.preventDefault();
    const labels = $("pseudo-labels").value.trim(), format = $("pseudo-format").value;
    const query = { labels_prefix: labels, images_prefix: $("pseudo-images").value.trim(), format };
    const stem = labels.replace(/\/(labels\/)?$/, "").split("/").pop() || "pseudo";
    download($("pseudo-status"), "v1/review-exports/pseudo-labels", query, `pseudo-${stem}-${format}.zip`);
  }

  $("eval-form").addEventListener("submit", (e) => { e.preventDefault(); show(); });
  $("eval-model").addEventListener("change", async (e) => { await loadVersions(e.target.value).catch((err) => showError("eval-error", err)); show(); });
  $("eval-version").addEventListener("change", () => show());
  $("eval-run").addEventListener("click", () => evaluate());
  $("error-filter").addEventListener("change", () => errorList());
  $("export-predictions").addEventListener("click", () => exportPredictions());
  $("pseudo-form").addEventListener("submit", exportPseudo);
  document.addEventListener("console:key", () => loadModels().then(show));
  if (wanted.dataset) $("eval-dataset").value = wanted.dataset;
  if (wanted.split) $("eval-split").value = wanted.split;
  if (wanted.filter && FILTERS[wanted.filter]) $("error-filter").value = wanted.filter;
  loadModels().then(() => wanted.model && show());
})();
