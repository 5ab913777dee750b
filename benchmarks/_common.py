"""Helpers shared by the benchmark scripts: resumable row files, run metadata (memory probes: the library's
:mod:`rcpu_lightning.pruning.memory`, re-exported)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable

from rcpu_lightning.files import write_json_atomic, write_text_atomic  # the package's one atomic writer
from rcpu_lightning.pruning.memory import peak_rss_mb, reset_peak_rss, rss_mb  # noqa: F401  the one memory probe

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
MODEL_SPEC = "smollm2-135m"
#: What ``load_causal_lm("smollm2-135m")`` actually is (the embedded GGUF, dequantised to float32).
MODEL_NAME = "SmolLM2-135M-Instruct (Q4_1 GGUF -> float32)"


# -- resumable row files --------------------------------------------------------------------------
class RowStore:
    """A JSON list of result rows, each with a unique ``key``; rewritten atomically after every ``add``.

    Re-running a benchmark skips the rows whose key is already present (resume after interruption).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.rows: list[dict] = []
        if self.path.is_file():
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, list):
                raise ValueError(f"{self.path} must hold a JSON list of rows")
            self.rows = data

    def keys(self) -> set[str]:
        return {r["key"] for r in self.rows if "key" in r}

    def has(self, key: str) -> bool:
        return key in self.keys()

    def get(self, key: str) -> dict | None:
        for r in self.rows:
            if r.get("key") == key:
                return r
        return None

    def add(self, row: dict) -> None:
        if "key" not in row:
            raise ValueError("a row needs a 'key'")
        self.rows = [r for r in self.rows if r.get("key") != row["key"]] + [row]
        write_json_atomic(self.path, self.rows, indent=1)

    def __iter__(self) -> Iterable[dict]:
        return iter(self.rows)


# -- metadata ---------------------------------------------------------------------------------------
def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_info() -> dict[str, Any]:
    """The CPU's model name and whether it multiplies bfloat16 natively (AVX512-BF16 or AMX): rows from
    different machines differ by more than noise (a bf16 matmul is ~3.5x faster than float32 on one
    with it, ~6x slower on one without)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return {"cpu": platform.processor() or None, "bf16_matmul": None}
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), None)
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return {"cpu": model, "bf16_matmul": "avx512_bf16" in flags or "amx_bf16" in flags}


def run_info() -> dict[str, Any]:
    """Where and when a row was measured (the machine is shared: the load average says how busy)."""
    import torch

    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        **cpu_info(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": git_commit(),
    }


def setup_torch(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.set_grad_enabled(False)


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    if n == 0:
        raise ValueError("median of no values")
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def fmt(x: float | None, spec: str) -> str:
    """``format(x, spec)``, or an en dash for a figure that was not measured."""
    return "–" if x is None else format(x, spec)


# -- the two-forward limit of a layer and where a layer's seconds go (scale.py, gpu_llama7b.py) ----------
def layer_forward_seconds(model, batches, repeats: int = 2) -> float:
    """Best of ``repeats`` wall times of decoder layer 0 of ``model`` run over ``batches`` (layer inputs as
    ``capture_layer_inputs`` gives them; outputs dropped), the device synchronised around each run."""
    import torch

    from rcpu_lightning.models.adapter import decoder_layers
    from rcpu_lightning.pruning.layer_runs import run_layer

    layer = decoder_layers(model)[0]
    device = next(layer.parameters()).device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            run_layer(layer, batches, offload=False, replace=False)
            sync()
            best = min(best, time.perf_counter() - t0)
    return best


def mean_phases(layers: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds per phase (``PruningReport.layers[i]["seconds"]``), averaged over the layers."""
    names = {name for layer in layers for name in layer["seconds"]}
    return {name: sum(layer["seconds"].get(name, 0.0) for layer in layers) / len(layers) for name in sorted(names)}

