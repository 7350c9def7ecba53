// History: finished jobs a page at a time, each with a thumbnail that opens the inspector.
import { API, api, showImage } from "./api.js";
import { previewEdge } from "./capabilities.js";
import { el, formatSize, formatTime, jobName, stateBadge } from "./format.js";
import { openInspector } from "./inspector.js";
import { syncList } from "./jobs.js";
import { $, pollSoon, state } from "./state.js";

const HISTORY_PAGE = 24;
const OUTPUT_THUMB_MAX_PIXELS = 24e6; // bigger outputs get their thumbnail from the input

export function loadHistory() {
  const filter = $("history-filter").value;
  const cursor = state.historyCursors[state.historyCursors.length - 1];
  let query = `/jobs?limit=${HISTORY_PAGE}&order=newest`;
  if (filter) query += `&state=${encodeURIComponent(filter)}`;
  if (cursor) query += `&cursor=${encodeURIComponent(cursor)}`;
  return api(query);
}

export function renderHistory(history) {
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
      if (next) showImage(img, `${API}/jobs/${job.id}/${next}?max=${previewEdge("thumbnail")}`);
      else img.replaceWith(el("span", { class: "muted", text: "no preview" }));
    });
    showImage(img, `${API}/jobs/${job.id}/${sources.shift()}?max=${previewEdge("thumbnail")}`);
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

export function setupHistory() {
  $("history-filter").addEventListener("change", historyChanged);
  $("history-next").addEventListener("click", () => {
    if (!state.historyNext) return;
    state.historyCursors.push(state.historyNext);
    $("history").dataset.signature = "";
    pollSoon();
  });
  $("history-first").addEventListener("click", historyChanged);
}
