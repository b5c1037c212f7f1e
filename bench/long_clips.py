"""Long clips: memory and time against the clip's length, windowed and whole-clip (issue 14).

    .venv/bin/python bench/long_clips.py [--frames 24 48 96 192] [--whole-up-to 48] [--tasks tune invert sample]

The SD1.5 architecture (random weights) at 128 px, window_frames 16 (overlap 4 in inversion and
sampling), fp32 on CPUs. One configuration per process (bench/worker.py's rule), one warm-up step and
`--steps` timed steps each. Writes bench/results/long_clips.json and long_clips.png. Never a test.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time

import torch

import worker  # bench/ is this script's folder, first on sys.path
from run import RESULTS, run_worker

WINDOW, OVERLAP, SIZE = 16, 4, 128


def cpu_capability() -> dict:
    flags = subprocess.run(["bash", "-c", "lscpu | grep -o 'amx[a-z_0-9]*' | sort -u"], capture_output=True,
                           text=True).stdout.split()
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "amx_flags": flags,
            "machine": platform.processor() or platform.machine()}


def one(spec: dict) -> dict:
    core, _, inflated, latents = worker.common({"frames": spec["frames"], "size": SIZE})
    from tav_core.testing.comfy_inprocess import pack_core

    windows = pack_core("windows").windows
    window = spec["window"]
    memory = worker.PeakMemory()
    if spec["task"] == "tune":
        marks = []
        memory.reset()
        settings = core.tuning.TuneSettings(steps=1 + spec["steps"], window_frames=window,
                                            precision="fp32" if worker.device().type == "cpu" else "auto")
        with torch.inference_mode():
            core.tuning.tune(inflated, worker.conditioning(0), {"samples": latents}, settings,
                             lambda *a: marks.append(time.perf_counter()))
        times = [b - a for a, b in zip(marks, marks[1:])]
    else:
        with torch.inference_mode():
            worker.randomise_temporal(core, inflated)
        model = windows.with_windows(inflated, window, OVERLAP)
        memory.reset()
        negative = worker.conditioning(1)
        fn = (worker._invert(core, model, latents, negative) if spec["task"] == "invert"
              else worker._sample(core, model, latents, worker.conditioning(0), negative))
        with torch.inference_mode():
            times, _ = worker.timed_sampler(fn, spec["steps"])
    step_s = worker.median(times)
    return {"step_seconds": times, "median_s": step_s, "s_per_frame": step_s / spec["frames"],
            "peak_mb": memory.growth_mb(), "memory_method": memory.method,
            "threads": torch.get_num_threads(), **cpu_capability()}


def plot(results: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (mem, per_frame) = plt.subplots(1, 2, figsize=(11, 4))
    for task, style in (("tune", "o"), ("invert", "s"), ("sample", "^")):
        for window, line in ((WINDOW, "-"), (0, "--")):
            rows = sorted((r for r in results if r["spec"]["task"] == task and r["spec"]["window"] == window
                           and "error" not in r), key=lambda r: r["spec"]["frames"])
            if not rows:
                continue
            label = f"{task}, {'window 16' if window else 'whole clip'}"
            frames = [r["spec"]["frames"] for r in rows]
            mem.plot(frames, [r["peak_mb"] / 1024 for r in rows], line + style, label=label)
            per_frame.plot(frames, [r["s_per_frame"] for r in rows], line + style, label=label)
    mem.set(xlabel="frames", ylabel="peak memory growth (GiB)", xscale="log", title="memory")
    per_frame.set(xlabel="frames", ylabel="seconds per frame per step", xscale="log", title="time")
    for ax in (mem, per_frame):
        ax.grid(alpha=0.3)
    mem.legend(fontsize=7)
    fig.suptitle(f"SD1.5 architecture, {SIZE} px, fp32, {cpu_capability()['cpu_capability']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    if len(sys.argv) == 2 and sys.argv[1].startswith("{"):  # one configuration, in its own process
        print("RESULT:" + json.dumps(one(json.loads(sys.argv[1]))), flush=True)
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, nargs="+", default=[24, 48, 96, 192])
    parser.add_argument("--whole-up-to", type=int, default=48, help="whole-clip runs up to this many frames")
    parser.add_argument("--tasks", nargs="+", default=["tune", "invert", "sample"])
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "long_clips.json"
    results = json.loads(out.read_text()) if out.exists() else []
    for task in args.tasks:
        for frames in args.frames:
            for window in (WINDOW, 0):
                if window == 0 and frames > args.whole_up_to:
                    continue
                spec = {"task": task, "frames": frames, "window": window, "steps": args.steps}
                results = [r for r in results if r["spec"] != spec]
                results.append(run_worker(spec, args.timeout, script=__import__("pathlib").Path(__file__).resolve()))
                out.write_text(json.dumps(results, indent=1))
                plot(results, RESULTS / "long_clips.png")
                print(json.dumps({k: results[-1].get(k) for k in ("spec", "median_s", "s_per_frame", "peak_mb",
                                                                  "error")}), flush=True)


if __name__ == "__main__":
    main()
