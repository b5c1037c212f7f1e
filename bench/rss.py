"""Process memory on Linux, from /proc/self/status: shared by both benchmark workers.

Imports nothing beyond the standard library, so it also runs inside the official code's environment.
"""
from __future__ import annotations


def status_bytes(field: str) -> int:
    """A /proc/self/status field (VmRSS, VmHWM, ...) in bytes; 0 where it is absent."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


class RssPeak:
    """Growth of the process's peak RSS (VmHWM) from `reset()`.

    VmHWM is reset to the current RSS by writing 5 to /proc/self/clear_refs (Linux >= 4.0); where
    that is refused, the growth is VmHWM minus the RSS at reset (an upper bound).
    """

    def reset(self):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method = "VmHWM after clear_refs"
        except OSError:
            self.method = "VmHWM - VmRSS (no clear_refs)"
        self.base = status_bytes("VmRSS")

    def growth_mb(self) -> float:
        return (status_bytes("VmHWM") - self.base) / 2**20
