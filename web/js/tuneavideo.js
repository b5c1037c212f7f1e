// Tune-A-Video frontend extension: registers the pack with the ComfyUI frontend.
import { app } from "../../../scripts/app.js";

app.registerExtension({
  name: "TuneAVideo.Core",
});
