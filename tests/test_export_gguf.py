"""GGUF export (llama.cpp): every key and tensor read back with gguf.GGUFReader, the model rebuilt from
the file in PyTorch (read_gguf) against the source, llama.cpp's RoPE order, the tokenizer, bad input."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from conftest import make_tiny_llama
from rcpu_lightning.export import export_gguf, read_gguf
from rcpu_lightning.export.gguf import rope_interleave
from rcpu_lightning.files import OutputExistsError
from rcpu_lightning.lightning.cli import main
from rcpu_lightning.pruning import PruningConfig, capture_layer_inputs, prune_model, save_pruned

VOCAB = 300
# hidden 64 and 8 heads of 8: rows of 64 are whole Q8_0 blocks of 32, so q8_0 really quantizes them
SHAPE = dict(num_heads=8, num_kv_heads=4, head_dim=8, hidden_size=64, intermediate_size=96, num_layers=3,
             vocab_size=VOCAB)
CONFIGS = {
    # FLAP uniform at 50 %: every layer 4 heads / 48 channels, Llama bias flags set (o/down biases from compensation)
    "uniform-bias": dict(method="flap", ratio=0.5),
    # RCPU-affine's recipe: AL-AM per-layer head counts and widths, affine biases on o_proj/down_proj
    "per-layer-bias": dict(method="flap", structure="al_am", ratio=0.4, allocation="compensated_error",
                           compensation="affine_least_squares", selection="compensated_error"),
}


def _ids(seed: int = 1, batch: int = 8) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, 16), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A byte-level BPE tokenizer of exactly VOCAB tokens (trained on a few sentences), saved as HF files."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"])
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog", "pruned models run in llama.cpp"] * 20,
                            trainer)
    assert tok.get_vocab_size() == VOCAB
    folder = tmp_path_factory.mktemp("tok")
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(folder)
    return folder


def _pruned(name: str):
    model = make_tiny_llama(**SHAPE)
    report = prune_model(model, capture_layer_inputs(model, _ids().split(4)), PruningConfig(**CONFIGS[name]),
                         progress=False)
    with torch.no_grad():  # random q/k/v/gate/up biases too (pruning leaves them zero): their RoPE order shows
        for p in model.parameters():
            if p.dim() == 1 and p.numel() != SHAPE["hidden_size"]:
                p.normal_(0.0, 0.2)
    return model, report.plan


@pytest.fixture(scope="module", params=list(CONFIGS))
def pruned(request):
    return request.param, *_pruned(request.param)


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(_ids(9, batch=4)).logits


def test_keys_shapes_biases_and_tokenizer_read_back(pruned, tokenizer_dir, tmp_path):
    name, model, plan = pruned
    path = export_gguf(model, tmp_path / "m.gguf", dtype="f32", tokenizer=tokenizer_dir)
    reader = GGUFReader(path)
    uniform = plan.uniform_values() is not None
    arch = "llama" if uniform else "deci"
    assert name == ("uniform-bias" if uniform else "per-layer-bias")

    def per_layer(values):
        return values[0] if uniform else values

    expected = {
        "general.architecture": arch, "general.name": "model", "general.file_type": 0,
        f"{arch}.block_count": 3, f"{arch}.context_length": 256, f"{arch}.embedding_length": 64,
        f"{arch}.feed_forward_length": per_layer([lp.intermediate_size for lp in plan.layers]),
        f"{arch}.attention.head_count": per_layer([lp.num_heads for lp in plan.layers]),
        f"{arch}.attention.head_count_kv": per_layer([lp.num_kv_heads for lp in plan.layers]),
        f"{arch}.attention.key_length": 8, f"{arch}.attention.value_length": 8, f"{arch}.rope.dimension_count": 8,
        f"{arch}.rope.freq_base": 10000.0, f"{arch}.vocab_size": VOCAB,
        f"{arch}.attention.layer_norm_rms_epsilon": pytest.approx(model.config.rms_norm_eps),
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "default", "tokenizer.ggml.eos_token_id": 0,
    }
    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    vocab = sorted(spec["model"]["vocab"], key=spec["model"]["vocab"].get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    array_keys = {"tokenizer.ggml.tokens": vocab, "tokenizer.ggml.merges": merges,
                  "tokenizer.ggml.token_type": [3] + [1] * (VOCAB - 1)}  # <|endoftext|> CONTROL, others NORMAL
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert set(fields) == set(expected) | set(array_keys)  # every key, none missing, none extra
    for key, value in {**expected, **array_keys}.items():
        assert fields[key] == value, key
    if not uniform:
        assert len(set(fields["deci.attention.head_count"])) > 1  # genuinely per-layer head counts

    tensors = {t.name: t for t in reader.tensors}
    names = {"token_embd.weight", "output_norm.weight", "output.weight"}
    for i, lp in enumerate(plan.layers):
        h, kv, ff = lp.num_heads * 8, lp.num_kv_heads * 8, lp.intermediate_size
        shapes = {"attn_q": (h, 64), "attn_k": (kv, 64), "attn_v": (kv, 64), "attn_output": (64, h),
                  "ffn_gate": (ff, 64), "ffn_up": (ff, 64), "ffn_down": (64, ff)}
        hf = {"attn_q": "q_proj", "attn_k": "k_proj", "attn_v": "v_proj", "attn_output": "o_proj",
              "ffn_gate": "gate_proj", "ffn_up": "up_proj", "ffn_down": "down_proj"}
        names |= {f"blk.{i}.attn_norm.weight", f"blk.{i}.ffn_norm.weight"}
        for gguf_name, (rows, cols) in shapes.items():
            names.add(f"blk.{i}.{gguf_name}.weight")
            assert list(tensors[f"blk.{i}.{gguf_name}.weight"].shape) == [cols, rows]  # GGUF: fastest dim first
            if hf[gguf_name] in lp.biases:
                names.add(f"blk.{i}.{gguf_name}.bias")
                bias = tensors[f"blk.{i}.{gguf_name}.bias"]
                assert bias.tensor_type == GGMLQuantizationType.F32
                layer = model.model.layers[i]
                source = layer.get_submodule(("self_attn." if gguf_name.startswith("attn") else "mlp.") +
                                             hf[gguf_name]).bias.detach()
                if gguf_name in ("attn_q", "attn_k"):
                    source = rope_interleave(source, rows // 8)
                np.testing.assert_array_equal(bias.data, source.numpy())  # f32 written as it is
        assert {"o_proj", "down_proj"} <= set(lp.added_biases) or not lp.added_biases
    assert set(tensors) == names


# Tolerances. f32: the file holds the weights exactly; the rebuilt model runs the same ops -> 1e-5.
# f16/bf16/q8_0: the reference is the source with its matrices rounded the same way *in the test*
# (torch's float16/bfloat16 casts; Q8_0 = per 32-block scale max|x|/127 stored in f16, int8 codes), so
# the rebuilt model must match it to float32 op noise (1e-4 on logits of magnitude ~3).
def _q8_0(w: torch.Tensor) -> torch.Tensor:
    if w.shape[-1] % 32:
        return w.half().float()  # rows that are not whole blocks are stored as f16
    blocks = w.reshape(-1, 32)
    scale = blocks.abs().amax(1, keepdim=True) / 127
    codes = torch.where(scale > 0, blocks / scale, torch.zeros_like(blocks)).round()
    return (codes * scale.half().float()).reshape(w.shape)


ROUND = {"f32": lambda w: w, "f16": lambda w: w.half().float(), "bf16": lambda w: w.bfloat16().float(),
         "q8_0": _q8_0}


@pytest.mark.parametrize("dtype", list(ROUND))
def test_model_rebuilt_from_the_file_matches_the_source(pruned, tokenizer_dir, tmp_path, dtype):
    _, model, _ = pruned
    path = export_gguf(model, tmp_path / f"m-{dtype}.gguf", dtype=dtype, tokenizer=tokenizer_dir)
    rebuilt = read_gguf(path)
    rounded = _copy_rounded(model, ROUND[dtype])
    torch.testing.assert_close(_logits(rebuilt), _logits(rounded), atol=1e-4, rtol=0)
    if dtype == "f32":
        torch.testing.assert_close(_logits(rebuilt), _logits(model), atol=1e-5, rtol=0)
    else:  # the file really holds rounded weights: the unrounded source is further away than op noise
        assert (_logits(rebuilt) - _logits(model)).abs().max() > 1e-3
    types = {t.name: t.tensor_type for t in GGUFReader(path).tensors}
    if dtype == "q8_0":
        assert types["blk.0.attn_q.weight"] == GGMLQuantizationType.Q8_0  # rows of 64: two blocks
        assert types["token_embd.weight"] == GGMLQuantizationType.Q8_0


def _copy_rounded(model, rounding):
    """A deep copy of ``model`` whose matrices went through ``rounding`` (vectors stay f32, as in the file)."""
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for p in clone.parameters():
            if p.dim() == 2:
                p.copy_(rounding(p))
    return clone


def test_tied_embeddings_write_no_output_tensor(tokenizer_dir, tmp_path):
    model = make_tiny_llama(**SHAPE)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    path = export_gguf(model, tmp_path / "tied.gguf", dtype="f32", tokenizer=tokenizer_dir)
    assert "output.weight" not in {t.name for t in GGUFReader(path).tensors}  # llama.cpp reuses token_embd
    torch.testing.assert_close(_logits(read_gguf(path)), _logits(model), atol=1e-5, rtol=0)


def test_q_k_rows_follow_llama_cpp_rope():
    """llama.cpp's "normal" RoPE rotates pairs (x[2i], x[2i+1]) by pos * base^(-2i/d); Hugging Face rotates
    (x[i], x[i+d/2]). Rotating the reordered rows llama.cpp's way equals reordering HF's rotated rows."""
    heads, d, base, positions = 3, 8, 10000.0, torch.arange(5)
    q = torch.randn(1, heads, 5, d, dtype=torch.float64)
    config = make_tiny_llama(num_heads=heads, num_kv_heads=heads, head_dim=d, hidden_size=24).config
    cos, sin = LlamaRotaryEmbedding(config)(q.float(), positions[None])
    hf_rotated, _ = apply_rotary_pos_emb(q, q, cos.double(), sin.double())

    def to_rows(x):  # [1, heads, T, d] -> rows [heads * d, T]
        return x[0].permute(0, 2, 1).reshape(heads * d, -1)

    pairs = rope_interleave(to_rows(q), heads).reshape(heads, d // 2, 2, -1)
    angle = positions[None, :].double() * base ** (-2 * torch.arange(d // 2, dtype=torch.float64)[:, None] / d)
    x0, x1 = pairs[:, :, 0], pairs[:, :, 1]
    cpp = torch.stack((x0 * angle.cos() - x1 * angle.sin(), x0 * angle.sin() + x1 * angle.cos()), 2)
    # float32 cos/sin from transformers vs float64 here: 1e-6
    torch.testing.assert_close(cpp.reshape(heads * d, -1), rope_interleave(to_rows(hf_rotated), heads),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(rope_interleave(rope_interleave(to_rows(q), heads), heads, inverse=True), to_rows(q),
                               atol=0, rtol=0)


def test_tokenizer_keys_pass_through_from_a_gguf(tokenizer_dir, tmp_path):
    model = make_tiny_llama(**SHAPE)
    first = export_gguf(model, tmp_path / "a.gguf", dtype="f16", tokenizer=tokenizer_dir, tokenizer_pre="smollm")
    second = export_gguf(model, tmp_path / "b.gguf", dtype="q8_0", tokenizer=first)

    def tokenizer_fields(path):
        return {k: f.contents() for k, f in GGUFReader(path).fields.items() if k.startswith("tokenizer.")}

    assert tokenizer_fields(second) == tokenizer_fields(first)
    assert tokenizer_fields(first)["tokenizer.ggml.pre"] == "smollm"


def test_bad_input_is_refused_before_anything_is_written(tokenizer_dir, tmp_path):
    model = make_tiny_llama(**SHAPE)
    with pytest.raises(ValueError, match="dtype 'q4_0' is not supported"):
        export_gguf(model, tmp_path / "m.gguf", dtype="q4_0", tokenizer=tokenizer_dir)
    with pytest.raises(ValueError, match="must end in .gguf"):
        export_gguf(model, tmp_path / "m.bin", tokenizer=tokenizer_dir)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        export_gguf(model, tmp_path / "m.gguf")
    small = make_tiny_llama(**{**SHAPE, "vocab_size": 64})
    with pytest.raises(ValueError, match="only 64 embeddings"):
        export_gguf(small, tmp_path / "m.gguf", tokenizer=tokenizer_dir)
    assert list(tmp_path.iterdir()) == []  # no file, no staging leftovers
    (tmp_path / "m.gguf").write_text("mine")
    with pytest.raises(OutputExistsError):
        export_gguf(model, tmp_path / "m.gguf", tokenizer=tokenizer_dir)
    assert (tmp_path / "m.gguf").read_text() == "mine"
    export_gguf(model, tmp_path / "m.gguf", tokenizer=tokenizer_dir, overwrite=True)
    assert GGUFReader(tmp_path / "m.gguf").fields["general.architecture"].contents() == "llama"


def test_cli_exports_a_pruned_folder(tokenizer_dir, tmp_path, capsys):
    model, plan = _pruned("per-layer-bias")
    save_pruned(model, plan, tmp_path / "pruned")
    for file in tokenizer_dir.iterdir():
        (tmp_path / "pruned" / file.name).write_bytes(file.read_bytes())
    main(["gguf", str(tmp_path / "pruned"), str(tmp_path / "m.gguf"), "--dtype", "q8_0"])
    assert "wrote" in capsys.readouterr().out
    reader = GGUFReader(tmp_path / "m.gguf")
    assert reader.fields["general.architecture"].contents() == "deci"
    assert reader.fields["general.file_type"].contents() == 7  # MOSTLY_Q8_0
    with pytest.raises(SystemExit) as exit_info:
        main(["gguf", str(tmp_path / "pruned"), str(tmp_path / "m.gguf")])  # exists: refused
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "already exists" in err and len(err.strip().splitlines()) == 2  # the error + the RCPU_DEBUG hint
