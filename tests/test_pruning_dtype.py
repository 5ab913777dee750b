"""bf16 models end to end (issue 26): a bf16 model prunes in bf16 (``execution_dtype`` null) or with its
layers and activations in float32 (``execution_dtype: float32``, for CPUs without native bf16); either way
the statistics and the compensation run in float32/float64 and the weights come back in bf16."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from conftest import make_tiny_llama
from rcpu_lightning.models.adapter import decoder_layers
from rcpu_lightning.pruning import PruningConfig, capture_layer_inputs, load_pruned, prune_model, save_pruned
from rcpu_lightning.pruning import compensation, engine
from rcpu_lightning.pruning.engine import prune_copy
from rcpu_lightning.pruning.stats import ChannelStats
from rcpu_lightning.pruning.streaming import prune_checkpoint

GQA = dict(num_heads=6, num_kv_heads=2, num_layers=3)
BF16_EPS = torch.finfo(torch.bfloat16).eps  # 2^-7: one bf16 ulp of x is at most BF16_EPS * |x|


def _windows(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(seed))  # [8, 16]


def _bf16_model(**shape) -> torch.nn.Module:
    """A tiny bf16 Llama as ``from_pretrained(..., dtype=torch.bfloat16)`` builds one: the rotary
    frequencies stay float32 (``Module.to`` alone would round them to bf16: another model)."""
    model = make_tiny_llama(**(shape or GQA))
    inv_freq = model.model.rotary_emb.inv_freq
    model.to(torch.bfloat16).model.rotary_emb.inv_freq = inv_freq
    return model


class _LayerRuns:
    """Records, for every forward of a decoder layer, the dtype of its input and of its first weight (its
    input norm's; its linear layers must match the input: torch refuses a product of mixed dtypes).

    The hook sits on that norm (the capture stops at the layer's own pre-hook, before any of its work)
    and is a plain function: a deep copy of the model shares it, so the copy records here too."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.seen: set[tuple[torch.dtype, torch.dtype]] = set()
        seen = self.seen

        def hook(norm, args):
            seen.add((args[0].dtype, norm.weight.dtype))

        self.handles = [layer.input_layernorm.register_forward_pre_hook(hook) for layer in decoder_layers(model)]

    def close(self) -> set:
        for h in self.handles:
            h.remove()
        return self.seen


def _close_in_bf16(actual: torch.Tensor, expected32: torch.Tensor, name: str) -> None:
    """``actual`` (bf16) equals ``expected32`` rounded to bf16 to within one bf16 ulp (+1e-6 absolute).

    Both sides are the same float32 kernels on the same values in the same order; a BLAS may still
    round the last bits differently (~1e-6 at these magnitudes, |w| <= ~1), which flips the bf16
    rounding of a value that lies that close to a rounding boundary: one ulp (<= 2^-7 |x|). A value that
    cancels to near zero can differ by that 1e-6 absolutely. A real difference (another selection, the
    rotary or the statistics in bf16) moves most weights by many ulps."""
    assert actual.dtype == torch.bfloat16, (name, actual.dtype)
    torch.testing.assert_close(actual.float(), expected32.to(torch.bfloat16).float(), rtol=BF16_EPS, atol=1e-6,
                               msg=name)


def test_a_bf16_model_pruned_as_it_is_runs_in_bf16_with_float64_statistics(monkeypatch):
    model = _bf16_model()
    updates, compensations = set(), set()
    update, fast_rotation = ChannelStats.update_with_outputs, compensation.fast_rotation

    def recording_update(self, x, y, product_dtype=None):  # the rotation's statistics: diag(G) and C = Σ y xᵀ
        updates.add((x.dtype, y.dtype, product_dtype, self.G.dtype))
        return update(self, x, y, product_dtype)

    def recording_rotation(weight, G, keep, *args, **kwargs):
        compensations.add((weight.dtype, G.dtype))
        return fast_rotation(weight, G, keep, *args, **kwargs)

    monkeypatch.setattr(ChannelStats, "update_with_outputs", recording_update)
    monkeypatch.setattr(compensation, "fast_rotation", recording_rotation)
    pruned = copy.deepcopy(model)
    runs = _LayerRuns(pruned)
    inputs = capture_layer_inputs(pruned, _windows().split(4))
    report = prune_model(pruned, inputs, PruningConfig(ratio=0.34, head_rounding="nearest"), progress=False)
    # every forward in bf16: the layer's inputs and all its weights
    assert runs.close() == {(torch.bfloat16, torch.bfloat16)}
    # bf16 inputs and outputs, float32 products, float64 sums
    assert updates == {(torch.bfloat16, torch.bfloat16, torch.float32, torch.float64)}
    assert compensations == {(torch.float32, torch.float64)}  # the rotation's weight in float32, G in float64
    assert {t.dtype for t in pruned.state_dict().values()} == {torch.bfloat16} and pruned.dtype == torch.bfloat16
    assert report.decoder_params_removed > 0.2 and report.plan.config["execution_dtype"] is None
    assert all(h.dtype == torch.bfloat16 for h, _ in inputs.batches)  # the caller's inputs left as they were


@pytest.mark.parametrize("config", [
    dict(ratio=0.34, head_rounding="nearest"),
    dict(method="flap", structure="al_am", ratio=0.3),  # AL-AM's dense pass, FLAP's added biases
    dict(structure="al_am", allocation="compensated_error", compensation="affine_least_squares", ratio=0.3,
         selection="compensated_error"),
    dict(ratio=0.34, head_rounding="nearest", execution_device="cpu", offload_inputs=True, refresh_mlp_stats=True),
    dict(ratio=0.34, head_rounding="nearest", compensation_target="dense", arithmetic="float64"),
], ids=["rcpu", "flap-al-am", "error-allocation", "device-offload-refresh", "dense-target-float64"])
def test_float32_execution_of_a_bf16_model_is_the_float32_prune_of_its_upcast_rounded_to_bf16(config):
    model = _bf16_model()
    runs = _LayerRuns(model)  # hooks copied with the model into prune_copy's copy
    pruned, report = prune_copy(model, _windows(), PruningConfig(execution_dtype="float32", **config), batch_size=4)
    assert runs.close() == {(torch.float32, torch.float32)}  # every forward of the prune in float32
    upcast = copy.deepcopy(model).float()  # exactly the bf16 values
    expected, expected_report = prune_copy(upcast, _windows(), PruningConfig(**config), batch_size=4)
    assert report.plan.layers == expected_report.plan.layers  # the same heads and channels, the same added biases
    assert report.plan.config["execution_dtype"] == "float32"
    assert pruned.state_dict().keys() == expected.state_dict().keys()
    for name, value in expected.state_dict().items():
        _close_in_bf16(pruned.state_dict()[name], value, name)
    assert pruned.dtype == model.dtype == torch.bfloat16


def test_bf16_execution_differs_from_float32_execution_by_more_than_rounding():
    # the knob does something: forwards in bf16 (null) round every activation, so its weights are not
    # the float32 prune's rounded (on this tiny random model most weights move by one ulp or more)
    model = _bf16_model()
    in_bf16, _ = prune_copy(model, _windows(), PruningConfig(ratio=0.34, head_rounding="nearest"), batch_size=4)
    in_f32, _ = prune_copy(model, _windows(), PruningConfig(ratio=0.34, head_rounding="nearest",
                                                            execution_dtype="float32"), batch_size=4)
    down = "model.layers.2.mlp.down_proj.weight"
    differ = (in_bf16.state_dict()[down] != in_f32.state_dict()[down]).float().mean()
    assert differ > 0.1 and in_bf16.state_dict()[down].dtype == in_f32.state_dict()[down].dtype == torch.bfloat16


def test_out_of_core_float32_execution_writes_bf16_shards_equal_to_the_in_memory_prune(tmp_path):
    source = tmp_path / "dense"
    _bf16_model().save_pretrained(source, max_shard_size="30KB")
    config = PruningConfig(ratio=0.34, head_rounding="nearest", execution_dtype="float32")
    batches = list(_windows().split(4))
    streamed = prune_checkpoint(source, tmp_path / "pruned", config, batches, progress=False)
    shards = sorted((tmp_path / "pruned").glob("*.safetensors"))
    assert len(shards) == 3 + 3  # one per layer + embeddings, norm, LM head
    for shard in shards:
        with safe_open(shard, framework="pt") as fh:
            assert {fh.get_slice(k).get_dtype() for k in fh.keys()} == {"BF16"}, shard.name
    assert json.loads((tmp_path / "pruned" / "config.json").read_text())["dtype"] == "bfloat16"
    in_memory, report = prune_copy(_bf16_model(), torch.cat(batches), config, batch_size=4)
    assert streamed.plan.layers == report.plan.layers
    loaded = load_pruned(tmp_path / "pruned", dtype=torch.bfloat16)
    assert loaded.state_dict().keys() == in_memory.state_dict().keys()
    for name, value in in_memory.state_dict().items():  # the same float32 kernels: one bf16 ulp at most
        _close_in_bf16(loaded.state_dict()[name], value.float(), name)


@pytest.mark.parametrize("bad", ["bf16", "float64", "int8", torch.bfloat16])
def test_a_bad_execution_dtype_is_refused_when_the_config_is_made(bad):
    # PruningConfig checks in __post_init__, so no prune can start with it (no weight is ever touched)
    with pytest.raises(ValueError, match=r"execution_dtype=.* is not supported; allowed values: \['float32', "
                                         r"'bfloat16', 'float16', None\]"):
        PruningConfig(execution_dtype=bad)


def test_plans_record_the_execution_dtype_and_older_plans_without_it_still_load(tmp_path):
    model = make_tiny_llama(**GQA)
    pruned, report = prune_copy(model, _windows(), PruningConfig(ratio=0.34, head_rounding="nearest",
                                                                 execution_dtype="bfloat16"), batch_size=4)
    assert report.plan.config["execution_dtype"] == "bfloat16"
    assert {t.dtype for t in pruned.state_dict().values()} == {torch.float32}  # back in the model's dtype
    save_pruned(pruned, report.plan, tmp_path / "p")
    plan_file = tmp_path / "p" / "pruning_plan.json"
    plan = json.loads(plan_file.read_text())
    assert plan["config"]["execution_dtype"] == "bfloat16"
    del plan["config"]["execution_dtype"]  # a plan written before the key existed
    plan_file.write_text(json.dumps(plan))
    loaded = load_pruned(tmp_path / "p")
    for name, value in pruned.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name  # saved and read back, no arithmetic


# -- the Lightning layer: the key from YAML / the command line ----------------------------------------
sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from tiny_setup import save_tiny_llama, tiny_config, write_tiny_wikitext  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("dtype-cli")
    return save_tiny_llama(root / "model"), write_tiny_wikitext(root / "data")


@pytest.mark.usefixtures("cli_argv")
def test_the_cli_prunes_a_bf16_model_with_float32_execution_and_refuses_bad_values_before_loading(
        tiny, tmp_path, capsys, monkeypatch):
    import rcpu_lightning.lightning.module as module
    from rcpu_lightning.lightning.cli import main

    model_dir, data = tiny
    cfg = tiny_config(tmp_path / "c.yaml", model_dir, data, tmp_path / "out", model__dtype="bfloat16",
                      trainer__prune_evaluate=False)
    load = module.load_causal_lm
    monkeypatch.setattr(module, "load_causal_lm", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit) as exit_info:
        main(["prune", "-c", str(cfg), "--pruning.config.execution_dtype", "bf16"])
    assert exit_info.value.code == 2 and "execution_dtype" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr(module, "load_causal_lm", load)
    main(["prune", "-c", str(cfg), "--pruning.config.execution_dtype", "float32"])
    saved = tmp_path / "out" / "pruned"
    assert json.loads((saved / "pruning_plan.json").read_text())["config"]["execution_dtype"] == "float32"
    with safe_open(saved / "model.safetensors", framework="pt") as fh:
        assert {fh.get_slice(k).get_dtype() for k in fh.keys()} == {"BF16"}
