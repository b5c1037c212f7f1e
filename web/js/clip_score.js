// Video CLIP Score (Tune-A-Video): the scores of the last run, shown on the node. nodes/score.py sends
// them as the node's UI output ("text" for people, "clip_score" for API users' /history).
import { app } from "../../../scripts/app.js";

const NODE_CLASS = "TAVCLIPScore";
const EMPTY = "The scores appear here after a run.";

function attachScores(node) {
  const box = document.createElement("div");
  box.className = "tav-clip-score";
  Object.assign(box.style, { font: "13px sans-serif", color: "var(--input-text, #ddd)", whiteSpace: "pre",
                             padding: "4px", textAlign: "left" });
  box.textContent = EMPTY;
  const widget = node.addDOMWidget("tav_clip_score", "scores", box, { serialize: false, hideOnZoom: false,
                                                                       getMinHeight: () => 64 });
  widget.serialize = false; // a display, not an input
  const onExecuted = node.onExecuted;
  node.onExecuted = function (output) {
    const scores = output?.clip_score?.[0];
    box.textContent = scores
      ? Object.entries(scores).map(([name, value]) => `${name.replaceAll("_", " ")}: ${value.toFixed(2)}`).join("\n")
      : EMPTY;
    return onExecuted?.apply(this, arguments);
  };
}

app.registerExtension({
  name: "TuneAVideo.CLIPScore",
  nodeCreated(node) {
    if (node.constructor.comfyClass === NODE_CLASS) attachScores(node);
  },
});
