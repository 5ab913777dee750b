"""Lightning overhead of perplexity evaluation: ``Trainer.test`` vs a bare loop over the same windows.

    RCPU_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/overhead.py [--windows 32 --repeats 3]

Lightning side: the project's ``CausalLMModule`` (wrapping the already loaded SmolLM2-135M) and
``RCPUDataModule`` (first ``--windows`` WikiText-2 test windows of 128 tokens, batch 8) under
``Trainer(accelerator="cpu", devices=1)`` with logger, checkpointing, progress bar and model
summary off; the timed region is the ``trainer.test(...)`` call (a new Trainer each repeat, built
outside the timed region). Bare side: ``for batch in windows.split(8): model(batch)`` plus the same
NLL sum (``window_nll``), in the same process. The two alternate (bare first on odd repeats,
Lightning first on even ones) after one untimed warm-up of each; the result is the median
tokens/s of each and their ratio, plus the median of the per-repeat ratios. Writes
``results/overhead.json``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

if not __package__:  # run as `python benchmarks/overhead.py`: import this folder as the package it is
    sys.path[0] = str(Path(__file__).resolve().parents[1])
from benchmarks import _common as C  # noqa: E402


def bare_pass(model, windows, batch_size: int) -> tuple[float, float]:
    """(seconds, perplexity) of a plain loop over ``windows``."""
    import torch

    from rcpu_lightning.eval.perplexity import window_nll

    t0 = time.perf_counter()
    total, count = torch.zeros((), dtype=torch.float64), 0
    with torch.no_grad():
        for batch in windows.split(batch_size):
            logits = model(input_ids=batch, use_cache=False).logits
            nll, n = window_nll(logits, batch)
            total += nll
            count += n
    return time.perf_counter() - t0, float(torch.exp(total / count))


def lightning_pass(module, datamodule) -> tuple[float, float]:
    """(seconds, perplexity) of ``trainer.test`` with the project's module and datamodule."""
    import lightning.pytorch as L

    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, inference_mode=True)
    t0 = time.perf_counter()
    trainer.test(module, datamodule=datamodule, verbose=False)
    seconds = time.perf_counter() - t0
    return seconds, float(module.eval_results["ppl"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--windows", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=str(C.RESULTS_DIR / "overhead.json"))
    args = p.parse_args(argv)
    if args.repeats < 3:
        print("note: fewer than 3 repeats; the median is not robust", file=sys.stderr)
    C.setup_torch(args.threads)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")

    from rcpu_lightning.lightning import CausalLMModule, RCPUDataModule
    from rcpu_lightning.models import load_causal_lm

    model, tokenizer = load_causal_lm(C.MODEL_SPEC)
    model.eval()
    module = CausalLMModule(model=model, tokenizer=tokenizer)
    dm = RCPUDataModule(data_dir=args.data_dir, tokenizer=tokenizer, eval_seqlen=args.seqlen,
                        eval_batch_size=args.batch_size, ppl_max_windows=args.windows)
    windows = dm.perplexity_rows()  # tokenised once, cached: both loops score exactly these windows
    tokens = int(windows.numel())

    bare_pass(model, windows[: args.batch_size], args.batch_size)  # warm-up (allocator, first-call costs)
    lightning_pass(module, dm)
    bare_s, light_s, ppl_b, ppl_l = [], [], None, None
    for rep in range(args.repeats):
        order = ("bare", "lightning") if rep % 2 == 0 else ("lightning", "bare")
        for which in order:
            if which == "bare":
                sec, ppl_b = bare_pass(model, windows, args.batch_size)
                bare_s.append(sec)
            else:
                sec, ppl_l = lightning_pass(module, dm)
                light_s.append(sec)
        print(f"repeat {rep + 1}: bare {tokens / bare_s[-1]:.1f} tok/s, Lightning {tokens / light_s[-1]:.1f} tok/s "
              f"(ratio {bare_s[-1] / light_s[-1]:.3f}); load {C.run_info()['loadavg_1m']}", flush=True)
    light_tps, bare_tps = tokens / C.median(light_s), tokens / C.median(bare_s)
    result = {
        "lightning_tokens_per_s": light_tps,
        "bare_tokens_per_s": bare_tps,
        "ratio": light_tps / bare_tps,
        "ratio_median_per_repeat": C.median([b / l for b, l in zip(bare_s, light_s)]),
        "lightning_seconds": light_s,
        "bare_seconds": bare_s,
        "ppl_lightning": ppl_l,
        "ppl_bare": ppl_b,
        "windows": int(windows.shape[0]),
        "seqlen": int(windows.shape[1]),
        "tokens": tokens,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "lightning_impl": "CausalLMModule + RCPUDataModule",
        "model": C.MODEL_NAME,
        "run": C.run_info(),
    }
    C.write_json_atomic(args.out, result, indent=1)
    print(f"Lightning {light_tps:.1f} tok/s, bare {bare_tps:.1f} tok/s, ratio (Lightning / bare) {result['ratio']:.3f} "
          f"(median per-repeat {result['ratio_median_per_repeat']:.3f}); PPL {ppl_l:.4f} vs {ppl_b:.4f}; -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
