"""The GPU check, run by bench/device_check.sh (which sets up the staged ComfyUI and wheels).

1. builds the random full-size SD1.5 checkpoint (toy size with --cpu);
2. runs tests/comfy on the machine's device (CUDA when present: the in-process ComfyUI picks it);
3. benchmarks 24 frames at 512x512: a bf16 tune step with gradient checkpointing, a DDIM inversion
   step and a CFG sampling step, each in a fresh process, with peak VRAM and the fraction of the
   measured bf16 matmul peak; and the 500-step tune time that the step time implies.
Not a test; its numbers go into bench/NOTES.md and the README by hand, with the date and the GPU.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import machine  # bench/, this script's folder, is first on sys.path
from run import ROOT, run_worker

PAPER_STEPS = 500
VRAM_TARGET_GB = 24
TUNE_TARGET_S = 120


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="the same code path on a CPU, at toy sizes")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the warm-up")
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args()
    if args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch starts in any process
    frames, size, model_size, matmul = (2, 64, "tiny", 1024) if args.cpu else (24, 512, "full", 8192)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(os.environ.get("OUT") or ROOT / "bench" / "results" / f"device-{stamp}")
    out.mkdir(parents=True, exist_ok=True)

    import torch

    report = {"timestamp": stamp, "machine": machine.capability(), "torch": torch.__version__,
              "cuda": torch.cuda.is_available(), "frames": frames, "size": size, "model": model_size}
    print(f"[device-check] {machine.describe(report['machine'])}", flush=True)
    sys.path.insert(0, str(ROOT))
    from tav_core.testing.checkpoints import cached_sd15_checkpoint

    report["checkpoint"] = str(cached_sd15_checkpoint(size=model_size))

    if not args.skip_tests:
        log = out / "pytest.log"
        with open(log, "w") as f:
            proc = subprocess.run([sys.executable, "-m", "pytest", "tests/comfy", "-q", "-rs", "-p", "no:cacheprovider"],
                                  cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        summary = log.read_text().strip().splitlines()[-1:]
        report["tests"] = {"exit": proc.returncode, "summary": summary[0] if summary else ""}
        print(f"[device-check] tests/comfy: {report['tests']['summary']}", flush=True)

    base = {"frames": frames, "size": size, "steps": args.steps, "model_size": model_size}
    peak = run_worker({"task": "peak", "matmul": matmul}, 1800)
    tune = run_worker({"task": "tune", "gc": True, "precision": "bf16", **base}, 3600)
    sample = run_worker({"task": "sample", "naive": False, "bf16": True, **base}, 3600)
    report["raw"] = {"peak": peak, "tune": tune, "sample": sample}
    report["summary"] = summarise(peak, tune, sample)
    (out / "device_check.json").write_text(json.dumps(report, indent=1))
    (out / "device_check.md").write_text(markdown(report))
    print((out / "device_check.md").read_text())
    failed = any("error" in r for r in (peak, tune, sample)) or report.get("tests", {}).get("exit", 0) != 0
    return 1 if failed else 0


def summarise(peak: dict, tune: dict, sample: dict) -> dict:
    bf16_peak = peak.get("bfloat16", {}).get("tflops")
    step = tune.get("median_s")
    achieved = tune["flops"] / step / 1e12 if step and tune.get("flops") else None
    return {
        "bf16_matmul_peak_tflops": bf16_peak,
        "tune_step_s": step,
        "tune_500_steps_s": step * PAPER_STEPS if step else None,
        "tune_peak_mb": tune.get("cuda_max_allocated_mb", tune.get("peak_mb")),
        "tune_tflops": achieved,
        "tune_fraction_of_bf16_peak": achieved / bf16_peak if achieved and bf16_peak else None,
        "invert_step_s": sample.get("invert", {}).get("median_s"),
        "cfg_step_s": sample.get("cfg_fp32", {}).get("median_s"),
        "cfg_bf16_autocast_step_s": sample.get("cfg_bf16", {}).get("median_s"),
        "sample_peak_mb": sample.get("cuda_max_allocated_mb", sample.get("cfg_fp32", {}).get("peak_mb")),
        "errors": {k: r["error"] for k, r in (("peak", peak), ("tune", tune), ("sample", sample)) if "error" in r},
    }


def markdown(report: dict) -> str:
    s = report["summary"]

    def f(x, digits=2):
        return "–" if x is None else f"{x:.{digits}f}"

    vram_ok = s["tune_peak_mb"] is not None and s["tune_peak_mb"] / 1024 <= VRAM_TARGET_GB
    time_ok = s["tune_500_steps_s"] is not None and s["tune_500_steps_s"] <= TUNE_TARGET_S
    lines = [
        f"# Device check {report['timestamp']}", "",
        f"{machine.describe(report['machine'])}; torch {report['torch']}; {report['frames']} frames at "
        f"{report['size']}x{report['size']}, random SD1.5 ({report['model']}).", "",
        f"- tests/comfy: {report.get('tests', {}).get('summary', 'skipped')}",
        f"- bf16 matmul peak: {f(s['bf16_matmul_peak_tflops'], 1)} TFLOP/s",
        f"- One-Shot Tune step (bf16 autocast, gradient checkpointing): {f(s['tune_step_s'], 3)} s; "
        f"{PAPER_STEPS} steps: {f(s['tune_500_steps_s'], 0)} s (target < {TUNE_TARGET_S} s: "
        f"{'met' if time_ok else 'not met'}); {f(s['tune_tflops'], 1)} TFLOP/s = "
        f"{f(100 * s['tune_fraction_of_bf16_peak'] if s['tune_fraction_of_bf16_peak'] else None, 1)} % of the bf16 peak",
        f"- tune peak memory: {f(s['tune_peak_mb'], 0)} MB (target <= {VRAM_TARGET_GB} GB: "
        f"{'met' if vram_ok else 'not met'})",
        f"- DDIM Invert step: {f(s['invert_step_s'], 3)} s; CFG sampling step: {f(s['cfg_step_s'], 3)} s "
        f"(bf16 autocast {f(s['cfg_bf16_autocast_step_s'], 3)} s); sampling peak {f(s['sample_peak_mb'], 0)} MB",
    ]
    if s["errors"]:
        lines.append(f"- errors: {s['errors']}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
