"""RCPU at 20 % with 32 / 128 / 512 / 1024 calibration samples: our streaming engine vs store-all.

    RCPU_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/calibration_scaling.py          # 32,128,512,1024
    RCPU_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/calibration_scaling.py --quick  # 16,64; 16 windows

For each sample count the parent starts two fresh worker processes (``--worker ours`` then
``--worker storeall``), each of which loads the model and the data, records its RSS, resets the
RSS high-water mark (``/proc/self/clear_refs``), captures the calibration inputs and prunes, and
reads the high-water mark (``VmHWM``, :mod:`rcpu_lightning.pruning.memory`). The model's weights are copied out of the memory-mapped
safetensors cache first (otherwise pages touched for the first time during pruning would count).
Peak memory = that high-water mark minus the RSS
before the capture (model, tokenizer and data already loaded). ``tracemalloc`` is useless here:
it does not see torch's allocations.

* **ours**: ``rcpu_lightning.pruning.prune_model`` — per module only the sums ``n, Σx, Σ|x|,
  G = Σxxᵀ`` (float64 by default), independent of the number of tokens.
* **store-all** (:func:`storeall_prune`, below): the reference code's approach — keep every input
  ``X`` of o_proj and down_proj of the current layer (float32, the model dtype), then compute the
  scores and ``M = Y Zᵀ`` (``Y = W X``, ``Z = W_K X_K``) from the stored activations (in float64 by
  default, chunked over tokens, so that both implementations do the same float64 work). Selection
  and weight surgery are the engine's functions: only statistics and compensation differ.

Both keep the captured hidden states entering the current layer (``[N, T, 576]`` float32: 302 MB
at 1024 x 128); that part grows with N in both. Perplexity is measured in the ``ours`` worker on
the first ``--ppl-windows`` test windows; both workers also score the same ``--check-windows``
windows so the two implementations can be checked against each other.
Rows are appended to ``results/calibration_scaling.json`` (``_quick.json`` with ``--quick``);
existing sample counts are skipped.

Allocator: glibc keeps freed blocks below its (self-raising) mmap threshold in the heap, so the
high-water mark also counts freed ~2.4 MB activation blocks that were not returned to the system.
``--malloc-mmap-threshold BYTES`` runs the workers with ``MALLOC_MMAP_THRESHOLD_=BYTES`` (blocks
at least that large are mmapped and returned on free; it also stops the threshold from rising),
which separates what the implementations keep from what the allocator retains. Those rows get
their own key (``|malloc_mmap=BYTES``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

if not __package__:  # run as `python benchmarks/calibration_scaling.py`: import this folder as the package it is
    sys.path[0] = str(Path(__file__).resolve().parents[1])
from benchmarks import _common as C  # noqa: E402

RATIO = 0.2
FULL_SAMPLES = [32, 128, 512, 1024]
QUICK_SAMPLES = [16, 64]
MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"  # glibc tunable read at process start


# -- the store-all baseline -----------------------------------------------------------------------
class _Store:
    """Forward pre-hook keeping every input row of a linear module (float32, one preallocated buffer)."""

    def __init__(self, module: torch.nn.Module, n_tokens: int, dtype=torch.float32):
        self.X = torch.empty(n_tokens, module.in_features, dtype=dtype)  # [N, d_in]
        self.filled = 0
        self.handle = module.register_forward_pre_hook(self.hook)

    def hook(self, module, args):
        x = args[0].detach().reshape(-1, self.X.shape[1])
        self.X[self.filled : self.filled + x.shape[0]] = x
        self.filled += x.shape[0]

    def close(self) -> Tensor:
        self.handle.remove()
        if self.filled != self.X.shape[0]:
            raise RuntimeError(f"stored {self.filled} of {self.X.shape[0]} rows")
        return self.X


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def storeall_scores(weight: Tensor, X: Tensor, dtype=torch.float64, chunk: int = 8192) -> Tensor:
    """RCPU γ_j = ||W[:, j]|| · mean|x_j| · Var(x_j) from the stored activations ``X`` [N, d_in]."""
    n, d = X.shape
    s1 = torch.zeros(d, dtype=dtype)
    s2 = torch.zeros(d, dtype=dtype)
    sabs = torch.zeros(d, dtype=dtype)
    for sl in _chunks(n, chunk):
        x = X[sl].to(dtype)
        s1 += x.sum(0)
        s2 += (x * x).sum(0)
        sabs += x.abs().sum(0)
    var = (s2 / n - (s1 / n) ** 2).clamp_min(0)
    return weight.detach().to(dtype).norm(dim=0) * (sabs / n) * var


def storeall_rotation(weight: Tensor, X: Tensor, keep: list[int], dtype=torch.float64, chunk: int = 8192) -> Tensor:
    """Procrustes ``Q W_K`` with ``M = Y Zᵀ`` formed from the activations: ``Y = W X``, ``Z = W_K X_K``."""
    w = weight.detach().to(dtype)  # [d_out, d_in]
    k = torch.as_tensor(keep, dtype=torch.long)
    w_k = w[:, k]
    M = torch.zeros(w.shape[0], w.shape[0], dtype=dtype)
    for sl in _chunks(X.shape[0], chunk):
        x = X[sl].to(dtype)  # [c, d_in]
        Y = x @ w.T  # [c, d_out]  (rows = tokens)
        Z = x[:, k] @ w_k.T  # [c, d_out]
        M += Y.T @ Z
    U, _, Vh = torch.linalg.svd(M)
    return (U @ Vh @ w_k).to(weight.dtype)


def storeall_prune(model: torch.nn.Module, inputs, config, dtype=torch.float64, chunk: int = 8192) -> dict:
    """Prune ``model`` in place like ``prune_model`` (uniform RCPU, rotation or none), storing activations.

    Returns ``{"seconds", "stored_mb_max"}`` (the largest per-layer activation store).
    """
    from rcpu_lightning.models.adapter import decoder_parts
    from rcpu_lightning.pruning.engine import run_layer, uniform_counts, validate_counts
    from rcpu_lightning.pruning.plan import LayerPlan, PruningPlan
    from rcpu_lightning.pruning.selection import head_layout, select_channels, select_heads
    from rcpu_lightning.pruning.surgery import biased_projections, dense_values, prune_attention, prune_mlp, update_config

    if config.method != "rcpu" or config.structure != "uniform" or config.compensation not in ("rotation", "none"):
        raise ValueError("the store-all baseline implements uniform RCPU with rotation (or no) compensation only")
    t0 = time.perf_counter()
    layers = decoder_parts(model)
    plan = PruningPlan(str(model.config.model_type), dense_values(model), [], config.to_dict())
    batches = list(inputs.batches)
    inputs.batches.clear()  # as prune_model(overwrite_inputs=True): one copy, overwritten layer by layer
    n_tokens = sum(h.shape[0] * h.shape[1] for h, _ in batches)
    stored_max = 0.0
    with torch.no_grad():
        counts = uniform_counts(model, config, [])
        validate_counts(model, counts, config.structure)
        for i, parts in enumerate(layers):
            stores = {"o": _Store(parts.o_proj, n_tokens), "d": _Store(parts.down_proj, n_tokens)}
            try:
                run_layer(parts.layer, batches, config.offload_inputs, replace=False)  # the layer is re-run below
            finally:
                Xo, Xd = stores["o"].close(), stores["d"].close()
            stored_max = max(stored_max, (Xo.numel() + Xd.numel()) * Xo.element_size() / 2**20)
            # heads (o_proj input columns)
            layout = head_layout(parts.num_heads, parts.num_kv_heads, config.gqa_mode)
            o_scores = storeall_scores(parts.o_proj.weight, Xo, dtype, chunk)
            kept_heads, kept_kv = select_heads(o_scores.reshape(-1, parts.head_dim).sum(1), layout, counts[i][0])
            cols = [h * parts.head_dim + j for h in kept_heads for j in range(parts.head_dim)]
            # channels (down_proj input columns); decided before any weight changes, like the reference
            kept_ch = select_channels(storeall_scores(parts.down_proj.weight, Xd, dtype, chunk), counts[i][1])
            o_w = (storeall_rotation(parts.o_proj.weight, Xo, cols, dtype, chunk) if config.compensates("o_proj")
                   else parts.o_proj.weight[:, cols].detach())
            d_w = (storeall_rotation(parts.down_proj.weight, Xd, kept_ch, dtype, chunk) if config.compensates("down_proj")
                   else parts.down_proj.weight[:, kept_ch].detach())
            del Xo, Xd, stores
            prune_attention(parts, kept_heads, kept_kv, o_w, None)
            prune_mlp(parts, kept_ch, d_w, None)
            plan.layers.append(LayerPlan(kept_heads, kept_kv, kept_ch, biased_projections(parts), []))
            run_layer(parts.layer, batches, config.offload_inputs, replace=True, overwrite_inputs=True)  # layer i + 1's
    del batches
    update_config(model, plan)
    return {"seconds": time.perf_counter() - t0, "stored_mb_max": stored_max}


# -- worker: one measurement in a fresh process ---------------------------------------------------
def worker(args) -> dict[str, Any]:
    C.setup_torch(args.threads)
    from rcpu_lightning.data import CalibrationConfig, calibration_windows, perplexity_windows
    from rcpu_lightning.eval.perplexity import evaluate_perplexity
    from rcpu_lightning.models import load_causal_lm
    from rcpu_lightning.pruning import PruningConfig, capture_layer_inputs, prune_copy

    rss_start = C.rss_mb()
    model, tokenizer = load_causal_lm(C.MODEL_SPEC)
    model.eval()
    calib = calibration_windows(tokenizer, args.nsamples, args.seqlen, args.seed, args.data_dir)
    windows = perplexity_windows(tokenizer, args.seqlen, args.data_dir)
    n_ppl = max(args.ppl_windows, args.check_windows) if args.worker == "ours" else args.check_windows
    windows = windows[:n_ppl] if args.ppl_windows > 0 or args.worker != "ours" else windows
    config = PruningConfig(method="rcpu", compensation="rotation", ratio=RATIO, head_rounding="nearest")
    calibration = CalibrationConfig(args.nsamples, args.seqlen, args.seed)
    # The safetensors cache is memory-mapped: weights become resident only when first touched, which
    # would count the whole model as "pruning memory". Copy every tensor into anonymous memory first.
    for t in [*model.parameters(), *model.buffers()]:
        t.data = t.data.clone()
    gc.collect()
    baseline = C.rss_mb()
    peak_before_reset = C.peak_rss_mb()
    reset_ok = C.reset_peak_rss()
    t0, c0 = time.perf_counter(), time.process_time()
    if args.worker == "ours":  # in place (copy_model=False): the memory measured is the prune's own
        prune_copy(model, calib, config, calibration.batch_size, copy_model=False)
        extra = {}
    else:
        extra = storeall_prune(model, capture_layer_inputs(model, calib.split(calibration.batch_size)), config)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    peak = C.peak_rss_mb()
    out = {"impl": args.worker, "samples": args.nsamples, "seconds": seconds, "cpu_seconds": cpu_seconds,
           "baseline_rss_mb": baseline, "peak_rss_mb": peak, "peak_mb": peak - baseline,
           "peak_reset": reset_ok, "peak_before_reset_mb": peak_before_reset, "rss_at_start_mb": rss_start,
           "captured_inputs_mb": args.nsamples * args.seqlen * model.config.hidden_size * 4 / 2**20,
           "loadavg_1m": round(os.getloadavg()[0], 2), "malloc_mmap_threshold": os.environ.get(MMAP_ENV), **extra}
    check = evaluate_perplexity(model, windows[: args.check_windows], progress=False)
    out["check_mean_nll"] = check["mean_nll"]
    if args.worker == "ours":
        t1 = time.perf_counter()
        ppl = evaluate_perplexity(model, windows, progress=False)
        out.update(ppl=ppl["ppl"], ppl_windows=ppl["windows"], ppl_seconds=time.perf_counter() - t1)
    return out


def worker_env(mmap_threshold: int | None) -> dict[str, str]:
    """This process' environment with glibc's mmap threshold fixed at ``mmap_threshold`` (None: unset)."""
    env = dict(os.environ)
    env.pop(MMAP_ENV, None)
    if mmap_threshold is not None:
        env[MMAP_ENV] = str(mmap_threshold)
    return env


def run_worker(impl: str, n: int, args) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", impl, "--nsamples", str(n),
           "--seqlen", str(args.seqlen), "--seed", str(args.seed), "--ppl-windows", str(args.ppl_windows),
           "--check-windows", str(args.check_windows), "--threads", str(args.threads)]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=worker_env(args.malloc_mmap_threshold))
    if proc.returncode != 0:
        raise RuntimeError(f"worker {impl} n={n} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def row_key(n: int, args) -> str:
    ppl = "all" if args.ppl_windows <= 0 else f"first{args.ppl_windows}"
    only = "" if "storeall" in args.impls else "|ours-only"
    mmap = "" if args.malloc_mmap_threshold is None else f"|malloc_mmap={args.malloc_mmap_threshold}"
    return (f"{C.MODEL_NAME}|rcpu_rot|ratio={RATIO:g}|calib={n}x{args.seqlen}@seed{args.seed}"
            f"|ppl=wikitext2-test/L{args.seqlen}/{ppl}|check={args.check_windows}{only}{mmap}")


def _ratio(a: float, b: float | None) -> float | None:
    return a / b if b else None


def make_row(n: int, ours: dict, store: dict | None, args) -> dict[str, Any]:
    """One row; ``store`` is None when the store-all worker was not run (``--impls ours``)."""
    store = store or {}
    return {
        "key": row_key(n, args), "model": C.MODEL_NAME, "method": "RCPU (rot)", "ratio": RATIO, "samples": n,
        "seqlen": args.seqlen, "ppl": ours["ppl"], "ppl_windows": ours["ppl_windows"],
        "ours_seconds": ours["seconds"], "storeall_seconds": store.get("seconds"),
        "ours_cpu_seconds": ours["cpu_seconds"], "storeall_cpu_seconds": store.get("cpu_seconds"),
        "ours_peak_mb": ours["peak_mb"], "storeall_peak_mb": store.get("peak_mb"),
        "time_ratio": _ratio(ours["seconds"], store.get("seconds")),
        "cpu_time_ratio": _ratio(ours["cpu_seconds"], store.get("cpu_seconds")),
        "memory_ratio": _ratio(ours["peak_mb"], store.get("peak_mb")),
        "captured_inputs_mb": ours["captured_inputs_mb"], "storeall_activations_mb": store.get("stored_mb_max"),
        "check_mean_nll_ours": ours["check_mean_nll"], "check_mean_nll_storeall": store.get("check_mean_nll"),
        "check_windows": args.check_windows, "malloc_mmap_threshold": args.malloc_mmap_threshold,
        "workers": {"ours": ours, "storeall": store or None}, "run": C.run_info(),
    }


def print_row(r: dict) -> None:
    print(f"n={r['samples']:5d}  ppl={r['ppl']:.3f}  time ours/store-all = {r['ours_seconds']:.0f}/"
          f"{C.fmt(r['storeall_seconds'], '.0f')} s = {C.fmt(r['time_ratio'], '.2f')} (cpu {C.fmt(r['cpu_time_ratio'], '.2f')})"
          f"  peak ours/store-all = {r['ours_peak_mb']:.0f}/{C.fmt(r['storeall_peak_mb'], '.0f')} MB = "
          f"{C.fmt(r['memory_ratio'], '.2f')}  check NLL {r['check_mean_nll_ours']:.5f}/"
          f"{C.fmt(r['check_mean_nll_storeall'], '.5f')}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"samples {QUICK_SAMPLES}, 16 PPL windows, *_quick.json")
    p.add_argument("--samples", default=None, help=f"comma-separated sample counts (default {FULL_SAMPLES})")
    p.add_argument("--seqlen", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ppl-windows", type=int, default=None, help="first N test windows (0 = all; default 256, quick 16)")
    p.add_argument("--check-windows", type=int, default=4, help="windows both workers score (agreement check)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--impls", default="ours,storeall",
                   help="implementations to run: ours,storeall (default) or ours (a row marked ours-only)")
    p.add_argument("--malloc-mmap-threshold", type=int, default=None, metavar="BYTES",
                   help=f"run the workers with {MMAP_ENV}=BYTES (glibc; default: the allocator's own dynamic threshold)")
    p.add_argument("--worker", choices=["ours", "storeall"], help=argparse.SUPPRESS)
    p.add_argument("--nsamples", type=int, default=128, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.impls = [x.strip() for x in args.impls.split(",") if x.strip()]
    if "ours" not in args.impls or not set(args.impls) <= {"ours", "storeall"}:
        p.error(f"--impls must be 'ours' or 'ours,storeall', got {','.join(args.impls)!r}")
    if args.malloc_mmap_threshold is None and os.environ.get(MMAP_ENV):  # set on our own command line
        args.malloc_mmap_threshold = int(os.environ[MMAP_ENV])
    if args.malloc_mmap_threshold is not None and args.malloc_mmap_threshold <= 0:
        p.error("--malloc-mmap-threshold must be a positive number of bytes")
    if args.ppl_windows is None:
        args.ppl_windows = 16 if args.quick else 256
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    samples = [int(x) for x in args.samples.split(",")] if args.samples else (QUICK_SAMPLES if args.quick else FULL_SAMPLES)
    out = Path(args.out) if args.out else C.RESULTS_DIR / ("calibration_scaling_quick.json" if args.quick
                                                           else "calibration_scaling.json")
    store = C.RowStore(out)
    for n in samples:
        if store.has(row_key(n, args)):
            print(f"skip n={n} (in {out.name})")
            continue
        print(f"n={n}: ours ...", flush=True)
        ours = run_worker("ours", n, args)
        storeall = None
        if "storeall" in args.impls:
            print(f"n={n}: store-all ...", flush=True)
            storeall = run_worker("storeall", n, args)
        row = make_row(n, ours, storeall, args)
        store.add(row)
        print_row(row)
    print("samples | ppl | ours s | store-all s | time ratio | ours MB | store-all MB | memory ratio")
    for r in sorted((r for r in store.rows if r["key"] in {row_key(n, args) for n in samples}), key=lambda r: r["samples"]):
        print_row(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
