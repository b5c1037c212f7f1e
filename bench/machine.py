"""What the machine can do, reported beside every figure: speed numbers from one CPU of this kind do
not carry over to the next (some have bf16 matrix units, others do not)."""
from __future__ import annotations

import platform

import torch


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def capability() -> dict:
    flags = _cpu_flags()
    info = {"cpu": _cpu_model(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "amx_bf16": "amx_bf16" in flags, "amx_tile": "amx_tile" in flags,
            "avx512_bf16": "avx512_bf16" in flags}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_bf16"] = torch.cuda.is_bf16_supported()
    return info


def describe(info: dict) -> str:
    """One line for the tables: CPU, torch's kernel level and the bf16 units, plus the GPU if any."""
    units = ", ".join(n for n in ("amx_bf16", "amx_tile", "avx512_bf16") if info.get(n)) or "no bf16 units"
    line = f"{info['cpu']} (torch {info['torch_cpu_capability']}; {units})"
    return line + (f"; GPU {info['gpu']}" if info.get("gpu") else "")
