"""Evaluation: SparseGPT-style token perplexity, lm-evaluation-harness zero-shot tasks, result tables.

Submodules: :mod:`.perplexity`, :mod:`.tasks` (documents -> items, data sources), :mod:`.zeroshot`
(scoring, metric, CLI), :mod:`.report` (markdown table, plot, CLI). Names below are imported lazily so
that ``python -m rcpu_lightning.eval.zeroshot`` / ``.report`` do not import their module twice.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Perplexity": "perplexity",
    "evaluate_perplexity": "perplexity",
    "ALL_TASKS": "tasks",
    "PAPER_METRIC": "tasks",
    "TASKS": "tasks",
    "MultipleChoiceItem": "tasks",
    "build_item": "tasks",
    "load_items": "tasks",
    "MultipleChoiceAccuracy": "zeroshot",
    "MultipleChoiceDataset": "zeroshot",
    "collate_items": "zeroshot",
    "encode_request": "zeroshot",
    "evaluate_items": "zeroshot",
    "evaluate_task": "zeroshot",
    "item_loglikelihoods": "zeroshot",
    "resolve_max_length": "zeroshot",
    "score_item": "zeroshot",
    "plot_ppl_vs_ratio": "report",
    "results_table": "report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
