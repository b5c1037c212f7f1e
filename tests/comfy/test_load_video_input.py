"""Load Video with core VIDEO in and AUDIO out, inside a real (in-process) ComfyUI.

The clip is a real H.264 + AAC mp4 written with PyAV: silent for its first second, then a tone.
The references are independent: OpenCV's decoding of the same file (the node's file path), and
plain indexing of decoded frames.
"""
import shutil

import pytest
import torch

PREFIX = "Load Video (Tune-A-Video): "
FPS, FRAMES, SAMPLE_RATE = 12, 36, 16000


@pytest.fixture(scope="module")
def audio_clip(tmp_path_factory):
    from tav_core.testing.clips import write_clip_with_audio

    path = tmp_path_factory.mktemp("audio-clip") / "clip-with-audio.mp4"
    write_clip_with_audio(path, frames=FRAMES, size=(96, 64), fps=FPS, sample_rate=SAMPLE_RATE, silent_seconds=1.0)
    return path


@pytest.fixture
def node(pack):
    return pack.nodes.video.LoadVideo


def run(node, **overrides):
    params = dict(video="unused.mp4", frame_count=6, start_frame=1, frame_stride=2, width=128, height=64,
                  resize_mode="stretch") | overrides
    return node.execute(**params).result


def loudness(audio):
    return float(audio["waveform"].abs().mean())


def test_a_core_video_file_gives_the_frames_of_the_file_path(node, audio_clip, input_dir, core):
    from comfy_api.latest import InputImpl

    shutil.copy(audio_clip, input_dir / "clip.mp4")
    by_file = run(node, video="clip.mp4", resize_mode="center crop", width=64, height=64)
    by_video = run(node, video_input=InputImpl.VideoFromFile(str(audio_clip)), resize_mode="center crop",
                   width=64, height=64)
    reference, _ = core.video.read_clip(audio_clip, 6, 1, 2, 64, 64, "center crop")  # OpenCV
    assert torch.equal(by_file[0], torch.from_numpy(reference))
    assert torch.allclose(by_video[0], by_file[0], atol=2 / 255)
    assert by_video[1:3] == by_file[1:3] == (6, FPS / 2)


def test_decoded_video_components_are_selected_like_a_file(node, audio_clip):
    from fractions import Fraction

    from comfy_api.latest import InputImpl, Types

    images = torch.rand(FRAMES, 64, 128, 3)
    waveform = torch.linspace(-1, 1, SAMPLE_RATE * 3).reshape(1, 1, -1)
    components = Types.VideoComponents(images=images, audio={"waveform": waveform, "sample_rate": SAMPLE_RATE},
                                       frame_rate=Fraction(FPS))
    frames, count, fps, audio = run(node, video_input=InputImpl.VideoFromComponents(components),
                                    frame_count=5, start_frame=3, frame_stride=3)
    assert torch.allclose(frames, images[3:3 + 5 * 3:3], atol=0.5 / 255)  # uint8 steps
    assert (count, fps) == (5, FPS / 3)
    # Frames 3 .. 17 at 12 fps span 0.25 s to 1.5 s of the source.
    first, end = round(3 / FPS * SAMPLE_RATE), round((3 + 15) / FPS * SAMPLE_RATE)
    assert torch.equal(audio["waveform"], waveform[..., first:end]) and audio["sample_rate"] == SAMPLE_RATE


def test_audio_is_trimmed_to_the_excerpt(node, audio_clip):
    from comfy_api.latest import InputImpl

    video = InputImpl.VideoFromFile(str(audio_clip))
    # 6 frames every 2nd from frame 0: the first second, silent.
    _, _, fps, quiet = run(node, video_input=video, start_frame=0)
    # From frame 12 (1 s): the tone.
    _, _, _, loud = run(node, video_input=video, start_frame=12)
    for audio in (quiet, loud):
        assert audio["sample_rate"] == SAMPLE_RATE and audio["waveform"].shape[:2] == (1, 1)
        assert audio["waveform"].shape[2] == round(6 / fps * SAMPLE_RATE)  # as long as the loaded frames
    assert loudness(quiet) < 0.01 and 0.25 < loudness(loud) < 0.4  # a 0.5 sine: 0.318


def test_the_file_path_also_gives_its_audio_and_silent_clips_none(node, audio_clip, input_dir):
    from tav_core.video import write_synthetic_clip

    shutil.copy(audio_clip, input_dir / "clip.mp4")
    assert 0.25 < loudness(run(node, video="clip.mp4", start_frame=12)[3]) < 0.4
    write_synthetic_clip(input_dir / "silent.mp4", frames=16, size=(96, 64), fps=12)
    assert run(node, video="silent.mp4")[3] is None


@pytest.mark.parametrize("overrides, expected", [
    ({"start_frame": 500}, "beyond the end"),
    ({"frame_count": 30}, "only 18 are available"),
    ({"width": 100}, "multiple of 64"),
])
def test_a_video_input_gets_the_same_errors(node, audio_clip, overrides, expected):
    from comfy_api.latest import InputImpl

    with pytest.raises(ValueError, match=expected) as error:
        run(node, video_input=InputImpl.VideoFromFile(str(audio_clip)), **overrides)
    assert str(error.value).startswith(PREFIX)


def test_connected_video_input_needs_no_file(node, input_dir):
    assert node.validate_inputs(video="missing.mp4", width=64, height=64, video_input=None) is True
    assert "not found" in node.validate_inputs(video="missing.mp4", width=64, height=64)
    info = node.GET_NODE_INFO_V1()
    assert info["input"]["optional"]["video_input"][0] == "VIDEO"
    assert info["output"] == ["IMAGE", "INT", "FLOAT", "AUDIO"]
