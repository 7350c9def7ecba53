// Uploads: the drop zone, the file chooser and the token box.
import { API, canWrite, tokenValue } from "./api.js";
import { renderCapabilities } from "./capabilities.js";
import { formatBytes } from "./format.js";
import { $, pollSoon, state } from "./state.js";

export function setupUpload() {
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
  const model = $("model").value;
  if (model) form.append("model", model);
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
