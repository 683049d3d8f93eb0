// @ts-check
// The gallery panel's state shared by its modules: the set shown, the page, the blob URLs to
// free, the maps fetched so far; thumbnails, maps and layers of the tiles and the viewer.
import { api, byId, input, Latest } from "./console.js";
import { decodeGrid, keyPath, mapCanvas, overlay } from "./gallery-draw.js";

/** @typedef {import("@api/finetune").components["schemas"]["GalleryPage"]} GalleryPage */
/** @typedef {import("@api/finetune").components["schemas"]["GalleryItem"]} GalleryItem */
/** @typedef {import("./gallery-sources.js").Source} Source */
/** @typedef {import("./gallery-sources.js").SourceGroup} SourceGroup */
/** @typedef {import("./gallery-draw.js").Grid} Grid */
/** @typedef {NonNullable<import("@api/finetune").paths["/v1/galleries/thumbnails/{key}"]["get"]["parameters"]["query"]>} ThumbQuery */

export const THUMB_SIDE = 256;
export const LARGE_SIDE = 1024;
export const LAYERS = /** @type {const} */ (["truth", "pseudo", "pred", "map"]);
/**
 * @type {{ source: Source | null, offset: number, page: GalleryPage | null, urls: string[],
 *   maps: Map<string, Promise<Grid>>, offered: SourceGroup[] }}
 */
export const view = { source: null, offset: 0, page: null, urls: [], maps: new Map(), offered: [] };
export const paging = new Latest(); // a new page aborts the requests of the one it replaces

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
export async function addMap(frame, item, signal) {
  if (!item.map_key || frame.querySelector(".layer-map")) return;
  const grid = await mapOf(item.map_key, signal);
  frame.querySelector(".layer-map")?.remove();
  frame.insertBefore(mapCanvas(grid), frame.querySelector("svg"));
}

/** @param {string} layer */
export function layerOn(layer) {
  return !byId("gallery-panel").classList.contains(`hide-${layer}`);
}

/**
 * @param {string} layer
 * @param {boolean} on
 */
export function setLayer(layer, on) {
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
export async function thumbnail(key, side, signal) {
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

/** The confidence predictions are drawn at (the evaluation's own at the least). */
export function conf() {
  const floor = view.page?.conf ?? 0;
  const chosen = Number(input("gallery-conf").value);
  return Number.isFinite(chosen) ? Math.max(chosen, floor) : floor;
}

/**
 * @param {GalleryItem} item
 * @param {string[]} classes
 * @param {number} width
 * @param {number} height
 * @param {number} fontPx
 */
export const boxes = (item, classes, width, height, fontPx) =>
  overlay(item, classes, { width, height, fontPx, conf: conf() });
