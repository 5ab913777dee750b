"""Compare rcpu_lightning's zero-shot scorer with an lm-evaluation-harness run on the same documents.

A development check, run by hand; lm_eval is not a dependency of this project (run it in its own venv).
Input: the ``--output_path`` folder of ``lm_eval ... --log_samples`` run on task YAMLs named
``local_<task>`` (copies of the harness YAMLs pointed at HF-layout JSONL copies of the shared files).
For every ``samples_local_<task>_*.jsonl`` the script

1. rebuilds our items for the same first ``N`` documents and checks that every ``(context, continuation)``
   string equals the harness' request arguments;
2. scores them with :func:`rcpu_lightning.eval.item_loglikelihoods` and compares the per-request
   log-likelihoods and the per-document acc / acc_norm with the harness' values.

Usage (from the repository root; the model must be a plain HF folder for lm_eval)::

    # 1. task YAMLs + HF-layout data copies for lm_eval
    python tools/compare_harness.py --prepare /tmp/lmeval-tasks --data-dir /work/shared/data \\
        --lm-eval-tasks /path/to/site-packages/lm_eval/tasks
    # 2. lm_eval --model hf --model_args pretrained=DIR,dtype=float32 --include_path /tmp/lmeval-tasks \\
    #        --tasks local_boolq,...,local_openbookqa --limit N --batch_size 16 --device cpu \\
    #        --log_samples --output_path LM_EVAL_OUT_DIR
    # 3. compare (--model: anything rcpu_lightning.models.load_causal_lm accepts; default smollm2-135m)
    python tools/compare_harness.py LM_EVAL_OUT_DIR --data-dir /work/shared/data \\
        [--model DIR|FILE.gguf|smollm2-135m] [--bos default|true|false] --output compare.json
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
from transformers import AutoTokenizer

from rcpu_lightning.eval import PAPER_METRIC, TASKS, item_loglikelihoods, load_items, score_item
from rcpu_lightning.files import write_json_atomic
from rcpu_lightning.models import load_causal_lm
from rcpu_lightning.pruning.io import PLAN_FILE, load_pruned

_HARNESS_YAML = {
    "boolq": ("super_glue/boolq/default.yaml", "validation", ["acc"]),
    "piqa": ("piqa/piqa.yaml", "validation", ["acc", "acc_norm"]),
    "hellaswag": ("hellaswag/hellaswag.yaml", "validation", ["acc", "acc_norm"]),
    "winogrande": ("winogrande/default.yaml", "validation", ["acc"]),
    "arc_easy": ("arc/arc_easy.yaml", "test", ["acc", "acc_norm"]),
    "arc_challenge": ("arc/arc_easy.yaml", "test", ["acc", "acc_norm"]),  # arc_challenge.yaml includes it
    "openbookqa": ("openbookqa/openbookqa.yaml", "test", ["acc", "acc_norm"]),
}
_HARNESS_HELPERS = ("hellaswag/utils.py", "winogrande/preprocess_winogrande.py")


def prepare_lm_eval_tasks(out_dir: str | Path, data_dir: str | Path, lm_eval_tasks: str | Path) -> list[str]:
    """Write ``local_<task>.yaml`` (the harness' own doc_to_* / process_docs lines, dataset = local JSON)
    and HF-layout JSONL copies of the shared files into ``out_dir``. Returns the task names.

    HellaSwag: the local file has no ctx_a/ctx_b, so the copy carries ``ctx_a`` = our recapitalised ctx
    and ``ctx_b`` = "" (lm-eval then builds the same query: the trailing space is stripped).
    """
    import re
    import shutil

    from rcpu_lightning.eval.tasks import TASK_SPECS, _read_jsonl, recapitalize_hellaswag_ctx

    out, harness = Path(out_dir), Path(lm_eval_tasks)
    out.mkdir(parents=True, exist_ok=True)
    for helper in _HARNESS_HELPERS:
        shutil.copy(harness / helper, out / Path(helper).name)
    names = []
    for task, (yaml_rel, split, metrics) in _HARNESS_YAML.items():
        spec = TASK_SPECS[task]
        docs = [spec.normalize_local(d) for d in _read_jsonl(Path(data_dir) / "zeroshot" / spec.local_file, None)]
        if task == "hellaswag":
            docs = [
                {"activity_label": d["activity_label"], "ctx_a": recapitalize_hellaswag_ctx(d["ctx"]), "ctx_b": "",
                 "endings": d["endings"], "label": str(d["label"])}
                for d in docs
            ]
        data_file = (out / f"{task}.jsonl").resolve()
        with open(data_file, "w", encoding="utf-8") as f:
            for d in docs:
                f.write(json.dumps(d) + "\n")
        src = (harness / yaml_rel).read_text(encoding="utf-8").splitlines()
        keep = [line for line in src if re.match(r"^(output_type|process_docs|doc_to_text|doc_to_target|doc_to_choice):", line)]
        lines = [f"task: local_{task}", "dataset_path: json", "dataset_kwargs:", "  data_files:", f"    {split}: {data_file}"]
        lines += [f"{'validation' if split == 'validation' else 'test'}_split: {split}"] + keep + ["metric_list:"]
        for m in metrics:
            lines += [f"  - metric: {m}", "    aggregation: mean", "    higher_is_better: true"]
        lines += ["metadata:", "  version: 1.0"]
        (out / f"local_{task}.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
        names.append(f"local_{task}")
    return names


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


def _parse_bos(value: str) -> bool | None:
    """``--bos``: default (tokenizer default) | true | false."""
    v = value.lower()
    if v in ("default", "none", "tokenizer"):
        return None
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"--bos must be default|true|false, got {value!r}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python tools/compare_harness.py", description=__doc__.split("\n\n")[0])
    p.add_argument("lm_eval_dir", nargs="?", help="lm_eval --output_path folder (searched recursively for samples_local_*.jsonl)")
    p.add_argument("--prepare", metavar="OUT_DIR", help="only write the local_<task> YAMLs and data copies here")
    p.add_argument("--lm-eval-tasks", help="the installed lm_eval/tasks folder (with --prepare)")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--model", default="smollm2-135m", help="hub id, HF folder (a pruned one: load_pruned), .gguf file or embedded name (load_causal_lm)")
    p.add_argument("--bos", type=_parse_bos, default=None, help="default (tokenizer) | true | false")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma list")
    p.add_argument("--max-docs", type=int, default=None, help="compare only the first K harness documents")
    p.add_argument("--output", help="result JSON (written atomically)")
    return p


def _summary(res: dict[str, Any]) -> str:
    harness_norm = res["harness"]["acc_norm"]
    return (
        f"{res['task']:14s} n={res['n']:4d} strings_differ={res['string_mismatches']} max|dll|={res['max_abs_ll_diff']:.2e} "
        f"acc ours/harness={res['ours']['acc']:.4f}/{res['harness']['acc']:.4f} "
        f"acc_norm ours/harness={res['ours']['acc_norm']:.4f}/{harness_norm if harness_norm is not None else float('nan'):.4f} "
        f"docs differing acc={res['docs_acc_differs']} acc_norm={res['docs_acc_norm_differs']}"
    )


def compare_all(args: argparse.Namespace, model, tokenizer) -> dict[str, dict[str, Any]]:
    """:func:`compare_task` for every task of ``args.tasks`` that has harness samples in ``args.lm_eval_dir``."""
    results = {}
    for task in [t for t in args.tasks.split(",") if t]:
        files = sorted(glob.glob(str(Path(args.lm_eval_dir) / "**" / f"samples_local_{task}_*.jsonl"), recursive=True))
        if not files:
            print(f"{task}: no harness samples found in {args.lm_eval_dir}, skipped", flush=True)
            continue
        samples = _read_samples(files[-1])
        if args.max_docs:
            samples = [s for s in samples if s["doc_id"] < args.max_docs]
        results[task] = compare_task(task, samples, model, tokenizer, args.data_dir, args.bos, args.batch_size)
        print(_summary(results[task]), flush=True)
    return results


def _pruned_folder(spec: str) -> bool:
    """A folder written by save_pruned: loaded with load_pruned, as the CLI's CausalLMModule does."""
    return (Path(spec).expanduser() / PLAN_FILE).is_file()


def main(argv: Sequence[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.prepare:
        if not args.lm_eval_tasks:
            p.error("--prepare needs --lm-eval-tasks")
        print(",".join(prepare_lm_eval_tasks(args.prepare, args.data_dir, args.lm_eval_tasks)))
        return 0
    if not args.lm_eval_dir:
        p.error("lm_eval_dir is required unless --prepare is given")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_causal_lm(args.model, dtype="float32") if not _pruned_folder(args.model) else \
        (load_pruned(args.model, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(args.model))
    results = compare_all(args, model, tokenizer)
    if args.output:
        record = {"lm_eval_dir": str(args.lm_eval_dir), "model": args.model, "bos": args.bos,
                  "max_docs": args.max_docs, "tasks": results}
        write_json_atomic(args.output, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
