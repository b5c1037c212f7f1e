"""Clip loading for Tune-A-Video (pure numpy/OpenCV, no ComfyUI).

Tune-A-Video tunes on a short, low-resolution excerpt of a clip, so the reader
streams: it decodes sequentially, keeps only the selected frames and shrinks
each one right away. Source clips can be long and large; at most one frame at
source resolution is alive at a time.
"""
import contextlib
import hashlib
import math
import os
from dataclasses import dataclass

import cv2
import numpy as np

from . import container, files, frame_memory, sizes

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif", ".m4v")
RESIZE_MODES = ("center crop", "stretch", "pad")


class ClipError(ValueError):
    """A clip or a loading parameter is unusable; the message says what to do."""


@dataclass(frozen=True)
class ClipInfo:
    frame_count: int
    fps: float
    width: int
    height: int


def probe_clip(path) -> ClipInfo:
    """Open the clip, check that its first frame decodes and report its properties.

    frame_count is the container's claim; read_clip reports the real count if
    the decoder stops earlier.
    """
    path = os.fspath(path)
    name = os.path.basename(path)  # messages reach the browser: never the server's paths
    if not os.path.isfile(path):
        raise ClipError(f"Video file not found: {name}. Check the name or upload the clip again.")
    with _opened(path) as source:
        cap = cv2.VideoCapture(source, cv2.CAP_FFMPEG)
        try:
            if not cap.isOpened():
                raise ClipError(f"{name} is not a readable video. Re-encode it as H.264 MP4 and load that file.")
            frame_count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            fps = cap.get(cv2.CAP_PROP_FPS)
            ok, frame = cap.read()
        finally:
            cap.release()
    if frame_count <= 0 or not ok or frame is None:
        raise ClipError(f"{name} has no decodable frames. Re-encode it as H.264 MP4 and load that file.")
    if not math.isfinite(fps) or fps <= 0:
        raise ClipError(f"{name} reports no frame rate. Re-encode it with a fixed frame rate.")
    height, width = frame.shape[:2]
    return ClipInfo(frame_count=frame_count, fps=float(fps), width=width, height=height)


@contextlib.contextmanager
def _opened(path):
    """The decoder's source for `path`, once the file is checked to be a single video container."""
    try:
        with container.checked_video(path, os.path.basename(path)) as source:
            yield source
    except container.ContainerError as e:
        raise ClipError(str(e)) from e


def check_size(width, height):
    """Raise ClipError unless width and height follow the pack's size rule (multiples of 64, see sizes.py)."""
    problem = sizes.size_problem(width, height, sizes.LOAD_VIDEO_MULTIPLE)
    if problem:
        raise ClipError(f"{problem}. Every Stable Diffusion UNet needs frame sides that are multiples of "
                        f"{sizes.LOAD_VIDEO_MULTIPLE} (8 for the VAE times 2 per UNet downsampling).")


def read_clip(path, frame_count, start_frame, frame_stride, width, height, resize_mode):
    """Decode frames start_frame + i * frame_stride (i < frame_count) resized to width x height.

    frame_count 0 takes every such frame to the end of the clip. An excerpt that would not fit in
    memory is refused before decoding. Returns (frames float32 [F, H, W, 3] RGB in 0..1, fps / frame_stride).
    """
    check_request(frame_count, start_frame, frame_stride, width, height, resize_mode)
    info = probe_clip(path)
    frame_count = resolve_frame_count(info.frame_count, frame_count, start_frame, frame_stride, width, height)
    frames = np.empty((frame_count, height, width, 3), dtype=np.float32)
    for i, frame in enumerate(_stream_selected(os.fspath(path), frame_count, start_frame, frame_stride)):
        frames[i] = _fit(frame, width, height, resize_mode)
    return frames, info.fps / frame_stride


def resolve_frame_count(total, frame_count, start_frame, frame_stride, width, height) -> int:
    """The number of frames to decode from a clip of `total` frames (0: to the end), refused before
    decoding when they are not there or would not fit in memory."""
    if frame_count == 0:
        frame_count = max(1, _available(total, start_frame, frame_stride))
    _check_available(total, frame_count, start_frame, frame_stride)
    problem = frame_memory.excerpt_problem(frame_count, width, height)
    if problem:
        raise ClipError(problem)
    return frame_count


def check_request(frame_count, start_frame, frame_stride, width, height, resize_mode):
    """Raise ClipError unless the frame selection and the output size are usable (any source)."""
    check_size(width, height)
    if frame_count < 0:
        raise ClipError(f"frame_count is {frame_count}; use 0 for every frame to the end, or the frames to load.")
    if frame_stride < 1:
        raise ClipError(f"frame_stride is {frame_stride}; use 1 to take every frame.")
    if start_frame < 0:
        raise ClipError(f"start_frame is {start_frame}; use 0 or more.")
    if resize_mode not in RESIZE_MODES:
        raise ClipError(f"resize_mode {resize_mode!r} is unknown; use one of {', '.join(RESIZE_MODES)}.")


def _available(total, start_frame, frame_stride):
    """How many frames start_frame, start_frame + stride, ... lie in a clip of `total` frames."""
    return 0 if start_frame >= total else (total - 1 - start_frame) // frame_stride + 1


def _check_available(total, frame_count, start_frame, frame_stride):
    if start_frame >= total:
        raise ClipError(f"start_frame {start_frame} is beyond the end: the clip has {total} frames "
                        f"(0..{total - 1}). Lower start_frame.")
    available = _available(total, start_frame, frame_stride)
    if available < frame_count:
        raise ClipError(f"Asked for {frame_count} frames but only {available} are available from "
                        f"start_frame {start_frame} with frame_stride {frame_stride} (the clip has "
                        f"{total} frames). Lower frame_count, frame_stride or start_frame.")


def _stream_selected(path, frame_count, start_frame, frame_stride):
    """Yield the selected BGR frames, grabbing (not converting) the ones in between."""
    last = start_frame + (frame_count - 1) * frame_stride
    with _opened(path) as source:
        yield from _grab_selected(cv2.VideoCapture(source, cv2.CAP_FFMPEG), path, start_frame, frame_stride, last)


def _grab_selected(cap, path, start_frame, frame_stride, last):
    try:
        for index in range(last + 1):
            if not cap.grab():
                # The container's frame count was wrong: report what really decodes.
                available = _available(index, start_frame, frame_stride)
                raise ClipError(f"The decoder stopped after {index} frames although the file claims more; "
                                f"only {available} frames are available from start_frame {start_frame} with "
                                f"frame_stride {frame_stride}. Lower frame_count or frame_stride, "
                                f"or re-encode the clip.")
            if index >= start_frame and (index - start_frame) % frame_stride == 0:
                ok, frame = cap.retrieve()
                if not ok:
                    raise ClipError(f"Frame {index} of {os.path.basename(path)} could not be decoded. Re-encode the clip.")
                yield frame
    finally:
        cap.release()


def _fit(frame, width, height, resize_mode):
    """Resize one BGR uint8 frame to width x height by resize_mode; return RGB float32 in 0..1."""
    src_h, src_w = frame.shape[:2]
    if resize_mode == "center crop":
        # Crop the source to the target aspect first, then resize once: same
        # picture as scale-to-cover-then-crop, without a large intermediate.
        crop_w = min(src_w, round(src_h * width / height))
        crop_h = min(src_h, round(src_w * height / width))
        x0, y0 = (src_w - crop_w) // 2, (src_h - crop_h) // 2
        out = _resize(frame[y0:y0 + crop_h, x0:x0 + crop_w], width, height)
    elif resize_mode == "stretch":
        out = _resize(frame, width, height)
    else:  # pad
        scale = min(width / src_w, height / src_h)
        fit_w = min(width, max(1, round(src_w * scale)))
        fit_h = min(height, max(1, round(src_h * scale)))
        out = np.zeros((height, width, 3), dtype=np.uint8)
        x0, y0 = (width - fit_w) // 2, (height - fit_h) // 2
        out[y0:y0 + fit_h, x0:x0 + fit_w] = _resize(frame, fit_w, fit_h)
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def _resize(image, width, height):
    # INTER_AREA avoids aliasing when shrinking; it is blocky when enlarging.
    shrinking = width <= image.shape[1] and height <= image.shape[0]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def file_fingerprint(path) -> str:
    """sha256 of the file contents, so ComfyUI re-runs the loader when the clip changes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_input_path(name, input_dir) -> str:
    """Resolve a file name chosen in ComfyUI to a real path inside input_dir.

    Names come from the browser, so absolute paths, `..` and symlinks that lead
    outside the input folder are refused.
    """
    if not isinstance(name, str):
        raise ClipError(f"the video must be a file name (text), not {type(name).__name__} {name!r}; "
                        "pick a file from the list.")
    # ComfyUI's upload widget may annotate files of the input folder as "name [input]".
    if name.endswith(" [input]"):
        name = name[:-len(" [input]")]
    try:
        return files.resolve_inside(name, input_dir)
    except files.OutsideError:
        raise ClipError(f"{name!r} is not inside ComfyUI's input folder. Put the video file in the input "
                        "folder (or upload it with the node) and pick it from the list.") from None


def list_input_videos(input_dir) -> list[str]:
    """Video files of the input folder and its subfolders, as names relative to it ("/"-separated)."""
    found = []
    for folder, subfolders, names in os.walk(input_dir, followlinks=False):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        relative = os.path.relpath(folder, input_dir)
        for name in names:
            path = os.path.join(folder, name)
            if name.lower().endswith(VIDEO_EXTENSIONS) and os.path.isfile(path):
                found.append(name if relative == "." else f"{relative}/{name}".replace(os.sep, "/"))
    return sorted(found)


def write_synthetic_clip(path, frames=32, size=256, fps=12):
    """Write a deterministic mp4 of a coloured ball and a stripe moving over a gradient.

    size is an int for a square clip or (width, height); use even numbers for mp4.
    Smooth motion with sharp edges: enough structure to check frame order,
    cropping and temporal attention without shipping a real clip.
    """
    width, height = (size, size) if isinstance(size, int) else size
    writer = cv2.VideoWriter(os.fspath(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise ClipError(f"OpenCV cannot write mp4 files to {path}; check that the folder is writable.")
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    # Background never black, so padding stays distinguishable from content.
    background = np.stack([40 + 150 * xs / width, 60 + 120 * ys / height,
                           np.full_like(xs, 160)], axis=-1)
    radius = max(2.0, min(width, height) / 8)
    try:
        for t in range(frames):
            phase = t / max(1, frames - 1)
            image = background.copy()
            stripe_x = (phase * 1.5 * width) % width
            image[np.abs(xs - stripe_x) < max(1.0, width / 32)] = (230, 230, 230)
            cx = radius + phase * (width - 2 * radius)
            cy = height / 2 + (height / 4) * math.sin(2 * math.pi * phase)
            image[(xs - cx) ** 2 + (ys - cy) ** 2 < radius ** 2] = (30, 40, 220)  # red in BGR
            writer.write(image.astype(np.uint8))
    finally:
        writer.release()
