"""Architecture adapter: where a Llama-family model keeps its decoder layers and projections.

Llama, Mistral and Qwen2 share the decoder layout that RCPU prunes::

    model.model.layers[i].self_attn.{q,k,v,o}_proj
    model.model.layers[i].mlp.{gate,up,down}_proj

The pruning core only touches a model through :func:`decoder_layers` and :func:`layer_parts`.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a ``*ForCausalLM`` (or its bare ``*Model``)."""
    check_supported(model)
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(model).__name__} has no `model.layers` ModuleList")
    return layers


@dataclass(frozen=True)
class LayerParts:
    """The modules of one decoder layer that structured pruning reads and rewrites."""

    attn: nn.Module
    q_proj: nn.Linear
    k_proj: nn.Linear
    v_proj: nn.Linear
    o_proj: nn.Linear  # [hidden, n_heads * head_dim]; its input columns are the heads
    mlp: nn.Module
    gate_proj: nn.Linear
    up_proj: nn.Linear
    down_proj: nn.Linear  # [hidden, intermediate]; its input columns are the MLP channels
    head_dim: int

    @property
    def num_heads(self) -> int:
        return self.q_proj.out_features // self.head_dim

    @property
    def num_kv_heads(self) -> int:
        return self.k_proj.out_features // self.head_dim

    @property
    def intermediate_size(self) -> int:
        return self.down_proj.in_features


def layer_parts(layer: nn.Module) -> LayerParts:
    """Named access to one decoder layer's projections."""
    attn, mlp = layer.self_attn, layer.mlp
    return LayerParts(
        attn=attn,
        q_proj=attn.q_proj,
        k_proj=attn.k_proj,
        v_proj=attn.v_proj,
        o_proj=attn.o_proj,
        mlp=mlp,
        gate_proj=mlp.gate_proj,
        up_proj=mlp.up_proj,
        down_proj=mlp.down_proj,
        head_dim=int(attn.head_dim),
    )


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
