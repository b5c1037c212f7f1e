"""Clips for tests: a real H.264 + AAC mp4 with an audio track, written with PyAV (which ships both
codecs), and a WebM that Chromium plays."""
from __future__ import annotations

import math

import numpy as np


def write_clip_with_audio(path, frames=24, size=(96, 64), fps=12, sample_rate=16000, silent_seconds=1.0):
    """Moving-ball frames (as tav_core.video.write_synthetic_clip) and mono audio: silence for
    silent_seconds, then a 440 Hz tone at 0.5 until the end, so that an excerpt's sound says where it starts."""
    import av
    from fractions import Fraction

    width, height = size
    duration = frames / fps
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = container.add_stream("aac", rate=sample_rate, layout="mono")
        ys, xs = np.mgrid[0:height, 0:width]
        for t in range(frames):
            image = np.zeros((height, width, 3), np.uint8)
            image[..., 0] = (40 + 150 * xs / width).astype(np.uint8)
            image[..., 2] = 160
            cx = width * (0.15 + 0.7 * t / max(1, frames - 1))
            image[(xs - cx) ** 2 + (ys - height / 2) ** 2 < (height / 5) ** 2] = (220, 40, 30)
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        total = int(round(duration * sample_rate))
        times = np.arange(total) / sample_rate
        wave = np.where(times >= silent_seconds, 0.5 * np.sin(2 * math.pi * 440 * times), 0).astype(np.float32)
        chunk = 1024
        for offset in range(0, total, chunk):
            frame = av.AudioFrame.from_ndarray(wave[None, offset:offset + chunk], format="fltp", layout="mono")
            frame.sample_rate = sample_rate
            frame.pts = offset
            for packet in audio.encode(frame):
                container.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode(None):
                container.mux(packet)


def write_webm(source, target):
    """Re-encode `source` as VP8 WebM, which Chromium plays (OpenCV writes no H.264)."""
    import cv2

    reader = cv2.VideoCapture(str(source))
    fps = reader.get(cv2.CAP_PROP_FPS)
    frames = []
    while (frame := reader.read()[1]) is not None:
        frames.append(frame)
    reader.release()
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"VP80"), fps, (width, height))
    for frame in frames:
        writer.write(frame)
    writer.release()
