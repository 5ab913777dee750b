"""Pure-PyTorch structured pruning of Llama-family decoders (RCPU, WANDA-sp, FLAP, magnitude).

No Lightning or torch.distributed import here: distributed callers pass ``reduce`` (a sum over
processes). Pipeline: ``stats -> scores -> selection -> compensation -> surgery``, driven layer by
layer by :func:`prune_model`; :mod:`.io` saves and reloads the result.

Typical use::

    inputs = capture_layer_inputs(model, batches)          # batches of input_ids [B, T]
    report = prune_model(model, inputs, PruningConfig(method="rcpu", ratio=0.2))
    save_pruned(model, report.plan, "out/pruned")
    pruned, report = prune_copy(dense, windows, config, batch_size=8)  # [N, T] ids; ``dense`` stays
    model = load_pruned("out/pruned")
"""

from .compensation import (
    COMPENSATIONS,
    bias_compensation,
    compensate,
    cross_gram,
    least_squares_compensation,
    procrustes_rotation,
    rotation_compensation,
    rotation_scale_compensation,
)
from .config import DEFAULT_COMPENSATION, PruningConfig
from .engine import PruningReport, prune_copy, prune_model
from .progress import LayerProgress, default_progress
from .streaming import prune_checkpoint
from .inputs import LayerInputCatcher, LayerInputs, StopForward, capture_layer_inputs, model_inputs
from .io import load_plan, load_pruned, save_pruned
from .plan import LayerPlan, PruningPlan
from .scores import (
    SCORES,
    column_scores,
    flap_wifv_score,
    head_scores,
    standardize,
    variance_aware_score,
    wanda_sp_score,
    weight_magnitude_score,
)
from .selection import al_am_counts, feasible_count, head_layout, select_channels, select_heads
from .stats import ChannelStats, collect_input_stats, reduce_stats
from .surgery import apply_plan_shapes

__all__ = [
    "COMPENSATIONS",
    "SCORES",
    "StopForward",
    "LayerProgress",
    "default_progress",
    "model_inputs",
    "ChannelStats",
    "DEFAULT_COMPENSATION",
    "LayerInputCatcher",
    "LayerInputs",
    "LayerPlan",
    "PruningConfig",
    "PruningPlan",
    "PruningReport",
    "al_am_counts",
    "apply_plan_shapes",
    "bias_compensation",
    "capture_layer_inputs",
    "collect_input_stats",
    "column_scores",
    "compensate",
    "cross_gram",
    "feasible_count",
    "flap_wifv_score",
    "head_layout",
    "head_scores",
    "least_squares_compensation",
    "load_plan",
    "load_pruned",
    "procrustes_rotation",
    "prune_checkpoint",
    "prune_copy",
    "prune_model",
    "reduce_stats",
    "rotation_compensation",
    "rotation_scale_compensation",
    "save_pruned",
    "select_channels",
    "select_heads",
    "standardize",
    "variance_aware_score",
    "wanda_sp_score",
    "weight_magnitude_score",
]


def _check_registries() -> None:
    """The ``Literal`` types of :class:`PruningConfig` (YAML/CLI validation) name exactly the registered
    functions: adding a score or a compensation is one function, one registry entry and one Literal value."""
    from typing import get_args

    from .config import Compensation, Method

    for kind, registry in ((Method, SCORES), (Compensation, COMPENSATIONS)):
        if set(get_args(kind)) != set(registry):
            raise AssertionError(f"{kind} lists {get_args(kind)}, the registry holds {sorted(registry)}")


_check_registries()
