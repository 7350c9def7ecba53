// What the job lists (current, queue, failed, history) share: a write button per job, and replacing a
// list only when its content changed.
import { api, canWrite } from "./api.js";
import { el, jobName } from "./format.js";
import { $, pollSoon } from "./state.js";

// A write action on one job (disabled for visitors who may not write; data-write lets capabilities re-enable it).
export function jobButton(job, label, action) {
  return el("button", {
    type: "button",
    "data-write": "",
    disabled: !canWrite(),
    text: label,
    "aria-label": `${label} ${jobName(job)}`,
    onclick: () => jobAction(job, action),
  });
}

// Replace a list's children only when the content changed, so focus and scroll survive each poll.
export function syncList(list, jobs, render) {
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
