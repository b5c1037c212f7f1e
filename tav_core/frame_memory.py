"""Whether a decoded excerpt fits in memory, asked before decoding (pure Python, no ComfyUI).

Load Video's IMAGE is float32 [F, H, W, 3]: 12 bytes a pixel, so a long clip at full size can ask
for tens of GiB. The excerpt may take at most half of the memory free now: VAE Encode, VAE Decode
(another IMAGE of the same size) and ComfyUI's output cache need the rest.
"""
from __future__ import annotations

import os

BYTES_PER_PIXEL = 3 * 4  # RGB float32
SHARE = 0.5


def available_bytes() -> int:
    try:
        import psutil  # a ComfyUI requirement

        return int(psutil.virtual_memory().available)
    except ImportError:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def frame_bytes(width: int, height: int) -> int:
    return width * height * BYTES_PER_PIXEL


def frames_that_fit(width: int, height: int, available: int | None = None) -> int:
    available = available_bytes() if available is None else available
    return int(available * SHARE) // frame_bytes(width, height)


def excerpt_problem(frame_count: int, width: int, height: int, available: int | None = None) -> str | None:
    """A message saying how many frames would fit, or None if `frame_count` frames fit."""
    available = available_bytes() if available is None else available
    fit = frames_that_fit(width, height, available)
    if frame_count <= fit:
        return None
    gib = 1 << 30
    return (f"{frame_count} frames at {width}x{height} would take {frame_count * frame_bytes(width, height) / gib:.1f} "
            f"GiB as decoded frames, but only {available / gib:.1f} GiB of memory is free: at most {fit} frames fit "
            f"(half the free memory; VAE Decode needs as much again). Lower frame_count, raise frame_stride or "
            f"load a smaller width and height.")
