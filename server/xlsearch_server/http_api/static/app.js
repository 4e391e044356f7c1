// xlsearch web page: plain JS over the HTTP/JSON API (/openapi.json). No build step, no dependencies.
"use strict";

const $ = (sel) => document.querySelector(sel);
const PAGE = 20;
const state = { filters: [], last: null, objectUrls: [] };

function apiKey() { return $("#api-key").value.trim(); }

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (apiKey()) h["Authorization"] = "Bearer " + apiKey();
  return h;
}

async function call(path, options) {
  const response = await fetch(path, Object.assign({}, options, { headers: headers((options || {}).headers) }));
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const err = (body && body.error) || {};
    throw new Error(`${response.status} ${err.code || ""}: ${err.message || response.statusText}`);
  }
  return body;
}

function status(text, isError) {
  const el = $("#status");
  el.textContent = text;
  el.classList.toggle("error", !!isError);
}

function fmt(x) { return Number(x).toFixed(3); }

// -- the search request of the current view ------------------------------------------------------------------
// One of: {kind: "text", query}, {kind: "like", id}, {kind: "image", file}
let current = null;

function searchBody(offset) {
  const mode = $("#mode").value;
  const body = { top_k: PAGE, offset, tags: state.filters };
  if (current.kind === "text") {
    body.query = current.query;
    body.mode = mode;
    if (mode === "CLM") body.alpha = Number($("#alpha").value);
  } else if (current.kind === "like") {
    body.like = current.id;
  }
  return body;
}

async function run(offset) {
  if (!current) return;
  const started = performance.now();
  status("搜索中… searching");
  try {
    let result;
    if (current.kind === "image") {
      const form = new FormData();
      form.append("image", current.file, current.file.name || "query.png");
      form.append("top_k", String(PAGE));
      form.append("offset", String(offset));
      for (const t of state.filters) form.append("tags", t);
      result = await call("/v1/search/image", { method: "POST", body: form });
    } else {
      result = await call("/v1/search", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(searchBody(offset)),
      });
    }
    render(result, offset > 0);
    const what = current.kind === "text" ? `“${current.query}”` : current.kind === "like" ? `images like ${current.id}` : "the query image";
    const how = result.mode === "CLM" ? `CLM, α ${fmt(result.alpha)}` : result.mode;
    const filt = state.filters.length ? `, tags: ${state.filters.join(" ")}` : "";
    status(`${offset + result.hits.length} hits for ${what} (${how}${filt}; ${Math.round(performance.now() - started)} ms${result.cached ? ", cached" : ""})`);
  } catch (e) {
    if (!offset) render({ hits: [], next_offset: 0 }, false);
    status(String(e.message || e), true);
  }
}

function clearResults() {
  for (const url of state.objectUrls) URL.revokeObjectURL(url);
  state.objectUrls = [];
  $("#results").replaceChildren();
}

async function showThumb(img, path) {
  if (!apiKey()) { img.src = path; return; }
  try {  // <img> cannot send a key: fetch it, show a blob URL
    const response = await fetch(path, { headers: headers() });
    if (!response.ok) { img.dispatchEvent(new Event("error")); return; }
    const url = URL.createObjectURL(await response.blob());
    state.objectUrls.push(url);
    img.src = url;
  } catch (e) { /* no thumbnail */ }
}

function tagChip(tag, score) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "tag";
  b.dataset.tag = tag;
  b.textContent = tag;
  if (score !== undefined) {
    const p = document.createElement("span");
    p.className = "p";
    p.textContent = fmt(score);
    b.append(p);
  }
  b.title = "只看带此标签的图片 · filter by this tag";
  b.addEventListener("click", () => addFilter(tag));
  return b;
}

function render(result, append) {
  if (!append) clearResults();
  const grid = $("#results");
  const template = $("#card-template");
  for (const hit of result.hits) {
    const card = template.content.firstElementChild.cloneNode(true);
    card.dataset.id = hit.id;
    const img = card.querySelector("img");
    img.alt = hit.caption || hit.id;
    img.title = hit.id;
    img.addEventListener("error", () => card.querySelector(".thumb").classList.add("missing"));
    showThumb(img, hit.thumbnail + "&size=256");
    const cap = card.querySelector(".caption");
    cap.textContent = hit.caption || "(no English caption)";
    cap.classList.toggle("none", !hit.caption);
    const tags = card.querySelector(".tags");
    for (const t of hit.tags) tags.append(tagChip(t));
    const scores = card.querySelector(".scores");
    for (const [cls, label, value] of [["cl", "CL", hit.cl_score], ["cm", "CM", hit.cm_score], ["fused", "fused", hit.score]]) {
      const span = document.createElement("span");
      span.className = cls;
      span.textContent = `${label} ${fmt(value)}`;
      scores.append(span);
    }
    card.querySelector(".rank").textContent = `#${hit.rank}`;
    card.querySelector(".more-like").addEventListener("click", () => moreLike(hit.id));
    grid.append(card);
  }
  const more = $("#more-button");
  more.hidden = !result.next_offset;
  more.dataset.offset = String(result.next_offset || 0);
}

// -- filters, modes ------------------------------------------------------------------------------------------
function renderFilters() {
  const box = $("#filters");
  box.replaceChildren();
  for (const t of state.filters) {
    const chip = document.createElement("button");
    chip.type = "button";
    chip.className = "chip";
    chip.dataset.tag = t;
    chip.textContent = t;
    chip.title = "remove this filter";
    chip.addEventListener("click", () => { state.filters = state.filters.filter((x) => x !== t); renderFilters(); run(0); });
    box.append(chip);
  }
}

function addFilter(tag) {
  if (!state.filters.includes(tag)) state.filters.push(tag);
  renderFilters();
  if (!current) current = { kind: "text", query: tag };
  run(0);
}

function moreLike(id) {
  current = { kind: "like", id };
  $("#query-image").hidden = true;
  window.scrollTo(0, 0);
  run(0);
}

// -- search by an uploaded image: its results, tags and captions ------------------------------------------------
async function searchByFile(file) {
  if (!file) return;
  current = { kind: "image", file };
  const panel = $("#query-image");
  panel.hidden = false;
  const preview = $("#query-preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  const tagsBox = $("#query-tags");
  const captions = $("#query-captions");
  tagsBox.replaceChildren();
  captions.replaceChildren();
  run(0);
  const form = () => { const f = new FormData(); f.append("image", file, file.name || "query.png"); return f; };
  call("/v1/tag", { method: "POST", body: form() }).then((r) => {
    for (const t of r.tags) tagsBox.append(tagChip(t.tag, t.score));
    if (!r.tags.length) tagsBox.textContent = "(no tags)";
  }).catch((e) => { tagsBox.textContent = `tags: ${e.message}`; });
  const cf = form();
  cf.append("n_best", "3");
  call("/v1/caption", { method: "POST", body: cf }).then((r) => {
    for (const c of r.captions) {
      const li = document.createElement("li");
      li.textContent = c.text;
      captions.append(li);
    }
  }).catch((e) => { const li = document.createElement("li"); li.textContent = `captions: ${e.message}`; captions.append(li); });
}

function setup() {
  const key = localStorage.getItem("xlsearch-api-key");
  if (key) $("#api-key").value = key;
  $("#api-key").addEventListener("change", () => localStorage.setItem("xlsearch-api-key", apiKey()));
  const alpha = $("#alpha");
  const showAlpha = () => { $("#alpha-value").textContent = Number(alpha.value).toFixed(2); };
  alpha.addEventListener("input", showAlpha);
  alpha.addEventListener("change", () => { if (current && current.kind === "text") run(0); });
  $("#mode").addEventListener("change", () => {
    alpha.disabled = $("#mode").value !== "CLM";
    if (current && current.kind === "text") run(0);
  });
  $("#search-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = $("#query").value.trim();
    if (!q) return;
    current = { kind: "text", query: q };
    $("#query-image").hidden = true;
    run(0);
  });
  $("#more-button").addEventListener("click", () => run(Number($("#more-button").dataset.offset)));
  const drop = $("#drop");
  const file = $("#file");
  drop.addEventListener("click", () => file.click());
  drop.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") file.click(); });
  file.addEventListener("change", () => searchByFile(file.files[0]));
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    searchByFile(ev.dataTransfer.files[0]);
  });
  // the bundle's validated alpha as the slider's start
  call("/v1/stats").then((s) => { alpha.value = String(s.default_alpha); showAlpha(); }).catch(() => showAlpha());
  const q = new URLSearchParams(location.search).get("q");
  if (q) { $("#query").value = q; current = { kind: "text", query: q }; run(0); }
}

setup();
