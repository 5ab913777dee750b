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
    w -= w[:, cols] @ x
    hinv -= hinv[:, cols] @ x
    w[:, cols] = 0
    hinv[cols, :] = 0
    hinv[:, cols] = 0


def greedy_removal(weight: Tensor, hinv: Tensor, blocks: list[Tensor], groups: list[int],
                   quota: dict[int, int]) -> list[int]:
    """Blocks removed, cheapest compensated error first, ``quota[g]`` from each group ``g``.

    ``weight`` [d_out, d_in] and ``hinv`` [d_in, d_in] (float64) are updated in place."""
    quota, removed = dict(quota), []
    while any(quota.values()):
        allowed = [b for b in range(len(blocks)) if b not in removed and quota[groups[b]] > 0]
        best = min(allowed, key=lambda b: _block_cost(weight, hinv, blocks[b]))
        _remove(weight, hinv, blocks[best])
        removed.append(best)
        quota[groups[best]] -= 1
    return removed


def select_channels_by_error(weight: Tensor, stats: ChannelStats, n_remove: int, lam: float) -> list[int]:
    """Kept channel indices (ascending) of a module with weight [d_out, d_in] after removing ``n_remove``
    input columns greedily by compensated error (``ceil(n_remove / 256)`` per step)."""
    d_in = weight.shape[1]
    w = weight.detach().to(device=stats.G.device, dtype=torch.float64).clone()
    hinv = torch.linalg.inv(error_hessian(stats, lam))
    alive = torch.ones(d_in, dtype=torch.bool, device=w.device)
    per_step = math.ceil(n_remove / MAX_CHANNEL_STEPS) if n_remove else 1
    left = n_remove
    while left > 0:
        cost = (w * w).sum(0) / torch.diagonal(hinv).clamp_min(1e-300)  # [d_in] ‖W'_j‖² / (H⁻¹)_jj
        cost[~alive] = math.inf
        cols = torch.argsort(cost, stable=True)[: min(per_step, left)]
        _remove(w, hinv, cols)
        alive[cols] = False
        left -= int(cols.numel())
    return alive.nonzero().flatten().cpu().tolist()


def select_heads_by_error(weight: Tensor, stats: ChannelStats, layout: HeadLayout, head_dim: int,
                          n_remove: int, lam: float) -> tuple[list[int], list[int]]:
    """Kept query heads and kv heads (ascending) of o_proj [hidden, H · head_dim] after removing
    ``n_remove`` heads greedily by compensated error, in the layout's units."""
    if n_remove % layout.unit_size:
        raise ValueError(f"{n_remove} heads cannot be removed in units of {layout.unit_size}")
    g, n_kv = layout.group_size, layout.num_kv_heads
    w = weight.detach().to(device=stats.G.device, dtype=torch.float64).clone()
    hinv = torch.linalg.inv(error_hessian(stats, lam))
    cols = torch.arange(layout.num_heads * head_dim, device=w.device).reshape(n_kv, g * head_dim)
    if layout.whole_group:  # a block is a kv group with its g query heads
        blocks, groups, quota = list(cols), [0] * n_kv, {0: n_remove // g}
    else:  # a block is one query head; every kv group gives n_remove / n_kv of them
        blocks = [c for row in cols for c in row.reshape(g, head_dim)]
        groups, quota = [h // g for h in range(layout.num_heads)], {k: n_remove // n_kv for k in range(n_kv)}
    gone = greedy_removal(w, hinv, blocks, groups, quota)
    keep = torch.ones(n_kv, g, dtype=torch.bool)
    for b in gone:
        keep[b if layout.whole_group else (b // g, b % g)] = False
    return kept_from_mask(keep)
