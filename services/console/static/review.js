// Helpers of the Evaluation page: boxes drawn as SVG over a stored image (fetched with the
// key through the pipeline API's /v1/objects), and a fetched zip saved as a download.
"use strict";

const Review = (() => {
  const { api, el, objectPath } = Console;
  const NS = "http://www.w3.org/2000/svg";
  const images = new Map(); // store key -> Promise of a blob: URL, fetched once per page

  // "name:version" + file name -> the key the dataset import stored the image under.
  function datasetImageKey(dataset, fileName) {
    const [name, version] = String(dataset).split(":");
    return `datasets/${name}/${version}/images/${fileName}`;
  }

  function imageUrl(key) {
    if (!images.has(key)) {
      const request = api("pipeline", objectPath(key), { accept: "image/*" }).then((blob) => URL.createObjectURL(blob));
      request.catch(() => images.delete(key));
      images.set(key, request);
    }
    return images.get(key);
  }

  function svgNode(tag, attrs, title) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (title) {
      const t = document.createElementNS(NS, "title");
      t.textContent = title;
      node.append(t);
    }
    return node;
  }

  // boxes: [{box: [x1, y1, x2, y2], cls: "gt tp ...", title}] in the image's pixels.
  // Resolves with the frame once the image is in; the SVG shares the image's pixel grid.
  async function figure(key, width, height, boxes) {
    const src = await imageUrl(key);
    const svg = svgNode("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", "data-key": key });
    for (const b of boxes) {
      const [x1, y1, x2, y2] = b.box;
      svg.append(svgNode("rect", { class: b.cls, x: x1, y: y1, width: x2 - x1, height: y2 - y1 }, b.title));
    }
    return el("div", { class: "ev-frame" }, el("img", { src, alt: key.split("/").pop(), width, height }), svg);
  }

  function save(blob, name) {
    const link = el("a", { href: URL.createObjectURL(blob), download: name });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
  }

  function pct(value) {
    return value === null || value === undefined ? "–" : (100 * value).toFixed(1);
  }

  return { datasetImageKey, figure, save, pct };
})();
