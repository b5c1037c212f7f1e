"""The long-clip example workflow on a real server: a 96-frame clip in, a 96-frame video out.

Windows of 16 frames (overlap 4) in tuning, inversion and sampling, with the tiny models at 64x64
and two steps each; frame_count 0 loads the clip to its end.
"""
import json
from pathlib import Path

import cv2
import pytest

from tav_core.testing.server import PromptFailed
from tav_core.video import write_synthetic_clip

# CI time: the heaviest server run; on the newest ComfyUI only (scripts/test.sh). tests/comfy/test_windows.py
# covers the windowed paths on both.
pytestmark = pytest.mark.newest_comfyui_only
API = Path(__file__).resolve().parents[2] / "example_workflows" / "api" / "long-clip.json"
FRAMES, FPS = 96, 24
CLIP = "long-clip.mp4"


@pytest.fixture(scope="module")
def long_clip(server):
    write_synthetic_clip(server.base_dir / "input" / CLIP, frames=FRAMES, size=64, fps=FPS)
    return CLIP


def lowered(tiny_checkpoint, **overrides):
    prompt = json.loads(API.read_text())
    lower = {"CheckpointLoaderSimple": {"ckpt_name": tiny_checkpoint.name},
             "TAVLoadVideo": {"video": CLIP, "frame_count": 0, "width": 64, "height": 64},
             "TAVOneShotTune": {"steps": 2}, "TAVDDIMInvert": {"steps": 2}, "TAVVideoSample": {"steps": 2}}
    for node in prompt.values():
        node["inputs"].update(lower.get(node["class_type"], {}))
        node["inputs"].update(overrides.get(node["class_type"], {}))
    return prompt


def test_a_96_frame_clip_gives_a_96_frame_video(server, long_clip, tiny_checkpoint):
    prompt = lowered(tiny_checkpoint)
    assert prompt["6"]["inputs"]["window_frames"] == 16 and prompt["8"]["inputs"]["window_overlap"] == 4
    history = server.run(prompt, timeout=900)
    videos = [p for p in server.output_files(history) if p.suffix == ".mp4"]
    assert len(videos) == 1
    capture = cv2.VideoCapture(str(videos[0]))
    fps, count = capture.get(cv2.CAP_PROP_FPS), 0
    while capture.read()[0]:
        count += 1
    assert count == FRAMES
    assert fps == pytest.approx(FPS)  # frame_stride 1: the clip's own fps


def test_bad_window_values_are_refused_naming_the_input(server, long_clip, tiny_checkpoint):
    with pytest.raises(RuntimeError, match=r"400.*window_frames"):
        server.queue(lowered(tiny_checkpoint, TAVVideoSample={"window_frames": -1}))
    with pytest.raises(PromptFailed, match="window_overlap 16 must be smaller than window_frames 16"):
        server.run(lowered(tiny_checkpoint, TAVDDIMInvert={"window_overlap": 16},
                           TAVOneShotTune={"steps": 1}), timeout=600)
