"""Null-Text Inversion and Video Edit on servers started with the half-precision and fp8 UNet options.

On this CPU `--bf16-unet`, `--fp16-unet` and `--fp8_e4m3fn-unet` store the UNet in that dtype and compute
through manual casting, the path GPU users hit. The null-text optimisation differentiates through those
casts and the edit patches attention inside them: the attention-edit example workflow must run to its two
videos, with every frame decoded, under each option.
"""
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from tav_core.testing.server import ComfyServer

pytestmark = pytest.mark.pinned_comfyui_only  # CI time; the precision matrix is pinned-only too
API = Path(__file__).resolve().parents[2] / "example_workflows" / "api" / "attention-edit.json"
FRAMES = 2
LOWERED = {
    "TAVLoadVideo": {"video": "clip.mp4", "frame_count": FRAMES, "width": 64, "height": 64},
    "TAVOneShotTune": {"steps": 2},
    "TAVNullTextInvert": {"steps": 2, "inner_steps": 2},
    "TAVAttentionEditSample": {"steps": 2},
}


@pytest.mark.parametrize("launch_option", ["--bf16-unet", "--fp16-unet", "--fp8_e4m3fn-unet"])
def test_attention_edit_workflow_runs_under(launch_option, tmp_path, tiny_checkpoint, synthetic_clip):
    prompt = json.loads(API.read_text())
    for node in prompt.values():
        node["inputs"].update(LOWERED.get(node["class_type"], {}))
        if node["class_type"] == "CheckpointLoaderSimple":
            node["inputs"]["ckpt_name"] = tiny_checkpoint.name
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / tiny_checkpoint.name).symlink_to(tiny_checkpoint)
    (tmp_path / "input").mkdir()
    shutil.copy(synthetic_clip, tmp_path / "input" / "clip.mp4")
    with ComfyServer(tmp_path, extra_args=(launch_option,)) as server:
        history = server.run(prompt, timeout=600)
        videos = [p for p in server.output_files(history) if p.suffix == ".mp4"]
    assert len(videos) == 2  # the edit and the source's reconstruction
    for video in videos:
        capture = cv2.VideoCapture(str(video))
        frames = []
        while (read := capture.read())[0]:
            frames.append(read[1])
        assert len(frames) == FRAMES, video.name
        assert all(np.isfinite(f).all() and f.std() > 0 for f in frames), f"{video.name} has a blank frame"
