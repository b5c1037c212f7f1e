"""Soak benchmark: N full Tune-A-Video prompts in a row on one real ComfyUI server, RSS after each.

Not a test: it shows whether memory stays flat over many prompts (a leak grows it prompt by prompt).
Every prompt is the example workflow (example_workflows/api/tune-a-video.json) at the demo's CPU
size, with its own source prompt and seed, so that every node runs again (tuning included).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/soak.py -n 5 [--size tiny|full] [--cache]
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tav_core.testing.server import ComfyServer  # noqa: E402
from tav_core.video import write_synthetic_clip  # noqa: E402

WORKFLOW = ROOT / "example_workflows" / "api" / "tune-a-video.json"
CLIP = "soak-clip.mp4"
SETTINGS = {"TAVLoadVideo": {"video": CLIP, "frame_count": 4, "width": 64, "height": 64},
            "TAVOneShotTune": {"steps": 3}, "TAVDDIMInvert": {"steps": 3}, "TAVVideoSample": {"steps": 3}}


def process_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def prompt_for(run: int, checkpoint: str, cache: bool) -> dict:
    prompt = json.loads(WORKFLOW.read_text())
    for node in prompt.values():
        kind, inputs = node["class_type"], node["inputs"]
        inputs.update(SETTINGS.get(kind, {}))
        if kind == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = checkpoint
        elif kind == "TAVOneShotTune":
            inputs.update(seed=run, cache=cache)
        elif kind == "TAVVideoSample":
            inputs["seed"] = run
        elif kind == "CLIPTextEncode" and inputs.get("text"):
            inputs["text"] = f"{inputs['text']} (soak run {run})"
    return prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=10, help="prompts to run (default 10)")
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny", help="random-weight SD1.5 checkpoint")
    parser.add_argument("--cache", action="store_true", help="One-Shot Tune's disk cache on")
    args = parser.parse_args()

    from tav_core.testing.checkpoints import cached_sd15_checkpoint

    checkpoint = cached_sd15_checkpoint(size=args.size)
    base = ROOT / ".cache" / "soak-run"
    shutil.rmtree(base, ignore_errors=True)
    (base / "input").mkdir(parents=True)
    (base / "models" / "checkpoints").mkdir(parents=True)
    (base / "models" / "checkpoints" / checkpoint.name).symlink_to(checkpoint.resolve())
    write_synthetic_clip(base / "input" / CLIP, frames=24, size=128, fps=12)
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or platform.machine()}, "
          f"checkpoint {args.size}, {args.n} prompts", flush=True)
    with ComfyServer(base) as server:
        pid = server.process.pid
        print(f"server up: RSS {process_rss_mb(pid):.0f} MB", flush=True)
        rows = []
        for run in range(1, args.n + 1):
            started = time.monotonic()
            history = server.run(prompt_for(run, checkpoint.name, args.cache), timeout=3600)
            assert history["status"]["status_str"] == "success", history["status"]
            rows.append((run, time.monotonic() - started, process_rss_mb(pid)))
            print(f"prompt {run}: {rows[-1][1]:.1f} s, RSS {rows[-1][2]:.0f} MB", flush=True)
    first, last = rows[0][2], rows[-1][2]
    print(f"RSS after prompt 1: {first:.0f} MB, after prompt {len(rows)}: {last:.0f} MB "
          f"({last - first:+.0f} MB, {(last - first) / max(1, len(rows) - 1):+.1f} MB per prompt)")


if __name__ == "__main__":
    main()
