"""Draw the Comfy Registry icon (assets/icon.png, 400x400) and banner (assets/banner.png, 21:9)."""
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ASSETS = Path(__file__).resolve().parents[1] / "assets"
# Video frames whose colours turn from the source clip's into an edit's while the motion (the ball) stays.

def lerp(a, b, t):
    return tuple(int(a[i] + (b[i] - a[i]) * t) for i in range(3))

def frame(draw, x, y, w, h, t, edited):
    sky = lerp((70, 120, 200), (250, 150, 60), edited)
    snow = lerp((235, 240, 250), (240, 210, 140), edited)
    draw.rounded_rectangle([x, y, x + w, y + h], radius=max(4, w // 14), fill=sky)
    draw.polygon([(x, y + h * 0.65), (x + w * 0.45, y + h * 0.35), (x + w, y + h * 0.7), (x + w, y + h), (x, y + h)], fill=snow)
    r = w * 0.09
    cx, cy = x + w * (0.2 + 0.6 * t), y + h * (0.45 + 0.15 * t)
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=lerp((200, 30, 40), (30, 30, 40), edited))

def strip(img, x0, y0, w, h, n, gap):
    d = ImageDraw.Draw(img)
    for i in range(n):
        t = i / max(1, n - 1)
        frame(d, x0 + i * (w + gap), y0, w, h, t, edited=min(1.0, max(0.0, (t - 0.2) / 0.6)))

def font(size):
    for path in ("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",):
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            pass
    return ImageFont.load_default()

icon = Image.new("RGB", (400, 400), (24, 26, 34))
d = ImageDraw.Draw(icon)
for i, (x, y) in enumerate([(40, 40), (210, 40), (40, 210), (210, 210)]):
    frame(d, x, y, 150, 150, i / 3, edited=i / 3)
icon.save(ASSETS / "icon.png")

banner = Image.new("RGB", (1260, 540), (24, 26, 34))
strip(banner, 60, 250, 180, 180, 6, 20)
d = ImageDraw.Draw(banner)
d.text((60, 70), "Tune-A-Video", font=font(84), fill=(240, 240, 245))
d.text((64, 175), "one clip, one prompt: edit the video, keep the motion", font=font(34), fill=(170, 180, 200))
banner.save(ASSETS / "banner.png")
