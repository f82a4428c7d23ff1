// lrpo demo page: three tabs talking to the JSON API of lrpo.demo.app. No external resources.
"use strict";

const $ = (id) => document.getElementById(id);
let INFO = null;
const inputs = { restore: null, group: null };  // the Blob each tab will send
let beforeUrl = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {
    throw new Error("the demo server did not answer (is it still running?)");
  }
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) throw new Error((body && body.error) || `the server answered ${response.status}`);
  return body;
}

function showError(tab, message) {
  const box = $(`${tab}-error`);
  box.textContent = message || "";
  box.hidden = !message;
}

function busy(tab, on, label) {
  const button = $(`${tab}-run`);
  const status = $(`${tab}-status`);
  if (button) button.disabled = on;
  clearInterval(busy.timers[tab]);
  if (!on) { status.textContent = label || ""; return; }
  const t0 = performance.now();
  const tick = () => { status.textContent = `${label} ${((performance.now() - t0) / 1000).toFixed(0)} s`; };
  tick();
  busy.timers[tab] = setInterval(tick, 500);
}
busy.timers = {};

function fmt(x, digits = 3) {
  return (x === null || x === undefined || !Number.isFinite(x)) ? "–" : Number(x).toFixed(digits);
}

function setList(ul, items) {
  ul.replaceChildren(...items.map((t) => el("li", { text: t })));
}

// ---------------------------------------------------------------- tabs
function selectTab(button) {
  for (const b of document.querySelectorAll("nav [role=tab]")) {
    const on = b === button;
    b.setAttribute("aria-selected", on ? "true" : "false");
    $(b.dataset.panel).hidden = !on;
  }
  if (button.id === "tab-run" && INFO && INFO.runs && !loadRun.loaded) loadRun();
}

// ---------------------------------------------------------------- inputs
function checkSize(tab, blob) {
  if (INFO && blob.size > INFO.limits.max_bytes) {
    showError(tab, `the file is ${(blob.size / 2 ** 20).toFixed(1)} MB; the demo accepts files up to ${(INFO.limits.max_bytes / 2 ** 20).toFixed(0)} MB`);
    return false;
  }
  return true;
}

function useInput(tab, blob) {
  showError(tab, "");
  if (!checkSize(tab, blob)) { inputs[tab] = null; return; }
  inputs[tab] = blob;
  $(`${tab}-status`).textContent = `ready: ${blob.name || "example"} (${(blob.size / 1024).toFixed(0)} kB)`;
}

async function useExample(tab, name, aligned) {
  try {
    const response = await fetch(`/api/example/${name}`);
    if (!response.ok) throw new Error(`example ${name} could not be loaded`);
    const blob = await response.blob();
    blob.name = `astronaut ${name}`;
    useInput(tab, blob);
    if (tab === "restore") $("restore-aligned").checked = aligned;
  } catch (e) { showError(tab, e.message); }
}

// ---------------------------------------------------------------- Restore
function restoreQuery() {
  const q = new URLSearchParams();
  q.set("aligned", $("restore-aligned").checked ? "1" : "0");
  q.set("only_center_face", $("restore-center").checked ? "1" : "0");
  q.set("upscale", $("restore-upscale").value);
  for (const k of ["steps", "eta", "seed"]) if ($(`restore-${k}`).value !== "") q.set(k, $(`restore-${k}`).value);
  return q;
}

async function runRestore() {
  showError("restore", "");
  const blob = inputs.restore;
  if (!blob) { showError("restore", "choose an image first (or one of the examples)"); return; }
  busy("restore", true, "restoring…");
  try {
    const r = await api(`/api/restore?${restoreQuery()}`, {
      method: "POST", body: blob, headers: { "X-LRPO-Demo": "1", "Content-Type": "application/octet-stream" } });
    showRestore(r, blob);
    busy("restore", false, `done in ${fmt(r.seconds, 1)} s`);
  } catch (e) {
    busy("restore", false, "");
    showError("restore", e.message);
  }
}

function showRestore(r, blob) {
  if (beforeUrl) URL.revokeObjectURL(beforeUrl);
  beforeUrl = URL.createObjectURL(blob);
  const width = Math.min(r.width, 720);
  const height = Math.round(width * r.height / r.width);
  for (const id of ["restore-before", "restore-result"]) {
    const img = $(id);
    img.style.width = `${width}px`;
    img.style.height = `${height}px`;
  }
  $("restore-compare").style.width = `${width}px`;
  $("restore-compare").style.height = `${height}px`;
  $("restore-before").src = beforeUrl;
  $("restore-result").src = r.image;
  $("restore-result").dataset.width = r.width;
  $("restore-result").dataset.height = r.height;
  setSlider();
  $("restore-download").href = r.image;
  const stem = (blob.name || "photo").replace(/\.[^.]*$/, "").replace(/[^\w.-]+/g, "_");
  $("restore-download").setAttribute("download", `${stem}_restored.png`);
  const t = Object.entries(r.timings).map(([k, v]) => `${k} ${fmt(v, 2)} s`).join(", ");
  $("restore-summary").textContent = `${r.input_width} x ${r.input_height} -> ${r.width} x ${r.height}; `
    + `${r.restored_faces} of ${r.faces.length} face(s) restored; ${r.steps} steps, eta ${r.eta}, seed ${r.seed}; `
    + `${fmt(r.seconds, 2)} s (${t})`;
  setList($("restore-notes"), r.notes);
  const body = $("restore-faces").tBodies[0];
  body.replaceChildren(...r.faces.map((f) => {
    const img = (src) => (src ? el("img", { src, class: "thumb", alt: "" }) : "–");
    return el("tr", {},
      el("td", { text: String(f.face) }), el("td", {}, img(f.crop)), el("td", {}, img(f.restored_crop)),
      el("td", { text: f.box.map((v) => v.toFixed(0)).join(", ") }), el("td", { text: fmt(f.score, 2) }),
      el("td", { text: fmt(f.size, 1) }), el("td", { text: f.restored ? "yes" : `no: ${f.reason}` }),
      el("td", { text: f.seed === null ? "–" : String(f.seed) }), el("td", { text: fmt(f.seam, 2) }));
  }));
  $("restore-faces").hidden = r.faces.length === 0;
  $("restore-output").hidden = false;
}

function setSlider() {
  const pct = Number($("restore-slider").value);
  $("restore-after-wrap").style.width = `${pct}%`;
  $("restore-handle").style.left = `${pct}%`;
}

// ---------------------------------------------------------------- Group
function groupQuery() {
  const q = new URLSearchParams();
  for (const k of ["G", "seed", "steps", "eta"]) if ($(`group-${k}`).value !== "") q.set(k, $(`group-${k}`).value);
  q.set("degradation", $("group-degradation").value);
  if ($("group-caption").value.trim()) q.set("caption", $("group-caption").value.trim());
  if ($("group-mode-weights").checked) {
    const parts = [];
    for (const input of document.querySelectorAll("#group-weights input")) {
      if (input.value !== "" && Number(input.value) > 0) parts.push(`${input.dataset.term}:${input.value}`);
    }
    q.set("weights", parts.join(","));
  } else {
    q.set("preset", $("group-preset").value);
  }
  return q;
}

async function runGroup() {
  showError("group", "");
  const blob = inputs.group;
  if (!blob) { showError("group", "choose a face first (or the example)"); return; }
  busy("group", true, "sampling…");
  try {
    const r = await api(`/api/group?${groupQuery()}`, {
      method: "POST", body: blob, headers: { "X-LRPO-Demo": "1", "Content-Type": "application/octet-stream" } });
    showGroup(r);
    busy("group", false, `done in ${fmt(r.seconds, 1)} s`);
  } catch (e) {
    busy("group", false, "");
    showError("group", e.message);
  }
}

function card(title, src, extra = []) {
  return el("div", { class: "card" }, el("div", { class: "title", text: title }),
    el("img", { src, class: "face", alt: title }), ...extra);
}

function showGroup(r) {
  const weights = Object.entries(r.weights).map(([k, w]) => `${k} ${fmt(w, 3)}`).join(" + ");
  $("group-summary").textContent = `G = ${r.group_size}, ${r.steps} steps, eta ${r.eta}, group seed ${r.seed}, `
    + `degradation ${r.degradation}; reward = ${weights}; std of the totals ${fmt(r.std, 4)}`;
  const notes = [...r.notes];
  if (r.degradation_params) notes.push("degradation drawn: " + Object.entries(r.degradation_params).map(([k, v]) => `${k} ${v}`).join(", "));
  setList($("group-notes"), notes);
  const cards = [card("LQ input", r.lq)];
  if (r.gt) cards.push(card("GT (your face)", r.gt));
  const best = Math.max(...r.candidates.map((c) => c.total));
  for (const c of r.candidates) {
    const rows = r.terms.map((t) => el("tr", {}, el("td", { text: t }), el("td", { text: fmt(c.terms[t], 4) })));
    rows.push(el("tr", { class: "total" }, el("td", { text: "total" }), el("td", { class: "score-total", text: fmt(c.total, 4) })));
    const adv = el("div", { class: `advantage ${c.advantage > 0 ? "pos" : c.advantage < 0 ? "neg" : ""}`,
      text: `advantage ${c.advantage >= 0 ? "+" : ""}${fmt(c.advantage, 3)}` });
    const node = card(`candidate ${c.member}${c.total === best ? " ★" : ""}`, c.image,
      [el("div", { class: "seed", text: `seed ${c.seed}` }), el("table", { class: "terms" }, el("tbody", {}, ...rows)), adv]);
    node.classList.add("candidate");
    cards.push(node);
  }
  $("group-cards").replaceChildren(...cards);
  $("group-output").hidden = false;
}

function setupGroup() {
  $("group-G").value = INFO.defaults.group_size;
  $("group-steps").placeholder = INFO.defaults.group_steps;
  $("group-eta").placeholder = INFO.defaults.group_eta;
  const deg = $("group-degradation");
  const labels = { run: "the run's training degradation", none: "none: my face is already degraded (no GT)",
    mild: "mild preset", spec: "spec preset (the paper's ranges)" };
  deg.replaceChildren(...INFO.degradations.map((d) => el("option", { value: d, text: labels[d] || d })));
  const presets = $("group-preset");
  presets.replaceChildren(...Object.entries(INFO.presets).map(([name, p]) => {
    const text = `${name}: ${Object.entries(p.terms).map(([k, w]) => `${k} ${w}`).join(", ")}${p.available ? "" : " (needs model files not found here)"}`;
    const o = el("option", { value: name, text });
    if (!p.available) o.disabled = true;
    return o;
  }));
  if (INFO.default_preset) presets.value = INFO.default_preset;
  const weights = $("group-weights");
  const defaultTerms = INFO.default_preset ? INFO.presets[INFO.default_preset].terms : {};
  weights.replaceChildren(...INFO.available_terms.map((t) => el("label", { class: "weight" }, `${t} `,
    el("input", { type: "number", min: "0", step: "0.05", "data-term": t, id: `group-w-${t}`, value: String(defaultTerms[t] || 0) }))));
  for (const input of weights.querySelectorAll("input")) input.addEventListener("input", () => { $("group-mode-weights").checked = true; });
  const missing = Object.entries(INFO.terms).filter(([, t]) => !t.available);
  const gtFree = INFO.available_terms.filter((t) => !INFO.terms[t].needs_gt);
  $("group-terms-note").textContent = `Terms available here: ${INFO.available_terms.join(", ") || "none"} `
    + `(without the GT, i.e. degradation none: ${gtFree.join(", ") || "none"}). `
    + (missing.length ? `Not available (their model files are not found here): ${missing.map(([k, t]) => `${k} (${t.error.split("; looked in")[0]})`).join("; ")}.` : "");
}

// ---------------------------------------------------------------- Run
async function loadRun() {
  loadRun.loaded = true;
  showError("run", "");
  const name = $("run-select").value;
  if (!name) return;
  $("run-status").textContent = "reading…";
  try {
    const r = await api(`/api/run?name=${encodeURIComponent(name)}`);
    $("run-summary").textContent = `${INFO.runs_root}/${r.name}: ${r.records} log record(s)`
      + (r.last !== undefined && r.last !== null ? `, last ${r.x_key} ${r.last}` : "") + `, ${r.grids.length} sample grid(s)`;
    const events = r.guard_events.map((e) => `epoch ${e.epoch}: ${e.text}`);
    setList($("run-events"), [...r.notes, ...(events.length ? events : ["no guard violations logged"])]);
    $("run-curves").replaceChildren(...r.curves.map((c) => el("div", { class: "curve" },
      el("img", { src: c.image, alt: c.title }))));  // the plot carries its title
    const select = $("run-grid-select");
    select.replaceChildren(...r.grids.map((g) => el("option", { value: g, text: g.replace(/^epoch_0*(\d)/, "$1").replace(".png", "") })));
    select.value = r.grids.length ? r.grids[r.grids.length - 1] : "";
    showGrid();
    $("run-output").hidden = false;
    $("run-status").textContent = "";
  } catch (e) {
    $("run-status").textContent = "";
    showError("run", e.message);
  }
}

function showGrid() {
  const file = $("run-grid-select").value;
  const img = $("run-grid");
  img.hidden = !file;
  // grids of small faces are a few hundred pixels wide: show them twice as large
  img.onload = () => { img.style.width = img.naturalWidth < 640 ? `${img.naturalWidth * 2}px` : ""; };
  if (file) img.src = `/api/run/grid?name=${encodeURIComponent($("run-select").value)}&file=${encodeURIComponent(file)}`;
}

function setupRun() {
  const select = $("run-select");
  if (!INFO.runs) {
    showError("run", "no run folder was given: start the demo with --runs DIR (a training out_dir, or a folder of them)");
    return;
  }
  if (!INFO.runs.length) {
    showError("run", `no run folder (log.jsonl or samples/) under ${INFO.runs_root}`);
    return;
  }
  select.replaceChildren(...INFO.runs.map((r) => el("option", { value: r, text: r === "." ? INFO.runs_root : r })));
}

// ---------------------------------------------------------------- start
async function start() {
  for (const b of document.querySelectorAll("nav [role=tab]")) b.addEventListener("click", () => selectTab(b));
  $("restore-file").addEventListener("change", (e) => e.target.files[0] && useInput("restore", e.target.files[0]));
  $("group-file").addEventListener("change", (e) => e.target.files[0] && useInput("group", e.target.files[0]));
  $("restore-example-photo").addEventListener("click", () => useExample("restore", "photo.png", false));
  $("restore-example-face").addEventListener("click", () => useExample("restore", "face.png", true));
  $("group-example-face").addEventListener("click", () => useExample("group", "face-hq.png", true));
  $("restore-run").addEventListener("click", runRestore);
  $("group-run").addEventListener("click", runGroup);
  $("restore-slider").addEventListener("input", setSlider);
  $("run-select").addEventListener("change", loadRun);
  $("run-refresh").addEventListener("click", loadRun);
  $("run-grid-select").addEventListener("change", showGrid);
  try {
    INFO = await api("/api/info");
  } catch (e) {
    $("model-info").textContent = `could not read the demo's settings: ${e.message}`;
    return;
  }
  $("model-info").textContent = `${INFO.source} · ${INFO.resolution} px faces · ${INFO.device} · `
    + `restore: ${INFO.defaults.steps} steps, eta ${INFO.defaults.eta}`;
  $("restore-limits").textContent = `Uploads up to ${INFO.limits.text}; PNG, JPEG, WebP, BMP or TIFF.`;
  $("restore-steps").placeholder = INFO.defaults.steps;
  $("restore-eta").placeholder = INFO.defaults.eta;
  if (!INFO.detector) {
    $("restore-detector").textContent = INFO.detector_error;
    $("restore-detector").hidden = false;
    $("restore-aligned").checked = true;
  }
  setupGroup();
  setupRun();
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", start);
