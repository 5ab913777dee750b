"""Architecture adapter: where a Llama-family model keeps its decoder layers and projections.

Llama, Mistral and Qwen2 share the decoder layout that RCPU prunes::

    model.model.layers[i].self_attn.{q,k,v,o}_proj
    model.model.layers[i].mlp.{gate,up,down}_proj

The pruning core only touches a model through :func:`decoder_layers`, :func:`layer_parts` and
:func:`decoder_parts`.
"""

from __future__ import annotations

import torch
from torch import nn

SUPPORTED_MODEL_TYPES: tuple[str, ...] = ("llama", "mistral", "qwen2")


def _model_type(model_or_config) -> str:
    config = getattr(model_or_config, "config", model_or_config)
    return str(getattr(config, "model_type", type(model_or_config).__name__))


def check_supported(model_or_config) -> None:
    """Raise ``ValueError`` unless the model (or its config) is a supported Llama-family model."""
    model_type = _model_type(model_or_config)
    if model_type not in SUPPORTED_MODEL_TYPES:
        config = getattr(model_or_config, "config", model_or_config)
        archs = getattr(config, "architectures", None) or [model_type]
        raise ValueError(
            f"unsupported architecture {', '.join(map(str, archs))} (model_type={model_type!r}); "
            f"rcpu-lightning prunes Llama-family decoders with model_type in {list(SUPPORTED_MODEL_TYPES)}"
        )


#: Where a ``*ForCausalLM`` keeps its decoder layers, as a module path and state-dict prefix.
LAYERS_PATH = "model.layers"


def layer_prefix(index: int) -> str:
    """State-dict (checkpoint) prefix of decoder layer ``index`` of a ``*ForCausalLM``: ``model.layers.<i>.``."""
    return f"{LAYERS_PATH}.{index}."


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a ``*ForCausalLM`` (or its bare ``*Model``)."""
    check_supported(model)
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(model).__name__} has no `model.layers` ModuleList")
    return layers


class LayerParts:
    """Live named access to the modules of one decoder layer that structured pruning reads and rewrites.

    Every member is looked up on the layer when it is read, never stored: surgery replaces modules
    (``attn.o_proj = new_linear(...)``), and a ``LayerParts`` held across the cut reads the new ones.
    One object per layer, made once and passed down (the SliceGPT ``LayerAdapter`` idea).
    """

    __slots__ = ("layer",)

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer

    attn = property(lambda self: self.layer.self_attn)
    mlp = property(lambda self: self.layer.mlp)
    q_proj = property(lambda self: self.layer.self_attn.q_proj)
    k_proj = property(lambda self: self.layer.self_attn.k_proj)
    v_proj = property(lambda self: self.layer.self_attn.v_proj)
    o_proj = property(lambda self: self.layer.self_attn.o_proj)  # [hidden, n_heads * head_dim]: columns = heads
    gate_proj = property(lambda self: self.layer.mlp.gate_proj)
    up_proj = property(lambda self: self.layer.mlp.up_proj)
    down_proj = property(lambda self: self.layer.mlp.down_proj)  # [hidden, intermediate]: columns = channels
    post_attention_layernorm = property(lambda self: self.layer.post_attention_layernorm)  # before the MLP

    @property
    def head_dim(self) -> int:
        return int(self.layer.self_attn.head_dim)

    @property
    def num_heads(self) -> int:
        return self.q_proj.out_features // self.head_dim

    @property
    def num_kv_heads(self) -> int:
        return self.k_proj.out_features // self.head_dim

    @property
    def intermediate_size(self) -> int:
        return self.down_proj.in_features

    @property
    def device(self) -> torch.device:
        """Where the layer's weights are (the device its forward runs on)."""
        return self.q_proj.weight.device


def layer_parts(layer: nn.Module) -> LayerParts:
    """Named, live access to one decoder layer's projections (see :class:`LayerParts`)."""
    return LayerParts(layer)


def decoder_parts(model: nn.Module) -> list[LayerParts]:
    """One :class:`LayerParts` per decoder layer of ``model``, in order."""
    return [LayerParts(layer) for layer in decoder_layers(model)]


def rotary_embedding(model: nn.Module) -> nn.Module | None:
    """The model's shared rotary embedding (``model.model.rotary_emb``: ``(x, position_ids) -> (cos, sin)``
    in ``x``'s dtype), or None."""
    return getattr(getattr(model, "model", None), "rotary_emb", None)


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
