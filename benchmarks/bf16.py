"""Pruning a bf16 model (issue 26): its forwards in bf16, or in float32 with ``execution_dtype``.

    RCPU_DATA_DIR=/work/shared/data OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bf16.py [--quick]

One calibration (``--nsamples`` windows of ``--seqlen`` tokens, seed 0) and one set of WikiText-2 test
windows (the first ``--windows`` windows of 128 tokens) for three prunes of one checkpoint (the embedded
SmolLM2-135M-Instruct, its GGUF dequantised to float32), RCPU rotation at ``--ratio`` (20 %),
``head_rounding: nearest`` as in ``quality.py``:

- ``f32``: the float32 model, pruned and evaluated in float32 (the reference);
- ``bf16``: the checkpoint loaded in bf16 (``dtype=bfloat16``: each weight rounded once, the rotary
  frequencies float32), pruned with its forwards in bf16 (``execution_dtype: null``), evaluated in bf16;
- ``bf16_exec_f32``: the same bf16 model pruned with ``execution_dtype: float32`` (each layer and the
  activations in float32 while it is pruned, the weights written back in bf16), evaluated in bf16.

Every prune accumulates its statistics in float64 and compensates in float32/float64. Each row: the
engine's seconds and the process CPU seconds of the prune (the machine is shared: both, and the load
average), test PPL and mean NLL, the relative PPL difference against ``f32``, the decoder parameters
removed and the layers whose kept heads and channels equal ``f32``'s. Two more rows (``--no-dense``
leaves them out): the dense model in both dtypes on the same windows (``dense_bf16`` against
``dense_f32``: what the bf16 rounding of the checkpoint alone does to the PPL).
The goal of the issue: a bf16 prune within 1 % of the float32 prune's PPL.

Sizes: on a CPU without native bf16 (AVX2 only) a bf16 linear is about 5x slower than a float32 one,
so the ``bf16`` prune and the bf16 evaluations take most of the time; the defaults (32 x 128
calibration, 16 test windows) took 12.8 minutes at 2 threads on the shared 2-core machine (load 1-3).
Rows go to ``results/bf16.json`` (``--quick``: a tiny random Llama on random tokens, seconds, for tests,
``results/bf16_quick.json``); a finished row is skipped when the script runs again.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if not __package__:  # run as `python benchmarks/bf16.py`: import this folder as the package it is
    sys.path[0] = str(Path(__file__).resolve().parents[1])
from benchmarks import _common as C  # noqa: E402

#: variant -> (dtype the model is loaded in, PruningConfig.execution_dtype); "dense_*" rows are not pruned.
VARIANTS: dict[str, tuple[str, str | None]] = {
    "f32": ("float32", None),
    "bf16_exec_f32": ("bfloat16", "float32"),
    "bf16": ("bfloat16", None),
}
DENSE: dict[str, str] = {"dense_f32": "float32", "dense_bf16": "bfloat16"}
REFERENCE = "f32"
GOAL = 0.01  # the goal: |PPL / PPL(f32) - 1| <= 1 %
TINY = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=128,
            num_hidden_layers=2, vocab_size=128, max_position_embeddings=256, tie_word_embeddings=False)
EVAL_SEQLEN = 128


@dataclass
class Setup:
    """What every row of one run shares: the model's name, a loader per dtype, the token windows."""

    name: str
    load: Any  # dtype name -> model in eval mode
    calib: Any  # [nsamples, seqlen] input ids
    test: Any  # [windows, L] input ids
    batch_size: int



def kept_digest(heads: list[int], channels: list[int]) -> str:
    """A short fingerprint of one layer's kept heads and channels (rows compare layers by it; the index
    lists themselves made the results file 100k lines long)."""
    return hashlib.sha1(json.dumps([heads, channels]).encode()).hexdigest()[:12]

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a tiny random Llama on random tokens (tests, seconds)")
    p.add_argument("--model", default=C.MODEL_SPEC, help="model spec (default: the embedded SmolLM2)")
    p.add_argument("--nsamples", type=int, default=32, help="calibration windows (default 32)")
    p.add_argument("--seqlen", type=int, default=128, help="calibration window length (default 128)")
    p.add_argument("--windows", type=int, default=16, help="WikiText-2 test windows of 128 tokens (default 16)")
    p.add_argument("--ratio", type=float, default=0.2)
    p.add_argument("--no-dense", dest="dense", action="store_false", help="leave out the dense model rows")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", default=None, help="default: $RCPU_DATA_DIR")
    p.add_argument("--out", default=None, help="default: results/bf16.json (--quick: results/bf16_quick.json)")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = str(C.RESULTS_DIR / ("bf16_quick.json" if args.quick else "bf16.json"))
    if args.quick:
        args.nsamples, args.seqlen, args.windows = min(args.nsamples, 8), min(args.seqlen, 16), min(args.windows, 4)
    return args


def row_key(args: argparse.Namespace, variant: str) -> str:
    model = "tiny" if args.quick else args.model
    ratio = "dense" if variant in DENSE else f"ratio={args.ratio}"
    return f"{model}|{variant}|{ratio}|calib={args.nsamples}x{args.seqlen}@seed0|ppl=first{args.windows}"


def setup(args: argparse.Namespace) -> Setup:
    import torch

    if args.quick:
        from transformers import AutoModelForCausalLM, LlamaConfig

        config = LlamaConfig(**TINY)
        torch.manual_seed(0)
        dense = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        with torch.no_grad():
            for p in dense.parameters():
                if p.dim() == 2:
                    p.normal_(0.0, 0.2)
        state = dense.state_dict()

        def load(dtype: str):  # as from_pretrained builds it: weights rounded once, rotary frequencies float32
            model = AutoModelForCausalLM.from_config(copy.deepcopy(config), dtype=getattr(torch, dtype))  # pruning edits it
            model.load_state_dict(state)
            return model.eval()

        gen = torch.Generator().manual_seed(0)
        calib = torch.randint(0, TINY["vocab_size"], (args.nsamples, args.seqlen), generator=gen)
        test = torch.randint(0, TINY["vocab_size"], (args.windows, args.seqlen), generator=gen)
        return Setup("tiny random Llama (tests)", load, calib, test, 4)
    from rcpu_lightning.data import calibration_windows, perplexity_windows
    from rcpu_lightning.models import load_causal_lm

    _, tokenizer = load_causal_lm(args.model)
    calib = calibration_windows(tokenizer, args.nsamples, args.seqlen, 0, args.data_dir)
    test = perplexity_windows(tokenizer, EVAL_SEQLEN, args.data_dir)[: args.windows]
    name = C.MODEL_NAME if args.model == C.MODEL_SPEC else args.model
    return Setup(name, lambda dtype: load_causal_lm(args.model, dtype=dtype)[0], calib, test, 8)


def measure(s: Setup, args: argparse.Namespace, variant: str) -> dict[str, Any]:
    """One row: load, prune (unless dense), evaluate on the test windows in the model's own dtype."""
    from rcpu_lightning.eval.perplexity import evaluate_perplexity
    from rcpu_lightning.pruning import PruningConfig, prune_copy

    dtype, execution_dtype = (DENSE[variant], None) if variant in DENSE else VARIANTS[variant]
    model, row = s.load(dtype), {"key": row_key(args, variant), "variant": variant, "model": s.name,
                                 "dtype": dtype, "execution_dtype": execution_dtype}
    if variant not in DENSE:
        config = PruningConfig(ratio=args.ratio, head_rounding="nearest", execution_dtype=execution_dtype)
        cpu0 = time.process_time()
        model, report = prune_copy(model, s.calib, config, s.batch_size, copy_model=False,
                                   calibration={"nsamples": args.nsamples, "seqlen": args.seqlen, "seed": 0})
        row.update(prune_seconds=report.seconds, prune_cpu_seconds=time.process_time() - cpu0,
                   decoder_params_removed=report.decoder_params_removed, config=config.to_dict(),
                   kept=[kept_digest(lp.kept_heads, lp.kept_channels) for lp in report.plan.layers])
    row["weight_dtypes"] = sorted({str(t.dtype).replace("torch.", "") for t in model.state_dict().values()})
    cpu0, t0 = time.process_time(), time.perf_counter()
    ppl = evaluate_perplexity(model, s.test, batch_size=s.batch_size, progress=False)
    row.update(ppl=ppl["ppl"], mean_nll=ppl["mean_nll"], ppl_windows=ppl["windows"], eval_seqlen=ppl["seqlen"],
               eval_seconds=time.perf_counter() - t0, eval_cpu_seconds=time.process_time() - cpu0, run=C.run_info())
    return row


def compare(store: C.RowStore, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The rows of this run, each with ``ppl_vs_reference`` (PPL / PPL(reference) - 1; the reference of a
    prune is ``f32``, of ``dense_bf16`` ``dense_f32``) and, for prunes, ``same_layers_as_f32`` (layers that
    kept the heads and channels ``f32`` kept) and ``within_goal``; written back to the store."""
    rows = []
    for variant in [*VARIANTS, *(DENSE if args.dense else ())]:
        reference = "dense_f32" if variant in DENSE else REFERENCE
        row, ref = store.get(row_key(args, variant)), store.get(row_key(args, reference))
        if row is None or ref is None:
            continue
        row = dict(row, reference=reference, ppl_vs_reference=row["ppl"] / ref["ppl"] - 1)
        if "kept" in row:
            row["same_layers_as_f32"] = sum(a == b for a, b in zip(row["kept"], ref["kept"]))
            row["within_goal"] = abs(row["ppl_vs_reference"]) <= GOAL
        store.add(row)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    store = C.RowStore(args.out)
    todo = [v for v in [*VARIANTS, *(DENSE if args.dense else ())] if not store.has(row_key(args, v))]
    if todo:
        C.setup_torch(args.threads)
        s = setup(args)
        for variant in todo:
            row = measure(s, args, variant)
            store.add(row)
            print(f"{variant}: PPL {row['ppl']:.3f}, prune {C.fmt(row.get('prune_seconds'), '.0f')} s, "
                  f"eval {row['eval_seconds']:.0f} s (load {row['run']['loadavg_1m']})", flush=True)
    else:
        print("every row is measured already")
    for row in compare(store, args):
        layers = f", same kept units as f32 in {row['same_layers_as_f32']}/{len(row['kept'])} layers" if "kept" in row else ""
        print(f"{row['variant']:>14}: PPL {row['ppl']:.3f} ({100 * row['ppl_vs_reference']:+.2f} % vs "
              f"{row['reference']}){layers}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
