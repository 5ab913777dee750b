"""Pruned folders of per-layer shapes load in any Hugging Face tool: AutoModelForCausalLM with
trust_remote_code builds them from the folder's own modeling file; uniform folders stay plain."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from conftest import make_tiny_llama
from rcpu_lightning.pruning import PruningConfig, capture_layer_inputs, load_pruned, prune_model, save_pruned

GQA = dict(num_heads=8, num_kv_heads=4, head_dim=8, hidden_size=64, intermediate_size=96, num_layers=3)


def _ids(seed: int) -> torch.Tensor:
    return torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(seed))


def _saved(tmp_path, **cfg):
    model = make_tiny_llama(**GQA)
    report = prune_model(model, capture_layer_inputs(model, _ids(1).split(2)), PruningConfig(**cfg), progress=False)
    return model, report.plan, save_pruned(model, report.plan, tmp_path / "pruned")


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(_ids(9)).logits


def test_per_layer_folder_loads_with_trust_remote_code(tmp_path):
    model, plan, folder = _saved(tmp_path, method="flap", structure="al_am", ratio=0.4,
                                 compensation="affine_least_squares")
    assert len({(lp.num_heads, lp.intermediate_size) for lp in plan.layers}) > 1  # genuinely per-layer
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {"AutoModelForCausalLM": "modeling_pruned.PrunedLlamaForCausalLM"}
    assert [layer["num_heads"] for layer in config["pruned_layers"]] == [lp.num_heads for lp in plan.layers]
    remote = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    assert type(remote).__name__ == "PrunedLlamaForCausalLM" and isinstance(remote, LlamaForCausalLM)
    for layer, lp in zip(remote.model.layers, plan.layers):
        assert layer.self_attn.q_proj.out_features == lp.num_heads * 8
        assert layer.mlp.down_proj.in_features == lp.intermediate_size
        assert layer.self_attn.o_proj.bias is not None  # the affine compensation's bias
    # same weights, same ops: float32 op-order noise only
    torch.testing.assert_close(_logits(remote), _logits(load_pruned(folder)), atol=1e-6, rtol=0)
    torch.testing.assert_close(_logits(remote), _logits(model), atol=1e-6, rtol=0)
    # the modeling file needs nothing of this project: it imports only torch and transformers
    imports = [line.split()[1] for line in (folder / "modeling_pruned.py").read_text().splitlines()
               if line.startswith(("import ", "from "))]
    assert {name.split(".")[0] for name in imports} <= {"__future__", "torch", "transformers"}


def test_uniform_folder_stays_a_plain_checkpoint(tmp_path):
    model, _, folder = _saved(tmp_path, method="flap", ratio=0.5)
    config = json.loads((folder / "config.json").read_text())
    assert "auto_map" not in config and "pruned_layers" not in config
    assert not (folder / "modeling_pruned.py").exists()
    plain = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    assert type(plain) is LlamaForCausalLM
    torch.testing.assert_close(_logits(plain), _logits(model), atol=1e-6, rtol=0)


def test_a_folder_pruned_from_disk_to_disk_loads_with_trust_remote_code(tmp_path):
    from rcpu_lightning.pruning.streaming import prune_checkpoint

    make_tiny_llama(**GQA).save_pretrained(tmp_path / "dense")
    batches = list(_ids(1).split(2))
    report = prune_checkpoint(tmp_path / "dense", tmp_path / "pruned", PruningConfig(method="flap", structure="al_am",
                                                                                      ratio=0.4), batches, progress=False)
    assert report.plan.uniform_values() is None
    remote = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned", trust_remote_code=True)
    assert type(remote).__name__ == "PrunedLlamaForCausalLM"
    torch.testing.assert_close(_logits(remote), _logits(load_pruned(tmp_path / "pruned")), atol=1e-6, rtol=0)


def test_overwrite_replaces_a_folder_of_per_layer_shapes_it_wrote(tmp_path):
    # the modeling file is one of this tool's own files: overwrite=True replaces the folder, while a
    # user's file in it still stops the write (rcpu_lightning.files.OWN_FILES)
    import pytest

    model, plan, folder = _saved(tmp_path, method="flap", structure="al_am", ratio=0.4)
    assert (folder / "modeling_pruned.py").is_file()
    save_pruned(model, plan, folder, overwrite=True)
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        save_pruned(model, plan, folder, overwrite=True)
