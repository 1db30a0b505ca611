// sparse-steer playground: catalog, steered vs unsteered generation (streamed), strength sweep, vector details.
// Plain browser JavaScript, no build step. Every API call carries the key typed into the page, if any.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { catalog: [], picked: new Map(), controller: null };

// --- API -----------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, info, retryAfter) {
    super(info.message || `HTTP ${status}`);
    this.status = status;
    this.param = info.param || null;
    this.type = info.type || "";
    this.retryAfter = retryAfter;
  }
}

function headers(json) {
  const h = {};
  const key = $("api-key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

async function failure(res) {
  let info = {};
  try {
    info = (await res.json()).error || {};
  } catch (_) {
    info = { message: `${res.status} ${res.statusText}` };
  }
  return new ApiError(res.status, info, res.headers.get("Retry-After"));
}

async function getJson(path) {
  const res = await fetch(path, { headers: headers(false) });
  if (!res.ok) throw await failure(res);
  return res.json();
}

// POST /generate with "stream": true; calls onToken(text) per chunk (and onUnsteered(text) per chunk of the
// unsteered twin when `compare` is set), resolves with the `done` event.
async function streamGenerate(body, onToken, signal, onUnsteered = () => {}) {
  const res = await fetch("../generate", {
    method: "POST",
    headers: headers(true),
    body: JSON.stringify({ ...body, stream: true }),
    signal,
  });
  if (!res.ok) throw await failure(res);
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = parseEvent(buffer.slice(0, cut));
      buffer = buffer.slice(cut + 2);
      if (event.name === "token") onToken(event.data.text);
      else if (event.name === "unsteered_token") onUnsteered(event.data.text);
      else if (event.name === "done") return event.data;
      else if (event.name === "error") throw new ApiError(event.data.error.code, event.data.error);
    }
  }
  throw new ApiError(0, { message: "the stream ended before the server said it was done" });
}

function parseEvent(block) {
  let name = "message";
  let data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) name = line.slice(6).trim();
    else if (line.startsWith("data:")) data += line.slice(5).trim();
  }
  return { name, data: data ? JSON.parse(data) : {} };
}

// --- errors next to their fields ------------------------------------------------------------------------

const FIELD_ERRORS = {
  prompt: "prompt-error",
  messages: "prompt-error",
  max_new_tokens: "max-new-tokens-error",
  temperature: "temperature-error",
  seed: "seed-error",
  steer: "steer-error",
};

function clearErrors() {
  for (const el of document.querySelectorAll(".field-error")) el.textContent = "";
  for (const el of document.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
}

function describe(err) {
  if (err.status === 401) return `Not authorised (401): ${err.message}. Type the server's API key above.`;
  if (err.status === 429) {
    const wait = err.retryAfter ? ` Retry in ${err.retryAfter} s.` : "";
    return `The server is busy (429): ${err.message}.${wait}`;
  }
  if (err.status === 422) return `Rejected (422): ${err.message}`;
  return err.status ? `Error ${err.status}: ${err.message}` : err.message;
}

// Where an error goes: the API key, the field the server names in `param`, or the form as a whole.
function errorSlot(err, sweepName) {
  if (err.status === 401) return { slot: $("api-key-error"), input: $("api-key") };
  const param = err.param || "";
  if (param.startsWith("steer.")) {
    const name = param.slice("steer.".length);
    if (sweepName !== undefined && name === sweepName) {
      return { slot: $("sweep-error"), input: $("sweep-strengths") };
    }
    const picked = state.picked.get(name);
    if (picked) return { slot: picked.error, input: picked.number };
  }
  const root = param.split(".")[0];
  const id = FIELD_ERRORS[root];
  if (id) return { slot: $(id), input: $(id.replace(/-error$/, "")) };
  return { slot: $("form-error"), input: null };
}

function showError(err, sweepName) {
  if (err.name === "AbortError") return;
  const { slot, input } = errorSlot(err, sweepName);
  slot.textContent = describe(err);
  if (input) input.setAttribute("aria-invalid", "true");
}

// --- catalog --------------------------------------------------------------------------------------------

const fmt = (x) => (typeof x === "number" ? String(Number(x.toPrecision(4))) : String(x));
const namespaceOf = (name) => (name.includes("/") ? name.slice(0, name.lastIndexOf("/")) : "");

async function loadCatalog() {
  $("catalog-status").textContent = "Loading the catalog…";
  $("api-key-error").textContent = "";
  try {
    const data = await getJson("../vectors");
    state.catalog = data.vectors;
    const skipped = data.skipped.length ? ` (${data.skipped.length} file(s) skipped)` : "";
    $("catalog-status").textContent = `${data.vectors.length} vector(s)${skipped}.`;
  } catch (err) {
    state.catalog = [];
    $("catalog-status").textContent = "The catalog could not be loaded.";
    showError(err);
  }
  renderCatalog();
  renderSweepChoices();
}

function renderCatalog() {
  const query = $("catalog-search").value.trim().toLowerCase();
  const list = $("catalog");
  list.replaceChildren();
  const shown = window.PlaygroundCard.order(state.catalog).filter(
    (v) => !query || v.name.toLowerCase().includes(query) || namespaceOf(v.name).toLowerCase().startsWith(query),
  );
  for (const v of shown) {
    const item = $("catalog-item").content.firstElementChild.cloneNode(true);
    item.dataset.name = v.name;
    item.querySelector(".name").textContent = v.name;
    const box = item.querySelector("input");
    box.checked = state.picked.has(v.name);
    box.addEventListener("change", () => (box.checked ? pick(v) : unpick(v.name)));
    const [lo, hi] = v.strength_range;
    item.querySelector(".headline").textContent = window.PlaygroundCard.headline(v);
    item.querySelector(".meta").textContent =
      `${v.space} · layer ${v.layer} · ${v.nnz} non-zeros · safe strength ${fmt(lo)} to ${fmt(hi)}`;
    const chart = window.PlaygroundCard.chart(v);
    if (chart) item.querySelector(".sweep-card").append(chart);
    const details = item.querySelector(".details");
    details.setAttribute("aria-label", `Details of ${v.name}`);
    details.addEventListener("click", () => showDetail(v.name));
    list.append(item);
  }
  if (!shown.length && state.catalog.length) list.append(Object.assign(document.createElement("li"), { textContent: "No match." }));
}

// --- picked vectors and their strengths -----------------------------------------------------------------

function pick(v) {
  if (state.picked.has(v.name)) return;
  const [lo, hi] = v.strength_range;
  const item = $("selected-item").content.firstElementChild.cloneNode(true);
  item.dataset.name = v.name;
  item.querySelector(".name").textContent = v.name;
  const slider = item.querySelector(".slider");
  const number = item.querySelector(".number");
  const error = item.querySelector(".field-error");
  const start = Math.min(Math.max(v.default_strength, lo), hi);
  error.id = `strength-error-${state.picked.size}-${Date.now()}`;
  for (const input of [slider, number]) {
    Object.assign(input, { min: lo, max: hi, step: hi > lo ? (hi - lo) / 200 : "any", value: start });
    input.setAttribute("aria-describedby", error.id);
  }
  number.step = "any";
  slider.setAttribute("aria-label", `Strength of ${v.name} (${fmt(lo)} to ${fmt(hi)})`);
  number.setAttribute("aria-label", `Strength of ${v.name}, exact value`);
  slider.addEventListener("input", () => {
    number.value = slider.value;
    error.textContent = "";
    number.removeAttribute("aria-invalid");
  });
  number.addEventListener("input", () => {
    slider.value = number.value;
    error.textContent = "";
    number.removeAttribute("aria-invalid");
  });
  item.querySelector(".remove").setAttribute("aria-label", `Remove ${v.name}`);
  item.querySelector(".remove").addEventListener("click", () => unpick(v.name));
  $("selected").append(item);
  state.picked.set(v.name, { item, number, error });
  afterPickChange();
}

function unpick(name) {
  const picked = state.picked.get(name);
  if (!picked) return;
  picked.item.remove();
  state.picked.delete(name);
  afterPickChange();
}

function afterPickChange() {
  $("selected-empty").hidden = state.picked.size > 0;
  for (const box of document.querySelectorAll("#catalog .entry")) {
    box.querySelector("input").checked = state.picked.has(box.dataset.name);
  }
  renderSweepChoices();
}

function steerMap() {
  const steer = {};
  for (const [name, { number }] of state.picked) steer[name] = Number(number.value);
  return steer;
}

// --- the request ----------------------------------------------------------------------------------------

function addMessage(role = "user", content = "") {
  const row = $("chat-item").content.firstElementChild.cloneNode(true);
  const n = $("chat-messages").children.length + 1;
  row.querySelector(".role").value = role;
  row.querySelector(".role").setAttribute("aria-label", `Role of message ${n}`);
  row.querySelector(".content").value = content;
  row.querySelector(".content").setAttribute("aria-label", `Content of message ${n}`);
  row.querySelector(".remove").setAttribute("aria-label", `Remove message ${n}`);
  row.querySelector(".remove").addEventListener("click", () => row.remove());
  $("chat-messages").append(row);
}

function baseBody() {
  const body = {};
  if (document.querySelector("input[name=input-mode]:checked").value === "chat") {
    body.messages = [...$("chat-messages").children].map((row) => ({
      role: row.querySelector(".role").value,
      content: row.querySelector(".content").value,
    }));
  } else {
    body.prompt = $("prompt").value;
  }
  const number = (id) => ($(id).value.trim() === "" ? undefined : Number($(id).value));
  body.max_new_tokens = number("max-new-tokens");
  body.temperature = number("temperature") ?? 0;
  body.seed = number("seed");
  return body;
}

function setBusy(busy) {
  $("generate").disabled = busy;
  $("stop").disabled = !busy;
  for (const id of ["steered-text", "unsteered-text", "sweep-out"]) $(id).setAttribute("aria-busy", String(busy));
}

async function runCompare(signal) {
  const steered = $("steered-text");
  const unsteered = $("unsteered-text");
  steered.textContent = "";
  unsteered.textContent = "";
  $("steer-summary").textContent = "";
  $("run-status").textContent = "Generating…";
  const done = await streamGenerate(
    { ...baseBody(), steer: steerMap(), compare: true },
    (text) => (steered.textContent += text),
    signal,
    (text) => (unsteered.textContent += text),
  );
  unsteered.textContent = done.unsteered_text ?? "";
  $("steer-summary").textContent = done.steer.length
    ? `(${done.steer.map((s) => `${s.name} × ${fmt(s.strength)}${s.clamped ? " clamped" : ""}`).join(", ")})`
    : "(no vector)";
  $("run-status").textContent =
    `Done: ${done.usage.completion_tokens} tokens, finish reason ${done.finish_reason}.`;
}

function parseStrengths() {
  const parts = $("sweep-strengths").value.split(",").map((s) => s.trim()).filter(Boolean);
  const values = parts.map(Number);
  if (!values.length || values.some((x) => !Number.isFinite(x))) {
    throw new ApiError(422, { message: "strengths must be numbers separated by commas", param: "sweep" });
  }
  return values;
}

async function runSweep(signal) {
  const name = $("sweep-vector").value;
  const out = $("sweep-out");
  out.replaceChildren();
  if (!name) {
    $("sweep-error").textContent = "Pick a vector to sweep.";
    return;
  }
  let strengths;
  try {
    strengths = parseStrengths();
  } catch (err) {
    $("sweep-error").textContent = err.message;
    $("sweep-strengths").setAttribute("aria-invalid", "true");
    return;
  }
  $("run-status").textContent = `Sweeping ${name} over ${strengths.length} strengths…`;
  const body = baseBody();
  const columns = strengths.map((s) => {
    const col = document.createElement("article");
    col.className = "out";
    col.innerHTML = "<h3></h3><pre class='text'></pre>";
    col.querySelector("h3").textContent = `${name} × ${fmt(s)}`;
    out.append(col);
    return col.querySelector("pre");
  });
  const results = await Promise.allSettled(
    strengths.map((s, i) =>
      streamGenerate({ ...body, steer: { [name]: s } }, (text) => (columns[i].textContent += text), signal),
    ),
  );
  const failed = results.filter((r) => r.status === "rejected");
  results.forEach((r, i) => {
    if (r.status === "rejected") columns[i].textContent = `(${describe(r.reason)})`;
  });
  if (failed.length) failed.forEach((r) => showError(r.reason, name));
  $("run-status").textContent = `Sweep done: ${results.length - failed.length} of ${results.length} succeeded.`;
}

async function generate(event) {
  event.preventDefault();
  clearErrors();
  const sweep = document.querySelector("input[name=run-mode]:checked").value === "sweep";
  state.controller = new AbortController();
  setBusy(true);
  try {
    await (sweep ? runSweep(state.controller.signal) : runCompare(state.controller.signal));
  } catch (err) {
    $("run-status").textContent = err.name === "AbortError" ? "Stopped." : "Failed: see the message by the field.";
    showError(err, sweep ? $("sweep-vector").value : undefined);
  } finally {
    setBusy(false);
    state.controller = null;
  }
}

// --- sweep settings -------------------------------------------------------------------------------------

function renderSweepChoices() {
  const select = $("sweep-vector");
  const current = select.value;
  const names = state.picked.size ? [...state.picked.keys()] : state.catalog.map((v) => v.name);
  select.replaceChildren(...names.map((n) => new Option(n, n)));
  if (names.includes(current)) select.value = current;
  if (select.value !== current) defaultStrengths();
}

function defaultStrengths() {
  const v = state.catalog.find((x) => x.name === $("sweep-vector").value);
  if (!v) return;
  const [lo, hi] = v.strength_range;
  const values = [0, 1, 2, 3, 4].map((i) => Number((lo + ((hi - lo) * i) / 4).toPrecision(3)));
  $("sweep-strengths").value = [...new Set(values)].join(", ");
}

// --- vector detail --------------------------------------------------------------------------------------

async function showDetail(name) {
  const panel = $("detail");
  panel.hidden = false;
  $("detail-title").textContent = name;
  $("detail-body").replaceChildren();
  $("detail-status").textContent = "Loading…";
  try {
    const path = name.split("/").map(encodeURIComponent).join("/");
    const detail = await getJson(`../vectors/${path}`);
    $("detail-status").textContent = "";
    $("detail-body").replaceChildren(...window.PlaygroundDetail.render(detail));
  } catch (err) {
    $("detail-status").textContent = describe(err);
  }
  panel.focus();
}

// --- wiring ---------------------------------------------------------------------------------------------

function init() {
  const key = sessionStorage.getItem("steer-api-key");
  if (key) $("api-key").value = key;
  $("api-key").addEventListener("change", () => {
    sessionStorage.setItem("steer-api-key", $("api-key").value.trim());
    loadCatalog();
  });
  $("catalog-search").addEventListener("input", renderCatalog);
  for (const radio of document.querySelectorAll("input[name=input-mode]")) {
    radio.addEventListener("change", () => {
      const chat = radio.value === "chat" && radio.checked;
      $("chat-box").hidden = !chat;
      $("prompt-box").hidden = chat;
      if (chat && !$("chat-messages").children.length) addMessage("user", $("prompt").value);
    });
  }
  for (const radio of document.querySelectorAll("input[name=run-mode]")) {
    radio.addEventListener("change", () => {
      const sweep = document.querySelector("input[name=run-mode]:checked").value === "sweep";
      $("sweep-box").hidden = !sweep;
      $("sweep-out").hidden = !sweep;
      $("compare-out").hidden = sweep;
    });
  }
  $("sweep-vector").addEventListener("change", defaultStrengths);
  $("add-message").addEventListener("click", () => addMessage());
  $("request-form").addEventListener("submit", generate);
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("detail-close").addEventListener("click", () => ($("detail").hidden = true));
  loadCatalog();
}

document.addEventListener("DOMContentLoaded", init);
