"""Importance scores of a module's input columns and of attention heads (rcpu-method.md).

Every column score takes the module weight ``W`` [d_out, d_in] and the input statistics of that
module, and returns a score per input column [d_in] in float64 (higher = more important).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .stats import ChannelStats


def _w64(weight: Tensor) -> Tensor:
    return weight.detach().to(torch.float64)


# Every score is a product of a per-column weight term and a per-column activation term, so the
# weight term can be kept (a [d_in] vector) while a layer's weights are away (out-of-core pruning).
@dataclass(frozen=True)
class Score:
    weight_term: Callable[[Tensor], Tensor]  # W [d_out, d_in] -> [d_in] float64
    activation_term: Callable[[ChannelStats], Tensor]  # stats -> [d_in] float64


SCORES: dict[str, Score] = {
    # RCPU's γ: ||W[:, j]||₂ · mean_t |x_{j,t}| · Var_t(x_{j,t})
    "rcpu": Score(lambda w: _w64(w).norm(dim=0), lambda st: st.mean_abs().double() * st.var().double()),
    # WANDA-sp: Σ_i |W_ij| · ||X[j, :]||₂ (constants of the code dropped)
    "wanda_sp": Score(lambda w: _w64(w).abs().sum(0), lambda st: st.l2().double()),
    # FLAP WIFV: Var_t(x_j) · Σ_i W_ij²
    "flap": Score(lambda w: (_w64(w) ** 2).sum(0), lambda st: st.var().double()),
    # magnitude baseline: ||W[:, j]||₂ (activations unused)
    "magnitude": Score(lambda w: _w64(w).norm(dim=0), lambda st: torch.ones_like(st.s1, dtype=torch.float64)),
}


def _score(method: str, weight: Tensor, stats: ChannelStats) -> Tensor:
    entry = SCORES[method]
    return entry.weight_term(weight).to(stats.s1.device) * entry.activation_term(stats)


def variance_aware_score(weight: Tensor, stats: ChannelStats) -> Tensor:
    """RCPU's γ: ``γ_j = ||W[:, j]||₂ · mean_t |x_{j,t}| · Var_t(x_{j,t})`` -> [d_in]."""
    return _score("rcpu", weight, stats)


def wanda_sp_score(weight: Tensor, stats: ChannelStats) -> Tensor:
    """WANDA-sp: ``score_j = Σ_i |W_ij| · ||X[j, :]||₂`` -> [d_in] (constants of the code dropped)."""
    return _score("wanda_sp", weight, stats)


def flap_wifv_score(weight: Tensor, stats: ChannelStats) -> Tensor:
    """FLAP WIFV: ``score_j = Var_t(x_j) · Σ_i W_ij²`` -> [d_in]."""
    return _score("flap", weight, stats)


def weight_magnitude_score(weight: Tensor, stats: ChannelStats | None = None) -> Tensor:
    """Magnitude baseline: ``score_j = ||W[:, j]||₂`` -> [d_in] (activations unused)."""
    return SCORES["magnitude"].weight_term(weight)


def column_scores(method: str, weight: Tensor | None, stats: ChannelStats, module: str,
                  weight_term: Tensor | None = None) -> Tensor:
    """Column scores of ``module`` (``"o_proj"`` or ``"down_proj"``) for ``method`` -> [d_in].

    Give ``weight`` [d_out, d_in], or its ``weight_term`` (see :data:`SCORES`) when the weight itself
    is no longer at hand. FLAP squares the o_proj score before it is summed per head; that is done here.
    """
    if method not in SCORES:
        raise ValueError(f"method={method!r} is not supported; allowed values: {list(SCORES)}")
    entry = SCORES[method]
    term = entry.weight_term(weight) if weight_term is None else weight_term
    score = term.to(device=stats.s1.device, dtype=torch.float64) * entry.activation_term(stats)
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
