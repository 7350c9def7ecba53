// The health banner: the daemon's state, its workers, engine and models, and notifications.
import { api } from "./api.js";
import { el, formatBytes } from "./format.js";
import { $ } from "./state.js";

export function renderHealth(health) {
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

export function setupHealth() {
  $("notify-test").addEventListener("click", sendTestNotification);
}
