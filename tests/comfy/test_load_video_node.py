"""The Load Video node inside a real (in-process) ComfyUI: schema, execute, errors, fingerprint.

Uses the `pack` fixture of tests/comfy/conftest.py: the pack as ComfyUI's own
custom-node loader imported it, so relative imports resolve as in production.
"""
import shutil

import pytest
import torch

PREFIX = "Load Video (Tune-A-Video): "


@pytest.fixture
def node(pack):
    return pack.nodes.video.LoadVideo


@pytest.fixture
def clip_dir(input_dir):
    """The test's ComfyUI input folder holding a synthetic clip.mp4 and a non-video file."""
    from tav_core.video import write_synthetic_clip

    write_synthetic_clip(input_dir / "clip.mp4", frames=16, size=(160, 96), fps=12)
    (input_dir / "notes.txt").write_text("not a video")
    return input_dir


def _run(node, **overrides):
    params = dict(video="clip.mp4", frame_count=6, start_frame=1, frame_stride=2,
                  width=128, height=64, resize_mode="center crop") | overrides
    return node.execute(**params)


def test_schema_lists_input_videos_with_upload_and_tooltips(node, clip_dir):
    info = node.GET_NODE_INFO_V1()
    assert (info["name"], info["display_name"], info["category"]) == (
        "TAVLoadVideo", "Load Video (Tune-A-Video)", "Tune-A-Video")
    assert info["description"]
    inputs = info["input"]["required"]
    assert inputs["video"][1]["options"] == ["clip.mp4"]  # notes.txt filtered out
    assert inputs["video"][1]["video_upload"] is True
    assert inputs["resize_mode"][1]["options"] == ["center crop", "stretch", "pad"]
    assert all(spec[1].get("tooltip") for spec in inputs.values())
    assert info["output"] == ["IMAGE", "INT", "FLOAT", "AUDIO"]
    assert info["output_name"] == ["IMAGE", "frame_count", "fps", "audio"]
    assert all(info["output_tooltips"])


def test_execute_returns_frames_count_and_fps(node, clip_dir):
    images, frame_count, fps, audio = _run(node).result
    assert isinstance(images, torch.Tensor) and images.dtype == torch.float32
    assert images.shape == (6, 64, 128, 3)
    assert 0.0 <= images.min() and images.max() <= 1.0 and images.std() > 0.05
    assert frame_count == 6 and isinstance(frame_count, int)
    assert fps == pytest.approx(6.0)
    assert audio is None  # clip.mp4 (OpenCV's mp4v) has no audio track


@pytest.mark.parametrize("video,detail", [
    ("missing.mp4", "not found"),
    ("../clip.mp4", "input folder"),
])
def test_execute_errors_are_prefixed_and_actionable(node, clip_dir, video, detail):
    with pytest.raises(ValueError) as error:
        _run(node, video=video)
    message = str(error.value)
    assert message.startswith(PREFIX) and detail in message


def test_execute_too_few_frames(node, clip_dir):
    with pytest.raises(ValueError, match=r"^Load Video \(Tune-A-Video\): .*only 8 are available.*Lower"):
        _run(node, frame_count=9, start_frame=0, frame_stride=2)


def test_fingerprint_follows_file_content(node, clip_dir):
    fingerprint = node.fingerprint_inputs
    before = fingerprint(video="clip.mp4", frame_count=6)
    assert fingerprint(video="clip.mp4", frame_count=6) == before
    with open(clip_dir / "clip.mp4", "ab") as f:
        f.write(b"\0")
    assert fingerprint(video="clip.mp4", frame_count=6) != before
    # A missing or escaping file must not crash the cache check; execute reports the error.
    assert isinstance(fingerprint(video="missing.mp4"), str)
    assert "input folder" in fingerprint(video="../escape.mp4")


def test_validate_inputs(node, clip_dir):
    validate = node.validate_inputs
    assert validate(video="clip.mp4", width=128, height=64) is True
    assert validate(video="clip.mp4") is True  # width/height linked from another node
    assert validate(video="missing.mp4", width=128, height=64).startswith(PREFIX)
    assert "width 100 is not a multiple of 64: use 64 or 128" in validate(video="clip.mp4", width=100, height=64)
    assert "not int" in validate(video=3, width=128, height=64)
    # Declaring width/height in validate_inputs disables ComfyUI's own range check.
    assert "64 to 4096" in validate(video="clip.mp4", width=8192, height=64)
    assert "input folder" in validate(video="../clip.mp4", width=128, height=64)


def test_real_clip(node, clip_dir, real_clip):
    shutil.copy(real_clip, clip_dir / "skiing.mp4")
    images, frame_count, fps, _ = _run(node, video="skiing.mp4", frame_count=8, start_frame=0,
                                       frame_stride=4, width=256, height=256).result
    assert images.shape == (8, 256, 256, 3) and frame_count == 8
    assert fps == pytest.approx(29.97 / 4, abs=0.01)
