"""Which heads and channels to remove: counts (uniform or AL-AM) and the kept indices.

Grouped-query attention: query head ``h`` reads kv head ``h // g`` with ``g = H / H_kv``.

* ``per_group``: remove the same number of query heads from every kv group, so the result is a
  standard GQA layer (k/v untouched). The removable unit is a "slot": one head in each group,
  so head counts are multiples of ``H_kv``.
* ``whole_group``: remove whole kv groups (their ``g`` query heads and their k/v rows); head counts
  are multiples of ``g``.
* MHA (``g == 1``) is ``whole_group`` with groups of one head: a removed head takes its k/v rows
  with it (as in the paper), whatever ``gqa_mode`` says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

_EPS = 1e-9  # so that e.g. 0.29 * 100 = 28.999999999999996 floors to 29


@dataclass(frozen=True)
class HeadLayout:
    """How heads group in one layer and what the removable unit is."""

    num_heads: int
    num_kv_heads: int
    whole_group: bool  # unit = a kv group (k/v rows go too); else unit = a slot across groups

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def unit_size(self) -> int:
        """Query heads per removable unit."""
        return self.group_size if self.whole_group else self.num_kv_heads

    @property
    def num_units(self) -> int:
        return self.num_heads // self.unit_size


def head_layout(num_heads: int, num_kv_heads: int, gqa_mode: str) -> HeadLayout:
    """The removable unit of a layer with ``num_heads`` query and ``num_kv_heads`` kv heads."""
    if num_kv_heads <= 0 or num_heads % num_kv_heads:
        raise ValueError(f"num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads}")
    if gqa_mode not in ("per_group", "whole_group"):
        raise ValueError(f"gqa_mode={gqa_mode!r} is not supported; allowed values: ['per_group', 'whole_group']")
    return HeadLayout(num_heads, num_kv_heads, gqa_mode == "whole_group" or num_heads == num_kv_heads)


def feasible_count(ratio: float, total: int, unit: int, rounding: str) -> int:
    """Number of items to remove: a multiple of ``unit`` near ``ratio * total``.

    ``floor``: the largest multiple ``<= ratio * total`` (``floor(ratio * count)`` for unit 1,
    the reference's rule); ``nearest``: the nearest multiple (ties go down).
    """
    target = ratio * total
    if rounding == "floor":
        return int(math.floor(target / unit + _EPS)) * unit
    if rounding == "nearest":
        low = int(math.floor(target / unit + _EPS)) * unit
        high = low + unit
        return high if high <= total and (high - target) < (target - low) - _EPS else low
    raise ValueError(f"head_rounding={rounding!r} is not supported; allowed values: ['floor', 'nearest']")


def check_not_emptied(kind: str, removed: int, total: int, layer: int, structure: str) -> None:
    """Refuse to remove every head / channel of a layer; the advice fits ``structure`` (a uniform
    prune empties every layer at once: only a lower ratio helps)."""
    if removed >= total:
        advice = "lower the ratio" + (" (or use structure='uniform')" if structure != "uniform" else "")
        raise ValueError(f"pruning would remove all {total} {kind} of layer {layer} ({removed} requested); {advice}")


def _lowest(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` lowest scores (stable: ties removed in index order)."""
    return torch.argsort(scores.cpu(), stable=True)[:k]


def select_channels(scores: Tensor, n_remove: int) -> list[int]:
    """Kept channel indices (ascending) after removing the ``n_remove`` lowest scores."""
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    keep[_lowest(scores, n_remove)] = False
    return keep.nonzero().flatten().tolist()


def select_heads(scores: Tensor, layout: HeadLayout, n_remove: int) -> tuple[list[int], list[int]]:
    """Kept query heads and kept kv heads (ascending) after removing ``n_remove`` heads.

    ``scores`` [H] are head scores. Whole groups are ranked by the sum of their heads' scores.
    """
    if n_remove % layout.unit_size:
        raise ValueError(f"{n_remove} heads cannot be removed in units of {layout.unit_size}")
    g, n_kv = layout.group_size, layout.num_kv_heads
    by_group = scores.detach().cpu().reshape(n_kv, g)  # [H_kv, g]
    keep = torch.ones(n_kv, g, dtype=torch.bool)
    if layout.whole_group:
        keep[_lowest(by_group.sum(1), n_remove // g)] = False
    else:
        per_group = n_remove // n_kv
        for group in range(n_kv):
            keep[group, _lowest(by_group[group], per_group)] = False
    return kept_from_mask(keep)


def kept_from_mask(keep: Tensor) -> tuple[list[int], list[int]]:
    """Kept query heads and kept kv heads (ascending) from a keep mask [H_kv, g]."""
    return keep.flatten().nonzero().flatten().tolist(), keep.any(1).nonzero().flatten().tolist()


def head_unit_scores(head_score: Tensor, layout: HeadLayout) -> Tensor:
    """Scores of a layer's removable head units, ascending [num_units] (for AL-AM).

    Whole groups: mean of their heads' scores. Slots: the r-th slot is the r-th weakest head of
    every group; its score is the mean of those heads' scores (slots come out in ascending order,
    so a threshold removes the weakest slots first, as :func:`select_heads` does).
    """
    by_group = head_score.detach().double().cpu().reshape(layout.num_kv_heads, layout.group_size)
    if layout.whole_group:
        return torch.sort(by_group.mean(1)).values
    return torch.sort(by_group, dim=1).values.mean(0)


@dataclass
class LayerUnits:
    """One layer's standardised unit scores for the AL-AM global threshold."""

    head_units: Tensor  # [num_units] ascending
    head_unit_size: int  # query heads per unit
    head_unit_weight: float  # parameters of one unit / parameters of one MLP channel
    channel_scores: Tensor  # [intermediate]


def al_am_counts(layers: list[LayerUnits], ratio: float, budget: float | None = None,
                 max_layer_ratio: float | None = None) -> list[tuple[int, int]]:
    """FLAP's AL-AM: one threshold over all layers and both kinds -> (heads, channels) removed per layer.

    Units are sorted by standardised score (descending); each carries its parameter weight
    (a head unit: its parameters relative to one MLP channel's ``3 * hidden``; a channel: 1).
    The kept prefix is the one whose removed weight is nearest to ``budget`` (in channel units;
    default ``ratio · total``, FLAP's ``argmin |cumsum − total·(1−ratio)|``; FLAP then also removes
    the unit at that position, we keep it, so ratio 0 removes nothing).

    ``max_layer_ratio`` (not in FLAP): no layer may lose more than that fraction of its head units or
    of its channels; the units above the cap (a layer's highest scores) are always kept, and the
    threshold moves on to the other layers.
    """
    scores, weights, owner = [], [], []  # owner: (layer, 0 = head unit, 1 = channel)
    for i, lu in enumerate(layers):
        scores += [_capped(lu.head_units, max_layer_ratio), _capped(lu.channel_scores, max_layer_ratio)]
        weights += [torch.full((lu.head_units.numel(),), float(lu.head_unit_weight), dtype=torch.float64),
                    torch.ones(lu.channel_scores.numel(), dtype=torch.float64)]
        owner += [(i, 0)] * lu.head_units.numel() + [(i, 1)] * lu.channel_scores.numel()
    score, weight = torch.cat(scores), torch.cat(weights)
    order = torch.argsort(score, descending=True, stable=True)
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(weight[order], 0)])
    removed = cum[-1] * ratio if budget is None else min(float(budget), float(cum[-1]))
    removable = float(weight[torch.isfinite(score)].sum())
    if removed > removable + 1e-9:
        raise ValueError(f"max_layer_ratio={max_layer_ratio} lets at most {removable / float(cum[-1]):.1%} of the "
                         f"heads' and channels' parameters go, {float(removed / cum[-1]):.1%} are asked for: raise it")
    n_keep = int(torch.argmin((cum - (cum[-1] - removed)).abs()))
    counts = [[0, 0] for _ in layers]
    for idx in order[n_keep:].tolist():
        layer, kind = owner[idx]
        counts[layer][kind] += layers[layer].head_unit_size if kind == 0 else 1
    return [(h, c) for h, c in counts]


def _capped(scores: Tensor, max_ratio: float | None) -> Tensor:
    """``scores`` (float64, CPU) with all but the ``floor(max_ratio · n)`` lowest set to +inf (never removed)."""
    scores = scores.double().cpu().clone()
    if max_ratio is not None:
        removable = int(math.floor(max_ratio * scores.numel() + _EPS))
        scores[torch.argsort(scores, stable=True)[removable:]] = math.inf
    return scores
