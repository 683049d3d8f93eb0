// Categories: list, create, edit descriptions and reference images (each save is a new
// version), browse versions, delete; prompt-length errors are shown under the field and
// line that caused them.
"use strict";

(() => {
  const { api, el, showError } = Console;
  const $ = (id) => document.getElementById(id);
  let current = null; // the category record in the editor, or null for a new one
  let methods = []; // the anomaly-map methods, as /readyz publishes them

  const lines = (id) => $(id).value.split("\n").map((s) => s.trim()).filter(Boolean);

  async function refresh() {
    showError("cat-error", null);
    try {
      const items = await Console.categories();
      $("cat-table").tBodies[0].replaceChildren(...items.map((c) => el("tr", {
        class: "clickable", dataset: { name: c.name }, onclick: () => open(c.name),
      },
      el("td", {}, el("a", { href: `#${c.name}`, text: c.name })), el("td", { text: c.version }),
      el("td", { text: c.method }), el("td", { text: c.map }),
      el("td", { text: `${c.prompts.normal} / ${c.prompts.anomalous}` }),
      el("td", { text: String(c.references.length) }))));
    } catch (err) {
      showError("cat-error", err);
    }
  }

  function fill(record) {
    current = record;
    $("editor-title").textContent = record ? `${record.name} · version ${record.version}` : "New category";
    $("cat-name").value = record ? record.name : "";
    $("cat-name").readOnly = Boolean(record);
    $("cat-map").value = record ? record.map : "";
    // a new category starts on the first method that can serve now (ToCoAD without CLIP weights)
    const ready = methods.find((m) => m.ready) || methods[0];
    $("cat-method").value = record ? record.method : (ready ? ready.name : "");
    $("cat-good").value = record ? record.good.join("\n") : "";
    $("cat-defect").value = record ? record.defect.join("\n") : "";
    $("cat-delete").disabled = !record;
    const versions = record ? record.versions || [record.version] : [];
    $("cat-version").disabled = !record;
    $("cat-version").replaceChildren(...(record
      ? versions.slice().reverse().map((v) => el("option", { value: v, text: v, selected: v === record.version }))
      : [el("option", { value: "", text: "new" })]));
    $("cat-refs").replaceChildren(...(record ? record.references : []).map((key) =>
      el("li", {}, el("code", { text: key.split("/").pop() }), " ",
        el("button", { type: "button", class: "quiet", dataset: { key }, onclick: (e) => e.target.closest("li").remove(), text: "remove" }))));
    $("cat-files").value = "";
    $("cat-files-names").textContent = "";
    ["map-error", "good-error", "defect-error", "save-status"].forEach((id) => showError(id, null));
  }

  async function open(name, version) {
    try {
      fill(await api("anomaly_map", `v1/categories/${encodeURIComponent(name)}`, { query: { version } }));
    } catch (err) {
      showError("cat-error", err);
    }
  }

  // agssp-spec §1.1: prompts are refused when longer than the 77-token context; the API names
  // each offending string as "<name>.good[i] (N tokens): '…'" (or .defect[i], .map).
  function placePromptErrors(err) {
    const where = { map: [], good: [], defect: [] };
    for (const part of err.detail.split(/;\s+(?=\S+\.(?:map|good|defect))/)) {
      const m = part.match(/\.(map|good|defect)(?:\[(\d+)\])?\s*\((\d+) tokens\)/);
      if (m) where[m[1]].push(m[2] === undefined ? `${m[3]} tokens` : `line ${Number(m[2]) + 1}: ${m[3]} tokens`);
    }
    for (const [field, found] of Object.entries(where)) {
      if (found.length) showError(`${field}-error`, { code: err.code, status: err.status, detail: `too long for the 77-token context (${found.join(", ")})` });
    }
  }

  async function save(event) {
    event.preventDefault();
    ["map-error", "good-error", "defect-error", "save-status"].forEach((id) => showError(id, null));
    const name = $("cat-name").value.trim();
    const keep = [...$("cat-refs").querySelectorAll("button[data-key]")].map((b) => b.dataset.key);
    const spec = { map: $("cat-map").value.trim(), good: lines("cat-good"), defect: lines("cat-defect"), method: $("cat-method").value, references: keep };
    const form = new FormData();
    form.append("spec", JSON.stringify(spec));
    for (const file of $("cat-files").files) form.append("references", file);
    $("cat-save").disabled = true;
    try {
      const saved = await api("anomaly_map", `v1/categories/${encodeURIComponent(name)}`, { method: "PUT", form });
      await refresh();
      await open(saved.name);
      $("save-status").replaceChildren(el("div", { class: "ok", role: "status", text: `saved ${saved.name} version ${saved.version}` }));
    } catch (err) {
      showError("save-status", err);
      if (err.code === "prompt_too_long") placePromptErrors(err);
    } finally {
      $("cat-save").disabled = false;
    }
  }

  async function remove() {
    if (!current || !window.confirm(`Delete ${current.name} with every version?`)) return;
    try {
      await api("anomaly_map", `v1/categories/${encodeURIComponent(current.name)}`, { method: "DELETE" });
      fill(null);
      await refresh();
    } catch (err) {
      showError("save-status", err);
    }
  }

  $("cat-form").addEventListener("submit", save);
  $("cat-delete").addEventListener("click", remove);
  $("new-cat").addEventListener("click", () => fill(null));
  $("cat-version").addEventListener("change", () => current && open(current.name, $("cat-version").value));
  $("cat-files").addEventListener("change", () => {
    $("cat-files-names").textContent = [...$("cat-files").files].map((f) => f.name).join(", ");
  });
  async function loadMethods() {
    try {
      methods = await Console.fillMethods($("cat-method"), 0);
      if (!current) fill(null);
    } catch (err) {
      showError("cat-error", err);
    }
  }

  document.addEventListener("console:key", () => { refresh(); loadMethods(); });
  loadMethods().then(refresh).then(() => { if (location.hash.length > 1) open(decodeURIComponent(location.hash.slice(1))); });
})();
