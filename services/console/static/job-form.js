// @ts-check
// The "Start one step" form of the Pipelines & jobs page: a preset (steps.js) fills fields
// from the APIs, the fields fill the request body, and Start posts it to the step's API.
// A step (steps.js) is {service, path, fields, body(values)}; each body is built by a
// function typed with the request schema of its API, so tsc refuses one that drifts from it.
import { api, byId, el, Latest, select, showError, textarea } from "./console.js";
import { categories, fillMethods, formDefaults } from "./lookups.js";
import { STEPS } from "./steps.js";

/** @typedef {import("./lookups.js").FormDefaults} FormDefaults */
/** @typedef {import("./steps.js").Step} Step */
/** @typedef {import("./steps.js").Values} Values */
/** @typedef {import("@api/finetune").components["schemas"]["JobRecord"]} JobRecord */
/** @typedef {import("@api/routes").JobService} JobService */
/** @typedef {(service: JobService, record: JobRecord) => Promise<void>} OnStarted */

// The page load, a preset change and a new key each start a choosePreset; only the latest
// may draw, or a slow answer to an earlier one would redraw the fields and the body over
// what the user has chosen or typed since: each aborts the one before.
const presetting = new Latest();

const chosenStep = () => STEPS[select("preset").value];

/** @param {Step} step */
function presetValues(step) {
  /** @type {Values} */
  const values = {};
  for (const [name] of step.fields) {
    const field = document.getElementById(`field-${name}`);
    values[name] = field instanceof HTMLInputElement || field instanceof HTMLSelectElement ? field.value : "";
  }
  return values;
}

function syncBody() {
  const step = chosenStep();
  byId("preset-target").textContent = `POST ${step.service} /${step.path}`;
  textarea("job-body").value = JSON.stringify(step.body(presetValues(step)), null, 2);
}

async function choosePreset() {
  const signal = presetting.next();
  const key = select("preset").value;
  const step = chosenStep();
  byId("preset-help").textContent = step.help;
  const [found, defaults] = await Promise.all([categories(signal).catch(() => []), formDefaults()]);
  if (signal.aborted) return;
  const names = found.map((c) => c.name);
  const fields = step.fields.map(([name, label, placeholder]) => {
    const field = fieldInput(name, placeholder, names, defaults);
    field.addEventListener("input", syncBody);
    field.addEventListener("change", syncBody);
    return el("label", {}, `${label} `, field);
  });
  byId("preset-fields").replaceChildren(...fields);
  // which preset the fields belong to: a page (or a test) that waits for a field waits for
  // this preset's, not for the one an earlier, slower choosePreset drew
  byId("preset-fields").dataset.preset = key;
  syncBody();
  const mode = document.getElementById("field-mode");
  if (mode instanceof HTMLSelectElement) await fillMethods(mode, 1).catch(() => null);
}

// Field values from the APIs: categories (selected: the newest pipeline's), the methods
// the anomaly-map service publishes, prefixes from formDefaults; blank otherwise.
/** @type {Record<string, "unlabelled" | "mapsPrefix">} */
const DEFAULT_OF = { prefix: "unlabelled", images_prefix: "unlabelled", maps_prefix: "mapsPrefix" };

/**
 * @param {string} name
 * @param {string} placeholder
 * @param {string[]} names
 * @param {FormDefaults} found
 * @returns {HTMLInputElement | HTMLSelectElement}
 */
function fieldInput(name, placeholder, names, found) {
  const id = `field-${name}`;
  if (name === "category" && names.length) {
    const choice = el(
      "select",
      { id },
      names.map((n) => el("option", { value: n, text: n })),
    );
    if (names.includes(found.category)) choice.value = found.category;
    return choice;
  }
  if (name === "mode") return el("select", { id }, el("option", { value: "", text: "the category's method" }));
  const value = name in DEFAULT_OF ? found[DEFAULT_OF[name]] || "" : placeholder.includes("<") ? "" : placeholder;
  return el("input", { id, placeholder, value });
}

/**
 * @param {SubmitEvent} event
 * @param {OnStarted} started
 */
async function start(event, started) {
  event.preventDefault();
  showError("job-error", null);
  const step = chosenStep();
  let body;
  try {
    body = JSON.parse(textarea("job-body").value);
  } catch (err) {
    return showError("job-error", { code: "bad_json", detail: err instanceof Error ? err.message : String(err) });
  }
  try {
    // the step's path is one of several: it answers the job record every job route answers
    const record = /** @type {JobRecord} */ (await api(step.service, step.path, { method: "POST", json: body }));
    await started(step.service, record);
  } catch (err) {
    showError("job-error", err);
  }
}

/**
 * Fill the preset list, wire the form, draw the first preset's fields.
 * @param {OnStarted} started what to do with a job the form started
 */
export function wireJobForm(started) {
  select("preset").replaceChildren(
    ...Object.entries(STEPS).map(([key, step]) => el("option", { value: key, text: step.label })),
  );
  select("preset").addEventListener("change", choosePreset);
  byId("job-form", HTMLFormElement).addEventListener("submit", (e) => start(e, started));
  choosePreset();
  return { refresh: choosePreset };
}
