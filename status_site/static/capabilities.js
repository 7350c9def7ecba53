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
}

// The longest edge of a preview: "thumbnail", "inspector" or "largest" (the API's biggest ?max=).
export function previewEdge(kind) {
  return state.capabilities.previews[kind];
}
