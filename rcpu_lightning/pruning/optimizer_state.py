"""Optimizer state across a pruning step (pure PyTorch): the same optimizer objects get the new
parameters in place of the old ones, with their state sliced to the kept rows/columns.

Adam's moments of the surviving heads/channels are unchanged, those of removed units dropped; a bias
added by compensation joins the group of its weight with fresh state; LR schedulers continue.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ..models.adapter import decoder_layers, layer_parts
from .plan import LayerPlan, PruningPlan
from .surgery import ATTN_PROJ, MLP_PROJ, head_rows

#: (layer index, projection name) -> {"weight": parameter, "bias": parameter or None}
ProjectionParams = dict[tuple[int, str], dict[str, Optional[nn.Parameter]]]


def projection_params(lm: nn.Module) -> ProjectionParams:
    """The projections' parameters before a step: (layer, projection) -> {"weight": p, "bias": p or None}."""
    return {key: {"weight": lin.weight, "bias": lin.bias} for key, lin in _projections(lm).items()}


def _projections(lm: nn.Module) -> dict[tuple[int, str], nn.Module]:
    out = {}
    for i, layer in enumerate(decoder_layers(lm)):
        parts = layer_parts(layer)
        for name in ATTN_PROJ + MLP_PROJ:
            out[(i, name)] = getattr(parts, name)
    return out


def kept_index(lp: LayerPlan, name: str, kind: str, head_dim: int) -> Optional[tuple[int, torch.Tensor]]:
    """(dim, indices) of a projection parameter's kept slices, from the step's plan (indices refer to
    the layer before the step); None: the parameter keeps its shape (o_proj/down_proj biases)."""
    if name == "q_proj":
        return 0, head_rows(lp.kept_heads, head_dim)
    if name in ("k_proj", "v_proj"):
        return 0, head_rows(lp.kept_kv_heads, head_dim)
    if name in ("gate_proj", "up_proj"):
        return 0, torch.as_tensor(lp.kept_channels, dtype=torch.long)
    if kind == "bias":
        return None
    if name == "o_proj":
        return 1, head_rows(lp.kept_heads, head_dim)
    return 1, torch.as_tensor(lp.kept_channels, dtype=torch.long)  # down_proj


def slice_state(state: dict[str, Any], old: nn.Parameter, where: Optional[tuple[int, torch.Tensor]]) -> Optional[dict]:
    """``state`` with every tensor shaped like ``old`` cut to the kept slices; None when some tensor
    cannot be (an optimizer with factored or flattened state): the parameter then starts fresh."""
    out = {}
    for key, value in state.items():
        if torch.is_tensor(value) and value.dim() > 0:
            if value.shape != old.shape:
                return None
            value = value if where is None else value.index_select(where[0], where[1].to(value.device))
        out[key] = value
    return out


def carry_optimizer_state(optimizers: list[torch.optim.Optimizer], old: ProjectionParams, lm: nn.Module,
                          step: PruningPlan) -> int:
    """Give the optimizers the step's new parameters in place of the old ones (same optimizer objects,
    same param groups, so LR schedulers continue) with their state sliced to the kept rows/columns;
    parameters added by the step (compensation biases) join the group of their weight with fresh state.
    Returns how many parameters lost their state because it could not be sliced (0 normally)."""
    new = _projections(lm)
    head_dims = [layer_parts(layer).head_dim for layer in decoder_layers(lm)]
    for (i, name), params in old.items():  # frozen stays frozen
        for kind, p in params.items():
            q = getattr(new[(i, name)], kind)
            if p is not None and q is not None and q is not p:
                q.requires_grad_(p.requires_grad)
    where = {id(p): (key, kind) for key, params in old.items() for kind, p in params.items() if p is not None}
    fresh = 0
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            params = []
            for p in group["params"]:
                found = where.get(id(p))
                if found is None:
                    params.append(p)
                    continue
                (i, name), kind = found
                lin = new[(i, name)]
                params.append(getattr(lin, kind))
                fresh += _move_state(optimizer, p, getattr(lin, kind),
                                     lambda: kept_index(step.layers[i], name, kind, head_dims[i]))
                if kind == "weight" and lin.bias is not None and old[(i, name)]["bias"] is None:
                    params.append(lin.bias)  # a bias the step added to this projection
            group["params"][:] = params
    return fresh


def _move_state(optimizer: torch.optim.Optimizer, p: nn.Parameter, q: nn.Parameter, index) -> int:
    """Move ``p``'s optimizer state to ``q`` (sliced by ``index()`` when ``q`` replaced ``p``); 1 when
    the state could not be sliced and ``q`` starts fresh."""
    state = optimizer.state.pop(p, None)
    if q is p:
        if state is not None:
            optimizer.state[q] = state
        return 0
    if not state:
        return 0
    sliced = slice_state(state, p, index())
    if sliced is None:
        return 1
    optimizer.state[q] = sliced
    return 0
