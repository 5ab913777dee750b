"""Selection by compensated error (``PruningConfig.selection = "compensated_error"``; beyond the paper).

The scores (RCPU's γ, WANDA-sp, FLAP) rank each head or channel by its own contribution, as if the
others did not change. But the kept columns are refitted afterwards, so what matters is the error
*left after compensation*: two correlated channels each carry a large γ, yet either can go for free
when the other absorbs its share. This selects greedily by that error (Optimal-Brain-Surgeon style,
in blocks: a head is ``head_dim`` columns), from the streamed statistics only.

With the inputs' covariance ``Σ = G/n − μμᵀ`` and the ridge of affine least squares,
``H = Σ + λ' I`` (``λ' = λ · mean(diag Σ)``), the error of keeping the columns ``K`` of ``W`` and
refitting them is ``E(K) = min_{W'} tr((W − W' P_K) H (W − W' P_K)ᵀ)``. From the current refitted
weights ``W'`` and ``H⁻¹`` restricted to the columns still present, removing a block ``B`` costs::

    ΔE_B = tr(W'_B [(H⁻¹)_BB]⁻¹ W'_Bᵀ)

and the survivors absorb it: ``W' ← W' − W'_B [(H⁻¹)_BB]⁻¹ (H⁻¹)_B,:`` and
``H⁻¹ ← H⁻¹ − (H⁻¹)_:,B [(H⁻¹)_BB]⁻¹ (H⁻¹)_B,:`` (the inverse of ``H`` on the remaining columns).
Each step removes the cheapest block allowed (per-group GQA: every kv group gives the same number of
heads); channels go ``ceil(n / 256)`` per step, so a 7B layer takes at most 256 updates. The kept set
is then compensated by the configured compensation; ``E`` is a proxy for what that refit leaves:
``H`` carries the refit's ridge (taken over all columns here, over the kept ones in
``affine_least_squares``, which also pulls towards ``W_K`` rather than 0), so even for
``affine_least_squares`` the two agree only as the ridge goes to 0. Within one channel step the
columns are ranked by their single costs (two twins may go together); for SmolLM2's 307 channels a
step holds 2, for LLaMA-7B's 2,200 of 11,008 it holds 9.

Run to the end of a layer, the same greedy gives each unit's cost in removal order
(:func:`channel_error_curve`, :func:`head_unit_error_curve`): what ``allocation: compensated_error``
ranks across layers (``engine.error_units``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .selection import HeadLayout, kept_from_mask
from .stats import ChannelStats

MAX_CHANNEL_STEPS = 256


def error_hessian(stats: ChannelStats, lam: float) -> Tensor:
    """``H = Σ + λ' I`` [d, d] float64, ``Σ`` the inputs' covariance, ``λ' = λ · mean(diag Σ)``."""
    cov = stats.covariance()
    ridge = lam * float(torch.diagonal(cov).mean())
    return cov + max(ridge, 1e-12) * torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)


def _block_cost(w: Tensor, hinv: Tensor, block: Tensor) -> float:
    s = hinv[block][:, block]  # [b, b]
    w_b = w[:, block]  # [d_out, b]
    return float((w_b * torch.linalg.solve(s, w_b.T).T).sum())


def _remove(w: Tensor, hinv: Tensor, cols: Tensor) -> None:
    """OBS update in place: the columns ``cols`` go, the others absorb them."""
    x = torch.linalg.solve(hinv[cols][:, cols], hinv[cols, :])  # [b, d]
    # in place: `hinv -= A @ x` built a [d, d] temporary every step (benchmarks/obs_update.py times both)
    w.addmm_(w[:, cols], x, alpha=-1)  # W -= W[:, cols] x
    hinv.addmm_(hinv[:, cols], x, alpha=-1)  # H⁻¹ -= H⁻¹[:, cols] x
    w[:, cols] = 0
    hinv[cols, :] = 0
    hinv[:, cols] = 0


def greedy_removal(weight: Tensor, hinv: Tensor, blocks: list[Tensor], groups: list[int],
                   quota: dict[int, int], gone: tuple[int, ...] = ()) -> tuple[list[int], list[float]]:
    """Blocks removed, cheapest compensated error first, ``quota[g]`` from each group ``g``, with their
    costs ``ΔE``; the blocks ``gone`` are already removed.

    ``weight`` [d_out, d_in] and ``hinv`` [d_in, d_in] (float64) are updated in place."""
    quota, removed, costs = dict(quota), [], []
    while any(quota.values()):
        allowed = [b for b in range(len(blocks)) if b not in removed and b not in gone and quota[groups[b]] > 0]
        cost = {b: _block_cost(weight, hinv, blocks[b]) for b in allowed}
        best = min(allowed, key=cost.__getitem__)
        _remove(weight, hinv, blocks[best])
        removed.append(best)
        costs.append(cost[best])
        quota[groups[best]] -= 1
    return removed, costs


def _channel_steps(weight: Tensor, hinv: Tensor, n_remove: int, with_cost: bool = False):
    """Greedy channel removal, ``ceil(n_remove / 256)`` columns per step: yields (columns, ΔE of the step
    or 0 when not ``with_cost``) and updates ``weight`` [d_out, d_in] and ``hinv`` in place."""
    alive = torch.ones(weight.shape[1], dtype=torch.bool, device=weight.device)
    per_step = math.ceil(n_remove / MAX_CHANNEL_STEPS) if n_remove else 1
    left = n_remove
    while left > 0:
        cost = (weight * weight).sum(0) / torch.diagonal(hinv).clamp_min(1e-300)  # [d_in] ‖W'_j‖² / (H⁻¹)_jj
        cost[~alive] = math.inf
        cols = torch.argsort(cost, stable=True)[: min(per_step, left)]
        step_cost = _block_cost(weight, hinv, cols) if with_cost else 0.0
        _remove(weight, hinv, cols)
        alive[cols] = False
        left -= int(cols.numel())
        yield cols, step_cost


def _problem(weight: Tensor, stats: ChannelStats, lam: float) -> tuple[Tensor, Tensor]:
    """Float64 copies of ``weight`` and ``H⁻¹`` on the statistics' device, for the greedy updates."""
    return (weight.detach().to(device=stats.G.device, dtype=torch.float64).clone(),
            torch.linalg.inv(error_hessian(stats, lam)))


def select_channels_by_error(weight: Tensor, stats: ChannelStats, n_remove: int, lam: float) -> list[int]:
    """Kept channel indices (ascending) of a module with weight [d_out, d_in] after removing ``n_remove``
    input columns greedily by compensated error (``ceil(n_remove / 256)`` per step)."""
    w, hinv = _problem(weight, stats, lam)
    alive = torch.ones(w.shape[1], dtype=torch.bool, device=w.device)
    for cols, _ in _channel_steps(w, hinv, n_remove):
        alive[cols] = False
    return alive.nonzero().flatten().cpu().tolist()


def channel_error_curve(weight: Tensor, stats: ChannelStats, n_max: int, lam: float) -> Tensor:
    """ΔE of each of the first ``n_max`` channels in greedy removal order [n_max] (float64, CPU): a step
    of several columns shares its cost equally. Their running sums approximate ``E`` after removing
    1, 2, … channels and refitting the rest."""
    w, hinv = _problem(weight, stats, lam)
    costs = [torch.full((cols.numel(),), c / cols.numel(), dtype=torch.float64)
             for cols, c in _channel_steps(w, hinv, n_max, with_cost=True)]
    return torch.cat(costs) if costs else torch.zeros(0, dtype=torch.float64)


def _head_blocks(layout: HeadLayout, head_dim: int, device) -> tuple[list[Tensor], list[int]]:
    """o_proj's column blocks and the group each belongs to: a kv group with its ``g`` query heads
    (whole groups), else one query head (its kv group)."""
    g, n_kv = layout.group_size, layout.num_kv_heads
    cols = torch.arange(layout.num_heads * head_dim, device=device).reshape(n_kv, g * head_dim)
    if layout.whole_group:
        return list(cols), [0] * n_kv
    return [c for row in cols for c in row.reshape(g, head_dim)], [h // g for h in range(layout.num_heads)]


def select_heads_by_error(weight: Tensor, stats: ChannelStats, layout: HeadLayout, head_dim: int,
                          n_remove: int, lam: float) -> tuple[list[int], list[int]]:
    """Kept query heads and kv heads (ascending) of o_proj [hidden, H · head_dim] after removing
    ``n_remove`` heads greedily by compensated error, in the layout's units."""
    if n_remove % layout.unit_size:
        raise ValueError(f"{n_remove} heads cannot be removed in units of {layout.unit_size}")
    g, n_kv = layout.group_size, layout.num_kv_heads
    w, hinv = _problem(weight, stats, lam)
    blocks, groups = _head_blocks(layout, head_dim, w.device)
    quota = {0: n_remove // g} if layout.whole_group else {k: n_remove // n_kv for k in range(n_kv)}
    gone, _ = greedy_removal(w, hinv, blocks, groups, quota)
    keep = torch.ones(n_kv, g, dtype=torch.bool)
    for b in gone:
        keep[b if layout.whole_group else (b // g, b % g)] = False
    return kept_from_mask(keep)


def head_unit_error_curve(weight: Tensor, stats: ChannelStats, layout: HeadLayout, head_dim: int,
                          lam: float) -> Tensor:
    """ΔE of each head unit but the last, in greedy removal order [num_units - 1] (float64, CPU).

    A unit is a kv group (whole groups) or one query head from every kv group: each round removes
    one unit's blocks greedily, so after ``k`` rounds every group has given the same number."""
    w, hinv = _problem(weight, stats, lam)
    blocks, groups = _head_blocks(layout, head_dim, w.device)
    per_round = {0: 1} if layout.whole_group else {k: 1 for k in range(layout.num_kv_heads)}
    gone: list[int] = []
    costs = []
    for _ in range(layout.num_units - 1):
        removed, cost = greedy_removal(w, hinv, blocks, groups, per_round, tuple(gone))
        gone += removed
        costs.append(sum(cost))
    return torch.tensor(costs, dtype=torch.float64)
