// The page at `/`: plain JavaScript over the JSON API, no build step.
// The query lives in the address (?q=...&kind=... or ?similar=ID&of=KIND&kind=...), so a search can
// be shared and reloaded; a photo cannot travel in an address, so a photo search keeps only the kind.
"use strict";

const $ = (id) => document.getElementById(id);
// turn: the number of the latest search; an answer to an earlier one arrives late and is dropped
const state = { health: null, photo: null, last: null, turn: 0 };

function kind() {
  return document.querySelector('input[name="kind"]:checked').value;
}

function setKind(value) {
  const radio = document.querySelector(`input[name="kind"][value="${CSS.escape(value || "")}"]`);
  (radio || document.querySelector('input[name="kind"][value=""]')).checked = true;
}

async function api(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (!response.ok) {
    throw new Error((body && body.error) || `the server answered ${response.status}`);
  }
  return body;
}

function showError(error) {
  $("error").textContent = error ? String(error.message || error) : "";
  $("error").hidden = !error;
}

function setStatus(text) {
  $("status").textContent = text;
}

function meta(hit) {
  return [hit.type, hit.color].filter(Boolean).join(" · ");
}

function card(hit) {
  const node = $("card").content.firstElementChild.cloneNode(true);
  const img = node.querySelector("img");
  img.src = hit.thumb;
  img.alt = hit.title || hit.id;
  node.querySelector(".kind-tag").textContent = hit.kind;
  const score = hit.rerank_score ?? hit.score;
  node.querySelector(".score").textContent = score.toFixed(3);
  node.querySelector(".score").title = hit.rerank_score != null ? "match probability" : "similarity";
  node.querySelector("h3").textContent = hit.title || hit.id;
  node.querySelector(".meta").textContent = meta(hit);
  node.dataset.id = hit.id;
  node.dataset.kind = hit.kind;
  node.querySelector(".card-button").addEventListener("click", () => similar(hit.id, hit.kind, true));
  return node;
}

function render(result, describe) {
  state.last = result;
  const hits = result.results;
  $("results").replaceChildren(...hits.map(card));
  setStatus(hits.length ? describe(hits.length) : "Nothing found.");
  $("download").hidden = false;
}

function address(params) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value) query.set(name, value);
  }
  const text = query.toString();
  return text ? `?${text}` : location.pathname;
}

function remember(params, push) {
  const next = address(params);
  if (push && next !== location.search) history.pushState(params, "", next);
  else history.replaceState(params, "", next);
}

function clearFocus() {
  $("focus").hidden = true;
  $("goes-with").hidden = true;
}

async function running(work) {
  const turn = ++state.turn;
  const current = () => turn === state.turn;
  showError(null);
  try {
    await work(current);
  } catch (error) {
    if (current()) showError(error);
  }
}

function searchText(text, push) {
  const q = text.trim();
  if (!q) {
    showError("Type what you are looking for.");
    return Promise.resolve();
  }
  $("q").value = q;
  remember({ q, kind: kind() }, push);
  clearFocus();
  return running(async (current) => {
    setStatus("Searching…");
    const params = new URLSearchParams({ q, k: "24" });
    if (kind()) params.set("kind", kind());
    const result = await api(`/api/search?${params}`);
    if (current()) render(result, (n) => `${n} results for “${q}”`);
  });
}

function similar(id, ofKind, push) {
  remember({ similar: id, of: ofKind, kind: kind() }, push);
  window.scrollTo({ top: 0, behavior: "smooth" });
  return running(async (current) => {
    setStatus("Searching…");
    const params = new URLSearchParams({ k: "24" });
    if (kind()) params.set("kind", kind());
    const result = await api(`/api/similar/${encodeURIComponent(id)}?${params}`);
    if (!current()) return;
    focus(result.item);
    render(result, (n) => `${n} things like “${result.item.title}”`);
    if (result.item.kind === "product" && state.health.kinds.room) {
      await goesWith(result.item, current);
    }
  });
}

function focus(item) {
  $("focus-image").src = item.thumb;
  $("focus-image").alt = item.title;
  $("focus-title").textContent = item.title;
  $("focus-meta").textContent = [item.kind, meta(item)].filter(Boolean).join(" · ");
  $("focus").hidden = false;
}

async function goesWith(item, current) {
  const result = await api(`/api/goes-with/${encodeURIComponent(item.id)}?k=12`);
  if (!current()) return;
  $("goes-with-strip").replaceChildren(...result.products.map(card));
  $("goes-with").hidden = result.products.length === 0;
}

function choosePhoto(file) {
  if (!file) return;
  state.photo = file;
  $("preview").src = URL.createObjectURL(file);
  $("drop-empty").hidden = true;
  $("photo-form").hidden = false;
  $("caption").hidden = true;
  if (state.health && state.health.caption) caption(file);
  searchPhoto();
}

function clearPhoto() {
  state.photo = null;
  $("photo").value = "";
  $("photo-form").hidden = true;
  $("drop-empty").hidden = false;
  $("caption").hidden = true;
}

function photoForm(fields) {
  const form = new FormData();
  form.append("image", state.photo, state.photo.name || "photo");
  for (const [name, value] of Object.entries(fields)) {
    if (value) form.append(name, value);
  }
  return form;
}

function searchPhoto() {
  const text = $("photo-q").value.trim();
  remember({ kind: kind() }, true);
  clearFocus();
  return running(async (current) => {
    setStatus("Searching by photo…");
    const result = await api("/api/search/image", { method: "POST", body: photoForm({ q: text, k: "24", kind: kind() }) });
    if (current()) render(result, (n) => `${n} results like your photo${text ? `, ${text}` : ""}`);
  });
}

async function caption(file) {
  try {
    const result = await api("/api/caption", { method: "POST", body: photoForm({}) });
    if (state.photo === file) {
      $("caption").textContent = result.caption || "(no caption)";
      $("caption").hidden = false;
    }
  } catch (error) {
    if (state.photo === file) showError(error);
  }
}

function download() {
  const blob = new Blob([JSON.stringify(state.last, null, 2)], { type: "application/json" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = "vislang-results.json";
  link.click();
  URL.revokeObjectURL(link.href);
}

function fromAddress(push) {
  const params = new URLSearchParams(location.search);
  setKind(params.get("kind"));
  if (params.get("similar")) return similar(params.get("similar"), params.get("of"), push);
  if (params.get("q")) return searchText(params.get("q"), push);
  return Promise.resolve();
}

function rerun() {
  if (state.photo && !$("photo-form").hidden && !new URLSearchParams(location.search).get("q")) return searchPhoto();
  const params = new URLSearchParams(location.search);
  if (params.get("similar")) return similar(params.get("similar"), params.get("of"), false);
  if ($("q").value.trim()) return searchText($("q").value, false);
  return Promise.resolve();
}

function describeCatalog(health) {
  const kinds = Object.entries(health.kinds).map(([name, count]) => `${count} ${name}s`);
  $("catalog").textContent = `${health.items} items: ${kinds.join(", ")}`;
}

async function start() {
  $("text-form").addEventListener("submit", (event) => {
    event.preventDefault();
    clearPhoto();
    searchText($("q").value, true);
  });
  document.querySelectorAll('input[name="kind"]').forEach((radio) => radio.addEventListener("change", rerun));
  $("pick").addEventListener("click", () => $("photo").click());
  $("photo").addEventListener("change", () => choosePhoto($("photo").files[0]));
  $("photo-form").addEventListener("submit", (event) => {
    event.preventDefault();
    searchPhoto();
  });
  $("clear-photo").addEventListener("click", clearPhoto);
  $("download").addEventListener("click", download);
  const drop = $("drop");
  drop.addEventListener("keydown", (event) => {
    if ((event.key === "Enter" || event.key === " ") && event.target === drop) $("photo").click();
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    choosePhoto(event.dataTransfer.files[0]);
  });
  window.addEventListener("popstate", () => fromAddress(false));

  try {
    state.health = await api("/healthz");
    describeCatalog(state.health);
  } catch (error) {
    showError(error);
    return;
  }
  await fromAddress(false);
}

start();
