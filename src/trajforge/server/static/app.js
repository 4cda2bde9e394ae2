// trajforge dashboard: the live parts. Pages are rendered by the server (escaped there); this file
// only calls the API and updates text with textContent — never innerHTML with data.
"use strict";

const TOKEN_KEY = "trajforge_token";

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function flash(message, isError) {
  const el = document.getElementById("flash");
  if (!el) return;
  el.textContent = message;
  el.className = isError ? "flash error" : "flash";
  el.hidden = false;
}

async function api(method, path, body) {
  const headers = {};
  if (token()) headers["Authorization"] = "Bearer " + token();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  if (resp.status === 401) {
    location.href = "/login?next=" + encodeURIComponent(location.pathname);
    throw new Error("the API token is required");
  }
  if (!resp.ok) {
    let message = resp.status + " " + resp.statusText;
    try {
      const err = (await resp.json()).error;
      message = err.message + (err.field ? " (" + err.field + ")" : "");
    } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return resp;
}

function formBody(form) {
  // Only filled fields; numbers as numbers, checkboxes as booleans; fields of other backends
  // (inside a hidden data-only label) left out.
  const body = {};
  for (const el of form.elements) {
    if (!el.name || el.disabled) continue;
    const only = el.closest("[data-only]");
    if (only && only.hidden) continue;
    if (el.type === "checkbox") { body[el.name] = el.checked; continue; }
    const v = el.value.trim();
    if (v === "") continue;
    body[el.name] = el.type === "number" || el.dataset.number !== undefined ? Number(v) : v;
  }
  return body;
}

function onSubmit(selector, handler) {
  for (const form of document.querySelectorAll(selector)) {
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const button = form.querySelector("button[type=submit]");
      if (button) button.disabled = true;
      try {
        await handler(form);
      } catch (e) {
        flash(e.message, true);
      } finally {
        if (button) button.disabled = false;
      }
    });
  }
}

function onClick(selector, handler) {
  for (const el of document.querySelectorAll(selector)) {
    el.addEventListener("click", async () => {
      el.disabled = true;
      try {
        await handler(el);
      } catch (e) {
        flash(e.message, true);
      } finally {
        el.disabled = false;
      }
    });
  }
}

// --- login -----------------------------------------------------------------------------------------

onSubmit("#login-form", async (form) => {
  const value = form.querySelector("#token").value;
  const resp = await fetch("/session", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token: value }),
    credentials: "same-origin",
  });
  if (!resp.ok) throw new Error("that is not this server's token");
  sessionStorage.setItem(TOKEN_KEY, value);
  location.href = safeNext(form.dataset.next);
});

// Where to go after signing in: a path on this site only. "/\evil.example" and "/\t/evil.example"
// are "//evil.example" to the URL parser, so backslashes and control characters are refused as well
// as "//" and schemes, and the result must still be on this origin once parsed.
function safeNext(next) {
  const fallback = "/trajectories";
  if (!next || next[0] !== "/" || next[1] === "/" || /[\\\u0000-\u001f\u007f]/.test(next)) return fallback;
  const url = new URL(next, location.origin);
  if (url.origin !== location.origin) return fallback;
  return url.pathname + url.search + url.hash;
}

if (document.body.dataset.tokenRequired === "yes" && !token() && location.pathname !== "/login") {
  // The cookie lets this page render; state-changing calls need the token itself.
  location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
}

// --- trajectories ----------------------------------------------------------------------------------

onClick("button.export", async (button) => {
  // The server renders the page's filter as the export body takes it (data-filter, JSON).
  const body = { ...JSON.parse(button.dataset.filter || "{}"), format: button.dataset.format, includePrompts: true };
  const resp = await api("POST", "/api/trajectories/export", body);
  const blob = await resp.blob();
  const disposition = resp.headers.get("Content-Disposition") || "";
  const match = /filename="([^"]+)"/.exec(disposition);
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = match ? match[1] : "trajectories." + body.format;
  document.body.appendChild(a);
  a.click();
  a.remove();
  flash("Exported " + body.format.toUpperCase() + " (privacy-filtered).");
});

onClick("#clear-all", async () => {
  if (!confirm("Delete ALL trajectories from this store? This cannot be undone.")) return;
  const resp = await api("DELETE", "/api/trajectories", { all: true });
  const n = (await resp.json()).deleted;
  flash("Deleted " + n + " trajectories.");
  setTimeout(() => location.reload(), 600);
});

// --- fine-tuning -----------------------------------------------------------------------------------

onSubmit("#build-form", async (form) => {
  const resp = await api("POST", "/api/training/datasets/build", formBody(form));
  const ds = (await resp.json()).dataset;
  flash("Built " + ds.id);
  setTimeout(() => location.reload(), 400);
});

onSubmit("#job-form", async (form) => {
  const body = formBody(form);
  // Each kind of job takes its own options (the API refuses the other kind's).
  if (body.backend !== "native") { delete body.optimizer; delete body.metric; delete body.baseUrl; }
  else { delete body.batchSize; delete body.learningRate; }
  const resp = await api("POST", "/api/training/jobs", body);
  const job = (await resp.json()).job;
  flash("Queued " + job.id);
  setTimeout(() => location.reload(), 300);
});

// The remote backends' fields show only with their backend; vast fills the offer picker from
// /api/training/vast/offers (the GPU and $/h filters narrow it).
const backendSelect = document.getElementById("backend");
const offerPicker = document.getElementById("offer-picker");

// A filter's change event also fires on blur, so loads overlap and repeat: only the latest load
// fills the picker, and it keeps the user's pick when that offer still matches.
let offersLoad = 0;
async function loadOffers() {
  const form = document.getElementById("job-form");
  const params = new URLSearchParams();
  for (const name of ["gpu", "maxDph"]) {
    const v = form.elements[name].value.trim();
    if (v) params.set(name, v);
  }
  const mine = ++offersLoad;
  const resp = await api("GET", "/api/training/vast/offers?" + params.toString());
  const offers = (await resp.json()).offers;
  if (mine !== offersLoad) return;
  const picked = offerPicker.value;
  while (offerPicker.options.length > 1) offerPicker.remove(1);
  for (const o of offers) {
    const opt = document.createElement("option");
    opt.value = String(o.id);
    opt.textContent = o.numGpus + "x " + o.gpuName + " · " + o.gpuRamGb + " GB · $" + o.dphTotal.toFixed(3) + "/h" +
      (o.geolocation ? " · " + o.geolocation : "");
    offerPicker.appendChild(opt);
  }
  offerPicker.value = offers.some((o) => String(o.id) === picked) ? picked : "";
  offerPicker.options[0].textContent = offers.length ? "cheapest matching" : "no offer matches";
}

function showBackendFields() {
  const backend = backendSelect.value;
  for (const el of document.querySelectorAll("#job-form [data-only]")) {
    el.hidden = !el.dataset.only.split(" ").includes(backend);
  }
  if (backend === "vast") loadOffers().catch((e) => flash(e.message, true));
}

if (backendSelect) {
  backendSelect.addEventListener("change", showBackendFields);
  for (const name of ["gpu", "maxDph"]) {
    document.querySelector('#job-form [name="' + name + '"]').addEventListener("change", () => {
      if (backendSelect.value === "vast") loadOffers().catch((e) => flash(e.message, true));
    });
  }
  showBackendFields();
}

// A vast job's spend, ticked on from its instance's $/h while it runs.
function showSpend(el) {
  const dph = Number(el.dataset.dph || 0);
  const created = Number(el.dataset.created || 0);
  if (!el.dataset.running || !created) return;
  const spent = dph * Math.max(0, Date.now() - created) / 3.6e6;
  el.textContent = "$" + spent.toFixed(4) + " of $" + el.dataset.max;
}
setInterval(() => document.querySelectorAll(".job-spend").forEach(showSpend), 1000);

onClick("button.cancel", async (button) => {
  await api("POST", "/api/training/jobs/" + encodeURIComponent(button.dataset.job) + "/cancel");
  flash("Cancel requested for " + button.dataset.job);
});

onClick("button.benchmark", async (button) => {
  const resp = await api("POST", "/api/training/models/" + encodeURIComponent(button.dataset.model) + "/benchmark", {});
  flash("Benchmark queued as " + (await resp.json()).job.id);
  setTimeout(() => location.reload(), 300);
});

onSubmit("form.import-form", async (form) => {
  const resp = await api("POST", "/api/training/models/" + encodeURIComponent(form.dataset.model) + "/import-ollama", formBody(form));
  const out = await resp.json();
  flash("Imported into Ollama as " + out.modelName);
  setTimeout(() => location.reload(), 600);
});

onSubmit("form.activate-form", async (form) => {
  const resp = await api("POST", "/api/training/models/" + encodeURIComponent(form.dataset.model) + "/activate", formBody(form));
  flash("Active: " + (await resp.json()).model.providerModel);
  setTimeout(() => location.reload(), 600);
});

onClick("button.rollback", async (button) => {
  const resp = await api("POST", "/api/training/prompts/" + encodeURIComponent(button.dataset.task) + "/rollback");
  flash("Rolled back to v" + (await resp.json()).artifact.version);
  setTimeout(() => location.reload(), 600);
});

onSubmit("#auto-form", async (form) => {
  await api("PUT", "/api/training/auto/config", formBody(form));
  flash("Auto-training settings saved.");
});

for (const details of document.querySelectorAll("details.log")) {
  details.addEventListener("toggle", async () => {
    if (!details.open) return;
    const resp = await api("GET", "/api/training/jobs/" + encodeURIComponent(details.dataset.job) + "/log?tail=4000");
    details.querySelector("pre").textContent = (await resp.text()) || "(empty)";
  });
}

// Live job progress: Server-Sent Events from the store's event log (the session cookie
// authorizes this read when the server has a token; EventSource cannot send headers).
const jobsTable = document.getElementById("jobs");
if (jobsTable && window.EventSource) {
  const after = jobsTable.dataset.lastSeq || "0";
  const source = new EventSource("/api/training/events?after=" + encodeURIComponent(after));
  const reloadOn = new Set(["job_completed", "job_failed", "job_cancelled", "model_imported", "model_activated", "dataset_built"]);
  const handle = (ev) => {
    const e = JSON.parse(ev.data);
    const row = e.jobId ? jobsTable.querySelector('tr[data-job="' + CSS.escape(e.jobId) + '"]') : null;
    if (row) {
      if (typeof e.progress === "number") row.querySelector("progress").value = e.progress;
      if (e.phase) row.querySelector(".job-phase").textContent = e.phase;
      const vast = e.data && e.data.vast;
      const spend = row.querySelector(".job-spend");
      if (vast && spend) {
        spend.dataset.dph = String(vast.dphTotal || 0);
        spend.dataset.created = String(vast.createdAt || "");
        spend.dataset.running = vast.destroyedAt ? "" : "yes";
        const where = row.querySelector(".job-where");
        if (where && vast.gpu) where.textContent = vast.numGpus + "x " + vast.gpu + (vast.ssh ? " · " + vast.ssh : "");
        showSpend(spend);
      }
      row.querySelector(".job-message").textContent = e.message || "";
      if (e.kind === "job_started") {
        row.dataset.status = "running";
        const st = row.querySelector(".job-status span");
        st.textContent = "running";
        st.className = "status js-running";
      }
    }
    if (reloadOn.has(e.kind)) {
      if (row) {
        const status = e.kind.replace("job_", "");
        row.dataset.status = status;
        const st = row.querySelector(".job-status span");
        st.textContent = status;
        st.className = "status js-" + status;
      }
      setTimeout(() => location.reload(), 1200);
    }
  };
  for (const kind of ["job_started", "job_progress", "job_log", "job_completed", "job_failed", "job_cancelled",
    "dataset_built", "model_activated", "model_imported"]) {
    source.addEventListener(kind, handle);
  }
  source.onmessage = handle;
}
