"""torch.profiler summaries shared by both benchmark workers (ours and the official code's).

Imports only torch, so it also runs inside the official code's environment.
"""
from __future__ import annotations

from pathlib import Path

from torch.profiler import ProfilerActivity, profile

CATEGORIES = (
    ("convolution", ("conv", "mkldnn_convolution", "slow_conv")),
    ("matmul (linear, attention bmm)", ("addmm", "aten::mm", "bmm", "baddbmm", "matmul", "linear")),
    ("softmax", ("softmax",)),
    ("group/layer norm", ("group_norm", "layer_norm", "var_mean", "rsqrt")),
    ("copies (copy_/clone/to/cat/index)", ("copy_", "clone", "aten::to", "_to_copy", "aten::cat", "index")),
    ("elementwise", ("add", "mul", "sub", "div", "gelu", "silu", "neg", "where", "fill", "zero")),
    ("optimizer (foreach/_fused)", ("_foreach", "_fused", "adamw")),
)


def top_ops(prof, n=15) -> list[dict]:
    rows = []
    for e in sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:n]:
        rows.append({"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1e3, "calls": e.count})
    return rows


def categorise(prof) -> dict:
    totals = {}
    total = 0.0
    for e in prof.key_averages():
        t = e.self_cpu_time_total / 1e3
        total += t
        name = e.key.lower()
        cat = next((c for c, keys in CATEGORIES if any(k in name for k in keys)), "other")
        totals[cat] = totals.get(cat, 0.0) + t
    return {"total_self_cpu_ms": total, "by_category_ms": dict(sorted(totals.items(), key=lambda kv: -kv[1]))}


def summary(prof, table: Path) -> dict:
    """Writes the profiler's table (self CPU time by op) to `table`; returns top ops and categories."""
    table.write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    return {"top_ops": top_ops(prof), **categorise(prof), "table": str(table)}


class StepProfile:
    """Profiles the span between two consecutive step marks: call `mark(i)` at every step callback."""

    def __init__(self, first_step: int, cuda: bool = False):
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        self.first_step, self.prof = first_step, profile(activities=activities)

    def mark(self, step: int):
        if step == self.first_step:
            self.prof.start()
        elif step == self.first_step + 1:
            self.prof.stop()
