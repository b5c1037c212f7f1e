"""`make demo`: run the Tune-A-Video example workflow on a real ComfyUI server and write a video.

1. Start the pinned ComfyUI with the pack installed, in a fresh base directory.
2. Use a real SD1.x checkpoint when there is one (TAV_CHECKPOINT, or ComfyUI's models/checkpoints);
   otherwise the random-weight test checkpoint, whose output is noise.
3. Queue example_workflows/api/tune-a-video.json over HTTP on the project's own demo clip, with the
   frame count, size and step counts lowered so that it runs in minutes on a CPU.
4. Show progress, copy the video to ./outputs, print its path, stop the server.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tav_core.testing.server import ComfyServer, comfyui_dir  # noqa: E402
from tav_core.video import write_synthetic_clip  # noqa: E402

WORKFLOW = ROOT / "example_workflows" / "api" / "tune-a-video.json"
DEMO_CLIP = "tav-demo-clip.mp4"
# CPU-sized settings; on a GPU use the workflow's paper defaults.
DEMO_SETTINGS = {"frame_count": 8, "width": 128, "height": 128}
DEMO_STEPS = {"TAVOneShotTune": {"steps": 20, "learning_rate": 3e-5},
              "TAVDDIMInvert": {"steps": 10}, "TAVVideoSample": {"steps": 10}}


def real_checkpoint() -> Path | None:
    named = os.environ.get("TAV_CHECKPOINT")
    if named:
        path = Path(named)
        if not path.is_file():
            sys.exit(f"TAV_CHECKPOINT={named} is not a file")
        return path
    folder = comfyui_dir() / "models" / "checkpoints"
    found = sorted(p for p in folder.glob("*") if p.suffix in (".safetensors", ".ckpt"))
    return found[0] if found else None


def prepare_prompt(checkpoint_name: str) -> dict:
    prompt = json.loads(WORKFLOW.read_text())
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = checkpoint_name
        elif node["class_type"] == "TAVLoadVideo":
            inputs.update(video=DEMO_CLIP, **DEMO_SETTINGS)
        inputs.update(DEMO_STEPS.get(node["class_type"], {}))
    return prompt


def show_progress(kind: str, data: dict) -> None:
    if kind == "executing" and data.get("node"):
        print(f"  running node {data['node']}", flush=True)
    elif kind == "progress":
        print(f"\r    step {data['value']}/{data['max']}", end="\n" if data["value"] == data["max"] else "",
              flush=True)


def main() -> None:
    base = ROOT / ".cache" / "demo-run"
    shutil.rmtree(base, ignore_errors=True)
    (base / "input").mkdir(parents=True)
    (base / "models" / "checkpoints").mkdir(parents=True)
    write_synthetic_clip(base / "input" / DEMO_CLIP, frames=24, size=256, fps=12)

    checkpoint = real_checkpoint()
    if checkpoint is None:
        from tav_core.testing.checkpoints import cached_sd15_checkpoint

        checkpoint = cached_sd15_checkpoint(size="tiny")
        print("No SD1.x checkpoint found (set TAV_CHECKPOINT or put one in ComfyUI's "
              "models/checkpoints).\nUsing a RANDOM-WEIGHT test checkpoint: the pipeline runs for "
              "real, but the output video will be noise.")
    (base / "models" / "checkpoints" / checkpoint.name).symlink_to(checkpoint.resolve())

    print(f"Starting ComfyUI ({comfyui_dir()}) ...")
    started = time.monotonic()
    with ComfyServer(base) as server:
        print(f"ComfyUI is up at {server.url}; queueing {WORKFLOW.relative_to(ROOT)}")
        history = server.run(prepare_prompt(checkpoint.name), timeout=3000, on_message=show_progress)
        videos = [p for p in server.output_files(history) if p.suffix in (".mp4", ".webp", ".webm")]
    if not videos:
        sys.exit(f"the workflow finished but wrote no video; see {base / 'server.log'}")
    (ROOT / "outputs").mkdir(exist_ok=True)
    result = ROOT / "outputs" / videos[0].name
    shutil.copy2(videos[0], result)
    print(f"Done in {time.monotonic() - started:.0f} s. Video: {result}")


if __name__ == "__main__":
    main()
