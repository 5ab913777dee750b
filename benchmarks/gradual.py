"""Gradual vs one-shot pruning with fine-tuning in between: one RCPUPruningCallback with a schedule.

    RCPU_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/gradual.py [--steps 8 --ppl-windows 256]

The embedded SmolLM2-135M (``load_causal_lm("smollm2-135m")``, float32) is pruned to 30 % with RCPU
(rotation, ``head_rounding="nearest"``) inside ``Trainer.fit`` (the project's ``CausalLMModule``,
``RCPUDataModule``, ``RCPUPruningCallback``), two ways with the same fine-tuning budget:

- **one-shot**: ``schedule={0: 0.3}``: pruned before training, then ``3 x --steps`` AdamW steps;
- **gradual**: ``schedule={0: 0.1, 1: 0.2, 2: 0.3}``: three steps of 10 %, each re-calibrated on the
  current (pruned, fine-tuned) model, with ``--steps`` AdamW steps after each (the optimizer state of
  the kept weights is carried over and sliced at every step).

Both see the same training windows in the same order (``seed_everything(--seed)`` per run):
``--steps x --batch-size`` windows of ``--seqlen`` tokens of the calibration split that overlap no
calibration window, one pass per epoch (three epochs); no validation loop. Rows: the dense model,
the one-shot model right after pruning (its ``save_dir``: before fine-tuning), the one-shot model
after fine-tuning and the gradual model after fine-tuning (their ``export_dir``s are not written).
Perplexity: WikiText-2 *test* split, windows of 128 tokens, the first ``--ppl-windows`` (256) only,
so the table is not comparable with the full-split figures of the quality benchmark; the test
split is never used for calibration or training. Calibration: ``--calib-samples`` (128) windows of
``--seqlen`` tokens, seed 0 (the valid split offline). Writes ``results/gradual.json`` (rows plus
settings and ``run_info``); ``render_readme.py`` turns it into the README table.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

if not __package__:  # run as `python benchmarks/gradual.py`: import this folder as the package it is
    sys.path[0] = str(Path(__file__).resolve().parents[1])
from benchmarks import _common as C  # noqa: E402

RUNS = {  # key -> (label, schedule)
    "one_shot": ("One-shot 30 %", {0: 0.3}),
    "gradual": ("Gradual 10 → 20 → 30 %", {0: 0.1, 1: 0.2, 2: 0.3}),
}


def _data(args, tokenizer):
    from rcpu_lightning.data import CalibrationConfig
    from rcpu_lightning.lightning import RCPUDataModule

    calibration = CalibrationConfig(nsamples=args.calib_samples, seqlen=args.seqlen, seed=0, batch_size=8)
    return RCPUDataModule(data_dir=args.data_dir, tokenizer=tokenizer, calibration=calibration,
                          eval_seqlen=args.eval_seqlen, eval_batch_size=8, ppl_max_windows=args.ppl_windows,
                          train_nsamples=args.steps * args.batch_size, train_batch_size=args.batch_size)


def _trainer(args, callbacks=(), max_epochs: int = 1):
    import lightning.pytorch as L

    return L.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                     num_sanity_val_steps=0, callbacks=list(callbacks))


def _evaluate(args, module, datamodule) -> tuple[float, float]:
    """(perplexity, seconds) of ``trainer.test`` on the first ``--ppl-windows`` test windows."""
    t0 = time.perf_counter()
    _trainer(args).test(module, datamodule=datamodule, verbose=False)
    return float(module.eval_results["ppl"]), time.perf_counter() - t0


def _kept(module) -> str:
    from rcpu_lightning.models.adapter import decoder_layers, layer_parts

    shapes = sorted({(p.num_heads, p.num_kv_heads, p.intermediate_size)
                     for p in map(layer_parts, decoder_layers(module.pruned_lm()))})
    return ", ".join(f"{h}/{k}/{i}" for h, k, i in shapes)


def _loss_recorder():
    """A callback keeping the training loss of every step (``.values``)."""
    import lightning.pytorch as L

    class Losses(L.Callback):
        def __init__(self):
            self.values: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.values.append(float(outputs["loss"]))

    return Losses()


def run(args) -> dict:
    import lightning.pytorch as L

    from rcpu_lightning.lightning import CausalLMModule, RCPUPruningCallback
    from rcpu_lightning.pruning import PruningConfig

    config = PruningConfig(method="rcpu", ratio=0.3, head_rounding="nearest")
    started = time.perf_counter()
    rows = []
    dense = CausalLMModule(args.model, lr=args.lr)
    dm = _data(args, dense.tokenizer)
    ppl, seconds = _evaluate(args, dense, dm)
    params = dense.num_parameters()
    rows.append({"key": "dense", "label": "Dense", "schedule": None, "ppl": ppl, "eval_seconds": seconds,
                 "params": params, "decoder_params_removed": 0.0, "finetune_steps": 0, "kept": _kept(dense)})
    print(f"dense: PPL {ppl:.2f} ({seconds:.0f} s)", flush=True)
    del dense
    with tempfile.TemporaryDirectory(prefix="gradual-") as tmp:
        for key, (label, schedule) in RUNS.items():
            L.seed_everything(args.seed, verbose=False)
            module = CausalLMModule(args.model, lr=args.lr)
            save_dir = Path(tmp) / key  # written by the one-shot run only (one step; read back below)
            pruning = RCPUPruningCallback(config, schedule=schedule, progress=False,
                                          save_dir=str(save_dir) if key == "one_shot" else None)
            losses = _loss_recorder()
            trainer = _trainer(args, [pruning, losses], max_epochs=3)
            t0 = time.perf_counter()
            trainer.fit(module, datamodule=dm)
            fit_seconds = time.perf_counter() - t0
            summary = pruning.results_summary()
            if key == "one_shot":  # its save_dir: the model right after pruning, before fine-tuning
                before = CausalLMModule(str(save_dir))
                ppl0, sec0 = _evaluate(args, before, dm)
                rows.append({"key": "one_shot_no_finetuning", "label": "One-shot 30 %, no fine-tuning",
                             "schedule": schedule, "ppl": ppl0, "eval_seconds": sec0, "params": before.num_parameters(),
                             "decoder_params_removed": summary["decoder_params_removed"], "finetune_steps": 0,
                             "prune_seconds": summary["prune_seconds"], "kept": _kept(before)})
                print(f"{rows[-1]['label']}: PPL {ppl0:.2f}", flush=True)
                del before
            ppl, seconds = _evaluate(args, module, dm)
            rows.append({
                "key": key, "label": label, "schedule": schedule, "ppl": ppl, "eval_seconds": seconds,
                "params": module.num_parameters(), "decoder_params_removed": summary["decoder_params_removed"],
                "finetune_steps": trainer.global_step, "prune_seconds": summary["prune_seconds"],
                "fit_seconds": fit_seconds, "train_seconds": fit_seconds - summary["prune_seconds"],
                "steps": summary["pruning_steps"], "losses": losses.values, "kept": _kept(module),
            })
            print(f"{label}: PPL {ppl:.2f}, {trainer.global_step} fine-tuning steps, fit {fit_seconds:.0f} s "
                  f"(pruning {summary['prune_seconds']:.0f} s)", flush=True)
            del module, trainer
    dm_info = dm.describe()
    return {
        "rows": rows,
        "settings": {"model": C.MODEL_NAME if args.model == C.MODEL_SPEC else args.model, "method": "rcpu",
                     "compensation": config.compensation, "head_rounding": config.head_rounding,
                     "calib_samples": args.calib_samples, "seqlen": args.seqlen, "eval_seqlen": args.eval_seqlen,
                     "ppl_windows": dm_info.get("ppl_windows"), "ppl_split": dm_info.get("ppl_split"),
                     "steps_per_epoch": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                     "optimizer": "AdamW (CausalLMModule's)", "seed": args.seed,
                     "train_windows": args.steps * args.batch_size,
                     "calibration_source": (dm.calibration_info() or {}).get("source")},
        "seconds": time.perf_counter() - started,
        "run": C.run_info(),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=C.MODEL_SPEC, help="model spec (default: the embedded SmolLM2-135M)")
    p.add_argument("--steps", type=int, default=8, help="fine-tuning steps per epoch (after each pruning step)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=128, help="calibration and training window length")
    p.add_argument("--eval-seqlen", type=int, default=128)
    p.add_argument("--ppl-windows", type=int, default=256, help="first N WikiText-2 test windows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=str(C.RESULTS_DIR / "gradual.json"))
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    quiet = logging.getLogger("lightning.pytorch")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            result = run(args)
    finally:
        quiet.setLevel(level)
    C.write_json_atomic(args.out, result, indent=1)
    print(f"{result['seconds'] / 60:.1f} min; -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
