"""Big models on a small machine: out-of-core pruning of random LLaMA-architecture checkpoints.

    .venv/bin/python benchmarks/scale.py                 # the rows below (about 50 min on a quiet 2-core machine; the affine row ~10)
    .venv/bin/python benchmarks/scale.py --quick         # tiny sizes, a minute: checks the script
    .venv/bin/python benchmarks/scale.py --rows layer7b  # only the LLaMA-7B-dimension layer rows

Random-weight checkpoints are generated on disk (``make_checkpoint``: ``random_checkpoint.py`` in
float32, one safetensors shard per layer, written layer by layer, so generating never holds the model
either; small vocabulary, so the decoder layers are nearly all of it), then pruned with RCPU (rotation) at 20 % in fresh worker
processes:

* ``disk``: :func:`rcpu_lightning.pruning.prune_checkpoint` (disk to disk, one layer at a time);
* ``memory``: the same checkpoint loaded whole and pruned with ``prune_model`` (only where it fits);
  on the small size the two pruned models are compared: ``max_abs_logit_diff_vs_in_memory``;
* ``layer7b``: a 2-layer model at true LLaMA-7B layer dimensions (hidden 4096, 32 heads x 128, MLP
  11008), pruned in memory by our engine (``ours``, fast arithmetic) and by the stored-activation
  method of the paper's reference code (``reference``: every input X of o_proj and down_proj kept in
  float32, ``Y = W X``, ``Z = W_K X_K``, ``M = Y Zᵀ`` and the SVD in float32; the baseline of
  ``calibration_scaling.py`` at float32), one fresh process each: seconds per layer side by side;
  ``affine``: the same layers pruned with ``configs/rcpu-affine.yaml`` (its dense allocation pass, the
  error-greedy selection and the affine least squares included), what RCPU-affine costs at that size.

``peak_rss_mb`` is the worker's ``VmHWM`` (the whole process: Python, torch, the skeleton, one
layer, the calibration activations and statistics). Calibration: ``--nsamples`` random windows of
128 tokens (random weights make real text pointless). Rows go to ``results/scale.json`` keyed by
mode and size; finished keys are skipped on rerun.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

if not __package__:  # run as `python benchmarks/scale.py`: import this folder as the package it is
    sys.path[0] = str(Path(__file__).resolve().parents[1])
from benchmarks import _common as C  # noqa: E402
from benchmarks import random_checkpoint as rc  # noqa: E402

RATIO = 0.2
SEQLEN = 128
#: name -> (hidden, intermediate, heads, kv heads, layers, vocab)
SIZES = {
    "tiny": (256, 704, 4, 4, 4, 256),
    "tiny-big": (256, 704, 4, 4, 12, 256),
    "2048x2": (2048, 5504, 16, 16, 2, 1024),
    "2048x8": (2048, 5504, 16, 16, 8, 1024),
    "2048x22": (2048, 5504, 16, 16, 22, 1024),  # 4.16 GiB in float32: the >= 4 GiB row (21 layers: 3.97)
    "2048x32": (2048, 5504, 16, 16, 32, 1024),  # 6.05 GiB: not in the default rows (--rows 2048x32)
    "7b-layer": (4096, 11008, 32, 32, 2, 1024),
}
FULL_ROWS = [("disk", "2048x2"), ("memory", "2048x2"), ("disk", "2048x8"), ("disk", "2048x22"),
             ("layer7b-ours", "7b-layer"), ("layer7b-reference", "7b-layer"), ("layer7b-affine", "7b-layer")]
QUICK_ROWS = [("disk", "tiny"), ("memory", "tiny"), ("disk", "tiny-big"), ("layer7b-ours", "tiny"),
              ("layer7b-reference", "tiny"), ("layer7b-affine", "tiny")]
AFFINE_CONFIG = C.REPO_ROOT / "configs" / "rcpu-affine.yaml"


# -- random checkpoints, written layer by layer -------------------------------------------------------
def llama_config(size: str):
    from transformers import LlamaConfig

    hidden, inter, heads, kv, layers, vocab = SIZES[size]
    return LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_attention_heads=heads, num_key_value_heads=kv,
                       head_dim=hidden // heads, num_hidden_layers=layers, vocab_size=vocab,
                       max_position_embeddings=2 * SEQLEN, tie_word_embeddings=False, dtype="float32")


def make_checkpoint(folder: Path, size: str, seed: int = 0) -> Path:
    """The random float32 checkpoint of ``size`` (:mod:`benchmarks.random_checkpoint`: one shard per layer,
    no tokenizer: calibration is random ids); an existing one in ``folder`` is reused."""
    if (folder / "model.safetensors.index.json").is_file():
        return folder
    rc.generate(folder, llama_config(size), seed=seed, tokenizer=False, overwrite=True, progress=False,
                source=f"benchmarks/scale.py size {size}")
    return folder


def checkpoint_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 2**20


def calibration(vocab: int, nsamples: int, seed: int = 0) -> list[torch.Tensor]:
    ids = torch.randint(0, vocab, (nsamples, SEQLEN), generator=torch.Generator().manual_seed(seed))
    return list(ids.split(8))


def probe_ids(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 32), generator=torch.Generator().manual_seed(123))


# -- workers: one measurement per fresh process ------------------------------------------------------
def worker(args) -> dict[str, Any]:
    C.setup_torch(args.threads)
    from rcpu_lightning.pruning import PruningConfig, capture_layer_inputs, load_pruned, prune_copy, prune_model
    from rcpu_lightning.pruning.streaming import prune_checkpoint

    source, config = Path(args.source), llama_config(args.size)
    cfg = (affine_config(args.arithmetic) if args.worker == "layer7b-affine"
           else PruningConfig(method="rcpu", compensation="rotation", ratio=RATIO, arithmetic=args.arithmetic))
    batches = calibration(config.vocab_size, args.nsamples)
    out: dict[str, Any] = {}
    if args.worker == "disk":
        report = prune_checkpoint(source, args.target, cfg, batches, progress=False, overwrite=True)
        out["peak_rss_mb"] = C.peak_rss_mb()
        model = load_pruned(args.target) if args.logits else None
    elif args.worker == "memory":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
        for p in model.parameters():  # weights into anonymous memory (safetensors loads are mmapped)
            p.data = p.data.clone()
        _, report = prune_copy(model, batches, cfg, copy_model=False)  # in place: the memory measured is the prune's
        out["peak_rss_mb"] = C.peak_rss_mb()
    else:  # layer7b-ours / -reference / -affine: the whole (2-layer) model in memory
        from benchmarks import calibration_scaling as cs
        from transformers import AutoModelForCausalLM

        dtype = getattr(torch, args.dtype)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype).eval()
        for p in model.parameters():
            p.data = p.data.clone()
        inputs = capture_layer_inputs(model, batches)
        layer0 = [(h.clone(), kw) for h, kw in inputs.batches]  # for the limit: layer 0's inputs, kept
        dense_forward = C.layer_forward_seconds(model, layer0) if args.worker == "layer7b-ours" else None
        t0 = time.perf_counter()
        if args.worker == "layer7b-reference":
            cs.storeall_prune(model, inputs, cfg, dtype=torch.float32)
            report = None
        else:
            report = prune_model(model, inputs, cfg, progress=False, overwrite_inputs=True)
            out["phases"] = C.mean_phases(report.layers)
        out.update(seconds=time.perf_counter() - t0, peak_rss_mb=C.peak_rss_mb())
        if dense_forward is not None:  # the limit of a layer: one dense forward + one pruned forward
            out.update(dense_forward_s=dense_forward, pruned_forward_s=C.layer_forward_seconds(model, layer0))
        model = model if args.logits else None
    if report is not None:
        out.update(seconds=report.seconds, decoder_params_removed=report.decoder_params_removed)
    if model is not None:
        with torch.no_grad():
            out["logits"] = model(probe_ids(config.vocab_size)).logits.tolist()
    return out


def affine_config(arithmetic: str):
    """``configs/rcpu-affine.yaml``'s pruning settings at :data:`RATIO`."""
    import yaml

    from rcpu_lightning.pruning import PruningConfig

    settings = yaml.safe_load(AFFINE_CONFIG.read_text(encoding="utf-8"))["pruning"]["config"]
    return PruningConfig(**{**settings, "ratio": RATIO, "arithmetic": arithmetic})


def run_worker(mode: str, size: str, source: Path, target: Path, args, logits: bool) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", mode, "--size", size, "--source", str(source), "--target", str(target),
           "--nsamples", str(args.nsamples), "--threads", str(args.threads), "--arithmetic", args.arithmetic,
           "--dtype", args.dtype]
    if logits:
        cmd.append("--logits")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def row_key(mode: str, size: str, args) -> str:
    dtype = "" if args.dtype == "float32" else f"|{args.dtype}"  # float32 rows keep their historical keys
    return f"{mode}|{size}|ratio={RATIO}|calib={args.nsamples}x{SEQLEN}|{args.arithmetic}{dtype}"


def measure(mode: str, size: str, args, store: C.RowStore, work: Path) -> None:
    key = row_key(mode, size, args)
    if store.has(key):
        print(f"skip {key}", flush=True)
        return
    source = make_checkpoint(work / f"random-{size}", size)
    hidden, inter, heads, kv, layers, vocab = SIZES[size]
    small = size in ("tiny", "2048x2")
    print(f"run {key} ...", flush=True)
    result = run_worker(mode, size, source, work / f"pruned-{size}-{mode}", args, logits=small)
    row = {"key": key, "mode": mode.split("-")[0] if mode.startswith("layer7b") else mode,
           "impl": mode.split("-")[1] if mode.startswith("layer7b") else "ours",
           "size": size, "params": _params(size), "layers": layers, "hidden": hidden, "intermediate": inter,
           "heads": heads, "checkpoint_mb": checkpoint_mb(source), "calib_samples": args.nsamples, "calib_seqlen": SEQLEN,
           "arithmetic": args.arithmetic, "peak_rss_mb": result["peak_rss_mb"], "seconds": result["seconds"],
           "seconds_per_layer": result["seconds"] / layers, "decoder_params_removed": result.get("decoder_params_removed"),
           "max_abs_logit_diff_vs_in_memory": None, "dtype": args.dtype, "run": C.run_info()}
    if "dense_forward_s" in result:  # ours / the two-forward limit, measured in the same process
        limit = result["dense_forward_s"] + result["pruned_forward_s"]
        row.update(phases=result["phases"], dense_forward_s=result["dense_forward_s"],
                   pruned_forward_s=result["pruned_forward_s"], limit_s=limit,
                   ours_over_limit=row["seconds_per_layer"] / limit)
    if small and mode in ("disk", "memory"):
        (work / f"logits-{size}-{mode}.json").write_text(json.dumps(result["logits"]))
        other = work / f"logits-{size}-{'memory' if mode == 'disk' else 'disk'}.json"
        if other.is_file():
            diff = (torch.tensor(result["logits"]) - torch.tensor(json.loads(other.read_text()))).abs().max()
            row["max_abs_logit_diff_vs_in_memory"] = float(diff)
            for prev in store.rows:  # the other half of the pair gets the figure too
                if prev.get("size") == size and prev.get("mode") in ("disk", "memory"):
                    prev["max_abs_logit_diff_vs_in_memory"] = float(diff)
    store.add(row)
    print(f"  {row['seconds_per_layer']:.1f} s/layer, peak RSS {row['peak_rss_mb']:.0f} MB "
          f"(checkpoint {row['checkpoint_mb']:.0f} MB)", flush=True)


def _params(size: str) -> int:
    hidden, inter, heads, kv, layers, vocab = SIZES[size]
    hd = hidden // heads
    per_layer = hidden * hd * (2 * heads + 2 * kv) + 3 * hidden * inter + 2 * hidden
    return layers * per_layer + 2 * vocab * hidden + hidden


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes only (checks the script)")
    p.add_argument("--rows", default=None, help="comma list of modes or sizes to run (default: all)")
    p.add_argument("--nsamples", type=int, default=64, help="calibration windows of 128 tokens")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--arithmetic", default="fast", choices=["fast", "float64"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="dtype the layer7b rows load and run the model in (the reference row is float32 only)")
    p.add_argument("--work-dir", default="/tmp/rcpu-scale", help="where the random checkpoints go (several GB)")
    p.add_argument("--out", default=None, help="results JSON (default results/scale.json, _quick with --quick)")
    p.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    # worker side
    p.add_argument("--worker", choices=["disk", "memory", "layer7b-ours", "layer7b-reference", "layer7b-affine"], help=argparse.SUPPRESS)
    p.add_argument("--size", help=argparse.SUPPRESS)
    p.add_argument("--source", help=argparse.SUPPRESS)
    p.add_argument("--target", help=argparse.SUPPRESS)
    p.add_argument("--logits", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    rows = QUICK_ROWS if args.quick else FULL_ROWS
    if args.rows:
        wanted = set(args.rows.split(","))
        rows = [(m, s) for m, s in rows if m in wanted or s in wanted or m.split("-")[0] in wanted]
        rows += [("disk", s) for s in sorted(wanted & set(SIZES)) if all(s != size for _, size in rows)]  # e.g. 2048x32
    if args.dtype != "float32":  # the reference code cannot run bf16 on a CPU; the disk rows are float32 sizes
        rows = [(m, s) for m, s in rows if m in ("layer7b-ours", "layer7b-affine")]
    out = Path(args.out) if args.out else C.RESULTS_DIR / ("scale_quick.json" if args.quick else "scale.json")
    store, work = C.RowStore(out), Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        for mode, size in rows:
            measure(mode, size, args, store, work)
            gc.collect()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
