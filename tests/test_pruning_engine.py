"""Behaviour of the layer-by-layer engine on tiny random Llama models (MHA and GQA)."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import make_tiny_llama, rounding_bound
from rcpu_lightning.models.adapter import decoder_layers, layer_parts
from rcpu_lightning.pruning import (
    LayerInputCatcher,
    PruningConfig,
    capture_layer_inputs,
    prune_model,
)
from rcpu_lightning.pruning.engine import check_feasible

GQA = dict(num_heads=6, num_kv_heads=2)


def _ids(seed: int = 1, batch: int = 4, seqlen: int = 16) -> torch.Tensor:
    return torch.randint(0, 64, (batch, seqlen), generator=torch.Generator().manual_seed(seed))


def _inputs(model, ids=None, split: int = 2):
    ids = _ids() if ids is None else ids
    return capture_layer_inputs(model, ids.split(split))


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def _prune(model, **cfg):
    return prune_model(model, _inputs(model), PruningConfig(**cfg), progress=False)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(a: dict, b: dict) -> None:
    """Bit-equality, for runs that take the same code path on the same inputs (or copy weights)."""
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape and torch.equal(a[k], b[k]), k


def _mask_like_plan(dense, plan):
    """Dense copy with the plan's removed heads/channels zeroed in o_proj/down_proj columns."""
    masked = copy.deepcopy(dense)
    with torch.no_grad():
        for layer, lp in zip(decoder_layers(masked), plan.layers):
            parts = layer_parts(layer)
            for h in set(range(parts.num_heads)) - set(lp.kept_heads):
                parts.o_proj.weight[:, h * parts.head_dim : (h + 1) * parts.head_dim] = 0
            dropped = sorted(set(range(parts.intermediate_size)) - set(lp.kept_channels))
            parts.down_proj.weight[:, dropped] = 0
    return masked


@pytest.mark.parametrize("shape", [{}, GQA], ids=["mha", "gqa"])
@pytest.mark.parametrize("method", ["rcpu", "wanda_sp", "flap", "magnitude"])
def test_ratio_zero_leaves_outputs_unchanged(shape, method):
    model, ids = make_tiny_llama(**shape), _ids(3)
    before = _logits(model, ids)
    report = _prune(model, method=method, ratio=0.0)
    assert report.decoder_params_removed == 0.0 and report.params_after == report.params_before
    # ratio 0 writes no weight (nothing dropped: no compensation runs), so this is the same forward twice;
    # 1e-6 only allows a BLAS whose runs differ in their last bits (~2 float32 ulps at |logit| ≤ 5)
    torch.testing.assert_close(_logits(model, ids), before, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "shape,cfg",
    [
        ({}, dict(ratio=0.5)),
        (GQA, dict(ratio=0.34)),  # per_group: one head from each of the 2 groups
        (GQA, dict(ratio=0.5, gqa_mode="whole_group")),
        (GQA, dict(method="flap", structure="al_am", ratio=0.3)),
        ({}, dict(method="wanda_sp", ratio=0.3, refresh_mlp_stats=True)),
    ],
    ids=["mha", "gqa-per-group", "gqa-whole-group", "gqa-al-am", "mha-refresh"],
)
def test_physical_removal_equals_zero_masking(shape, cfg):
    model, ids = make_tiny_llama(**shape), _ids(3)
    dense = copy.deepcopy(model)
    report = _prune(model, compensation="none", **cfg)
    assert report.params_after < report.params_before
    masked = _mask_like_plan(dense, report.plan)
    torch.testing.assert_close(_logits(model, ids), _logits(masked, ids), atol=1e-5, rtol=1e-4)
    # in float64 the only difference left is round-off: the two models compute the same function, the
    # masked one with zero terms added to its sums (another summation order). Each logit goes through
    # 2 layers of sums over at most hidden + intermediate + sequence (~150) terms of size ≲ 10:
    # ~1e-12 by rounding_bound; 1e-10 leaves room, and a wrong mask is O(1) off (the float32 check above)
    torch.testing.assert_close(_logits(model.double(), ids), _logits(masked.double(), ids), atol=1e-10, rtol=0)


def test_gqa_per_group_keeps_kv_heads_and_whole_group_removes_them():
    per_group = make_tiny_llama(**GQA)
    report = _prune(per_group, ratio=0.34)
    assert per_group.config.num_attention_heads == 4 and per_group.config.num_key_value_heads == 2
    for layer in decoder_layers(per_group):
        parts = layer_parts(layer)
        assert (parts.num_heads, parts.num_kv_heads, layer.self_attn.num_key_value_groups) == (4, 2, 2)
        assert parts.k_proj.out_features == 16
    assert all(len(lp.kept_kv_heads) == 2 for lp in report.plan.layers)

    whole = make_tiny_llama(**GQA)
    _prune(whole, ratio=0.5, gqa_mode="whole_group")
    assert whole.config.num_attention_heads == 3 and whole.config.num_key_value_heads == 1
    assert all(layer_parts(layer).k_proj.out_features == 8 for layer in decoder_layers(whole))


def test_head_rounding_nearest_vs_floor_on_gqa():
    floor_model, nearest_model = make_tiny_llama(**GQA), make_tiny_llama(**GQA)
    # 0.2 * 6 = 1.2 heads; per_group removes multiples of 2: floor -> 0, nearest -> 2
    r_floor = _prune(floor_model, ratio=0.2, compensation="none")
    r_nearest = _prune(nearest_model, ratio=0.2, head_rounding="nearest", compensation="none")
    assert [lp.num_heads for lp in r_floor.plan.layers] == [6, 6]
    assert [lp.num_heads for lp in r_nearest.plan.layers] == [4, 4]
    assert r_nearest.decoder_params_removed > r_floor.decoder_params_removed > 0


def test_rounding_note_is_logged_once_by_the_prune_and_not_by_the_preflight_check(caplog):
    model = make_tiny_llama(**GQA)
    config = PruningConfig(ratio=0.2, head_rounding="nearest", compensation="none")
    with caplog.at_level("INFO", logger="rcpu_lightning.pruning.engine"):
        check_feasible(model, config)
        assert not [r for r in caplog.records if "heads: ratio" in r.getMessage()]
        report = prune_model(model, _inputs(model), config, progress=False)
    logged = [r.getMessage() for r in caplog.records if "heads: ratio" in r.getMessage()]
    assert logged == report.notes and len(logged) == 1 and "removing 2" in logged[0]


def test_doubling_reduce_gives_same_decisions_and_weights_and_few_calls():
    ref, doubled = make_tiny_llama(**GQA), make_tiny_llama(**GQA)
    inputs = _inputs(ref)
    calls = []

    def reduce(t):
        calls.append(t.numel())
        return t * 2  # two ranks holding identical data

    inputs = capture_layer_inputs(ref, _ids().split(1))  # 4 local batches
    cfg = PruningConfig(ratio=0.34)
    r1 = prune_model(ref, inputs, cfg, progress=False)
    r2 = prune_model(doubled, inputs, cfg, reduce=reduce, progress=False)
    assert len(calls) == 2  # one per layer, not per batch
    assert r1.plan.layers == r2.plan.layers
    # doubling is exact in binary floating point and the algebra is scale-free (means, ratios, polar
    # factors), so the weights agree to the last cast to float32: 1e-6 is ~4 float32 ulps at |w| ≤ 2
    # (observed: equal), while a reduce counted twice or never moves them by O(1e-1)
    for (k, a), b in zip(ref.state_dict().items(), doubled.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=k)


def test_reduce_calls_do_not_depend_on_local_batch_count():
    counts = []
    for batch_size in (4, 1):
        model, calls = make_tiny_llama(), []
        cfg = PruningConfig(method="flap", structure="al_am", ratio=0.2, refresh_mlp_stats=True)
        prune_model(model, _inputs(model, split=batch_size), cfg, reduce=lambda t: calls.append(1) or t, progress=False)
        counts.append(len(calls))
    assert counts == [1 + 2 * 2, 1 + 2 * 2]  # AL-AM pass + (attn, refreshed mlp) per layer


def test_same_inputs_give_bitwise_identical_weights():
    # determinism, not numerics: the same code on the same inputs in one process (same kernels, same
    # thread count) must give the same bits; DDP ranks rely on it
    states = []
    for _ in range(2):
        model = make_tiny_llama(**GQA)
        prune_model(model, capture_layer_inputs(model, _ids(7, batch=6).split(4)), PruningConfig(ratio=0.34),
                    progress=False)
        states.append(_state(model))
    _assert_same_state(*states)


@torch.no_grad()
def _module_error(dense_w, x, new_lin, keep) -> float:
    """||W X − (W' X_K + b')||_F on the calibration activations x [N, d_in]."""
    y = x @ dense_w.T
    z = x[:, keep] @ new_lin.weight.T + (new_lin.bias if new_lin.bias is not None else 0)
    return float((y - z).norm())


@pytest.mark.parametrize("shape", [{}, GQA], ids=["mha", "gqa"])
def test_each_compensation_reduces_layer0_output_error(shape):
    dense, ids = make_tiny_llama(**shape), _ids(5, batch=6)
    parts = layer_parts(decoder_layers(dense)[0])
    acts = {}

    def record(name):
        def hook(module, args):
            acts[name] = args[0].reshape(-1, args[0].shape[-1])  # [N, d_in]

        return hook

    hooks = [m.register_forward_pre_hook(record(n)) for n, m in (("o_proj", parts.o_proj), ("down_proj", parts.down_proj))]
    _logits(dense, ids)
    for h in hooks:
        h.remove()
    errors = {}
    for kind, lam in [("none", 0.0), ("rotation", 0.0), ("rotation_scale", 0.0), ("least_squares", 1e-8), ("bias", 0.0)]:
        model = copy.deepcopy(dense)
        inputs = capture_layer_inputs(model, ids.split(3))
        report = prune_model(model, inputs, PruningConfig(ratio=0.5, compensation=kind, ls_lambda=lam), progress=False)
        lp, new = report.plan.layers[0], layer_parts(decoder_layers(model)[0])
        hd = parts.head_dim
        keep_cols = [h * hd + j for h in lp.kept_heads for j in range(hd)]
        errors[kind] = (
            _module_error(parts.o_proj.weight, acts["o_proj"], new.o_proj, keep_cols),
            _module_error(parts.down_proj.weight, acts["down_proj"], new.down_proj, lp.kept_channels),
        )
    for module in (0, 1):
        e = {k: v[module] for k, v in errors.items()}
        assert e["rotation"] < e["none"] * 0.999, e
        assert e["rotation_scale"] <= e["rotation"] * (1 + 1e-5), e
        assert e["least_squares"] <= e["rotation"] * (1 + 1e-5), e
        assert e["bias"] < e["none"], e


def test_targets_limit_where_compensation_applies():
    dense = make_tiny_llama()
    none_model, o_only = copy.deepcopy(dense), copy.deepcopy(dense)
    _prune(none_model, ratio=0.5, compensation="none")
    _prune(o_only, ratio=0.5, compensation="rotation", targets="o_proj")
    p_none, p_o = layer_parts(decoder_layers(none_model)[0]), layer_parts(decoder_layers(o_only)[0])
    assert torch.equal(p_none.down_proj.weight, p_o.down_proj.weight)  # layer 0 down_proj: same inputs
    assert not torch.allclose(p_none.o_proj.weight, p_o.o_proj.weight)


def test_without_head_removal_o_proj_only_is_no_compensation_and_down_proj_only_is_rotation():
    # SmolLM2's layout (9 heads in 3 kv groups): at 10 % `nearest` rounding removes no head, which the
    # benchmark's note relies on ("o_proj only" = "no compensation", "down_proj only" = "rot" there).
    dense = make_tiny_llama(num_heads=9, num_kv_heads=3, hidden_size=72)
    states = {}
    for name, cfg in {"none": dict(compensation="none"), "o_only": dict(targets="o_proj"),
                      "rot": dict(), "d_only": dict(targets="down_proj")}.items():
        model = copy.deepcopy(dense)
        report = _prune(model, ratio=0.1, head_rounding="nearest", **cfg)
        assert all(len(lp.kept_heads) == 9 for lp in report.plan.layers)
        states[name] = _state(model)
    _assert_same_state(states["none"], states["o_only"])
    _assert_same_state(states["rot"], states["d_only"])
    assert not torch.equal(states["none"]["model.layers.0.mlp.down_proj.weight"],
                           states["rot"]["model.layers.0.mlp.down_proj.weight"])


def test_offload_and_batching_give_the_same_weights():
    # In float64 throughout, so that the comparison can be tight: one batch of 4 sequences vs 4 of one
    # sums the same products in another order, so the statistics differ by round-off only (≤ N·eps of
    # their absolute sums, N = 64 tokens); the weights then differ by that relative amount times the
    # compensation's condition number. The bound below allows κ up to ~1e5 (the ridge Grams of these
    # random layers have κ ≈ 5e2; see the dense-target test): ~1e-9; observed ~1e-13. (In float32 the
    # same bound would be ~1e-2: the products of the fast arithmetic round at float32.)
    config = dict(ratio=0.34, arithmetic="float64")
    a, b = make_tiny_llama(**GQA).double(), make_tiny_llama(**GQA).double()
    prune_model(a, _inputs(a, split=4), PruningConfig(**config), progress=False)
    inputs = capture_layer_inputs(b, _ids().split(1), offload=True)
    prune_model(b, inputs, PruningConfig(**config, offload_inputs=True), progress=False)
    tol = rounding_bound(len(_ids().flatten()), magnitude=1.0, dtype=torch.float64, condition=1e5)
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, atol=tol * max(1.0, float(x.abs().max())), rtol=0, msg=k)


def test_catcher_records_layer0_inputs_during_a_full_forward():
    model, ids = make_tiny_llama(), _ids()
    with LayerInputCatcher(model) as catcher:
        logits = model(ids, use_cache=False).logits
    assert logits.shape == (4, 16, 64)
    hidden, kwargs = catcher.inputs.batches[0]
    torch.testing.assert_close(hidden, model.model.embed_tokens(ids))
    assert kwargs["use_cache"] is False and "cache" not in kwargs
    assert len(catcher.inputs) == 1 and catcher.inputs.num_tokens == 64
    early = capture_layer_inputs(model, [ids])
    torch.testing.assert_close(early.batches[0][0], hidden)


def test_pruning_does_not_overwrite_what_a_full_forward_returned():
    """The engine writes layer outputs into the recorded tensors: a catcher on a full forward must
    record copies, or the caller's returned hidden_states[0] would become a later layer's output."""
    model, ids = make_tiny_llama(**GQA), _ids()
    with LayerInputCatcher(model) as catcher:
        returned = model(ids, use_cache=False, output_hidden_states=True).hidden_states[0]
    kept = returned.clone()
    prune_model(model, catcher.inputs, PruningConfig(ratio=0.34), progress=False, overwrite_inputs=True)
    assert torch.equal(returned, kept)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(ratio=1.0), r"ratio=1\.0 .*\[0, 1\)"),
        (dict(ratio=-0.1), r"ratio=-0\.1"),
        (dict(ratio="0.2"), r"ratio='0\.2'"),
        (dict(attn_ratio=1.5), r"attn_ratio=1\.5"),
        (dict(method="sparsegpt"), r"method='sparsegpt'.*'rcpu'"),
        (dict(compensation="svd"), r"compensation='svd'.*'rotation'"),
        (dict(structure="ul_um"), r"structure='ul_um'.*'al_am'"),
        (dict(targets="q_proj"), r"targets='q_proj'.*'o_proj'"),
        (dict(head_rounding="ceil"), r"head_rounding='ceil'.*'nearest'"),
        (dict(gqa_mode="kv"), r"gqa_mode='kv'.*'whole_group'"),
        (dict(stats_dtype="float16"), r"stats_dtype='float16'.*'float64'"),
        (dict(ls_lambda=-1.0), r"ls_lambda"),
        (dict(structure="al_am", mlp_ratio=0.2), r"mlp_ratio=0\.2.*al_am"),
        (dict(max_layer_ratio=0.5), r"max_layer_ratio=0\.5.*structure='al_am'"),
        (dict(structure="al_am", ratio=0.3, max_layer_ratio=0.2), r"max_layer_ratio=0\.2 .*\[0\.3, 1\]"),
        (dict(allocation="compensated_error", compensation="least_squares"), r"allocation=.*structure='al_am'"),
        (dict(structure="al_am", allocation="compensated_error", method="flap"), r"compensation='bias' refits nothing"),
        (dict(structure="al_am", allocation="gradient"), r"allocation='gradient'.*'compensated_error'"),
    ],
)
def test_invalid_config_values_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PruningConfig(**kwargs)


def test_default_compensation_follows_method():
    assert PruningConfig().compensation == "rotation"
    assert PruningConfig(method="flap").compensation == "bias"
    assert PruningConfig(method="wanda_sp").compensation == "none"
    assert PruningConfig(method="magnitude", compensation="rotation").compensation == "rotation"


def test_ratio_emptying_a_layer_raises_before_weights_change():
    model = make_tiny_llama(**GQA)
    before = _state(model)
    # 0.9 * 6 = 5.4 heads; whole groups of 3, nearest -> 6 = every head
    with pytest.raises(ValueError, match="remove all 6 attention heads of layer 0") as uniform:
        _prune(model, attn_ratio=0.9, gqa_mode="whole_group", head_rounding="nearest")
    _assert_same_state(before, _state(model))
    assert str(uniform.value).endswith("; lower the ratio")  # already uniform: no advice to switch to it
    with pytest.raises(ValueError, match=r"would remove all .* lower the ratio \(or use structure='uniform'\)"):
        _prune(model, method="flap", structure="al_am", ratio=0.95)  # AL-AM empties the layers it favours least
    _assert_same_state(before, _state(model))


def test_non_finite_statistics_raise_before_weights_change():
    model = make_tiny_llama()
    before = _state(model)
    inputs = _inputs(model)
    inputs.batches[1][0][0, 3, 5] = float("inf")
    with pytest.raises(ValueError, match="non-finite calibration statistics at layer 0"):
        prune_model(model, inputs, PruningConfig(ratio=0.3), progress=False)
    _assert_same_state(before, _state(model))


def test_model_pruned_in_inference_mode_can_be_trained():
    model, ids = make_tiny_llama(**GQA), _ids()
    with torch.inference_mode():
        inputs = capture_layer_inputs(model, ids.split(2))
        prune_model(model, inputs, PruningConfig(method="flap", ratio=0.34), progress=False)
    params = list(model.parameters())
    assert not any(p.is_inference() for p in params)
    assert all(p.requires_grad for p in params)
    before = [p.detach().clone() for p in params]
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(ids, labels=ids).loss
    loss.backward()
    opt.step()
    o_proj = layer_parts(decoder_layers(model)[0]).o_proj
    assert o_proj.bias is not None and o_proj.bias.grad is not None
    assert sum(not torch.equal(a, p) for a, p in zip(before, params)) > len(params) // 2


def test_config_parses_through_jsonargparse_yaml():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--pruning", type=PruningConfig)
    cfg = parser.parse_args(["--pruning", "{method: flap, structure: al_am, ratio: 0.3}"])
    pruning = parser.instantiate(cfg).pruning
    assert isinstance(pruning, PruningConfig)
    assert (pruning.method, pruning.structure, pruning.ratio, pruning.compensation) == ("flap", "al_am", 0.3, "bias")
    with pytest.raises(SystemExit):  # Literal types reject unknown names at parse time
        parser.parse_args(["--pruning", "{method: sparsegpt}"])


def test_float32_statistics_give_the_same_decisions():
    a, b = make_tiny_llama(**GQA), make_tiny_llama(**GQA)
    ra = _prune(a, ratio=0.34)
    rb = _prune(b, ratio=0.34, stats_dtype="float32")
    assert ra.plan.layers == rb.plan.layers
    # float32 accumulators lose ~N·eps32 (64 tokens: ~1e-5 relative) of the statistics, which the
    # compensations amplify by their condition number (~5e2 here): ~5e-3 worst case; observed ~1.5e-6
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, atol=5e-3, rtol=0, msg=k)


@pytest.mark.parametrize("structure", ["uniform", "al_am"])
def test_overwrite_inputs_prunes_in_the_captured_memory(structure):
    """One copy of the activations: with ``overwrite_inputs`` each layer's outputs are written into
    the captured layer-0 tensors, so layer 1 reads that memory; without it the caller's ``inputs``
    stay untouched (and reusable) and layer 1 reads new tensors. Same pruned model either way."""
    cfg = PruningConfig(ratio=0.34, structure=structure)
    results = {}
    for release in (False, True):
        model = make_tiny_llama(**GQA)
        inputs = _inputs(model)
        before = [h.clone() for h, _ in inputs.batches]
        captured = {h.untyped_storage().data_ptr() for h, _ in inputs.batches}
        seen: list[int] = []  # storage of every hidden-state tensor entering layer 1
        layer1 = decoder_layers(model)[1]
        layer1.register_forward_pre_hook(lambda m, args: seen.append(args[0].untyped_storage().data_ptr()))
        prune_model(model, inputs, cfg, progress=False, overwrite_inputs=release)
        assert len(inputs.batches) == (0 if release else len(before))
        final_pass = set(seen[-len(before):])  # layer 1's last pass: the inputs of layer 2
        if release:
            assert final_pass <= captured
        else:
            assert not final_pass & captured
            assert all(torch.equal(h, b) for (h, _), b in zip(inputs.batches, before))
        results[release] = _state(model)
    _assert_same_state(results[False], results[True])


@pytest.mark.parametrize("compensation", ["rotation", "bias"])
@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.4])
def test_al_am_removes_the_requested_share_of_decoder_parameters(ratio, compensation):
    # with "bias" every q/k/v/o and gate/up/down gets a bias (~1.8 % of this model); they count as kept
    model = make_tiny_llama(**GQA, num_layers=3, intermediate_size=96)
    report = _prune(model, method="flap", structure="al_am", ratio=ratio, compensation=compensation)
    # the nearest prefix: within half a head slot (2 heads x (q rows + o columns) = 1536 of ~75k parameters)
    assert abs(report.decoder_params_removed - ratio) < 0.011, report.decoder_params_removed


def test_al_am_cap_bounds_every_layer_and_still_removes_the_requested_share():
    model = make_tiny_llama(**GQA, num_layers=3, intermediate_size=96)
    report = _prune(model, method="flap", structure="al_am", ratio=0.3, max_layer_ratio=0.45)
    for layer in report.plan.layers:  # heads: 6 in units of 2 -> at most 1 unit; channels: at most 43 of 96
        assert len(layer.kept_heads) >= 4 and len(layer.kept_channels) >= 96 - 43, layer
    assert abs(report.decoder_params_removed - 0.3) < 0.011, report.decoder_params_removed


# -- allocation by compensated error (engine.error_units) -----------------------------------------------
ERROR_ALLOCATION = dict(method="flap", structure="al_am", allocation="compensated_error",
                        compensation="affine_least_squares", selection="compensated_error", ls_lambda=1e-2)


@pytest.mark.parametrize("ratio", [0.1, 0.3])
def test_error_allocation_removes_the_requested_share_of_decoder_parameters(ratio):
    model = make_tiny_llama(**GQA, num_layers=3, intermediate_size=96)
    report = _prune(model, **{**ERROR_ALLOCATION, "ratio": ratio})
    # the biases of affine_least_squares count as kept; within half a head slot, as for FLAP's ranking
    assert abs(report.decoder_params_removed - ratio) < 0.011, report.decoder_params_removed
    for layer in report.plan.layers:  # the last head unit and channel of a layer always stay
        assert len(layer.kept_heads) >= 2 and len(layer.kept_channels) >= 1


def test_error_allocation_takes_from_the_layer_whose_mlp_barely_writes_to_the_residual():
    """Layer 1's down_proj scaled by 1e-3: its channels cost almost nothing once divided by the residual
    energy, so the error ranking strips that layer; FLAP's standardised scores cannot see the scale."""
    counts = {}
    for allocation in ("score", "compensated_error"):
        model = make_tiny_llama(num_layers=2, intermediate_size=96)
        with torch.no_grad():
            layer_parts(decoder_layers(model)[1]).down_proj.weight.mul_(1e-3)
        report = _prune(model, **{**ERROR_ALLOCATION, "allocation": allocation, "ratio": 0.25})
        counts[allocation] = [len(layer.kept_channels) for layer in report.plan.layers]
    assert counts["compensated_error"][1] < counts["compensated_error"][0], counts
    assert counts["compensated_error"][1] < counts["score"][1], counts


def test_error_allocation_statistics_weight_each_token_by_its_inverse_residual_norm():
    from rcpu_lightning.pruning.engine import _inverse_residual_norm, run_layer
    from rcpu_lightning.pruning.stats import collect_input_stats

    model = make_tiny_llama(**GQA)
    batches = list(_inputs(model).batches)
    layer = decoder_layers(model)[0]
    parts = layer_parts(layer)
    seen = []
    handle = parts.down_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    with torch.no_grad(), _inverse_residual_norm(layer) as scale, \
            collect_input_stats({"d": parts.down_proj}, torch.float64, token_scale=scale) as st:
        run_layer(layer, batches, offload=False, replace=False)
    handle.remove()
    x = torch.cat([a.reshape(-1, a.shape[-1]) for a in seen]).double()  # [N, d_in]
    h = torch.cat([b.reshape(-1, b.shape[-1]) for b, _ in batches]).double()  # [N, hidden], same token order
    w = 1.0 / (h * h).sum(1, keepdim=True)  # 1 / ‖h_t‖²
    torch.testing.assert_close(st["d"].G, (x * w).T @ x, atol=1e-6, rtol=1e-4)  # float32 inputs
    torch.testing.assert_close(st["d"].s1, (x * w.sqrt()).sum(0), atol=1e-6, rtol=1e-4)


def test_error_allocation_reduces_once_per_layer_and_decides_alike_on_doubled_statistics():
    reports, calls = [], []
    for reduce in (None, lambda t: calls.append(1) or t * 2):  # two ranks holding identical data
        model = make_tiny_llama(**GQA, num_layers=3, intermediate_size=96)
        reports.append(prune_model(model, _inputs(model), PruningConfig(**ERROR_ALLOCATION, ratio=0.3), reduce=reduce,
                                   progress=False))
    assert len(calls) == 3 + 3  # allocation pass: one per layer; pruning pass: one per layer
    assert reports[0].plan.layers == reports[1].plan.layers


# -- dense targets (pruning/dense_target.py) -------------------------------------------------------------
@pytest.mark.parametrize("arithmetic", ["fast", "float64"])
@pytest.mark.parametrize("compensation", ["rotation", "rotation_scale", "least_squares", "affine_least_squares"])
def test_dense_targets_with_identical_streams_reduce_to_the_ordinary_compensation(compensation, arithmetic):
    # one layer and no head removed: the dense and pruned streams never differ, so t = W x
    dtype = torch.float64 if arithmetic == "float64" else torch.float32  # the model's and its outputs'
    states = []
    for target in ("pruned", "dense"):
        model = make_tiny_llama(**GQA, num_layers=1).to(dtype)
        _prune(model, compensation=compensation, attn_ratio=0.0, mlp_ratio=0.4, compensation_target=target, ls_lambda=1e-3,
               arithmetic=arithmetic)
        states.append(_state(model))
    # Same algebra, different rounding: the ordinary path forms W G[:, K] from G, the dense one sums
    # C = Σ t xᵀ with t = W x the module's output (in the model's dtype), so C's entries carry the error of
    # a (d_in + N)-term sum of products. Only down_proj is compensated (no head goes); its solve amplifies
    # a relative perturbation of the right-hand side by at most the condition number κ of its ridge Gram
    # (a principal submatrix's κ is at most the full matrix's, by interlacing); the rotations take the
    # polar factor of the same perturbed product and stay inside the same bound. κ ≈ 5e2 here: the bound
    # is ~6e-3 in float32 (observed ~1e-6) and ~1e-11 in float64 (observed ~1e-14); a wrong target moves
    # the weights by ~1e-1.
    kappa, tokens, d_in = _down_proj_ridge_condition(make_tiny_llama(**GQA, num_layers=1), lam=1e-3)
    scale = max(float(v.abs().max()) for v in states[0].values())
    tol = rounding_bound(d_in + tokens, scale, dtype, condition=kappa)
    for name, value in states[0].items():
        torch.testing.assert_close(states[1][name], value, atol=tol, rtol=0, msg=name)


def _down_proj_ridge_condition(model, lam: float) -> tuple[float, int, int]:
    """Condition number of layer 0's down_proj ridge Gram on the calibration tokens (the larger of
    ``G/n + λI``, least squares, and ``Σ + λ mean(diag Σ) I``, affine), the token count and d_in."""
    xs = []
    down = layer_parts(decoder_layers(model)[0]).down_proj
    hook = down.register_forward_pre_hook(lambda m, a: xs.append(a[0].reshape(-1, m.in_features)))
    with torch.no_grad():
        model(_ids())
    hook.remove()
    x = torch.cat(xs).double()  # [N, d]
    gram, mean = x.T @ x / len(x), x.mean(0)
    cov = gram - torch.outer(mean, mean)
    eye = torch.eye(x.shape[1], dtype=x.dtype)
    conds = [torch.linalg.cond(gram + lam * eye), torch.linalg.cond(cov + lam * cov.diagonal().mean() * eye)]
    return max(float(c) for c in conds), len(x), x.shape[1]


def test_dense_target_least_squares_equals_the_stored_activation_fit():
    """o_proj of one layer whose pruned-stream inputs differ from the dense ones: the affine fit of
    t = W u_dense + (x_dense - x_pruned) on the kept columns of u_pruned, solved from stored activations."""
    from rcpu_lightning.pruning.dense_target import DenseTargets, copy_layer
    from rcpu_lightning.pruning.engine import prune_layer

    model = make_tiny_llama(**GQA, num_layers=1)
    layer = decoder_layers(model)[0]
    dense_inputs = _inputs(model)
    g = torch.Generator().manual_seed(4)
    pruned_batches = [(h + 0.3 * torch.randn(h.shape, generator=g), kw) for h, kw in dense_inputs.batches]
    dense_batches = dense_inputs.batches
    store = {"u": [], "u_pruned": []}
    reference = copy_layer(layer)
    hook = reference.self_attn.o_proj.register_forward_pre_hook(lambda m, a: store["u"].append(a[0].reshape(-1, 48)))
    with torch.no_grad():
        for h, kw in dense_batches:
            reference(h, **kw)
        hook.remove()
        hook = reference.self_attn.o_proj.register_forward_pre_hook(lambda m, a: store["u_pruned"].append(a[0].reshape(-1, 48)))
        for h, kw in pruned_batches:
            reference(h, **kw)
        hook.remove()
    W = reference.self_attn.o_proj.weight.double()
    u, u_p = torch.cat(store["u"]).double(), torch.cat(store["u_pruned"]).double()
    x = torch.cat([h.reshape(-1, 48) for h, _ in dense_batches]).double()
    x_p = torch.cat([h.reshape(-1, 48) for h, _ in pruned_batches]).double()
    t = u @ W.T + x - x_p  # [N, hidden]
    config = PruningConfig(ratio=0.34, compensation="affine_least_squares", ls_lambda=1e-12, compensation_target="dense",
                           arithmetic="float64")
    with torch.no_grad():
        source = DenseTargets(dense_batches, config, None)  # the dense stream: a copy of the dense inputs
        plan, _ = prune_layer(0, layer_parts(layer), pruned_batches, (2, 16), config, source, True)
    cols = torch.tensor([h * 8 + j for h in plan.kept_heads for j in range(8)])
    design = torch.cat([u_p[:, cols], torch.ones(len(u_p), 1, dtype=torch.float64)], 1)
    solution = torch.linalg.lstsq(design, t).solution  # [|K| + 1, hidden]
    torch.testing.assert_close(layer.self_attn.o_proj.weight.double(), solution[:-1].T, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(layer.self_attn.o_proj.bias.double(), solution[-1], atol=1e-6, rtol=1e-6)


def test_dense_target_needs_a_compensation_that_fits_targets():
    with pytest.raises(ValueError, match="compensation_target='dense'.*compensation='bias'"):
        PruningConfig(method="flap", compensation_target="dense")


@pytest.mark.parametrize("value", ["dense", "pruned"])
def test_the_old_target_key_is_refused_naming_compensation_target(value):
    with pytest.raises(ValueError, match="'target' was renamed 'compensation_target'"):
        PruningConfig(target=value)
    with pytest.raises(ValueError, match="'target' was renamed 'compensation_target'"):
        PruningConfig(**{"ratio": 0.2, "target": value})  # a dict read from YAML or an old results row
    assert "target" not in PruningConfig().to_dict()


def test_compensated_error_selection_leaves_less_down_proj_error_than_scores():
    # one layer, no head removed: down_proj sees the dense inputs, so its output error is its own
    errors = {}
    for selection in ("score", "compensated_error"):
        model = make_tiny_llama(**GQA, num_layers=1, intermediate_size=96)
        dense = copy.deepcopy(model)
        report = _prune(model, attn_ratio=0.0, mlp_ratio=0.5, compensation="affine_least_squares", ls_lambda=1e-3,
                        selection=selection)
        assert report.layers[0]["channels"] == 48
        seen = {}
        for name, m in (("dense", dense), ("pruned", model)):  # the pruned down_proj is a new module
            m.model.layers[0].mlp.down_proj.register_forward_hook(
                lambda mod, args, out, name=name: seen.setdefault(name, []).append(out))
        _logits(dense, _ids()), _logits(model, _ids())
        errors[selection] = float(sum(((a - b) ** 2).sum() for a, b in zip(seen["dense"], seen["pruned"])))
    assert errors["compensated_error"] < 0.9 * errors["score"], errors


def test_added_bias_count_matches_the_biases_a_bias_compensation_adds():
    from rcpu_lightning.pruning.surgery import added_bias_params

    for shape, cfg in (({}, dict(ratio=0.5)), (GQA, dict(ratio=0.34)), (GQA, dict(ratio=0.5, gqa_mode="whole_group"))):
        model = make_tiny_llama(**shape, num_layers=1)
        parts = layer_parts(decoder_layers(copy.deepcopy(model))[0])  # the dense layer (parts are live views)
        report = _prune(model, compensation="bias", head_rounding="nearest", **cfg)
        heads, channels = parts.num_heads - report.layers[0]["heads"], parts.intermediate_size - report.layers[0]["channels"]
        predicted = added_bias_params(parts, {"attn", "mlp"}, heads, channels, cfg.get("gqa_mode", "per_group"))
        biases = sum(m.bias.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m.bias is not None)
        assert predicted == biases, (shape, cfg)


def test_statistics_pass_stops_before_down_proj_with_the_same_statistics():
    from rcpu_lightning.models.adapter import decoder_layers, layer_parts
    from rcpu_lightning.pruning.engine import layer_stats, run_layer
    from rcpu_lightning.pruning.stats import collect_input_stats

    model = make_tiny_llama(**GQA)
    batches = list(_inputs(model).batches)
    layer, config = decoder_layers(model)[0], PruningConfig(compensation="rotation_scale")  # full Gram statistics
    parts = layer_parts(layer)
    modules = {"o_proj": parts.o_proj, "down_proj": parts.down_proj}
    with collect_input_stats(modules, torch.float64, False, torch.float32) as whole:  # the whole layer, as fast does
        run_layer(layer, batches, offload=False, replace=False)
    calls = []
    handle = parts.down_proj.register_forward_hook(lambda *a: calls.append(1))
    stopped = layer_stats(parts, batches, modules, config, None, 0)
    handle.remove()
    assert calls == []  # down_proj itself never ran
    for name in modules:  # exact: the same hooks sum the same products in the same order (the stop only
        for got, want in zip(stopped[name].tensors(), whole[name].tensors()):  # skips what comes after)
            torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert not parts.down_proj._forward_pre_hooks  # the stop is removed afterwards


def test_the_catcher_records_only_the_first_max_rows_sequences():
    from rcpu_lightning.pruning import LayerInputCatcher

    model, ids = make_tiny_llama(**GQA), _ids(5, batch=9)
    with LayerInputCatcher(model, max_rows=5) as catcher, torch.no_grad():
        for batch in ids.split(3):  # rows 0-2, 3-5 (two kept), 6-8 (none)
            model(batch)
    want = capture_layer_inputs(model, [ids[:5]])
    assert [h.shape[0] for h, _ in catcher.inputs.batches] == [3, 2]
    # layer 0's input is the embedding lookup (no arithmetic): the same rows give the same values
    torch.testing.assert_close(torch.cat([h for h, _ in catcher.inputs.batches]), want.batches[0][0])
    for h, kw in catcher.inputs.batches:  # every per-row kwarg sliced with its rows
        assert all(v.shape[0] in (1, h.shape[0]) for v in kw.values() if isinstance(v, torch.Tensor) and v.dim() >= 2)


def test_layer_parts_held_across_a_cut_reads_the_new_modules():
    # surgery replaces modules; a LayerParts made before the prune must not go on reading the old ones
    model = make_tiny_llama(**GQA, num_layers=1)
    layer = decoder_layers(model)[0]
    parts = layer_parts(layer)
    old = {name: getattr(parts, name) for name in ("q_proj", "o_proj", "gate_proj", "down_proj")}
    heads, channels = parts.num_heads, parts.intermediate_size
    report = _prune(model, ratio=0.34)
    for name, module in old.items():
        assert getattr(parts, name) is not module, name
    assert parts.o_proj is layer.self_attn.o_proj and parts.down_proj is layer.mlp.down_proj
    assert (parts.num_heads, parts.intermediate_size) == (report.layers[0]["heads"], report.layers[0]["channels"])
    assert parts.num_heads < heads and parts.intermediate_size < channels


def test_prune_copy_prunes_a_copy_on_windows_as_prune_model_does():
    from rcpu_lightning.pruning import prune_copy

    model, config = make_tiny_llama(**GQA), PruningConfig(ratio=0.34)
    dense = _state(model)
    pruned, report = prune_copy(model, _ids(), config, batch_size=2)
    _assert_same_state(_state(model), dense)  # the caller's model is untouched
    by_hand = copy.deepcopy(model)
    expected = prune_model(by_hand, _inputs(by_hand, split=2), config, progress=False)
    assert report.plan.layers == expected.plan.layers
    for name, value in _state(by_hand).items():  # the same kernels on the same batches: default float32 tolerance
        torch.testing.assert_close(_state(pruned)[name], value, msg=name)
    with pytest.raises(ValueError, match="batch_size"):
        prune_copy(model, _ids(), config)  # windows [N, T] need a batch size
    same, _ = prune_copy(model, _ids().split(2), config, copy_model=False)  # batches given; pruned in place
    assert same is model and decoder_layers(model)[0].self_attn.q_proj.out_features < dense[
        "model.layers.0.self_attn.q_proj.weight"].shape[0]


def test_cross_term_statistics_replace_the_gram_for_the_rotation():
    """``fast`` rotation: down_proj's statistics keep diag(G) and C = Σ (W x) xᵀ (= W G) instead of G."""
    from rcpu_lightning.models.adapter import decoder_layers, layer_parts
    from rcpu_lightning.pruning.compensation import uses_cross_term
    from rcpu_lightning.pruning.engine import layer_stats

    model = make_tiny_llama(**GQA)
    batches = list(_inputs(model).batches)
    parts = layer_parts(decoder_layers(model)[0])
    modules = {"o_proj": parts.o_proj, "down_proj": parts.down_proj}
    fast, gram_config = PruningConfig(), PruningConfig(compensation="rotation_scale")
    assert uses_cross_term(fast) and not uses_cross_term(gram_config)
    assert not uses_cross_term(PruningConfig(arithmetic="float64"))
    assert not uses_cross_term(PruningConfig(selection="compensated_error"))
    cross, gram = layer_stats(parts, batches, modules, fast, None, 0), layer_stats(parts, batches, modules, gram_config, None, 0)
    assert not cross["o_proj"].diag_only and cross["o_proj"].C is None  # o_proj keeps G (rank-deficient M)
    for name, module in modules.items():
        c, g = cross[name], gram[name]
        if name == "o_proj":
            torch.testing.assert_close(c.G, g.G, rtol=1e-12, atol=0)  # the same products summed in the same order
            continue
        assert c.diag_only and c.C.shape == (module.out_features, module.in_features)
        w = module.weight.detach().double()
        # C sums float32 products y xᵀ of the forward's float32 outputs; W G sums float32 x xᵀ: both are
        # float32 roundings of the same float64 sums, relative error ~ sqrt(tokens) · 6e-8 ≈ 1e-6 here
        torch.testing.assert_close(c.C, w @ g.G, rtol=1e-5, atol=1e-5 * float((w @ g.G).abs().max()))
        torch.testing.assert_close(c.diag(), g.diag(), rtol=1e-6, atol=0)
        for got, want in zip((c.n, c.s1, c.sabs), (g.n, g.s1, g.sabs)):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


def test_rotation_from_the_cross_term_equals_the_float64_gram_rotation():
    """The whole prune: the ``fast`` arithmetic (cross term, float32 products) and the ``float64`` one (the
    equations as written, on G) give the same model to float32 accuracy."""
    from rcpu_lightning.pruning import prune_copy

    model = make_tiny_llama(**GQA)
    fast, _ = prune_copy(model, _ids(8, batch=8), PruningConfig(ratio=0.3), batch_size=4)
    exact, _ = prune_copy(model, _ids(8, batch=8), PruningConfig(ratio=0.3, arithmetic="float64"), batch_size=4)
    for (name, a), (_, b) in zip(fast.state_dict().items(), exact.state_dict().items()):
        # float32 forwards and products (eps 6e-8) through a polar factor whose error grows with the
        # condition number of M (~1e2 on a tiny random layer): 1e-5 relative on each weight matrix
        assert a.shape == b.shape, name
        assert float((a - b).norm() / b.norm().clamp_min(1e-30)) < 1e-5, name  # seen: 2.5e-7


def test_each_layer_reports_the_seconds_of_its_phases():
    from rcpu_lightning.pruning import prune_copy
    from rcpu_lightning.pruning.progress import PHASES

    events = []
    _, report = prune_copy(make_tiny_llama(**GQA), _ids(), PruningConfig(ratio=0.3), batch_size=2,
                           progress=events.append)
    assert len(events) == len(report.layers) == 2
    for event, layer in zip(events, report.layers):
        assert list(event.phases) == list(PHASES)  # every phase ran, recorded in the order it ran
        assert all(t >= 0 for t in event.phases.values())
        assert sum(event.phases.values()) <= event.seconds  # the phases are parts of the layer's wall time
        assert layer["seconds"] == event.phases  # and the report keeps them per layer


@pytest.mark.parametrize("config", [
    dict(ratio=0.34, head_rounding="nearest"),  # GQA, equal numbers per kv group
    dict(ratio=0.5, gqa_mode="whole_group", head_rounding="nearest"),  # whole kv groups: k/v rows go too
    dict(method="flap", compensation="bias", structure="al_am", ratio=0.3),  # o_proj gains a bias; al_am counts
    dict(ratio=0.34, head_rounding="nearest", compensation="rotation_scale", offload_inputs=True),  # Gram path
], ids=["gqa", "whole-group", "flap-bias", "gram-offload"])
def test_the_pruned_forward_from_the_kept_heads_attention_equals_the_whole_layer_forward(monkeypatch, config):
    """The paper's order keeps o_proj's inputs from the dense pass and starts the pruned layer's forward at
    o_proj; it must give what running the whole pruned layer gives."""
    from rcpu_lightning.pruning import prune_copy, stats_sources
    from rcpu_lightning.pruning.layer_runs import PlainForward
    from rcpu_lightning.pruning.stats_sources import OwnOutputs

    calls, real = [], stats_sources.run_pruned_layer_on_attention
    monkeypatch.setattr(stats_sources, "run_pruned_layer_on_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    model, cfg = make_tiny_llama(**GQA, num_layers=3), PruningConfig(**config)
    reused, _ = prune_copy(model, _ids(8, batch=8), cfg, batch_size=4)
    assert len(calls) == 3  # every layer's pruned forward started at o_proj
    monkeypatch.setattr(OwnOutputs, "next_inputs", PlainForward.next_inputs)  # the whole pruned layer runs
    whole, _ = prune_copy(model, _ids(8, batch=8), cfg, batch_size=4)
    assert len(calls) == 3
    ids = _ids(9)
    with torch.no_grad():
        # the same float32 operations on the same inputs, except the q/k/v/attention results are those of the
        # dense run instead of a run of the sliced projections (BLAS may block a narrower product differently):
        # differences of a few float32 ulps, carried through 3 layers' statistics and compensations
        torch.testing.assert_close(reused(ids).logits, whole(ids).logits, rtol=1e-4, atol=1e-4)
    for (name, a), (_, b) in zip(reused.state_dict().items(), whole.state_dict().items()):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
