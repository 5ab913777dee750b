"""Error compensation of a pruned module, from the input statistics only (rcpu-method.md).

Notation: ``W`` [d_out, d_in] the dense weight, ``K`` the kept input columns, ``D`` the dropped
ones, ``G = Σ x xᵀ`` [d_in, d_in]. Target ``Y = W X``, pruned output ``Z = W_K X_K``. All the
algebra runs in float64; :func:`compensate` casts the result back to the weight's dtype once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .stats import ChannelStats

if TYPE_CHECKING:
    from .config import PruningConfig


def cross_gram(weight: Tensor, G: Tensor, keep: Tensor) -> Tensor:
    """``M = Y Zᵀ = W G[:, K] W_Kᵀ`` -> [d_out, d_out]."""
    return weight @ G[:, keep] @ weight[:, keep].T


def procrustes_rotation(M: Tensor) -> Tensor:
    """Orthogonal Procrustes: ``argmin_{QᵀQ=I} ||Y − Q Z||_F`` with ``M = Y Zᵀ = U Σ Vᵀ`` is ``Q = U Vᵀ``.

    The SVD runs in float64 whatever the input dtype; returns Q [d, d] in float64.
    """
    U, _, Vh = torch.linalg.svd(M.double())
    return U @ Vh


def rotation_compensation(weight: Tensor, G: Tensor, keep: Tensor) -> Tensor:
    """RCPU rotation: ``W_K ← Q W_K`` with ``Q = procrustes_rotation(W G[:, K] W_Kᵀ)`` -> [d_out, |K|]."""
    return procrustes_rotation(cross_gram(weight, G, keep)) @ weight[:, keep]


def rotation_scale_compensation(weight: Tensor, G: Tensor, keep: Tensor) -> Tensor:
    """Rot.+Scale: ``W_K ← s Q W_K`` with ``s = trace(Σ) / ||Z||_F²``, ``||Z||_F² = trace(W_K G[K,K] W_Kᵀ)``."""
    w_k = weight[:, keep]  # [d_out, |K|]
    U, sigma, Vh = torch.linalg.svd(cross_gram(weight, G, keep).double())
    z_norm2 = torch.trace(w_k @ G[keep][:, keep] @ w_k.T)
    scale = sigma.sum() / z_norm2 if z_norm2 > 0 else sigma.new_ones(())
    return scale * (U @ Vh @ w_k)


def least_squares_compensation(weight: Tensor, G: Tensor, keep: Tensor, lam: float) -> Tensor:
    """Ridge least squares: ``W_K ← (W G[:, K] + λ W_K)(G[K, K] + λ I)⁻¹`` -> [d_out, |K|].

    ``G`` here is the *mean* Gram ``Σ x xᵀ / n`` (see :func:`compensate`), so λ does not depend
    on the number of calibration tokens.
    """
    w_k = weight[:, keep]
    lhs = weight @ G[:, keep] + lam * w_k  # [d_out, |K|]
    gram = G[keep][:, keep] + lam * torch.eye(int(keep.numel()), dtype=G.dtype, device=G.device)
    # X A = B  <=>  Aᵀ Xᵀ = Bᵀ ; A symmetric
    return torch.linalg.solve(gram, lhs.T).T


def bias_compensation(weight: Tensor, mean: Tensor, drop: Tensor) -> Tensor:
    """FLAP bias: ``b = W_D · mean(x_D)`` -> [d_out] (the dropped columns' average contribution)."""
    return weight[:, drop] @ mean[drop]


@dataclass
class Compensated:
    """New weight for the kept columns [d_out, |K|] and the bias to add (or None)."""

    weight: Tensor
    bias_delta: Tensor | None = None


# -- the registry: one entry per ``PruningConfig.compensation`` value ------------------------------
# Each entry maps (W [d_out, d_in] float64, stats, K, D, config) -> Compensated, in float64.
CompensationFn = Callable[[Tensor, ChannelStats, Tensor, Tensor, "PruningConfig"], Compensated]


@dataclass(frozen=True)
class Compensator:
    fn: CompensationFn
    needs_gram: bool  # needs the full Gram matrix G (not only its diagonal)
    adds_bias: bool = False  # may give the compensated module a bias


def _none(w: Tensor, stats: ChannelStats, keep: Tensor, drop: Tensor, config) -> Compensated:
    return Compensated(w[:, keep])


def _rotation(w: Tensor, stats: ChannelStats, keep: Tensor, drop: Tensor, config) -> Compensated:
    return Compensated(rotation_compensation(w, stats.G.double(), keep))


def _rotation_scale(w: Tensor, stats: ChannelStats, keep: Tensor, drop: Tensor, config) -> Compensated:
    return Compensated(rotation_scale_compensation(w, stats.G.double(), keep))


def _least_squares(w: Tensor, stats: ChannelStats, keep: Tensor, drop: Tensor, config) -> Compensated:
    mean_gram = stats.G.double() / stats.n.double()  # λ independent of the token count
    return Compensated(least_squares_compensation(w, mean_gram, keep, config.ls_lambda))


def _bias(w: Tensor, stats: ChannelStats, keep: Tensor, drop: Tensor, config) -> Compensated:
    return Compensated(w[:, keep], bias_compensation(w, stats.mean().double(), drop))


COMPENSATIONS: dict[str, Compensator] = {
    "rotation": Compensator(_rotation, needs_gram=True),
    "rotation_scale": Compensator(_rotation_scale, needs_gram=True),
    "least_squares": Compensator(_least_squares, needs_gram=True),
    "bias": Compensator(_bias, needs_gram=False, adds_bias=True),
    "none": Compensator(_none, needs_gram=False),
}


def compensate(kind: str, weight: Tensor, stats: ChannelStats, keep: list[int], config: "PruningConfig") -> Compensated:
    """Apply compensation ``kind`` (a key of :data:`COMPENSATIONS`) to a module with dense weight
    ``weight`` [d_out, d_in] keeping input columns ``keep``.

    Nothing is compensated when nothing is dropped. The algebra runs in float64; the result is
    cast back to ``weight``'s dtype and device once.
    """
    if kind not in COMPENSATIONS:
        raise ValueError(f"compensation={kind!r} is not supported; allowed values: {list(COMPENSATIONS)}")
    entry = COMPENSATIONS[kind]
    if stats.diag_only and entry.needs_gram:
        raise ValueError(f"compensation={kind!r} needs the full Gram matrix, got diagonal statistics")
    dev, dtype = weight.device, weight.dtype
    w = weight.detach().to(device=stats.G.device, dtype=torch.float64)  # [d_out, d_in]
    k = torch.as_tensor(keep, dtype=torch.long, device=w.device)
    drop_mask = torch.ones(w.shape[1], dtype=torch.bool, device=w.device)
    drop_mask[k] = False
    if not drop_mask.any():
        entry = COMPENSATIONS["none"]
    out = entry.fn(w, stats, k, drop_mask.nonzero().flatten(), config)
    bias = None if out.bias_delta is None else out.bias_delta.to(dev, dtype)
    return Compensated(out.weight.to(device=dev, dtype=dtype), bias)
