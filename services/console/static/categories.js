// @ts-check
// Categories: list, create, edit descriptions and reference images (each save is a new
// version), browse versions, delete; prompt-length errors are shown under the field and
// line that caused them.
import { ApiError, api, byId, el, input, isAbort, Latest, on, select, showError, table, textarea } from "./console.js";
import { categories, fillMethods } from "./lookups.js";

/** @typedef {import("./lookups.js").Category} Category */
/** @typedef {import("./lookups.js").Method} Method */
/** @typedef {import("@api/anomaly_map").paths["/v1/categories/{name}"]["put"]["requestBody"]} PutBody */
/** @typedef {NonNullable<PutBody>["content"]["application/json"]} CategorySpec */

/** @type {Category | null} the category record in the editor, or null for a new one */
let current = null;
/** @type {Method[]} the anomaly-map methods, as /readyz publishes them */
let methods = [];
const opening = new Latest(); // a newer pick (row, version) supersedes the one loading
const FIELD_ERRORS = ["map-error", "good-error", "defect-error", "save-status"];

/** @param {string} id */
const lines = (id) =>
  textarea(id)
    .value.split("\n")
    .map((s) => s.trim())
    .filter(Boolean);

/** @param {Category} c */
function categoryRow(c) {
  return el(
    "tr",
    { class: "clickable", dataset: { name: c.name }, onclick: () => open(c.name) },
    el("td", {}, el("a", { href: `#${c.name}`, text: c.name })),
    el("td", { text: c.version }),
    el("td", { text: c.method }),
    el("td", { text: c.map }),
    el("td", { text: `${c.prompts.normal} / ${c.prompts.anomalous}` }),
    el("td", { text: String(c.references.length) }),
  );
}

async function refresh() {
  showError("cat-error", null);
  try {
    const items = await categories();
    table("cat-table").tBodies[0].replaceChildren(...items.map(categoryRow));
  } catch (err) {
    showError("cat-error", err);
  }
}

/** @param {string} key */
function referenceItem(key) {
  /** @param {MouseEvent} e */
  const remove = (e) => /** @type {HTMLElement} */ (e.target).closest("li")?.remove();
  return el(
    "li",
    {},
    el("code", { text: key.split("/").pop() }),
    " ",
    el("button", { type: "button", class: "quiet", dataset: { key }, onclick: remove, text: "remove" }),
  );
}

/** @param {Category | null} record */
function fill(record) {
  current = record;
  byId("editor-title").textContent = record ? `${record.name} · version ${record.version}` : "New category";
  input("cat-name").value = record ? record.name : "";
  input("cat-name").readOnly = Boolean(record);
  input("cat-map").value = record ? record.map : "";
  select("cat-method").value = record ? record.method : defaultMethod();
  textarea("cat-good").value = record ? record.good.join("\n") : "";
  textarea("cat-defect").value = record ? record.defect.join("\n") : "";
  byId("cat-delete", HTMLButtonElement).disabled = !record;
  const versions = record ? record.versions || [record.version] : [];
  const version = select("cat-version");
  version.disabled = !record;
  version.replaceChildren(
    ...(record
      ? versions
          .slice()
          .reverse()
          .map((v) => el("option", { value: v, text: v, selected: v === record.version }))
      : [el("option", { value: "", text: "new" })]),
  );
  byId("cat-refs").replaceChildren(...(record ? record.references : []).map(referenceItem));
  input("cat-files").value = "";
  byId("cat-files-names").textContent = "";
  FIELD_ERRORS.forEach((id) => {
    showError(id, null);
  });
}

/**
 * @param {string} name
 * @param {string} [version]
 */
async function open(name, version) {
  const signal = opening.next();
  try {
    fill(await api("anomaly_map", `v1/categories/${encodeURIComponent(name)}`, { query: { version }, signal }));
  } catch (err) {
    if (!isAbort(err)) showError("cat-error", err);
  }
}

// agssp-spec §1.1: prompts are refused when longer than the 77-token context; the API names
// each offending string as "<name>.good[i] (N tokens): '…'" (or .defect[i], .map).
/** @param {ApiError} err */
function placePromptErrors(err) {
  /** @type {Record<string, string[]>} */
  const where = { map: [], good: [], defect: [] };
  for (const part of err.detail.split(/;\s+(?=\S+\.(?:map|good|defect))/)) {
    const m = part.match(/\.(map|good|defect)(?:\[(\d+)\])?\s*\((\d+) tokens\)/);
    if (m) where[m[1]].push(m[2] === undefined ? `${m[3]} tokens` : `line ${Number(m[2]) + 1}: ${m[3]} tokens`);
  }
  for (const [field, found] of Object.entries(where)) {
    if (found.length) {
      const detail = `too long for the 77-token context (${found.join(", ")})`;
      showError(`${field}-error`, { code: err.code, status: err.status, detail });
    }
  }
}

/** @returns {CategorySpec} */
function spec() {
  const keep = [...byId("cat-refs").querySelectorAll("button[data-key]")].map(
    (b) => /** @type {HTMLElement} */ (b).dataset.key || "",
  );
  const method = /** @type {CategorySpec["method"]} */ (select("cat-method").value);
  return {
    map: input("cat-map").value.trim(),
    good: lines("cat-good"),
    defect: lines("cat-defect"),
    method,
    references: keep,
  };
}

/** @param {SubmitEvent} event */
async function save(event) {
  event.preventDefault();
  FIELD_ERRORS.forEach((id) => {
    showError(id, null);
  });
  const name = input("cat-name").value.trim();
  const form = new FormData();
  form.append("spec", JSON.stringify(spec()));
  for (const file of input("cat-files").files || []) form.append("references", file);
  const button = byId("cat-save", HTMLButtonElement);
  button.disabled = true;
  try {
    /** @type {Category} */
    const saved = await api("anomaly_map", `v1/categories/${encodeURIComponent(name)}`, { method: "PUT", form });
    await refresh();
    await open(saved.name);
    const text = `saved ${saved.name} version ${saved.version}`;
    byId("save-status").replaceChildren(el("div", { class: "ok", role: "status", text }));
  } catch (err) {
    showError("save-status", err);
    if (err instanceof ApiError && err.code === "prompt_too_long") placePromptErrors(err);
  } finally {
    button.disabled = false;
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

/** A new category starts on the first method that can serve now (ToCoAD without CLIP weights). */
function defaultMethod() {
  const ready = methods.find((m) => m.ready) || methods[0];
  return ready ? ready.name : "";
}

// Only the method list changes here: a form the user is already filling keeps its fields.
async function loadMethods() {
  try {
    const chosen = select("cat-method").value;
    methods = await fillMethods(select("cat-method"), 0);
    const keep = current ? current.method : methods.some((m) => m.name === chosen) ? chosen : "";
    select("cat-method").value = keep || defaultMethod();
  } catch (err) {
    showError("cat-error", err);
  }
}

byId("cat-form", HTMLFormElement).addEventListener("submit", save);
byId("cat-delete").addEventListener("click", remove);
byId("new-cat").addEventListener("click", () => fill(null));
select("cat-version").addEventListener("change", () => current && open(current.name, select("cat-version").value));
input("cat-files").addEventListener("change", () => {
  byId("cat-files-names").textContent = [...(input("cat-files").files || [])].map((f) => f.name).join(", ");
});
on("console:key", () => {
  refresh();
  loadMethods();
});
loadMethods()
  .then(refresh)
  .then(() => {
    if (location.hash.length > 1) open(decodeURIComponent(location.hash.slice(1)));
  });
