"""Llama / Mistral / Qwen2 decoders whose layers have their own head counts and MLP widths.

Written by rcpu-lightning (structured pruning). This file is self-contained (torch + transformers
only): a pruned folder whose layers differ carries a copy of it, its ``config.json`` lists each
layer's shapes under ``pruned_layers`` and names the class in ``auto_map``, so that

    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

(and every tool that loads models that way, e.g. lm-evaluation-harness) builds the per-layer shapes. The config's own shape values are the dense model's (they must
validate); each layer's modules are rebuilt from ``pruned_layers`` at the end of ``__init__``,
before ``from_pretrained`` loads the weights.
"""

from __future__ import annotations

from torch import nn

#: config.json key: one {"num_heads", "num_kv_heads", "intermediate_size", "biases"} per decoder layer.
LAYERS_KEY = "pruned_layers"
ATTN_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")


def _linear(like: nn.Linear, in_features: int, out_features: int, bias: bool) -> nn.Linear:
    """An uninitialised ``nn.Linear`` [out, in] on ``like``'s device and dtype (the weights are loaded later)."""
    return nn.Linear(in_features, out_features, bias=bias, device=like.weight.device, dtype=like.weight.dtype)


def reshape_layers(model: nn.Module, layers: list[dict]) -> nn.Module:
    """Give each decoder layer of ``model`` (a ``*ForCausalLM``) the shapes of ``layers[i]``."""
    decoder = model.model.layers
    if len(decoder) != len(layers):
        raise ValueError(f"{LAYERS_KEY} lists {len(layers)} layers, the model has {len(decoder)}")
    hidden = model.config.hidden_size
    for layer, shape in zip(decoder, layers):
        attn, mlp = layer.self_attn, layer.mlp
        heads, kv_heads, width = shape["num_heads"], shape["num_kv_heads"], shape["intermediate_size"]
        biases = set(shape.get("biases", ()))
        q_rows, kv_rows = heads * attn.head_dim, kv_heads * attn.head_dim
        sizes = {  # name: (in_features, out_features)
            "q_proj": (hidden, q_rows), "k_proj": (hidden, kv_rows), "v_proj": (hidden, kv_rows),
            "o_proj": (q_rows, hidden),
            "gate_proj": (hidden, width), "up_proj": (hidden, width), "down_proj": (width, hidden),
        }
        for name, (n_in, n_out) in sizes.items():
            owner = attn if name in ATTN_PROJ else mlp
            setattr(owner, name, _linear(getattr(owner, name), n_in, n_out, name in biases))
        attn.num_key_value_groups = heads // kv_heads if kv_heads else 0
        for attr, value in (("num_heads", heads), ("num_key_value_heads", kv_heads)):
            if hasattr(attn, attr):
                setattr(attn, attr, value)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = width
    return model


def _pruned(base: type) -> type:
    """``base`` (a ``*ForCausalLM``) whose ``__init__`` ends by rebuilding the per-layer shapes."""

    def __init__(self, config, *args, **kwargs):
        base.__init__(self, config, *args, **kwargs)
        reshape_layers(self, getattr(config, LAYERS_KEY))

    return type(f"Pruned{base.__name__}", (base,), {"__init__": __init__, "__module__": __name__})


def _classes() -> dict[str, type]:
    from transformers import LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM

    return {base.__name__: _pruned(base) for base in (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)}


_CLASSES = _classes()
PrunedLlamaForCausalLM = _CLASSES["LlamaForCausalLM"]
PrunedMistralForCausalLM = _CLASSES["MistralForCausalLM"]
PrunedQwen2ForCausalLM = _CLASSES["Qwen2ForCausalLM"]
