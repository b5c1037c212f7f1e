"""Only single local video containers are decoded: playlists, concat lists and image sequences are refused,
whatever their names, before any decoder follows them to files outside the input folder."""
import os

import cv2
import numpy as np
import pytest

from tav_core import video
from tav_core.video import ClipError, probe_clip, read_clip, write_synthetic_clip


@pytest.fixture
def secret(tmp_path):
    """A real clip outside the input folder."""
    path = tmp_path / "outside" / "secret.mp4"
    path.parent.mkdir()
    write_synthetic_clip(path, frames=8, size=64)
    return path


@pytest.fixture
def input_dir(tmp_path):
    path = tmp_path / "input"
    path.mkdir()
    return path


def hls(target):
    return f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{target}\n#EXT-X-ENDLIST\n"


def crafted_files(secret):
    return {
        "playlist.m3u8": hls(secret),
        "playlist.mp4": hls(secret),
        "relative-playlist.m3u8": hls(os.path.relpath(secret, secret.parent.parent / "input")),
        "concat.mp4": f"ffconcat version 1.0\nfile {secret}\n",
        "concat-relative.mkv": "ffconcat version 1.0\nfile ../outside/secret.mp4\n",
    }


@pytest.mark.parametrize("name", list(crafted_files(__import__("pathlib").Path("/x/secret.mp4"))))
def test_playlists_and_concat_lists_are_refused(secret, input_dir, name):
    path = input_dir / name
    path.write_text(crafted_files(secret)[name])
    for load in (lambda: probe_clip(path), lambda: read_clip(path, 2, 0, 1, 64, 64, "center crop")):
        with pytest.raises(ClipError) as error:
            load()
        message = str(error.value)
        assert name in message and str(input_dir) not in message and str(secret) not in message


def test_an_image_sequence_pattern_is_refused(input_dir):
    for i in range(3):
        cv2.imwrite(str(input_dir / f"frame{i:03d}.png"), np.full((64, 64, 3), 40 * i, np.uint8))
    os.link(input_dir / "frame000.png", input_dir / "frame%03d.mp4")
    with pytest.raises(ClipError, match="not a single video container|not a readable video"):
        probe_clip(input_dir / "frame%03d.mp4")
    (input_dir / "image.gif.png").write_bytes((input_dir / "frame000.png").read_bytes())
    with pytest.raises(ClipError):
        probe_clip(input_dir / "image.gif.png")


def test_a_real_clip_still_loads(secret):
    info = probe_clip(secret)
    assert (info.frame_count, info.width, info.height) == (8, 64, 64)
    frames, _ = read_clip(secret, 4, 0, 2, 64, 64, "center crop")
    assert frames.shape == (4, 64, 64, 3) and frames.std() > 0.05


def test_a_fifo_is_refused_without_blocking(input_dir):
    os.mkfifo(input_dir / "pipe.mp4")
    with pytest.raises(ClipError):
        probe_clip(input_dir / "pipe.mp4")


@pytest.mark.parametrize("name", ["bad\0name.mp4", "/etc/passwd", "../x.mp4", "", 7, None, ["a.mp4"]])
def test_bad_names_are_refused_by_the_path_policy(input_dir, name):
    with pytest.raises(ClipError):
        video.resolve_input_path(name, str(input_dir))


def test_clips_in_subfolders_are_listed(input_dir, secret):
    (input_dir / "trips" / "2026").mkdir(parents=True)
    (input_dir / "trips" / "2026" / "ski.mp4").write_bytes(secret.read_bytes())
    (input_dir / "a.mp4").write_bytes(secret.read_bytes())
    (input_dir / "notes.txt").write_text("no video")
    assert video.list_input_videos(str(input_dir)) == ["a.mp4", "trips/2026/ski.mp4"]
    assert video.resolve_input_path("trips/2026/ski.mp4", str(input_dir)).endswith("ski.mp4")
