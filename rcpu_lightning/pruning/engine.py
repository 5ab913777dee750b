"""The layer-by-layer pruning engine (rcpu-method.md, "Order of work").

For each decoder layer: run it on the current hidden states with hooks collecting the o_proj and
down_proj input statistics; reduce them across processes (one ``reduce`` call per layer, two with
``refresh_mlp_stats``); choose the kept heads and channels; compensate; physically remove; re-run
the pruned layer to produce the next layer's inputs.

Counts (how many heads/channels each layer loses) are fixed for every layer before any weight
changes, so a ratio that would empty a layer fails first:

* ``uniform``: from the ratios and the head rounding rule.
* ``al_am``: FLAP's global threshold cannot be decided greedily layer by layer, so a first
  *dense* pass runs all layers unpruned, collecting only the diagonal statistics the scores need
  (one ``reduce`` call for all layers), standardises each layer's scores, applies FLAP's weighted
  global threshold, and yields per-layer counts (``allocation: compensated_error``: the dense pass
  collects each layer's full statistics instead, one layer and one ``reduce`` at a time, and ranks
  by compensated error); the usual layer-by-layer pass then picks *which*
  heads/channels with those counts, on the pruned-so-far inputs.

Non-finite statistics are refused before the layer's weights change. With ``refresh_mlp_stats``
the refreshed down_proj statistics can only be checked after that layer's attention was pruned
(the first pass has already checked the same layer's inputs).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..models.adapter import LayerParts, check_supported, decoder_parts
from .compensation import COMPENSATIONS, compensate
from .config import PruningConfig
from .error_selection import (
    channel_error_curve,
    head_unit_error_curve,
    select_channels_by_error,
    select_heads_by_error,
)
from .inputs import Batches, LayerInputs, capture_layer_inputs, cast_activations
from .layer_runs import check_stats, layer_stats, product_dtype, run_layer
from .layer_store import LayerStore, ResidentLayers
from .plan import LayerPlan, PruningPlan
from .memory import device_peak_mb, rss_mb
from .progress import LayerProgress, PhaseClock, ProgressFn, resolve_progress
from .scores import SCORES, column_scores, head_scores, standardize
from .selection import (
    LayerUnits,
    al_am_counts,
    check_not_emptied,
    feasible_count,
    head_layout,
    head_unit_scores,
    select_channels,
    select_heads,
)
from .stats import ChannelStats, Reduce, collect_input_stats, reduce_stats
from .stats_sources import StatsSource, stats_source
from .surgery import (
    added_bias_params,
    bias_blocks,
    biased_projections,
    dense_values,
    harmonise_layer,
    head_rows,
    prune_attention,
    prune_mlp,
    update_config,
)

log = logging.getLogger(__name__)

__all__ = ["PruningReport", "check_feasible", "check_stats", "layer_stats", "product_dtype", "prune_layer",
           "prune_copy", "prune_model", "run_layer", "uniform_counts", "validate_counts"]


@dataclass
class PruningReport:
    """What ``prune_model`` did.

    Two fractions of removed parameters, named so they cannot be confused:
    ``decoder_params_removed`` counts the decoder layers only (what the pruning ratio acts on;
    added compensation biases count as parameters), :attr:`model_params_removed` the whole model
    (embeddings and LM head included). ``params_before``/``params_after`` are whole-model counts.
    """

    plan: PruningPlan
    layer_params_removed: list[float]  # per decoder layer: removed / before
    decoder_params_removed: float  # all decoder layers: removed / before
    params_before: int
    params_after: int
    seconds: float
    layers: list[dict[str, Any]] = field(default_factory=list)  # per-layer summary
    notes: list[str] = field(default_factory=list)  # decisions worth telling the user (rounding, ...)

    @property
    def model_params_removed(self) -> float:
        """Whole model: ``1 - params_after / params_before``."""
        return 1.0 - self.params_after / self.params_before

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["plan"] = self.plan.to_dict()
        data["model_params_removed"] = self.model_params_removed
        return data

    def summary(self) -> dict[str, Any]:
        """:meth:`to_dict` without the plan: what ``pruning_report.json`` records (the plan has its own file)."""
        data = self.to_dict()
        del data["plan"]
        return data


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# -- counts -------------------------------------------------------------------------------------
def uniform_counts(model: nn.Module, config: PruningConfig, notes: list[str]) -> list[tuple[int, int]]:
    """(heads, channels) to remove per layer at the configured ratios; the rounding is told in ``notes``
    (not logged here: the pre-flight check calls this too, and the prune logs its notes once)."""
    counts, noted = [], set()
    for parts in decoder_parts(model):
        layout = head_layout(parts.num_heads, parts.num_kv_heads, config.gqa_mode)
        heads = feasible_count(config.head_ratio, parts.num_heads, layout.unit_size, config.head_rounding)
        channels = feasible_count(config.channel_ratio, parts.intermediate_size, 1, "floor")
        counts.append((heads, channels))
        if layout not in noted:
            noted.add(layout)
            notes.append(
                f"heads: ratio {config.head_ratio:.4g} of {parts.num_heads} = {config.head_ratio * parts.num_heads:.2f} "
                f"requested; removing {heads} ({config.head_rounding} rounding, units of {layout.unit_size} heads, "
                f"{'whole kv groups' if layout.whole_group else 'equal numbers per kv group'}); "
                f"channels: removing {channels} of {parts.intermediate_size}"
            )
    return counts


def al_am_structure(
    model: nn.Module, batches: Batches, config: PruningConfig, reduce: Reduce | None, store: LayerStore
) -> list[tuple[int, int]]:
    """Dense pass + FLAP's AL-AM global threshold -> (heads, channels) to remove per layer.

    The dense pass ranks every layer's head units and channels: by the method's standardised scores
    (:func:`score_units`, FLAP) or by compensated error (:func:`error_units`). The threshold is
    set so that ``ratio`` of the *decoder-layer parameters* go (to within one unit), the same measure
    as the uniform structure's ``decoder_params_removed``: FLAP's code takes the ratio of the
    prunable heads and channels only, which removes less (18.7 % of SmolLM2's decoder for 0.2).
    """
    layers = decoder_parts(model)
    rank = error_units if config.allocation == "compensated_error" else score_units
    units = rank(layers, list(batches), config, reduce, store)  # a list: the caller's layer-0 inputs stay
    channel_params = 3 * layers[0].down_proj.out_features  # one MLP channel: gate, up, down
    budget = config.ratio * sum(_count(parts.layer) for parts in layers) / channel_params  # in channel units
    counts = al_am_counts(units, config.ratio, budget, config.max_layer_ratio)
    for _ in range(3):  # a bias-adding compensation's biases count as kept: budget for them, until stable
        added = _added_bias_params(model, layers, config, counts)
        recount = (al_am_counts(units, config.ratio, budget + added / channel_params, config.max_layer_ratio)
                   if added else counts)
        if recount == counts:
            break
        counts = recount
    return counts


def score_units(layers: list[LayerParts], batches: Batches, config: PruningConfig, reduce: Reduce | None,
                store: LayerStore) -> list[LayerUnits]:
    """FLAP's ranking: each layer is loaded once and run dense, collecting only the diagonal statistics
    the scores need; its weight terms (a [d_in] vector per module) are kept, so the scores are computed
    after ONE ``reduce`` over all layers' statistics."""
    local, terms = [], []
    dtype = getattr(torch, config.stats_dtype)
    score = SCORES[config.method]
    for i, parts in enumerate(layers):
        store.load(i, parts.layer)
        with collect_input_stats({"o": parts.o_proj, "d": parts.down_proj}, dtype, diag_only=True) as st:
            # the caller's layer-0 tensors stay; ours after layer 0
            run_layer(parts.layer, batches, config.offload_inputs, replace=True, overwrite_inputs=i > 0)
        local += [st["o"], st["d"]]
        terms.append((score.weight_term(parts.o_proj.weight).cpu(), score.weight_term(parts.down_proj.weight).cpu()))
        store.unload(i, parts.layer)
    reduced = reduce_stats(local, reduce)
    units = []
    for i, parts in enumerate(layers):
        o_stats, d_stats = reduced[2 * i], reduced[2 * i + 1]
        check_stats(o_stats, f"layer {i} o_proj (AL-AM pass)")
        check_stats(d_stats, f"layer {i} down_proj (AL-AM pass)")
        units.append(_layer_units(parts, o_stats, d_stats, terms[i], config))
    return units


def error_units(layers: list[LayerParts], batches: Batches, config: PruningConfig, reduce: Reduce | None,
                store: LayerStore) -> list[LayerUnits]:
    """Ranking by compensated error (``allocation: compensated_error``; beyond FLAP).

    Each layer runs dense once with its o_proj/down_proj full statistics (one ``reduce`` per layer,
    freed before the next). The statistics are token-weighted by ``1 / ‖h_t‖``, ``h_t`` the residual
    stream entering the layer: the next RMSNorm divides an error on token ``t`` by about ``‖h_t‖``, and
    residual norms differ by orders of magnitude between tokens (massive activations). A unit's cost
    is then its greedy ΔE (:mod:`.error_selection`: the error left once the rest is refitted) in
    those relative units, per parameter (a head unit's ΔE over its weight in MLP channels). Costs are
    made non-decreasing in removal order, so the threshold takes each layer's units in that order;
    the last head unit and channel of a layer always stay.
    """
    dtype = getattr(torch, config.stats_dtype)
    units = []
    for i, parts in enumerate(layers):
        store.load(i, parts.layer)
        with _inverse_residual_norm(parts.layer) as scale, collect_input_stats(
                {"o": parts.o_proj, "d": parts.down_proj}, dtype, False, product_dtype(config), scale) as st:
            run_layer(parts.layer, batches, config.offload_inputs, replace=True, overwrite_inputs=i > 0)
        o_stats, d_stats = reduce_stats([st["o"], st["d"]], reduce)
        check_stats(o_stats, f"layer {i} o_proj (allocation pass)")
        check_stats(d_stats, f"layer {i} down_proj (allocation pass)")
        units.append(_error_layer_units(parts, o_stats, d_stats, config))
        del st, o_stats, d_stats
        store.unload(i, parts.layer)
    return units


@contextmanager
def _inverse_residual_norm(layer: nn.Module) -> Iterator[Callable[[], Tensor]]:
    """While open, the returned function gives ``1 / ‖h_t‖`` [B, T, 1] of the batch ``layer`` is running."""
    current: list[Tensor] = []

    def hook(mod, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        current[:] = [torch.rsqrt((h.float() ** 2).sum(-1, keepdim=True).clamp_min(1e-30))]

    handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield lambda: current[0]
    finally:
        handle.remove()


def _error_layer_units(parts: LayerParts, o_stats: ChannelStats, d_stats: ChannelStats,
                       config: PruningConfig) -> LayerUnits:
    layout = head_layout(parts.num_heads, parts.num_kv_heads, config.gqa_mode)
    unit_weight = _head_unit_weight(parts, layout)
    heads = head_unit_error_curve(parts.o_proj.weight, o_stats, layout, parts.head_dim, config.ls_lambda)
    channels = channel_error_curve(parts.down_proj.weight, d_stats, parts.intermediate_size - 1, config.ls_lambda)
    inf = torch.full((1,), float("inf"), dtype=torch.float64)

    def ranked(cost: Tensor, weight: float) -> Tensor:  # [n - 1] costs -> [n] non-decreasing, last kept
        return torch.cat([torch.cummax(cost / weight, 0).values, inf]) if cost.numel() else inf

    return LayerUnits(head_units=ranked(heads, unit_weight), head_unit_size=layout.unit_size,
                      head_unit_weight=unit_weight, channel_scores=ranked(channels, 1.0))


def _head_unit_weight(parts: LayerParts, layout) -> float:
    """Parameters of one head unit / parameters of one MLP channel (3 · hidden; hidden cancels out)."""
    hd, g = parts.head_dim, layout.group_size
    per_unit = 2 * g * hd + 2 * hd if layout.whole_group else 2 * hd * layout.unit_size
    return per_unit / 3.0


def _bias_blocks(model: nn.Module, config: PruningConfig, counts: list[tuple[int, int]]) -> set[str]:
    compensates = {m: config.compensates(m) for m in ("o_proj", "down_proj")}
    return bias_blocks(str(model.config.model_type), COMPENSATIONS[config.compensation].adds_bias, compensates, counts)


def _added_bias_params(model: nn.Module, layers: list[LayerParts], config: PruningConfig,
                       counts: list[tuple[int, int]]) -> int:
    blocks = _bias_blocks(model, config, counts)
    return sum(added_bias_params(parts, blocks, h, c, config.gqa_mode) for parts, (h, c) in zip(layers, counts))


def _layer_units(parts: LayerParts, o_stats: ChannelStats, d_stats: ChannelStats, terms: tuple[Tensor, Tensor],
                 config) -> LayerUnits:
    layout = head_layout(parts.num_heads, parts.num_kv_heads, config.gqa_mode)
    o_cols = standardize(column_scores(config.method, None, o_stats, "o_proj", weight_term=terms[0]))
    head = o_cols.reshape(-1, parts.head_dim).mean(1)  # [H] mean of standardised columns
    return LayerUnits(
        head_units=head_unit_scores(head, layout),
        head_unit_size=layout.unit_size,
        head_unit_weight=_head_unit_weight(parts, layout),
        channel_scores=standardize(column_scores(config.method, None, d_stats, "down_proj", weight_term=terms[1])),
    )


def check_feasible(model: nn.Module, config: PruningConfig) -> None:
    """Refuse settings that would empty a layer, before any calibration (uniform structure; AL-AM's
    per-layer counts are only known after its dense pass, which checks them before any weight changes)."""
    check_supported(model)
    if config.structure == "uniform":
        validate_counts(model, uniform_counts(model, config, []), config.structure)


def validate_counts(model: nn.Module, counts: list[tuple[int, int]], structure: str) -> None:
    for i, (parts, (heads, channels)) in enumerate(zip(decoder_parts(model), counts)):
        check_not_emptied("attention heads", heads, parts.num_heads, i, structure)
        check_not_emptied("MLP channels", channels, parts.intermediate_size, i, structure)


# -- one layer ----------------------------------------------------------------------------------
def _decide_heads(parts: LayerParts, stats: ChannelStats, n_remove: int, config: PruningConfig):
    layout = head_layout(parts.num_heads, parts.num_kv_heads, config.gqa_mode)
    if config.selection == "compensated_error" and config.compensates("o_proj"):
        kept_heads, kept_kv = select_heads_by_error(parts.o_proj.weight, stats, layout, parts.head_dim, n_remove,
                                                    config.ls_lambda)
    else:
        scores = head_scores(column_scores(config.method, parts.o_proj.weight, stats, "o_proj"), parts.head_dim)
        kept_heads, kept_kv = select_heads(scores, layout, n_remove)
    kind = config.compensation if config.compensates("o_proj") else "none"
    keep_cols = head_rows(kept_heads, parts.head_dim).tolist()  # o_proj's kept input columns
    return kept_heads, kept_kv, compensate(kind, parts.o_proj.weight, stats, keep_cols, config)


def _decide_channels(parts: LayerParts, stats: ChannelStats, n_remove: int, config: PruningConfig):
    if config.selection == "compensated_error" and config.compensates("down_proj"):
        kept = select_channels_by_error(parts.down_proj.weight, stats, n_remove, config.ls_lambda)
    else:
        kept = select_channels(column_scores(config.method, parts.down_proj.weight, stats, "down_proj"), n_remove)
    kind = config.compensation if config.compensates("down_proj") else "none"
    return kept, compensate(kind, parts.down_proj.weight, stats, kept, config)


def prune_layer(
    idx: int, parts: LayerParts, batches: Batches, counts: tuple[int, int], config: PruningConfig,
    source: StatsSource, overwrite_inputs: bool = False, bias_blocks: set[str] = frozenset(),
    clock: PhaseClock | None = None,
) -> tuple[LayerPlan, int]:
    """Prune one decoder layer in place, removing ``counts`` (heads, channels), on the statistics of
    ``source`` (:mod:`.stats_sources`); returns its plan and the calibration tokens (all processes) it was
    decided on. ``batches`` become the next layer's inputs (written into the batch tensors themselves
    when ``overwrite_inputs``, see :func:`run_layer`). ``clock`` gets the seconds of each phase."""
    clock = clock if clock is not None else PhaseClock()
    with clock("statistics"):
        o_stats = source.o_proj(idx, parts, batches)
    with clock("compensate_o_proj"):
        kept_heads, kept_kv, o_comp = _decide_heads(parts, o_stats, counts[0], config)
    channels = None
    if source.down_proj_first:  # all decisions made before any weight changes
        channels = _channels(idx, parts, batches, counts[1], config, source, clock)
    added = ["o_proj"] if o_comp.bias_delta is not None and parts.o_proj.bias is None else []
    with clock("surgery"):
        prune_attention(parts, kept_heads, kept_kv, o_comp.weight, o_comp.bias_delta)
    if channels is None:
        channels = _channels(idx, parts, batches, counts[1], config, source, clock)
    kept_ch, d_comp = channels
    added += ["down_proj"] if d_comp.bias_delta is not None and parts.down_proj.bias is None else []
    with clock("surgery"):
        prune_mlp(parts, kept_ch, d_comp.weight, d_comp.bias_delta)
        harmonise_layer(parts, bias_blocks)
    plan = LayerPlan(kept_heads, kept_kv, kept_ch, biased_projections(parts), added)
    with clock("forward"):
        source.next_inputs(parts, batches, head_rows(kept_heads, parts.head_dim), overwrite_inputs)
    return plan, int(o_stats.n)


def _channels(idx: int, parts: LayerParts, batches: Batches, n_remove: int, config: PruningConfig,
              source: StatsSource, clock: PhaseClock):
    with clock("statistics"):
        stats = source.down_proj(idx, parts, batches)
    with clock("compensate_down_proj"):
        return _decide_channels(parts, stats, n_remove, config)


# -- the model ----------------------------------------------------------------------------------
def prune_model(
    model: nn.Module,
    inputs: LayerInputs,
    config: PruningConfig,
    reduce: Reduce | None = None,
    progress: bool | ProgressFn | None = True,
    overwrite_inputs: bool = False,
    calibration: dict[str, Any] | None = None,
    store: LayerStore | None = None,
) -> PruningReport:
    """Prune ``model`` in place, layer by layer, calibrated on ``inputs`` (from ``capture_layer_inputs``).

    ``reduce(t) -> t`` sums a tensor over processes (supplied by the caller; None on one process).
    It is called once per layer (twice with ``refresh_mlp_stats``; once more for ``al_am``, once more
    per layer with ``allocation: compensated_error``),
    however many batches this process holds; the layers are re-run on the batches as captured.
    ``progress``: ``True`` = a bar on a terminal, log lines otherwise; ``False`` = silent; or a
    function called with a :class:`~rcpu_lightning.pruning.progress.LayerProgress` per layer.
    ``calibration``: what the caller knows about the calibration data (e.g. ``nsamples``,
    ``seqlen``, ``seed``, ``source``), recorded in the plan next to the token count the engine saw
    (summed over processes); without it the local sample count and length are recorded.

    ``store``: where each layer's weights come from and go to (:mod:`.layer_store`); default: the
    layers stay in memory, moved to ``config.execution_device`` and cast to ``config.execution_dtype``
    for their turn when those are set. With ``execution_dtype`` the activations are cast here once (the
    caller's tensors are left as they are; a store given here must load the layers in that dtype).

    Memory: the engine holds one copy of the calibration activations, overwritten layer by layer,
    plus the per-module sums. ``inputs`` is left untouched by default, so layer 0's activations
    stay alive for a second prune; ``overwrite_inputs=True`` empties ``inputs`` instead, and
    layer 0's captured tensors are overwritten with each layer's outputs (one copy, not two).
    """
    _check_args(model, inputs, config, reduce)
    start = time.perf_counter()
    layers = decoder_parts(model)  # one live view per layer, for the whole prune
    params_before, layer_before = _count(model), [_count(parts.layer) for parts in layers]
    plan = PruningPlan(str(model.config.model_type), dense_values(model), [], config.to_dict(),
                       calibration=_calibration_record(inputs, calibration))
    batches = list(inputs.batches)  # the captured tensors themselves, overwritten per layer once owned
    if overwrite_inputs:
        inputs.batches.clear()
    batches, overwrite_inputs = _in_execution_dtype(batches, config, overwrite_inputs)
    store = store if store is not None else ResidentLayers(config.execution_device, config.execution_torch_dtype)
    source = stats_source(config, reduce, batches)
    notes: list[str] = []
    with torch.no_grad():
        counts = (al_am_structure(model, batches, config, reduce, store) if config.structure == "al_am"
                  else uniform_counts(model, config, notes))
        for note in notes:
            log.info("%s", note)
        validate_counts(model, counts, config.structure)
        layer_pass = _LayerPass(config, source, _bias_blocks(model, config, counts), store,
                                resolve_progress(progress), start, overwrite_inputs)
        for i, parts in enumerate(layers):
            plan.layers.append(layer_pass(i, parts, batches, counts[i], layer_before, plan))
    del batches, source
    update_config(model, plan)
    return _report(model, plan, params_before, layer_before, time.perf_counter() - start, notes, layer_pass.phases)


def _in_execution_dtype(batches: Batches, config: PruningConfig, owned: bool) -> tuple[Batches, bool]:
    """``batches`` in ``config.execution_dtype`` (cast once, here) and whether the engine may overwrite them:
    ``owned`` (the caller allowed it), or every hidden state is a new tensor of the cast."""
    if config.execution_dtype is None:
        return batches, owned
    cast = cast_activations(batches, config.execution_torch_dtype)
    return cast, owned or all(c is not h for (c, _), (h, _) in zip(cast, batches))


@dataclass
class _LayerPass:
    """One layer's turn in :func:`prune_model`: load, prune, save, report progress."""

    config: PruningConfig
    source: StatsSource
    bias_blocks: set[str]
    store: LayerStore
    report_layer: ProgressFn | None
    start: float
    overwrite_inputs: bool
    phases: list[dict[str, float]] = field(default_factory=list)  # per layer: seconds per phase

    def __call__(self, i: int, parts: LayerParts, batches: Batches, counts: tuple[int, int],
                 layer_before: list[int], plan: PruningPlan) -> LayerPlan:
        t0, clock = time.perf_counter(), PhaseClock()
        with clock("load"):
            self.store.load(i, parts.layer)
        device = parts.device
        # the caller's tensors are ours to overwrite once released, and after layer 0 in any case
        layer_plan, tokens = prune_layer(i, parts, batches, counts, self.config, self.source,
                                         self.overwrite_inputs or i > 0, self.bias_blocks, clock)
        removed = 1 - _count(parts.layer) / layer_before[i]
        with clock("save"):
            self.store.save(i, parts.layer)
        plan.calibration.setdefault("tokens", tokens)
        self.phases.append(clock.seconds)
        if self.report_layer is not None:
            now = time.perf_counter()
            self.report_layer(LayerProgress(i, len(layer_before), now - t0, now - self.start, layer_plan,
                                            removed, rss_mb(), device_peak_mb(device), clock.seconds))
        return layer_plan


def prune_copy(
    model: nn.Module,
    windows: Tensor | Iterable[Tensor],
    config: PruningConfig,
    batch_size: int | None = None,
    *,
    copy_model: bool = True,
    progress: bool | ProgressFn | None = False,
    calibration: dict[str, Any] | None = None,
) -> tuple[nn.Module, PruningReport]:
    """Prune a copy of ``model`` calibrated on token ``windows``: returns ``(pruned, report)``.

    ``windows``: input ids [N, T], run in batches of ``batch_size`` windows, or the batches themselves
    (anything :func:`~.inputs.model_inputs` takes). The copy's layer-0 inputs are captured and pruned in
    place (``overwrite_inputs``: one copy of the activations). ``copy_model=False`` prunes ``model``
    itself (no second copy of the weights). ``progress`` and ``calibration`` as :func:`prune_model`.
    """
    if isinstance(windows, Tensor):
        if batch_size is None or batch_size < 1:
            raise ValueError(f"batch_size must be a positive number of windows, got {batch_size!r}")
        windows = windows.split(batch_size)  # [batch_size, T] each
    pruned = copy.deepcopy(model) if copy_model else model
    inputs = capture_layer_inputs(pruned, windows, dtype=config.execution_torch_dtype)
    report = prune_model(pruned, inputs, config, progress=progress, overwrite_inputs=True, calibration=calibration)
    return pruned, report


def _calibration_record(inputs: LayerInputs, given: dict[str, Any] | None) -> dict[str, Any]:
    if given is not None:
        return dict(given)
    rows = sum(h.shape[0] for h, _ in inputs.batches)
    return {"nsamples": rows, "seqlen": max(h.shape[1] for h, _ in inputs.batches)}


def _check_args(model, inputs, config, reduce) -> None:
    check_supported(model)
    if not isinstance(config, PruningConfig):
        raise TypeError(f"config must be a PruningConfig, got {type(config).__name__}")
    if not isinstance(inputs, LayerInputs) or not len(inputs):
        raise ValueError("inputs must be a non-empty LayerInputs (see capture_layer_inputs)")
    if reduce is not None and not callable(reduce):
        raise TypeError(f"reduce must be callable or None, got {type(reduce).__name__}")


def _report(model, plan: PruningPlan, params_before: int, layer_before: list[int], seconds: float,
            notes: list[str], phases: list[dict[str, float]]) -> PruningReport:
    layer_after = [_count(parts.layer) for parts in decoder_parts(model)]
    ratios = [(b - a) / b for b, a in zip(layer_before, layer_after)]
    overall = (sum(layer_before) - sum(layer_after)) / sum(layer_before)
    summary = [
        {"heads": lp.num_heads, "kv_heads": lp.num_kv_heads, "channels": lp.intermediate_size, "params_removed": r,
         "seconds": dict(t)}
        for lp, r, t in zip(plan.layers, ratios, phases)
    ]
    log.info("pruned %d layers in %.1f s: decoder-layer parameters removed %.2f%%", len(ratios), seconds, 100 * overall)
    return PruningReport(plan, ratios, overall, params_before, _count(model), seconds, summary, notes)
