// Capabilities: whether this browser may upload and retry, the upload limits, the presets, and the
// preview sizes the page asks for (the server's, so the page keeps no copy of them).
import { canWrite } from "./api.js";
import { el, formatBytes } from "./format.js";
import { $, state } from "./state.js";

export function renderCapabilities(capabilities) {
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
  renderModels(capabilities.models || []);
}

// capabilities.models: every model (the pipeline's ModelStatus.to_dict()), the weights folder scanned at
// each request, so a file dropped into weights/ shows here within a poll. Users' files show what spandrel
// found (architecture, scale, size, sha256) or why they were refused; a preset's `model` picks one.
function renderModels(models) {
  const users = models.filter((m) => m && m.user);
  $("models-panel").hidden = !users.length;
  if (!users.length) return;
  const usable = users.filter((m) => m.state !== "refused");
  $("models-summary").textContent = `Your model files: ${usable.length} usable, ${users.length - usable.length} refused`;
  $("models-list").replaceChildren(...users.map((m) => el("li", { text: describeModel(m) })));
}

function describeModel(m) {
  if (m.state === "refused") return `${m.id}: refused: ${m.reason}`;
  const sha = m.sha256 ? m.sha256.slice(0, 12) : "?";
  return `${m.id}: ${m.arch} ×${m.scale}, ${m.purpose}, ${formatBytes(m.size_bytes || 0)}, sha256 ${sha}…, licence: ${m.license}`;
}

// The longest edge of a preview: "thumbnail", "inspector" or "largest" (the API's biggest ?max=).
export function previewEdge(kind) {
  return state.capabilities.previews[kind];
}
