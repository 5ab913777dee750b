"""Plain-Python (non-Lightning) zero-shot evaluation of a model on the multiple-choice tasks.

One process scores every item: :func:`evaluate_items` (items already built), :func:`evaluate_task`
(documents loaded by :func:`~.tasks.load_docs`), :func:`evaluate_tasks` (several tasks). Scoring follows
the lm-evaluation-harness protocol (:mod:`.encoding`, :mod:`.loglikelihood`, :mod:`.multiple_choice`).
The command-line and DDP route is ``python cli.py test -c CONFIG --data.tasks "[boolq,piqa]"``.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Sequence

import torch

from .encoding import encode_request, resolve_max_length
from .loglikelihood import item_loglikelihoods
from .multiple_choice import MultipleChoiceAccuracy, reference_rates
from .tasks import PAPER_METRIC, TASKS, MultipleChoiceItem, build_items, load_docs

__all__ = ["evaluate_items", "evaluate_task", "evaluate_tasks"]


def _stderr(p: float, n: int) -> float:
    # Harness: sample std (ddof=1) / sqrt(n) of the 0/1 outcomes = sqrt(p (1 - p) / (n - 1)).
    return math.sqrt(p * (1.0 - p) / (n - 1)) if n > 1 else float("nan")


def _bos_in_context(tokenizer: Any, item: MultipleChoiceItem, bos: bool | None) -> bool:
    """Whether the item's first context really starts with BOS under the switch ``bos``."""
    first_ctx, _ = encode_request(tokenizer, *item.requests[0], bos=bos)
    bos_id = getattr(tokenizer, "bos_token_id", None)
    return bool(first_ctx) and bos_id is not None and first_ctx[0] == bos_id


def _timed_loglikelihoods(model: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[list[list[float]], float, float]:
    """:func:`item_loglikelihoods` in eval mode (the mode is restored), with wall and process CPU seconds."""
    was_training = model.training
    model.eval()
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        lls = item_loglikelihoods(model, *args, **kwargs)
    finally:
        model.train(was_training)
    return lls, time.perf_counter() - t0, time.process_time() - c0


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
    """Score ``items`` (all of one task) and return acc/acc_norm plus the settings used.

    Keys: ``task``, ``acc``, ``acc_norm``, ``acc_stderr``, ``acc_norm_stderr``, ``n``, ``seconds``,
    ``cpu_seconds``, ``bos``, ``bos_in_context``, ``reported_metric``, ``reported``, ``max_length``,
    ``batch_size``, ``requests`` and the model-free ``chance`` / ``majority_position``.
    """
    if not items:
        raise ValueError(f"no items to evaluate for task {task!r}")
    task = task or items[0].task
    if max_length is None:
        max_length = resolve_max_length(model, tokenizer)
    lls, seconds, cpu_seconds = _timed_loglikelihoods(
        model, tokenizer, items, bos=bos, max_length=max_length, batch_size=batch_size, progress=progress
    )
    metric = MultipleChoiceAccuracy(sync_on_compute=False)
    metric.update(lls, items)
    res = metric.compute()
    acc, acc_norm, n = float(res["acc"]), float(res["acc_norm"]), int(res["n"])
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
        "bos_in_context": _bos_in_context(tokenizer, items[0], bos),
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
    Returns :func:`evaluate_items`' dict plus ``limit`` and ``source`` (where the documents came from).
    """
    docs, source = load_docs(task, data_dir=data_dir, limit=limit)
    items = build_items(task, docs)
    result = evaluate_items(
        model, tokenizer, items, task=task, bos=bos, batch_size=batch_size, max_length=max_length, progress=progress
    )
    result["limit"] = limit
    result["source"] = source
    return result


def evaluate_tasks(
    model: torch.nn.Module,
    tokenizer: Any,
    tasks: Sequence[str] = TASKS,
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """``{task: evaluate_task(model, tokenizer, task, **kwargs)}`` for each of ``tasks`` (default: the seven)."""
    return {task: evaluate_task(model, tokenizer, task, **kwargs) for task in tasks}
