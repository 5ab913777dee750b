"""GGUF export of a (pruned, possibly fine-tuned) Llama model, for llama.cpp and what is built on it
(ollama, LM Studio, llama-cpp-python), and :func:`read_gguf`, its pure-PyTorch inverse.

Architecture. A model whose layers all have the same head counts and MLP width is written as
llama.cpp's ``llama``. Layers of different shapes (AL-AM, RCPU-affine) are written as ``deci``,
llama.cpp's architecture for the NAS-pruned Llama-3.1-Nemotron models: its ``head_count``,
``head_count_kv`` and ``feed_forward_length`` keys are arrays with one value per layer, and each
layer's tensors have their own shapes. Both read the optional biases (``attn_output.bias`` and
``ffn_down.bias`` that compensation adds; q/k/v and gate/up biases of Llama's bias flags). The head
size is written explicitly (``attention.key_length``/``value_length``, ``rope.dimension_count``):
a pruned layer's head count no longer divides the hidden size.

RoPE. Hugging Face Llama rotates the two halves of each head, (x[i], x[i + d/2]); llama.cpp's
"normal" RoPE rotates consecutive pairs, (x[2i], x[2i + 1]). q and k rows (weights and biases) are
therefore reordered within each head, row ``s * d/2 + i`` -> ``2 * i + s`` (:func:`rope_interleave`).

Dtypes. ``f32``, ``f16`` (default) and ``bf16`` store every matrix in that type; ``q8_0`` stores the
matrices whose rows are a multiple of 32 long (Q8_0's block) as Q8_0 and the others as f16 (a pruned
MLP of 1229 channels gives ``ffn_down`` rows of 1229), as llama.cpp's own converter does. Vectors
(norms, biases) are always f32.

Tokenizer. From a GGUF file, its ``tokenizer.*`` keys are copied as they are (the embedded
SmolLM2); from a Hugging Face folder, ``tokenizer.json`` gives the tokens (byte-level BPE as
``gpt2``; SentencePiece-style as ``llama`` through the gguf package's vocab helpers) and the gguf
package's ``SpecialVocab`` the merges, special token ids and chat template. llama.cpp picks its
pre-tokenizer regex by name (``tokenizer.ggml.pre``); pass ``tokenizer_pre`` (e.g. ``llama-bpe``,
``smollm``) where it is known, else llama.cpp uses its default one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import torch
from torch import nn

from ..files import check_output_path, write_atomic

__all__ = ["GGUF_DTYPES", "LayerShape", "export_gguf", "gguf_cli", "layer_shapes", "load_source_model", "read_gguf",
           "rope_interleave"]

GGUF_DTYPES = ("f16", "bf16", "f32", "q8_0")
#: Architectures llama.cpp runs with this layout (Llama's); Mistral/Qwen2 have their own GGUF archs.
SUPPORTED_MODEL_TYPES = ("llama",)
Q8_BLOCK = 32
# Hugging Face projection name -> llama.cpp tensor name (blk.N.<name>.weight / .bias).
TENSOR_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


@dataclass(frozen=True)
class LayerShape:
    """One decoder layer's shape values."""

    num_heads: int
    num_kv_heads: int
    intermediate_size: int


def layer_shapes(model: nn.Module) -> list[LayerShape]:
    """Each decoder layer's head counts and MLP width, read from its modules."""
    shapes = []
    for layer in model.model.layers:
        attn, hd = layer.self_attn, int(layer.self_attn.head_dim)
        shapes.append(LayerShape(attn.q_proj.out_features // hd, attn.k_proj.out_features // hd,
                                 layer.mlp.down_proj.in_features))
    return shapes


def rope_interleave(rows: torch.Tensor, num_heads: int, inverse: bool = False) -> torch.Tensor:
    """q/k rows [num_heads * d, ...] from Hugging Face's half-split RoPE order to llama.cpp's pair order
    (``inverse``: back). Within each head, row ``s * d/2 + i`` <-> ``2 * i + s``."""
    if num_heads == 0:
        return rows
    d = rows.shape[0] // num_heads
    split = (num_heads, 2, d // 2) if not inverse else (num_heads, d // 2, 2)
    return rows.reshape(*split, *rows.shape[1:]).transpose(1, 2).reshape(rows.shape)


# ---------------------------------------------------------------------------------------------- export


def _check_args(dtype: str, path: Path, tokenizer: Any) -> None:
    if dtype not in GGUF_DTYPES:
        raise ValueError(f"GGUF dtype {dtype!r} is not supported; use one of {list(GGUF_DTYPES)}")
    if path.suffix != ".gguf":
        raise ValueError(f"GGUF output {str(path)!r} must end in .gguf")
    if isinstance(tokenizer, (str, os.PathLike)):
        source = Path(tokenizer).expanduser()
        if not (source.is_file() and source.suffix == ".gguf") and not (source / "tokenizer.json").is_file():
            raise FileNotFoundError(f"tokenizer {str(tokenizer)!r} is neither a .gguf file nor a folder with "
                                    "tokenizer.json")


def _tokenizer_of(spec: str | os.PathLike) -> Path | None:
    """The tokenizer a model given by name/path brings: its GGUF file, or its folder (None for a hub id)."""
    from ..models.loading import check_model_spec, embedded_gguf_path

    kind = check_model_spec(spec)
    if kind == "embedded":
        return embedded_gguf_path(str(spec))
    return Path(str(spec)).expanduser() if kind in ("gguf", "folder") else None


def load_source_model(spec: str | os.PathLike) -> nn.Module:
    """A float32 model from a folder (a pruned one through ``load_pruned``), a .gguf file or an embedded name."""
    from ..models.loading import load_causal_lm
    from ..pruning.io import PLAN_FILE, load_pruned

    folder = Path(str(spec)).expanduser()
    if folder.is_dir() and (folder / PLAN_FILE).is_file():
        return load_pruned(folder, dtype=torch.float32).eval()
    return load_causal_lm(str(spec), dtype="float32")[0]


def _check_model_type(model_type: Any) -> None:
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"GGUF export supports model_type in {list(SUPPORTED_MODEL_TYPES)}, not {model_type!r}")


def _check_model(model: nn.Module) -> list[LayerShape]:
    _check_model_type(getattr(model.config, "model_type", None))
    rope = getattr(model.config, "rope_parameters", None) or getattr(model.config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") not in ("default", "llama3"):
        raise ValueError(f"GGUF export: RoPE type {rope.get('rope_type')!r} is not supported (default, llama3)")
    shapes = layer_shapes(model)
    for i, (shape, layer) in enumerate(zip(shapes, model.model.layers)):
        if shape.num_kv_heads == 0 or shape.num_heads % shape.num_kv_heads:
            raise ValueError(f"layer {i}: {shape.num_heads} query heads over {shape.num_kv_heads} kv heads; "
                             "llama.cpp needs a whole number of query heads per kv head")
        if shape.intermediate_size == 0 and layer.mlp.down_proj.bias is not None:
            raise ValueError(f"layer {i} has no MLP channels left but a down_proj bias; llama.cpp skips "
                             "MLP-free layers whole, so that bias would be lost")
    return shapes


def _matrix(weight: np.ndarray, dtype: str) -> tuple[np.ndarray, Any]:
    """(data, raw GGML type or None) of a float32 matrix [out, in] in ``dtype``."""
    from gguf import GGMLQuantizationType, quants

    if dtype == "q8_0" and weight.shape[-1] % Q8_BLOCK:
        dtype = "f16"  # Q8_0 needs rows of whole 32-blocks
    if dtype == "f32":
        return weight, None
    if dtype == "f16":
        return weight.astype(np.float16), None
    qtype = GGMLQuantizationType.BF16 if dtype == "bf16" else GGMLQuantizationType.Q8_0
    return quants.quantize(weight, qtype), qtype


def _tensors(model: nn.Module, shapes: list[LayerShape], dtype: str) -> dict[str, tuple[np.ndarray, Any]]:
    """llama.cpp tensor name -> (data, raw type): embeddings, per-layer weights/biases, final norm, head."""
    def f32(t: torch.Tensor) -> np.ndarray:
        return t.detach().to("cpu", torch.float32).numpy()

    out = {"token_embd.weight": _matrix(f32(model.model.embed_tokens.weight), dtype)}
    for i, (layer, shape) in enumerate(zip(model.model.layers, shapes)):
        for hf_name, name in TENSOR_NAMES.items():
            module = layer.get_submodule(hf_name)
            for kind in ("weight", "bias"):
                value = getattr(module, kind, None)
                if value is None or value.numel() == 0:
                    continue
                value = value.detach()
                if name in ("attn_q", "attn_k"):
                    value = rope_interleave(value, shape.num_heads if name == "attn_q" else shape.num_kv_heads)
                data = f32(value)
                out[f"blk.{i}.{name}.{kind}"] = _matrix(data, dtype) if data.ndim == 2 else (data, None)
    out["output_norm.weight"] = (f32(model.model.norm.weight), None)
    head = model.get_output_embeddings().weight
    if head is not model.model.embed_tokens.weight:  # llama.cpp reuses token_embd when output is absent
        out["output.weight"] = _matrix(f32(head), dtype)
    rope_factors = _rope_factors(model)
    if rope_factors is not None:
        out["rope_freqs.weight"] = (rope_factors, None)
    return out


def _rope_factors(model: nn.Module) -> np.ndarray | None:
    """llama3 RoPE: llama.cpp divides each base frequency by a factor (``rope_freqs``); the factors are
    the ratio of the base frequencies to the model's own (``rotary_emb.inv_freq``)."""
    config = model.config
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "llama3":
        return None
    inv_freq = model.model.rotary_emb.inv_freq.detach().to("cpu", torch.float64)
    dim = 2 * inv_freq.numel()
    base = 1.0 / (_rope_theta(config) ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    return (base / inv_freq).to(torch.float32).numpy()


def _rope_theta(config) -> float:
    rope = getattr(config, "rope_parameters", None) or {}
    return float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _hparams(writer, model: nn.Module, shapes: list[LayerShape], uniform: bool) -> None:
    config, head_dim = model.config, int(model.model.layers[0].self_attn.head_dim)

    def per_layer(values: list[int]) -> int | list[int]:
        return values[0] if uniform else values

    writer.add_block_count(len(shapes))
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_feed_forward_length(per_layer([s.intermediate_size for s in shapes]))
    writer.add_head_count(per_layer([s.num_heads for s in shapes]))
    writer.add_head_count_kv(per_layer([s.num_kv_heads for s in shapes]))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(int(model.model.embed_tokens.weight.shape[0]))


# ------------------------------------------------------------------------------------------- tokenizer


def _copy_tokenizer(writer, gguf_file: Path, n_vocab: int) -> None:
    """Copy every ``tokenizer.*`` key of a GGUF file, with its value type."""
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(gguf_file)
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type)
    n_tokens = len(reader.fields["tokenizer.ggml.tokens"].data) if "tokenizer.ggml.tokens" in reader.fields else 0
    if n_tokens != n_vocab:
        raise ValueError(f"tokenizer {str(gguf_file)!r} has {n_tokens} tokens, the model {n_vocab} embeddings")


def _hf_tokenizer(writer, folder: Path, n_vocab: int, pre: str | None) -> None:
    """Tokenizer keys from a Hugging Face folder (``tokenizer.json``); see the module docstring."""
    from gguf import SpecialVocab, TokenType
    from gguf.vocab import LlamaHfVocab

    spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    model = spec.get("model", {})
    if model.get("type") == "BPE" and not model.get("byte_fallback"):
        added = {t["id"]: t for t in spec.get("added_tokens", [])}
        by_id = {i: text for text, i in model["vocab"].items()} | {i: t["content"] for i, t in added.items()}
        if max(by_id) >= n_vocab:
            raise ValueError(f"tokenizer {str(folder)!r} has token ids up to {max(by_id)}, the model only "
                             f"{n_vocab} embeddings")
        tokens, types = [], []
        for i in range(n_vocab):
            tokens.append(by_id.get(i, f"[PAD{i}]"))
            if i not in by_id:
                types.append(TokenType.UNUSED)
            elif i in added:
                types.append(TokenType.CONTROL if added[i].get("special") else TokenType.USER_DEFINED)
            else:
                types.append(TokenType.NORMAL)
        writer.add_tokenizer_model("gpt2")
        merges = True
    else:  # SentencePiece-style (Llama-2): the gguf package's helper gives tokens, scores and types
        vocab = LlamaHfVocab(folder)
        tokens, scores, types = [], [], []
        for text, score, ttype in vocab.all_tokens():
            tokens.append(text), scores.append(score), types.append(ttype)
        tokens += [f"[PAD{i}]".encode() for i in range(len(tokens), n_vocab)]
        scores += [-1000.0] * (n_vocab - len(scores))
        types += [TokenType.UNUSED] * (n_vocab - len(types))
        writer.add_tokenizer_model("llama")
        writer.add_token_scores(scores)
        merges = False
    if len(tokens) != n_vocab:
        raise ValueError(f"tokenizer {str(folder)!r} has {len(tokens)} tokens, the model {n_vocab} embeddings")
    writer.add_tokenizer_pre(pre or "default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    SpecialVocab(folder, load_merges=merges, n_vocab=n_vocab).add_to_gguf(writer, quiet=True)


# ----------------------------------------------------------------------------------------------- entry


def export_gguf(
    model: nn.Module | str | os.PathLike,
    path: str | os.PathLike,
    dtype: str = "f16",
    tokenizer: str | os.PathLike | None = None,
    tokenizer_pre: str | None = None,
    name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` as a GGUF file for llama.cpp (see the module docstring).

    Args:
        model: a Llama ``*ForCausalLM`` (pruned or not), or what ``--model.model`` accepts: a folder
            (a pruned one is read with ``load_pruned``), a ``.gguf`` file, ``smollm2-135m``.
        path: the ``.gguf`` file to write (atomically: staged beside it, then renamed).
        dtype: ``f16`` (default), ``bf16``, ``f32`` or ``q8_0``.
        tokenizer: a ``.gguf`` file whose tokenizer keys are copied, or a Hugging Face folder with
            ``tokenizer.json``. Default: the source's own when ``model`` is given by name/path.
        tokenizer_pre: llama.cpp's pre-tokenizer name for a Hugging Face tokenizer (default: ``default``).
        name: ``general.name`` (default: the source's folder or file name).
        overwrite: replace an existing file at ``path``.

    Returns:
        ``path``.
    """
    path = Path(path).expanduser()
    if tokenizer is None and not isinstance(model, nn.Module):
        tokenizer = _tokenizer_of(model)
    if tokenizer is None:
        raise ValueError("GGUF export needs a tokenizer: pass tokenizer= (a .gguf file or a folder with tokenizer.json)")
    _check_args(dtype, path, tokenizer)
    check_output_path(path, overwrite, "GGUF output", "overwrite")
    model, source_name = _source_model(model, name)
    shapes = _check_model(model)
    tensors = _tensors(model, shapes, dtype)

    def write(staged: str) -> None:
        _write_file(staged, model, shapes, tensors, dtype, Path(str(source_name)).name,
                    Path(tokenizer).expanduser(), tokenizer_pre)

    return write_atomic(path, write, overwrite=overwrite, what="GGUF output", flag="overwrite")


def _source_model(model: nn.Module | str | os.PathLike, name: str | None) -> tuple[nn.Module, str]:
    """The model to export and its ``general.name``; a path is checked (architecture) before it is loaded."""
    if isinstance(model, nn.Module):
        return model, name or getattr(model.config, "_name_or_path", "") or "model"
    config_file = Path(str(model)).expanduser() / "config.json"
    if config_file.is_file():  # refuse another architecture before any weight is read
        _check_model_type(json.loads(config_file.read_text()).get("model_type"))
    return load_source_model(model), name or Path(str(model)).name


def _write_file(staged: str, model: nn.Module, shapes: list, tensors: dict, dtype: str, name: str,
                tokenizer: Path, tokenizer_pre: str | None) -> None:
    """Write the GGUF file at ``staged``: header keys, tokenizer, tensors (arch ``llama`` or ``deci``)."""
    from gguf import GGML_QUANT_VERSION, GGUFWriter, LlamaFileType

    uniform = len(set(shapes)) == 1
    file_types = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16,
                  "bf16": LlamaFileType.MOSTLY_BF16, "q8_0": LlamaFileType.MOSTLY_Q8_0}
    n_vocab = int(model.model.embed_tokens.weight.shape[0])
    writer = GGUFWriter(staged, "llama" if uniform else "deci")
    writer.add_name(name)
    writer.add_file_type(int(file_types[dtype]))
    if dtype == "q8_0":
        writer.add_quantization_version(GGML_QUANT_VERSION)
    _hparams(writer, model, shapes, uniform)
    if tokenizer.suffix == ".gguf":
        _copy_tokenizer(writer, tokenizer, n_vocab)
    else:
        _hf_tokenizer(writer, tokenizer, n_vocab, tokenizer_pre)
    for tensor_name, (data, raw_type) in tensors.items():
        writer.add_tensor(tensor_name, data, raw_dtype=raw_type)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


# ------------------------------------------------------------------------------------------------ read


def _field(reader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def read_gguf(path: str | os.PathLike) -> nn.Module:
    """Rebuild a Hugging Face ``LlamaForCausalLM`` (float32, per-layer shapes) from a GGUF file that
    :func:`export_gguf` wrote: tensors dequantized, q/k rows put back in Hugging Face's RoPE order.
    A check of the export (and a way back into PyTorch); the tokenizer is not rebuilt."""
    from gguf import GGUFReader
    from transformers import LlamaConfig, LlamaForCausalLM

    from .modeling_pruned import reshape_layers

    reader = GGUFReader(path)
    arch = _field(reader, "general.architecture")
    if arch not in ("llama", "deci"):
        raise ValueError(f"{str(path)!r}: architecture {arch!r}; read_gguf reads llama and deci files")
    key = lambda k, default=None: _field(reader, f"{arch}.{k}", default)  # noqa: E731
    n_layer = int(key("block_count"))

    def per_layer(value: Any) -> list[int]:
        return [int(v) for v in value] if isinstance(value, list) else [int(value)] * n_layer

    heads, kv_heads = per_layer(key("attention.head_count")), per_layer(key("attention.head_count_kv"))
    widths = per_layer(key("feed_forward_length"))
    tensors = _read_tensors(reader)
    if "rope_freqs.weight" in tensors:
        raise ValueError(f"{str(path)!r} has llama3 RoPE factors (rope_freqs); read_gguf rebuilds default RoPE only")
    hidden, head_dim = int(key("embedding_length")), int(key("attention.key_length"))
    config = LlamaConfig(
        vocab_size=tensors["token_embd.weight"].shape[0], hidden_size=hidden, num_hidden_layers=n_layer,
        intermediate_size=max(widths), num_attention_heads=1, num_key_value_heads=1, head_dim=head_dim,
        rms_norm_eps=float(key("attention.layer_norm_rms_epsilon")),
        max_position_embeddings=int(key("context_length")), rope_theta=float(key("rope.freq_base", 10000.0)),
        tie_word_embeddings="output.weight" not in tensors,
    )
    model = LlamaForCausalLM(config)
    layers = [{"num_heads": h, "num_kv_heads": kv, "intermediate_size": w,
               "biases": [hf.rsplit(".", 1)[-1] for hf, name in TENSOR_NAMES.items()
                          if f"blk.{i}.{name}.bias" in tensors]}
              for i, (h, kv, w) in enumerate(zip(heads, kv_heads, widths))]
    reshape_layers(model, layers)
    model.load_state_dict(_hf_state(tensors, heads, kv_heads), strict=not config.tie_word_embeddings)
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.eval()


def _read_tensors(reader) -> dict[str, torch.Tensor]:
    """Every tensor of the file as float32, in PyTorch's dimension order (quantized ones dequantized)."""
    from gguf import GGMLQuantizationType, quants

    tensors = {}
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))  # GGUF lists the fastest dim first
        if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            data = np.asarray(t.data, dtype=np.float32)
        else:
            data = quants.dequantize(t.data, t.tensor_type)
        tensors[t.name] = torch.from_numpy(np.array(data.reshape(shape), dtype=np.float32))  # a writable copy
    return tensors


def _hf_state(tensors: dict[str, torch.Tensor], heads: list[int], kv_heads: list[int]) -> dict[str, torch.Tensor]:
    """GGUF tensor names -> Hugging Face state-dict keys, q/k rows back in Hugging Face's RoPE order."""
    state = {"model.embed_tokens.weight": tensors["token_embd.weight"], "model.norm.weight": tensors["output_norm.weight"]}
    if "output.weight" in tensors:
        state["lm_head.weight"] = tensors["output.weight"]
    for i in range(len(heads)):
        for hf_name, name in TENSOR_NAMES.items():
            for kind in ("weight", "bias"):
                value = tensors.get(f"blk.{i}.{name}.{kind}")
                if value is None:
                    continue
                if name in ("attn_q", "attn_k"):
                    value = rope_interleave(value, heads[i] if name == "attn_q" else kv_heads[i], inverse=True)
                state[f"model.layers.{i}.{hf_name}.{kind}"] = value
    return state


# ---------------------------------------------------------------------------------------- command line


def gguf_command(model: str, path: str, dtype: Literal["f16", "bf16", "f32", "q8_0"] = "f16",
                 tokenizer: Optional[str] = None, tokenizer_pre: Optional[str] = None,
                 overwrite: bool = False) -> None:
    """Write a model as a GGUF file for llama.cpp / ollama (``llama`` for uniform shapes, ``deci`` with
    per-layer arrays otherwise).

    Args:
        model: a model folder (a pruned one included), a .gguf file or smollm2-135m.
        path: the .gguf file to write.
        dtype: f16, bf16, f32 or q8_0 (Q8_0 where rows are whole 32-blocks, f16 elsewhere).
        tokenizer: a .gguf file whose tokenizer keys are copied, or a folder with tokenizer.json
            (default: the model's own).
        tokenizer_pre: llama.cpp's pre-tokenizer name for a Hugging Face tokenizer (e.g. llama-bpe, smollm).
        overwrite: replace an existing file at path.
    """
    written = export_gguf(model, path, dtype=dtype, tokenizer=tokenizer, tokenizer_pre=tokenizer_pre,
                          overwrite=overwrite)
    print(f"wrote {written} ({written.stat().st_size / 2**20:.1f} MiB, {dtype})", flush=True)


def gguf_cli(args: Optional[list[str]] = None, *, prog: Optional[str] = None) -> None:
    """``cli.py gguf MODEL PATH [--dtype ...]``: :func:`gguf_command` from command-line words."""
    from jsonargparse import CLI

    CLI(gguf_command, args=args, prog=prog)
