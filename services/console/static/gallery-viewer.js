// @ts-check
// The gallery's large view of one image, with the same layers as its tile, and the redraw
// of every drawn image's boxes when the confidence changes (no request).
import { byId, el, showError } from "./console.js";
import { caption } from "./gallery-draw.js";
import { addMap, boxes, conf, LARGE_SIDE, layerOn, paging, thumbnail, view } from "./gallery-state.js";

// A new confidence redraws the boxes and captions in place (no request).
export function redrawBoxes() {
  const page = view.page;
  if (!page) return;
  for (const node of document.querySelectorAll("#gallery-grid .tile, #viewer-frame")) {
    const shown = /** @type {HTMLElement} */ (node);
    const item = page.items[Number(shown.dataset.index)];
    const old = shown.querySelector("svg.overlay");
    if (!old || !(old instanceof SVGSVGElement)) continue;
    const [width, height] = old.getAttribute("viewBox")?.split(" ").slice(2).map(Number) || [0, 0];
    const font = Number(old.dataset.fontPx || 0);
    const fresh = boxes(item, page.classes, width, height, font);
    fresh.dataset.fontPx = String(font);
    old.replaceWith(fresh);
    const text = shown.querySelector("figcaption");
    if (text) text.textContent = caption(item, conf());
  }
  byId("gallery-conf-value").textContent = conf().toFixed(2);
}

/** @param {number} index */
export async function openViewer(index) {
  const page = view.page;
  if (!page) return;
  const item = page.items[index];
  const dialog = byId("gallery-viewer", HTMLDialogElement);
  byId("viewer-title").textContent = item.name;
  byId("viewer-meta").textContent = caption(item, conf());
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
  const font = (13 * width) / shown;
  const drawn = boxes(item, page.classes, width, height, font);
  drawn.dataset.fontPx = String(font);
  frame.append(drawn);
  if (layerOn("map")) addMap(frame, item, paging.signal).catch(() => null);
}
