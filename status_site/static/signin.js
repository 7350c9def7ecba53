// Sign-in (protect_reads): a dialog asks for the API token when a read is refused for want of it.
import { api } from "./api.js";
import { renderCapabilities } from "./capabilities.js";
import { $, pollSoon } from "./state.js";

export function showSignIn(message) {
  const dialog = $("signin");
  $("signin-error").textContent = message || "";
  if (!dialog.open) {
    dialog.showModal();
    $("signin-token").focus();
  }
}

async function signIn(event) {
  event.preventDefault();
  const token = $("signin-token").value.trim();
  sessionStorage.setItem("restorer-token", token);
  $("token").value = token;
  let capabilities;
  try {
    capabilities = await api("/capabilities");
  } catch (err) {
    $("signin-error").textContent = `Could not check the token: ${err.message}`;
    return;
  }
  if (!capabilities.signed_in) {
    sessionStorage.removeItem("restorer-token");
    $("token").value = "";
    $("signin-error").textContent = "That token is not right: use the daemon's RESTORER_API_TOKEN.";
    return;
  }
  $("signin-token").value = "";
  $("signin").close();
  renderCapabilities(capabilities);
  for (const id of ["queue", "failed", "history", "current"]) $(id).dataset.signature = "";
  pollSoon();
}

export function setupSignIn() {
  $("signin-form").addEventListener("submit", signIn);
  // Escape must not dismiss the prompt: nothing behind it can load without the token.
  $("signin").addEventListener("cancel", (event) => event.preventDefault());
}
