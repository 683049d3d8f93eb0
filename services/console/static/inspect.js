// Inspect: one image -> the anomaly map (drawn over the image with a colour bar, from the
// float map the anomaly-map API returns) and the served detector's boxes, side by side.
"use strict";

(() => {
  const { api, el, showError, colour } = Console;
  const $ = (id) => document.getElementById(id);
  const view = { image: null, map: null, detections: [], raw: {} };

  async function loadCategories() {
    try {
      const items = await Console.categories();
      $("category").replaceChildren(...items.map((c) => el("option", { value: c.name, text: `${c.name} (v ${c.version}, ${c.method})` })));
      if (!items.length) showError("map-error", { code: "no_categories", detail: "create a category first (Categories page)" });
      $("inspect-status").textContent = items.length ? "" : "No categories yet: create one on the Categories page.";
    } catch (err) {
      showError("inspect-status", err);
    }
  }

  function pick(file) {
    if (!file) return;
    $("file-name").textContent = `${file.name} (${Math.round(file.size / 1024)} KiB)`;
    view.file = file;
  }

  function decodeMap(payload) {
    const [h, w] = payload.shape;
    if (payload.encoding === "list") return { h, w, values: Float32Array.from(payload.data.flat()) };
    const bytes = Uint8Array.from(atob(payload.data), (c) => c.charCodeAt(0));
    const data = new DataView(bytes.buffer);
    const values = new Float32Array(h * w);
    for (let i = 0; i < values.length; i += 1) values[i] = data.getFloat32(i * 4, true);
    return { h, w, values };
  }

  function fitCanvas(canvas, image) {
    const scale = Math.min(480 / image.width, 480 / image.height);
    canvas.width = Math.max(1, Math.round(image.width * scale));
    canvas.height = Math.max(1, Math.round(image.height * scale));
    return scale;
  }

  function drawMap() {
    const canvas = $("map-canvas");
    const ctx = canvas.getContext("2d");
    fitCanvas(canvas, view.image);
    ctx.drawImage(view.image, 0, 0, canvas.width, canvas.height);
    if (!view.map) return;
    const { h, w, values } = view.map;
    let lo = Infinity, hi = -Infinity;
    for (const v of values) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    const span = hi - lo || 1;
    const small = document.createElement("canvas");
    small.width = w;
    small.height = h;
    const pixels = small.getContext("2d").createImageData(w, h);
    values.forEach((v, i) => {
      const [r, g, b] = colour((v - lo) / span);
      pixels.data.set([r, g, b, 255], i * 4);
    });
    small.getContext("2d").putImageData(pixels, 0, 0);
    ctx.globalAlpha = Number($("alpha").value);
    ctx.imageSmoothingEnabled = true; // bilinear upsampling of the patch grid
    ctx.drawImage(small, 0, 0, canvas.width, canvas.height);
    ctx.globalAlpha = 1;
    drawColourBar(lo, hi);
  }

  function drawColourBar(lo, hi) {
    const bar = $("colorbar");
    const ctx = bar.getContext("2d");
    for (let y = 0; y < bar.height; y += 1) {
      const [r, g, b] = colour(1 - y / (bar.height - 1));
      ctx.fillStyle = `rgb(${r},${g},${b})`;
      ctx.fillRect(0, y, bar.width, 1);
    }
    $("bar-max").textContent = hi.toFixed(3);
    $("bar-min").textContent = lo.toFixed(3);
  }

  function drawDetections() {
    const canvas = $("det-canvas");
    const ctx = canvas.getContext("2d");
    const scale = fitCanvas(canvas, view.image);
    ctx.drawImage(view.image, 0, 0, canvas.width, canvas.height);
    const threshold = Number($("threshold").value);
    $("threshold-value").textContent = threshold.toFixed(2);
    const kept = view.detections.filter((d) => d.score >= threshold);
    ctx.lineWidth = 2;
    ctx.font = "12px sans-serif";
    for (const d of kept) {
      const [x1, y1, x2, y2] = d.box_xyxy.map((v) => v * scale);
      const hue = (d.class_id * 67) % 360;
      ctx.strokeStyle = `hsl(${hue} 90% 50%)`;
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      ctx.fillStyle = ctx.strokeStyle;
      ctx.fillText(`${d.class_name} ${d.score.toFixed(2)}`, x1 + 2, Math.max(12, y1 - 3));
    }
    $("det-count").textContent = `${kept.length} box${kept.length === 1 ? "" : "es"} ≥ ${threshold.toFixed(2)}`;
    $("det-table").tBodies[0].replaceChildren(...kept.slice(0, 50).map((d) => el("tr", { class: "det-row" },
      el("td", { text: d.class_name }), el("td", { text: d.score.toFixed(3) }),
      el("td", { text: d.box_xyxy.map((v) => v.toFixed(0)).join(", ") }))));
  }

  function showRaw() {
    const raw = JSON.parse(JSON.stringify(view.raw));
    if (raw.anomaly_map && raw.anomaly_map.map) raw.anomaly_map.map.data = "(float32 map, base64; shown above)";
    $("raw-json").textContent = JSON.stringify(raw, null, 2);
  }

  async function runMap(file) {
    const form = new FormData();
    form.append("image", file);
    form.append("category", $("category").value);
    if ($("mode").value) form.append("mode", $("mode").value);
    form.append("map_encoding", "base64");
    try {
      const answer = await api("anomaly_map", "v1/anomaly-maps", { method: "POST", form });
      view.raw.anomaly_map = answer;
      view.map = decodeMap(answer.map);
      $("score").textContent = answer.image_score.toFixed(4);
      $("map-meta").textContent = `${answer.mode} · ${answer.model} · map ${answer.map_shape.join("×")} · v ${answer.category_version}`;
    } catch (err) {
      view.map = null;
      view.raw.anomaly_map = err.body || { error: err.message };
      $("score").textContent = "–";
      showError("map-error", err);
    }
  }

  async function runDetect(file) {
    const form = new FormData();
    form.append("image", file);
    const query = { conf: 0.01 };
    if ($("model").value.trim()) query.model = $("model").value.trim();
    try {
      const answer = await api("inference", "v1/detect", { method: "POST", form, query });
      view.raw.detect = answer;
      view.detections = answer.detections;
      $("det-model").textContent = `${answer.model.name} v ${answer.model.version}`;
    } catch (err) {
      view.detections = [];
      view.raw.detect = err.body || { error: err.message };
      showError("det-error", err);
    }
  }

  async function run(event) {
    event.preventDefault();
    const file = view.file || $("image").files[0];
    if (!file) return showError("inspect-status", { code: "no_image", detail: "pick or drop an image first" });
    showError("inspect-status", null);
    showError("map-error", null);
    showError("det-error", null);
    $("run").disabled = true;
    $("inspect-status").textContent = "running…";
    try {
      view.image = await createImageBitmap(file);
    } catch (err) {
      $("run").disabled = false;
      return showError("inspect-status", { code: "undecodable_image", detail: `the browser cannot show this file: ${err.message}` });
    }
    view.raw = {};
    await Promise.all([runMap(file), runDetect(file)]);
    $("results").hidden = false;
    drawMap();
    drawDetections();
    showRaw();
    $("inspect-status").textContent = "";
    $("run").disabled = false;
    document.body.dataset.inspected = String(Date.now());
  }

  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    pick(e.dataTransfer.files[0]);
  });
  $("image").addEventListener("change", () => pick($("image").files[0]));
  $("inspect-form").addEventListener("submit", run);
  $("alpha").addEventListener("input", () => view.image && drawMap());
  $("threshold").addEventListener("input", () => view.image && drawDetections());
  async function loadMethods() {
    try {
      await Console.fillMethods($("mode"), 1);
    } catch (err) {
      showError("inspect-status", err);
    }
  }

  // /inspect?key=<store key> (the gallery's link): the stored image, fetched with the key
  // through the pipeline API's /v1/objects, is picked as if it had been dropped here.
  async function pickStored(key) {
    try {
      const blob = await api("pipeline", Console.objectPath(key), { accept: "image/*" });
      pick(new File([blob], key.split("/").pop(), { type: blob.type }));
    } catch (err) {
      showError("inspect-status", err);
    }
  }

  document.addEventListener("console:key", () => { loadCategories(); loadMethods(); });
  loadCategories();
  loadMethods();
  const stored = new URLSearchParams(location.search).get("key");
  if (stored) pickStored(stored);
})();
