"""Which anchor rule for frame windows: each against the whole-clip result (issue 14's decision).

    .venv/bin/python bench/anchor_rules.py [--frames 24] [--window 8] [--overlap 2]

The real clip man-skiing (every 2nd frame, 64 px) on the tiny random-weight SD1.5 UNet with
trained-looking temporal layers; one model call at t = 500 and a 10-step DDIM inversion, windowed by
core's machinery under three rules, each compared with the whole clip in one pass:
- window-local: each window alone, its own first frame as frame 0 (core's windows as they are);
- anchors as a plain video: [0, s-1] + window run as an ordinary video (so anchor s-1 attends to frame 0);
- the pack's rule (windows.py): the same rows, anchor s-1 attending to frame 0 and itself.
Bench-only patches choose the rule; tav_core is not changed. Never a test.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--overlap", type=int, default=2)
    args = parser.parse_args()
    from tav_core.testing.comfy_inprocess import load_comfy_with_pack, pack_core

    load_comfy_with_pack()
    core = pack_core("inflate", "sampling", "video", "windows")
    import comfy.sd
    from tav_core.testing.checkpoints import cached_sd15_checkpoint

    with torch.inference_mode():
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(cached_sd15_checkpoint(size="tiny")),
                                                                    output_vae=True, output_clip=True)
        frames, _ = core.video.read_clip(str(ROOT.parent / "shared" / "videos" / "man-skiing.mp4"), args.frames,
                                         0, 2, 64, 64, "center crop")
        latents = vae.encode(torch.from_numpy(frames))
        empty = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    inflated = core.inflate.inflate(model, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in core.inflate.temporal_layers(inflated).named_parameters():
            if "attn_temp.to_out" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)

    windows = core.windows
    original = windows.AnchoredWindow.of.__func__

    def window_local(cls, window):
        anchored = original(cls, window)
        anchored.anchors = []
        anchored.frame_rows = list(window.index_list)
        anchored.former_rows = (torch.arange(len(window.index_list)) - 1).clamp(min=0)
        return anchored

    def plain_video(cls, window):
        anchored = original(cls, window)
        anchored.former_rows = (torch.arange(len(anchored.frame_rows)) - 1).clamp(min=0)
        return anchored

    def run(model):
        with torch.inference_mode():
            return core.sampling.ddim_invert(model, latents, empty, 10, callback=lambda *a: None)

    whole = run(inflated)
    windowed = windows.with_windows(inflated, args.window, args.overlap)
    results = {}
    for name, rule in (("window-local", window_local), ("anchors as a plain video", plain_video),
                       ("pack rule (anchor attends to frame 0 and itself)", original)):
        windows.AnchoredWindow.of = classmethod(rule)
        got = run(windowed)
        results[name] = float((got - whole).norm() / whole.norm())
    windows.AnchoredWindow.of = classmethod(original)
    print(json.dumps({"frames": args.frames, "window": args.window, "overlap": args.overlap,
                      "relative_error_vs_whole_clip_inversion_10_steps": results}, indent=1))


if __name__ == "__main__":
    main()
