"""Error compensation of a pruned module, from the input statistics only (rcpu-method.md).

Notation: ``W`` [d_out, d_in] the dense weight, ``K`` the kept input columns, ``D`` the dropped
ones, ``G = Σ x xᵀ`` [d_in, d_in]. Target ``Y = W X``, pruned output ``Z = W_K X_K``.
:func:`compensate` casts the result back to the weight's dtype once.

Two ways to the same rotation (``PruningConfig.arithmetic``):

* ``float64``: the equations as written, every product and the SVD in float64
  (:func:`rotation_compensation`, :func:`rotation_scale_compensation`).
* ``fast`` (:func:`fast_rotation`): the large products (``W G[:, K] W_Kᵀ``, ``Q W_K``) in float32;
  the polar factor of ``M = A Bᵀ`` (``A = W G[:, K]``, ``B = W_K``) in float64 from the
  eigendecomposition of ``MᵀM`` (:func:`polar_factor`: several times cheaper than an SVD on a CPU,
  with an SVD fallback when ``M`` is ill-conditioned). Where ``|K| < d_out`` (o_proj once heads go)
  ``M`` has rank ``|K|``: with ``B = Q_B R_B`` (thin QR) the rotated weight ``Q W_K = P R_B`` where
  ``P`` [d_out, |K|] is the polar factor of ``A R_Bᵀ`` (:func:`thin_rotation`); the completion of ``Q``
  outside the row space of ``W_K`` never touches ``W_K``, so nothing is lost.
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


#: Elements of one block of columns in the blockwise products below (16 M: 128 MB in float64). Large on
#: purpose: each block is one GEMM whose inner size is the block's width, and a CPU GEMM of inner size
#: 381 (4 M / 11008, LLaMA-7B's down_proj) ran at half the speed of one of 4096.
_BLOCK = 1 << 24


def _column_blocks(keep: Tensor, rows: int) -> list[Tensor]:
    """``keep`` cut into blocks of columns with about ``_BLOCK`` elements each (``rows`` per column)."""
    return list(keep.split(max(1, _BLOCK // rows)))


def _columns_by_block(keep: Tensor, rows: int, d_out: int, block_fn) -> Tensor:
    """[d_out, |K|] float64, filled one block of ``keep`` at a time with ``block_fn(cols)`` [d_out, block]."""
    out = torch.empty(d_out, keep.numel(), dtype=torch.float64, device=keep.device)
    j = 0
    for cols in _column_blocks(keep, rows):
        out[:, j : j + cols.numel()] = block_fn(cols)
        j += cols.numel()
    return out


def target_columns(weight: Tensor, G: Tensor, dtype: torch.dtype, cross: Tensor | None = None) -> Callable[[Tensor], Tensor]:
    """``cols -> A[:, cols]`` [d_out, block] in ``dtype``, where ``A = Σ t xᵀ`` (the targets' cross term):
    ``cross[:, cols]`` when the statistics kept it, else ``W G[:, cols]`` (own outputs ``t = W x``)."""
    if cross is not None:
        return lambda cols: cross[:, cols].to(dtype)
    w = weight.to(dtype)
    return lambda cols: w @ G[:, cols].to(dtype)


def weight_gram_columns(weight: Tensor, G: Tensor, keep: Tensor, dtype: torch.dtype) -> Tensor:
    """``A = W G[:, K]`` -> [d_out, |K|] in float64, the products in ``dtype``, a block of columns at a
    time (neither ``W G`` nor ``G`` in ``dtype`` is ever whole: for a 7B down_proj that is 0.5 GB each)."""
    return _columns_by_block(keep, G.shape[0], weight.shape[0], target_columns(weight, G, dtype))


def blockwise_cross_gram(weight: Tensor, G: Tensor, keep: Tensor, dtype: torch.dtype,
                         cross: Tensor | None = None) -> Tensor:
    """``M = A[:, K] W_Kᵀ`` -> [d_out, d_out] in float64, ``A = W G`` (:func:`cross_gram`) or the kept
    cross term ``cross``: the products in ``dtype`` over one block of ``K`` at a time, the blocks summed in
    float64 (``A[:, K]`` is never whole)."""
    w, a_cols = weight.to(dtype), target_columns(weight, G, dtype, cross)
    M = torch.zeros(weight.shape[0], weight.shape[0], dtype=torch.float64, device=weight.device)
    rows = weight.shape[1] if cross is None else weight.shape[0]  # a block of G [d_in, b] or of C [d_out, b]
    for cols in _column_blocks(keep, rows):
        M += a_cols(cols) @ w[:, cols].T  # [d_out, block] @ [block, d_out]
    return M


def rotate_columns(Q: Tensor, weight: Tensor, keep: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """``Q W_K`` -> [d_out, |K|] in float64, the product in ``dtype``, a block of columns at a time
    (no float64 copy of ``W_K``)."""
    q = Q.to(dtype)
    return _columns_by_block(keep, weight.shape[0], weight.shape[0], lambda cols: q @ weight[:, cols].to(dtype))


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
    z = z_norm2(weight, G, keep)
    scale = sigma.sum() / z if z > 0 else sigma.new_ones(())
    return scale * (U @ Vh @ w_k)


#: Below this ``σ_min / σ_max`` :func:`polar_factor` takes an SVD instead of ``eigh(MᵀM)``. The eigh route's
#: error grows as ``ε κ²`` (``κ = σ_max / σ_min``); on the rotated weights, against the SVD's, it measured
#: 2.4e-7 relative at ``κ = 1e5`` (d = 3328, a tail of small singular values), 4e-6 to 2e-5 at ``κ = 1e6``
#: and 3e-3 at ``κ = 1e7`` (d = 1024): 1e-5 keeps it 40x inside the fast arithmetic's 1e-5 on the
#: weights. (It was 1e-4: a LLaMA-7B-shaped o_proj core at ``κ = 1.8e4`` took the eigh and then a 10 s
#: SVD as well.)
POLAR_RCOND = 1e-5


def _eigh_polar(M: Tensor, rcond: float) -> tuple[Tensor | None, Tensor]:
    """``(Q, Σ descending)`` from ``MᵀM = V Σ² Vᵀ`` [k, k]: ``Q = M V Σ⁻¹ Vᵀ``; ``Q`` is None where
    ``σ_min < rcond · σ_max`` (the route would lose ``ε κ²``: :data:`POLAR_RCOND`)."""
    evals, V = torch.linalg.eigh(M.T @ M)  # ascending
    sigma = evals.clamp_min(0).sqrt()
    if sigma[0] < rcond * sigma[-1]:
        return None, sigma.flip(0)
    return (M @ (V / sigma)) @ V.T, sigma.flip(0)


def polar_factor(M: Tensor, rcond: float = POLAR_RCOND, eigh_first: bool = True) -> tuple[Tensor, Tensor]:
    """Polar factor ``Q = U Vᵀ`` of ``M = U Σ Vᵀ`` [d, k] (``d >= k``; orthonormal columns, orthogonal when
    square) and the singular values ``Σ`` [k], in float64.

    From ``MᵀM = V Σ² Vᵀ``: ``Q = M V Σ⁻¹ Vᵀ``. Where ``σ_min < rcond · σ_max`` the squared condition
    number would cost accuracy (:data:`POLAR_RCOND`), so a (thin) SVD is used instead; ``eigh_first=False``
    goes to it straight (an ``M`` already known to be ill-conditioned).
    """
    M = M.double()
    if eigh_first:
        Q, sigma = _eigh_polar(M, rcond)
        if Q is not None:
            return Q, sigma
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    return U @ Vh, S


def thin_rotation(A: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
    """``Q B`` for the Procrustes rotation ``Q`` of ``M = A Bᵀ`` when ``A``, ``B`` are [d, k] with ``k < d``.

    With ``B = Q_B R_B`` (thin QR), ``M = Ã Q_Bᵀ`` where ``Ã = A R_Bᵀ`` [d, k]; with ``P`` [d, k] the polar
    factor of ``Ã``, ``P Q_Bᵀ`` is a polar factor of ``M`` (any completion outside the row space of ``B``
    does), so ``Q B = P R_B``: one QR, for ``R_B`` only, and no [d, d] product. Returns
    ``(Q B [d, k], Σ [k])`` in float64 (``Σ``: ``M``'s nonzero singular values, ``Ã``'s).
    """
    RB = torch.linalg.qr(B.double(), mode="r")[1]  # [k, k]
    P, sigma = polar_factor(A.double() @ RB.T)  # [d, k]
    return P @ RB, sigma


def fast_rotation(weight: Tensor, G: Tensor, keep: Tensor,
                  cross: Tensor | None = None, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """The RCPU rotation of the ``fast`` arithmetic -> ``(Q W_K [d_out, |K|], Σ)`` in float64.

    ``M = A Bᵀ`` (``A = W G[:, K]``, ``B = W_K``) comes from float32 products summed in float64 over
    blocks of ``K``, and ``Q W_K`` is a float32 product, when ``M`` has full rank and is well conditioned
    (``σ_min >= POLAR_RCOND · σ_max``, where the eigh route holds); otherwise the products are float64 and
    the polar factor an SVD (the eigh already said no: it is not tried twice), and always float64 in the
    rank-deficient case (o_proj once heads go, where ``M`` can have a condition number of 1e8 and a float32
    ``A`` costs 1e-3 on the weights; cheap there, since o_proj is square). ``cross`` (``C = Σ t xᵀ``:
    explicit targets, or the module's own outputs, :func:`uses_cross_term`) gives ``A = C[:, K]``
    directly. ``dtype=torch.float64``: every product in float64 (the ``float64`` arithmetic with a cross
    term). The polar factor is float64.
    """
    thin = keep.numel() < weight.shape[0]  # M has rank |K| < d_out
    if thin:
        A = cross[:, keep].double() if cross is not None else weight_gram_columns(weight, G, keep, torch.float64)
        return thin_rotation(A, weight[:, keep].double())
    M = blockwise_cross_gram(weight, G, keep, dtype, cross)  # M = Y Zᵀ [d_out, d_out]
    if dtype != torch.float64:
        Q, sigma = _eigh_polar(M, POLAR_RCOND)
        if Q is not None:
            return rotate_columns(Q, weight, keep, torch.float32), sigma  # Q orthogonal: float32 costs ~3e-7
        M = blockwise_cross_gram(weight, G, keep, torch.float64, cross)  # ill-conditioned: float64, then the SVD
    Q, sigma = polar_factor(M, eigh_first=dtype == torch.float64)
    return rotate_columns(Q, weight, keep), sigma


def z_norm2(weight: Tensor, G: Tensor, keep: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``||Z||_F² = trace(W_K G[K,K] W_Kᵀ)`` (float64 scalar), the products in ``dtype`` (default:
    ``G``'s), summed over blocks of ``K``."""
    dtype = dtype or G.dtype
    w = weight.to(dtype)
    w_k = w[:, keep]  # [d_out, |K|]
    zero = torch.zeros((), dtype=torch.float64, device=weight.device)
    # Σ over blocks of K: sum of (W_K G[K, block]) ⊙ W_block
    return sum((torch.sum((w_k @ G[keep[:, None], cols].to(dtype)) * w[:, cols], dtype=torch.float64)
                for cols in _column_blocks(keep, keep.numel())), zero)


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


def affine_least_squares(weight: Tensor, cov: Tensor, mean: Tensor, keep: Tensor, lam: float,
                         cross: Tensor | None = None, target_mean: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Ridge least squares with a bias: ``min Σ_t ||W x_t − (W'_K x_{K,t} + b)||² + λ' n ||W'_K − W_K||²``.

    From the covariance ``Σ = G/n − μμᵀ`` and mean ``μ`` of the inputs::

        W'_K = (W Σ[:, K] + λ' W_K)(Σ[K, K] + λ' I)⁻¹,   b = W μ − W'_K μ_K,

    and with explicit targets ``t`` instead of ``W x``: ``cross`` = their covariance with the inputs
    (``C/n − t̄ μᵀ``, [d_out, d_in]) replaces ``W Σ`` and ``target_mean`` (``t̄``) replaces ``W μ``;

    with ``λ' = λ · mean(diag Σ[K, K])`` (the ridge is relative to the kept inputs' variance, so one
    ``λ`` suits layers whose activations differ by orders of magnitude). The bias keeps the mean
    output (FLAP's bias compensation is the case ``W'_K = W_K``). Returns ``(W'_K [d_out, |K|], b [d_out])``.
    """
    w_k = weight[:, keep]
    sub = cov[keep][:, keep]  # [|K|, |K|]
    ridge = lam * float(torch.diagonal(sub).mean())
    lhs = (weight @ cov[:, keep] if cross is None else cross[:, keep]) + ridge * w_k  # [d_out, |K|]
    gram = sub + ridge * torch.eye(int(keep.numel()), dtype=cov.dtype, device=cov.device)
    w_new = torch.linalg.solve(gram, lhs.T).T
    return w_new, (weight @ mean if target_mean is None else target_mean) - w_new @ mean[keep]


def bias_compensation(weight: Tensor, mean: Tensor, drop: Tensor) -> Tensor:
    """FLAP bias: ``b = W_D · mean(x_D)`` -> [d_out] (the dropped columns' average contribution)."""
    return weight[:, drop] @ mean[drop]


@dataclass
class Compensated:
    """New weight for the kept columns [d_out, |K|] and the bias to add (or None)."""

    weight: Tensor
    bias_delta: Tensor | None = None


# -- the registry: one entry per ``PruningConfig.compensation`` value ------------------------------
# Each entry maps (W [d_out, d_in], stats, K, D, config) -> Compensated. W comes in float64 for the
# float64 arithmetic and in float32 (at least) for the fast one; each entry casts what it needs.
CompensationFn = Callable[[Tensor, ChannelStats, Tensor, Tensor, "PruningConfig"], Compensated]


@dataclass(frozen=True)
class Compensator:
    fn: CompensationFn
    needs_gram: bool  # needs the full Gram matrix G (not only its diagonal)
    adds_bias: bool = False  # may give the compensated module a bias
    cross_suffices: bool = False  # the diagonal statistics plus the cross term C = Σ (W x) xᵀ replace G


def _none(w: Tensor, stats: ChannelStats, keep: Tensor, drop: Tensor, config) -> Compensated:
    return Compensated(w[:, keep])


def _rotation(w: Tensor, stats: ChannelStats, keep: Tensor, drop: Tensor, config) -> Compensated:
    if config.arithmetic == "float64" and stats.C is None:
        return Compensated(rotation_compensation(w.double(), stats.G.double(), keep))
    return Compensated(fast_rotation(w, stats.G, keep, cross=stats.C, dtype=_product_dtype(config))[0])


def _product_dtype(config) -> torch.dtype:
    """The large products' dtype of :func:`fast_rotation` under ``config.arithmetic``."""
    return torch.float64 if config.arithmetic == "float64" else torch.float32


def _rotation_scale(w: Tensor, stats: ChannelStats, keep: Tensor, drop: Tensor, config) -> Compensated:
    if config.arithmetic == "float64" and stats.C is None:
        return Compensated(rotation_scale_compensation(w.double(), stats.G.double(), keep))
    rotated, sigma = fast_rotation(w, stats.G, keep, cross=stats.C, dtype=_product_dtype(config))
    # fast: float32 products, float64 sum; float64 (explicit targets): float64 throughout
    z = z_norm2(w, stats.G, keep, _product_dtype(config))
    return Compensated((sigma.sum() / z if z > 0 else 1.0) * rotated)


def _least_squares(w: Tensor, stats: ChannelStats, keep: Tensor, drop: Tensor, config) -> Compensated:
    n = stats.n.double()
    mean_gram = stats.G.double() / n  # λ independent of the token count
    if stats.C is None:
        return Compensated(least_squares_compensation(w.double(), mean_gram, keep, config.ls_lambda))
    # explicit targets: (C[:, K]/n + λ W_K)(G[K, K]/n + λ I)⁻¹
    w_k = w[:, keep].double()
    gram = mean_gram[keep][:, keep] + config.ls_lambda * torch.eye(int(keep.numel()), dtype=n.dtype, device=n.device)
    return Compensated(torch.linalg.solve(gram, (stats.C[:, keep].double() / n + config.ls_lambda * w_k).T).T)


def _affine_least_squares(w: Tensor, stats: ChannelStats, keep: Tensor, drop: Tensor, config) -> Compensated:
    n, mean = stats.n.double(), stats.mean().double()
    cov = stats.covariance()  # [d_in, d_in]
    if stats.C is None:
        return Compensated(*affine_least_squares(w.double(), cov, mean, keep, config.ls_lambda))
    t_mean = stats.tsum.double() / n  # explicit targets: their covariance with the inputs
    cross = stats.C.double() / n - torch.outer(t_mean, mean)  # [d_out, d_in]
    return Compensated(*affine_least_squares(w.double(), cov, mean, keep, config.ls_lambda, cross, t_mean))


def _bias(w: Tensor, stats: ChannelStats, keep: Tensor, drop: Tensor, config) -> Compensated:
    return Compensated(w[:, keep], bias_compensation(w.double(), stats.mean().double(), drop))


COMPENSATIONS: dict[str, Compensator] = {
    "rotation": Compensator(_rotation, needs_gram=True, cross_suffices=True),
    "rotation_scale": Compensator(_rotation_scale, needs_gram=True),
    "least_squares": Compensator(_least_squares, needs_gram=True),
    "affine_least_squares": Compensator(_affine_least_squares, needs_gram=True, adds_bias=True),
    "bias": Compensator(_bias, needs_gram=False, adds_bias=True),
    "none": Compensator(_none, needs_gram=False),
}


def uses_cross_term(config: "PruningConfig") -> bool:
    """Whether down_proj's statistics keep ``diag(G)`` and the cross term ``C = Σ (W x) xᵀ`` [d_out, d_in] of
    its own outputs instead of the full Gram ``G`` [d_in, d_in].

    The rotation needs only ``M = C[:, K] W_Kᵀ`` (``C = W G``): for down_proj ``C`` costs ``d_out·d_in``
    per token where ``G`` costs ``d_in²/2``, ``W G[:, K]`` is never formed, and ``C`` is 2.7x smaller at
    LLaMA-7B's MLP (11008 inputs, 4096 outputs). Only in the ``fast`` arithmetic (``C`` is summed from the
    forward's own float32 outputs, which the full-rank down_proj rotation takes in float32 anyway) and where
    nothing else needs ``G`` (the error-greedy selection does). o_proj keeps ``G``: once heads go its ``M`` is
    rank-deficient with condition numbers up to 1e8 on SmolLM2, where ``A = W G[:, K]`` must be float64 (a
    float32-accurate ``C`` cost 3.6e-4 on its weights against 1.6e-5)."""
    entry = COMPENSATIONS.get(config.compensation)
    return (config.arithmetic == "fast" and entry is not None and entry.cross_suffices
            and config.selection != "compensated_error")


def compensate(kind: str, weight: Tensor, stats: ChannelStats, keep: list[int], config: "PruningConfig") -> Compensated:
    """Apply compensation ``kind`` (a key of :data:`COMPENSATIONS`) to a module with dense weight
    ``weight`` [d_out, d_in] keeping input columns ``keep``.

    Nothing is compensated when nothing is dropped. The algebra runs in float64; the result is
    cast back to ``weight``'s dtype and device once.
    """
    if kind not in COMPENSATIONS:
        raise ValueError(f"compensation={kind!r} is not supported; allowed values: {list(COMPENSATIONS)}")
    entry = COMPENSATIONS[kind]
    if stats.diag_only and entry.needs_gram and not (entry.cross_suffices and stats.C is not None):
        raise ValueError(f"compensation={kind!r} needs the full Gram matrix, got diagonal statistics")
    dev, dtype = weight.device, weight.dtype
    work = torch.float64 if config.arithmetic == "float64" else torch.promote_types(dtype, torch.float32)
    w = weight.detach().to(device=stats.G.device, dtype=work)  # [d_out, d_in]
    k = torch.as_tensor(keep, dtype=torch.long, device=w.device)
    drop_mask = torch.ones(w.shape[1], dtype=torch.bool, device=w.device)
    drop_mask[k] = False
    if not drop_mask.any():
        entry = COMPENSATIONS["none"]
    out = entry.fn(w, stats, k, drop_mask.nonzero().flatten(), config)
    bias = None if out.bias_delta is None else out.bias_delta.to(dev, dtype)
    return Compensated(out.weight.to(device=dev, dtype=dtype), bias)
