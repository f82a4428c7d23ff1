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
  if ($("model-select").value) q.set("model", $("model-select").value);
  return q;
}

async function runRestore() {
  showError("restore", "");
  const blob = inputs.restore;
  if (!blob) { showError("restore", "choose an image first (or one of the examples)"); return; }
  busy("restore", true, loadingLabel("restoring…"));
  try {
    const r = await api(`/api/restore?${restoreQuery()}`, {
      method: "POST", body: blob, headers: { "X-LRPO-Demo": "1", "Content-Type": "application/octet-stream" } });
    showRestore(r, blob);
    busy("restore", false, `done in ${fmt(r.seconds, 1)} s`);
    refreshInfo();
  } catch (e) {
    busy("restore", false, "");
    showError("restore", e.message);
  }
}

function showRestore(r, blob) {
  if (beforeUrl) URL.revokeObjectURL(beforeUrl);
  beforeUrl = URL.createObjectURL(blob);
  $("restore-output").hidden = false;  // first: the viewer's size is taken from the page's width
  $("restore-before").src = beforeUrl;
  $("restore-result").src = r.image;
  $("restore-result").dataset.width = r.width;
  $("restore-result").dataset.height = r.height;
  $("restore-download").href = r.image;
  const stem = (blob.name || "photo").replace(/\.[^.]*$/, "").replace(/[^\w.-]+/g, "_");
  $("restore-download").setAttribute("download", `${stem}_restored.png`);
  $("restore-after-tag").textContent = `after · ${modelLabel(r.model)}`;
  const t = Object.entries(r.timings).map(([k, v]) => `${k} ${fmt(v, 2)} s`).join(", ");
  $("restore-summary").textContent = `model ${modelLabel(r.model)} · ${r.input_width} x ${r.input_height} -> ${r.width} x ${r.height}; `
    + `${r.restored_faces} of ${r.faces.length} face(s) restored; ${r.steps} steps, eta ${r.eta}, seed ${r.seed}; `
    + `${fmt(r.seconds, 2)} s (${t})`;
  setList($("restore-notes"), r.notes);
  // face boxes in the output's pixels (the boxes are the upload's; the output is upscaled)
  const k = r.width / r.input_width;
  viewer.faces = r.faces.map((f) => f.box.map((v) => v * k));
  viewer.setImage(r.width, r.height);
  const body = $("restore-faces").tBodies[0];
  body.replaceChildren(...r.faces.map((f, i) => {
    const img = (src, what) => {
      if (!src) return "–";
      const node = el("img", { src, class: "crop", alt: `face ${f.face} ${what}`, title: "zoom the comparison to this face" });
      node.addEventListener("load", () => node.classList.toggle("small", node.naturalWidth < 192));
      node.addEventListener("click", () => { viewer.zoomToFace(i); $("restore-compare").scrollIntoView({ block: "nearest" }); });
      return node;
    };
    return el("tr", {},
      el("td", { text: String(f.face) }), el("td", {}, img(f.crop, "before")), el("td", {}, img(f.restored_crop, "after")),
      el("td", { text: f.box.map((v) => v.toFixed(0)).join(", ") }), el("td", { text: fmt(f.score, 2) }),
      el("td", { text: fmt(f.size, 1) }), el("td", { text: f.restored ? "yes" : `no: ${f.reason}` }),
      el("td", { text: f.seed === null ? "–" : String(f.seed) }), el("td", { text: fmt(f.seam, 2) }));
  }));
  $("restore-faces").hidden = r.faces.length === 0;
}

// ---------------------------------------------------------------- the comparison: before left, zoom, pan
// Both images are drawn at the output's size W x H, moved and scaled by one transform
// (screen = t + s * image); the before layer is clipped to the left of the slider's line.
const viewer = {
  W: 0, H: 0, vw: 0, vh: 0, s: 1, tx: 0, ty: 0, fitScale: 1, faces: [],
  MAX_SCALE: 32,

  setImage(W, H) {
    this.W = W; this.H = H;
    const box = $("restore-compare");
    const avail = Math.max(320, Math.min(box.parentElement.clientWidth || 1280, 1400));
    const tall = Math.max(360, Math.round(window.innerHeight * 0.8));
    this.vh = Math.round(Math.min(tall, avail * H / W));
    this.vw = Math.round(Math.min(avail, this.vh * W / H));
    box.style.width = `${this.vw}px`;
    box.style.height = `${this.vh}px`;
    for (const id of ["restore-before", "restore-result"]) {
      $(id).style.width = `${W}px`;
      $(id).style.height = `${H}px`;
    }
    this.drawBoxes();
    this.fit();
    setSlider();
  },

  fit() {
    this.fitScale = Math.min(this.vw / this.W, this.vh / this.H);
    this.set(this.fitScale, (this.vw - this.W * this.fitScale) / 2, (this.vh - this.H * this.fitScale) / 2);
  },

  // zoom by `factor` keeping the image point under (cx, cy) in place
  zoomAt(factor, cx = this.vw / 2, cy = this.vh / 2) {
    const s = Math.min(Math.max(this.s * factor, this.fitScale), Math.max(this.MAX_SCALE, this.fitScale));
    this.set(s, cx - (cx - this.tx) * s / this.s, cy - (cy - this.ty) * s / this.s);
  },

  zoomToFace(i) {
    const [x, y, w, h] = this.faces[i];
    // the face (its box, with a margin of half its size around) fills the view
    const s = Math.min(Math.max(Math.min(this.vw / (w * 1.6), this.vh / (h * 1.6)), this.fitScale), Math.max(this.MAX_SCALE, this.fitScale));
    this.set(s, this.vw / 2 - (x + w / 2) * s, this.vh / 2 - (y + h / 2) * s);
  },

  set(s, tx, ty) {
    const clamp = (t, size, view) => (size * s <= view ? (view - size * s) / 2 : Math.min(0, Math.max(view - size * s, t)));
    this.s = s;
    this.tx = clamp(tx, this.W, this.vw);
    this.ty = clamp(ty, this.H, this.vh);
    const transform = `translate(${this.tx}px, ${this.ty}px) scale(${this.s})`;
    $("restore-before").style.transform = transform;
    $("restore-result").style.transform = transform;
    $("restore-compare").classList.toggle("pixelated", this.s >= 3);
    $("restore-compare").dataset.scale = this.s.toFixed(4);
    $("restore-zoom-level").textContent = Math.abs(this.s - this.fitScale) < 1e-6 ? "fit" : `${Math.round(this.s * 100)} %`;
    this.placeBoxes();
  },

  drawBoxes() {
    $("restore-boxes").replaceChildren(...this.faces.map((_, i) => {
      const b = el("button", { type: "button", class: "face-box", "aria-label": `zoom to face ${i}`, title: `face ${i}: zoom to it` });
      b.addEventListener("pointerdown", (e) => e.stopPropagation());  // a click, not the start of a drag
      b.addEventListener("click", () => this.zoomToFace(i));
      return b;
    }));
  },

  placeBoxes() {
    const buttons = $("restore-boxes").children;
    this.faces.forEach(([x, y, w, h], i) => {
      const b = buttons[i];
      if (!b) return;
      b.style.left = `${this.tx + x * this.s}px`;
      b.style.top = `${this.ty + y * this.s}px`;
      b.style.width = `${w * this.s}px`;
      b.style.height = `${h * this.s}px`;
    });
  },

  setup() {
    const box = $("restore-compare");
    box.addEventListener("wheel", (e) => {
      e.preventDefault();
      const r = box.getBoundingClientRect();
      this.zoomAt(Math.exp(-e.deltaY * 0.0015), e.clientX - r.left, e.clientY - r.top);
    }, { passive: false });
    let drag = null;
    box.addEventListener("pointerdown", (e) => {
      drag = { x: e.clientX, y: e.clientY, tx: this.tx, ty: this.ty };
      box.setPointerCapture(e.pointerId);
      box.classList.add("dragging");
    });
    box.addEventListener("pointermove", (e) => {
      if (drag) this.set(this.s, drag.tx + e.clientX - drag.x, drag.ty + e.clientY - drag.y);
    });
    const end = () => { drag = null; box.classList.remove("dragging"); };
    box.addEventListener("pointerup", end);
    box.addEventListener("pointercancel", end);
    box.addEventListener("dblclick", () => this.fit());
    window.addEventListener("resize", () => { if (this.W && !$("restore-output").hidden) this.setImage(this.W, this.H); });
    $("restore-zoom-in").addEventListener("click", () => this.zoomAt(1.5));
    $("restore-zoom-out").addEventListener("click", () => this.zoomAt(1 / 1.5));
    $("restore-zoom-fit").addEventListener("click", () => this.fit());
    $("restore-zoom-1").addEventListener("click", () => this.zoomAt(1 / this.s));
  },
};

function setSlider() {
  const pct = Number($("restore-slider").value);
  // the before image shows left of the line, the restored one right of it
  $("restore-before-layer").style.clipPath = `inset(0 ${100 - pct}% 0 0)`;
  $("restore-handle").style.left = `${pct}%`;
}

// ---------------------------------------------------------------- Group
function groupQuery() {
  const q = new URLSearchParams();
  for (const k of ["G", "seed", "steps", "eta"]) if ($(`group-${k}`).value !== "") q.set(k, $(`group-${k}`).value);
  q.set("degradation", $("group-degradation").value);
  if ($("group-caption").value.trim()) q.set("caption", $("group-caption").value.trim());
  if ($("model-select").value) q.set("model", $("model-select").value);
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
  busy("group", true, loadingLabel("sampling…"));
  try {
    const r = await api(`/api/group?${groupQuery()}`, {
      method: "POST", body: blob, headers: { "X-LRPO-Demo": "1", "Content-Type": "application/octet-stream" } });
    showGroup(r);
    busy("group", false, `done in ${fmt(r.seconds, 1)} s`);
    refreshInfo();
  } catch (e) {
    busy("group", false, "");
    showError("group", e.message);
  }
}

function card(title, src, extra = []) {
  const img = el("img", { src, class: "face", alt: title });
  img.addEventListener("load", () => img.classList.toggle("small", img.naturalWidth < 192));
  return el("div", { class: "card" }, el("div", { class: "title", text: title }), img, ...extra);
}

function showGroup(r) {
  const weights = Object.entries(r.weights).map(([k, w]) => `${k} ${fmt(w, 3)}`).join(" + ");
  const input = r.upload_is === "lq" ? "your upload as it is (already degraded, no GT)" : `degradation ${r.degradation} of your upload (the GT)`;
  $("group-summary").textContent = `model ${modelLabel(r.model)} · G = ${r.group_size}, ${r.steps} steps, eta ${r.eta}, `
    + `group seed ${r.seed}; LQ: ${input}; reward = ${weights}; std of the totals ${fmt(r.std, 4)}`;
  const notes = [...r.notes];
  if (r.degradation_params) notes.push("degradation drawn: " + Object.entries(r.degradation_params).map(([k, v]) => `${k} ${v}`).join(", "));
  setList($("group-notes"), notes);
  const cards = r.upload_is === "lq" ? [card("LQ (your upload, real)", r.lq)]
    : [card("LQ (degraded, group seed)", r.lq), card("GT (your upload)", r.gt)];
  const best = Math.max(...r.candidates.map((c) => c.total));
  const missing = Object.entries(r.unavailable_terms || {});
  for (const c of r.candidates) {
    const rows = r.terms.map((t) => el("tr", {}, el("td", { text: t }), el("td", { text: fmt(c.terms[t], 4) })));
    for (const [t, why] of missing) rows.push(el("tr", { class: "na", title: why }, el("td", { text: t }), el("td", { text: "n/a (no GT)" })));
    rows.push(el("tr", { class: "total" }, el("td", { text: "total" }), el("td", { class: "score-total", text: fmt(c.total, 4) })));
    const adv = el("div", { class: `advantage ${c.advantage > 0 ? "pos" : c.advantage < 0 ? "neg" : ""}`,
      text: `advantage ${c.advantage >= 0 ? "+" : ""}${fmt(c.advantage, 3)}` });
    const node = card(`candidate ${c.member}${c.total === best ? " ★" : ""}`, c.image,
      [el("div", { class: "model", text: modelLabel(r.model) }), el("div", { class: "seed", text: `seed ${c.seed}` }),
        el("table", { class: "terms" }, el("tbody", {}, ...rows)), adv]);
    node.classList.add("candidate");
    cards.push(node);
  }
  $("group-cards").replaceChildren(...cards);
  $("group-output").hidden = false;
}

function setupGroup() {
  $("group-G").value = INFO.defaults.group_size;
  const deg = $("group-degradation");
  const labels = { none: "already degraded (real LQ): no GT", run: "my face is the GT: the run's training degradation",
    mild: "my face is the GT: mild preset", spec: "my face is the GT: spec preset (the paper's ranges)" };
  deg.replaceChildren(...INFO.degradations.map((d) => el("option", { value: d, text: labels[d] || `my face is the GT: ${d} preset` })));
  deg.value = "none";
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
    + `(with an upload taken as already degraded, there is no GT: ${gtFree.join(", ") || "none"}; the others are shown as n/a). `
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

// ---------------------------------------------------------------- the model selector
// Names come from the server's list (/api/info); the page sends one back with each job, and the
// server loads it in its job worker. Labels are set as text, never as HTML.
function modelLabel(name) {
  const m = INFO && INFO.models.find((x) => x.name === name);
  return m ? m.label : String(name);
}

function loadingLabel(label) {
  const want = $("model-select").value;
  return want && INFO && want !== INFO.model ? `loading ${modelLabel(want)}, then ${label}` : label;
}

function setupModels() {
  const select = $("model-select");
  select.replaceChildren(...INFO.models.map((m) => {
    const o = el("option", { value: m.name, text: m.available ? m.label : `${m.label}: not available` });
    if (!m.available) o.disabled = true;
    return o;
  }));
  select.value = INFO.model;
  const missing = INFO.models.filter((m) => !m.available);
  setList($("model-missing-list"), missing.map((m) => `${m.label}: ${m.reason}`));
  $("model-missing").hidden = missing.length === 0;
  showModelInfo();
}

function showModelInfo() {
  const want = $("model-select").value;
  const pending = want && want !== INFO.model ? ` · ${modelLabel(want)} loads with the next job` : "";
  $("model-info").textContent = `loaded: ${modelLabel(INFO.model)} · ${INFO.resolution} px faces · ${INFO.device} · `
    + `restore: ${INFO.defaults.steps} steps, eta ${INFO.defaults.eta}${pending}`;
  const same = !pending;  // the defaults shown are the loaded model's
  $("restore-steps").placeholder = same ? INFO.defaults.steps : "model's";
  $("restore-eta").placeholder = same ? INFO.defaults.eta : "model's";
  $("group-steps").placeholder = same ? INFO.defaults.group_steps : "model's";
  $("group-eta").placeholder = same ? INFO.defaults.group_eta : "model's";
}

async function refreshInfo() {  // after a job: the loaded model and its defaults
  try {
    const info = await api("/api/info");
    INFO = { ...INFO, model: info.model, models: info.models, source: info.source, resolution: info.resolution, defaults: info.defaults };
    showModelInfo();
  } catch (e) { /* the next job says what is wrong */ }
}

// ---------------------------------------------------------------- start
async function start() {
  for (const b of document.querySelectorAll("nav [role=tab]")) b.addEventListener("click", () => selectTab(b));
  $("restore-file").addEventListener("change", (e) => e.target.files[0] && useInput("restore", e.target.files[0]));
  $("group-file").addEventListener("change", (e) => e.target.files[0] && useInput("group", e.target.files[0]));
  $("restore-example-photo").addEventListener("click", () => useExample("restore", "photo.png", false));
  $("restore-example-face").addEventListener("click", () => useExample("restore", "face.png", true));
  $("group-example-lq").addEventListener("click", () => { useExample("group", "face.png", true); $("group-degradation").value = "none"; });
  $("group-example-face").addEventListener("click", () => {
    useExample("group", "face-hq.png", true);  // a clean face: the GT, degraded by the run's degradation (else mild)
    $("group-degradation").value = INFO && INFO.degradations.includes("run") ? "run" : "mild";
  });
  $("model-select").addEventListener("change", showModelInfo);
  viewer.setup();
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
  $("restore-limits").textContent = `Uploads up to ${INFO.limits.text}; PNG, JPEG, WebP, BMP or TIFF.`;
  if (!INFO.detector) {
    $("restore-detector").textContent = INFO.detector_error;
    $("restore-detector").hidden = false;
    $("restore-aligned").checked = true;
  }
  setupGroup();
  setupModels();
  setupRun();
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", start);
