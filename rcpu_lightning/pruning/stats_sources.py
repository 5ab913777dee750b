"""Where one layer's o_proj and down_proj statistics come from: the one difference between the ways
:func:`.engine.prune_layer` can prune a layer (everything else, from selection to surgery, is shared).

* :class:`OwnOutputs` (the paper): one pass before any weight changes, both modules' statistics.
* :class:`RefreshedMlp` (``refresh_mlp_stats``): o_proj's first; down_proj's collected again after the
  layer's attention was pruned.
* :class:`~.dense_target.DenseTargets` (``compensation_target: dense``): paired passes on the dense and
  the pruned stream, whose statistics carry the dense targets.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from ..models.adapter import LayerParts
from .config import PruningConfig
from .dense_target import DenseTargets
from .inputs import Batches
from .layer_runs import PlainForward, layer_stats, record_inputs, run_pruned_layer_on_attention
from .stats import ChannelStats, Reduce


class StatsSource(Protocol):
    """Statistics of one layer, reduced across processes and checked (finite, tokens seen).

    ``o_proj`` is called first, before any weight of the layer changes; ``down_proj`` after it, and after
    the layer's attention was pruned unless ``down_proj_first`` (then before any weight changes too).
    ``next_inputs`` runs the pruned layer: ``batches`` become the next layer's inputs."""

    down_proj_first: bool

    def o_proj(self, idx: int, parts: LayerParts, batches: Batches) -> ChannelStats: ...

    def down_proj(self, idx: int, parts: LayerParts, batches: Batches) -> ChannelStats: ...

    def next_inputs(self, parts: LayerParts, batches: Batches, keep_cols: Tensor, overwrite_inputs: bool) -> None: ...


class OwnOutputs:
    """Both modules' statistics from one pass over the unpruned layer (one ``reduce``). That pass also keeps
    o_proj's inputs (the heads' attention outputs, as big as the layer's inputs), so the pruned layer's
    forward starts at o_proj (:func:`.layer_runs.run_pruned_layer_on_attention`)."""

    down_proj_first = True

    def __init__(self, config: PruningConfig, reduce: Reduce | None) -> None:
        self.config, self.reduce = config, reduce
        self._down: ChannelStats | None = None
        self._attention: list[Tensor] = []

    def o_proj(self, idx: int, parts: LayerParts, batches: Batches) -> ChannelStats:
        self._attention = []
        with record_inputs(parts.o_proj, self._attention, self.config.offload_inputs):
            stats = layer_stats(parts, batches, {"o_proj": parts.o_proj, "down_proj": parts.down_proj}, self.config,
                                self.reduce, idx)
        self._down = stats["down_proj"]
        return stats["o_proj"]

    def down_proj(self, idx: int, parts: LayerParts, batches: Batches) -> ChannelStats:
        stats, self._down = self._down, None
        return stats

    def next_inputs(self, parts: LayerParts, batches: Batches, keep_cols: Tensor, overwrite_inputs: bool) -> None:
        attention, self._attention = self._attention, []
        run_pruned_layer_on_attention(parts, batches, attention, keep_cols, self.config.offload_inputs,
                                      overwrite_inputs)


class RefreshedMlp(PlainForward):
    """o_proj's statistics first; down_proj's again once the attention was pruned (two ``reduce`` calls)."""

    down_proj_first = False

    def __init__(self, config: PruningConfig, reduce: Reduce | None) -> None:
        self.config, self.reduce = config, reduce

    def o_proj(self, idx: int, parts: LayerParts, batches: Batches) -> ChannelStats:
        return layer_stats(parts, batches, {"o_proj": parts.o_proj}, self.config, self.reduce, idx)["o_proj"]

    def down_proj(self, idx: int, parts: LayerParts, batches: Batches) -> ChannelStats:
        return layer_stats(parts, batches, {"down_proj": parts.down_proj}, self.config, self.reduce, idx,
                           where="(refreshed after this layer's attention was pruned)")["down_proj"]


def stats_source(config: PruningConfig, reduce: Reduce | None, batches: Batches) -> StatsSource:
    """The source ``config`` asks for (``batches``: layer 0's inputs, copied for the dense stream)."""
    if config.compensation_target == "dense":
        return DenseTargets(batches, config, reduce)
    return RefreshedMlp(config, reduce) if config.refresh_mlp_stats else OwnOutputs(config, reduce)
