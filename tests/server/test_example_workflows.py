"""Every API-format example workflow runs to success on a real server with the tiny models.

The test lowers frames, size and step counts, and points model names at the random test models.
"""
import json
import shutil
from pathlib import Path

import cv2
import pytest

from tav_core.testing.checkpoints import cached_sd15_controlnet, write_sd15_lora

API_DIR = Path(__file__).resolve().parents[2] / "example_workflows" / "api"
FRAMES = 4
LOWERED = {
    "TAVLoadVideo": {"video": "clip.mp4", "frame_count": FRAMES, "width": 64, "height": 64},
    "TAVOneShotTune": {"steps": 2},
    "TAVDDIMInvert": {"steps": 3},
    "TAVVideoSample": {"steps": 3},
    "EmptyLatentImage": {"width": 64, "height": 64, "batch_size": FRAMES},
    "TAVNullTextInvert": {"steps": 3, "inner_steps": 2},
    "TAVAttentionEditSample": {"steps": 3},
}


@pytest.fixture(scope="module")
def test_models(server, tiny_checkpoint):
    """Model names, as the server lists them, for each loader the workflows use."""
    controlnets = server.base_dir / "models" / "controlnet"
    loras = server.base_dir / "models" / "loras"
    controlnets.mkdir(parents=True, exist_ok=True)
    loras.mkdir(parents=True, exist_ok=True)
    shutil.copy(cached_sd15_controlnet(), controlnets / "tiny-controlnet.safetensors")
    write_sd15_lora(loras / "tiny-lora.safetensors")
    return {"CheckpointLoaderSimple": {"ckpt_name": tiny_checkpoint.name},
            "ControlNetLoader": {"control_net_name": "tiny-controlnet.safetensors"},
            "LoraLoader": {"lora_name": "tiny-lora.safetensors"}}


def lowered(name: str, overrides: dict) -> dict:
    prompt = json.loads((API_DIR / f"{name}.json").read_text())
    for node in prompt.values():
        node["inputs"].update(LOWERED.get(node["class_type"], {}))
        node["inputs"].update(overrides.get(node["class_type"], {}))
    return prompt


def check_videos(server, history, expected: int):
    videos = [p for p in server.output_files(history) if p.suffix == ".mp4"]
    assert len(videos) == expected
    for video in videos:
        capture = cv2.VideoCapture(str(video))
        count = 0
        while capture.read()[0]:
            count += 1
        assert count == FRAMES, f"{video.name} has {count} frames"


@pytest.fixture(scope="module")
def paper_run(server, test_models):
    history = server.run(lowered("tune-a-video", test_models), timeout=600)
    saved = [n for n in history["outputs"].values() if "text" in n]
    return history, saved[0]["text"][0]


def test_paper_pipeline(server, paper_run):
    history, saved_name = paper_run
    check_videos(server, history, 1)
    assert saved_name.endswith(".safetensors")


def test_reuse_tuned_weights(server, paper_run, test_models):
    _, saved_name = paper_run
    history = server.run(lowered("reuse-tuned-weights", {**test_models, "TAVLoadTuned": {"weights": saved_name}}),
                         timeout=600)
    check_videos(server, history, 3)


@pytest.mark.parametrize("name", ["controlnet-pose", "personalised-lora", "text-to-video-from-noise"])
def test_other_workflows(server, test_models, name):
    history = server.run(lowered(name, test_models), timeout=600)
    check_videos(server, history, 1)


def test_sdxl_workflow(server):
    from tav_core.testing import sd2_sdxl

    checkpoint = sd2_sdxl.cached_checkpoint("sdxl")
    link = server.base_dir / "models" / "checkpoints" / checkpoint.name
    if not link.exists():
        link.symlink_to(checkpoint)
    history = server.run(lowered("tune-a-video-sdxl", {"CheckpointLoaderSimple": {"ckpt_name": checkpoint.name}}),
                         timeout=600)
    check_videos(server, history, 1)


def test_attention_edit_workflow(server, test_models):
    history = server.run(lowered("attention-edit", test_models), timeout=600)
    check_videos(server, history, 2)  # the edit and the source's reconstruction


def test_every_workflow_is_covered():
    covered = {"tune-a-video", "reuse-tuned-weights", "controlnet-pose", "personalised-lora",
               "text-to-video-from-noise", "tune-a-video-sdxl", "attention-edit",
               "long-clip"}  # long-clip: tests/server/test_long_clip.py
    assert {p.stem for p in API_DIR.glob("*.json")} == covered
