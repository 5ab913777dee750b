"""Choosing a pruning variant without touching the test split: held-out perplexity on SmolLM2.

    RCPU_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/heldout.py \
        '{"ratio": 0.2, "structure": "al_am", "compensation": "affine_least_squares", "ls_lambda": 0.01}' ...

Each argument is a JSON object of ``PruningConfig`` fields (``head_rounding`` defaults to ``nearest``,
as in ``quality.py``). The dense model is pruned with the paper's calibration (128 windows x 128
tokens, seed 0) and scored on ``--windows`` (64) windows of the calibration split that overlap no
calibration window. Rows (held-out mean NLL and PPL, decoder-layer parameters removed, prune seconds)
go to ``results/heldout.json``, keyed by the config; a finished key is skipped. This is how the knobs
of RCPU-affine were chosen (issue 16): the test split only ever scores the chosen rows (``quality.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if not __package__:  # run as `python benchmarks/heldout.py`: import this folder as the package it is
    sys.path[0] = str(Path(__file__).resolve().parents[1])
from benchmarks import _common as C  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="+", help="JSON objects of PruningConfig fields")
    p.add_argument("--windows", type=int, default=64, help="held-out windows of the calibration split")
    p.add_argument("--model", default=C.MODEL_SPEC, help="model spec (default: the embedded SmolLM2)")
    p.add_argument("--nsamples", type=int, default=None, help="calibration windows (default 128)")
    p.add_argument("--seqlen", type=int, default=None, help="calibration window length (default 128)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", default=None, help="default: $RCPU_DATA_DIR")
    p.add_argument("--out", default=str(C.RESULTS_DIR / "heldout.json"))
    args = p.parse_args(argv)
    configs = [{"head_rounding": "nearest", **json.loads(c)} for c in args.configs]
    store = C.RowStore(args.out)
    from rcpu_lightning.data import CalibrationConfig

    default = CalibrationConfig()
    cal = CalibrationConfig(args.nsamples or default.nsamples, args.seqlen or default.seqlen, default.seed)
    keys = {f"{args.model}|{cal.nsamples}x{cal.seqlen}@seed{cal.seed}|heldout{args.windows}|"
            + json.dumps(c, sort_keys=True): c for c in configs}
    todo = {k: c for k, c in keys.items() if not store.has(k)}
    if not todo:
        print("every config is measured already")
        return 0
    C.setup_torch(args.threads)
    from rcpu_lightning.data import calibration_windows, heldout_windows
    from rcpu_lightning.eval.perplexity import evaluate_perplexity
    from rcpu_lightning.models import load_causal_lm
    from rcpu_lightning.pruning import PruningConfig, prune_copy

    dense, tokenizer = load_causal_lm(args.model)
    calib = calibration_windows(tokenizer, cal.nsamples, cal.seqlen, cal.seed, args.data_dir)
    held, _ = heldout_windows(tokenizer, args.windows, cal, args.data_dir)
    for key, kw in todo.items():
        t0 = time.perf_counter()
        model, report = prune_copy(dense, calib, PruningConfig(**kw), cal.batch_size, calibration=cal.to_dict())
        seconds = time.perf_counter() - t0
        h = evaluate_perplexity(model, held, progress=False)
        row = {"key": key, "model": C.MODEL_NAME if args.model == C.MODEL_SPEC else args.model, "config": kw, "heldout_windows": args.windows,
               "heldout_mean_nll": h["mean_nll"], "heldout_ppl": h["ppl"],
               "decoder_params_removed": report.decoder_params_removed, "prune_seconds": seconds, "run": C.run_info()}
        store.add(row)
        print(f"{kw}: held-out PPL {h['ppl']:.2f}, removed {report.decoder_params_removed:.4f} ({seconds:.0f} s)",
              flush=True)
        del model
    return 0


if __name__ == "__main__":
    sys.exit(main())
