"""One size rule for the whole pack (plain Python, shared by Load Video and the model nodes).

A UNet with d downsampling steps needs latents whose sides are multiples of 2^d, that is frames
whose sides are multiples of 8 * 2^d (8 for the VAE). Load Video, where the size is chosen, has no
model: it asks for multiples of 8 * 2^3 = 64, which suits every supported UNet (SD1.x and SD2.x
downsample 3 times, SDXL twice). The model nodes check the same rule for their model
(tav_core.checks), and every error names the nearest valid sizes.
"""
from __future__ import annotations

VAE_FACTOR = 8
MAX_DOWNSAMPLES = 3  # SD1.x, SD2.x
LOAD_VIDEO_MULTIPLE = VAE_FACTOR * 2 ** MAX_DOWNSAMPLES


def nearest_sizes(value: int, multiple: int) -> list[int]:
    """The valid sizes around `value` (one, or the one below and the one above)."""
    if value < multiple:
        return [multiple]
    below = (value // multiple) * multiple
    return [below, below + multiple] if value % multiple else [value]


def size_problem(width: int, height: int, multiple: int) -> str | None:
    """None if width and height are positive multiples of `multiple`, else what to change."""
    bad = [(name, value) for name, value in (("width", width), ("height", height)) if value < multiple or value % multiple]
    if not bad:
        return None
    return "; ".join(f"{name} {value} is not a multiple of {multiple}: use "
                     f"{' or '.join(map(str, nearest_sizes(value, multiple)))}" for name, value in bad)
