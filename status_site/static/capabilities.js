// Capabilities: whether this browser may upload and retry, the upload limits, the presets, the models an
// upload may choose, and the preview sizes the page asks for (the server's, so the page keeps no copy of them).
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
  renderModelChoice(capabilities.models || []);
}

// The upload form's Model select: the preset's model, or one the server says an upload may choose
// (`selectable`: weights here, an upscale or restore network). Rebuilt only when that list changes (a model
// file dropped into weights/ appears within a poll), keeping the user's choice while it is still listed.
function renderModelChoice(models) {
  const usable = models.filter((m) => m && m.selectable);
  const select = $("model");
  const label = (m) => (m.user ? `${m.id} (${m.arch} ×${m.scale}, your file)` : m.id);
  const signature = usable.map(label).join("\n");
  if (select.dataset.signature === signature) return;
  const chosen = select.value;
  select.replaceChildren(
    el("option", { value: "", text: "preset's model" }),
    ...usable.map((m) => el("option", { value: m.id, text: label(m) })),
  );
  select.value = usable.some((m) => m.id === chosen) ? chosen : "";
  select.dataset.signature = signature;
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
