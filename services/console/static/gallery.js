// @ts-check
// Gallery: a stored image set in pages of thumbnails (finetune API, /v1/galleries) with its
// layers drawn over each image: ground-truth boxes of a dataset split, pseudo boxes with
// their scores and the anomaly map of a pool. A page comes with its thumbnails inlined (one
// request for a hundred images). Layers toggle without a redraw (a class on the
// panel hides them); a click opens the image large with the same layers and a link to
// Inspect. A new page aborts the requests of the one it replaces.
import { api, byId, el, input, isAbort, Latest, on, select, showError } from "./console.js";
import { colour, decodeFloats, svg } from "./draw.js";

/** @typedef {import("@api/finetune").components["schemas"]["GalleryPage"]} GalleryPage */
/** @typedef {import("@api/finetune").components["schemas"]["GalleryItem"]} GalleryItem */
/** @typedef {import("@api/finetune").components["schemas"]["GalleryBox"]} GalleryBox */
/** @typedef {import("@api/finetune").components["schemas"]["PoolList"]} PoolList */
/** @typedef {import("@api/finetune").components["schemas"]["PoolSummary"]} PoolSummary */
/** @typedef {import("@api/finetune").components["schemas"]["MapPayload"]} MapPayload */
/** @typedef {import("@api/finetune").paths["/v1/galleries/datasets/{name}/{version}/{split}"]["get"]} DatasetRoute */
/** @typedef {NonNullable<DatasetRoute["parameters"]["query"]>} PageQuery */
/** @typedef {import("@api/finetune").paths["/v1/galleries/prefix"]["get"]["parameters"]["query"]} PrefixQuery */
/** @typedef {NonNullable<import("@api/finetune").paths["/v1/galleries/thumbnails/{key}"]["get"]["parameters"]["query"]>} ThumbQuery */
/** @typedef {{ kind: "dataset", name: string, version: string, split: string } | { kind: "prefix", prefix: string }} Source */
/** @typedef {{ name: string, version: string, splits: Record<string, number> }} ShownDataset */
/** @typedef {{ h: number, w: number, values: Float32Array, min: number, max: number }} Grid */

const THUMB_SIDE = 256;
const LARGE_SIDE = 1024;
/**
 * @type {{ source: Source | null, offset: number, page: GalleryPage | null, urls: string[],
 *   maps: Map<string, Promise<Grid>>, dataset: ShownDataset | null }}
 */
const view = { source: null, offset: 0, page: null, urls: [], maps: new Map(), dataset: null };
const paging = new Latest(); // a new page aborts the requests of the one it replaces

/** @param {string} key */
const keyPath = (key) => key.split("/").map(encodeURIComponent).join("/");
/**
 * @param {string[]} classes
 * @param {string} label
 */
const hue = (classes, label) => (Math.max(0, classes.indexOf(label)) * 137 + 200) % 360;
/** @param {GalleryItem} item */
const truthOf = (item) => item.truth || [];
/** @param {GalleryItem} item */
const pseudoOf = (item) => item.pseudo || [];

/**
 * The boxes of one image in its own pixels; `fontPx` > 0 writes labels at that size on screen.
 * @param {GalleryItem} item
 * @param {string[]} classes
 * @param {number} width
 * @param {number} height
 * @param {number} fontPx
 */
function overlay(item, classes, width, height, fontPx) {
  const root = svg("svg", { class: "overlay", viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none" });
  const font = Math.max(fontPx, 0);
  /** @type {[string, GalleryBox[]][]} */
  const layers = [
    ["truth", truthOf(item)],
    ["pseudo", pseudoOf(item)],
  ];
  for (const [layer, boxes] of layers) {
    const group = svg("g", { class: `layer-${layer}` });
    for (const b of boxes) {
      const text = b.score === null || b.score === undefined ? b.label : `${b.label} ${b.score.toFixed(2)}`;
      const stroke = layer === "truth" ? `hsl(${hue(classes, b.label)} 90% 55%)` : "#ff3fb4";
      const at = { x: b.x1, y: b.y1, width: b.x2 - b.x1, height: b.y2 - b.y1 };
      const rect = svg("rect", { class: `box ${layer}`, ...at, stroke, "data-label": b.label });
      rect.append(svg("title", {}, text));
      group.append(rect);
      if (font) {
        const where = { x: b.x1 + font * 0.2, y: Math.max(font, b.y1 - font * 0.25), "font-size": font };
        group.append(svg("text", { class: "box-label", ...where }, text));
      }
    }
    root.append(group);
  }
  return root;
}

/**
 * @param {MapPayload} payload
 * @returns {Grid}
 */
function decodeGrid(payload) {
  return { ...decodeFloats(payload), min: payload.min, max: payload.max };
}

// The map on a canvas of its own grid, coloured over its own range (as Inspect does);
// CSS stretches it over the image, the browser smoothing the patch grid.
/** @param {Grid} grid */
function mapCanvas(grid) {
  const canvas = el("canvas", { class: "layer-map", width: grid.w, height: grid.h });
  const ctx = canvas.getContext("2d");
  if (!ctx) return canvas;
  const pixels = ctx.createImageData(grid.w, grid.h);
  const span = grid.max - grid.min || 1;
  grid.values.forEach((v, i) => {
    pixels.data.set([...colour((v - grid.min) / span), 255], i * 4);
  });
  ctx.putImageData(pixels, 0, 0);
  return canvas;
}

/**
 * @param {string} key
 * @param {AbortSignal | undefined} signal
 */
async function mapOf(key, signal) {
  let grid = view.maps.get(key);
  if (!grid) {
    grid = api("finetune", `v1/galleries/maps/${keyPath(key)}`, { signal }).then(decodeGrid);
    view.maps.set(key, grid);
  }
  try {
    return await grid;
  } catch (err) {
    view.maps.delete(key);
    throw err;
  }
}

/**
 * @param {HTMLElement} frame
 * @param {GalleryItem} item
 * @param {AbortSignal | undefined} signal
 */
async function addMap(frame, item, signal) {
  if (!item.map_key || frame.querySelector(".layer-map")) return;
  const grid = await mapOf(item.map_key, signal);
  frame.querySelector(".layer-map")?.remove();
  frame.insertBefore(mapCanvas(grid), frame.querySelector("svg"));
}

/** @param {string} layer */
function layerOn(layer) {
  return !byId("gallery-panel").classList.contains(`hide-${layer}`);
}

/**
 * @param {string} layer
 * @param {boolean} on
 */
function setLayer(layer, on) {
  byId("gallery-panel").classList.toggle(`hide-${layer}`, !on);
  for (const box of document.querySelectorAll(`input[data-layer='${layer}']`)) {
    /** @type {HTMLInputElement} */ (box).checked = on;
  }
  if (layer === "map" && on) drawMaps();
}

function drawMaps() {
  const page = view.page;
  if (!page) return;
  const signal = paging.signal;
  for (const tile of document.querySelectorAll("#gallery-grid .tile")) {
    const item = page.items[Number(/** @type {HTMLElement} */ (tile).dataset.index)];
    const frame = tile.querySelector(".frame");
    if (frame instanceof HTMLElement) addMap(frame, item, signal).catch(() => null);
  }
  const frame = document.getElementById("viewer-frame");
  if (frame && byId("gallery-viewer", HTMLDialogElement).open) {
    addMap(frame, page.items[Number(frame.dataset.index)], signal).catch(() => null);
  }
}

/**
 * @param {string} key
 * @param {number} side
 * @param {AbortSignal | undefined} signal
 */
async function thumbnail(key, side, signal) {
  /** @type {ThumbQuery} */
  const query = { side };
  /** @type {Blob} */
  const blob = await api("finetune", `v1/galleries/thumbnails/${keyPath(key)}`, {
    query,
    accept: "image/jpeg",
    signal,
  });
  const url = URL.createObjectURL(blob);
  view.urls.push(url);
  return url;
}

/** @param {GalleryItem} item */
function caption(item) {
  const boxes = truthOf(item).length + pseudoOf(item).length;
  const parts = [item.name, `${boxes} box${boxes === 1 ? "" : "es"}`];
  if (item.score !== null && item.score !== undefined) parts.push(`score ${item.score.toFixed(3)}`);
  return parts.join(" · ");
}

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
    frame.append(overlay(item, classes, item.width, item.height, 0));
  }
  const image = el("img", { alt: item.name, loading: "eager" });
  frame.prepend(image);
  const dataset = {
    index: String(index),
    name: item.name,
    truth: String(truthOf(item).length),
    pseudo: String(pseudoOf(item).length),
    score: String(item.score ?? ""),
  };
  const open = () => openViewer(index);
  /** @param {KeyboardEvent} e */
  const onkeydown = (e) => {
    if (e.key === "Enter") open();
  };
  const attrs = { class: "tile", tabindex: "0", title: item.image_key, dataset, onclick: open, onkeydown };
  const node = el("figure", attrs, frame, el("figcaption", { text: caption(item) }));
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
  const boxes = select("gallery-boxes").value;
  if (boxes) q.has_boxes = boxes === "true";
  if (input("gallery-min").value !== "") q.min_score = Number(input("gallery-min").value);
  if (input("gallery-max").value !== "") q.max_score = Number(input("gallery-max").value);
  return q;
}

/**
 * @param {Source} s
 * @param {AbortSignal} signal
 * @returns {Promise<GalleryPage>}
 */
function fetchPage(s, signal) {
  const q = query();
  if (s.kind === "dataset") {
    const path = [s.name, s.version, s.split].map(encodeURIComponent).join("/");
    return api("finetune", `v1/galleries/datasets/${path}`, { query: q, signal });
  }
  /** @type {PrefixQuery} */
  const where = { ...q, prefix: s.prefix };
  return api("finetune", "v1/galleries/prefix", { query: where, signal });
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
    page = await fetchPage(view.source, signal);
  } catch (err) {
    if (isAbort(err)) return;
    grid.replaceChildren();
    grid.dataset.state = "error";
    return showError("gallery-error", err);
  }
  view.page = page;
  const tiles = page.items.map((item, i) => tile(item, i, page.classes, signal));
  grid.replaceChildren(...tiles.map((t) => t.node));
  showPage(page);
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
  for (const layer of /** @type {const} */ (["truth", "pseudo", "map"])) {
    for (const box of document.querySelectorAll(`input[data-layer='${layer}']`)) {
      const label = box.closest("label");
      if (label) label.hidden = !page.layers.includes(layer);
    }
  }
  const range = page.score_range;
  byId("gallery-scores").hidden = !range;
  const byScore = select("gallery-sort").querySelector("option[value='score']");
  if (byScore instanceof HTMLOptionElement) byScore.disabled = !range;
  if (range) byId("gallery-score-range").textContent = `set: ${range.map((v) => v.toFixed(3)).join(" – ")}`;
}

/** @param {number} index */
async function openViewer(index) {
  const page = view.page;
  if (!page) return;
  const item = page.items[index];
  const dialog = byId("gallery-viewer", HTMLDialogElement);
  byId("viewer-title").textContent = item.name;
  byId("viewer-meta").textContent = caption(item);
  byId("viewer-key").textContent = item.image_key;
  byId("viewer-inspect", HTMLAnchorElement).href = `/inspect?key=${encodeURIComponent(item.image_key)}`;
  const frame = el("div", { class: "frame large", id: "viewer-frame", dataset: { index: String(index) } });
  const image = el("img", { alt: item.name });
  frame.append(image);
  byId("viewer-stage").replaceChildren(frame);
  if (!dialog.open) dialog.showModal();
  try {
    image.src = await thumbnail(item.image_key, LARGE_SIDE, paging.signal);
    await image.decode();
  } catch (err) {
    return showError("viewer-error", err);
  }
  const width = item.width || image.naturalWidth;
  const height = item.height || image.naturalHeight;
  const shown = Math.round(Math.min(LARGE_SIDE, 0.9 * innerWidth, (0.75 * innerHeight * width) / height));
  Object.assign(frame.style, { aspectRatio: `${width} / ${height}`, width: `${shown}px` });
  frame.append(overlay(item, page.classes, width, height, (13 * width) / shown));
  if (layerOn("map")) addMap(frame, item, paging.signal).catch(() => null);
}

/** @param {Source} source */
function choose(source) {
  view.source = source;
  view.offset = 0;
  load();
}

/** @param {PoolSummary[]} pools */
function sourceOptions(pools) {
  const groups = [];
  const d = view.dataset;
  if (d) {
    const options = Object.entries(d.splits).map(([split, n]) => {
      const value = JSON.stringify({ kind: "dataset", name: d.name, version: d.version, split });
      return el("option", { value, text: `${d.name}:${d.version} · ${split} (${n})` });
    });
    groups.push(el("optgroup", { label: `${d.name}:${d.version}` }, options));
  }
  if (pools.length) {
    const options = pools.map((p) => {
      const text = `${p.category} · ${p.job_id || p.prefix} (${p.images_with_boxes}/${p.images} with boxes)`;
      return el("option", { value: JSON.stringify({ kind: "prefix", prefix: p.prefix }), text });
    });
    groups.push(el("optgroup", { label: "Pools with pseudo boxes" }, options));
  }
  return groups;
}

// Sources: the dataset version the page shows (its splits) and the stored pools. A newly
// shown version is chosen at once; otherwise the choice stays (or the first is taken).
/** @param {boolean} showDataset */
async function fillSources(showDataset) {
  /** @type {PoolSummary[]} */
  let pools = [];
  try {
    /** @type {PoolList} */
    const answer = await api("finetune", "v1/galleries/pools");
    pools = answer.items;
  } catch (err) {
    showError("gallery-error", err);
  }
  const sources = select("gallery-source");
  const previous = sources.value;
  sources.replaceChildren(...sourceOptions(pools));
  if (showDataset && sources.options.length) sources.selectedIndex = 0;
  else if ([...sources.options].some((o) => o.value === previous)) sources.value = previous;
  if (sources.value && (sources.value !== previous || showDataset)) choose(JSON.parse(sources.value));
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
  for (const id of ["gallery-class", "gallery-boxes", "gallery-sort", "gallery-limit"]) {
    select(id).addEventListener("change", () => {
      view.offset = 0;
      load();
    });
  }
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
  on("console:dataset-version", (/** @type {ShownDataset} */ shown) => {
    view.dataset = shown;
    fillSources(true);
  });
  on("console:key", () => fillSources(false));
}

wire();
setLayer("map", false);
fillSources(false);
