"""Dense-target compensation (``PruningConfig.compensation_target = "dense"``): correct the error that the pruning of
earlier layers left in the residual stream, not only this layer's own.

With the paper's targets each compensated module reproduces its own output on the pruned-so-far
inputs, so errors made upstream are never undone. Here the engine keeps a second copy of the
calibration activations, the dense model's, and the target of o_proj (down_proj) in layer ``i`` is the
output that makes the residual stream after the module equal the dense model's at that point::

    t = W x_dense + (h_dense − h̃)        h: the residual the module's output is added to

fitted on the pruned stream's inputs ``x̃`` of the module. Everything streams: the statistics of ``x̃``
(``n, Σx̃, Σ|x̃|, G̃``) plus ``C = Σ t x̃ᵀ`` and ``Σ t`` (:meth:`ChannelStats.add_targets`); the
compensations then use ``C[:, K]`` where they would use ``W G[:, K]`` (:mod:`.compensation`). With
identical streams (layer 0, or nothing pruned upstream) ``t = W x̃`` and every compensation is its
ordinary self.

Per layer (five forwards instead of two): a copy of the dense layer runs the dense stream. Pass A runs
the dense copy on the dense stream and the layer on the pruned stream, batch by batch, giving o_proj's
statistics; attention is pruned and compensated. Pass B does the same with the attention-pruned layer,
giving down_proj's statistics (its residual is the post-attention stream, which attention pruning
changed); the dense copy's outputs become the next layer's dense inputs. The MLP is pruned, and the
pruned layer produces the pruned stream's next inputs.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ..models.adapter import LayerParts, layer_parts
from .config import PruningConfig
from .inputs import Batches, copy_activations, to_device
from .layer_runs import PlainForward, check_stats, product_dtype
from .stats import ChannelStats, Reduce, reduce_stats


class _Pairing:
    """Hooks pairing each batch's dense-stream run with its pruned-stream run for one module."""

    def __init__(self, dense_layer: nn.Module, layer: nn.Module, which: str, stats: ChannelStats,
                 product_dtype: torch.dtype | None) -> None:
        self.which, self.stats, self.dtype = which, stats, product_dtype or stats.G.dtype
        self.dense_mod, self.mod = getattr(layer_parts(dense_layer), which), getattr(layer_parts(layer), which)
        self.dense_residual = self.residual = None  # o_proj: the layer inputs, given per batch
        self.y: Tensor | None = None
        self.handles = [self.dense_mod.register_forward_hook(self._dense_output),
                        self.mod.register_forward_pre_hook(self._pruned_input)]
        if which == "down_proj":  # its residual: the post-attention stream, read where the MLP block starts
            self.handles += [dense_layer.post_attention_layernorm.register_forward_pre_hook(self._dense_mid),
                             layer.post_attention_layernorm.register_forward_pre_hook(self._pruned_mid)]

    def _flat(self, t: Tensor, width: int) -> Tensor:
        return t.detach().reshape(-1, width).to(device=self.stats.G.device, dtype=self.dtype)

    def _dense_output(self, module, args, output):
        y = output if module.bias is None else output - module.bias  # W x_dense: the bias stays the module's
        self.y = self._flat(y, module.out_features)

    def _dense_mid(self, module, args):
        self.dense_residual = args[0]

    def _pruned_mid(self, module, args):
        self.residual = args[0]

    def _pruned_input(self, module, args):
        x = self._flat(args[0], module.in_features)  # [N, d_in]
        width = self.y.shape[1]
        t = self.y + self._flat(self.dense_residual, width) - self._flat(self.residual, width)  # [N, d_out]
        self.stats.update(x, self.dtype)
        self.stats.add_targets(t, x)

    def close(self) -> None:
        for h in self.handles:
            h.remove()


@contextmanager
def paired(dense_layer: nn.Module, layer: nn.Module, which: str, stats: ChannelStats,
           product_dtype: torch.dtype | None) -> Iterator[_Pairing]:
    pairing = _Pairing(dense_layer, layer, which, stats, product_dtype)
    try:
        yield pairing
    finally:
        pairing.close()


def paired_pass(dense_layer: nn.Module, layer: nn.Module, which: str, batches: Batches, dense_batches: Batches,
                stats: ChannelStats, product_dtype: torch.dtype | None, write_dense: bool) -> None:
    """Run each batch through ``dense_layer`` (dense stream) then ``layer`` (pruned stream), adding
    ``which``'s targets to ``stats``; with ``write_dense`` the dense outputs replace the dense inputs."""
    device = next(layer.parameters()).device
    with paired(dense_layer, layer, which, stats, product_dtype) as pairing:
        for (h, kw), (hd, dkw) in zip(batches, dense_batches):
            h_dev, hd_dev = h.to(device), hd.to(device)
            if which == "o_proj":
                pairing.dense_residual, pairing.residual = hd_dev, h_dev
            out = dense_layer(hd_dev, **to_device(dkw, device))
            layer(h_dev, **to_device(kw, device))
            if write_dense:
                hd.copy_(out[0] if isinstance(out, tuple) else out)  # the next layer's dense input
            del out


def copy_layer(layer: nn.Module) -> nn.Module:
    """The dense layer kept for the dense stream while ``layer`` is pruned."""
    return copy.deepcopy(layer)


class DenseTargets(PlainForward):
    """The statistics source of ``compensation_target: dense`` (see :class:`.stats_sources.StatsSource`):
    a copy of the dense stream's activations, made once; per layer, pass A (o_proj) and pass B (down_proj,
    after the attention was pruned; the dense outputs become the next layer's dense inputs)."""

    down_proj_first = False

    def __init__(self, batches: Batches, config: PruningConfig, reduce: Reduce | None) -> None:
        self.dense_batches = copy_activations(batches)  # the dense stream, overwritten layer by layer
        self.config, self.reduce = config, reduce
        self.dense_layer: nn.Module | None = None

    def _pass(self, idx: int, parts: LayerParts, batches: Batches, which: str) -> ChannelStats:
        module = getattr(parts, which)
        stats = ChannelStats.zeros(module.in_features, getattr(torch, self.config.stats_dtype), module.weight.device)
        paired_pass(self.dense_layer, parts.layer, which, batches, self.dense_batches, stats,
                    product_dtype(self.config), write_dense=which == "down_proj")
        [stats] = reduce_stats([stats], self.reduce)
        check_stats(stats, f"layer {idx} {which}")
        return stats

    def o_proj(self, idx: int, parts: LayerParts, batches: Batches) -> ChannelStats:
        self.dense_layer = copy_layer(parts.layer)
        return self._pass(idx, parts, batches, "o_proj")

    def down_proj(self, idx: int, parts: LayerParts, batches: Batches) -> ChannelStats:
        try:
            return self._pass(idx, parts, batches, "down_proj")
        finally:
            self.dense_layer = None
