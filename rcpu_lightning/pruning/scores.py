"""Importance scores of a module's input columns and of attention heads (rcpu-method.md).

Every column score takes the module weight ``W`` [d_out, d_in] and the input statistics of that
module, and returns a score per input column [d_in] in float64 (higher = more important).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .stats import ChannelStats


def _w64(weight: Tensor) -> Tensor:
    return weight.detach().to(torch.float64)


def variance_aware_score(weight: Tensor, stats: ChannelStats) -> Tensor:
    """RCPU's γ: ``γ_j = ||W[:, j]||₂ · mean_t |x_{j,t}| · Var_t(x_{j,t})`` -> [d_in]."""
    w = _w64(weight).to(stats.s1.device)
    return w.norm(dim=0) * stats.mean_abs().double() * stats.var().double()


def wanda_sp_score(weight: Tensor, stats: ChannelStats) -> Tensor:
    """WANDA-sp: ``score_j = Σ_i |W_ij| · ||X[j, :]||₂`` -> [d_in] (constants of the code dropped)."""
    w = _w64(weight).to(stats.s1.device)
    return w.abs().sum(0) * stats.l2().double()


def flap_wifv_score(weight: Tensor, stats: ChannelStats) -> Tensor:
    """FLAP WIFV: ``score_j = Var_t(x_j) · Σ_i W_ij²`` -> [d_in]."""
    w = _w64(weight).to(stats.s1.device)
    return stats.var().double() * (w * w).sum(0)


def weight_magnitude_score(weight: Tensor, stats: ChannelStats | None = None) -> Tensor:
    """Magnitude baseline: ``score_j = ||W[:, j]||₂`` -> [d_in] (activations unused)."""
    return _w64(weight).norm(dim=0)


SCORES = {
    "rcpu": variance_aware_score,
    "wanda_sp": wanda_sp_score,
    "flap": flap_wifv_score,
    "magnitude": weight_magnitude_score,
}


def column_scores(method: str, weight: Tensor, stats: ChannelStats, module: str) -> Tensor:
    """Column scores of ``module`` (``"o_proj"`` or ``"down_proj"``) for ``method`` -> [d_in].

    FLAP squares the o_proj score before it is summed per head; that is done here.
    """
    if method not in SCORES:
        raise ValueError(f"method={method!r} is not supported; allowed values: {list(SCORES)}")
    score = SCORES[method](weight, stats)
    if method == "flap" and module == "o_proj":
        score = score**2
    if not torch.isfinite(score).all():
        raise ValueError(f"non-finite {method} scores for {module}; check the calibration statistics")
    return score


def head_scores(col_scores: Tensor, head_dim: int) -> Tensor:
    """Head score = sum of the scores of the head's ``head_dim`` columns: [H*hd] -> [H]."""
    if col_scores.numel() % head_dim:
        raise ValueError(f"{col_scores.numel()} column scores are not a multiple of head_dim={head_dim}")
    return col_scores.reshape(-1, head_dim).sum(1)


def standardize(scores: Tensor) -> Tensor:
    """FLAP's per-layer standardisation ``(s − mean(s)) / std(s)`` (std 0 -> centred only)."""
    centred = scores - scores.mean()
    std = scores.std() if scores.numel() > 1 else scores.new_zeros(())
    return centred / std if std > 0 else centred
