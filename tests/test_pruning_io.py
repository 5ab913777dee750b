"""Saving and reloading pruned models: plain from_pretrained, load_pruned, apply_plan_shapes."""

from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import make_tiny_llama, rounding_bound
from rcpu_lightning.models.adapter import decoder_layers, layer_parts
from rcpu_lightning.pruning import (
    PruningConfig,
    PruningPlan,
    apply_plan_shapes,
    capture_layer_inputs,
    load_pruned,
    prune_model,
    save_pruned,
)

GQA = dict(num_heads=6, num_kv_heads=2)


def _ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(seed))


def _pruned(shape: dict, **cfg):
    model = make_tiny_llama(**shape)
    report = prune_model(model, capture_layer_inputs(model, _ids().split(2)), PruningConfig(**cfg), progress=False)
    return model, report


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(_ids(9)).logits


def _assert_same_logits(got: torch.Tensor, want: torch.Tensor) -> None:
    """Logits of the same float32 weights (safetensors copies them bit for bit) whose forwards may run
    other kernels (a fresh module's attention implementation, another memory layout: another summation
    order). A logit sums ~200 terms through 2 layers of width 48 (hidden + intermediate + 16 positions
    each): rounding_bound ~1e-4 at |logit| ≤ 5; a wrong head order or a lost bias is O(1) off."""
    torch.testing.assert_close(got, want, atol=rounding_bound(200, float(want.abs().max()), torch.float32), rtol=0)


@pytest.mark.parametrize(
    "shape,cfg,kv",
    [
        (GQA, dict(ratio=0.34), 2),  # per_group: standard GQA checkpoint, k/v untouched
        (GQA, dict(ratio=0.5, gqa_mode="whole_group"), 1),
        ({}, dict(method="flap", ratio=0.25), 3),  # Llama + bias compensation
    ],
    ids=["gqa-per-group", "gqa-whole-group", "mha-flap-bias"],
)
def test_uniform_result_reloads_with_plain_from_pretrained(tmp_path, shape, cfg, kv):
    model, report = _pruned(shape, **cfg)
    save_pruned(model, report.plan, tmp_path / "ckpt")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    assert reloaded.config.num_key_value_heads == kv
    _assert_same_logits(_logits(reloaded), _logits(model))
    _assert_same_logits(_logits(load_pruned(tmp_path / "ckpt")), _logits(model))
    plan = json.loads((tmp_path / "ckpt" / "pruning_plan.json").read_text())
    assert PruningPlan.from_dict(plan) == report.plan


def test_flap_bias_sets_llama_bias_flags_with_zero_qkv_biases():
    model, report = _pruned({}, method="flap", ratio=0.25)
    assert model.config.attention_bias and model.config.mlp_bias
    parts = layer_parts(decoder_layers(model)[0])
    assert torch.count_nonzero(parts.q_proj.bias) == 0 and torch.count_nonzero(parts.o_proj.bias) > 0
    assert report.plan.layers[0].added_biases == ["o_proj", "down_proj"]


def test_al_am_plan_reloads_with_load_pruned(tmp_path):
    model, report = _pruned(GQA, method="flap", structure="al_am", ratio=0.3)
    shapes = {(lp.num_heads, lp.intermediate_size) for lp in report.plan.layers}
    assert len(shapes) > 1  # genuinely non-uniform
    save_pruned(model, report.plan, tmp_path / "alam")
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):  # config holds dense shapes: loud
        AutoModelForCausalLM.from_pretrained(tmp_path / "alam")
    reloaded = load_pruned(tmp_path / "alam")
    assert type(reloaded) is type(model)
    _assert_same_logits(_logits(reloaded), _logits(model))
    as_double = load_pruned(tmp_path / "alam", dtype=torch.float64)  # from_pretrained kwargs pass through
    assert as_double.dtype == torch.float64
    # the float32 forward's own round-off against float64 on the same weights: the bound of _assert_same_logits
    _assert_same_logits(_logits(as_double).float(), _logits(model))
    for a, b in zip(decoder_layers(reloaded), decoder_layers(model)):
        assert a.self_attn.num_key_value_groups == b.self_attn.num_key_value_groups


def test_head_count_not_dividing_hidden_size_reloads_with_load_pruned(tmp_path):
    # 6 -> 5 heads with hidden 48: LlamaConfig rejects 48 % 5 != 0 at construction
    model, report = _pruned(dict(num_heads=6, num_kv_heads=6), ratio=0.17)
    assert model.config.num_attention_heads == 5
    save_pruned(model, report.plan, tmp_path / "odd")
    reloaded = load_pruned(tmp_path / "odd")
    assert reloaded.config.num_attention_heads == 5
    _assert_same_logits(_logits(reloaded), _logits(model))
    # an existing checkpoint is never replaced unasked; with overwrite=True it is replaced atomically
    # unless it holds a file this tool did not write; no temporary folder is left behind either way
    with pytest.raises(FileExistsError, match="already exists.*overwrite=True"):
        save_pruned(model, report.plan, tmp_path / "odd")
    (tmp_path / "odd" / "mine.txt").write_text("the user's")
    with pytest.raises(FileExistsError, match=r"files this tool did not write \(mine.txt\)"):
        save_pruned(model, report.plan, tmp_path / "odd", overwrite=True)
    assert (tmp_path / "odd" / "mine.txt").read_text() == "the user's"
    (tmp_path / "odd" / "mine.txt").unlink()
    save_pruned(model, report.plan, tmp_path / "odd", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd"]
    assert (tmp_path / "odd" / "config.json").stat().st_mode & 0o777 == 0o666 & ~_umask()  # not 0600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_apply_plan_shapes_then_state_dict_rebuilds_the_pruned_model():
    model, report = _pruned(GQA, method="flap", structure="al_am", ratio=0.3)
    plan = PruningPlan.from_dict(json.loads(json.dumps(report.plan.to_dict())))
    fresh = apply_plan_shapes(make_tiny_llama(**GQA, seed=5), plan)
    fresh.load_state_dict(model.state_dict(), strict=True)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())  # copies: exact
    _assert_same_logits(_logits(fresh), _logits(model))


def test_report_is_json_serialisable_and_counts_parameters():
    model, report = _pruned({}, ratio=0.5)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["params_after"] == sum(p.numel() for p in model.parameters()) < data["params_before"]
    assert 0 < data["decoder_params_removed"] < 1 and len(data["layer_params_removed"]) == 2
    assert data["plan"]["layers"][0]["kept_heads"] == report.plan.layers[0].kept_heads


def test_qwen2_bias_compensation_needs_load_pruned(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=64, hidden_size=48, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64)
    model = Qwen2ForCausalLM(config).eval()
    report = prune_model(model, capture_layer_inputs(model, _ids().split(2)),
                         PruningConfig(method="flap", ratio=0.34), progress=False)
    parts = layer_parts(decoder_layers(model)[0])
    assert parts.q_proj.bias.shape == (32,) and parts.o_proj.bias is not None  # q bias sliced with its rows
    save_pruned(model, report.plan, tmp_path / "qwen")
    reloaded = load_pruned(tmp_path / "qwen")  # Qwen2 has no o_proj bias flag: the plan carries it
    assert layer_parts(decoder_layers(reloaded)[1]).o_proj.bias is not None
    _assert_same_logits(_logits(reloaded), _logits(model))


def test_two_pruning_steps_compose_into_one_plan_that_rebuilds_the_model():
    model, first = _pruned(GQA, ratio=0.34)  # 6 -> 4 heads, 48 -> 32 channels
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(3))
    second = prune_model(model, capture_layer_inputs(model, ids.split(2)), PruningConfig(ratio=0.5), progress=False)
    plan = first.plan.then(second.plan)
    for lp, a, b in zip(plan.layers, first.plan.layers, second.plan.layers):
        assert lp.kept_heads == [a.kept_heads[i] for i in b.kept_heads] and set(lp.kept_heads) <= set(a.kept_heads)
        assert lp.num_heads == b.num_heads and lp.intermediate_size == b.intermediate_size == 16
    rebuilt = apply_plan_shapes(make_tiny_llama(**GQA), plan)
    rebuilt.load_state_dict(model.state_dict())  # the composed plan has the twice-pruned shapes
    torch.testing.assert_close(_logits(rebuilt), _logits(model))
    with pytest.raises(ValueError, match="layers"):
        plan.then(PruningPlan(plan.model_type, plan.dense, plan.layers[:1]))


@pytest.mark.parametrize("writer", ["save_pruned", "prune_checkpoint"])
def test_a_uniform_prune_whose_head_dim_is_no_longer_hidden_over_heads_loads_with_plain_from_pretrained(
        tmp_path, monkeypatch, writer):
    # transformers 4 (pyproject allows >= 4.56) writes only the values that differ from a default config,
    # whose head_dim is 4096 // 32 = 128, so head_dim 128 is left out of config.json and a loader takes
    # hidden // heads = 512 // 2 = 256 once whole kv groups go (4 -> 2 heads). transformers 5 keeps it;
    # its diff is made to behave as 4's here.
    from transformers import LlamaConfig

    from rcpu_lightning.pruning.streaming import prune_checkpoint

    diff = LlamaConfig.to_diff_dict
    monkeypatch.setattr(LlamaConfig, "to_diff_dict",
                        lambda self: {k: v for k, v in diff(self).items() if (k, v) != ("head_dim", 128)})

    model = make_tiny_llama(num_heads=4, num_kv_heads=2, head_dim=128, hidden_size=512, intermediate_size=64,
                            num_layers=1)
    config = PruningConfig(ratio=0.5, gqa_mode="whole_group", head_rounding="nearest")
    if writer == "save_pruned":
        report = prune_model(model, capture_layer_inputs(model, _ids().split(2)), config, progress=False)
        save_pruned(model, report.plan, tmp_path / "ckpt")
    else:
        model.save_pretrained(tmp_path / "dense")
        report = prune_checkpoint(tmp_path / "dense", tmp_path / "ckpt", config, _ids().split(2), progress=False)
        model = load_pruned(tmp_path / "ckpt")
    assert report.plan.layers[0].num_heads == 2
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    assert (reloaded.config.num_attention_heads, reloaded.config.head_dim) == (2, 128)
    _assert_same_logits(_logits(reloaded), _logits(model))


def test_the_report_of_a_saved_folder_reads_back_into_the_results_keys_it_was_written_from():
    """``report_fields`` (callback summary -> pruning_report.json) and ``summary_fields`` (the report ->
    a results record) come from one mapping: a summary written and read back keeps every fact."""
    from rcpu_lightning.pruning.io import REPORT_KEYS, report_fields, summary_fields

    summary = {key: float(i) for i, key in enumerate(REPORT_KEYS.values())}
    summary.update(notes=["a note"], pruning_steps=[{"epoch": 0}], method="rcpu")
    report = report_fields(summary)
    assert report["seconds"] == summary["prune_seconds"] and report["world_size"] == summary["prune_world_size"]
    assert report["notes"] == ["a note"] and "method" not in report  # the settings live in the plan
    assert summary_fields(json.loads(json.dumps(report))) == {k: summary[k] for k in REPORT_KEYS.values()}
