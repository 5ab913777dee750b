"""Evaluation: SparseGPT-style token perplexity, lm-evaluation-harness zero-shot tasks, result tables.

Submodules, one job each: :mod:`.perplexity` (metric and plain loop), :mod:`.tasks` (documents -> items,
data sources), :mod:`.encoding` (harness tokenisation of a request), :mod:`.loglikelihood` (batched
continuation log-likelihoods), :mod:`.multiple_choice` (acc / acc_norm, metric, dataset),
:mod:`.evaluate` (plain-Python evaluation of tasks), :mod:`.report` (markdown table, plot, CLI). Names
below are imported lazily so that ``python -m rcpu_lightning.eval.report`` does not import its module twice.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Perplexity": "perplexity",
    "evaluate_perplexity": "perplexity",
    "window_nll": "perplexity",
    "ALL_TASKS": "tasks",
    "PAPER_METRIC": "tasks",
    "TASKS": "tasks",
    "MultipleChoiceItem": "tasks",
    "build_item": "tasks",
    "build_items": "tasks",
    "load_docs": "tasks",
    "load_items": "tasks",
    "encode_request": "encoding",
    "resolve_max_length": "encoding",
    "item_loglikelihoods": "loglikelihood",
    "request_loglikelihoods": "loglikelihood",
    "MultipleChoiceAccuracy": "multiple_choice",
    "MultipleChoiceDataset": "multiple_choice",
    "collate_items": "multiple_choice",
    "reference_rates": "multiple_choice",
    "score_item": "multiple_choice",
    "evaluate_items": "evaluate",
    "evaluate_task": "evaluate",
    "evaluate_tasks": "evaluate",
    "plot_ppl_vs_ratio": "report",
    "report_cli": "report",
    "results_table": "report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
