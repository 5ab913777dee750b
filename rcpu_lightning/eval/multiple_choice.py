"""Multiple-choice accuracy: per-item scoring, the torchmetrics metric, and items as a dataset.

``acc`` = the choice with the highest summed log-likelihood is the gold one; ``acc_norm`` = the same with
the log-likelihood divided by the choice's character length (lm-evaluation-harness, eval-protocol.md 1.3).
Log-likelihoods come from :func:`~.loglikelihood.item_loglikelihoods`.

DDP: split the *items* across ranks (:class:`MultipleChoiceDataset` + :func:`collate_items`), call
:func:`~.loglikelihood.item_loglikelihoods` per batch and :meth:`MultipleChoiceAccuracy.update`; its
states are sums, so ``compute()`` is exact as long as every item is seen once (use an unpadded sampler or
deduplicate by ``item.doc_id``).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchmetrics import Metric

from .tasks import MultipleChoiceItem, build_items, load_docs

__all__ = ["score_item", "reference_rates", "MultipleChoiceAccuracy", "MultipleChoiceDataset", "collate_items"]


def score_item(loglikelihoods: Sequence[float], item: MultipleChoiceItem) -> tuple[int, int]:
    """``(acc, acc_norm)`` of one item: argmax of ``ll`` and of ``ll / len(choice)`` (ties -> lowest index)."""
    if len(loglikelihoods) != item.num_choices:
        raise ValueError(f"{item.task}#{item.doc_id}: {len(loglikelihoods)} loglikelihoods for {item.num_choices} choices")
    lls = np.asarray(loglikelihoods, dtype=np.float64)  # [choices]
    lengths = np.asarray(item.choice_lengths, dtype=np.float64)  # [choices]
    with np.errstate(divide="ignore", invalid="ignore"):
        normed = lls / lengths
    return int(int(np.argmax(lls)) == item.gold), int(int(np.argmax(normed)) == item.gold)


def reference_rates(items: Sequence[MultipleChoiceItem]) -> dict[str, float]:
    """Accuracies that need no model: ``chance`` (mean of 1/choices) and ``majority_position`` (always
    answering the most frequent gold index; e.g. "yes" on BoolQ, where it is far above chance)."""
    if not items:
        raise ValueError("reference_rates needs at least one item, got none")
    counts = np.bincount([it.gold for it in items])  # [max gold + 1]
    return {"chance": float(np.mean([1.0 / it.num_choices for it in items])),
            "majority_position": float(counts.max() / len(items))}


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
        scores = [score_item(lls, item) for lls, item in zip(loglikelihoods, items)]
        self.correct += sum(acc for acc, _ in scores)
        self.correct_norm += sum(acc_norm for _, acc_norm in scores)
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
        """The first ``limit`` documents of ``task`` (all when ``None``), from ``data_dir`` as :func:`~.tasks.load_docs`."""
        docs, _ = load_docs(task, data_dir=data_dir, limit=limit)
        return cls(build_items(task, docs))

    collate_fn = staticmethod(collate_items)
