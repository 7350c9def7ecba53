// The quality inspector: before and after in one stage, a divider to drag, pan and zoom, face boxes.
import { API, api, openProtected, showImage } from "./api.js";
import { previewEdge } from "./capabilities.js";
import { el, formatBytes, formatDuration, formatSize, formatTime, jobName } from "./format.js";
import { $ } from "./state.js";

const view = { job: null, width: 0, height: 0, zoom: 1, x: 0, y: 0, split: 0.5, loaded: 0, opener: null };

export async function openInspector(jobId) {
  const dialog = $("inspector");
  view.opener = document.activeElement;
  $("inspector-title").textContent = `Job #${jobId}`;
  $("inspector-facts").replaceChildren();
  $("inspector-loading").textContent = "Loading images…";
  $("inspector-loading").hidden = false;
  $("before-img").removeAttribute("src");
  $("after-img").removeAttribute("src");
  $("inspector-note").hidden = true;
  if (!dialog.open) dialog.showModal();
  let job;
  try {
    job = await api(`/jobs/${jobId}`);
  } catch (err) {
    $("inspector-loading").textContent = `Could not load job #${jobId}: ${err.message}`;
    return;
  }
  view.job = job;
  const report = job.report || {};
  const outSize = report.output_size || [0, 0];
  view.width = outSize[0];
  view.height = outSize[1];
  view.loaded = 0;
  $("inspector-title").textContent = jobName(job);
  renderFacts(job);
  renderFaces(job);
  const before = $("before-img");
  const after = $("after-img");
  const loaded = () => {
    view.loaded += 1;
    if (!view.width || !view.height) {
      view.width = after.naturalWidth;
      view.height = after.naturalHeight;
    }
    if (view.loaded === 2) {
      $("inspector-loading").hidden = true;
      fit();
    }
  };
  const failed = (which) => () => {
    $("inspector-loading").hidden = false;
    $("inspector-loading").textContent = `The ${which} image is not available any more (moved or deleted).`;
  };
  before.onload = loaded;
  after.onload = loaded;
  before.onerror = failed("input");
  after.onerror = failed("output");
  showImage(before, `${API}/jobs/${job.id}/input?max=${previewEdge("inspector")}`);
  showImage(after, `${API}/jobs/${job.id}/output?max=${previewEdge("inspector")}`);
  // Never a silent spinner: say what is going on if the previews take long (big images, busy CPU).
  clearTimeout(view.slowTimer);
  view.slowTimer = setTimeout(() => {
    if (view.job === job && view.loaded < 2 && !$("inspector-loading").hidden) {
      $("inspector-loading").textContent = "Still loading: large images take a while to prepare. Close and retry if it stays.";
    }
  }, 15000);
  $("viewport").focus();
}

function renderFacts(job) {
  const report = job.report || {};
  const facts = [
    ["Input", `${formatSize(report.input_size)} · ${report.input_mode || ""} · ${formatBytes(job.input && job.input.size_bytes)}`],
    ["Output", `${formatSize(report.output_size)} · ${report.output_mode || ""} · ${formatBytes(job.output && job.output.size_bytes)}`],
    ["Model", `${report.model || "?"} ×${report.scale || "?"}`],
    ["Engine", `${report.backend || "?"} on ${report.device || "?"} (${report.precision || "?"})`],
    ["Time", `${formatDuration(report.seconds)} · finished ${formatTime(job.finished_at)}`],
    ["Faces", `${(report.faces || []).length} found, ${(report.faces || []).filter((f) => f.restored).length} restored`],
  ];
  if (report.colour) facts.push(["Colour", `${report.colour.path}: ${report.colour.reason}`]);
  if (report.notes && report.notes.length) facts.push(["Notes", report.notes.join("; ")]);
  $("inspector-facts").replaceChildren(...facts.flatMap(([name, value]) => [el("dt", { text: name }), el("dd", { text: value })]));
}

function renderFaces(job) {
  const layer = $("faces-layer");
  const faces = (job.report && job.report.faces) || [];
  layer.replaceChildren(
    ...faces.map((face, index) => {
      const [x0, y0, x1, y1] = face.box;
      const box = el("div", { class: "face-box" }, el("span", { text: `${index + 1}${face.restored ? "" : " (kept)"} ${face.score.toFixed(2)}` }));
      Object.assign(box.style, { left: `${x0}px`, top: `${y0}px`, width: `${x1 - x0}px`, height: `${y1 - y0}px` });
      return box;
    }),
  );
  $("show-faces").disabled = faces.length === 0;
  layer.hidden = !$("show-faces").checked;
}

function applyView() {
  const viewport = $("viewport");
  const stage = $("stage");
  const w = `${view.width}px`;
  const h = `${view.height}px`;
  // Both layers live in output-pixel coordinates: the input is stretched to the output size, so the
  // same stage transform moves and zooms them together.
  for (const node of [$("before-img"), $("after-img"), $("after-clip"), $("faces-layer")]) {
    node.style.width = w;
    node.style.height = h;
  }
  stage.style.width = w;
  stage.style.height = h;
  stage.style.transform = `translate(${view.x}px, ${view.y}px) scale(${view.zoom})`;
  stage.classList.toggle("pixelated", view.zoom * window.devicePixelRatio >= 4);
  const splitX = view.split * viewport.clientWidth;
  const clipLeft = Math.max(0, (splitX - view.x) / view.zoom);
  $("after-clip").style.clipPath = `inset(0 0 0 ${clipLeft}px)`;
  $("divider").style.left = `${splitX}px`;
  $("slider").value = String(Math.round(view.split * 100));
  for (const box of document.querySelectorAll(".face-box")) {
    box.style.borderWidth = `${2 / view.zoom}px`;
    box.firstChild.style.fontSize = `${12 / view.zoom}px`;
  }
}

function fit() {
  const viewport = $("viewport");
  if (!view.width || !view.height) return;
  view.zoom = Math.min(viewport.clientWidth / view.width, viewport.clientHeight / view.height);
  view.x = (viewport.clientWidth - view.width * view.zoom) / 2;
  view.y = (viewport.clientHeight - view.height * view.zoom) / 2;
  applyView();
}

function zoomAt(factor, cx, cy) {
  const viewport = $("viewport");
  if (cx === undefined) {
    cx = viewport.clientWidth / 2;
    cy = viewport.clientHeight / 2;
  }
  const zoom = Math.min(64, Math.max(0.02, view.zoom * factor));
  view.x = cx - ((cx - view.x) * zoom) / view.zoom;
  view.y = cy - ((cy - view.y) * zoom) / view.zoom;
  view.zoom = zoom;
  applyView();
}

function oneToOne() {
  // One output pixel per device pixel, centred on the middle of the viewport.
  zoomAt(1 / window.devicePixelRatio / view.zoom);
  loadFullResolution();
}

// The inspector opens on previews (the server's "inspector" edge); true 1:1 needs the output's own pixels,
// which the API gives up to its largest preview; a bigger output opens in a tab.
function loadFullResolution() {
  const after = $("after-img");
  const note = $("inspector-note");
  if (!view.job || !after.naturalWidth || after.naturalWidth >= view.width) return;
  const fullUrl = `${API}/jobs/${view.job.id}/output`;
  const largest = previewEdge("largest");
  if (Math.max(view.width, view.height) <= largest) {
    note.replaceChildren(`Loading the full ${view.width} × ${view.height} output for a true 1:1 view…`);
    note.hidden = false;
    after.onload = () => {
      note.hidden = true;
    };
    showImage(after, `${fullUrl}?max=${largest}`);
    return;
  }
  const scale = (view.width / after.naturalWidth).toFixed(1);
  note.replaceChildren(
    `The output is ${view.width} × ${view.height}: this view shows a ${after.naturalWidth} px preview scaled ×${scale}. `,
    el("a", { href: fullUrl, target: "_blank", rel: "noopener", text: "Open the full-size output", onclick: openProtected }),
  );
  note.hidden = false;
}

export function setupInspector() {
  const viewport = $("viewport");
  const divider = $("divider");
  let drag = null;
  viewport.addEventListener("pointerdown", (event) => {
    const onDivider = event.target === divider || divider.contains(event.target);
    drag = { kind: onDivider ? "split" : "pan", x: event.clientX, y: event.clientY, vx: view.x, vy: view.y };
    viewport.setPointerCapture(event.pointerId);
    viewport.classList.toggle("dragging", !onDivider);
  });
  viewport.addEventListener("pointermove", (event) => {
    if (!drag) return;
    if (drag.kind === "split") {
      const rect = viewport.getBoundingClientRect();
      view.split = Math.min(1, Math.max(0, (event.clientX - rect.left) / rect.width));
    } else {
      view.x = drag.vx + event.clientX - drag.x;
      view.y = drag.vy + event.clientY - drag.y;
    }
    applyView();
  });
  const end = () => {
    drag = null;
    viewport.classList.remove("dragging");
  };
  viewport.addEventListener("pointerup", end);
  viewport.addEventListener("pointercancel", end);
  viewport.addEventListener(
    "wheel",
    (event) => {
      event.preventDefault();
      const rect = viewport.getBoundingClientRect();
      zoomAt(event.deltaY < 0 ? 1.25 : 0.8, event.clientX - rect.left, event.clientY - rect.top);
    },
    { passive: false },
  );
  viewport.addEventListener("keydown", (event) => {
    const step = 60;
    const actions = {
      ArrowLeft: () => (view.x += step),
      ArrowRight: () => (view.x -= step),
      ArrowUp: () => (view.y += step),
      ArrowDown: () => (view.y -= step),
      "+": () => zoomAt(1.25),
      "=": () => zoomAt(1.25),
      "-": () => zoomAt(0.8),
      0: fit,
      1: oneToOne,
      "[": () => (view.split = Math.max(0, view.split - 0.05)),
      "]": () => (view.split = Math.min(1, view.split + 0.05)),
      f: () => $("show-faces").click(),
    };
    const action = actions[event.key];
    if (!action) return;
    event.preventDefault();
    action();
    applyView();
  });
  $("slider").addEventListener("input", (event) => {
    view.split = Number(event.target.value) / 100;
    applyView();
  });
  $("zoom-in").addEventListener("click", () => zoomAt(1.25));
  $("zoom-out").addEventListener("click", () => zoomAt(0.8));
  $("zoom-fit").addEventListener("click", fit);
  $("zoom-1to1").addEventListener("click", oneToOne);
  $("show-faces").addEventListener("change", (event) => ($("faces-layer").hidden = !event.target.checked));
  $("inspector-close").addEventListener("click", () => $("inspector").close());
  $("inspector").addEventListener("close", () => {
    if (view.opener && view.opener.focus) view.opener.focus();
  });
  window.addEventListener("resize", () => {
    if ($("inspector").open) applyView();
  });
}
