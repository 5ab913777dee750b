"""Compare our scorer with an lm-evaluation-harness run on the same documents (development check).

Input: the ``--output_path`` folder of ``lm_eval ... --log_samples`` run on task YAMLs named
``local_<task>`` (copies of the harness YAMLs pointed at HF-layout JSONL copies of the shared files).
For every ``samples_local_<task>_*.jsonl`` the script

1. rebuilds our items for the same first ``N`` documents and checks that every ``(context, continuation)``
   string equals the harness' request arguments;
2. scores them with :func:`rcpu_lightning.eval.zeroshot.item_loglikelihoods` and compares the
   per-request log-likelihoods and the per-document acc / acc_norm with the harness' values.

Usage::

    python -m rcpu_lightning.eval.compare_harness LM_EVAL_OUT_DIR --data-dir /work/shared/data \\
        [--model-gguf FILE | --model DIR] [--bos default|true|false] --output compare.json
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .tasks import PAPER_METRIC, TASKS, load_items
from .zeroshot import _parse_bos, embedded_smollm2_gguf, item_loglikelihoods, load_gguf_model, score_item


def _read_samples(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return sorted(rows, key=lambda r: r["doc_id"])


def _requests(sample: dict) -> list[tuple[str, str]]:
    args = sample["arguments"]
    keys = sorted(args, key=lambda k: int(k.rsplit("_", 1)[1]))
    return [(args[k]["arg_0"], args[k]["arg_1"]) for k in keys]


def compare_task(task: str, samples: list[dict], model, tokenizer, data_dir, bos, batch_size: int) -> dict[str, Any]:
    n = max(s["doc_id"] for s in samples) + 1
    if [s["doc_id"] for s in samples] != list(range(n)):
        raise ValueError(f"{task}: harness samples are not the first {n} documents")
    items = load_items(task, data_dir, limit=n)
    string_mismatch = [it.doc_id for it, s in zip(items, samples) if list(it.requests) != _requests(s)]
    t0 = time.perf_counter()
    ours = item_loglikelihoods(model, tokenizer, items, bos=bos, batch_size=batch_size)
    seconds = time.perf_counter() - t0
    theirs = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
    diffs = np.array([a - b for o, t in zip(ours, theirs) for a, b in zip(o, t)])
    ours_scores = np.array([score_item(o, it) for o, it in zip(ours, items)], dtype=float)
    theirs_scores = np.array([score_item(t, it) for t, it in zip(theirs, items)], dtype=float)
    harness_acc = np.array([s["acc"] for s in samples], dtype=float)
    harness_acc_norm = np.array([s.get("acc_norm", np.nan) for s in samples], dtype=float)
    return {
        "task": task,
        "n": n,
        "string_mismatches": len(string_mismatch),
        "string_mismatch_doc_ids": string_mismatch[:20],
        "requests": int(diffs.size),
        "max_abs_ll_diff": float(np.abs(diffs).max()),
        "mean_abs_ll_diff": float(np.abs(diffs).mean()),
        "ours": {"acc": float(ours_scores[:, 0].mean()), "acc_norm": float(ours_scores[:, 1].mean())},
        "harness": {"acc": float(harness_acc.mean()), "acc_norm": None if np.isnan(harness_acc_norm).all() else float(np.nanmean(harness_acc_norm))},
        "harness_rescored_by_us": {"acc": float(theirs_scores[:, 0].mean()), "acc_norm": float(theirs_scores[:, 1].mean())},
        "docs_acc_differs": int((ours_scores[:, 0] != harness_acc).sum()),
        "docs_acc_norm_differs": int((ours_scores[:, 1] != theirs_scores[:, 1]).sum()),
        "reported_metric": PAPER_METRIC[task],
        "our_seconds": seconds,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rcpu_lightning.eval.compare_harness", description=__doc__.split("\n\n")[0])
    p.add_argument("lm_eval_dir", help="lm_eval --output_path folder (searched recursively for samples_local_*.jsonl)")
    p.add_argument("--data-dir", required=True)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model")
    src.add_argument("--model-gguf")
    p.add_argument("--bos", type=_parse_bos, default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--max-docs", type=int, default=None, help="compare only the first K harness documents")
    p.add_argument("--output")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    else:
        model, tokenizer = load_gguf_model(Path(args.model_gguf) if args.model_gguf else embedded_smollm2_gguf())
    results = {}
    for task in [t for t in args.tasks.split(",") if t]:
        files = sorted(glob.glob(str(Path(args.lm_eval_dir) / "**" / f"samples_local_{task}_*.jsonl"), recursive=True))
        if not files:
            print(f"{task}: no harness samples found, skipped", flush=True)
            continue
        samples = _read_samples(files[-1])
        if args.max_docs:
            samples = [s for s in samples if s["doc_id"] < args.max_docs]
        res = compare_task(task, samples, model, tokenizer, args.data_dir, args.bos, args.batch_size)
        results[task] = res
        print(
            f"{task:14s} n={res['n']:4d} strings_differ={res['string_mismatches']} max|dll|={res['max_abs_ll_diff']:.2e} "
            f"acc ours/harness={res['ours']['acc']:.4f}/{res['harness']['acc']:.4f} "
            f"acc_norm ours/harness={res['ours']['acc_norm']:.4f}/{res['harness']['acc_norm'] if res['harness']['acc_norm'] is not None else float('nan'):.4f} "
            f"docs differing acc={res['docs_acc_differs']} acc_norm={res['docs_acc_norm_differs']}",
            flush=True,
        )
    if args.output:
        from ._io import write_json_atomic

        write_json_atomic(
            args.output, {"lm_eval_dir": str(args.lm_eval_dir), "bos": args.bos, "max_docs": args.max_docs, "tasks": results}
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
