// Models: the detector registry (finetune API), each version's metrics and lineage, and
// promotion to a stage (the inference service follows 'production').
"use strict";

(() => {
  const { api, el, showError, when } = Console;
  const $ = (id) => document.getElementById(id);
  const STAGES = ["production", "staging", "archived"];
  let openName = null;

  function summary(obj) {
    const entries = Object.entries(obj || {}).filter(([, v]) => v !== null && typeof v !== "object");
    return entries.slice(0, 6).map(([k, v]) => `${k}=${typeof v === "number" ? Number(v.toPrecision(4)) : v}`).join(" · ");
  }

  async function refresh() {
    showError("models-error", null);
    try {
      const answer = await api("finetune", "v1/models");
      $("model-table").tBodies[0].replaceChildren(...answer.items.map((m) => el("tr", { class: "clickable", dataset: { model: m.name }, onclick: () => open(m.name) },
        el("td", {}, el("a", { href: `?name=${encodeURIComponent(m.name)}`, onclick: (e) => { e.preventDefault(); open(m.name); }, text: m.name })),
        el("td", { text: m.kind || "" }), el("td", {}, el("code", { text: m.latest || "" })), el("td", { text: String(m.versions) }),
        el("td", {}, Object.entries(m.stages).map(([s, v]) => el("span", { class: "chip", text: `${s} → ${v}` }))))));
    } catch (err) {
      showError("models-error", err);
    }
  }

  function versionRow(name, v) {
    const select = el("select", { class: "stage-select" }, STAGES.map((s) => el("option", { value: s, text: s })));
    const button = el("button", { type: "button", class: "promote", text: "Promote", onclick: () => promote(name, v.version, select.value) });
    const lineage = v.lineage || {};
    const metrics = v.metrics || {};
    const evaluation = `/evaluation?${new URLSearchParams({ model: name, version: v.version })}`;
    return el("tr", { class: "version", dataset: { version: v.version, stages: v.stages.join(","), map50: metrics.map50 ?? "" } },
      el("td", {}, el("code", { class: "id", text: v.version })), el("td", { text: when(v.created_at) }), el("td", { text: v.kind || "" }),
      el("td", { class: "map" }, percent(metrics.map50), el("span", { class: "muted", text: ` / ${percent(metrics.map50_95)}` })),
      el("td", { text: summary(v.metrics) }),
      el("td", {}, el("details", {}, el("summary", { text: summary(lineage) || "lineage" }), el("pre", { text: JSON.stringify(lineage, null, 2) }))),
      el("td", { class: "stages" }, v.stages.map((s) => el("span", { class: `chip stage-${s}`, text: s }))),
      el("td", {}, select, " ", button),
      el("td", {}, el("a", { class: "evaluation-link", href: evaluation, text: v.evaluations.length ? "errors, compare" : "evaluate" })));
  }

  function percent(value) {
    return typeof value === "number" ? `${(100 * value).toFixed(1)} %` : "–";
  }

  async function open(name) {
    openName = name;
    const wanted = new URLSearchParams(location.search).get("version");
    window.history.replaceState(null, "", `?name=${encodeURIComponent(name)}${wanted ? `&version=${encodeURIComponent(wanted)}` : ""}`);
    try {
      const detail = await api("finetune", `v1/models/${encodeURIComponent(name)}`);
      $("model-detail").hidden = false;
      $("model-title").textContent = `${detail.name} · latest ${detail.latest || "none"}`;
      $("version-table").tBodies[0].replaceChildren(...detail.versions.slice().reverse().map((v) => versionRow(name, v)));
      if (wanted) document.querySelector(`tr.version[data-version="${CSS.escape(wanted)}"]`)?.classList.add("selected");
    } catch (err) {
      showError("models-error", err);
    }
  }

  async function promote(name, version, stage) {
    showError("promote-status", null);
    try {
      const answer = await api("finetune", `v1/models/${encodeURIComponent(name)}/versions/${encodeURIComponent(version)}/promote`, { method: "POST", json: { stage } });
      $("promote-status").replaceChildren(el("div", { class: "ok", role: "status", text: `${answer.name} ${answer.version} is now ${answer.stage}` }));
      await Promise.all([refresh(), open(name)]);
    } catch (err) {
      showError("promote-status", err);
    }
  }

  document.addEventListener("console:key", () => { refresh(); if (openName) open(openName); });
  const params = new URLSearchParams(location.search);
  refresh().then(() => params.get("name") && open(params.get("name")));
})();
