// Gallery: a stored image set in pages of thumbnails (finetune API, /v1/galleries) with its
// layers drawn over each image: ground-truth boxes of a dataset split, pseudo boxes with
// their scores and the anomaly map of a pool. A page comes with its thumbnails inlined (one
// request for a hundred images). Layers toggle without a redraw (a class on the
// panel hides them); a click opens the image large with the same layers and a link to
// Inspect. A new page aborts the requests of the one it replaces.
"use strict";

(() => {
  const { api, el, showError, colour } = Console;
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const THUMB_SIDE = 256;
  const LARGE_SIDE = 1024;
  const view = { source: null, offset: 0, page: null, controller: null, urls: [], maps: new Map(), dataset: null };

  const keyPath = (key) => key.split("/").map(encodeURIComponent).join("/");
  const hue = (classes, label) => (Math.max(0, classes.indexOf(label)) * 137 + 200) % 360;

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // The boxes of one image in its own pixels; `fontPx` > 0 writes labels at that size on screen.
  function overlay(item, classes, width, height, fontPx) {
    const root = svg("svg", { class: "overlay", viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none" });
    const font = fontPx > 0 ? fontPx : 0;
    for (const [layer, boxes] of [["truth", item.truth], ["pseudo", item.pseudo]]) {
      const group = svg("g", { class: `layer-${layer}` });
      for (const b of boxes) {
        const text = b.score === null || b.score === undefined ? b.label : `${b.label} ${b.score.toFixed(2)}`;
        const rect = svg("rect", { class: `box ${layer}`, x: b.x1, y: b.y1, width: b.x2 - b.x1, height: b.y2 - b.y1,
          stroke: layer === "truth" ? `hsl(${hue(classes, b.label)} 90% 55%)` : "#ff3fb4", "data-label": b.label });
        rect.append(svg("title", {}, text));
        group.append(rect);
        if (font) group.append(svg("text", { class: "box-label", x: b.x1 + font * 0.2, y: Math.max(font, b.y1 - font * 0.25), "font-size": font }, text));
      }
      root.append(group);
    }
    return root;
  }

  function decodeGrid(payload) {
    const [h, w] = payload.shape;
    const bytes = Uint8Array.from(atob(payload.data), (c) => c.charCodeAt(0));
    const data = new DataView(bytes.buffer);
    const values = new Float32Array(h * w);
    for (let i = 0; i < values.length; i += 1) values[i] = data.getFloat32(i * 4, true);
    return { h, w, values, min: payload.min, max: payload.max };
  }

  // The map on a canvas of its own grid, coloured over its own range (as Inspect does);
  // CSS stretches it over the image, the browser smoothing the patch grid.
  function mapCanvas(grid) {
    const canvas = el("canvas", { class: "layer-map", width: grid.w, height: grid.h });
    const ctx = canvas.getContext("2d");
    const pixels = ctx.createImageData(grid.w, grid.h);
    const span = grid.max - grid.min || 1;
    grid.values.forEach((v, i) => pixels.data.set([...colour((v - grid.min) / span), 255], i * 4));
    ctx.putImageData(pixels, 0, 0);
    return canvas;
  }

  async function mapOf(key, signal) {
    if (!view.maps.has(key)) view.maps.set(key, api("finetune", `v1/galleries/maps/${keyPath(key)}`, { signal }).then(decodeGrid));
    try {
      return await view.maps.get(key);
    } catch (err) {
      view.maps.delete(key);
      throw err;
    }
  }

  async function addMap(frame, item, signal) {
    if (!item.map_key || frame.querySelector(".layer-map")) return;
    const grid = await mapOf(item.map_key, signal);
    frame.querySelector(".layer-map")?.remove();
    frame.insertBefore(mapCanvas(grid), frame.querySelector("svg"));
  }

  function layerOn(layer) {
    return !$("gallery-panel").classList.contains(`hide-${layer}`);
  }

  function setLayer(layer, on) {
    $("gallery-panel").classList.toggle(`hide-${layer}`, !on);
    for (const box of document.querySelectorAll(`input[data-layer='${layer}']`)) box.checked = on;
    if (layer === "map" && on) drawMaps();
  }

  function drawMaps() {
    const signal = view.controller && view.controller.signal;
    for (const tile of document.querySelectorAll("#gallery-grid .tile")) {
      const item = view.page.items[Number(tile.dataset.index)];
      addMap(tile.querySelector(".frame"), item, signal).catch(() => null);
    }
    const frame = $("viewer-frame");
    if (frame && $("gallery-viewer").open) addMap(frame, view.page.items[Number(frame.dataset.index)], signal).catch(() => null);
  }

  async function thumbnail(key, side, signal) {
    const blob = await api("finetune", `v1/galleries/thumbnails/${keyPath(key)}`, { query: { side }, accept: "image/jpeg", signal });
    const url = URL.createObjectURL(blob);
    view.urls.push(url);
    return url;
  }

  function caption(item) {
    const boxes = item.truth.length + item.pseudo.length;
    const parts = [item.name, `${boxes} box${boxes === 1 ? "" : "es"}`];
    if (item.score !== null && item.score !== undefined) parts.push(`score ${item.score.toFixed(3)}`);
    return parts.join(" · ");
  }

  function tile(item, index, classes, signal) {
    const frame = el("div", { class: "frame" });
    if (item.width && item.height) {
      frame.style.aspectRatio = `${item.width} / ${item.height}`;
      frame.append(overlay(item, classes, item.width, item.height, 0));
    }
    const image = el("img", { alt: item.name, loading: "eager" });
    frame.prepend(image);
    const node = el("figure", { class: "tile", tabindex: "0", title: item.image_key,
      dataset: { index: String(index), name: item.name, truth: String(item.truth.length), pseudo: String(item.pseudo.length), score: item.score ?? "" },
      onclick: () => openViewer(index), onkeydown: (e) => { if (e.key === "Enter") openViewer(index); } },
    frame, el("figcaption", { text: caption(item) }));
    // The page brings its thumbnails inlined; one it could not make is asked for on its
    // own, so its error shows in the image's place.
    const source = item.thumbnail ? Promise.resolve(item.thumbnail) : thumbnail(item.image_key, THUMB_SIDE, signal);
    const ready = source.then((url) => {
      image.src = url;
      return image.decode().catch(() => null);
    }).catch((err) => frame.replaceChildren(el("div", { class: "error", text: err.code || err.message })));
    if (layerOn("map")) addMap(frame, item, signal).catch(() => null);
    return { node, ready };
  }

  function query() {
    const q = { offset: view.offset, limit: $("gallery-limit").value, class_name: $("gallery-class").value, sort: $("gallery-sort").value, thumbnails: THUMB_SIDE };
    if ($("gallery-boxes").value) q.has_boxes = $("gallery-boxes").value;
    if ($("gallery-min").value !== "") q.min_score = $("gallery-min").value;
    if ($("gallery-max").value !== "") q.max_score = $("gallery-max").value;
    return q;
  }

  function fetchPage(signal) {
    const s = view.source;
    const q = query();
    if (s.kind === "dataset") return api("finetune", `v1/galleries/datasets/${encodeURIComponent(s.name)}/${encodeURIComponent(s.version)}/${encodeURIComponent(s.split)}`, { query: q, signal });
    return api("finetune", "v1/galleries/prefix", { query: { ...q, prefix: s.prefix }, signal });
  }

  function reset() {
    if (view.controller) view.controller.abort();
    view.controller = new AbortController();
    view.urls.forEach((u) => URL.revokeObjectURL(u));
    view.urls = [];
    return view.controller.signal;
  }

  async function load() {
    if (!view.source) return;
    const signal = reset();
    const started = performance.now();
    showError("gallery-error", null);
    const grid = $("gallery-grid");
    grid.dataset.state = "loading";
    try {
      view.page = await fetchPage(signal);
    } catch (err) {
      if (err.name === "AbortError") return;
      grid.replaceChildren();
      grid.dataset.state = "error";
      return showError("gallery-error", err);
    }
    const tiles = view.page.items.map((item, i) => tile(item, i, view.page.classes, signal));
    grid.replaceChildren(...tiles.map((t) => t.node));
    showPage(view.page);
    await Promise.allSettled(tiles.map((t) => t.ready));
    if (signal.aborted) return;
    const ms = Math.round(performance.now() - started);
    Object.assign(grid.dataset, { state: "ready", loadMs: String(ms), thumbnails: String(tiles.length) });
    $("gallery-timing").textContent = `${tiles.length} thumbnails in ${ms} ms`;
    performance.measure("gallery-page", { start: started, end: started + ms });
  }

  function showPage(page) {
    $("gallery-title").textContent = page.title;
    const first = page.total ? page.offset + 1 : 0;
    $("gallery-count").textContent = `${first}–${page.offset + page.items.length} of ${page.total}${page.total !== page.images ? ` (${page.images} in the set)` : ""}`;
    $("gallery-prev").disabled = page.offset === 0;
    $("gallery-next").disabled = page.next_offset === null;
    const chosen = $("gallery-class").value;
    $("gallery-class").replaceChildren(el("option", { value: "", text: "any" }), ...page.classes.map((c) => el("option", { value: c, text: c })));
    $("gallery-class").value = page.classes.includes(chosen) ? chosen : "";
    for (const layer of ["truth", "pseudo", "map"]) {
      for (const box of document.querySelectorAll(`input[data-layer='${layer}']`)) box.closest("label").hidden = !page.layers.includes(layer);
    }
    const scored = page.score_range !== null;
    $("gallery-scores").hidden = !scored;
    $("gallery-sort").querySelector("option[value='score']").disabled = !scored;
    if (scored) $("gallery-score-range").textContent = `set: ${page.score_range.map((v) => v.toFixed(3)).join(" – ")}`;
  }

  async function openViewer(index) {
    const item = view.page.items[index];
    const dialog = $("gallery-viewer");
    $("viewer-title").textContent = item.name;
    $("viewer-meta").textContent = caption(item);
    $("viewer-key").textContent = item.image_key;
    $("viewer-inspect").href = `/inspect?key=${encodeURIComponent(item.image_key)}`;
    const frame = el("div", { class: "frame large", id: "viewer-frame", dataset: { index: String(index) } });
    const image = el("img", { alt: item.name });
    frame.append(image);
    $("viewer-stage").replaceChildren(frame);
    if (!dialog.open) dialog.showModal();
    try {
      image.src = await thumbnail(item.image_key, LARGE_SIDE, view.controller.signal);
      await image.decode();
    } catch (err) {
      return showError("viewer-error", err);
    }
    const width = item.width || image.naturalWidth;
    const height = item.height || image.naturalHeight;
    const shown = Math.round(Math.min(LARGE_SIDE, 0.9 * innerWidth, (0.75 * innerHeight * width) / height));
    Object.assign(frame.style, { aspectRatio: `${width} / ${height}`, width: `${shown}px` });
    frame.append(overlay(item, view.page.classes, width, height, (13 * width) / shown));
    if (layerOn("map")) addMap(frame, item, view.controller.signal).catch(() => null);
  }

  function choose(source) {
    view.source = source;
    view.offset = 0;
    load();
  }

  function sourceOptions(pools) {
    const groups = [];
    const d = view.dataset;
    if (d) {
      groups.push(el("optgroup", { label: `${d.name}:${d.version}` }, Object.entries(d.splits).map(([split, n]) =>
        el("option", { value: JSON.stringify({ kind: "dataset", name: d.name, version: d.version, split }), text: `${d.name}:${d.version} · ${split} (${n})` }))));
    }
    if (pools.length) {
      groups.push(el("optgroup", { label: "Pools with pseudo boxes" }, pools.map((p) =>
        el("option", { value: JSON.stringify({ kind: "prefix", prefix: p.prefix }), text: `${p.category} · ${p.job_id || p.prefix} (${p.images_with_boxes}/${p.images} with boxes)` }))));
    }
    return groups;
  }

  // Sources: the dataset version the page shows (its splits) and the stored pools. A newly
  // shown version is chosen at once; otherwise the choice stays (or the first is taken).
  async function fillSources(showDataset) {
    let pools = [];
    try {
      pools = (await api("finetune", "v1/galleries/pools")).items;
    } catch (err) {
      showError("gallery-error", err);
    }
    const select = $("gallery-source");
    const previous = select.value;
    select.replaceChildren(...sourceOptions(pools));
    if (showDataset && select.options.length) select.selectedIndex = 0;
    else if ([...select.options].some((o) => o.value === previous)) select.value = previous;
    if (select.value && (select.value !== previous || showDataset)) choose(JSON.parse(select.value));
  }

  function onSubmit(event) {
    event.preventDefault();
    const prefix = $("gallery-prefix").value.trim();
    if (prefix) return choose({ kind: "prefix", prefix });
    if ($("gallery-source").value) choose(JSON.parse($("gallery-source").value));
  }

  function wire() {
    $("gallery-form").addEventListener("submit", onSubmit);
    $("gallery-source").addEventListener("change", (e) => { $("gallery-prefix").value = ""; choose(JSON.parse(e.target.value)); });
    for (const id of ["gallery-class", "gallery-boxes", "gallery-sort", "gallery-limit"]) $(id).addEventListener("change", () => { view.offset = 0; load(); });
    $("gallery-prev").addEventListener("click", () => { view.offset = Math.max(0, view.page.offset - view.page.limit); load(); });
    $("gallery-next").addEventListener("click", () => { view.offset = view.page.next_offset; load(); });
    for (const box of document.querySelectorAll("input[data-layer]")) box.addEventListener("change", () => setLayer(box.dataset.layer, box.checked));
    $("viewer-close").addEventListener("click", () => $("gallery-viewer").close());
    document.addEventListener("console:dataset-version", (e) => { view.dataset = e.detail; fillSources(true); });
    document.addEventListener("console:key", () => fillSources(false));
  }

  wire();
  setLayer("map", false);
  fillSources(false);
})();
