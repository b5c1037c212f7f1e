"""Core VIDEO in and out through a real server: core Load Video (a clip with sound) -> Load Video
(Tune-A-Video) -> core Create Video with the loaded fps and audio -> core Save Video; the mp4 is probed."""
import shutil

import av
import pytest

from tav_core.testing.clips import write_clip_with_audio

FPS, FRAMES, STRIDE, LOADED = 12, 36, 2, 12


@pytest.fixture(scope="module")
def clip_with_audio(server, tmp_path_factory):
    path = tmp_path_factory.mktemp("clips") / "with-audio.mp4"
    write_clip_with_audio(path, frames=FRAMES, size=(96, 64), fps=FPS, silent_seconds=1.0)
    shutil.copy(path, server.base_dir / "input" / "with-audio.mp4")
    return "with-audio.mp4"


def test_core_load_video_to_an_mp4_with_the_excerpts_fps_and_sound(server, clip_with_audio):
    prompt = {
        "1": {"class_type": "LoadVideo", "inputs": {"file": clip_with_audio}},
        "2": {"class_type": "TAVLoadVideo", "inputs": {
            "video": clip_with_audio, "frame_count": LOADED, "start_frame": 6, "frame_stride": STRIDE,
            "width": 64, "height": 64, "resize_mode": "center crop", "video_input": ["1", 0]}},
        "3": {"class_type": "CreateVideo", "inputs": {"images": ["2", 0], "fps": ["2", 2], "audio": ["2", 3]}},
        "4": {"class_type": "SaveVideo", "inputs": {"video": ["3", 0], "filename_prefix": "tav-core-video",
                                                    "format": "mp4", "codec": "h264"}},
    }
    [saved] = server.output_files(server.run(prompt, timeout=120))
    with av.open(str(saved)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert float(video.average_rate) == pytest.approx(FPS / STRIDE)
        frames = sum(1 for _ in container.decode(video))
        container.seek(0)
        samples = sum(frame.samples for frame in container.decode(audio))
    assert frames == LOADED and (video.width, video.height) == (64, 64)
    # Source frames 6 .. 29 span 0.5 s to 2.5 s: 2 s of sound (AAC pads to whole frames of 1024 samples).
    assert samples / audio.rate == pytest.approx(LOADED / (FPS / STRIDE), abs=0.1)
