// The polling loop. It polls the same-origin /api/v1 (the page server mounts the API routes in-process).
// On any failure it keeps the last data on screen, marks it stale, says so in the header and retries with
// backoff (2 s doubling to 30 s), so a daemon restart or a flaky Wi-Fi never leaves a blank page or a spinner.
import { api, tokenValue } from "./api.js";
import { renderCapabilities } from "./capabilities.js";
import { el } from "./format.js";
import { renderHealth } from "./health.js";
import { loadHistory, renderHistory } from "./history.js";
import { renderFailed, renderLive } from "./queue.js";
import { renderQueueControl } from "./queue-control.js";
import { showSignIn } from "./signin.js";
import { renderStats } from "./stats.js";
import { $, onPollRequest, pollSoon, state } from "./state.js";

const ACTIVE_INTERVAL_MS = 2000;
const IDLE_INTERVAL_MS = 5000;
const MAX_BACKOFF_MS = 30000;

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

export function startPolling() {
  onPollRequest(() => schedule(50));
  // The countdown in the header ticks between polls while offline.
  setInterval(() => {
    if (state.failures > 0) renderConnection();
  }, 1000);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) pollSoon();
  });
  poll();
}
