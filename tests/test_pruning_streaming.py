"""Out-of-core pruning (prune_checkpoint): disk to disk, one decoder layer at a time, equal to in-memory."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from conftest import make_tiny_llama
from rcpu_lightning.pruning import PruningConfig, capture_layer_inputs, load_pruned, prune_model
from rcpu_lightning.pruning import streaming
from rcpu_lightning.pruning.streaming import count_resident_layers, prune_checkpoint

GQA = dict(num_heads=6, num_kv_heads=2)
SCRIPT = Path(__file__).parent / "scripts" / "stream_prune_dist.py"


def _batches(seed: int = 1) -> list[torch.Tensor]:
    return list(torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(seed)).split(2))


def _checkpoint(folder: Path, shard: str | None = "30KB", num_layers: int = 3, **shape) -> Path:
    model = make_tiny_llama(num_layers=num_layers, **(shape or GQA))
    model.save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
    return folder


def _in_memory(folder: Path, config: PruningConfig):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    report = prune_model(model, capture_layer_inputs(model, _batches()), config, progress=False, overwrite_inputs=True)
    return model, report


@pytest.mark.parametrize("shard", ["30KB", None], ids=["sharded", "single-file"])
@pytest.mark.parametrize("config", [
    PruningConfig(ratio=0.34, head_rounding="nearest"),
    PruningConfig(method="flap", structure="al_am", ratio=0.3),  # per-layer shapes, added biases
    PruningConfig(ratio=0.5, compensation="rotation_scale", gqa_mode="whole_group"),
], ids=["rcpu-uniform", "flap-al-am", "rot-scale-whole-group"])
def test_streamed_prune_equals_in_memory_prune(tmp_path, shard, config):
    source = _checkpoint(tmp_path / "dense", shard)
    assert shard is None or len(list(source.glob("*.safetensors"))) > 1
    expected, report = _in_memory(source, config)
    streamed = prune_checkpoint(source, tmp_path / "pruned", config, _batches(), progress=False)
    assert streamed.plan.layers == report.plan.layers
    loaded = load_pruned(tmp_path / "pruned")
    assert loaded.state_dict().keys() == expected.state_dict().keys()
    for name, value in expected.state_dict().items():
        # the same kernels on the same batches in the same order (only where the layers live differs):
        # 1e-6 (~8 float32 ulps at |w| ≤ 1) only allows last-bit differences of a BLAS between runs
        torch.testing.assert_close(loaded.state_dict()[name], value, atol=1e-6, rtol=0, msg=name)
    ids = _batches(5)[0]
    with torch.no_grad():
        assert (loaded(ids).logits - expected(ids).logits).abs().max() < 1e-4
    index = json.loads((tmp_path / "pruned" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3 + 3  # one shard per layer + embeddings, norm, LM head
    if report.plan.uniform_values() is not None:  # uniform: a plain checkpoint
        plain = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
        with torch.no_grad():
            assert (plain(ids).logits - expected(ids).logits).abs().max() < 1e-4


def test_side_files_are_copied_but_dense_weights_of_other_formats_are_not(tmp_path):
    # a hub folder such as Llama-2-7b-hf carries pytorch_model-*.bin (+ index) beside the safetensors; copied
    # into the pruned folder they would be dense weights that a .bin-preferring loader picks up
    source = _checkpoint(tmp_path / "dense")
    extra = {"tokenizer.json": "{}", "generation_config.json": "{}", "README.md": "card", "LICENSE": "text",
             "pytorch_model-00001-of-00001.bin": "x", "pytorch_model.bin.index.json": "{}",
             "consolidated.00.pth": "x", "model.gguf": "x", "flax_model.msgpack": "x", "stray.safetensors": "x"}
    for name, text in extra.items():
        (source / name).write_text(text)
    (source / ".cache").mkdir()
    prune_checkpoint(source, tmp_path / "pruned", PruningConfig(ratio=0.34), _batches(), progress=False)
    copied = {p.name for p in (tmp_path / "pruned").iterdir()} & set(extra)
    assert copied == {"tokenizer.json", "generation_config.json", "README.md", "LICENSE"}
    assert load_pruned(tmp_path / "pruned") is not None


def test_at_most_one_decoder_layer_is_materialised_at_any_moment(tmp_path, monkeypatch):
    source = _checkpoint(tmp_path / "dense", num_layers=4)
    seen, skeletons = [], []
    build, load = streaming.build_skeleton, streaming.SafetensorsLayers.load

    def build_and_keep(*args, **kwargs):
        skeletons.append(build(*args, **kwargs))
        return skeletons[-1]

    def load_and_count(self, index, layer):
        load(self, index, layer)
        seen.append(count_resident_layers(skeletons[0]))

    monkeypatch.setattr(streaming, "build_skeleton", build_and_keep)
    monkeypatch.setattr(streaming.SafetensorsLayers, "load", load_and_count)
    prune_checkpoint(source, tmp_path / "pruned", PruningConfig(method="flap", structure="al_am", ratio=0.3),
                     _batches(), progress=False)
    assert seen == [1] * 8  # AL-AM: a dense pass, then the pruning pass; never two layers
    assert count_resident_layers(skeletons[0]) == 0


def test_an_interrupted_run_leaves_no_half_checkpoint(tmp_path, monkeypatch):
    source = _checkpoint(tmp_path / "dense")
    write = streaming.ShardWriter.write_layer

    def crash_on_layer_1(self, index, layer):
        if index == 1:
            raise KeyboardInterrupt
        write(self, index, layer)

    monkeypatch.setattr(streaming.ShardWriter, "write_layer", crash_on_layer_1)
    with pytest.raises(KeyboardInterrupt):
        prune_checkpoint(source, tmp_path / "pruned", PruningConfig(ratio=0.34), _batches(), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense"]  # neither target nor staging folder


def test_an_existing_target_is_refused_before_any_work(tmp_path, monkeypatch):
    source = _checkpoint(tmp_path / "dense")
    (tmp_path / "pruned").mkdir()
    (tmp_path / "pruned" / "keep.txt").write_text("mine")
    monkeypatch.setattr(streaming, "build_skeleton", lambda *a: pytest.fail("work started"))
    with pytest.raises(FileExistsError, match="already exists"):
        prune_checkpoint(source, tmp_path / "pruned", PruningConfig(), _batches(), progress=False)
    assert (tmp_path / "pruned" / "keep.txt").read_text() == "mine"


def test_clear_errors_for_folders_that_cannot_be_streamed(tmp_path):
    bins = tmp_path / "bins"  # an old-style pytorch_model.bin checkpoint
    model = make_tiny_llama()
    model.config.save_pretrained(bins)
    torch.save(model.state_dict(), bins / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="no safetensors weights"):
        prune_checkpoint(bins, tmp_path / "a", PruningConfig(), _batches(), progress=False)
    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64)).save_pretrained(gpt2)
    with pytest.raises(ValueError, match=r"unsupported architecture GPT2LMHeadModel.*'llama', 'mistral', 'qwen2'"):
        prune_checkpoint(gpt2, tmp_path / "b", PruningConfig(), _batches(), progress=False)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        prune_checkpoint(tmp_path / "nothing", tmp_path / "c", PruningConfig(), _batches(), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bins", "gpt2"]


@pytest.mark.ddp
def test_two_gloo_processes_stream_the_same_checkpoint_as_one(tmp_path):
    source = _checkpoint(tmp_path / "dense")
    config = PruningConfig(ratio=0.34, head_rounding="nearest")
    prune_checkpoint(source, tmp_path / "one", config, _batches(), progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                                                  str(Path(__file__).parent)])}
    proc = subprocess.run([sys.executable, str(SCRIPT), str(source), str(tmp_path / "two")], env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = load_pruned(tmp_path / "one"), load_pruned(tmp_path / "two")
    for name, value in one.state_dict().items():
        torch.testing.assert_close(two.state_dict()[name], value, atol=1e-5, rtol=1e-5, msg=name)
    assert json.loads((tmp_path / "two" / "pruning_plan.json").read_text())["calibration"]["tokens"] == 8 * 16


# -- the Lightning layer: predict loop of an out-of-core CausalLMModule -----------------------------------
def _predict_out_of_core(tmp_path, source: Path, config: PruningConfig, **callback_kw):
    import lightning as L
    from torch.utils.data import DataLoader

    from rcpu_lightning.lightning import CausalLMModule, RCPUPruningCallback, TensorRows

    module = CausalLMModule(str(source), out_of_core=True)
    callback = RCPUPruningCallback(config, progress=False, **callback_kw)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, callbacks=[callback])
    loader = DataLoader(TensorRows(torch.cat(_batches())), batch_size=2)  # the batches of _in_memory
    trainer.predict(module, dataloaders=loader, return_predictions=False)
    return module, callback


def test_an_out_of_core_module_keeps_the_checkpoints_dtype_unless_told_otherwise(tmp_path):
    from rcpu_lightning.lightning import CausalLMModule

    source = tmp_path / "dense"
    make_tiny_llama(num_layers=2, **GQA).to(torch.bfloat16).save_pretrained(source)
    # no dtype: the checkpoint's (bf16), so the pruned shards are written in bf16, not doubled to float32
    assert CausalLMModule(str(source), out_of_core=True).model.get_input_embeddings().weight.dtype == torch.bfloat16
    told = CausalLMModule(str(source), out_of_core=True, dtype="float16")
    assert told.model.get_input_embeddings().weight.dtype == torch.float16
    with pytest.raises(ValueError, match="dtype='fp8' is not supported"):
        CausalLMModule(str(source), out_of_core=True, dtype="fp8")


def test_the_predict_loop_prunes_an_out_of_core_module_from_disk_to_disk(tmp_path):
    source = _checkpoint(tmp_path / "dense")
    config = PruningConfig(ratio=0.34, head_rounding="nearest")
    expected, report = _in_memory(source, config)
    module, callback = _predict_out_of_core(tmp_path, source, config, save_dir=str(tmp_path / "pruned"))
    assert count_resident_layers(module.model) == 0  # no decoder layer was ever loaded into the module
    assert module.pruning_plan is not None and callback.saved_to == str(tmp_path / "pruned")
    assert callback.report.plan.layers == report.plan.layers
    loaded = load_pruned(tmp_path / "pruned")
    for name, value in expected.state_dict().items():
        # the same kernels on the same batches in the same order (only where the layers live differs):
        # 1e-6 (~8 float32 ulps at |w| ≤ 1) only allows last-bit differences of a BLAS between runs
        torch.testing.assert_close(loaded.state_dict()[name], value, atol=1e-6, rtol=0, msg=name)


def test_out_of_core_folders_get_the_pruning_report_an_in_memory_save_gets(tmp_path):
    import lightning as L
    from torch.utils.data import DataLoader

    from rcpu_lightning.files import PLAN_FILE, REPORT_FILE
    from rcpu_lightning.lightning import CausalLMModule, RCPUPruningCallback, TensorRows

    source = _checkpoint(tmp_path / "dense")
    config = PruningConfig(ratio=0.34, head_rounding="nearest")
    streamed = prune_checkpoint(source, tmp_path / "core", config, _batches(), progress=False)  # the core alone
    assert json.loads((tmp_path / "core" / REPORT_FILE).read_text()) == json.loads(json.dumps(streamed.summary()))
    assert json.loads((tmp_path / "core" / PLAN_FILE).read_text()) == json.loads(json.dumps(streamed.plan.to_dict()))
    _, out_of_core = _predict_out_of_core(tmp_path, source, config, save_dir=str(tmp_path / "ooc"))
    in_memory = RCPUPruningCallback(config, progress=False, save_dir=str(tmp_path / "mem"))
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, callbacks=[in_memory])
    dense = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    trainer.predict(CausalLMModule(dense), dataloaders=DataLoader(TensorRows(torch.cat(_batches())), batch_size=2),
                    return_predictions=False)
    reports = {name: json.loads((tmp_path / name / REPORT_FILE).read_text()) for name in ("ooc", "mem")}
    assert reports["ooc"]["run_id"] == out_of_core.run_id
    assert reports["mem"].keys() <= reports["ooc"].keys()  # and the engine's summary, as the core alone writes
    for key, value in reports["mem"].items():  # the same pruning: the same fields (wall times aside)
        if key not in ("run_id", "weights", "seconds"):
            assert _untimed(reports["ooc"][key]) == _untimed(value), key


def _untimed(value):
    """``value`` without its ``seconds`` entries (at any depth): what two runs of one prune share."""
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k != "seconds"}
    return [_untimed(v) for v in value] if isinstance(value, list) else value


def test_an_out_of_core_module_needs_save_dir_and_only_prunes(tmp_path):
    import lightning as L

    from rcpu_lightning.lightning import CausalLMModule, RCPUPruningCallback
    from rcpu_lightning.lightning.cli import RCPUTrainer

    source = _checkpoint(tmp_path / "dense")
    config = PruningConfig(ratio=0.34, head_rounding="nearest")
    with pytest.raises(ValueError, match="set pruning.save_dir"):
        _predict_out_of_core(tmp_path, source, config)
    assert not any(tmp_path.glob("pruned*"))
    module = CausalLMModule(str(source), out_of_core=True)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, max_epochs=1,
                        callbacks=[RCPUPruningCallback(config, progress=False, calibration_dataloader=_batches)])
    with pytest.raises(ValueError, match="holds no weights: it can only be pruned"):
        trainer.fit(module, train_dataloaders=[torch.zeros(2, 16, dtype=torch.long)])
    trainer = RCPUTrainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                          callbacks=[RCPUPruningCallback(config, save_dir=str(tmp_path / "out"), progress=False)])
    with pytest.raises(ValueError, match="prune_evaluate false"):
        trainer.prune(module)
    with pytest.raises(ValueError, match="local checkpoint folder"):
        CausalLMModule(str(tmp_path / "nowhere"), out_of_core=True)
    assert not (tmp_path / "out").exists()


def test_out_of_core_pruning_fixes_the_glibc_mmap_threshold(tmp_path, monkeypatch):
    from rcpu_lightning.pruning import malloc_tuning

    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.delenv(malloc_tuning.ENV, raising=False)
    monkeypatch.setattr(malloc_tuning.sys, "platform", "linux")
    monkeypatch.setattr(malloc_tuning.ctypes, "CDLL", lambda name: FakeLibc())
    prune_checkpoint(_checkpoint(tmp_path / "dense"), tmp_path / "pruned", PruningConfig(ratio=0.34), _batches(),
                     progress=False)
    assert calls == [(malloc_tuning.M_MMAP_THRESHOLD, 1 << 20)]  # M_MMAP_THRESHOLD = -3, fixed at 1 MiB
    monkeypatch.setenv(malloc_tuning.ENV, "4194304")  # the user's own setting wins: no call
    assert malloc_tuning.fix_mmap_threshold() and len(calls) == 1
    monkeypatch.delenv(malloc_tuning.ENV)
    monkeypatch.setattr(malloc_tuning.sys, "platform", "darwin")  # not glibc: nothing to fix
    assert not malloc_tuning.fix_mmap_threshold() and len(calls) == 1


def _shard_of(folder: Path, tensor: str) -> Path:
    return folder / json.loads((folder / streaming.INDEX_FILE).read_text())["weight_map"][tensor]


def test_every_shard_is_checked_before_the_first_layer(tmp_path):
    source = _checkpoint(tmp_path / "dense")
    head = _shard_of(source, "lm_head.weight")  # read last, after every layer
    head.write_bytes(head.read_bytes()[:-100])  # a truncated download
    layers = []
    with pytest.raises(ValueError, match=rf"{head.name}' is not a complete safetensors file .*its header describes"):
        prune_checkpoint(source, tmp_path / "pruned", PruningConfig(ratio=0.34), _batches(), progress=layers.append)
    assert layers == [] and not (tmp_path / "pruned").exists() and sorted(os.listdir(tmp_path)) == ["dense"]
    head.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{head.name}': the checkpoint's index names this shard"):
        streaming.CheckpointSource(source)
    index = json.loads((source / streaming.INDEX_FILE).read_text())
    first = _shard_of(source, "model.embed_tokens.weight")
    index["weight_map"]["lm_head.weight"] = first.name  # an index that does not match its shards
    (source / streaming.INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(ValueError, match=rf"{first.name}' lacks 1 tensor\(s\) the index puts there, e.g. 'lm_head"):
        streaming.CheckpointSource(source)
    single = _checkpoint(tmp_path / "single", None)
    (single / "model.safetensors").write_bytes((single / "model.safetensors").read_bytes()[:5])
    with pytest.raises(ValueError, match=r"single/model.safetensors' is not a complete safetensors file \(5 bytes"):
        streaming.CheckpointSource(single)


_KILLED_RUN = """
import os, signal, sys, torch
from rcpu_lightning.pruning import PruningConfig
from rcpu_lightning.pruning.streaming import prune_checkpoint
batches = list(torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(1)).split(2))
kill = lambda layer: os.kill(os.getpid(), signal.SIGKILL)  # killed outright after its first layer
prune_checkpoint(sys.argv[1], sys.argv[2], PruningConfig(ratio=0.34), batches, progress=kill)
"""


def test_a_killed_run_leaves_a_staging_folder_that_the_next_run_to_that_target_removes(tmp_path):
    source, target = _checkpoint(tmp_path / "dense"), tmp_path / "pruned"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _KILLED_RUN, str(source), str(target)], env=env, timeout=120)
    assert proc.returncode == -9
    (killed,) = tmp_path.glob(".pruned.tmp-*")  # hidden, beside the target, holding the first shard
    assert any(killed.glob("*.safetensors")) and not target.exists()
    foreign = tmp_path / ".pruned.tmp-0123456789"  # the same name pattern, but not this tool's staging
    foreign.mkdir()
    other = tmp_path / ".other.tmp-0123456789"  # this tool's staging of another target
    shutil.copytree(killed, other)
    prune_checkpoint(source, target, PruningConfig(ratio=0.34), _batches(), progress=False)
    assert not killed.exists() and foreign.is_dir() and other.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".other.tmp-0123456789", ".pruned.tmp-0123456789",
                                                                "dense", "pruned"])
    assert not (target / ".rcpu-staging-owner.json").exists() and load_pruned(target) is not None
