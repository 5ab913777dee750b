"""Unit tests of the pruning math: statistics, Procrustes, compensation formulas, scores, selection."""

from __future__ import annotations

import math

import pytest
import torch

from rcpu_lightning.pruning import (
    ChannelStats,
    al_am_counts,
    bias_compensation,
    column_scores,
    cross_gram,
    feasible_count,
    head_layout,
    head_scores,
    least_squares_compensation,
    procrustes_rotation,
    reduce_stats,
    select_channels,
    select_heads,
    variance_aware_score,
)
from rcpu_lightning.pruning.selection import LayerUnits


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_procrustes_recovers_known_rotation():
    d, n = 12, 200
    q_true, _ = torch.linalg.qr(torch.randn(d, d, generator=_gen(1), dtype=torch.float64))
    z = torch.randn(d, n, generator=_gen(2), dtype=torch.float64)
    y = q_true @ z
    q = procrustes_rotation(y @ z.T)
    # float64 tolerances here and below: each is rounding_bound (tests/conftest.py) of the problem with a
    # margin of 1e2 or more. Here: M = Q Z Zᵀ sums n = 200 terms; the polar factor moves by at most
    # 2‖δM‖/(σ_{d-1} + σ_d) (Higham 1986), i.e. κ(Z Zᵀ) ≈ 3 times M's relative error: ~1e-13
    torch.testing.assert_close(q, q_true, atol=1e-10, rtol=0)
    torch.testing.assert_close(q.T @ q, torch.eye(d, dtype=torch.float64), atol=1e-12, rtol=0)  # ~d·eps = 3e-15


def test_gram_derived_cross_term_equals_activation_product():
    d_out, d_in, n = 7, 10, 300
    w = torch.randn(d_out, d_in, generator=_gen(3), dtype=torch.float64)
    x = torch.randn(d_in, n, generator=_gen(4), dtype=torch.float64)  # [d_in, N]
    keep = torch.tensor([0, 2, 3, 7, 9])
    stats = ChannelStats.zeros(d_in)
    stats.update(x.T[:120])
    stats.update(x.T[120:])  # streamed in two batches
    y, z = w @ x, w[:, keep] @ x[keep]
    # both sum n·d_in = 3000 products of N(0, 1) entries in other orders; the entries' absolute sums are
    # ~3e3, so rounding_bound is ~2e-9 worst case (random-walk ~1e-12)
    torch.testing.assert_close(cross_gram(w, stats.G, keep), y @ z.T, atol=1e-9, rtol=1e-12)


def test_stats_of_two_halves_sum_to_whole_batch():
    x = torch.randn(4, 9, 6, generator=_gen(5))  # [B, T, d]
    whole, a, b = ChannelStats.zeros(6), ChannelStats.zeros(6), ChannelStats.zeros(6)
    whole.update(x)
    a.update(x[:2])
    b.update(x[2:])
    merged = a + b
    for got, want in zip(merged.tensors(), whole.tensors()):  # 36 float32 inputs summed in float64 in two
        # orders: ≤ 36 · eps · Σ|x x| (~40) ≈ 3e-13 < 1e-12
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    assert merged.n.item() == 36
    x64 = x.reshape(-1, 6).double()
    torch.testing.assert_close(merged.var(), x64.var(0, unbiased=False), atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(merged.mean_abs(), x64.abs().mean(0), atol=1e-12, rtol=1e-9)


def test_cross_term_partial_sums_fold_into_float64_and_settle_before_any_read(monkeypatch):
    """``update_with_outputs`` in float32 products: ``C``'s float32 partial sum goes into the float64 ``C``
    every ``_CROSS_FOLD_TOKENS`` tokens; the tail settles when the collection ends (or at ``tensors()``)."""
    from torch import nn

    from rcpu_lightning.pruning import collect_input_stats
    from rcpu_lightning.pruning import stats as stats_module

    monkeypatch.setattr(stats_module, "_CROSS_FOLD_TOKENS", 10)  # 7 batches of 4 tokens: folds at 12, 24; 4 pending
    linear = nn.Linear(6, 5, bias=False)
    x = torch.randn(7, 4, 6, generator=_gen(11))
    with collect_input_stats({"m": linear}, product_dtype=torch.float32, cross=["m"]) as st:
        for batch in x[:-1]:
            linear(batch)
        s = st["m"]
        assert s._partial_tokens == 0 and s._partial is not None  # 24 tokens: two folds, nothing pending
        folded = s.C.clone()
        linear(x[-1])
        assert s._partial_tokens == 4 and torch.equal(s.C, folded)  # the last batch waits in float32
    assert s._partial is None and s._partial_tokens == 0  # settled and freed on exit
    x64, w64 = x.reshape(-1, 6).double(), linear.weight.detach().double()
    y64 = x64 @ w64.T  # [28, 5]
    # float32 y (6 products) and float32 sums of 28 tokens: worst case (6 + 28) · eps32 ≈ 2e-6 of Σ |y| |x|
    bound = 4e-6 * (y64.abs().T @ x64.abs())
    assert bool(((s.C - y64.T @ x64).abs() <= bound).all())
    assert bool(((s.tsum - y64.sum(0)).abs() <= 4e-6 * y64.abs().sum(0)).all())
    direct = stats_module.ChannelStats.zeros(6, diag_only=True, cross_rows=5)
    direct.update_with_outputs(x[0], linear(x[0]), torch.float32)
    assert direct._partial_tokens == 4
    assert direct.tensors()[4] is direct.C and direct._partial is None  # tensors() settles first
    assert bool(((direct.C - y64[:4].T @ x64[:4]).abs() <= 4e-6 * (y64[:4].abs().T @ x64[:4].abs())).all())


def test_reduce_stats_packs_everything_into_one_call():
    a, b = ChannelStats.zeros(3), ChannelStats.zeros(5, diag_only=True)
    a.update(torch.randn(10, 3, generator=_gen(6)))
    b.update(torch.randn(10, 5, generator=_gen(7)))
    calls = []

    def fake_allreduce(t):
        calls.append(t.numel())
        return t * 2  # two identical ranks

    ra, rb = reduce_stats([a, b], fake_allreduce)
    assert calls == [(1 + 3 + 3 + 9) + (1 + 5 + 5 + 5)]  # n, s1, sabs, G of both
    torch.testing.assert_close(ra.G, 2 * a.G)
    torch.testing.assert_close(rb.s1, 2 * b.s1)
    assert rb.diag_only and ra.n.item() == 20
    torch.testing.assert_close(ra.var(), a.var())  # scale-free derived quantities


def test_least_squares_with_tiny_ridge_solves_normal_equations():
    w = torch.randn(5, 8, generator=_gen(8), dtype=torch.float64)
    x = torch.randn(8, 100, generator=_gen(9), dtype=torch.float64)
    keep = torch.tensor([1, 2, 4, 6])
    new = least_squares_compensation(w, x @ x.T, keep, lam=0.0)
    ref = torch.linalg.lstsq(x[keep].T, (w @ x).T).solution.T  # argmin ||W X - B X_K||
    # normal equations vs QR: the former loses κ(X_K)² · eps (X_K: 4 × 100 Gaussian, κ ≈ 1.5): ~1e-15
    torch.testing.assert_close(new, ref, atol=1e-9, rtol=1e-9)


def test_bias_compensation_is_mean_contribution_of_dropped_columns():
    w = torch.randn(4, 6, generator=_gen(10), dtype=torch.float64)
    mean = torch.randn(6, generator=_gen(11), dtype=torch.float64)
    drop = torch.tensor([0, 5])
    torch.testing.assert_close(bias_compensation(w, mean, drop), w[:, 0] * mean[0] + w[:, 5] * mean[5])


def test_variance_aware_score_formula_and_flap_squares_o_proj():
    x = torch.randn(50, 4, generator=_gen(12), dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.1, 3.0])
    w = torch.randn(3, 4, generator=_gen(13), dtype=torch.float64)
    s = ChannelStats.zeros(4)
    s.update(x)
    want = w.norm(dim=0) * x.abs().mean(0) * x.var(0, unbiased=False)
    torch.testing.assert_close(variance_aware_score(w, s), want)
    flap_down = column_scores("flap", w, s, "down_proj")
    torch.testing.assert_close(column_scores("flap", w, s, "o_proj"), flap_down**2)
    torch.testing.assert_close(head_scores(torch.arange(6.0), 3), torch.tensor([3.0, 12.0]))


def test_feasible_counts_floor_and_nearest():
    assert feasible_count(0.2, 9, 3, "floor") == 0  # SmolLM2: 9 heads in 3 groups
    assert feasible_count(0.2, 9, 3, "nearest") == 3
    assert feasible_count(0.3, 32, 1, "floor") == 9  # floor(9.6), paper parity
    assert feasible_count(0.3, 32, 1, "nearest") == 10
    assert feasible_count(0.29, 100, 1, "floor") == 29  # no float truncation to 28
    assert feasible_count(0.0, 11008, 1, "floor") == 0


def test_select_heads_per_group_and_whole_group():
    scores = torch.tensor([5.0, 1.0, 3.0, 0.5, 4.0, 6.0])  # 2 kv groups of 3 heads
    heads, kv = select_heads(scores, head_layout(6, 2, "per_group"), 2)
    assert heads == [0, 2, 4, 5] and kv == [0, 1]  # one weakest head removed from each group
    heads, kv = select_heads(scores, head_layout(6, 2, "whole_group"), 3)
    assert heads == [3, 4, 5] and kv == [1]  # group 0 sums to 9 < 10.5
    with pytest.raises(ValueError, match="units of 2"):
        select_heads(scores, head_layout(6, 2, "per_group"), 3)
    assert head_layout(4, 4, "per_group").whole_group  # MHA: a head takes its k/v rows along
    assert select_channels(torch.tensor([3.0, 1.0, 2.0, 1.0]), 2) == [0, 2]


def test_al_am_counts_weighted_global_threshold():
    units = [
        LayerUnits(torch.tensor([-1.0, 0.5]), head_unit_size=1, head_unit_weight=2.0,
                   channel_scores=torch.tensor([-2.0, 1.0, 2.0])),
        LayerUnits(torch.tensor([0.0, 1.5]), head_unit_size=1, head_unit_weight=2.0,
                   channel_scores=torch.tensor([-0.5, 0.2, 3.0])),
    ]
    # total weight 14; ratio 0 keeps everything
    assert al_am_counts(units, 0.0) == [(0, 0), (0, 0)]
    # ratio 3/14: remove the channel at -2 (w1) and the head at -1 (w2)
    assert al_am_counts(units, 3 / 14) == [(1, 1), (0, 0)]


def test_al_am_counts_cap_per_layer_moves_the_threshold_to_other_layers():
    units = [
        LayerUnits(torch.tensor([0.0, 5.0]), head_unit_size=1, head_unit_weight=1.0,
                   channel_scores=torch.tensor([-3.0, -2.0, -1.0, 4.0])),
        LayerUnits(torch.tensor([1.0, 6.0]), head_unit_size=1, head_unit_weight=1.0,
                   channel_scores=torch.tensor([0.5, 2.0, 3.0, 7.0])),
    ]
    # weight 12; 4 go: uncapped, the four lowest scores (three channels and a head of layer 0)
    assert al_am_counts(units, 4 / 12) == [(1, 3), (0, 0)]
    # at most half of each layer's heads and channels: layer 0 keeps its -1 channel, layer 1's 0.5 goes
    assert al_am_counts(units, 4 / 12, max_layer_ratio=0.5) == [(1, 2), (0, 1)]
    # a quarter: no head unit (floor 0.5) and one channel per layer = 2 of 12
    with pytest.raises(ValueError, match="max_layer_ratio=0.25 lets at most 16.7%"):
        al_am_counts(units, 5 / 12, max_layer_ratio=0.25)


# -- the fast arithmetic: the same rotation, cheaper -------------------------------------------------
def _svd_polar(M: torch.Tensor) -> torch.Tensor:
    U, _, Vh = torch.linalg.svd(M.double())
    return U @ Vh


def test_polar_factor_from_eigh_equals_the_svd_one_and_falls_back_when_ill_conditioned():
    from rcpu_lightning.pruning.compensation import polar_factor

    g = torch.Generator().manual_seed(0)
    M = torch.randn(40, 40, generator=g, dtype=torch.float64) + 5 * torch.eye(40, dtype=torch.float64)
    Q, sigma = polar_factor(M)
    # eigh of MᵀM squares M's condition number (randn + 5I, 40 × 40: κ ≲ 10): ≤ κ² · d · eps ≈ 1e-12
    torch.testing.assert_close(Q, _svd_polar(M), atol=1e-10, rtol=0)
    torch.testing.assert_close(sigma, torch.linalg.svdvals(M), atol=1e-10, rtol=0)
    singular = M.clone()
    singular[:, -1] = 0  # rank 39: eigh would divide by ~0; the SVD path gives an orthogonal Q
    Q, _ = polar_factor(singular)
    torch.testing.assert_close(Q.T @ Q, torch.eye(40, dtype=torch.float64), atol=1e-10, rtol=0)  # SVD: ~d·eps


def test_polar_factor_keeps_the_eigh_route_up_to_its_rcond_and_stays_within_1e_5(monkeypatch):
    from rcpu_lightning.pruning import compensation

    g = torch.Generator().manual_seed(2)
    d = 160
    U, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    kappa = 0.5 / compensation.POLAR_RCOND  # inside the eigh route, 5x above the old threshold (1e4)
    s = torch.ones(d, dtype=torch.float64)
    s[-d // 8:] = torch.logspace(-2, -math.log10(kappa), d // 8, dtype=torch.float64)  # a tail of small σ
    M = (U * s) @ V.T
    svd = torch.linalg.svd
    calls = []
    monkeypatch.setattr(torch.linalg, "svd", lambda *a, **k: calls.append(1) or svd(*a, **k))
    Q, sigma = compensation.polar_factor(M)
    assert not calls  # no SVD after the eigh
    B = torch.randn(d, d, generator=g, dtype=torch.float64)  # the weights the rotation acts on
    # the eigh route's error grows as eps·κ² (~1e-6 worst case here, seen ~1e-8): within the fast
    # arithmetic's promise of 1e-5 relative on the rotated weights; a wrong polar factor is O(1) off
    exact = U @ V.T
    assert float(((Q - exact) @ B).abs().max() / (exact @ B).abs().max()) < 1e-5
    # σ² from eigh is off by ~d·eps·σ_max² = 3.5e-14, so σ_min = 2e-5 by 3.5e-14 / (2 σ_min) ≈ 1e-9
    torch.testing.assert_close(sigma, s, atol=1e-8, rtol=0)
    M[:, -1] *= 1e-3  # σ_min / σ_max below the rcond: the SVD route
    compensation.polar_factor(M)
    assert calls


def test_thin_rotation_equals_the_full_procrustes_rotation_of_a_rank_deficient_cross_matrix():
    from rcpu_lightning.pruning.compensation import thin_rotation

    g = torch.Generator().manual_seed(1)
    A = torch.randn(48, 32, generator=g, dtype=torch.float64)  # W G[:, K], |K| = 32 < d_out = 48
    B = torch.randn(48, 32, generator=g, dtype=torch.float64)  # W_K
    rotated, sigma = thin_rotation(A, B)
    # QR + a 32 × 32 polar factor vs the SVD of the 48 × 48 product: the same rotation of B's span, whose
    # sensitivity is 1/(σ_31 + σ_32) of A Bᵀ relative to its norm (≲ 1e2 for these Gaussians): ~1e-12
    torch.testing.assert_close(rotated, procrustes_rotation(A @ B.T) @ B, atol=1e-10, rtol=0)
    torch.testing.assert_close(sigma.sort().values, torch.linalg.svdvals(A @ B.T)[:32].sort().values,
                               atol=1e-9, rtol=0)


def test_an_ill_conditioned_fast_rotation_takes_one_eigh_then_float64_products_and_one_svd(monkeypatch):
    """Past :data:`POLAR_RCOND` the eigh of the float32-product ``M`` is the only one: the float64 ``M``
    goes to the SVD straight (an eigh + SVD of each ``M`` cost ~70 s at LLaMA-7B's down_proj on a CPU)."""
    from rcpu_lightning.pruning import compensation

    g = torch.Generator().manual_seed(4)
    w = torch.randn(24, 40, generator=g)  # full-rank M: |K| = 30 >= d_out = 24
    x = torch.randn(200, 40, generator=g, dtype=torch.float64)
    G, keep = x.T @ x, torch.arange(30)
    calls = []
    for name in ("eigh", "svd"):
        real = getattr(torch.linalg, name)
        monkeypatch.setattr(torch.linalg, name, lambda *a, _n=name, _f=real, **k: calls.append(_n) or _f(*a, **k))
    fast, _ = compensation.fast_rotation(w, G, keep)
    assert calls == ["eigh"]  # well conditioned (κ ~ 10): the eigh route, float32 products
    calls.clear()
    monkeypatch.setattr(compensation, "POLAR_RCOND", 1.0)  # every M counts as ill-conditioned
    rotated, sigma = compensation.fast_rotation(w, G, keep)
    assert calls == ["eigh", "svd"]
    exact = compensation.rotation_compensation(w.double(), G, keep)  # the equations in float64, own SVD
    # both float64 throughout (the SVD of the same float64-summed M): ~κ · eps ≈ 1e-14
    torch.testing.assert_close(rotated, exact, atol=1e-10, rtol=0)
    torch.testing.assert_close(sigma, torch.linalg.svdvals(cross_gram(w.double(), G, keep)), atol=0, rtol=1e-10)
    # the float32 products of the well-conditioned route: ~1e-7 relative
    assert float((fast - exact).norm() / exact.norm()) < 1e-5


@pytest.mark.parametrize("kv", [2, 6])
@pytest.mark.parametrize("compensation", ["rotation", "rotation_scale"])
def test_fast_arithmetic_matches_float64_to_1e_5_on_the_weights(kv, compensation):
    import copy

    from conftest import make_tiny_llama
    from rcpu_lightning.pruning import PruningConfig, capture_layer_inputs, prune_model

    dense = make_tiny_llama(num_heads=6, num_kv_heads=kv)
    ids = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(2))
    states = {}
    for arithmetic in ("fast", "float64"):
        model = copy.deepcopy(dense)
        config = PruningConfig(ratio=0.34, compensation=compensation, arithmetic=arithmetic)
        prune_model(model, capture_layer_inputs(model, ids.split(4)), config, progress=False)
        states[arithmetic] = model.state_dict()
    for name, exact in states["float64"].items():
        error = (states["fast"][name] - exact).norm() / exact.norm()
        assert error < 1e-5, (name, float(error))  # measured: <= 2.1e-6 (layer 1 inherits layer 0's)


def test_affine_least_squares_is_the_least_squares_fit_with_an_intercept():
    from rcpu_lightning.pruning.compensation import affine_least_squares

    g = torch.Generator().manual_seed(3)
    X = torch.randn(500, 12, generator=g, dtype=torch.float64) * torch.linspace(0.5, 3, 12) + 2.0  # shifted inputs
    W = torch.randn(5, 12, generator=g, dtype=torch.float64)
    keep = torch.tensor([0, 2, 3, 5, 7, 8, 11])
    mean = X.mean(0)
    cov = X.T @ X / 500 - torch.outer(mean, mean)
    w_new, b = affine_least_squares(W, cov, mean, keep, lam=1e-12)
    design = torch.cat([X[:, keep], torch.ones(500, 1, dtype=torch.float64)], 1)  # [N, |K| + 1]
    solution = torch.linalg.lstsq(design, X @ W.T).solution  # [|K| + 1, d_out]
    # covariance normal equations vs QR of the design: κ(Σ[K, K])·(N + |K|)·eps with κ ≲ 40 (scales
    # 0.5..3; the shift of 2 is taken out by the covariance): ~5e-12
    torch.testing.assert_close(w_new, solution[:-1].T, atol=1e-8, rtol=0)
    torch.testing.assert_close(b, solution[-1], atol=1e-8, rtol=0)
    heavy, b_heavy = affine_least_squares(W, cov, mean, keep, lam=1e9)  # all ridge: W_K and FLAP's bias
    torch.testing.assert_close(heavy, W[:, keep], atol=1e-6, rtol=0)
    torch.testing.assert_close(b_heavy, W @ mean - W[:, keep] @ mean[keep], atol=1e-6, rtol=0)


# -- selection by compensated error (error_selection.py) ---------------------------------------------
def _error_of(w: torch.Tensor, h: torch.Tensor, keep: torch.Tensor) -> float:
    """E(K) = min_W' tr((W − W' P_K) H (W − W' P_K)ᵀ), by the normal equations on the kept columns."""
    fitted = torch.linalg.solve(h[keep][:, keep], (w @ h[:, keep]).T).T  # [d_out, |K|]
    full = torch.zeros_like(w)
    full[:, keep] = fitted
    return float(torch.trace((w - full) @ h @ (w - full).T))


def test_greedy_removal_pays_exactly_the_error_left_after_refitting():
    from rcpu_lightning.pruning.error_selection import _block_cost, error_hessian, greedy_removal

    d_out, d_in = 5, 12
    w = torch.randn(d_out, d_in, generator=_gen(11), dtype=torch.float64)
    stats = ChannelStats.zeros(d_in)
    stats.update(torch.randn(400, d_in, generator=_gen(12), dtype=torch.float64) @ torch.randn(
        d_in, d_in, generator=_gen(13), dtype=torch.float64))  # correlated inputs
    h = error_hessian(stats, 0.01)
    blocks = [torch.tensor([2 * i, 2 * i + 1]) for i in range(d_in // 2)]  # "heads" of two columns
    everything = torch.arange(d_in)
    first = [_error_of(w, h, everything[~torch.isin(everything, b)]) for b in blocks]
    hinv = torch.linalg.inv(h)
    assert [_block_cost(w, hinv, b) for b in blocks] == pytest.approx(first, rel=1e-8)  # the OBS cost is E(K)
    work = w.clone()
    gone, costs = greedy_removal(work, hinv, blocks, [0] * len(blocks), {0: 3})
    assert gone[0] == min(range(len(blocks)), key=first.__getitem__)  # the cheapest goes first
    keep = everything[~torch.isin(everything, torch.cat([blocks[b] for b in gone]))]
    refit = torch.linalg.solve(h[keep][:, keep], (w @ h[:, keep]).T).T
    # the updates refit the survivors: 3 rank-2 OBS updates vs one solve, both with κ(H) ≲ 1e2 (correlated
    # inputs, ridge 0.01) on 12 × 12 matrices: ~1e-12
    torch.testing.assert_close(work[:, keep], refit, atol=1e-9, rtol=1e-9)
    assert sum(costs) == pytest.approx(_error_of(w, h, keep), rel=1e-8)  # the costs add up to E(K)


def test_compensated_error_drops_a_duplicated_channel_that_scores_keep():
    from rcpu_lightning.pruning.error_selection import select_channels_by_error, select_heads_by_error
    from rcpu_lightning.pruning.selection import head_layout

    x = torch.randn(500, 8, generator=_gen(14), dtype=torch.float64) * torch.tensor([5.0, 0, 1, 1, 1, 1, 1, 0.5],
                                                                                    dtype=torch.float64)
    x[:, 1] = x[:, 0]  # channels 0 and 1 carry the same signal, the largest of all
    stats = ChannelStats.zeros(8)
    stats.update(x)
    w = torch.ones(3, 8, dtype=torch.float64)
    kept = select_channels_by_error(w, stats, 1, lam=1e-6)
    assert set(range(8)) - set(kept) in ({0}, {1})  # free to drop: the twin absorbs it
    assert 7 not in set(range(8)) - set(kept)  # what a magnitude-times-spread score would drop
    # GQA per group: every kv group gives the same number of heads (6 heads of width 1 in 2 groups)
    kept_heads, kept_kv = select_heads_by_error(torch.randn(3, 6, generator=_gen(15), dtype=torch.float64),
                                                _stats6(), head_layout(6, 2, "per_group"), 1, 4, lam=1e-3)
    assert len(kept_heads) == 2 and {h // 3 for h in kept_heads} == {0, 1} and kept_kv == [0, 1]
    kept_heads, kept_kv = select_heads_by_error(torch.randn(3, 6, generator=_gen(15), dtype=torch.float64),
                                                _stats6(), head_layout(6, 2, "whole_group"), 1, 3, lam=1e-3)
    assert len(kept_heads) == 3 and len(kept_kv) == 1 and {h // 3 for h in kept_heads} == set(kept_kv)


def test_error_curves_add_up_to_the_error_of_the_greedy_selections():
    from rcpu_lightning.pruning.error_selection import (
        channel_error_curve, error_hessian, head_unit_error_curve, select_channels_by_error, select_heads_by_error)
    from rcpu_lightning.pruning.selection import head_layout

    d_in, lam = 12, 1e-2
    w = torch.randn(4, d_in, generator=_gen(21), dtype=torch.float64)
    stats = ChannelStats.zeros(d_in)
    stats.update(torch.randn(300, d_in, generator=_gen(22), dtype=torch.float64) @ torch.randn(
        d_in, d_in, generator=_gen(23), dtype=torch.float64))
    h = error_hessian(stats, lam)
    curve = channel_error_curve(w, stats, d_in - 1, lam)
    assert curve.shape == (d_in - 1,) and bool((curve >= 0).all())
    for k in (1, 5, d_in - 1):  # one column per step: the running sum is E of the k-channel greedy selection
        kept = torch.tensor(select_channels_by_error(w, stats, k, lam))
        assert float(curve[:k].sum()) == pytest.approx(_error_of(w, h, kept), rel=1e-7)
    # heads: 6 heads of width 2 in 2 kv groups; the first round (one head per group) is the
    # selection of 2 heads, and whole kv groups are nested rounds of the 1-unit greedy
    for mode, first_units in (("per_group", 2), ("whole_group", 3)):
        layout = head_layout(6, 2, mode)
        heads = head_unit_error_curve(w, stats, layout, 2, lam)
        assert heads.shape == (layout.num_units - 1,)
        kept_heads, _ = select_heads_by_error(w, stats, layout, 2, first_units, lam)
        cols = torch.tensor([2 * q + j for q in kept_heads for j in (0, 1)])
        assert float(heads[0]) == pytest.approx(_error_of(w, h, cols), rel=1e-7)


def _stats6() -> ChannelStats:
    stats = ChannelStats.zeros(6)
    stats.update(torch.randn(300, 6, generator=_gen(16), dtype=torch.float64))
    return stats


def test_compensated_error_selection_needs_a_refitting_compensation():
    from rcpu_lightning.pruning import PruningConfig

    with pytest.raises(ValueError, match="refits nothing"):
        PruningConfig(selection="compensated_error", compensation="none")
    assert PruningConfig(selection="compensated_error", compensation="affine_least_squares").selection == "compensated_error"


def test_blockwise_products_equal_the_whole_ones(monkeypatch):
    from rcpu_lightning.pruning import compensation as comp

    g = torch.Generator().manual_seed(3)
    x = torch.randn(200, 12, generator=g, dtype=torch.float64)
    G, w = x.T @ x, torch.randn(5, 12, generator=g, dtype=torch.float64)
    keep = torch.tensor([0, 2, 3, 5, 7, 8, 11])
    Q = procrustes_rotation(cross_gram(w, G, keep))
    whole = (comp.weight_gram_columns(w, G, keep, torch.float64), comp.blockwise_cross_gram(w, G, keep, torch.float64),
             comp.rotate_columns(Q, w, keep), comp.z_norm2(w, G, keep))
    monkeypatch.setattr(comp, "_BLOCK", 30)  # blocks of 2-3 columns (uneven last block)
    blocked = (comp.weight_gram_columns(w, G, keep, torch.float64), comp.blockwise_cross_gram(w, G, keep, torch.float64),
               comp.rotate_columns(Q, w, keep), comp.z_norm2(w, G, keep))
    references = (w @ G[:, keep], cross_gram(w, G, keep), Q @ w[:, keep],
                  torch.trace(w[:, keep] @ G[keep][:, keep] @ w[:, keep].T))
    for a, b, ref in zip(whole, blocked, references):  # other summation orders of ≤ 200·12 products: ~1e-10
        torch.testing.assert_close(a, ref, atol=1e-9, rtol=1e-12)
        torch.testing.assert_close(b, ref, atol=1e-9, rtol=1e-12)


def test_blockwise_gram_update_equals_the_whole_product(monkeypatch):
    from rcpu_lightning.pruning import stats as stats_module

    x = torch.randn(3, 7, 10, generator=_gen(4))
    whole = ChannelStats.zeros(10)
    whole.update(x, torch.float32)
    monkeypatch.setattr(stats_module, "_GRAM_BLOCK", 35)  # 3 columns per block
    blocked = ChannelStats.zeros(10)
    blocked.update(x, torch.float32)
    torch.testing.assert_close(blocked.G, whole.G, atol=1e-5, rtol=1e-6)  # float32 products: rounding only
    x64 = x.reshape(-1, 10).double()
    torch.testing.assert_close(whole.G, x64.T @ x64, atol=1e-5, rtol=1e-6)
