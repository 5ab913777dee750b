"""`make demo`: prune the embedded SmolLM2-135M with RCPU at 20 % and print perplexity before/after.

Uses the pure-PyTorch core directly (no Trainer); `python cli.py prune -c configs/smollm2-rcpu.yaml`
is the same work through Lightning. Perplexity is WikiText-2 test at seqlen 128; by default on the
first ``--windows`` windows to keep a 2-core CPU run short (``--windows 0`` = all windows).
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from rcpu_lightning.data import calibration_windows, perplexity_windows
from rcpu_lightning.eval.perplexity import evaluate_perplexity
from rcpu_lightning.models import load_causal_lm
from rcpu_lightning.pruning import PruningConfig, capture_layer_inputs, prune_model


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="hub id, local folder, .gguf file or smollm2-135m")
    parser.add_argument("--data-dir", default=None, help="WikiText-2 folder (default: $RCPU_DATA_DIR, else the hub)")
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--method", default="rcpu")
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--windows", type=int, default=100, help="perplexity windows to score (0 = all)")
    parser.add_argument("--head-rounding", default="nearest", choices=["floor", "nearest"],
                        help="nearest: SmolLM2 has 9 heads in 3 kv groups, floor would remove none at 20%%")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = PruningConfig(method=args.method, ratio=args.ratio, head_rounding=args.head_rounding,
                           nsamples=args.nsamples, seqlen=args.seqlen)

    model, tokenizer = load_causal_lm(args.model)
    windows = perplexity_windows(tokenizer, args.seqlen, args.data_dir)
    windows = windows[: args.windows] if args.windows > 0 else windows
    dense = evaluate_perplexity(model, windows)
    print(f"dense  perplexity: {dense['ppl']:.3f} ({dense['windows']} windows of {args.seqlen} tokens)")

    calib = calibration_windows(tokenizer, config.nsamples, config.seqlen, config.seed, args.data_dir)
    start = time.perf_counter()
    inputs = capture_layer_inputs(model, calib.split(config.batch_size))
    report = prune_model(model, inputs, config, release_inputs=True)
    seconds = time.perf_counter() - start
    pruned = evaluate_perplexity(model, windows)
    print(f"pruned perplexity: {pruned['ppl']:.3f} ({config.method}, ratio {config.ratio}, effective "
          f"{report.overall_ratio:.3f}; params {report.params_before:,} -> {report.params_after:,}; "
          f"pruned in {seconds:.1f} s)")
    return {"dense_ppl": dense["ppl"], "pruned_ppl": pruned["ppl"], "report": report.to_dict()}


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
