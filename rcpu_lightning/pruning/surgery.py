"""Physical removal of heads and channels: new, smaller ``nn.Linear`` modules.

New parameters are created outside ``torch.inference_mode`` (the Lightning layer prunes inside a
predict loop) as ordinary ``nn.Parameter`` with ``requires_grad=True``, so the pruned model can be
fine-tuned afterwards. Shapes that the config can describe are written to the config too.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ..models.adapter import LayerParts, decoder_layers, layer_parts
from .plan import LayerPlan, PruningPlan
from .selection import head_layout

ATTN_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJ = ("gate_proj", "up_proj", "down_proj")
#: Architectures whose config flags put a bias on every attention / MLP projection.
BIAS_FLAG_MODEL_TYPES = ("llama",)


@contextmanager
def weight_surgery():
    """Leave inference mode and disable autograd while parameters are rebuilt."""
    with torch.inference_mode(False), torch.no_grad():
        yield


def _param(t: Tensor) -> nn.Parameter:
    # clone() outside inference mode turns an inference tensor into a normal one.
    return nn.Parameter(t.detach().clone(), requires_grad=True)


def new_linear(like: nn.Linear, weight: Tensor | None, bias: Tensor | bool | None, shape=None) -> nn.Linear:
    """A plain ``nn.Linear`` on ``like``'s device/dtype.

    ``weight`` [out, in] (or None with ``shape=(out, in)`` for uninitialised memory); ``bias`` a
    tensor, ``True`` (uninitialised), or ``None``/``False`` (no bias).
    """
    dev, dtype = like.weight.device, like.weight.dtype
    out_f, in_f = weight.shape if weight is not None else shape
    with weight_surgery():
        lin = nn.Linear(in_f, out_f, bias=False, device="meta", dtype=dtype)
        w = weight.to(dev, dtype) if weight is not None else torch.empty(out_f, in_f, device=dev, dtype=dtype)
        lin.weight = _param(w) if weight is not None else nn.Parameter(w)
        if isinstance(bias, Tensor):
            lin.bias = _param(bias.to(dev, dtype))
        elif bias is True:
            lin.bias = nn.Parameter(torch.empty(out_f, device=dev, dtype=dtype))
        else:
            lin.register_parameter("bias", None)
    lin.train(like.training)
    return lin


def head_rows(heads: list[int], head_dim: int) -> Tensor:
    """Row indices ``[h * head_dim + j]`` of the given heads -> [len(heads) * head_dim]."""
    h = torch.as_tensor(heads, dtype=torch.long)
    return (h[:, None] * head_dim + torch.arange(head_dim)).flatten()


def _rows(lin: nn.Linear, rows: Tensor) -> nn.Linear:
    rows = rows.to(lin.weight.device)
    bias = lin.bias[rows] if lin.bias is not None else None
    return new_linear(lin, lin.weight[rows], bias)


def _with_bias(lin: nn.Linear, weight: Tensor, bias_delta: Tensor | None) -> nn.Linear:
    """``lin`` with its input columns replaced by ``weight`` and ``bias_delta`` added to its bias."""
    bias = lin.bias
    if bias_delta is not None:
        bias = bias_delta if bias is None else bias + bias_delta.to(bias.dtype)
    return new_linear(lin, weight, bias)


def set_head_counts(attn: nn.Module, num_heads: int, num_kv_heads: int) -> None:
    """Per-module attributes the attention forward reads (``num_key_value_groups``)."""
    attn.num_key_value_groups = num_heads // num_kv_heads
    for name, value in (("num_heads", num_heads), ("num_key_value_heads", num_kv_heads)):
        if hasattr(attn, name):
            setattr(attn, name, value)


def prune_attention(
    parts: LayerParts, kept_heads: list[int], kept_kv: list[int], o_weight: Tensor, o_bias: Tensor | None
) -> None:
    """Keep ``kept_heads`` (q rows, o columns) and ``kept_kv`` (k/v rows); install o_proj's new weight."""
    hd, attn = parts.head_dim, parts.attn
    attn.q_proj = _rows(parts.q_proj, head_rows(kept_heads, hd))
    if len(kept_kv) != parts.num_kv_heads:
        attn.k_proj = _rows(parts.k_proj, head_rows(kept_kv, hd))
        attn.v_proj = _rows(parts.v_proj, head_rows(kept_kv, hd))
    attn.o_proj = _with_bias(parts.o_proj, o_weight, o_bias)
    set_head_counts(attn, len(kept_heads), len(kept_kv))


def prune_mlp(parts: LayerParts, kept: list[int], down_weight: Tensor, down_bias: Tensor | None) -> None:
    """Keep MLP channels ``kept`` (gate/up rows, down columns); install down_proj's new weight."""
    rows = torch.as_tensor(kept, dtype=torch.long)
    parts.mlp.gate_proj = _rows(parts.gate_proj, rows)
    parts.mlp.up_proj = _rows(parts.up_proj, rows)
    parts.mlp.down_proj = _with_bias(parts.down_proj, down_weight, down_bias)
    if hasattr(parts.mlp, "intermediate_size"):
        parts.mlp.intermediate_size = len(kept)


def biased_projections(parts: LayerParts) -> list[str]:
    """Names of the layer's projections that carry a bias."""
    return [n for n in ATTN_PROJ + MLP_PROJ if getattr(parts, n).bias is not None]


def dense_values(model: nn.Module) -> dict:
    """The config values a plan may override, read before pruning."""
    cfg = model.config
    parts = layer_parts(decoder_layers(model)[0])
    return {
        "num_attention_heads": int(cfg.num_attention_heads),
        "num_key_value_heads": int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads),
        "intermediate_size": int(cfg.intermediate_size),
        "head_dim": int(parts.head_dim),
        "hidden_size": int(cfg.hidden_size),
        "attention_bias": bool(getattr(cfg, "attention_bias", False)),
        "mlp_bias": bool(getattr(cfg, "mlp_bias", False)),
    }


def bias_blocks(model_type: str, adds_bias: bool, compensates: dict[str, bool],
                counts: list[tuple[int, int]]) -> set[str]:
    """The blocks (``"attn"``, ``"mlp"``) whose projections all need a bias once pruning is done.

    Llama's ``attention_bias`` puts a bias on q/k/v/o and ``mlp_bias`` on gate/up/down. A compensation
    that adds a bias (FLAP's) gives o_proj (down_proj) one in every layer that loses heads (channels);
    so that plain ``from_pretrained`` reloads the checkpoint, every projection of that block then gets
    a (zero) bias too. Decided from the counts, before any layer is pruned, so a layer can be written
    out as soon as it is done (out-of-core pruning). Other architectures hard-code their biases;
    their added biases need :func:`~rcpu_lightning.pruning.load_pruned`.
    """
    if model_type not in BIAS_FLAG_MODEL_TYPES or not adds_bias:
        return set()
    blocks = set()
    if compensates["o_proj"] and any(heads for heads, _ in counts):
        blocks.add("attn")
    if compensates["down_proj"] and any(channels for _, channels in counts):
        blocks.add("mlp")
    return blocks


def added_bias_params(parts: LayerParts, blocks: set[str], heads: int, channels: int, gqa_mode: str) -> int:
    """Parameters the zero/compensation biases of ``blocks`` add to one layer losing ``heads`` query heads
    and ``channels`` MLP channels (projections that already carry a bias add none)."""
    whole = head_layout(parts.num_heads, parts.num_kv_heads, gqa_mode).whole_group  # MHA: a head takes its k/v
    kv_lost = heads * parts.num_kv_heads // parts.num_heads if whole else 0
    sizes = {"q_proj": (parts.num_heads - heads) * parts.head_dim,
             "k_proj": (parts.num_kv_heads - kv_lost) * parts.head_dim,
             "v_proj": (parts.num_kv_heads - kv_lost) * parts.head_dim,
             "o_proj": parts.o_proj.out_features,
             "gate_proj": parts.intermediate_size - channels, "up_proj": parts.intermediate_size - channels,
             "down_proj": parts.down_proj.out_features}
    names = (ATTN_PROJ if "attn" in blocks else ()) + (MLP_PROJ if "mlp" in blocks else ())
    return sum(sizes[n] for n in names if getattr(parts, n).bias is None)


def harmonise_layer(parts: LayerParts, blocks: set[str]) -> None:
    """Give every projection of the ``blocks`` of one layer a bias (zeros where it has none)."""
    for block, names, owner in (("attn", ATTN_PROJ, parts.attn), ("mlp", MLP_PROJ, parts.mlp)):
        if block not in blocks:
            continue
        for name in names:
            lin = getattr(parts, name)
            if lin.bias is None:
                zero = torch.zeros(lin.out_features, device=lin.weight.device, dtype=lin.weight.dtype)
                setattr(owner, name, new_linear(lin, lin.weight, zero))


def update_config(model: nn.Module, plan: PruningPlan) -> None:
    """Write uniform shapes to the config (non-uniform plans keep the dense values; see the plan) and
    set Llama's bias flags where every layer carries those biases (see :func:`bias_blocks`)."""
    values = plan.uniform_values()
    if values is None:
        model.config.head_dim = int(plan.dense["head_dim"])
        return
    for key, value in values.items():
        setattr(model.config, key, value)
    if model.config.model_type in BIAS_FLAG_MODEL_TYPES:
        for flag, names in (("attention_bias", ATTN_PROJ), ("mlp_bias", MLP_PROJ)):
            if all(n in lp.biases for lp in plan.layers for n in names):
                setattr(model.config, flag, True)


def apply_plan_shapes(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """Give a dense model the pruned shapes of ``plan`` (weights left uninitialised).

    Used to rebuild a pruned model before loading its state dict. Returns ``model``.
    """
    layers = decoder_layers(model)
    if len(layers) != len(plan.layers):
        raise ValueError(f"plan has {len(plan.layers)} layers, the model has {len(layers)}")
    for layer, lp in zip(layers, plan.layers):
        _apply_layer_shapes(layer_parts(layer), lp)
    values = plan.uniform_values()
    for key, value in (values or {"head_dim": plan.dense["head_dim"]}).items():
        setattr(model.config, key, value)
    if values is not None:
        for flag, names in (("attention_bias", ATTN_PROJ), ("mlp_bias", MLP_PROJ)):
            if hasattr(model.config, flag) and any(n in lp.biases for lp in plan.layers for n in names):
                setattr(model.config, flag, all(n in lp.biases for lp in plan.layers for n in names))
    return model


def _apply_layer_shapes(parts: LayerParts, lp: LayerPlan) -> None:
    hd, hidden = parts.head_dim, parts.q_proj.in_features
    shapes = {
        "q_proj": (lp.num_heads * hd, hidden),
        "k_proj": (lp.num_kv_heads * hd, hidden),
        "v_proj": (lp.num_kv_heads * hd, hidden),
        "o_proj": (parts.o_proj.out_features, lp.num_heads * hd),
        "gate_proj": (lp.intermediate_size, hidden),
        "up_proj": (lp.intermediate_size, hidden),
        "down_proj": (parts.down_proj.out_features, lp.intermediate_size),
    }
    for name, shape in shapes.items():
        owner = parts.attn if name in ATTN_PROJ else parts.mlp
        lin = getattr(parts, name)
        setattr(owner, name, new_linear(lin, None, name in lp.biases, shape=shape))
    set_head_counts(parts.attn, lp.num_heads, lp.num_kv_heads)
    if hasattr(parts.mlp, "intermediate_size"):
        parts.mlp.intermediate_size = lp.intermediate_size
