// Datasets: the imported labelled sets (finetune API) and, per version, the summary the
// import stored before any training: images per split with defective / defect-free /
// unlabelled counts, boxes per class, the box-size histogram at the training input size
// (boxes that vanish there flagged), duplicate groups and images that did not decode.
"use strict";

(() => {
  const { api, el, showError } = Console;
  const $ = (id) => document.getElementById(id);
  let detail = null;

  async function refresh() {
    showError("datasets-error", null);
    try {
      const answer = await api("finetune", "v1/datasets");
      $("dataset-table").tBodies[0].replaceChildren(...answer.items.map((d) => el("tr", { class: "clickable", dataset: { dataset: d.name }, onclick: () => open(d.name) },
        el("td", {}, el("a", { href: `?name=${encodeURIComponent(d.name)}`, onclick: (e) => { e.preventDefault(); open(d.name); }, text: d.name })),
        el("td", {}, el("code", { text: d.latest || "" })), el("td", { text: String(d.versions) }))));
    } catch (err) {
      showError("datasets-error", err);
    }
  }

  async function open(name) {
    window.history.replaceState(null, "", `?name=${encodeURIComponent(name)}`);
    try {
      detail = await api("finetune", `v1/datasets/${encodeURIComponent(name)}`);
    } catch (err) {
      showError("datasets-error", err);
      return;
    }
    $("dataset-detail").hidden = false;
    $("dataset-title").textContent = `${detail.name} · latest ${detail.latest || "none"}`;
    const versions = detail.versions.slice().reverse();
    $("dataset-version").replaceChildren(...versions.map((v) => el("option", { value: v.version, text: v.version })));
    show(versions[0]);
  }

  function splitTable(summary) {
    const classes = summary.classes || [];
    const head = el("tr", {}, ["split", "images", "with defects", "defect-free", "unlabelled", ...classes].map((h) => el("th", { text: h })));
    const rows = Object.entries(summary.splits || {}).map(([name, c]) => el("tr", { class: "split-row", dataset: { split: name, images: String(c.images), defective: String(c.defective) } },
      el("td", {}, el("code", { text: name }), name.startsWith("mini-") ? " (of train)" : ""), el("td", { text: String(c.images) }), el("td", { text: String(c.defective) }),
      el("td", { text: String(c.defect_free) }), el("td", { class: c.unlabelled ? "warn" : "", text: String(c.unlabelled) }),
      classes.map((k) => el("td", { text: String((c.boxes || {})[k] || 0) }))));
    return el("table", { class: "compact", id: "split-table" }, el("thead", {}, head), el("tbody", {}, rows));
  }

  function sizeHistogram(sizes) {
    const edges = sizes.edges_px;
    const labels = [`< ${edges[0]}`, ...edges.slice(1).map((e, i) => `${edges[i]}-${e}`), `>= ${edges[edges.length - 1]}`];
    const peak = Math.max(1, ...sizes.counts);
    const rows = sizes.counts.map((n, i) => el("tr", { class: `size-bin${i === 0 && n ? " vanishing" : ""}`, dataset: { count: String(n) } },
      el("td", { text: `${labels[i]} px` }),
      el("td", {}, el("div", { class: "hbar", style: `width:${(100 * n / peak).toFixed(1)}%`, title: String(n) })),
      el("td", { text: String(n) })));
    const note = sizes.vanishing
      ? el("p", { class: "warn", id: "vanishing", text: `${sizes.vanishing} boxes are under ${sizes.vanish_px} px at ${sizes.imgsz} px: train at a larger imgsz or tile the images.` })
      : null;
    return [el("h3", { text: `Box shorter side at ${sizes.imgsz} px` }), el("table", { class: "compact histogram", id: "size-histogram" }, el("tbody", {}, rows)), note];
  }

  function show(version) {
    if (version) document.dispatchEvent(new CustomEvent("console:dataset-version", { detail: { name: detail.name, version: version.version, splits: version.splits || {} } }));
    const box = $("dataset-summary");
    const summary = version && version.summary;
    if (!summary) {
      box.replaceChildren(el("p", { text: "This version was imported before summaries were stored: re-import it to see one." }));
      return;
    }
    const dups = summary.duplicates || { groups: 0, images: 0, examples: [] };
    const failed = summary.failed_to_decode || [];
    const warnings = version.warnings || [];
    const parts = [
      el("p", { id: "dataset-headline", text: `${summary.images} images · classes ${summary.classes.join(", ")} · ${version.layout || version.format || ""}` }),
      ...warnings.map((w) => el("p", { class: "warn import-warning", text: w })),
      splitTable(summary),
      ...sizeHistogram(summary.box_sizes),
      el("h3", { text: "Duplicates" }),
      el("p", { id: "duplicates", dataset: { groups: String(dups.groups) },
        text: dups.groups ? `${dups.groups} groups (${dups.images} images), each kept on one side of every split; e.g. ${dups.examples.slice(0, 2).map((g) => g.join(" = ")).join("; ")}` : "none found" }),
      failed.length ? el("p", { class: "warn", id: "failed", text: `Left out, not decodable: ${failed.slice(0, 20).join(", ")}` }) : null,
    ];
    box.replaceChildren(...parts.filter((part) => part !== null));
  }

  $("dataset-version").addEventListener("change", (e) => show(detail.versions.find((v) => v.version === e.target.value)));
  document.addEventListener("console:key", () => refresh());
  const params = new URLSearchParams(location.search);
  refresh().then(() => params.get("name") && open(params.get("name")));
})();
