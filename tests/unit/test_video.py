"""tav_core.video against independent references: a naive full decode with cv2.read()
and the textbook resize recipes, on synthetic clips and the real Tune-A-Video clips."""
import os
import re
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest

from tav_core import video as clip_io
from tav_core.video import ClipError


# Same rule as tests/conftest.py: TAV_SHARED_VIDEOS overrides ../shared/videos next to the checkout.
SHARED = Path(os.environ.get("TAV_SHARED_VIDEOS", Path(__file__).resolve().parents[3] / "shared" / "videos"))
needs_real = pytest.mark.skipif(not (SHARED / "man-skiing.mp4").is_file(), reason=f"real clips missing in {SHARED}")


# ---------------------------------------------------------------- references

def reference_frames(path, indices):
    """Decode every frame with plain cap.read() and keep the ones at `indices` (BGR uint8)."""
    wanted, kept = set(indices), {}
    cap = cv2.VideoCapture(str(path))
    index = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if index in wanted:
            kept[index] = frame
        index += 1
    cap.release()
    return [kept[i] for i in indices]


def _resize(image, width, height):
    shrinking = width <= image.shape[1] and height <= image.shape[0]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def reference_center_crop(frame, width, height):
    """Scale so the frame covers width x height, then cut the centre (the recipe in the spec)."""
    src_h, src_w = frame.shape[:2]
    scale = max(width / src_w, height / src_h)
    scaled = _resize(frame, max(width, round(src_w * scale)), max(height, round(src_h * scale)))
    y0, x0 = (scaled.shape[0] - height) // 2, (scaled.shape[1] - width) // 2
    return scaled[y0:y0 + height, x0:x0 + width]


def to_rgb01(frames_bgr):
    return np.stack([f[..., ::-1] for f in frames_bgr]).astype(np.float32) / 255.0


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def wide_clip(tmp_path_factory):
    """2:1 clip, so crop / stretch / pad give visibly different geometry."""
    path = tmp_path_factory.mktemp("clips") / "wide.mp4"
    clip_io.write_synthetic_clip(path, frames=20, size=(256, 128), fps=12)
    return path


@pytest.fixture
def input_dir(tmp_path):
    folder = tmp_path / "input"
    folder.mkdir()
    return folder


# ---------------------------------------------------------------- probing

def test_probe_synthetic(wide_clip):
    assert clip_io.probe_clip(wide_clip) == clip_io.ClipInfo(frame_count=20, fps=12.0, width=256, height=128)


@needs_real
def test_probe_real_clips():
    skiing = clip_io.probe_clip(SHARED / "man-skiing.mp4")
    assert (skiing.frame_count, skiing.width, skiing.height) == (91, 718, 718)
    assert skiing.fps == pytest.approx(29.97, abs=0.01)
    rabbit = clip_io.probe_clip(SHARED / "rabbit-watermelon.mp4")
    assert (rabbit.frame_count, rabbit.fps, rabbit.width, rabbit.height) == (186, 30.0, 718, 718)


# ---------------------------------------------------------------- frame selection and geometry

@pytest.mark.parametrize("frame_count,start,stride", [(20, 0, 1), (4, 3, 5), (1, 19, 7)])
def test_selection_matches_naive_decode(wide_clip, frame_count, start, stride):
    frames, fps = clip_io.read_clip(wide_clip, frame_count, start, stride, 256, 128, "stretch")
    expected = to_rgb01(reference_frames(wide_clip, [start + i * stride for i in range(frame_count)]))
    assert frames.dtype == np.float32 and frames.shape == (frame_count, 128, 256, 3)
    # Same size as the source: no resampling, so pixels must match exactly.
    np.testing.assert_array_equal(frames, expected)
    assert fps == pytest.approx(12.0 / stride)


def test_stretch_matches_plain_resize(wide_clip):
    frames, _ = clip_io.read_clip(wide_clip, 3, 2, 4, 64, 128, "stretch")
    expected = to_rgb01([_resize(f, 64, 128) for f in reference_frames(wide_clip, [2, 6, 10])])
    np.testing.assert_allclose(frames, expected, atol=1 / 255)


@pytest.mark.parametrize("width,height", [(64, 64), (256, 64), (64, 128), (128, 128)])
def test_center_crop_matches_scale_then_crop(wide_clip, width, height):
    frames, _ = clip_io.read_clip(wide_clip, 3, 1, 6, width, height, "center crop")
    source = reference_frames(wide_clip, [1, 7, 13])
    expected = to_rgb01([reference_center_crop(f, width, height) for f in source])
    # read_clip crops before resizing, so resampling differs slightly; geometry must agree.
    assert np.abs(frames - expected).mean() < 0.01
    # The check can tell geometries apart: stretching the whole frame is far off.
    stretched = to_rgb01([_resize(f, width, height) for f in source])
    assert np.abs(frames - stretched).mean() > 0.03


def test_pad_letterboxes_in_the_middle(wide_clip):
    frames, _ = clip_io.read_clip(wide_clip, 2, 0, 10, 64, 64, "pad")
    # 256x128 fits 64x64 as 64x32: black bars of 16 rows above and below.
    assert frames[:, :16].max() == 0 and frames[:, 48:].max() == 0
    expected = to_rgb01([_resize(f, 64, 32) for f in reference_frames(wide_clip, [0, 10])])
    np.testing.assert_allclose(frames[:, 16:48], expected, atol=1 / 255)
    assert frames[:, 16:48].min(axis=-1).min() > 0  # the synthetic background is never black


@needs_real
def test_real_clip_stride_and_start_match_naive_decode():
    path = SHARED / "man-skiing.mp4"
    frames, fps = clip_io.read_clip(path, 8, 10, 3, 256, 256, "center crop")
    indices = [10 + 3 * i for i in range(8)]
    expected = to_rgb01([reference_center_crop(f, 256, 256) for f in reference_frames(path, indices)])
    np.testing.assert_allclose(frames, expected, atol=1 / 255)
    assert fps == pytest.approx(29.97 / 3, abs=0.01)
    assert 0.0 <= frames.min() and frames.max() <= 1.0


@needs_real
def test_real_clip_last_frames_reachable():
    # rabbit-watermelon has 186 frames: 185 is the last one, reached with stride 5 from 0.
    path = SHARED / "rabbit-watermelon.mp4"
    frames, _ = clip_io.read_clip(path, 38, 0, 5, 64, 64, "stretch")
    expected = to_rgb01([_resize(f, 64, 64) for f in reference_frames(path, [180, 185])])
    np.testing.assert_allclose(frames[-2:], expected, atol=1 / 255)


def test_streaming_never_holds_full_resolution_clip(tmp_path):
    path = tmp_path / "big.mp4"
    clip_io.write_synthetic_clip(path, frames=60, size=1024, fps=24)
    full_frame = 1024 * 1024 * 3
    tracemalloc.start()
    try:
        clip_io.read_clip(path, 4, 0, 15, 64, 64, "center crop")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # All 60 frames would be 180 MB; even the 4 selected ones at full size would be 12 MB.
    assert peak < 3 * full_frame, f"peak {peak / 2**20:.1f} MiB"


# ---------------------------------------------------------------- errors

def test_missing_file(tmp_path):
    with pytest.raises(ClipError, match="not found"):
        clip_io.probe_clip(tmp_path / "nope.mp4")


@pytest.mark.parametrize("content", [b"", b"this is not a video\n" * 50], ids=["zero-byte", "text"])
def test_not_a_video(tmp_path, content):
    path = tmp_path / "fake.mp4"
    path.write_bytes(content)
    with pytest.raises(ClipError, match="Re-encode"):
        clip_io.read_clip(path, 1, 0, 1, 64, 64, "stretch")


def test_too_few_frames_names_available_count(wide_clip):
    # 20 frames, from 2 with stride 4: 2, 6, 10, 14, 18 -> 5 available.
    with pytest.raises(ClipError, match=r"only 5 are available.*Lower frame_count"):
        clip_io.read_clip(wide_clip, 6, 2, 4, 64, 64, "stretch")


def test_start_beyond_end_names_clip_length(wide_clip):
    with pytest.raises(ClipError, match=r"start_frame 20 is beyond the end: the clip has 20 frames"):
        clip_io.read_clip(wide_clip, 1, 20, 1, 64, 64, "stretch")


@pytest.mark.parametrize("width,height,message", [
    (60, 64, "width 60 is not a multiple of 64: use 64"),
    (64, 100, "height 100 is not a multiple of 64: use 64 or 128"),
    (0, 64, "width 0 is not a multiple of 64: use 64"),
    (520, 8, "width 520 is not a multiple of 64: use 512 or 576; height 8 is not a multiple of 64: use 64"),
])
def test_size_rule_names_the_nearest_valid_sizes(wide_clip, width, height, message):
    with pytest.raises(ClipError, match=re.escape(message)):
        clip_io.read_clip(wide_clip, 1, 0, 1, width, height, "stretch")


@pytest.mark.parametrize("kwargs,message", [
    ({"frame_count": -1}, "frame_count is -1; use 0 for every frame to the end"),
    ({"frame_stride": 0}, "frame_stride is 0"),
    ({"resize_mode": "zoom"}, "resize_mode 'zoom' is unknown"),
])
def test_bad_parameters(wide_clip, kwargs, message):
    params = dict(frame_count=1, start_frame=0, frame_stride=1, width=64, height=64, resize_mode="stretch") | kwargs
    with pytest.raises(ClipError, match=message):
        clip_io.read_clip(wide_clip, **params)


@pytest.mark.parametrize("start,stride", [(0, 1), (3, 5), (19, 7)])
def test_frame_count_0_reads_to_the_end(wide_clip, start, stride):
    frames, _ = clip_io.read_clip(wide_clip, 0, start, stride, 64, 64, "stretch")
    indices = list(range(start, 20, stride))  # the wide clip has 20 frames
    assert len(frames) == len(indices)
    # The explicit count is checked against a naive decode in test_selection_matches_naive_decode.
    explicit, _ = clip_io.read_clip(wide_clip, len(indices), start, stride, 64, 64, "stretch")
    assert np.array_equal(frames, explicit)


def test_an_excerpt_too_large_for_memory_is_refused_before_decoding(wide_clip, monkeypatch):
    from tav_core import frame_memory

    frame = 64 * 64 * 12
    monkeypatch.setattr(frame_memory, "available_bytes", lambda: 10 * frame)  # half of it holds 5 frames
    decoded = []
    monkeypatch.setattr(clip_io, "_stream_selected", lambda *a: decoded.append(a) or iter(()))
    with pytest.raises(ClipError, match=r"6 frames at 64x64 would take .* at most 5 frames fit"):
        clip_io.read_clip(wide_clip, 6, 0, 1, 64, 64, "stretch")
    with pytest.raises(ClipError, match=r"20 frames at 64x64 .* at most 5 frames fit"):
        clip_io.read_clip(wide_clip, 0, 0, 1, 64, 64, "stretch")  # to the end: all 20
    assert not decoded  # refused before decoding


def test_frames_that_fit_is_half_the_free_memory():
    from tav_core import frame_memory

    assert frame_memory.frames_that_fit(512, 512, available=24 << 30) == (12 << 30) // (512 * 512 * 12)
    assert frame_memory.excerpt_problem(4096, 512, 512, available=24 << 30) is None
    assert "at most 4096 frames fit" in frame_memory.excerpt_problem(4097, 512, 512, available=24 << 30)


def test_decoder_stopping_early_reports_real_count(wide_clip, monkeypatch):
    # A container that claims 20 frames but only 7 decode: fake the claim via probe_clip.
    truncated = wide_clip.parent / "truncated.mp4"
    clip_io.write_synthetic_clip(truncated, frames=7, size=(256, 128), fps=12)
    monkeypatch.setattr(clip_io, "probe_clip", lambda path: clip_io.ClipInfo(20, 12.0, 256, 128))
    with pytest.raises(ClipError, match=r"stopped after 7 frames.*only 4 frames are available"):
        clip_io.read_clip(truncated, 10, 0, 2, 64, 64, "stretch")


# ---------------------------------------------------------------- fingerprint

def test_fingerprint_follows_content(tmp_path, wide_clip):
    path = tmp_path / "clip.mp4"
    path.write_bytes(wide_clip.read_bytes())
    first = clip_io.file_fingerprint(path)
    assert first == clip_io.file_fingerprint(wide_clip)  # content, not name or mtime
    with open(path, "ab") as f:
        f.write(b"\0")
    assert clip_io.file_fingerprint(path) != first


# ---------------------------------------------------------------- input folder confinement

def test_resolve_inside_input_dir(input_dir):
    (input_dir / "sub").mkdir()
    assert clip_io.resolve_input_path("clip.mp4", str(input_dir)) == os.path.realpath(input_dir / "clip.mp4")
    assert clip_io.resolve_input_path("sub/clip.mp4", str(input_dir)) == os.path.realpath(input_dir / "sub" / "clip.mp4")
    assert clip_io.resolve_input_path("clip.mp4 [input]", str(input_dir)) == os.path.realpath(input_dir / "clip.mp4")


@pytest.mark.parametrize("name", ["../x.mp4", "sub/../../x.mp4", "/etc/passwd", ""])
def test_resolve_rejects_escapes(input_dir, name):
    with pytest.raises(ClipError, match="inside ComfyUI's input folder"):
        clip_io.resolve_input_path(name, str(input_dir))


def test_resolve_rejects_symlink_escape(input_dir, tmp_path, wide_clip):
    outside = tmp_path / "outside"
    outside.mkdir()
    (input_dir / "link.mp4").symlink_to(wide_clip)
    (input_dir / "linkdir").symlink_to(outside, target_is_directory=True)
    for name in ("link.mp4", "linkdir/x.mp4"):
        with pytest.raises(ClipError, match="inside ComfyUI's input folder"):
            clip_io.resolve_input_path(name, str(input_dir))


def test_video_extensions_cover_common_containers():
    assert {".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif", ".m4v"} <= set(clip_io.VIDEO_EXTENSIONS)
