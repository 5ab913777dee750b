"""Running one decoder layer over the calibration batches: the forward that feeds the next layer, and
the statistics passes (hooks on o_proj/down_proj, reduced across processes, checked before use)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..models.adapter import LayerParts
from .compensation import uses_cross_term
from .config import PruningConfig
from .inputs import Batches, StopForward, to_device
from .stats import ChannelStats, Reduce, collect_input_stats, reduce_stats


def run_layer(layer: nn.Module, batches: Batches, offload: bool, replace: bool,
              overwrite_inputs: bool = False) -> None:
    """Forward every batch through ``layer``.

    ``replace=True`` overwrites each entry of ``batches`` with the layer's output (the next
    layer's input) as soon as it is computed, so one copy of the activations is held, never two;
    ``replace=False`` drops the outputs (a statistics pass). ``overwrite_inputs=True`` (the caller's
    batch tensors may be overwritten) copies each output into its input tensor instead of swapping in a
    new one, so the activations keep their memory from layer to layer (no new blocks allocated per layer).
    """
    device = next(layer.parameters()).device
    for k, (hidden, kwargs) in enumerate(batches):
        try:
            h = layer(hidden.to(device), **to_device(kwargs, device))
        except StopForward:  # a statistics pass has what it needs (see _stop_before)
            if replace:
                raise
            continue
        if replace:
            _store_output(batches, k, h[0] if isinstance(h, tuple) else h, offload, overwrite_inputs)
        del h


class PlainForward:
    """``next_inputs`` of a statistics source (:class:`.stats_sources.StatsSource`) that keeps nothing of its
    passes: the pruned layer runs whole (``self.config``: the :class:`PruningConfig`)."""

    config: PruningConfig

    def next_inputs(self, parts: LayerParts, batches: Batches, keep_cols: torch.Tensor, overwrite_inputs: bool) -> None:
        run_layer(parts.layer, batches, self.config.offload_inputs, replace=True, overwrite_inputs=overwrite_inputs)


def _store_output(batches: Batches, k: int, h: torch.Tensor, offload: bool, overwrite_inputs: bool) -> None:
    """Batch ``k``'s layer output ``h`` [B, T, hidden] becomes its next input (see :func:`run_layer`)."""
    hidden, kwargs = batches[k]
    if overwrite_inputs and h.shape == hidden.shape and h.dtype == hidden.dtype:
        hidden.copy_(h)  # this batch's input is no longer needed
    else:
        batches[k] = (h.to("cpu") if offload else h, kwargs)


@contextmanager
def record_inputs(module: nn.Module, into: list[torch.Tensor], offload: bool) -> Iterator[None]:
    """While open, every input of ``module`` is appended to ``into`` (on the CPU with ``offload``)."""
    def hook(mod, args, kwargs):
        x = (args[0] if args else kwargs["input"]).detach()
        into.append(x.to("cpu") if offload else x)

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def run_pruned_layer_on_attention(parts: LayerParts, batches: Batches, attention: list[torch.Tensor],
                                  keep_cols: torch.Tensor, offload: bool, overwrite_inputs: bool = False) -> None:
    """The pruned layer's forward (as :func:`run_layer` with ``replace=True``) from the dense pass's o_proj
    inputs ``attention`` (one [B, T, heads · head_dim] per batch), when the kept heads' attention outputs
    are those of the dense pass: same layer inputs, their q/k/v rows only sliced (``keep_cols``: their
    columns). A Llama-family decoder layer is then ``h1 = h + o_proj(a[..., K])``, ``out = h1 +
    mlp(post_attention_layernorm(h1))``: the q/k/v products and the attention itself are not run again
    (three of the seven projections of the layer)."""
    device = parts.device
    cols = keep_cols.to(device)  # [|K| · head_dim]
    for k, ((hidden, _), a) in enumerate(zip(batches, attention, strict=True)):
        h = hidden.to(device) + parts.o_proj(a.to(device).index_select(-1, cols))  # [B, T, hidden]
        h = h + parts.mlp(parts.post_attention_layernorm(h))
        _store_output(batches, k, h, offload, overwrite_inputs)
        del h


@contextmanager
def _stop_before(module: nn.Module | None) -> Iterator[None]:
    """While open, a forward reaching ``module`` stops before computing it (hooks registered earlier,
    e.g. the statistics', still see its inputs). ``None``: nothing stops."""
    if module is None:
        yield
        return

    def hook(mod, args, kwargs):
        raise StopForward

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def layer_stats(
    parts: LayerParts, batches: Batches, modules: dict[str, nn.Module], config: PruningConfig,
    reduce: Reduce | None, layer_idx: int, diag_only: bool = False, where: str = "",
) -> dict[str, ChannelStats]:
    """Reduced input statistics of ``modules`` while the layer runs on ``batches`` (outputs dropped).

    down_proj is the layer's last product: when its inputs are among those recorded, each batch's
    forward stops there (at LLaMA-7B's dimensions the down_proj product is a fifth of the layer's),
    unless the statistics keep the cross term of its outputs (:func:`.compensation.uses_cross_term`)."""
    dtype = getattr(torch, config.stats_dtype)
    cross = [n for n, m in modules.items() if m is parts.down_proj] if not diag_only and uses_cross_term(config) else []
    last = None if cross else parts.down_proj
    with collect_input_stats(modules, dtype, diag_only, product_dtype(config), cross=cross) as local, \
            _stop_before(last if any(m is last for m in modules.values()) else None):
        run_layer(parts.layer, batches, config.offload_inputs, replace=False)
    names = list(local)
    stats = dict(zip(names, reduce_stats([local[n] for n in names], reduce)))
    for name, s in stats.items():
        check_stats(s, f"layer {layer_idx} {name} {where}".rstrip())
    return stats


def product_dtype(config: PruningConfig) -> torch.dtype | None:
    """Per-batch product dtype of the statistics: float32 in ``fast`` arithmetic, else the accumulator's."""
    return torch.float32 if config.arithmetic == "fast" else None


def check_stats(stats: ChannelStats, where: str) -> None:
    """Refuse non-finite or empty statistics (called before the weights they decide are touched)."""
    if not stats.is_finite():
        raise ValueError(f"non-finite calibration statistics at {where}; its weights were not changed")
    if stats.n <= 0:
        raise ValueError(f"no calibration tokens reached {where}")
