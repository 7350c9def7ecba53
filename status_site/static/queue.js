// The jobs being restored now, the queue and the failed jobs.
import { API, canWrite, showImage } from "./api.js";
import { previewEdge } from "./capabilities.js";
import { el, formatBytes, formatDuration, formatTime, jobName } from "./format.js";
import { jobButton, syncList } from "./jobs.js";
import { $, state } from "./state.js";

export function renderLive(live) {
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
    showImage(thumb, `${API}/jobs/${job.id}/input?max=${previewEdge("thumbnail")}`);
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

export function renderFailed(failed) {
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
