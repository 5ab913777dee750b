"""RCPU at LLaMA-7B and 70B layer dimensions on a GPU: seconds per layer and peak GPU memory.

    python benchmarks/gpu_llama7b.py                       # on a GPU machine: ~5 min on one H100/H200
    python benchmarks/gpu_llama7b.py --device cpu --tiny   # the same code on small shapes (a check)

Two measurements, both with random weights (the speed of pruning does not depend on the values):

* ``llama7b``: a random LLaMA-7B (32 layers, hidden 4096, 32 heads x 128, MLP 11008, bfloat16)
  built directly on the GPU, 128 x 128 random calibration tokens, RCPU (rotation) at 20 % with
  ``prune_model``: seconds per layer (the engine's per-layer progress), total seconds, peak GPU memory,
  the mean seconds of each phase (``PruningReport.layers[i]["seconds"]``) and the two-forward limit of a
  layer (layer 0 run dense before the prune and pruned after it, on the same tokens; best of 2 each).
  The paper reports 8.4-9.2 s per layer on an A100; the target here is <= 2 s per layer.
* ``llama70b_onload``: ``--layers70b`` (4) layers at Llama-2/3-70B dimensions (hidden 8192, 64 heads /
  8 kv heads, MLP 28672, bfloat16) kept on CPU and pruned with *sequential onloading*
  (``PruningConfig(execution_device="cuda")``): each layer is moved to the GPU for its turn and back;
  per-layer seconds and the peak GPU memory (about one layer, the activations and the statistics).

Writes ``results/gpu_llama7b.json`` (one object with ``device``, ``layers``, ``hidden``,
``seconds_per_layer``, ``peak_gpu_mb`` and the 70B block), atomically.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import torch
from pathlib import Path

if not __package__:  # run as `python benchmarks/gpu_llama7b.py`: import this folder as the package it is
    sys.path[0] = str(Path(__file__).resolve().parents[1])
from benchmarks import _common as C  # noqa: E402

LLAMA7B = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32, num_hidden_layers=32)
LLAMA70B = dict(hidden_size=8192, intermediate_size=28672, num_attention_heads=64, num_key_value_heads=8)
TINY = dict(hidden_size=128, intermediate_size=344, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=4)
TINY70B = dict(hidden_size=128, intermediate_size=344, num_attention_heads=8, num_key_value_heads=2)


def build(shape: dict, layers: int | None, device: str, dtype: torch.dtype, vocab: int):
    """A random Llama created directly on ``device`` (no CPU copy of the weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    kwargs = {**shape, "num_hidden_layers": layers or shape["num_hidden_layers"]}
    config = LlamaConfig(vocab_size=vocab, head_dim=kwargs["hidden_size"] // kwargs["num_attention_heads"],
                         max_position_embeddings=4096, tie_word_embeddings=False, **kwargs)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return model.eval()


def per_layer_seconds() -> tuple[list[float], Any]:
    seconds: list[float] = []
    return seconds, lambda event: seconds.append(event.seconds)


def run(model, device: str, nsamples: int, execution_device: str | None) -> dict[str, Any]:
    from rcpu_lightning.pruning import PruningConfig, capture_layer_inputs, prune_model

    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (nsamples, 128), generator=torch.Generator().manual_seed(0))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    seconds, report_layer = per_layer_seconds()
    config = PruningConfig(method="rcpu", compensation="rotation", ratio=0.2, execution_device=execution_device)
    inputs = capture_layer_inputs(model, ids.split(16))  # on the model's input device
    # the limit of a layer (one dense + one pruned forward of layer 0 on the same tokens), where it runs
    layer0 = [(h.clone(), kw) for h, kw in inputs.batches] if execution_device is None else None
    dense_forward = C.layer_forward_seconds(model, layer0) if layer0 else None
    report = prune_model(model, inputs, config, progress=report_layer, overwrite_inputs=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    total = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    limit = dense_forward + C.layer_forward_seconds(model, layer0) if layer0 else None
    median = statistics.median(seconds)
    return {"layers": len(seconds), "hidden": model.config.hidden_size, "intermediate": model.config.intermediate_size,
            "heads": model.config.num_attention_heads, "kv_heads": model.config.num_key_value_heads,
            "seconds_per_layer": median, "seconds_per_layer_all": seconds,
            "first_layer_seconds": seconds[0], "total_seconds": total, "phases": C.mean_phases(report.layers),
            "limit_s": limit, "ours_over_limit": median / limit if limit else None,
            "peak_gpu_mb": peak, "decoder_params_removed": report.decoder_params_removed,
            "calib_samples": nsamples, "calib_seqlen": 128, "arithmetic": config.arithmetic}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--tiny", action="store_true", help="small shapes (a check of the script, e.g. on CPU)")
    p.add_argument("--nsamples", type=int, default=128, help="calibration windows of 128 tokens")
    p.add_argument("--layers70b", type=int, default=4, help="layers at 70B dimensions (sequential onloading)")
    p.add_argument("--skip70b", action="store_true")
    p.add_argument("--out", default=str(C.RESULTS_DIR / "gpu_llama7b.json"))
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("no CUDA device here; use --device cpu --tiny to check the script")
    torch.set_grad_enabled(False)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    vocab = 1024
    model = build(TINY if args.tiny else LLAMA7B, None, args.device, dtype, vocab)
    result: dict[str, Any] = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
                              "dtype": str(dtype).replace("torch.", ""), "tiny": args.tiny,
                              **run(model, args.device, args.nsamples, None)}
    print(f"llama7b: {result['seconds_per_layer']:.2f} s/layer (median of {result['layers']}), "
          f"{result['ours_over_limit']:.2f}x the two-forward limit ({result['limit_s']:.2f} s), "
          f"peak GPU {result['peak_gpu_mb']} MB", flush=True)
    print("  seconds per phase: " + ", ".join(f"{k} {v:.2f}" for k, v in result["phases"].items()), flush=True)
    del model
    if not args.skip70b:
        onload_to = args.device
        model = build(TINY70B if args.tiny else LLAMA70B, args.layers70b, "cpu", dtype, vocab)
        result["llama70b_onload"] = run(model, args.device, args.nsamples, onload_to)
        print(f"llama70b (onloading): {result['llama70b_onload']['seconds_per_layer']:.2f} s/layer, peak GPU "
              f"{result['llama70b_onload']['peak_gpu_mb']} MB", flush=True)
    result["run"] = C.run_info()
    C.write_json_atomic(args.out, result, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
