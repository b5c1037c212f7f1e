// One-Shot Tune (Tune-A-Video): a live loss curve on the node, drawn from the "tuneavideo.loss"
// messages that nodes/tune.py sends after every optimiser step, so a run can be judged (and stopped)
// while it trains instead of after it.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const NODE_CLASS = "TAVOneShotTune";
const LOSS_EVENT = "tuneavideo.loss";
const CANVAS_HEIGHT = 180;
const MARGIN = { left: 48, right: 10, top: 10, bottom: 26 };
const RAW_COLOR = "rgba(110, 170, 255, 0.55)";
const AVERAGE_COLOR = "#ffa040";
const AXIS_COLOR = "#888";

const views = new WeakMap(); // node -> { canvas, caption, steps, points }

// Trailing mean: the per-step loss is noisy (one random timestep per step), its trend is what matters.
function movingAverage(values, window) {
  let sum = 0;
  return values.map((v, i) => {
    sum += v - (i >= window ? values[i - window] : 0);
    return sum / Math.min(i + 1, window);
  });
}

function draw(view) {
  const { canvas, points, steps } = view;
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (!width || !height) return; // hidden: the resize observer draws once it shows
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  if (!points.length) return; // cleared: the caption says a run has not started

  const losses = points.map((p) => p.loss);
  let lo = Math.min(...losses);
  let hi = Math.max(...losses);
  if (hi - lo < 1e-12) [lo, hi] = [lo - 0.5 * Math.abs(lo || 1), hi + 0.5 * Math.abs(hi || 1)];
  const plotW = width - MARGIN.left - MARGIN.right;
  const plotH = height - MARGIN.top - MARGIN.bottom;
  const x = (step) => MARGIN.left + ((step - 1) / Math.max(steps - 1, 1)) * plotW;
  const y = (loss) => MARGIN.top + ((hi - loss) / (hi - lo)) * plotH;

  ctx.strokeStyle = AXIS_COLOR;
  ctx.fillStyle = AXIS_COLOR;
  ctx.lineWidth = 1;
  ctx.font = "11px sans-serif";
  ctx.beginPath();
  ctx.moveTo(MARGIN.left, MARGIN.top);
  ctx.lineTo(MARGIN.left, MARGIN.top + plotH);
  ctx.lineTo(MARGIN.left + plotW, MARGIN.top + plotH);
  ctx.stroke();
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  ctx.fillText(hi.toPrecision(3), MARGIN.left - 4, MARGIN.top);
  ctx.fillText(lo.toPrecision(3), MARGIN.left - 4, MARGIN.top + plotH);
  ctx.textBaseline = "top";
  ctx.textAlign = "left";
  ctx.fillText("1", MARGIN.left, MARGIN.top + plotH + 4);
  ctx.textAlign = "right";
  ctx.fillText(String(steps), MARGIN.left + plotW, MARGIN.top + plotH + 4);
  ctx.textAlign = "center";
  ctx.fillText("step", MARGIN.left + plotW / 2, MARGIN.top + plotH + 4);
  ctx.save();
  ctx.translate(12, MARGIN.top + plotH / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.fillText("loss", 0, 0);
  ctx.restore();

  const line = (values, color, lineWidth) => {
    ctx.strokeStyle = color;
    ctx.lineWidth = lineWidth;
    ctx.beginPath();
    values.forEach((v, i) => ctx[i ? "lineTo" : "moveTo"](x(points[i].step), y(v)));
    if (values.length === 1) ctx.arc(x(points[0].step), y(values[0]), 1.5, 0, 2 * Math.PI);
    ctx.stroke();
  };
  line(losses, RAW_COLOR, 1);
  line(movingAverage(losses, Math.min(50, Math.max(2, Math.round(steps / 20)))), AVERAGE_COLOR, 2);
}

function updateCaption(view) {
  const last = view.points.at(-1);
  view.caption.textContent = last
    ? `step ${last.step}/${view.steps}, loss ${last.loss.toPrecision(4)}`
    : "The loss curve appears here while the node tunes.";
}

function attachCurve(node) {
  const root = document.createElement("div");
  root.className = "tav-loss-curve";
  Object.assign(root.style, { display: "flex", flexDirection: "column", gap: "2px" });
  const canvas = document.createElement("canvas");
  Object.assign(canvas.style, { width: "100%", height: `${CANVAS_HEIGHT}px` });
  const caption = document.createElement("div");
  Object.assign(caption.style, { font: "12px sans-serif", color: "var(--descrip-text, #999)", textAlign: "center" });
  root.append(canvas, caption);

  const view = { canvas, caption, steps: 0, points: [] };
  views.set(node, view);
  const widget = node.addDOMWidget("tav_loss_curve", "canvas", root, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: () => CANVAS_HEIGHT + 24,
  });
  widget.serialize = false; // a display, not an input
  // The canvas' pixel size follows its on-screen size: redraw when the node is resized or shown.
  const observer = new ResizeObserver(() => draw(view));
  observer.observe(canvas);
  const onRemoved = node.onRemoved;
  node.onRemoved = function (...args) {
    observer.disconnect();
    return onRemoved?.apply(this, args);
  };
  updateCaption(view);
  const [width, height] = node.computeSize();
  node.setSize([Math.max(node.size[0], width), Math.max(node.size[1], height)]);
}

// Messages name the node by its execution id: "5", or "12:5" for node 5 inside subgraph node 12.
function nodeForExecutionId(id) {
  let graph = app.graph;
  let node = null;
  for (const part of String(id).split(":")) {
    node = graph?.getNodeById(Number(part)) ?? null;
    graph = node?.subgraph;
  }
  return node;
}

function onLoss({ detail }) {
  const view = views.get(nodeForExecutionId(detail.node));
  if (!view) return; // a node of another tab's graph, or one removed since
  if (detail.step === 1) view.points = []; // a new run
  view.steps = detail.steps;
  view.points.push({ step: detail.step, loss: detail.loss });
  updateCaption(view);
  draw(view);
}

app.registerExtension({
  name: "TuneAVideo.LossCurve",
  setup() {
    api.addEventListener(LOSS_EVENT, onLoss);
  },
  nodeCreated(node) {
    if (node.constructor.comfyClass === NODE_CLASS) attachCurve(node);
  },
});
