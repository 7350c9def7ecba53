// Talking to the daemon: JSON requests with a timeout, and the API token (protect_reads, writes).
// The token lives in sessionStorage (this tab only) and travels in the Authorization header: never in a
// URL, so it stays out of the history, the Referer and every access log.
import { $, state } from "./state.js";

export const API = "/api/v1";
const FETCH_TIMEOUT_MS = 8000;

class HttpError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

export async function api(path, options = {}) {
  const controller = new AbortController();
  const timeout = setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
  const headers = Object.assign({ Accept: "application/json" }, authHeaders(), options.headers || {});
  try {
    const response = await fetch(API + path, Object.assign({}, options, { headers, signal: controller.signal, cache: "no-store" }));
    const text = await response.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch (_err) {
      // A proxy error page, not our JSON: treat as the daemon being unreachable.
      throw new HttpError(response.status, `unexpected reply (HTTP ${response.status})`);
    }
    if (!response.ok && !(response.status === 503 && path === "/health")) {
      throw new HttpError(response.status, (body && (body.detail || body.title)) || `HTTP ${response.status}`);
    }
    return body;
  } catch (err) {
    if (err.name === "AbortError") throw new HttpError(0, "the daemon did not answer in time");
    if (err instanceof HttpError) throw err;
    throw new HttpError(0, "the daemon is unreachable");
  } finally {
    clearTimeout(timeout);
  }
}

export function tokenValue() {
  const box = $("token");
  return box && box.value ? box.value.trim() : sessionStorage.getItem("restorer-token") || "";
}

function authHeaders() {
  const token = tokenValue();
  return token ? { Authorization: "Bearer " + token } : {};
}

function readsNeedToken() {
  return !!(state.capabilities && state.capabilities.reads_require_token);
}

// With open reads an image is a plain src; with protect_reads it is fetched with the token header and
// shown from a blob URL (revoked once decoded). A failed fetch fires the image's own error handlers.
export function showImage(img, url) {
  if (!readsNeedToken()) {
    img.src = url;
    return;
  }
  fetch(url, { headers: authHeaders() })
    .then((response) => {
      if (!response.ok) throw new HttpError(response.status, `HTTP ${response.status}`);
      return response.blob();
    })
    .then((blob) => {
      const blobUrl = URL.createObjectURL(blob);
      img.addEventListener("load", () => URL.revokeObjectURL(blobUrl), { once: true });
      img.src = blobUrl;
    })
    .catch(() => img.dispatchEvent(new Event("error")));
}

export function canWrite() {
  return !!(state.capabilities && (state.capabilities.can_write || (state.capabilities.token_required && tokenValue())));
}

// A link to a file opens a new tab without our header: under protect_reads open a blob of it instead.
export function openProtected(event) {
  if (!readsNeedToken()) return;
  event.preventDefault();
  const tab = window.open("", "_blank");
  fetch(event.currentTarget.href, { headers: authHeaders() })
    .then((response) => (response.ok ? response.blob() : Promise.reject(new Error(`HTTP ${response.status}`))))
    .then((blob) => (tab.location.href = URL.createObjectURL(blob)))
    .catch(() => tab && tab.close());
}
