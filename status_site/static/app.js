// Status page for Neural Image Restore. Plain JS, no build step, no CDN: it must work on a LAN offline.
//
// It polls the same-origin /api/v1 (the page server mounts the API routes in-process). On any failure it
// keeps the last data on screen, marks it stale, says so in the header and retries with backoff
// (2 s doubling to 30 s), so a daemon restart or a flaky Wi-Fi never leaves a blank page or a spinner.
"use strict";

const API = "/api/v1";
const FETCH_TIMEOUT_MS = 8000;
const ACTIVE_INTERVAL_MS = 2000;
const IDLE_INTERVAL_MS = 5000;
const MAX_BACKOFF_MS = 30000;
const HISTORY_PAGE = 24;
const THUMB_MAX = 320;
const OUTPUT_THUMB_MAX_PIXELS = 24e6; // bigger outputs get their thumbnail from the input
const INSPECT_MAX = 4096;
const FULL_MAX = 8192; // the API's largest preview; bigger outputs open in a tab for 1:1

const state = {
  capabilities: null,
  historyCursors: [null], // cursor of each page seen; the last entry is the current page
  historyNext: null,
  failures: 0,
  offlineSince: null,
  nextPollAt: 0,
  timer: null,
  again: false,
  lastOk: null,
  polling: false,
  lastCapabilitiesAt: 0,
};

const $ = (id) => document.getElementById(id);

// ---------- HTTP ----------

class HttpError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const controller = new AbortController();
  const timeout = setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
  const headers = Object.assign({ Accept: "application/json" }, authHeaders(), options.headers || {});
  try {
    const response = await fetch(API + path, Object.assign({}, options, { headers, signal: controller.signal, cache: "no-store" }));
    const text = await response.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch (_err) {
      // A proxy error page, not our JSON: treat as the daemon being unreachable.
      throw new HttpError(response.status, `unexpected reply (HTTP ${response.status})`);
    }
    if (!response.ok && !(response.status === 503 && path === "/health")) {
      throw new HttpError(response.status, (body && (body.detail || body.title)) || `HTTP ${response.status}`);
    }
    return body;
  } catch (err) {
    if (err.name === "AbortError") throw new HttpError(0, "the daemon did not answer in time");
    if (err instanceof HttpError) throw err;
    throw new HttpError(0, "the daemon is unreachable");
  } finally {
    clearTimeout(timeout);
  }
}

function tokenValue() {
  const box = $("token");
  return box && box.value ? box.value.trim() : sessionStorage.getItem("restorer-token") || "";
}

function authHeaders() {
  const token = tokenValue();
  return token ? { Authorization: "Bearer " + token } : {};
}

// ---------- Sign-in (protect_reads) ----------
// The token lives in sessionStorage (this tab only) and travels in the Authorization header: never in a
// URL, so it stays out of the history, the Referer and every access log.

function readsNeedToken() {
  return !!(state.capabilities && state.capabilities.reads_require_token);
}

// With open reads an image is a plain src; with protect_reads it is fetched with the token header and
// shown from a blob URL (revoked once decoded). A failed fetch fires the image's own error handlers.
function showImage(img, url) {
  if (!readsNeedToken()) {
    img.src = url;
    return;
  }
  fetch(url, { headers: authHeaders() })
    .then((response) => {
      if (!response.ok) throw new HttpError(response.status, `HTTP ${response.status}`);
      return response.blob();
    })
    .then((blob) => {
      const blobUrl = URL.createObjectURL(blob);
      img.addEventListener("load", () => URL.revokeObjectURL(blobUrl), { once: true });
      img.src = blobUrl;
    })
    .catch(() => img.dispatchEvent(new Event("error")));
}

function showSignIn(message) {
  const dialog = $("signin");
  $("signin-error").textContent = message || "";
  if (!dialog.open) {
    dialog.showModal();
    $("signin-token").focus();
  }
}

async function signIn(event) {
  event.preventDefault();
  const token = $("signin-token").value.trim();
  sessionStorage.setItem("restorer-token", token);
  $("token").value = token;
  let capabilities;
  try {
    capabilities = await api("/capabilities");
  } catch (err) {
    $("signin-error").textContent = `Could not check the token: ${err.message}`;
    return;
  }
  if (!capabilities.signed_in) {
    sessionStorage.removeItem("restorer-token");
    $("token").value = "";
    $("signin-error").textContent = "That token is not right: use the daemon's RESTORER_API_TOKEN.";
    return;
  }
  $("signin-token").value = "";
  $("signin").close();
  renderCapabilities(capabilities);
  for (const id of ["queue", "failed", "history", "current"]) $(id).dataset.signature = "";
  pollSoon();
}

function setupSignIn() {
  $("signin-form").addEventListener("submit", signIn);
  // Escape must not dismiss the prompt: nothing behind it can load without the token.
  $("signin").addEventListener("cancel", (event) => event.preventDefault());
}

// ---------- Formatting ----------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== null && value !== undefined && value !== false) node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "unknown";
  if (seconds < 10) return `${Math.max(0, seconds).toFixed(1)} s`;
  seconds = Math.round(seconds);
  if (seconds < 60) return `${seconds} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${seconds % 60} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

function formatBytes(bytes) {
  if (bytes === null || bytes === undefined) return "?";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

function formatTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (isNaN(date)) return iso;
  const sameDay = date.toDateString() === new Date().toDateString();
  return sameDay ? date.toLocaleTimeString() : date.toLocaleString();
}

function formatMegapixels(value) {
  if (!value) return "0";
  return value >= 10 ? value.toFixed(0) : value >= 0.1 ? value.toFixed(1) : value.toFixed(3);
}

function formatSize(size) {
  return size ? `${size[0]} × ${size[1]}` : "?";
}

function stateBadge(jobState) {
  return el("span", { class: `state state-${jobState}`, text: jobState });
}

// ---------- Polling loop ----------

function schedule(delayMs) {
  clearTimeout(state.timer);
  state.nextPollAt = Date.now() + delayMs;
  state.timer = setTimeout(poll, delayMs);
}

async function poll() {
  if (state.polling) {
    state.again = true; // asked for fresh data while a poll is in flight: poll again right after it
    return;
  }
  state.polling = true;
  state.again = false;
  let active = false;
  try {
    const now = Date.now();
    const wantCapabilities = !state.capabilities || state.failures > 0 || now - state.lastCapabilitiesAt > 30000;
    const results = await Promise.allSettled([
      api("/health"),
      api("/jobs?state=processing,queued&order=queue&limit=100"),
      api("/jobs?state=failed&limit=20"),
      loadHistory(),
      wantCapabilities ? api("/capabilities") : Promise.resolve(null),
      // Every poll: the Throughput panel must agree with the queue above it (one cached query server-side).
      api("/stats"),
    ]);
    const [health, live, failed, history, capabilities, stats] = results.map((r) => (r.status === "fulfilled" ? r.value : null));
    // Health answers unless the daemon is unreachable; without it we are offline. Any other part that
    // failed keeps its last content and is named in the header.
    if (results[0].status === "rejected") throw results[0].reason;
    const problems = results.filter((r) => r.status === "rejected").map((r) => r.reason.message);
    // protect_reads: a read refused for want of the token asks for it (once, in a dialog).
    if (results.some((r) => r.status === "rejected" && r.reason.status === 401)) {
      showSignIn(tokenValue() ? "The saved token was not accepted; enter it again." : "");
    }
    state.partialError = problems.length ? problems[0] : null;
    safely(renderHealth, health);
    safely(renderQueueControl, health);
    // First: whether reads need the token decides how the thumbnails below are fetched.
    if (capabilities) {
      state.lastCapabilitiesAt = now;
      safely(renderCapabilities, capabilities);
    }
    if (live) safely(renderLive, live);
    if (failed) safely(renderFailed, failed);
    if (history) safely(renderHistory, history);
    if (stats) safely(renderStats, stats);
    if (live) active = live.jobs.length > 0;
    state.failures = 0;
    state.offlineSince = null;
    state.lastOk = new Date();
    document.body.classList.remove("stale");
  } catch (err) {
    state.failures += 1;
    if (!state.offlineSince) state.offlineSince = new Date();
    document.body.classList.add("stale");
    state.lastError = err.message;
  } finally {
    state.polling = false;
  }
  const delay = state.failures
    ? Math.min(MAX_BACKOFF_MS, ACTIVE_INTERVAL_MS * 2 ** (state.failures - 1)) * (0.85 + Math.random() * 0.3)
    : state.again
      ? 50
      : active
        ? ACTIVE_INTERVAL_MS
        : IDLE_INTERVAL_MS;
  schedule(delay);
  renderConnection();
}

// A bug in one section must not stop the polling loop or blank the others.
function safely(render, data) {
  try {
    render(data);
  } catch (err) {
    console.error(`rendering failed in ${render.name}:`, err);
    state.partialError = `could not show ${render.name.replace("render", "").toLowerCase()}`;
  }
}

function pollSoon() {
  schedule(50);
}

function renderConnection() {
  const box = $("connection");
  box.replaceChildren();
  if (state.failures === 0) {
    const partial = state.partialError ? ` (some parts not updated: ${state.partialError})` : "";
    box.textContent = `Live · updated ${state.lastOk ? state.lastOk.toLocaleTimeString() : ""}${partial}`;
    return;
  }
  const seconds = Math.max(0, Math.ceil((state.nextPollAt - Date.now()) / 1000));
  box.append(
    `Offline since ${state.offlineSince.toLocaleTimeString()} (${state.lastError}); showing the last known state. ` +
      `Retrying in ${seconds} s`,
    el("button", { type: "button", text: "Retry now", onclick: pollSoon }),
  );
}

// The countdown in the header ticks between polls while offline.
setInterval(() => {
  if (state.failures > 0) renderConnection();
}, 1000);

// ---------- Health ----------

function renderHealth(health) {
  const banner = $("health");
  const status = health.status || "unknown";
  banner.className = `banner banner-${status}`;
  const titles = { ok: "All systems working", degraded: "Working with problems", down: "Not working" };
  $("health-title").textContent = titles[status] || `Status: ${status}`;
  $("health-reasons").replaceChildren(...(health.reasons || []).map((reason) => el("li", { text: reason })));
  const facts = [];
  // health.workers: one entry per worker slot (a local process or a Ray actor); health.cluster for Ray.
  const workers = health.workers || [];
  if (workers.length > 1 || health.executor === "ray") {
    const states = workers.map((w) => `${w.id} ${w.state}${w.job_id ? ` (job ${w.job_id})` : ""} on ${w.device}`);
    facts.push(`executor ${health.executor || "local"}: ${states.join(", ") || "no workers yet"}`);
  } else if (health.worker_state) {
    facts.push(`worker ${health.worker_state}`);
  }
  if (health.cluster) facts.push(`Ray cluster ${health.cluster.address || ""} ${health.cluster.state}${health.cluster.nodes ? `, ${health.cluster.nodes} node(s)` : ""}`);
  if (health.backend) facts.push(`engine ${health.backend} on ${health.device || "?"} (${health.precision || "?"})`);
  if (health.watch_mode) facts.push(`inbox watched (${health.watch_mode})`);
  if (typeof health.outbox_free_bytes === "number") facts.push(`outbox free ${formatBytes(health.outbox_free_bytes)}`);
  // health.models: the pipeline's ModelStatus.to_dict() list (id, purpose, state, action).
  const models = (health.models || []).filter((m) => m && m.id);
  if (models.length) {
    const ready = (m) => m.state !== "missing";
    const names = (list) => list.map((m) => m.id).join(", ") || "none";
    facts.push(`models ready: ${names(models.filter((m) => m.purpose === "upscale" && ready(m)))}`);
    const faces = models.filter((m) => m.purpose === "face" && ready(m));
    // Faces are still detected without weights; say which command (or file) turns restoration on.
    const noFaces = "face weights: none (run `restorer weights fetch GFPGANv1.4`, or add GFPGANv1.4.pth to weights/)";
    facts.push(faces.length ? `face weights: ${names(faces)}` : noFaces);
  }
  $("health-facts").textContent = facts.join(" · ");
  renderNotifications(health.notifications);
}

// ---------- Notifications (issue 19 item 1): health's summary and the test button ----------

// health.notifications: targets, pending, failing_targets (scheme#hash, never a URL), last_error.
function renderNotifications(notifications) {
  const info = notifications || {};
  $("notify-row").hidden = !info.targets;
  if (!info.targets) return;
  const failing = info.failing_targets || [];
  const parts = [`${info.targets} notification target(s)`, `${info.pending || 0} pending`];
  if (failing.length) parts.push(`failing: ${failing.join(", ")} (${info.last_error || "?"})`);
  $("notify-row").title = parts.join(" · ");
  if (!$("notify-status").dataset.busy) $("notify-status").textContent = parts.join(" · ");
}

async function sendTestNotification() {
  const status = $("notify-status");
  status.dataset.busy = "1";
  try {
    const answer = await api("/notifications/test", { method: "POST" });
    status.textContent = `Test notification queued for ${answer.queued} target(s).`;
  } catch (err) {
    status.textContent = `Could not send a test notification: ${err.message}`;
  }
  setTimeout(() => delete status.dataset.busy, 5000);
}

// ---------- Capabilities (upload/retry allowed from this browser?) ----------

function canWrite() {
  return !!(state.capabilities && (state.capabilities.can_write || (state.capabilities.token_required && tokenValue())));
}

function renderCapabilities(capabilities) {
  state.capabilities = capabilities;
  const hint = $("upload-hint");
  const writable = canWrite();
  $("token-box").hidden = !capabilities.token_required;
  if (!writable && capabilities.write_hint) {
    hint.textContent = capabilities.write_hint;
    hint.hidden = false;
  } else {
    hint.hidden = true;
  }
  const zone = $("dropzone");
  zone.classList.toggle("disabled", !writable);
  zone.setAttribute("aria-disabled", writable ? "false" : "true");
  $("upload-limits").textContent =
    `Up to ${capabilities.upload_max_files} files per upload, ${formatBytes(capabilities.upload_max_bytes)} each.`;
  const select = $("preset");
  if (select.options.length === 1) {
    for (const name of capabilities.presets || []) select.append(el("option", { value: name, text: name }));
  }
  for (const button of document.querySelectorAll("button[data-write]")) button.disabled = !writable;
}

// ---------- Current job and queue ----------

function jobName(job) {
  return job.name || (job.input && job.input.path) || `job ${job.id}`;
}

function renderLive(live) {
  const processing = live.jobs.filter((job) => job.state === "processing");
  const queued = live.jobs.filter((job) => job.state === "queued");
  renderCurrent(processing);
  // The listing holds the first 100; beyond that the count comes from the (slower) stats.
  const total = live.next && state.counts ? Math.max(state.counts.queued, queued.length) : queued.length;
  $("queue-count").textContent = `(${total}${live.next && !state.counts ? "+" : ""})`;
  $("queue-empty").hidden = queued.length > 0;
  syncList($("queue"), queued, (job) => {
    const eta = job.eta_seconds !== null && job.eta_seconds !== undefined ? `done in about ${formatDuration(job.eta_seconds)}` : "";
    return el(
      "li",
      { "data-id": job.id },
      el("span", { class: "pos", text: `#${job.queue_position ?? "?"}` }),
      el(
        "span",
        { class: "grow" },
        el("span", { class: "name", text: jobName(job) }),
        el("br"),
        el("span", { class: "muted", text: `${formatBytes(job.input && job.input.size_bytes)} · ${eta || "waiting"}` }),
      ),
      job.queue_position > 1 ? jobButton(job, "Run next", "prioritize") : null,
      jobButton(job, "Cancel", "cancel"),
    );
  });
}

// A write action on one job (disabled for visitors who may not write; data-write lets capabilities re-enable it).
function jobButton(job, label, action) {
  return el("button", {
    type: "button",
    "data-write": "",
    disabled: !canWrite(),
    text: label,
    "aria-label": `${label} ${jobName(job)}`,
    onclick: () => jobAction(job, action),
  });
}

// Every running job (one per worker), each with the worker that runs it.
function renderCurrent(processing) {
  const box = $("current");
  if (processing.length === 0) {
    box.dataset.signature = "";
    if (!box.querySelector("p.muted")) box.replaceChildren(el("p", { class: "muted", text: "Nothing is being restored right now." }));
    return;
  }
  const etaOf = (job) => (job.eta_seconds !== null && job.eta_seconds !== undefined ? formatDuration(job.eta_seconds) : "estimating…");
  const signature = processing
    .map((job) => [job.id, job.stage, Math.round((job.progress || 0) * 100), etaOf(job), job.cancel_requested, job.worker].join("|"))
    .join(";") + String(canWrite());
  if (box.dataset.signature === signature) return;
  box.dataset.signature = signature;
  const focusedId = box.contains(document.activeElement) && document.activeElement.closest("[data-id]")?.dataset.id;
  const thumbs = new Map([...box.querySelectorAll("img[data-id]")].map((img) => [img.dataset.id, img]));
  box.replaceChildren(...processing.map((job) => currentJob(job, etaOf(job), thumbs.get(String(job.id)))));
  const button = focusedId && box.querySelector(`[data-id="${focusedId}"] button`);
  if (button) button.focus();
}

function currentJob(job, eta, thumb) {
  const percent = Math.round((job.progress || 0) * 100);
  if (!thumb) {
    thumb = el("img", { alt: "", "data-id": job.id });
    thumb.addEventListener("error", () => (thumb.style.visibility = "hidden"));
    showImage(thumb, `${API}/jobs/${job.id}/input?max=${THUMB_MAX}`);
  }
  const where = job.worker ? ` · worker ${job.worker}` : "";
  return el(
    "div",
    { class: "current-job", "data-id": job.id },
    thumb,
    el(
      "div",
      { class: "info" },
      el("div", { class: "name", text: jobName(job) }),
      el("div", { class: "muted", text: `Stage: ${job.stage || "starting"} · ${percent}% · time left ${eta}` }),
      el("progress", { max: 100, value: percent, "aria-label": `Progress of ${jobName(job)}` }),
      el("div", { class: "muted", text: `Started ${formatTime(job.started_at)} · attempt ${job.attempts || 1}${where}` }),
      job.cancel_requested
        ? el("div", { class: "muted", text: "Cancel requested: the worker stops at the next step." })
        : jobButton(job, "Cancel", "cancel"),
    ),
  );
}

// Replace a list's children only when the content changed, so focus and scroll survive each poll.
function syncList(list, jobs, render) {
  const signature = JSON.stringify(jobs.map((job) => [job.id, job.state, job.queue_position, job.eta_seconds && Math.round(job.eta_seconds / 5), job.error]))
    + String(canWrite());
  if (list.dataset.signature === signature) return;
  const focusedId = document.activeElement && document.activeElement.closest("li") && document.activeElement.closest("li").dataset.id;
  list.dataset.signature = signature;
  list.replaceChildren(...jobs.map(render));
  if (focusedId) {
    const again = list.querySelector(`li[data-id="${focusedId}"] button`);
    if (again) again.focus();
  }
}

async function jobAction(job, action) {
  const status = $("upload-status");
  try {
    const after = await api(`/jobs/${job.id}/${action}`, { method: "POST" });
    status.className = "upload-status";
    if (!after.changed) status.textContent = `${jobName(job)} is ${after.state} already.`;
    else if (action === "retry") status.textContent = `${jobName(job)} is queued again.`;
    else if (action === "prioritize") status.textContent = `${jobName(job)} runs next.`;
    else if (after.cancel_requested) status.textContent = `${jobName(job)}: cancel requested, the worker stops it.`;
    else status.textContent = `${jobName(job)} was cancelled.`;
  } catch (err) {
    status.className = "upload-status error";
    status.textContent = `Could not ${action} ${jobName(job)}: ${err.message}`;
  }
  pollSoon();
}

// ---------- Queue control: pause / resume and quiet hours (issue 19 item 2) ----------

// health.queue_*: whether someone paused the queue (who, when, how) and the quiet hours' next run.
function renderQueueControl(health) {
  const paused = !!health.queue_paused;
  $("queue-pause").hidden = paused;
  $("queue-pause-now").hidden = paused;
  $("queue-resume").hidden = !paused;
  const banner = $("queue-banner");
  let text = "";
  if (paused) {
    const how = health.queue_pause_mode === "now" ? "; the running photo went back to the queue" : "";
    text = `Paused by ${health.queue_paused_by || "someone"} at ${formatTime(health.queue_paused_at)}${how}. Resume to run the queue.`;
  } else if (health.queue_next_run_at) {
    text = `Quiet hours: next run at ${health.queue_next_run_at.slice(11, 16)}.`;
  }
  banner.textContent = text;
  banner.hidden = !text;
}

async function queueControl(action, when) {
  const status = $("upload-status");
  try {
    const options = { method: "POST" };
    if (when) Object.assign(options, { headers: { "Content-Type": "application/json" }, body: JSON.stringify({ when }) });
    const after = await api(`/queue/${action}`, options);
    status.className = "upload-status";
    status.textContent = after.queue_paused ? `The queue is paused.` : "The queue runs again.";
    renderQueueControl(after);
  } catch (err) {
    status.className = "upload-status error";
    status.textContent = `Could not ${action} the queue: ${err.message}`;
  }
  pollSoon();
}

function setupQueueControl() {
  $("queue-pause").addEventListener("click", () => queueControl("pause", "after-current"));
  $("queue-pause-now").addEventListener("click", () => queueControl("pause", "now"));
  $("queue-resume").addEventListener("click", () => queueControl("resume"));
}

// ---------- Failed ----------

function renderFailed(failed) {
  $("failed-count").textContent = `(${failed.jobs.length}${failed.next ? "+" : ""})`;
  $("failed-empty").hidden = failed.jobs.length > 0;
  syncList($("failed"), failed.jobs, (job) =>
    el(
      "li",
      { "data-id": job.id },
      el(
        "span",
        { class: "grow" },
        el("span", { class: "name", text: jobName(job) }),
        el("br"),
        el("span", { class: "reason", text: job.error || "no reason recorded" }),
        el("br"),
        el("span", { class: "muted", text: `${job.attempts} attempt(s) · ${formatTime(job.finished_at)}` }),
      ),
      jobButton(job, "Retry", "retry"),
    ),
  );
}

// ---------- History ----------

function loadHistory() {
  const filter = $("history-filter").value;
  const cursor = state.historyCursors[state.historyCursors.length - 1];
  let query = `/jobs?limit=${HISTORY_PAGE}&order=newest`;
  if (filter) query += `&state=${encodeURIComponent(filter)}`;
  if (cursor) query += `&cursor=${encodeURIComponent(cursor)}`;
  return api(query);
}

function renderHistory(history) {
  state.historyNext = history.next;
  $("history-next").disabled = !history.next;
  $("history-first").disabled = state.historyCursors.length === 1;
  $("history-page").textContent = `page ${state.historyCursors.length}`;
  $("history-empty").hidden = history.jobs.length > 0;
  syncList($("history"), history.jobs, (job) => {
    const done = job.state === "done";
    // A done job shows its result; a huge output (slow to decode for a thumbnail) shows its input.
    const outSize = job.report && job.report.output_size;
    const fromOutput = done && outSize && outSize[0] * outSize[1] <= OUTPUT_THUMB_MAX_PIXELS;
    const sources = fromOutput ? ["output", "input"] : done ? ["input", "output"] : ["input"];
    const img = el("img", { alt: "", loading: "lazy" });
    img.addEventListener("error", () => {
      const next = sources.shift();
      if (next) showImage(img, `${API}/jobs/${job.id}/${next}?max=${THUMB_MAX}`);
      else img.replaceWith(el("span", { class: "muted", text: "no preview" }));
    });
    showImage(img, `${API}/jobs/${job.id}/${sources.shift()}?max=${THUMB_MAX}`);
    const thumb = el(
      "button",
      {
        type: "button",
        class: "thumb",
        disabled: !done,
        "aria-label": done ? `Inspect ${jobName(job)}` : `${jobName(job)} (${job.state})`,
        onclick: () => openInspector(job.id),
      },
      img,
    );
    const sizes = job.report && job.report.output_size ? `${formatSize(job.report.input_size)} → ${formatSize(job.report.output_size)}` : "";
    return el(
      "li",
      { "data-id": job.id },
      thumb,
      el(
        "div",
        { class: "meta" },
        el("div", { class: "name", text: jobName(job) }),
        stateBadge(job.state),
        " ",
        el("span", { class: "muted", text: formatTime(job.finished_at || job.detected_at) }),
        sizes ? el("div", { class: "muted", text: sizes }) : null,
        job.state === "failed" ? el("div", { class: "reason", text: job.error || "" }) : null,
        job.cleaned_at ? el("div", { class: "muted cleaned", text: cleanedText(job) }) : null,
      ),
    );
  });
}

// Retention removed the original (archive_days / failed_days): say when, and the rule from the note.
function cleanedText(job) {
  const rule = (job.note || "").split("; ").find((part) => part.endsWith("(retention)"));
  const what = rule ? rule.replace(" (retention)", "") : "original removed";
  return `${what}, cleaned up ${formatTime(job.cleaned_at)}`;
}

function historyChanged() {
  state.historyCursors = [null];
  $("history").dataset.signature = "";
  pollSoon();
}

// ---------- Stats ----------

const SVG_NS = "http://www.w3.org/2000/svg";
const CHART = { width: 480, height: 120, top: 16, bottom: 18 };

function svg(tag, attributes = {}, text = null) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  if (text !== null) node.textContent = text;
  return node;
}

function hourLabel(hour) {
  return new Date(hour.hour).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function dayLabel(day) {
  return new Date(`${day.day}T00:00:00`).toLocaleDateString([], { month: "short", day: "numeric" });
}

// A small bar chart drawn as inline SVG: one bar per bucket, the series stacked, the tallest bar's
// total written above the chart. Screen readers get the table next to it instead (the SVG is hidden).
function barChart(buckets, series, label) {
  const { width, height, top, bottom } = CHART;
  const totals = buckets.map((bucket) => series.reduce((sum, one) => sum + (bucket[one.key] || 0), 0));
  const max = Math.max(1, ...totals);
  const step = width / Math.max(1, buckets.length);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", "aria-hidden": "true", focusable: "false" });
  chart.append(svg("line", { x1: 0, x2: width, y1: height - bottom, y2: height - bottom, class: "axis" }));
  buckets.forEach((bucket, index) => {
    let base = height - bottom;
    for (const one of series) {
      const value = bucket[one.key] || 0;
      if (!value) continue;
      const barHeight = (value / max) * (height - top - bottom);
      base -= barHeight;
      const bar = svg("rect", { x: index * step + step * 0.1, y: base, width: step * 0.8, height: barHeight, class: `bar ${one.className}`, "data-value": value });
      bar.append(svg("title", {}, `${label(bucket)}: ${value} ${one.name}`));
      chart.append(bar);
    }
  });
  chart.append(svg("text", { x: 0, y: 11, class: "chart-max" }, `max ${Math.max(...totals, 0)}`));
  chart.append(svg("text", { x: 0, y: height - 4 }, buckets.length ? label(buckets[0]) : ""));
  chart.append(svg("text", { x: width, y: height - 4, "text-anchor": "end" }, buckets.length ? label(buckets[buckets.length - 1]) : ""));
  return chart;
}

function statsTable(caption, head, rows, className = "") {
  return el(
    "table",
    { class: className },
    el("caption", { class: "muted", text: caption }),
    el("thead", {}, el("tr", {}, ...head.map((h, i) => el("th", { class: i ? "num" : "", text: h })))),
    el("tbody", {}, ...rows.map((cells) => el("tr", {}, ...cells.map((cell, i) => el("td", { class: i ? "num" : "", text: String(cell) }))))),
  );
}

function chartFigure(id, caption, chart, legend, table) {
  return el("figure", { class: "chart-figure", id }, el("figcaption", { text: caption }), chart, legend, table);
}

function legend(series) {
  return el("p", { class: "legend muted", "aria-hidden": "true" }, ...series.map((one) => el("span", { class: `key ${one.className}`, text: one.name })));
}

function renderStats(stats) {
  const counts = stats.counts || {};
  state.counts = counts;
  const rate = stats.seconds_per_megapixel;
  const hours = stats.per_hour || [];
  const days = stats.per_day || [];
  const hourSeries = [{ key: "images", className: "bar-done", name: "images" }];
  const daySeries = [
    { key: "done", className: "bar-done", name: "done" },
    { key: "failed", className: "bar-failed", name: "failed" },
  ];
  const box = $("stats");
  box.dataset.generatedAt = stats.generated_at || "";
  box.replaceChildren(
    el(
      "div",
      {},
      statsTable("Jobs by state", ["state", "jobs"], Object.entries(counts)),
      el("p", { class: "muted", text: rate ? `${rate.toFixed(1)} s per input megapixel (mean of done jobs)` : "No finished jobs to time yet." }),
    ),
    chartFigure(
      "chart-hours",
      `Images finished per hour, last ${hours.length} hours`,
      barChart(hours, hourSeries, hourLabel),
      legend(hourSeries),
      statsTable("Images finished per hour", ["hour", "images", "MP"], hours.map((h) => [hourLabel(h), h.images, formatMegapixels(h.megapixels)]), "visually-hidden"),
    ),
    chartFigure(
      "chart-days",
      `Jobs finished per day, last ${days.length} days`,
      barChart(days, daySeries, dayLabel),
      legend(daySeries),
      statsTable("Jobs finished per day", ["day", "done", "failed", "MP"], days.map((d) => [d.day, d.done, d.failed, formatMegapixels(d.megapixels)]), "visually-hidden"),
    ),
  );
}

// ---------- Upload ----------

function setupUpload() {
  const zone = $("dropzone");
  const input = $("file-input");
  const choose = () => {
    if (canWrite()) input.click();
  };
  zone.addEventListener("click", choose);
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      choose();
    }
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    upload(event.dataTransfer.files);
  });
  // A photo dropped next to the zone must not make the browser navigate away to the file.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    if (!zone.contains(event.target) && event.dataTransfer && event.dataTransfer.files.length) upload(event.dataTransfer.files);
  });
  input.addEventListener("change", () => {
    upload(input.files);
    input.value = "";
  });
  const token = $("token");
  token.value = sessionStorage.getItem("restorer-token") || "";
  token.addEventListener("change", () => {
    sessionStorage.setItem("restorer-token", token.value.trim());
    if (state.capabilities) renderCapabilities(state.capabilities);
    $("queue").dataset.signature = "";
    $("failed").dataset.signature = "";
  });
}

function upload(fileList) {
  const files = Array.from(fileList || []);
  const status = $("upload-status");
  if (files.length === 0) return;
  if (!canWrite()) {
    status.className = "upload-status error";
    status.textContent = (state.capabilities && state.capabilities.write_hint) || "Uploads are not allowed from here.";
    return;
  }
  // The server enforces these while streaming; checking first saves sending a file it will refuse.
  const limits = state.capabilities;
  if (limits && files.length > limits.upload_max_files) {
    status.className = "upload-status error";
    status.textContent = `Too many files: at most ${limits.upload_max_files} per upload.`;
    return;
  }
  const tooBig = limits ? files.filter((file) => file.size > limits.upload_max_bytes) : [];
  if (tooBig.length) {
    status.className = "upload-status error";
    status.textContent = `Too large (over ${formatBytes(limits.upload_max_bytes)}): ${tooBig.map((f) => f.name).join(", ")}.`;
    return;
  }
  const form = new FormData();
  const preset = $("preset").value;
  if (preset) form.append("preset", preset);
  for (const file of files) form.append("file", file, file.name);
  const request = new XMLHttpRequest();
  request.open("POST", `${API}/jobs`);
  request.setRequestHeader("Accept", "application/json");
  const token = tokenValue();
  if (token) request.setRequestHeader("Authorization", "Bearer " + token);
  request.timeout = 10 * 60 * 1000;
  status.className = "upload-status";
  status.textContent = `Uploading ${files.length} file(s)…`;
  request.upload.addEventListener("progress", (event) => {
    if (event.lengthComputable) status.textContent = `Uploading ${files.length} file(s)… ${Math.round((100 * event.loaded) / event.total)}%`;
  });
  const fail = (message) => {
    status.className = "upload-status error";
    status.textContent = `Upload failed: ${message}`;
  };
  request.addEventListener("load", () => {
    let body = null;
    try {
      body = JSON.parse(request.responseText);
    } catch (_err) {
      body = null;
    }
    if (request.status === 202 && body) {
      const described = body.jobs.map((job) => `#${job.id} ${job.name}${job.state === "queued" ? "" : ` (${job.note || job.state})`}`);
      status.textContent = `Accepted ${body.jobs.length} file${body.jobs.length === 1 ? "" : "s"}: ${described.join(", ")}.`;
      pollSoon();
    } else {
      fail((body && body.detail) || `HTTP ${request.status}`);
    }
  });
  request.addEventListener("error", () => fail("the daemon is unreachable"));
  request.addEventListener("timeout", () => fail("the upload took too long"));
  request.send(form);
}

// ---------- Quality inspector ----------

const view = { job: null, width: 0, height: 0, zoom: 1, x: 0, y: 0, split: 0.5, loaded: 0, opener: null };

async function openInspector(jobId) {
  const dialog = $("inspector");
  view.opener = document.activeElement;
  $("inspector-title").textContent = `Job #${jobId}`;
  $("inspector-facts").replaceChildren();
  $("inspector-loading").textContent = "Loading images…";
  $("inspector-loading").hidden = false;
  $("before-img").removeAttribute("src");
  $("after-img").removeAttribute("src");
  $("inspector-note").hidden = true;
  if (!dialog.open) dialog.showModal();
  let job;
  try {
    job = await api(`/jobs/${jobId}`);
  } catch (err) {
    $("inspector-loading").textContent = `Could not load job #${jobId}: ${err.message}`;
    return;
  }
  view.job = job;
  const report = job.report || {};
  const outSize = report.output_size || [0, 0];
  view.width = outSize[0];
  view.height = outSize[1];
  view.loaded = 0;
  $("inspector-title").textContent = jobName(job);
  renderFacts(job);
  renderFaces(job);
  const before = $("before-img");
  const after = $("after-img");
  const loaded = () => {
    view.loaded += 1;
    if (!view.width || !view.height) {
      view.width = after.naturalWidth;
      view.height = after.naturalHeight;
    }
    if (view.loaded === 2) {
      $("inspector-loading").hidden = true;
      fit();
    }
  };
  const failed = (which) => () => {
    $("inspector-loading").hidden = false;
    $("inspector-loading").textContent = `The ${which} image is not available any more (moved or deleted).`;
  };
  before.onload = loaded;
  after.onload = loaded;
  before.onerror = failed("input");
  after.onerror = failed("output");
  showImage(before, `${API}/jobs/${job.id}/input?max=${INSPECT_MAX}`);
  showImage(after, `${API}/jobs/${job.id}/output?max=${INSPECT_MAX}`);
  // Never a silent spinner: say what is going on if the previews take long (big images, busy CPU).
  clearTimeout(view.slowTimer);
  view.slowTimer = setTimeout(() => {
    if (view.job === job && view.loaded < 2 && !$("inspector-loading").hidden) {
      $("inspector-loading").textContent = "Still loading: large images take a while to prepare. Close and retry if it stays.";
    }
  }, 15000);
  $("viewport").focus();
}

function renderFacts(job) {
  const report = job.report || {};
  const facts = [
    ["Input", `${formatSize(report.input_size)} · ${report.input_mode || ""} · ${formatBytes(job.input && job.input.size_bytes)}`],
    ["Output", `${formatSize(report.output_size)} · ${report.output_mode || ""} · ${formatBytes(job.output && job.output.size_bytes)}`],
    ["Model", `${report.model || "?"} ×${report.scale || "?"}`],
    ["Engine", `${report.backend || "?"} on ${report.device || "?"} (${report.precision || "?"})`],
    ["Time", `${formatDuration(report.seconds)} · finished ${formatTime(job.finished_at)}`],
    ["Faces", `${(report.faces || []).length} found, ${(report.faces || []).filter((f) => f.restored).length} restored`],
  ];
  if (report.colour) facts.push(["Colour", `${report.colour.path}: ${report.colour.reason}`]);
  if (report.notes && report.notes.length) facts.push(["Notes", report.notes.join("; ")]);
  $("inspector-facts").replaceChildren(...facts.flatMap(([name, value]) => [el("dt", { text: name }), el("dd", { text: value })]));
}

function renderFaces(job) {
  const layer = $("faces-layer");
  const faces = (job.report && job.report.faces) || [];
  layer.replaceChildren(
    ...faces.map((face, index) => {
      const [x0, y0, x1, y1] = face.box;
      const box = el("div", { class: "face-box" }, el("span", { text: `${index + 1}${face.restored ? "" : " (kept)"} ${face.score.toFixed(2)}` }));
      Object.assign(box.style, { left: `${x0}px`, top: `${y0}px`, width: `${x1 - x0}px`, height: `${y1 - y0}px` });
      return box;
    }),
  );
  $("show-faces").disabled = faces.length === 0;
  layer.hidden = !$("show-faces").checked;
}

function applyView() {
  const viewport = $("viewport");
  const stage = $("stage");
  const w = `${view.width}px`;
  const h = `${view.height}px`;
  // Both layers live in output-pixel coordinates: the input is stretched to the output size, so the
  // same stage transform moves and zooms them together.
  for (const node of [$("before-img"), $("after-img"), $("after-clip"), $("faces-layer")]) {
    node.style.width = w;
    node.style.height = h;
  }
  stage.style.width = w;
  stage.style.height = h;
  stage.style.transform = `translate(${view.x}px, ${view.y}px) scale(${view.zoom})`;
  stage.classList.toggle("pixelated", view.zoom * window.devicePixelRatio >= 4);
  const splitX = view.split * viewport.clientWidth;
  const clipLeft = Math.max(0, (splitX - view.x) / view.zoom);
  $("after-clip").style.clipPath = `inset(0 0 0 ${clipLeft}px)`;
  $("divider").style.left = `${splitX}px`;
  $("slider").value = String(Math.round(view.split * 100));
  for (const box of document.querySelectorAll(".face-box")) {
    box.style.borderWidth = `${2 / view.zoom}px`;
    box.firstChild.style.fontSize = `${12 / view.zoom}px`;
  }
}

function fit() {
  const viewport = $("viewport");
  if (!view.width || !view.height) return;
  view.zoom = Math.min(viewport.clientWidth / view.width, viewport.clientHeight / view.height);
  view.x = (viewport.clientWidth - view.width * view.zoom) / 2;
  view.y = (viewport.clientHeight - view.height * view.zoom) / 2;
  applyView();
}

function zoomAt(factor, cx, cy) {
  const viewport = $("viewport");
  if (cx === undefined) {
    cx = viewport.clientWidth / 2;
    cy = viewport.clientHeight / 2;
  }
  const zoom = Math.min(64, Math.max(0.02, view.zoom * factor));
  view.x = cx - ((cx - view.x) * zoom) / view.zoom;
  view.y = cy - ((cy - view.y) * zoom) / view.zoom;
  view.zoom = zoom;
  applyView();
}

function oneToOne() {
  // One output pixel per device pixel, centred on the middle of the viewport.
  zoomAt(1 / window.devicePixelRatio / view.zoom);
  loadFullResolution();
}

// The inspector opens on previews at most INSPECT_MAX px; true 1:1 needs the output's own pixels.
function loadFullResolution() {
  const after = $("after-img");
  const note = $("inspector-note");
  if (!view.job || !after.naturalWidth || after.naturalWidth >= view.width) return;
  const fullUrl = `${API}/jobs/${view.job.id}/output`;
  if (Math.max(view.width, view.height) <= FULL_MAX) {
    note.replaceChildren(`Loading the full ${view.width} × ${view.height} output for a true 1:1 view…`);
    note.hidden = false;
    after.onload = () => {
      note.hidden = true;
    };
    showImage(after, `${fullUrl}?max=${FULL_MAX}`);
    return;
  }
  const scale = (view.width / after.naturalWidth).toFixed(1);
  note.replaceChildren(
    `The output is ${view.width} × ${view.height}: this view shows a ${after.naturalWidth} px preview scaled ×${scale}. `,
    el("a", { href: fullUrl, target: "_blank", rel: "noopener", text: "Open the full-size output", onclick: openProtected }),
  );
  note.hidden = false;
}

// A link to a file opens a new tab without our header: under protect_reads open a blob of it instead.
function openProtected(event) {
  if (!readsNeedToken()) return;
  event.preventDefault();
  const tab = window.open("", "_blank");
  fetch(event.currentTarget.href, { headers: authHeaders() })
    .then((response) => (response.ok ? response.blob() : Promise.reject(new Error(`HTTP ${response.status}`))))
    .then((blob) => (tab.location.href = URL.createObjectURL(blob)))
    .catch(() => tab && tab.close());
}

function setupInspector() {
  const viewport = $("viewport");
  const divider = $("divider");
  let drag = null;
  viewport.addEventListener("pointerdown", (event) => {
    const onDivider = event.target === divider || divider.contains(event.target);
    drag = { kind: onDivider ? "split" : "pan", x: event.clientX, y: event.clientY, vx: view.x, vy: view.y };
    viewport.setPointerCapture(event.pointerId);
    viewport.classList.toggle("dragging", !onDivider);
  });
  viewport.addEventListener("pointermove", (event) => {
    if (!drag) return;
    if (drag.kind === "split") {
      const rect = viewport.getBoundingClientRect();
      view.split = Math.min(1, Math.max(0, (event.clientX - rect.left) / rect.width));
    } else {
      view.x = drag.vx + event.clientX - drag.x;
      view.y = drag.vy + event.clientY - drag.y;
    }
    applyView();
  });
  const end = () => {
    drag = null;
    viewport.classList.remove("dragging");
  };
  viewport.addEventListener("pointerup", end);
  viewport.addEventListener("pointercancel", end);
  viewport.addEventListener(
    "wheel",
    (event) => {
      event.preventDefault();
      const rect = viewport.getBoundingClientRect();
      zoomAt(event.deltaY < 0 ? 1.25 : 0.8, event.clientX - rect.left, event.clientY - rect.top);
    },
    { passive: false },
  );
  viewport.addEventListener("keydown", (event) => {
    const step = 60;
    const actions = {
      ArrowLeft: () => (view.x += step),
      ArrowRight: () => (view.x -= step),
      ArrowUp: () => (view.y += step),
      ArrowDown: () => (view.y -= step),
      "+": () => zoomAt(1.25),
      "=": () => zoomAt(1.25),
      "-": () => zoomAt(0.8),
      0: fit,
      1: oneToOne,
      "[": () => (view.split = Math.max(0, view.split - 0.05)),
      "]": () => (view.split = Math.min(1, view.split + 0.05)),
      f: () => $("show-faces").click(),
    };
    const action = actions[event.key];
    if (!action) return;
    event.preventDefault();
    action();
    applyView();
  });
  $("slider").addEventListener("input", (event) => {
    view.split = Number(event.target.value) / 100;
    applyView();
  });
  $("zoom-in").addEventListener("click", () => zoomAt(1.25));
  $("zoom-out").addEventListener("click", () => zoomAt(0.8));
  $("zoom-fit").addEventListener("click", fit);
  $("zoom-1to1").addEventListener("click", oneToOne);
  $("show-faces").addEventListener("change", (event) => ($("faces-layer").hidden = !event.target.checked));
  $("inspector-close").addEventListener("click", () => $("inspector").close());
  $("inspector").addEventListener("close", () => {
    if (view.opener && view.opener.focus) view.opener.focus();
  });
  window.addEventListener("resize", () => {
    if ($("inspector").open) applyView();
  });
}

// ---------- Start ----------

function start() {
  setupSignIn();
  setupUpload();
  setupInspector();
  setupQueueControl();
  $("notify-test").addEventListener("click", sendTestNotification);
  $("history-filter").addEventListener("change", historyChanged);
  $("history-next").addEventListener("click", () => {
    if (!state.historyNext) return;
    state.historyCursors.push(state.historyNext);
    $("history").dataset.signature = "";
    pollSoon();
  });
  $("history-first").addEventListener("click", historyChanged);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) pollSoon();
  });
  poll();
}

start();
