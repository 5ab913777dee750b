"""benchmarks/random_checkpoint.py: random Llama checkpoints from a config, shard by shard, with a tokenizer."""

from __future__ import annotations

import gc
import json
import math
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
from benchmarks import random_checkpoint as rc  # noqa: E402
from rcpu_lightning.files import RANDOM_CHECKPOINT_FILE, OutputExistsError  # noqa: E402

from conftest import SHARED_DATA  # noqa: E402

#: grouped-query attention (8 heads in 2 kv groups) and a head_dim that is not hidden / heads
GQA = {"model_type": "llama", "vocab_size": 600, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3,
       "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 16, "tie_word_embeddings": False,
       "torch_dtype": "float16", "max_position_embeddings": 256}


@pytest.fixture(autouse=True)
def _data(monkeypatch):
    monkeypatch.setenv("RCPU_DATA_DIR", str(SHARED_DATA))


@pytest.fixture
def gqa_config(tmp_path) -> Path:
    path = tmp_path / "my-model" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(GQA))
    return path


def _shard_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def test_a_gqa_config_with_explicit_head_dim_becomes_a_checkpoint_from_pretrained_loads_as_written(tmp_path, gqa_config):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "ckpt"
    assert rc.main([str(out), "--config", str(gqa_config), "--layers-per-shard", "2", "--quiet"]) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    attn = model.model.layers[0].self_attn
    assert model.dtype == torch.bfloat16 and json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert attn.k_proj.weight.shape == (2 * 16, 64) and attn.q_proj.weight.shape == (8 * 16, 64)
    written = _shard_tensors(out)
    state = model.state_dict()
    assert set(written) == set(state) and all(torch.equal(state[k], v) for k, v in written.items())
    index = json.loads((out / rc.INDEX_FILE).read_text())
    assert sorted(set(index["weight_map"].values())) == [rc.shard_name(i, 3) for i in range(3)]  # layers 0-1, 2, rest
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in written.values())
    # normal(0, 0.02) matrices: the sample std of n draws errs by about std / sqrt(2 n); 6 of those is never hit
    up = written["model.layers.1.mlp.up_proj.weight"].float()
    assert abs(up.std().item() - rc.STD) < 6 * rc.STD / math.sqrt(2 * up.numel())
    assert torch.equal(written["model.norm.weight"], torch.ones(64, dtype=torch.bfloat16))
    record = rc.read_record(out)
    assert record["params"] == sum(p.numel() for p in model.parameters()) and record["tokenizer"]["vocab_size"] == 600


def test_the_generator_holds_one_shard_at_a_time_and_shards_are_as_big_as_their_layers(tmp_path):
    config = rc.build_config("llama-7b-mini", None, "float32")
    groups = rc.shard_groups(rc.tensor_specs(config), 2, 1)
    earlier: list[weakref.ref] = []
    for tensors in rc.shard_tensors(groups, torch.float32, seed=0):
        gc.collect()
        assert all(ref() is None for ref in earlier), "a shard drawn before is still alive"
        earlier = [weakref.ref(t) for t in tensors.values()]
        del tensors
    # the 7B preset by its index alone (nothing drawn): 32 layer shards of one layer each plus the rest
    config = rc.build_config("llama-7b", None, "bfloat16")
    specs = rc.tensor_specs(config)
    groups = rc.shard_groups(specs, 32, 1)
    assert sum(math.prod(s.shape) for s in specs) == 6_738_415_616  # LLaMA-7B's parameter count
    layer = 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096  # attention, MLP, two norms
    assert len(groups) == 33 and all(sum(s.nbytes(torch.bfloat16) for s in g) == 2 * layer for g in groups[:32])
    assert [s.name for s in groups[32]] == ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]


def test_values_depend_on_seed_and_name_only_not_on_sharding_or_dtype(tmp_path):
    config = rc.build_config("llama-7b-mini", None, "float32")
    config.vocab_size = 300  # small: a few MB
    rc.generate(tmp_path / "a", config, layers_per_shard=1, tokenizer=False, progress=False)
    rc.generate(tmp_path / "b", config, layers_per_shard=2, tokenizer=False, progress=False)
    config.dtype = "bfloat16"
    rc.generate(tmp_path / "c", config, tokenizer=False, progress=False)
    a, b, c = (_shard_tensors(tmp_path / n) for n in "abc")
    assert len(list((tmp_path / "b").glob("*.safetensors"))) == 2
    # the same draws, and bfloat16 is their rounding (one correctly rounded cast: exact, not BLAS)
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k].to(torch.bfloat16), c[k]) for k in a)
    assert not torch.equal(a["model.layers.0.mlp.up_proj.weight"], a["model.layers.1.mlp.up_proj.weight"])


def test_outputs_are_refused_unless_overwrite_and_a_folder_of_someone_else_always(tmp_path, gqa_config):
    out = tmp_path / "ckpt"
    args = [str(out), "--config", str(gqa_config), "--no-tokenizer", "--quiet"]
    rc.main(args)
    first = (out / rc.shard_name(0, 4)).read_bytes()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        rc.main(args)
    rc.main(args + ["--overwrite", "--seed", "1"])  # the generator's own folder: replaced as a whole
    assert (out / rc.shard_name(0, 4)).read_bytes() != first and rc.read_record(out)["seed"] == 1
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"did not write \(notes.txt\)"):
        rc.main(args + ["--overwrite"])
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text("{}")  # a user's model folder: no marker of this project
    with pytest.raises(OutputExistsError):
        rc.main([str(mine), "--config", str(gqa_config), "--no-tokenizer", "--overwrite", "--quiet"])
    assert (out / "notes.txt").read_text() == "mine" and [p.name for p in mine.iterdir()] == ["config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "mine", "my-model"]  # no staging left


@pytest.mark.parametrize("vocab_size", [600, 32000])
def test_the_tokenizer_has_exactly_vocab_size_ids_and_round_trips_text(vocab_size):
    tok = rc.train_tokenizer(vocab_size)
    ids = sorted(tok.get_vocab().values())
    assert len(tok) == vocab_size and ids == list(range(vocab_size))
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.convert_ids_to_tokens([3, 258]) == ["<0x00>", "<0xFF>"]
    text = "The tower is 324 metres ( 1 @,@ 063 ft ) tall — Ærøskøbing, 東京.\n"
    encoded = tok(text).input_ids
    assert encoded[0] == 1 and max(encoded) < vocab_size
    assert tok.decode(encoded, skip_special_tokens=True) == text  # unseen characters: byte fallback
    assert tok.backend_tokenizer.to_str() == rc.train_tokenizer(vocab_size).backend_tokenizer.to_str()
    unused = sum(t.startswith("<unused_") for t in tok.get_vocab())
    assert (unused > 0) == (vocab_size == 32000)  # the valid split yields ~20k pieces: the rest fill in


def test_the_tokenizer_refuses_a_vocabulary_too_small_for_its_fixed_tokens():
    with pytest.raises(ValueError, match="--no-tokenizer"):
        rc.train_tokenizer(259)


def test_a_pruned_copy_carries_the_pruning_markers_not_the_generators(tmp_path, gqa_config):
    from rcpu_lightning.pruning import PruningConfig, load_pruned
    from rcpu_lightning.pruning.streaming import prune_checkpoint

    source = tmp_path / "ckpt"
    rc.main([str(source), "--config", str(gqa_config), "--dtype", "float32", "--quiet"])
    ids = torch.randint(0, 600, (4, 32), generator=torch.Generator().manual_seed(0))
    prune_checkpoint(source, tmp_path / "pruned", PruningConfig(ratio=0.25), [ids], progress=False)
    names = {p.name for p in (tmp_path / "pruned").iterdir()}
    assert RANDOM_CHECKPOINT_FILE not in names and {"pruning_plan.json", "tokenizer.json"} <= names
    assert load_pruned(tmp_path / "pruned").model.layers[0].mlp.up_proj.out_features == 72


def test_both_entry_points_answer_help():
    for cmd in (["benchmarks/random_checkpoint.py"], ["-m", "benchmarks.random_checkpoint"]):
        out = subprocess.run([sys.executable, *cmd, "--help"], cwd=REPO_ROOT, capture_output=True, text=True)
        assert out.returncode == 0 and "usage:" in out.stdout
