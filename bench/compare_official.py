"""Side by side with the official Tune-A-Video code (showlab/Tune-A-Video), on the same machine.

Bring your own checkout of the official code and an environment it runs in (its requirements:
diffusers 0.11.1, transformers, accelerate, decord, omegaconf, einops), then:

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/compare_official.py \
        --official /path/to/Tune-A-Video --python /path/to/its/venv/bin/python

Equal work: random weights in the SD1.5 architecture, the same frames and size, fp32, batch 1; the
bf16 rows put ours under bf16 autocast against the official fp32 (issue 11's targets).
Each job is a fresh process (ours: bench/worker.py; official: bench/official.py run from the
checkout), and the implementations alternate (forward, then reversed order, over rounds) so that the
load of a shared machine falls on all of them. Ours runs twice: with ComfyUI's default attention
backend and with its PyTorch SDPA backend (`--use-pytorch-cross-attention`).
Writes bench/results/official-<timestamp>.json and .md. Not a test.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
from pathlib import Path

import machine  # bench/, this script's folder, is first on sys.path
from run import HERE, RESULTS, ROOT, fmt, run_worker

COMFYUI = Path(os.environ.get("COMFYUI_DIR", ROOT / ".comfyui"))
DEFAULT_CLIP = ROOT.parent / "shared" / "videos" / "man-skiing.mp4"

# (key, spec), run by both implementations unless in OURS_ONLY; "gc" is gradient checkpointing. The
# official code's reentrant checkpointing leaves the down blocks untrained, so only its GC-off run
# trains every chosen tensor: rows pairing it with its GC-on run carry no target.
JOBS = (
    ("tune_gc_on", {"task": "tune", "gc": True}),
    ("tune_gc_off", {"task": "tune", "gc": False}),
    ("tune_gc_highest", {"task": "tune", "gc": "highest"}),  # ours only: the official code has no such mode
    # Ours only: bf16 autocast (One-Shot Tune's precision "bf16"), against the official code's fp32.
    ("tune_bf16_gc_on", {"task": "tune", "gc": True, "precision": "bf16"}),
    ("tune_bf16_gc_off", {"task": "tune", "gc": False, "precision": "bf16"}),
    # The official worker samples in fp32 only; ours also samples under bf16 autocast in the same job.
    ("sample", {"task": "sample", "naive": False, "bf16": True}),
)
OURS_ONLY = {"tune_gc_highest", "tune_bf16_gc_on", "tune_bf16_gc_off"}


def job_median(results: list[dict], *path) -> float | None:
    values = []
    for r in results:
        for key in path:
            r = r.get(key, {}) if isinstance(r, dict) else {}
        if isinstance(r, (int, float)):
            values.append(r)
    return statistics.median(values) if values else None


# Our implementation under ComfyUI's default CPU attention backend (sub-quadratic) and under its
# PyTorch SDPA backend (`--use-pytorch-cross-attention`, ComfyUI's default on NVIDIA GPUs).
OURS = {"ours": {}, "ours_sdpa": {"attention": "pytorch"}}


def summarise(runs: dict, ours_key: str) -> list[dict]:
    def row(label, ours_job, ours_path, official_job, official_path, target):
        ours = job_median(runs[ours_key][ours_job], *ours_path)
        official = job_median(runs["official"][official_job], *official_path)
        ratio = ours / official if ours and official else None
        return {"what": label, "ours": ours, "official": official, "ratio": ratio, "target": target}

    s, mb = ("median_s",), ("peak_mb",)
    return [
        row("tune s/step, every chosen tensor trained (ours GC on vs official GC off)",
            "tune_gc_on", s, "tune_gc_off", s, 0.75),
        row("tune s/step, GC off both", "tune_gc_off", s, "tune_gc_off", s, 0.75),
        row("tune s/step, GC on both (official: down blocks untrained)", "tune_gc_on", s, "tune_gc_on", s, None),
        row("tune s/step, ours GC highest-resolution blocks vs official GC off", "tune_gc_highest", s,
            "tune_gc_off", s, 0.75),
        row("tune peak MB, GC on both (official: down blocks untrained)", "tune_gc_on", mb, "tune_gc_on", mb,
            None),
        row("tune peak MB, GC off both", "tune_gc_off", mb, "tune_gc_off", mb, 1.0),
        row("tune peak MB, every chosen tensor trained (ours GC on vs official GC off)",
            "tune_gc_on", mb, "tune_gc_off", mb, 1.0),
        row("tune peak MB, ours GC highest-resolution blocks vs official GC off", "tune_gc_highest", mb,
            "tune_gc_off", mb, 1.0),
        row("bf16 tune s/step, every chosen tensor trained (ours bf16 autocast GC on vs official fp32 GC off)",
            "tune_bf16_gc_on", s, "tune_gc_off", s, 0.5),
        row("bf16 tune s/step, GC off (ours bf16 autocast vs official fp32)", "tune_bf16_gc_off", s, "tune_gc_off", s,
            0.5),
        row("CFG sample s/step", "sample", ("cfg_fp32", "median_s"), "sample", ("cfg_fp32", "median_s"), 1.0),
        row("bf16 CFG sample s/step (ours bf16 autocast vs official fp32)", "sample", ("cfg_bf16", "median_s"),
            "sample", ("cfg_fp32", "median_s"), 0.5),
        row("CFG sample peak MB", "sample", ("cfg_fp32", "peak_mb"), "sample", ("cfg_fp32", "peak_mb"), 1.0),
        row("DDIM invert s/step", "sample", ("invert", "median_s"), "sample", ("invert", "median_s"), None),
    ]


def profile_lines(runs: dict) -> list[str]:
    """One fp32 CFG step under torch.profiler: self CPU ms by op category, median over rounds."""
    profiles = {impl: [r["cfg_fp32"]["profile"] for r in runs[impl]["sample"] if "profile" in r.get("cfg_fp32", {})]
                for impl in runs}
    if not any(profiles.values()):
        return []
    impls = [impl for impl in runs if profiles[impl]]
    categories = list(dict.fromkeys(c for impl in impls for p in profiles[impl] for c in p["by_category_ms"]))
    lines = ["", "One fp32 CFG step under torch.profiler, self CPU ms by category (median over rounds; tables in "
             "the `-profile` folder):", "", "| category | " + " | ".join(impls) + " |", "|---" * (len(impls) + 1) + "|"]
    for category in ["total_self_cpu_ms", *categories]:
        cells = []
        for impl in impls:
            values = [p["total_self_cpu_ms"] if category == "total_self_cpu_ms" else p["by_category_ms"].get(category, 0.0)
                      for p in profiles[impl]]
            cells.append(fmt(statistics.median(values), 0))
        lines.append(f"| {'total' if category == 'total_self_cpu_ms' else category} | " + " | ".join(cells) + " |")
    return lines


def markdown(meta: dict, summaries: dict, runs: dict) -> str:
    lines = [f"# Ours vs official Tune-A-Video, {meta['timestamp']}", "",
             f"{meta['frames']} frames at {meta['size']}×{meta['size']}, fp32 (bf16 rows: ours under bf16 autocast) on "
             f"{meta['device']} "
             f"({machine.describe(meta['machine'])}), random SD1.5 "
             f"weights, batch 1; {meta['steps']} timed steps after 1 warm-up per job, {meta['rounds']} rounds "
             f"alternating the order; medians over rounds of per-job medians. Load average "
             f"{meta['load_start']:.1f} at start, {meta['load_end']:.1f} at end. Official: {meta['official_versions']}.",
             "Peak memory: growth of the process's peak RSS from just before the first training step (or "
             "sampling call), models already loaded."]
    for ours_key, rows in summaries.items():
        lines += ["", f"`{ours_key}` (attention backend {meta['attention_backends'].get(ours_key)}):", "",
                  "| measurement | ours | official | ours / official | target |", "|---|---|---|---|---|"]
        for r in rows:
            target = f"≤ {r['target']:.2f}×" if r["target"] else "–"
            met = "" if r["ratio"] is None or r["target"] is None else (" ✓" if r["ratio"] <= r["target"] else " ✗")
            lines.append(f"| {r['what']} | {fmt(r['ours'])} | {fmt(r['official'])} | {fmt(r['ratio'])}{met} | "
                         f"{target} |")
    lines += profile_lines(runs)
    lines += ["", "Per-job medians in run order (s/step or MB):", ""]
    for impl in runs:
        for key, _ in JOBS:
            if not runs[impl][key]:
                continue
            parts = []
            for r in runs[impl][key]:
                if "error" in r:
                    parts.append(f"ERROR {r['error'][:120]}")
                elif key == "sample":
                    bf16 = f" / bf16 {fmt(r['cfg_bf16']['median_s'])} s" if "cfg_bf16" in r else ""
                    parts.append(f"{fmt(r['cfg_fp32']['median_s'])} s{bf16} / invert {fmt(r['invert']['median_s'])} s "
                                 f"(load {r['load_avg_before']:.1f})")
                else:
                    parts.append(f"{fmt(r['median_s'])} s, {fmt(r['peak_mb'], 0)} MB (load {r['load_avg_before']:.1f})")
            lines.append(f"- {impl} {key}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", type=Path, required=True, help="checkout of showlab/Tune-A-Video")
    parser.add_argument("--python", required=True, help="python of an environment the official code runs in")
    parser.add_argument("--clip", type=Path, default=DEFAULT_CLIP, help="video the official script tunes on")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the warm-up")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", default=None,
                        help="comma-separated job keys (" + ",".join(k for k, _ in JOBS) + ")")
    parser.add_argument("--ours", default=",".join(OURS), help="comma-separated variants of ours to run")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--profile", action="store_true",
                        help="profile one more fp32 CFG step in every sample job (torch.profiler, self CPU time)")
    args = parser.parse_args(argv)

    if not (args.official / "train_tuneavideo.py").exists():
        parser.error(f"{args.official} is not a Tune-A-Video checkout (no train_tuneavideo.py)")
    if not args.clip.exists():
        parser.error(f"clip not found: {args.clip}")
    import torch

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    cache = ROOT / ".cache" / "bench-official"
    cache.mkdir(parents=True, exist_ok=True)
    base = {"frames": args.frames, "size": args.size, "steps": args.steps}
    official_extra = {"clip": str(args.clip.resolve()), "cache": str(cache),
                      "tokenizer": str(COMFYUI / "comfy" / "sd1_tokenizer")}
    jobs = [(k, s) for k, s in JOBS if not args.only or k in args.only.split(",")]
    ours = [k for k in args.ours.split(",") if k in OURS]
    runs = {impl: {k: [] for k, _ in JOBS} for impl in (*ours, "official")}
    meta = {"timestamp": stamp, "device": "cuda" if torch.cuda.is_available() else "cpu",
            "cpu_count": os.cpu_count(), "machine": machine.capability(), "torch": torch.__version__, **base,
            "rounds": args.rounds,
            "official_dir": str(args.official), "load_start": os.getloadavg()[0]}

    meta["attention_backends"] = {}

    profile_dir = RESULTS / f"official-{stamp}-profile"

    def run(impl, key, spec, round_index):
        if args.profile and key == "sample":
            profile_dir.mkdir(parents=True, exist_ok=True)
            spec = {**spec, "profile_table": str(profile_dir / f"{impl}-round{round_index}.txt")}
        if impl in OURS:
            result = run_worker({**spec, **base, **OURS[impl]}, args.timeout)
            meta["attention_backends"].setdefault(impl, result.get("attention_backend"))
        else:
            result = run_worker({**spec, **base, **official_extra}, args.timeout, python=args.python,
                                script=HERE / "official.py", cwd=args.official)
            meta.setdefault("official_versions", result.get("versions"))
        runs[impl][key].append(result)

    for round_index in range(args.rounds):
        order = (*ours, "official")
        for key, spec in jobs:
            for impl in (order if round_index % 2 == 0 else order[::-1]):
                if impl in OURS or key not in OURS_ONLY:
                    run(impl, key, spec, round_index)
    meta["load_end"] = os.getloadavg()[0]
    summaries = {ours_key: summarise(runs, ours_key) for ours_key in ours}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"official-{stamp}.json"
    out.write_text(json.dumps({"meta": meta, "summary": summaries, "runs": runs}, indent=1))
    md = markdown(meta, summaries, runs)
    (RESULTS / f"official-{stamp}.md").write_text(md)
    print(md)
    print(f"[bench] wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
