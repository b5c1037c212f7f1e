"""Null-text inversion against plain DDIM Invert: time and peak memory (issue 16).

    .venv/bin/python bench/null_text.py [--model tiny|full] [--frames 4] [--size 128] [--steps 5] [--inner 3]

Random SD1.5-architecture weights, inflated, random latents and random text conditioning (bench/worker.py).
Three runs, each in its own process so that its peak memory is its own, after a one-step warm-up: DDIM Invert (`sampling.ddim_invert`),
null-text inversion in fast mode (the same inversion under the source prompt), and the full null-text
inversion with `--inner` Adam iterations per step (epsilon 0, so that every step runs them all, the worst
case; Video-P2P's early stop only shortens it). Writes bench/results/null_text.json. Never a test.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import machine  # bench/ is this script's folder, first on sys.path
import worker
from run import RESULTS, run_worker

TASKS = ("ddim_invert", "null_text_fast", "null_text")


def one(spec: dict) -> dict:
    core, _, inflated, latents = worker.common({"frames": spec["frames"], "size": spec["size"],
                                                "model_size": spec["model"]})
    from tav_core.testing.comfy_inprocess import pack_core

    null_text = pack_core("null_text").null_text
    with torch.inference_mode():
        worker.randomise_temporal(core, inflated)
    positive, negative = worker.conditioning(0), worker.conditioning(1)
    with torch.inference_mode():  # warm-up: the model's first load and first calls are not the method's cost
        core.sampling.ddim_invert(inflated, latents, positive, 1, callback=lambda *a: None)
    memory = worker.PeakMemory()
    memory.reset()
    start = time.perf_counter()
    with torch.inference_mode():
        if spec["task"] == "ddim_invert":
            core.sampling.ddim_invert(inflated, latents, positive, spec["steps"], callback=lambda *a: None)
        else:
            null_text.null_text_invert(inflated, latents, positive, negative, spec["steps"], 7.5, spec["inner"], 0.0,
                                       fast=spec["task"] == "null_text_fast", callback=lambda *a: None)
    worker.sync()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_mb": memory.growth_mb(), "memory_method": memory.method,
            "threads": torch.get_num_threads(), "machine": machine.capability(), "device": str(worker.device())}


def main() -> None:
    if len(sys.argv) == 2 and sys.argv[1].startswith("{"):  # one configuration, in its own process
        print("RESULT:" + json.dumps(one(json.loads(sys.argv[1]))), flush=True)
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny", choices=["tiny", "full"])
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--inner", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = []
    for task in TASKS:
        spec = {"task": task, "model": args.model, "frames": args.frames, "size": args.size, "steps": args.steps,
                "inner": args.inner}
        results.append(run_worker(spec, args.timeout, script=Path(__file__).resolve()))
        print(json.dumps({k: results[-1].get(k) for k in ("spec", "seconds", "peak_mb", "error")}), flush=True)
    (RESULTS / "null_text.json").write_text(json.dumps(results, indent=1))
    base = results[0]
    if "error" not in base:
        print(f"\n{machine.describe(base['machine'])}, {base['threads']} threads, {base['device']}")
        print("| run | seconds | x DDIM Invert | peak MB |\n|---|---|---|---|")
        for r in results:
            if "error" not in r:
                print(f"| {r['spec']['task']} | {r['seconds']:.1f} | {r['seconds'] / base['seconds']:.1f} | "
                      f"{r['peak_mb']:.0f} |")


if __name__ == "__main__":
    main()
