"""Tune-A-Video benchmark: One-Shot Tune, Video Sample (CFG), DDIM Invert on the full-size SD1.5
architecture with random weights. Not a test. See bench/NOTES.md.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/run.py --quick
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/run.py --frames 4,8,16,24 --sizes 128,256

Every configuration runs in a fresh subprocess (bench/worker.py), so its peak memory is its own.
Writes bench/results/<timestamp>.json, bench/results/latest.md and bench/results/latest.png.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import machine  # bench/, this script's folder, is first on sys.path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"


def run_worker(spec: dict, timeout: float, python: str = sys.executable, script: Path = HERE / "worker.py",
               cwd: Path = ROOT) -> dict:
    """Run one configuration in a fresh process; its RESULT line, or the error, plus the load."""
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", TQDM_DISABLE="1")
    load_before = os.getloadavg()
    t = time.perf_counter()
    label = " ".join(f"{k}={v}" for k, v in spec.items() if k not in ("results_dir",))
    print(f"[bench] {label} ...", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run([python, str(script), json.dumps(spec)], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        result = {"error": f"timeout after {timeout:.0f} s"}
    else:
        lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT:")]
        if proc.returncode == 0 and lines:
            result = json.loads(lines[-1][len("RESULT:"):])
        else:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            result = {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
    result["spec"] = spec
    result["load_avg_before"] = load_before[0]
    result["load_avg_after"] = os.getloadavg()[0]
    result["elapsed_s"] = time.perf_counter() - t
    print(f"[bench]   done in {result['elapsed_s']:.0f} s (load {load_before[0]:.1f} -> "
          f"{result['load_avg_after']:.1f})" + (f" ERROR {result['error']}" if "error" in result else ""),
          file=sys.stderr, flush=True)
    return result


def fmt(x, digits=2):
    if x is None:
        return "–"
    if isinstance(x, str):
        return x
    return f"{x:.{digits}f}"


def summarise(results: dict) -> dict:
    """Derived numbers: achieved TFLOP/s, fraction of measured peak, growth with frames."""
    peak = results.get("peak", {})
    f32 = peak.get("float32", {})
    peak_tflops = 2 * peak.get("matmul", 4096) ** 3 / min(f32["seconds"]) / 1e12 if f32.get("seconds") else None
    rows = []
    for cfg in results["configs"]:
        size, frames = cfg["size"], cfg["frames"]
        tune_on, tune_off, sample = cfg.get("tune_gc_on", {}), cfg.get("tune_gc_off", {}), cfg.get("sample", {})
        cfgs = sample.get("cfg_fp32", {})
        row = {"size": size, "frames": frames,
               "tune_on_s": tune_on.get("median_s"), "tune_off_s": tune_off.get("median_s"),
               "tune_on_mb": tune_on.get("peak_mb"), "tune_off_mb": tune_off.get("peak_mb"),
               "tune_on_gflop": (tune_on.get("flops") or 0) / 1e9 or None,
               "tune_off_gflop": (tune_off.get("flops") or 0) / 1e9 or None,
               "sample_s": cfgs.get("median_s"), "sample_mb": cfgs.get("peak_mb"),
               "sample_gflop": (cfgs.get("flops") or 0) / 1e9 or None,
               "invert_s": sample.get("invert", {}).get("median_s"),
               "naive_s": sample.get("cfg_naive_full_attention", {}).get("median_s"),
               "naive_gflop": (sample.get("cfg_naive_full_attention", {}).get("flops") or 0) / 1e9 or None,
               "bf16_s": sample.get("cfg_bf16", {}).get("median_s"),
               "bf16_err": sample.get("cfg_bf16", {}).get("rel_error"),
               "errors": {k: v["error"] for k, v in cfg.items() if isinstance(v, dict) and "error" in v}}
        for key, flops in (("tune_on", row["tune_on_gflop"]), ("tune_off", row["tune_off_gflop"]),
                           ("sample", row["sample_gflop"])):
            t = row[f"{key}_s"]
            row[f"{key}_tflops"] = flops / 1e3 / t if flops and t else None
            row[f"{key}_frac"] = row[f"{key}_tflops"] / peak_tflops if row[f"{key}_tflops"] and peak_tflops else None
        rows.append(row)
    growth = []
    for size in sorted({r["size"] for r in rows}):
        by_f = {r["frames"]: r for r in rows if r["size"] == size}
        fs = sorted(by_f)
        for a, b in zip(fs, fs[1:]):
            entry = {"size": size, "from": a, "to": b, "frame_ratio": b / a}
            for key in ("tune_on_s", "tune_off_s", "sample_s", "invert_s", "naive_s", "tune_on_mb", "tune_off_mb"):
                x, y = by_f[a].get(key), by_f[b].get(key)
                entry[key] = y / x if x and y else None
            growth.append(entry)
    return {"peak_fp32_tflops_best": peak_tflops,
            "peak_fp32_tflops_median": f32.get("tflops"),
            "peak_bf16_tflops_median": peak.get("bfloat16", {}).get("tflops"),
            "rows": rows, "growth": growth}


def markdown(results: dict, summary: dict) -> str:
    meta = results["meta"]
    lines = [f"# Tune-A-Video benchmark {meta['timestamp']}", "",
             f"Device {meta['device']}, {meta['cpu_count']} CPUs, {machine.describe(meta['machine'])}, "
             f"torch {meta['torch']}; random-weight SD1.5 "
             f"(full architecture); ComfyUI attention backend: {meta.get('attention', 'default')}; "
             f"{meta['steps']} timed steps after 1 warm-up, medians. "
             f"Load average {meta['load_start']:.1f} at start, {meta['load_end']:.1f} at end"
             + (" (**shared machine, measured under load**)" if max(meta['load_start'], meta['load_end']) > 1.5 else "")
             + ".", "",
             f"Measured peak: fp32 {fmt(summary['peak_fp32_tflops_best'], 3)} TFLOP/s (best of "
             f"{meta['matmul']}² matmul; median {fmt(summary['peak_fp32_tflops_median'], 3)}), bf16 median "
             f"{fmt(summary['peak_bf16_tflops_median'], 3)} TFLOP/s.", "",
             "| size | F | tune s/step GC on | GC off | tune peak MB GC on | GC off | tune GFLOP/step (on/off) | "
             "tune % peak (on/off) | CFG sample s/step | sample peak MB | sample GFLOP/step | sample % peak | "
             "invert s/step | naive full-attn s/step (GFLOP) | bf16 s/step | bf16 rel err |",
             "|" + "---|" * 16]
    for r in summary["rows"]:
        pct = lambda x: fmt(x * 100 if x is not None else None, 0)
        lines.append(
            f"| {r['size']} | {r['frames']} | {fmt(r['tune_on_s'])} | {fmt(r['tune_off_s'])} | "
            f"{fmt(r['tune_on_mb'], 0)} | {fmt(r['tune_off_mb'], 0)} | "
            f"{fmt(r['tune_on_gflop'], 0)} / {fmt(r['tune_off_gflop'], 0)} | "
            f"{pct(r['tune_on_frac'])} / {pct(r['tune_off_frac'])} | {fmt(r['sample_s'])} | "
            f"{fmt(r['sample_mb'], 0)} | {fmt(r['sample_gflop'], 0)} | {pct(r['sample_frac'])} | "
            f"{fmt(r['invert_s'])} | {fmt(r['naive_s'])} ({fmt(r['naive_gflop'], 0)}) | {fmt(r['bf16_s'])} | "
            f"{fmt(r['bf16_err'], 4)} |")
    errors = [(r["size"], r["frames"], e) for r in summary["rows"] for e in r["errors"].items()]
    if errors:
        lines += ["", "Failed configurations:"] + [f"- {s} px, {f} frames, {k}: {v}" for s, f, (k, v) in errors]
    if summary["growth"]:
        lines += ["", "Growth with frames (time or memory ratio; linear in F means ratio = frame ratio):", "",
                  "| size | frames | frame ratio | tune GC on | tune GC off | CFG sample | invert | naive | "
                  "tune MB GC on | tune MB GC off |", "|" + "---|" * 10]
        for g in summary["growth"]:
            lines.append(f"| {g['size']} | {g['from']}→{g['to']} | {fmt(g['frame_ratio'])} | {fmt(g['tune_on_s'])} | "
                         f"{fmt(g['tune_off_s'])} | {fmt(g['sample_s'])} | {fmt(g['invert_s'])} | "
                         f"{fmt(g['naive_s'])} | {fmt(g['tune_on_mb'])} | {fmt(g['tune_off_mb'])} |")
    prof = results.get("profile")
    if prof and "error" not in prof:
        spec = prof["spec"]
        lines += ["", f"Profile at {spec['frames']} frames, {spec['size']} px (self CPU time by category, ms):", ""]
        for name in ("tune_step", "sample_step"):
            cats = prof[name]["by_category_ms"]
            total = prof[name]["total_self_cpu_ms"]
            lines.append(f"- {name}: total {total:.0f} ms; " + ", ".join(
                f"{k} {v:.0f} ({100 * v / total:.0f}%)" for k, v in cats.items()))
        g = prof["video_groupnorm_forward"]
        lines.append(f"- video GroupNorm hook, one cfg-1 UNet forward: {g['double_s']:.2f} s as is vs "
                     f"{g['single_s']:.2f} s with the {g['hooked_norms']} hooked norms computed once "
                     f"(outputs differ by {g['same_output_rel_error']:.1e})")
    elif prof:
        lines += ["", f"Profile failed: {prof['error']}"]
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.5))
    series = (("tune_on", "tune GC on"), ("tune_off", "tune GC off"), ("sample", "CFG sample"),
              ("invert", "invert"), ("naive", "naive full attn (CFG)"), ("bf16", "CFG sample bf16"))
    for size in sorted({r["size"] for r in summary["rows"]}):
        rows = sorted((r for r in summary["rows"] if r["size"] == size), key=lambda r: r["frames"])
        for key, label in series:
            pts = [(r["frames"], r[f"{key}_s"]) for r in rows if r.get(f"{key}_s")]
            if pts:
                ax_t.plot(*zip(*pts), marker="o", label=f"{label} {size}px")
        for key, label in (("tune_on", "tune GC on"), ("tune_off", "tune GC off"), ("sample", "CFG sample")):
            pts = [(r["frames"], r[f"{key}_mb"]) for r in rows if r.get(f"{key}_mb") is not None]
            if pts:
                ax_m.plot(*zip(*pts), marker="o", label=f"{label} {size}px")
    ax_t.set(xlabel="frames", ylabel="seconds per step (median)", title="Step time")
    ax_m.set(xlabel="frames", ylabel="peak memory growth (MB)", title="Peak memory")
    for ax in (ax_t, ax_m):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="frames 4,8 at 128 px, 2 timed steps")
    parser.add_argument("--frames", default=None, help="comma-separated frame counts (default 4,8,16,24)")
    parser.add_argument("--sizes", default=None, help="comma-separated pixel sizes (default 128,256; +512 on CUDA)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps after the warm-up (default 3)")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--no-tune", action="store_true")
    parser.add_argument("--gc", choices=("both", "on", "off"), default="both",
                        help="tune with gradient checkpointing on, off or both (default both)")
    parser.add_argument("--attention", choices=("default", "pytorch"), default="default",
                        help="ComfyUI attention backend: its default, or PyTorch SDPA "
                             "(as --use-pytorch-cross-attention)")
    parser.add_argument("--no-naive", action="store_true")
    parser.add_argument("--no-bf16", action="store_true")
    parser.add_argument("--naive-max-tokens", type=int, default=16384,
                        help="skip the naive baseline where F x (size/8)^2 exceeds this (its cost is quadratic)")
    parser.add_argument("--flop-max-tokens", type=int, default=16384,
                        help="count tune FLOPs (one more step, under torch's FlopCounterMode, which holds "
                             "more memory) only where F x (size/8)^2 is at most this")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per configuration")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    import torch

    cuda = torch.cuda.is_available()
    frames = [int(f) for f in (args.frames or ("4,8" if args.quick else "4,8,16,24")).split(",")]
    sizes = [int(s) for s in (args.sizes or ("128" if args.quick else ("128,256,512" if cuda else "128,256"))).split(",")]
    steps = args.steps or (2 if args.quick else 3)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    profile_dir = RESULTS / f"{stamp}-profile"

    results = {"meta": {"timestamp": stamp, "device": "cuda" if cuda else "cpu", "cpu_count": os.cpu_count(),
                        "machine": machine.capability(),
                        "torch": torch.__version__, "python": platform.python_version(), "steps": steps,
                        "frames": frames, "sizes": sizes, "quick": args.quick, "matmul": 4096,
                        "attention": args.attention,
                        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "load_start": os.getloadavg()[0]},
               "configs": []}
    t0 = time.perf_counter()
    results["peak"] = run_worker({"task": "peak", "matmul": 4096, "repeats": 5}, args.timeout)
    for size in sizes:
        for f in frames:
            cfg = {"size": size, "frames": f}
            base = {"frames": f, "size": size, "steps": steps,
                    **({"attention": args.attention} if args.attention != "default" else {})}
            tune = {**base, "flops": f * (size // 8) ** 2 <= args.flop_max_tokens}
            if not args.no_tune:
                if args.gc in ("both", "on"):
                    cfg["tune_gc_on"] = run_worker({"task": "tune", **tune, "gc": True}, args.timeout)
                if args.gc in ("both", "off"):
                    cfg["tune_gc_off"] = run_worker({"task": "tune", **tune, "gc": False}, args.timeout)
            naive = not args.no_naive and f * (size // 8) ** 2 <= args.naive_max_tokens
            cfg["sample"] = run_worker({"task": "sample", **base, "naive": naive, "bf16": not args.no_bf16},
                                       args.timeout)
            results["configs"].append(cfg)
    if not args.no_profile:
        profile_dir.mkdir(exist_ok=True)
        results["profile"] = run_worker({"task": "profile", "frames": 8, "size": 128, "steps": steps,
                                         "results_dir": str(profile_dir),
                                         **({"attention": args.attention} if args.attention != "default" else {})},
                                        args.timeout)
    results["meta"]["load_end"] = os.getloadavg()[0]
    results["meta"]["total_s"] = time.perf_counter() - t0
    out = RESULTS / f"{stamp}.json"
    out.write_text(json.dumps(results, indent=1))  # raw results first, whatever happens below
    summary = summarise(results)
    results["summary"] = summary
    out.write_text(json.dumps(results, indent=1))
    md = markdown(results, summary)
    (RESULTS / "latest.md").write_text(md)
    plot(summary, RESULTS / "latest.png")
    print(md)
    print(f"[bench] wrote {out}, {RESULTS / 'latest.md'}, {RESULTS / 'latest.png'} "
          f"in {results['meta']['total_s']:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
