// Load Video (Tune-A-Video): a muted, looping preview of the chosen clip and a line with its frame
// count, fps and size, so that frame_count, start_frame and frame_stride can be set knowing the clip.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const NODE_CLASS = "TAVLoadVideo";
const PREVIEW_HEIGHT = 200; // px of the video area; the info line comes below it

// The combo holds "name", "sub/name" or "name [input]" (the upload widget's annotation).
const plainName = (value) => value.replace(/ \[input\]$/, "");

// /view wants the folder apart from the name.
function viewURL(value) {
  const path = plainName(value);
  const slash = path.lastIndexOf("/");
  const params = new URLSearchParams({
    filename: path.slice(slash + 1),
    subfolder: slash < 0 ? "" : path.slice(0, slash),
    type: "input",
  });
  return api.apiURL(`/view?${params}`);
}

function describe(info) {
  const fps = Number(info.fps.toFixed(2)); // 29.97, but 12 rather than 12.00
  return `${info.frame_count} frames, ${fps} fps, ${info.width}x${info.height}`;
}

function createView() {
  const root = document.createElement("div");
  root.className = "tav-video-preview";
  Object.assign(root.style, { display: "flex", flexDirection: "column", gap: "4px" });

  const video = document.createElement("video");
  Object.assign(video, { muted: true, loop: true, autoplay: true, playsInline: true });
  Object.assign(video.style, { width: "100%", height: `${PREVIEW_HEIGHT}px`, objectFit: "contain",
                               background: "#000", borderRadius: "4px" });

  const info = document.createElement("div");
  info.className = "tav-clip-info";
  Object.assign(info.style, { font: "12px sans-serif", textAlign: "center", overflowWrap: "anywhere" });
  root.append(video, info);

  const view = { root, video, info, request: 0, text: "", isError: false, undecodable: false };
  // The node still loads clips that the browser cannot decode (e.g. MPEG-4 Part 2): say so, keep the info.
  video.addEventListener("error", () => {
    view.undecodable = video.hasAttribute("src");
    render(view);
  });
  return view;
}

function render(view) {
  const note = view.undecodable && !view.isError ? " (no preview: the browser cannot decode this clip)" : "";
  view.info.textContent = view.text + note;
  view.info.style.color = view.isError ? "var(--error-text, #f66)" : "var(--descrip-text, #999)";
}

function setText(view, text, isError = false) {
  Object.assign(view, { text, isError });
  render(view);
}

function clearVideo(view, text) {
  view.video.removeAttribute("src");
  view.video.load();
  setText(view, text, true);
}

async function showClip(view, value, known) {
  const request = ++view.request; // answers to an earlier choice may arrive late: drop them
  view.undecodable = false;
  if (!value) return clearVideo(view, "No video in ComfyUI's input folder: upload one.");
  // A workflow from elsewhere names clips this server lacks: say so rather than request them.
  if (!known.map(plainName).includes(plainName(value))) {
    return clearVideo(view, `${value} is not in ComfyUI's input folder: upload it or pick another clip.`);
  }
  view.video.src = viewURL(value);
  setText(view, "Reading the clip…");
  try {
    const response = await api.fetchApi(`/tuneavideo/clip_info?filename=${encodeURIComponent(value)}`);
    const body = await response.json();
    if (request !== view.request) return;
    if (response.ok) setText(view, describe(body));
    else setText(view, body.error ?? `The clip cannot be read (HTTP ${response.status}).`, true);
  } catch (error) {
    if (request === view.request) setText(view, `Clip info unavailable: ${error.message}`, true);
  }
}

// Room for the preview, also when a workflow saved without it restores a smaller node.
function fitNode(node) {
  const [width, height] = node.computeSize();
  node.setSize([Math.max(node.size[0], width, 300), Math.max(node.size[1], height)]);
}

const refreshers = new WeakMap(); // node -> shows the combo's current clip

function attachPreview(node) {
  const combo = node.widgets?.find((w) => w.name === "video");
  if (!combo) return;
  const view = createView();
  const widget = node.addDOMWidget("tav_video_preview", "video", view.root, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: () => PREVIEW_HEIGHT + 40,
  });
  widget.serialize = false; // a preview, not an input: never in the workflow or the prompt
  // The upload widget previews the clip too (controls, no autoplay, nothing at all when the browser
  // cannot decode it), in node.videoContainer when the node has one: a detached one keeps it off the
  // node, so that the clip shows once.
  node.videoContainer = document.createElement("div");
  // Under Vue nodes (frontend >= 1.27) the upload widget files the clip as the node's output and the
  // node draws a second, controls-only preview of it unless told that the node shows its own, as the
  // core nodes with their own previews (Image Crop, Painter) tell it. Older frontends ignore the flag.
  node.hideOutputImages = true;

  // The upload button replaces the combo's callback when the node is built, and calls it after an
  // upload: chaining it here covers both a choice in the list and an upload.
  const choices = () => {
    const values = combo.options.values ?? [];
    return typeof values === "function" ? values(combo, node) : values;
  };
  const show = () => showClip(view, combo.value, choices());
  const callback = combo.callback;
  combo.callback = function (...args) {
    const result = callback?.apply(this, args);
    show();
    return result;
  };
  refreshers.set(node, show);
  show();
  fitNode(node);
}

app.registerExtension({
  name: "TuneAVideo.LoadVideoPreview",
  nodeCreated(node) {
    if (node.constructor.comfyClass === NODE_CLASS) attachPreview(node);
  },
  // A loaded workflow sets the combo without calling its callback, and restores the saved size.
  loadedGraphNode(node) {
    const refresh = refreshers.get(node);
    if (!refresh) return;
    refresh();
    fitNode(node);
  },
});
