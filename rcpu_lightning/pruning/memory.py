"""The one place that reads this process' memory: resident now, its high-water mark, and a reset of
that mark (the engine's per-layer progress and the benchmarks' peaks both read it here).

Linux reports both in ``/proc/self/status`` (``VmRSS``, ``VmHWM``); elsewhere psutil gives the
resident size and ``getrusage`` the peak. Values in MiB; ``None`` where the platform reports nothing.
"""

from __future__ import annotations

import torch

STATUS = "/proc/self/status"


def _status_mb(key: str) -> float | None:
    """``key`` (e.g. ``VmRSS``) of ``/proc/self/status`` in MiB, or None without procfs."""
    try:
        with open(STATUS, encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0  # the file gives kB
    except OSError:
        pass
    return None


def rss_mb() -> float | None:
    """Resident set size of this process now, MiB."""
    now = _status_mb("VmRSS")
    if now is not None:
        return now
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dependency
        return None
    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float | None:
    """The process' resident-memory high-water mark (``VmHWM``; ``ru_maxrss`` without procfs), MiB."""
    peak = _status_mb("VmHWM")
    if peak is not None:
        return peak
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux/BSD: KiB


def reset_peak_rss() -> bool:
    """Reset the high-water mark to the current RSS (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``).

    Returns whether it worked. Without it the peak after a phase is ``max(peak before, peak of the
    phase)``, so a loading transient larger than the phase would hide the phase's own peak.
    """
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def device_peak_mb(device: torch.device) -> float | None:
    """Peak CUDA memory allocated on ``device`` in MiB (None on other devices)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20
