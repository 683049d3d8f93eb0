// @ts-check
// Helpers of the Evaluation page: boxes drawn as SVG over a stored image (fetched with the
// key through the pipeline API's /v1/objects), and a fetched zip saved as a download.
import { api, el } from "./console.js";
import { svg } from "./draw.js";
import { objectPath } from "./lookups.js";

/** @typedef {{ box: number[], cls: string, title: string }} Mark */

/** @type {Map<string, Promise<string>>} store key -> a blob: URL, fetched once per page */
const images = new Map();

/**
 * "name:version" + file name -> the key the dataset import stored the image under.
 * @param {string} dataset
 * @param {string} fileName
 */
export function datasetImageKey(dataset, fileName) {
  const [name, version] = String(dataset).split(":");
  return `datasets/${name}/${version}/images/${fileName}`;
}

/** @param {string} key */
function imageUrl(key) {
  let request = images.get(key);
  if (!request) {
    request = api("pipeline", objectPath(key), { accept: "image/*" }).then((blob) => URL.createObjectURL(blob));
    request.catch(() => images.delete(key));
    images.set(key, request);
  }
  return request;
}

/**
 * The image with its boxes; resolves once the image is in. The SVG shares the image's pixel
 * grid, so boxes are in the image's pixels.
 * @param {string} key
 * @param {number} width
 * @param {number} height
 * @param {Mark[]} boxes
 */
export async function figure(key, width, height, boxes) {
  const src = await imageUrl(key);
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", "data-key": key });
  for (const b of boxes) {
    const [x1, y1, x2, y2] = b.box;
    const rect = svg("rect", { class: b.cls, x: x1, y: y1, width: x2 - x1, height: y2 - y1 });
    if (b.title) rect.append(svg("title", {}, b.title));
    root.append(rect);
  }
  return el("div", { class: "ev-frame" }, el("img", { src, alt: key.split("/").pop(), width, height }), root);
}

/**
 * @param {Blob} blob
 * @param {string} name
 */
export function save(blob, name) {
  const link = el("a", { href: URL.createObjectURL(blob), download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
}

/** @param {number | null | undefined} value */
export function pct(value) {
  return value === null || value === undefined ? "–" : (100 * value).toFixed(1);
}
