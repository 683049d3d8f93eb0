// @ts-check
// Gallery: a stored image set in pages of thumbnails (finetune API, /v1/galleries) with its
// layers drawn over each image: ground-truth boxes of a dataset split, pseudo boxes with
// their scores and the anomaly map of a pool, a detector's predictions (at a confidence
// chosen here) with its misses and false alarms. A page comes with its thumbnails inlined
// (one request for a hundred images). Layers toggle without a redraw (a class on the panel
// hides them); a click opens the image large with the same layers and a link to Inspect. A
// new page aborts the requests of the one it replaces. The page the panel sits on offers
// its sets with `console:gallery-sources` (gallery-sources.js).
import { byId, el, input, isAbort, on, select, showError } from "./console.js";
import { caption, pseudoOf, truthOf } from "./gallery-draw.js";
import { fetchPage, optionGroups, poolGroup } from "./gallery-sources.js";
import {
  addMap,
  boxes,
  conf,
  LAYERS,
  layerOn,
  paging,
  setLayer,
  THUMB_SIDE,
  thumbnail,
  view,
} from "./gallery-state.js";
import { openViewer, redrawBoxes } from "./gallery-viewer.js";

/** @typedef {import("@api/finetune").components["schemas"]["GalleryPage"]} GalleryPage */
/** @typedef {import("@api/finetune").components["schemas"]["GalleryItem"]} GalleryItem */
/** @typedef {import("./gallery-sources.js").PageQuery} PageQuery */
/** @typedef {import("./gallery-sources.js").Source} Source */
/** @typedef {import("./gallery-sources.js").SourceGroup} SourceGroup */
/** @typedef {import("./gallery-sources.js").OfferedSources} OfferedSources */

/**
 * @param {GalleryItem} item
 * @param {number} index
 * @param {string[]} classes
 * @param {AbortSignal} signal
 */
function tile(item, index, classes, signal) {
  const frame = el("div", { class: "frame" });
  if (item.width && item.height) {
    frame.style.aspectRatio = `${item.width} / ${item.height}`;
    frame.append(boxes(item, classes, item.width, item.height, 0));
  }
  const image = el("img", { alt: item.name, loading: "eager" });
  frame.prepend(image);
  const dataset = {
    index: String(index),
    name: item.name,
    truth: String(truthOf(item).length),
    pseudo: String(pseudoOf(item).length),
    score: String(item.score ?? ""),
    misses: String(item.misses ?? ""),
    falseAlarms: String(item.false_alarms ?? ""),
  };
  const open = () => openViewer(index);
  /** @param {KeyboardEvent} e */
  const onkeydown = (e) => {
    if (e.key === "Enter") open();
  };
  const attrs = { class: "tile", tabindex: "0", title: item.image_key, dataset, onclick: open, onkeydown };
  const node = el("figure", attrs, frame, el("figcaption", { text: caption(item, conf()) }));
  // The page brings its thumbnails inlined; one it could not make is asked for on its
  // own, so its error shows in the image's place.
  const source = item.thumbnail ? Promise.resolve(item.thumbnail) : thumbnail(item.image_key, THUMB_SIDE, signal);
  const ready = source
    .then((url) => {
      image.src = url;
      return image.decode().catch(() => null);
    })
    .catch((err) => frame.replaceChildren(el("div", { class: "error", text: err.code || err.message })));
  if (layerOn("map")) addMap(frame, item, signal).catch(() => null);
  return { node, ready };
}

/** @returns {PageQuery} */
function query() {
  /** @type {PageQuery} */
  const q = {
    offset: view.offset,
    limit: Number(select("gallery-limit").value),
    class_name: select("gallery-class").value,
    sort: /** @type {PageQuery["sort"]} */ (select("gallery-sort").value),
    thumbnails: THUMB_SIDE,
  };
  const withBoxes = select("gallery-boxes").value;
  if (withBoxes) q.has_boxes = withBoxes === "true";
  const errors = select("gallery-errors").value;
  if (errors === "miss") q.has_miss = true;
  if (errors === "false-alarm") q.has_false_alarm = true;
  if (input("gallery-min").value !== "") q.min_score = Number(input("gallery-min").value);
  if (input("gallery-max").value !== "") q.max_score = Number(input("gallery-max").value);
  return q;
}

function reset() {
  const signal = paging.next();
  view.urls.forEach((u) => {
    URL.revokeObjectURL(u);
  });
  view.urls = [];
  return signal;
}

async function load() {
  if (!view.source) return;
  const signal = reset();
  const started = performance.now();
  showError("gallery-error", null);
  const grid = byId("gallery-grid");
  grid.dataset.state = "loading";
  /** @type {GalleryPage} */
  let page;
  try {
    page = await fetchPage(view.source, query(), signal);
  } catch (err) {
    if (isAbort(err)) return;
    grid.replaceChildren();
    grid.dataset.state = "error";
    return showError("gallery-error", err);
  }
  view.page = page;
  showPage(page);
  const tiles = page.items.map((item, i) => tile(item, i, page.classes, signal));
  grid.replaceChildren(...tiles.map((t) => t.node));
  await Promise.allSettled(tiles.map((t) => t.ready));
  if (signal.aborted) return;
  const ms = Math.round(performance.now() - started);
  Object.assign(grid.dataset, { state: "ready", loadMs: String(ms), thumbnails: String(tiles.length) });
  byId("gallery-timing").textContent = `${tiles.length} thumbnails in ${ms} ms`;
  performance.measure("gallery-page", { start: started, end: started + ms });
}

/** @param {GalleryPage} page */
function showPage(page) {
  byId("gallery-title").textContent = page.title;
  const first = page.total ? page.offset + 1 : 0;
  const inSet = page.total !== page.images ? ` (${page.images} in the set)` : "";
  byId("gallery-count").textContent = `${first}–${page.offset + page.items.length} of ${page.total}${inSet}`;
  byId("gallery-prev", HTMLButtonElement).disabled = page.offset === 0;
  byId("gallery-next", HTMLButtonElement).disabled = page.next_offset === null;
  const classSelect = select("gallery-class");
  const chosen = classSelect.value;
  const options = page.classes.map((c) => el("option", { value: c, text: c }));
  classSelect.replaceChildren(el("option", { value: "", text: "any" }), ...options);
  classSelect.value = page.classes.includes(chosen) ? chosen : "";
  for (const layer of LAYERS) {
    for (const box of document.querySelectorAll(`input[data-layer='${layer}']`)) {
      const label = box.closest("label");
      if (label) label.hidden = !page.layers.includes(layer);
    }
  }
  showScores(page);
  showPredictions(page);
}

/** @param {GalleryPage} page */
function showScores(page) {
  const range = page.score_range;
  byId("gallery-scores").hidden = !range;
  const byScore = select("gallery-sort").querySelector("option[value='score']");
  if (byScore instanceof HTMLOptionElement) byScore.disabled = !range;
  if (range) byId("gallery-score-range").textContent = `set: ${range.map((v) => v.toFixed(3)).join(" – ")}`;
}

// The error filter and the confidence only mean something for a detector's predictions.
/** @param {GalleryPage} page */
function showPredictions(page) {
  const predicted = page.layers.includes("pred");
  byId("gallery-verdicts").hidden = !predicted;
  if (!predicted) select("gallery-errors").value = "";
  const slider = input("gallery-conf");
  slider.min = String(page.conf ?? 0);
  if (Number(slider.value) < Number(slider.min)) slider.value = slider.min;
  byId("gallery-conf-value").textContent = conf().toFixed(2);
}

/** @param {Source} source */
function choose(source) {
  view.source = source;
  view.offset = 0;
  load();
}

// The sets on offer: the page's own, and on the Datasets page every stored pool. A newly
// offered set list with `choose` shows its first set at once; otherwise the choice stays
// (or the first is taken when nothing was shown).
/** @param {boolean} chooseFirst */
async function fillSources(chooseFirst) {
  const groups = [...view.offered];
  if (byId("gallery-panel").dataset.pools === "all") {
    try {
      groups.push(await poolGroup());
    } catch (err) {
      showError("gallery-error", err);
    }
  }
  const sources = select("gallery-source");
  const previous = sources.value;
  sources.replaceChildren(...optionGroups(groups));
  const panel = byId("gallery-panel");
  panel.dataset.sets = String(sources.options.length);
  panel.hidden = !sources.options.length && panel.dataset.pools !== "all";
  if (chooseFirst && sources.options.length) sources.selectedIndex = 0;
  else if ([...sources.options].some((o) => o.value === previous)) sources.value = previous;
  if (sources.value && (sources.value !== previous || chooseFirst)) choose(JSON.parse(sources.value));
}

/** @param {SubmitEvent} event */
function onSubmit(event) {
  event.preventDefault();
  const prefix = input("gallery-prefix").value.trim();
  if (prefix) return choose({ kind: "prefix", prefix });
  if (select("gallery-source").value) choose(JSON.parse(select("gallery-source").value));
}

function wire() {
  byId("gallery-form", HTMLFormElement).addEventListener("submit", onSubmit);
  select("gallery-source").addEventListener("change", () => {
    input("gallery-prefix").value = "";
    choose(JSON.parse(select("gallery-source").value));
  });
  for (const id of ["gallery-class", "gallery-boxes", "gallery-errors", "gallery-sort", "gallery-limit"]) {
    select(id).addEventListener("change", () => {
      view.offset = 0;
      load();
    });
  }
  input("gallery-conf").addEventListener("input", redrawBoxes);
  byId("gallery-prev").addEventListener("click", () => {
    if (view.page) view.offset = Math.max(0, view.page.offset - view.page.limit);
    load();
  });
  byId("gallery-next").addEventListener("click", () => {
    if (view.page?.next_offset) view.offset = view.page.next_offset;
    load();
  });
  for (const box of document.querySelectorAll("input[data-layer]")) {
    const toggle = /** @type {HTMLInputElement} */ (box);
    toggle.addEventListener("change", () => setLayer(toggle.dataset.layer || "", toggle.checked));
  }
  byId("viewer-close").addEventListener("click", () => byId("gallery-viewer", HTMLDialogElement).close());
  on("console:gallery-sources", (/** @type {OfferedSources} */ offered) => {
    view.offered = offered.groups;
    fillSources(Boolean(offered.choose));
  });
  on("console:key", () => fillSources(false));
}

wire();
setLayer("map", false);
fillSources(false);
