// Queue control: pause / resume and quiet hours (issue 19 item 2).
import { api } from "./api.js";
import { formatTime } from "./format.js";
import { $, pollSoon } from "./state.js";

// health.queue_*: whether someone paused the queue (who, when, how) and the quiet hours' next run.
export function renderQueueControl(health) {
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

export function setupQueueControl() {
  $("queue-pause").addEventListener("click", () => queueControl("pause", "after-current"));
  $("queue-pause-now").addEventListener("click", () => queueControl("pause", "now"));
  $("queue-resume").addEventListener("click", () => queueControl("resume"));
}
