// Visual Search web page: framework-free, talks only to the service that served it (same origin).
//
// Modes appear only when the service has their endpoint (read from /openapi.json): photo (/search/image),
// text (/search/text), video (/search/video) and duplicates (/find_similar). Filters come from /facets;
// the soft text filter appears only when /search/image (or /search/video) accepts a `text` field. Result cards
// get "More like this" when the service has /search/similar; a region drawn on the photo preview is sent as
// `crop` when /search/image takes it. A video with several shots also shows each shot's own results.
"use strict";

const MODES = {
  photo: { path: "/search/image", method: "post" },
  text: { path: "/search/text", method: "post" },
  video: { path: "/search/video", method: "post" },
  duplicates: { path: "/find_similar", method: "post" },
};
const SIMILAR = { path: "/search/similar", method: "post" }; // "More like this" on every card
const THUMB_SIZE = 256;
const MIN_CROP = 0.02; // a drawn region narrower or shorter than this fraction of the photo is ignored
const FACET_FIELDS = ["category", "brand"]; // /facets value lists, each a <select id=FIELD> in #FIELD-field

const $ = (id) => document.getElementById(id);
const state = {
  mode: null,
  modes: [],          // available modes, in tab order
  soft: new Set(),    // modes whose endpoint takes `text` + `text_weight`
  frameThumbs: false, // /search/video takes `frame_thumbnails`
  similar: false,     // the service has POST /search/similar
  cropField: false,   // /search/image takes `crop`
  crop: null,         // [x0, y0, x1, y1] fractions of the previewed photo, or null for all of it
  imageFile: null,    // File chosen, dropped or pasted for photo/duplicates
  previewUrl: null,
  videoFile: null,
  seq: 0,             // id of the latest search: older answers are dropped
  controller: null,
};

// ---------- HTTP ----------

class ApiError extends Error {
  constructor(message, code, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

// fetch + JSON; a non-2xx answer throws ApiError with the service's {"error": {"code", "message"}}.
async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(`Cannot reach the service (${e.message}).`, "network_error", 0);
  }
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = null;
  }
  if (!response.ok) {
    const err = body && body.error;
    throw new ApiError(err && err.message ? err.message : `HTTP ${response.status} ${response.statusText}`,
      err && err.code ? err.code : "http_error", response.status);
  }
  return body;
}

// ---------- start-up: capabilities, catalog info, facets ----------

function formProperties(spec, path) {
  const op = spec.paths && spec.paths[path] && spec.paths[path].post;
  const content = op && op.requestBody && op.requestBody.content;
  let schema = content && (content["multipart/form-data"] || content["application/x-www-form-urlencoded"] || {}).schema;
  if (schema && schema.$ref) {
    const name = schema.$ref.split("/").pop();
    schema = spec.components && spec.components.schemas && spec.components.schemas[name];
  }
  return (schema && schema.properties) || {};
}

async function loadCapabilities() {
  let spec;
  try {
    spec = await api("/openapi.json");
  } catch (e) {
    showError(`Could not read the service's API description: ${e.message}`);
    spec = { paths: { "/search/image": {}, "/search/text": {} } };
  }
  const paths = spec.paths || {};
  state.modes = Object.keys(MODES).filter((m) => paths[MODES[m].path] && paths[MODES[m].path][MODES[m].method]);
  for (const mode of ["photo", "video"]) {
    if (state.modes.includes(mode) && "text" in formProperties(spec, MODES[mode].path)) state.soft.add(mode);
  }
  state.frameThumbs = "frame_thumbnails" in formProperties(spec, MODES.video.path);
  state.similar = Boolean(paths[SIMILAR.path] && paths[SIMILAR.path][SIMILAR.method]);
  state.cropField = state.modes.includes("photo") && "crop" in formProperties(spec, MODES.photo.path);
  for (const tab of document.querySelectorAll("#modes [data-mode]")) {
    tab.hidden = !state.modes.includes(tab.dataset.mode);
    tab.addEventListener("click", () => setMode(tab.dataset.mode));
  }
  const wanted = (location.hash || "").slice(1);
  setMode(state.modes.includes(wanted) ? wanted : state.modes[0]);
}

async function loadHealth() {
  try {
    const h = await api("/healthz");
    $("catalog-info").textContent = `${h.products} products · model ${h.model_id}`;
    $("weights-note").hidden = h.model_weights !== "random";
  } catch (e) {
    $("catalog-info").textContent = `Service not ready: ${e.message}`;
  }
}

function fillSelect(select, values) {
  for (const { value, count } of values) {
    const option = document.createElement("option");
    option.value = value;
    option.textContent = `${value} (${count})`;
    select.append(option);
  }
}

async function loadFacets() {
  let body;
  try {
    body = await api("/facets");
  } catch (e) {
    return; // no facets endpoint: filters stay hidden
  }
  const facets = body.facets || {};
  for (const field of FACET_FIELDS) {
    if ((facets[field] || []).length) {
      fillSelect($(field), facets[field]);
      $(`${field}-field`).hidden = false;
    }
  }
  const price = (body.ranges || {}).price;
  if (price) {
    for (const id of ["price-min", "price-max"]) {
      $(id).min = Math.floor(price.min);
      $(id).max = Math.ceil(price.max);
    }
    $("price-min").placeholder = Math.floor(price.min);
    $("price-max").placeholder = Math.ceil(price.max);
    $("price-field").hidden = false;
  }
}

// ---------- mode switching ----------

function setMode(mode) {
  if (!mode) return;
  state.mode = mode;
  for (const tab of document.querySelectorAll("#modes [data-mode]")) {
    tab.setAttribute("aria-selected", String(tab.dataset.mode === mode));
  }
  for (const panel of document.querySelectorAll("#search-form [data-modes]")) {
    const modes = panel.dataset.modes.split(" ");
    let visible = modes.includes(mode);
    if (panel.id === "soft-filter") visible = visible && state.soft.has(mode);
    if (panel.id === "filters") visible = visible && panel.querySelector(".field:not([hidden])") !== null;
    panel.hidden = !visible;
  }
  if (history.replaceState) history.replaceState(null, "", `#${mode}`);
  updateCrop();
  clearResults();
  hideError();
  setStatus("");
}

// ---------- inputs: file picker, drag-and-drop, paste ----------

function setImageFile(file) {
  state.imageFile = file;
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = URL.createObjectURL(file);
  state.crop = null; // a region of the previous photo means nothing for this one
  const preview = $("image-preview");
  preview.src = state.previewUrl;
  preview.hidden = false;
  updateCrop();
  $("image-name").textContent = `${file.name || "pasted image"} · ${formatBytes(file.size)}`;
  $("image-url").value = "";
  if (state.mode !== "photo" && state.mode !== "duplicates") setMode(state.modes.includes("photo") ? "photo" : "duplicates");
  search();
}

function setVideoFile(file) {
  state.videoFile = file;
  $("video-name").textContent = `${file.name || "clip"} · ${formatBytes(file.size)}`;
  if (state.mode !== "video") setMode("video");
  search();
}

function takeFile(file) {
  if (!file) return;
  if (file.type.startsWith("video/") && state.modes.includes("video")) setVideoFile(file);
  else if (state.mode === "video") setVideoFile(file); // let the service judge what it is
  else setImageFile(file);
}

function wireDropZone(zone) {
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    e.stopPropagation(); // the window's drop handler would take the same file again
    zone.classList.remove("over");
    takeFile(e.dataTransfer.files[0]);
  });
}

function wireInputs() {
  $("image-file").addEventListener("change", (e) => {
    if (e.target.files[0]) setImageFile(e.target.files[0]);
    e.target.value = "";
  });
  $("video-file").addEventListener("change", (e) => {
    if (e.target.files[0]) setVideoFile(e.target.files[0]);
    e.target.value = "";
  });
  wireDropZone($("drop-zone"));
  wireDropZone($("video-drop-zone"));
  // Dropping a file anywhere else must not navigate away from the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => {
    e.preventDefault();
    takeFile(e.dataTransfer && e.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (e) => {
    const items = (e.clipboardData && e.clipboardData.items) || [];
    for (const item of items) {
      if (item.kind === "file" && item.type.startsWith("image/")) {
        e.preventDefault();
        setImageFile(item.getAsFile());
        return;
      }
    }
  });
  $("image-preview").addEventListener("error", () => { // not decodable here
    $("image-preview").hidden = true;
    updateCrop();
  });
  $("image-preview").addEventListener("load", updateCrop);
  $("image-url").addEventListener("input", () => {
    if ($("image-url").value.trim()) {
      state.imageFile = null;
      state.crop = null;
      $("image-preview").hidden = true; // never load a third-party URL in the page
      $("image-name").textContent = "";
      updateCrop();
    }
  });
  wireCrop();
  $("soft-weight").addEventListener("input", () => {
    $("soft-weight-value").textContent = Number($("soft-weight").value).toFixed(2);
  });
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    search();
  });
}

// ---------- region (crop) drawn on the photo preview ----------

const clamp01 = (v) => Math.min(1, Math.max(0, v));
const round4 = (v) => Math.round(v * 10000) / 10000;

// Drawing is offered in photo mode, for an uploaded photo the page shows, when /search/image takes `crop`.
function cropEnabled() {
  const preview = $("image-preview");
  return state.cropField && state.mode === "photo" && state.imageFile !== null && !preview.hidden &&
    preview.complete && preview.naturalWidth > 0;
}

// The preview shows the photo after EXIF orientation, scaled without distortion, so fractions of its displayed
// box are fractions of the oriented photo's natural width and height (what the service's `crop` means).
function pointerFraction(e) {
  const rect = $("image-preview").getBoundingClientRect();
  return [clamp01((e.clientX - rect.left) / rect.width), clamp01((e.clientY - rect.top) / rect.height)];
}

function boxBetween([ax, ay], [bx, by]) {
  return [Math.min(ax, bx), Math.min(ay, by), Math.max(ax, bx), Math.max(ay, by)].map(round4);
}

const isTiny = ([x0, y0, x1, y1]) => x1 - x0 < MIN_CROP || y1 - y0 < MIN_CROP;

function placeCropBox(crop) {
  const box = $("crop-box");
  if (!crop || !cropEnabled()) {
    box.hidden = true;
    return;
  }
  const preview = $("image-preview"); // the box and the photo share #preview-wrap as offset parent
  const [x0, y0, x1, y1] = crop;
  box.style.left = `${preview.offsetLeft + x0 * preview.clientWidth}px`;
  box.style.top = `${preview.offsetTop + y0 * preview.clientHeight}px`;
  box.style.width = `${(x1 - x0) * preview.clientWidth}px`;
  box.style.height = `${(y1 - y0) * preview.clientHeight}px`;
  box.hidden = false;
}

function updateCrop() {
  const enabled = cropEnabled();
  $("image-preview").classList.toggle("croppable", enabled);
  $("crop-controls").hidden = !enabled;
  $("crop-clear").hidden = !enabled || !state.crop;
  placeCropBox(state.crop);
}

function wireCrop() {
  const preview = $("image-preview");
  let drag = null; // {id, start, previous} while a pointer draws
  preview.addEventListener("dragstart", (e) => e.preventDefault()); // no native image drag while drawing
  preview.addEventListener("pointerdown", (e) => {
    if (!cropEnabled() || e.button !== 0 || drag) return;
    e.preventDefault();
    preview.setPointerCapture(e.pointerId);
    const start = pointerFraction(e);
    drag = { id: e.pointerId, start, previous: state.crop };
    placeCropBox(boxBetween(start, start));
  });
  preview.addEventListener("pointermove", (e) => {
    if (drag && e.pointerId === drag.id) placeCropBox(boxBetween(drag.start, pointerFraction(e)));
  });
  const finish = (e, cancelled) => {
    if (!drag || e.pointerId !== drag.id) return;
    const box = boxBetween(drag.start, pointerFraction(e));
    const previous = drag.previous;
    drag = null;
    if (cancelled || isTiny(box)) { // a click or a slip: keep the region there was
      state.crop = previous;
      updateCrop();
      return;
    }
    state.crop = box;
    updateCrop();
    search();
  };
  preview.addEventListener("pointerup", (e) => finish(e, false));
  preview.addEventListener("pointercancel", (e) => finish(e, true));
  $("crop-clear").addEventListener("click", () => {
    state.crop = null;
    updateCrop();
    search();
  });
  window.addEventListener("resize", () => placeCropBox(state.crop));
}

// ---------- building requests ----------

function readK() {
  const k = Number.parseInt($("k").value, 10);
  if (!Number.isFinite(k) || k < 1) throw new ApiError("Number of results must be a whole number ≥ 1.", "invalid_k", 0);
  return k;
}

function currentFilters() {
  const filters = {};
  for (const field of FACET_FIELDS) {
    if (!$(`${field}-field`).hidden && $(field).value) filters[field] = $(field).value;
  }
  if (!$("price-field").hidden) {
    const lo = Number.parseFloat($("price-min").value);
    const hi = Number.parseFloat($("price-max").value);
    const range = {};
    if (Number.isFinite(lo)) range.gte = lo;
    if (Number.isFinite(hi)) range.lte = hi;
    if (Object.keys(range).length) filters.price = range;
  }
  return Object.keys(filters).length ? filters : null;
}

function addCommonFields(form, mode) {
  form.append("k", String(readK()));
  const filters = currentFilters();
  if (filters) form.append("filters", JSON.stringify(filters));
  const text = $("soft-text").value.trim();
  if (state.soft.has(mode) && text) { // sent only when there is text: older services refuse unknown fields
    form.append("text", text);
    form.append("text_weight", $("soft-weight").value);
  }
}

function buildRequest(mode) {
  if (mode === "text") {
    const query = $("text-query").value.trim();
    if (!query) throw new ApiError("Type a description of the product first.", "empty_query", 0);
    return [MODES.text.path, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ query, k: readK(), filters: currentFilters() }),
    }];
  }
  const form = new FormData();
  if (mode === "video") {
    if (!state.videoFile) throw new ApiError("Choose or drop a video clip first.", "no_file", 0);
    form.append("file", state.videoFile, state.videoFile.name || "clip.mp4");
    form.append("fps", $("video-fps").value || "1");
    if (state.frameThumbs) form.append("frame_thumbnails", "true");
    addCommonFields(form, mode);
    return [MODES.video.path, { method: "POST", body: form }];
  }
  const url = $("image-url").value.trim();
  if (!state.imageFile && !url) throw new ApiError("Choose, drop or paste a photo, or give an image URL.", "no_file", 0);
  if (mode === "duplicates") {
    const params = new URLSearchParams({ top: String(readK()), mode: $("robust").checked ? "robust" : "phash" });
    if ($("max-distance").value !== "") params.set("max_distance", $("max-distance").value);
    if (!state.imageFile) {
      params.set("image_url", url);
      return [`${MODES.duplicates.path}?${params}`, { method: "GET" }];
    }
    for (const [key, value] of params) form.append(key, value);
    form.append("file", state.imageFile, state.imageFile.name || "pasted.png");
    return [MODES.duplicates.path, { method: "POST", body: form }];
  }
  if (state.imageFile) {
    form.append("file", state.imageFile, state.imageFile.name || "pasted.png");
    if (state.crop && state.cropField) form.append("crop", JSON.stringify(state.crop));
  } else {
    form.append("image_url", url); // the page never shows a URL's photo, so no region of it is drawn
  }
  addCommonFields(form, mode);
  return [MODES.photo.path, { method: "POST", body: form }];
}

// ---------- searching ----------

function setBusy(busy) {
  document.body.classList.toggle("loading", busy);
  if (busy) $("results").setAttribute("aria-busy", "true");
  else $("results").removeAttribute("aria-busy");
  $("search-button").disabled = busy;
}

// One search at a time: `makeRequest()` → [path, fetch options]; the answer is drawn as `mode` (a search mode,
// or "similar"), and the status line reads `${label}N results in T ms`.
async function runSearch(mode, makeRequest, pending, label = "") {
  const seq = ++state.seq;
  if (state.controller) state.controller.abort();
  hideError();
  let request;
  try {
    request = makeRequest();
  } catch (e) {
    setBusy(false); // the search it replaced was aborted
    showError(e.message);
    return;
  }
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  setStatus(pending);
  const started = performance.now();
  try {
    const body = await api(request[0], { ...request[1], signal: controller.signal });
    if (seq !== state.seq) return;
    const shots = render(mode, body);
    const ms = Math.round(performance.now() - started);
    const n = body.results.length;
    setStatus(`${label}${n} result${n === 1 ? "" : "s"} in ${ms} ms${shots > 1 ? ` · ${shots} shots` : ""}`);
  } catch (e) {
    if (e.name === "AbortError" || seq !== state.seq) return;
    clearResults();
    setStatus("");
    showError(e.message, e.code);
  } finally {
    if (seq === state.seq) setBusy(false);
  }
}

function search() {
  const mode = state.mode;
  return runSearch(mode, () => buildRequest(mode),
    mode === "video" ? "Decoding the clip and searching…" : "Searching…");
}

// "More like this": products like `result` by its stored image embedding, with the current k and filters.
function searchSimilar(result) {
  const name = result.title || result.product_id;
  return runSearch("similar", () => {
    const query = { positive: [result.product_id], k: readK() };
    const filters = $("filters").hidden ? null : currentFilters(); // e.g. duplicates mode has no filters
    if (filters) query.filters = filters;
    return [SIMILAR.path, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(query),
    }];
  }, `Looking for more like “${name}”…`, `More like “${name}”: `);
}

// ---------- rendering ----------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const fmtScore = (s) => (typeof s === "number" ? s.toFixed(3) : "–");
const fmtTime = (t) => `${Number(t).toFixed(1)} s`;
const fmtSpan = (a, b) => `${Number(a).toFixed(1)}–${Number(b).toFixed(1)} s`;
const fmtPercent = (p) => `${Number.isInteger(p) ? p : p.toFixed(1)} %`;

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

function card(result, mode) {
  const li = el("li", "card");
  li.dataset.productId = result.product_id;
  li.dataset.category = result.category || "";
  const img = el("img", "thumb");
  img.src = `/thumbnails/${encodeURIComponent(result.product_id)}?size=${THUMB_SIZE}`;
  img.alt = result.title || result.product_id;
  img.loading = "lazy";
  img.decoding = "async";
  img.addEventListener("error", () => img.classList.add("missing"), { once: true });
  li.append(img);
  const body = el("div", "card-body");
  body.append(el("h3", "title", result.title || result.product_id));
  const meta = el("p", "meta");
  meta.append(el("span", "category", result.category || "uncategorised"));
  if (typeof result.price === "number") meta.append(el("span", "price", result.price.toFixed(2)));
  body.append(meta);
  if (mode === "duplicates") {
    li.dataset.matchPercent = result.match_percent;
    li.dataset.hammingDistance = result.hamming_distance;
    body.append(el("p", "score match-percent", `${fmtPercent(result.match_percent)} match`));
    let detail = `distance ${result.hamming_distance} / 64 bits`;
    if (typeof result.cosine_similarity === "number") detail += ` · cosine ${fmtScore(result.cosine_similarity)}`;
    body.append(el("p", "breakdown", detail));
  } else {
    body.append(el("p", "score", `score ${fmtScore(result.score)}`));
    if (typeof result.image_score === "number" || typeof result.text_score === "number") {
      body.append(el("p", "breakdown",
        `image ${fmtScore(result.image_score)} · text ${fmtScore(result.text_score)}`));
    }
  }
  if (mode === "video" && Array.isArray(result.frames)) {
    const frames = el("p", "matched-frames");
    frames.append(el("span", "muted", "frames "));
    for (const f of result.frames) {
      const chip = el("span", "chip", fmtTime(f.t));
      chip.dataset.t = f.t;
      chip.title = `cosine ${fmtScore(f.score)}`;
      frames.append(chip);
    }
    body.append(frames);
    li.tabIndex = 0;
    highlightOnHover(li, result.frames);
  }
  if (state.similar) {
    const more = el("button", "more-like", "More like this");
    more.type = "button";
    more.addEventListener("click", () => searchSimilar(result));
    body.append(more);
  }
  li.append(body);
  return li;
}

// Hovering or focusing `node` marks the frames at `frames[i].t` in the frame strip.
function highlightOnHover(node, frames) {
  const times = new Set(frames.map((f) => String(f.t)));
  const highlight = (on) => {
    for (const fr of document.querySelectorAll("#frame-strip .frame")) {
      fr.classList.toggle("match", on && times.has(fr.dataset.t));
    }
  };
  node.addEventListener("mouseenter", () => highlight(true));
  node.addEventListener("mouseleave", () => highlight(false));
  node.addEventListener("focus", () => highlight(true));
  node.addEventListener("blur", () => highlight(false));
}

function renderFrames(body) {
  const strip = $("frame-strip");
  strip.replaceChildren();
  for (const frame of body.kept_frames || []) {
    const item = el("li", "frame");
    item.dataset.t = frame.t;
    if (frame.thumbnail && frame.thumbnail.startsWith("data:image/")) {
      const img = el("img");
      img.src = frame.thumbnail;
      img.alt = `frame at ${fmtTime(frame.t)}`;
      item.append(img);
    }
    item.append(el("span", "time", fmtTime(frame.t)));
    strip.append(item);
  }
  $("frames-summary").textContent =
    `${body.frames_kept} of ${body.frames_sampled} sampled frames kept · clip ${fmtTime(body.duration_s)}`;
  $("frames").hidden = false;
}

// A clip of several shots: after the whole clip's fused list, each shot's own ranking under its own heading.
// Returns the number of shots shown (0 for a single shot: the fused list is that shot's).
function renderShots(shots) {
  if (!Array.isArray(shots) || shots.length < 2) return 0;
  const holder = $("shot-list");
  shots.forEach((shot, i) => {
    const section = el("section", "shot");
    section.dataset.shot = String(i + 1);
    section.dataset.tStart = shot.t_start;
    section.dataset.tEnd = shot.t_end;
    const heading = el("h3", "shot-heading", `Shot ${i + 1} · ${fmtSpan(shot.t_start, shot.t_end)}`);
    heading.tabIndex = 0;
    highlightOnHover(heading, shot.frames || []);
    const n = (shot.frames || []).length;
    const header = el("div", "shot-header");
    header.append(heading, el("span", "muted small", `${n} kept frame${n === 1 ? "" : "s"}`));
    const list = el("ol", "results shot-results");
    list.setAttribute("aria-label", `Results for shot ${i + 1}`);
    if (!(shot.results || []).length) list.append(el("li", "empty muted", "No results for this shot."));
    for (const result of shot.results || []) list.append(card(result, "video"));
    section.append(header, list);
    holder.append(section);
  });
  $("results-heading").hidden = false;
  $("shots").hidden = false;
  return shots.length;
}

function render(mode, body) {
  clearResults();
  if (mode === "video") renderFrames(body);
  const list = $("results");
  list.dataset.mode = mode;
  if (!body.results.length) {
    list.append(el("li", "empty muted", mode === "duplicates"
      ? "No near-duplicates within the distance threshold."
      : "No results: loosen the filters or try another query."));
  }
  for (const result of body.results) list.append(card(result, mode));
  return mode === "video" ? renderShots(body.shots) : 0;
}

function clearResults() {
  $("results").replaceChildren();
  $("frame-strip").replaceChildren();
  $("frames").hidden = true;
  $("shot-list").replaceChildren();
  $("shots").hidden = true;
  $("results-heading").hidden = true;
}

function setStatus(text) {
  $("status").textContent = text;
}

function showError(message, code) {
  const box = $("error");
  box.textContent = message;
  if (code) box.dataset.code = code;
  else delete box.dataset.code;
  box.hidden = false;
}

function hideError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

// ---------- start ----------

async function start() {
  wireInputs();
  await Promise.all([loadCapabilities(), loadHealth(), loadFacets()]);
  setMode(state.mode); // re-evaluate panels now that the facets are known
  document.body.dataset.ready = "true";
}

start();
