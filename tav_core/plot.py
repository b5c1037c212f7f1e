"""The loss curve as an IMAGE (Pillow only: no plotting library at run time)."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def smoothed(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average with bias correction, as TensorBoard smooths curves."""
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight ** i))
    return out


def loss_curve_image(losses: list[float], width: int = 640, height: int = 360) -> np.ndarray:
    """float32 [H, W, 3] in 0..1: raw losses in light blue, their moving average in dark blue."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, right, top, bottom = 60, width - 20, 30, height - 40
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text((left, 8), f"One-Shot Tune loss ({len(losses)} steps)", fill="black", font=font)
    draw.text(((left + right) // 2 - 12, bottom + 14), "step", fill="black", font=font)
    if losses:
        low, high = min(losses), max(losses)
        span = (high - low) or 1.0
        draw.text((4, top), f"{high:.3g}", fill="black", font=font)
        draw.text((4, bottom - 10), f"{low:.3g}", fill="black", font=font)

        def point(i, value):
            x = left + (right - left) * (i / max(len(losses) - 1, 1))
            return x, bottom - (bottom - top) * (value - low) / span

        for series, colour, line_width in ((losses, (150, 190, 240), 1), (smoothed(losses), (20, 60, 160), 2)):
            points = [point(i, v) for i, v in enumerate(series)]
            if len(points) == 1:
                points = points * 2
            draw.line(points, fill=colour, width=line_width)
    return np.asarray(image, dtype=np.float32) / 255.0
