"""Clips from ComfyUI's core VIDEO type, and the audio of an excerpt (PyAV and numpy, no ComfyUI).

Core Load Video hands over a file path or an in-memory file (`VideoInput.get_stream_source()`); other
nodes hand over decoded frames (`VideoComponents`). Either way the frames are selected, resized and
checked exactly as `video.read_clip` does for a file of the input folder, and files are decoded
streaming: only the selected frames are kept, each shrunk at once.
"""
from __future__ import annotations

import numpy as np

from . import video as clip_io
from .container import ALLOWED_DEMUXERS
from .video import ClipError


def _open(source):
    import av  # ComfyUI ships PyAV; imported here so that tav_core.video stays OpenCV-only

    if hasattr(source, "seek"):
        source.seek(0)
    try:
        # Local data only, and (as for files of the input folder) a single video container: a
        # playlist or concat list behind a VIDEO would make FFmpeg read other files.
        container = av.open(source, mode="r", options={"protocol_whitelist": "file"})
    except (av.FFmpegError, OSError) as e:
        raise ClipError(f"The connected video cannot be opened ({e}). Re-encode it as H.264 MP4.") from e
    if container.format.name not in ALLOWED_DEMUXERS:
        container.close()
        raise ClipError(f"The connected video is a {container.format.name!r} file, not a single video container "
                        "(MP4, MOV, MKV, WebM, AVI or GIF); re-encode it as H.264 MP4.")
    return container


def excerpt_seconds(fps: float, start_frame: int, frame_count: int, frame_stride: int) -> tuple[float, float]:
    """(start, duration) in seconds of the source that the selected frames span at the source's fps."""
    return start_frame / fps, frame_count * frame_stride / fps


def read_stream(source, frame_count, start_frame, frame_stride, width, height, resize_mode):
    """Decode frames start_frame + i * frame_stride (i < frame_count) of a file or file-like object.

    Returns (frames float32 [F, H, W, 3] RGB in 0..1, the source's fps).
    """
    clip_io.check_request(frame_count, start_frame, frame_stride, width, height, resize_mode)
    with _open(source) as container:
        if not container.streams.video:
            raise ClipError("The connected video has no video stream.")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        if not rate or rate <= 0:
            raise ClipError("The connected video reports no frame rate. Re-encode it with a fixed frame rate.")
        if stream.frames > 0:  # the container's claim; 0 when it does not say
            frame_count = clip_io.resolve_frame_count(stream.frames, frame_count, start_frame, frame_stride,
                                                      width, height)
        elif frame_count == 0:
            raise ClipError("The connected video does not say how many frames it has, so frame_count 0 (to the "
                            "end) cannot be used; set frame_count to the number of frames to load.")
        frames = np.empty((frame_count, height, width, 3), dtype=np.float32)
        last = start_frame + (frame_count - 1) * frame_stride
        index = -1
        for index, frame in enumerate(container.decode(stream)):
            if index > last:
                break
            if index >= start_frame and (index - start_frame) % frame_stride == 0:
                bgr = frame.to_ndarray(format="bgr24")
                frames[(index - start_frame) // frame_stride] = clip_io._fit(bgr, width, height, resize_mode)
        decoded = index + 1
        if decoded <= last:
            clip_io._check_available(decoded, frame_count, start_frame, frame_stride)
    return frames, float(rate)


def select_frames(images, frame_count, start_frame, frame_stride, width, height, resize_mode):
    """The same selection from decoded frames ([N, H, W, 3] RGB in 0..1, a torch tensor or an array)."""
    clip_io.check_request(frame_count, start_frame, frame_stride, width, height, resize_mode)
    frame_count = clip_io.resolve_frame_count(len(images), frame_count, start_frame, frame_stride, width, height)
    frames = np.empty((frame_count, height, width, 3), dtype=np.float32)
    for i in range(frame_count):
        image = np.asarray(images[start_frame + i * frame_stride], dtype=np.float32)
        bgr = np.ascontiguousarray((image[..., ::-1].clip(0, 1) * 255).round().astype(np.uint8))
        frames[i] = clip_io._fit(bgr, width, height, resize_mode)
    return frames


def read_audio(source, start: float, duration: float):
    """The audio of [start, start + duration) seconds as (samples float32 [channels, n], sample rate);
    None when the file has no audio track. Decodes up to the excerpt's end, keeping only the excerpt."""
    import av

    with _open(source) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        rate = stream.rate
        first, end = round(start * rate), round((start + duration) * rate)
        resampler = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=rate)
        kept, position = [], 0
        for frame in container.decode(stream):
            for planar in resampler.resample(frame):
                samples = planar.to_ndarray()  # [channels, n]
                lo, hi = max(first - position, 0), min(end - position, samples.shape[1])
                if hi > lo:
                    kept.append(samples[:, lo:hi])
                position += samples.shape[1]
            if position >= end:
                break
    if not kept:
        return None
    return np.concatenate(kept, axis=1).astype(np.float32), rate


def trim_audio(waveform, sample_rate: int, start: float, duration: float):
    """[..., samples] cut to [start, start + duration) seconds; None when nothing of it is left."""
    first, end = round(start * sample_rate), round((start + duration) * sample_rate)
    trimmed = waveform[..., first:end]
    return trimmed if trimmed.shape[-1] > 0 else None
