"""`PruningConfig`: every knob of the pruning engine, as a plain typed dataclass.

The dataclass is usable from YAML through jsonargparse (plain typed fields with defaults,
``Literal`` types for the enumerations). ``__post_init__`` validates every value and raises
``ValueError`` naming the argument, the bad value and what is allowed.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Optional, get_args

import torch

Method = Literal["rcpu", "wanda_sp", "flap", "magnitude"]
Compensation = Literal["rotation", "rotation_scale", "least_squares", "affine_least_squares", "bias", "none"]
Structure = Literal["uniform", "al_am"]
Targets = Literal["both", "o_proj", "down_proj"]
HeadRounding = Literal["floor", "nearest"]
GqaMode = Literal["per_group", "whole_group"]
StatsDtype = Literal["float64", "float32"]
Arithmetic = Literal["fast", "float64"]
CompensationTarget = Literal["pruned", "dense"]
Selection = Literal["score", "compensated_error"]
Allocation = Literal["score", "compensated_error"]
ExecutionDtype = Literal["float32", "bfloat16", "float16"]

#: The compensation each method uses when ``compensation`` is left unset.
DEFAULT_COMPENSATION: dict[str, str] = {
    "rcpu": "rotation",
    "flap": "bias",
    "wanda_sp": "none",
    "magnitude": "none",
}


@dataclass
class PruningConfig:
    """What to prune, and how to score, select and compensate (see shared/docs/rcpu-method.md).

    The one declaration of the engine's knobs: the callback, the CLI (``pruning.config.*``) and the
    plain Python API all take this object. Calibration data (how many windows, their length, the
    seed) is not here: it belongs to the data (:class:`rcpu_lightning.data.CalibrationConfig`); the
    engine is deterministic given its inputs, and the pruning plan records what it was fed.

    Args:
        method: importance score of a column: ``rcpu`` (variance-aware gamma), ``wanda_sp``,
            ``flap`` (FLAP's WIFV) or ``magnitude`` (column norm of the weight).
        compensation: how o_proj/down_proj absorb the removed columns: ``rotation`` (Procrustes),
            ``rotation_scale``, ``least_squares`` (ridge, ``ls_lambda``), ``affine_least_squares`` (ridge
            relative to the inputs' variance, plus a bias for the mean shift), ``bias`` (FLAP), ``none``;
            null picks the method's default (rcpu: rotation, flap: bias, others: none).
        structure: ``uniform`` (the same ratio in every layer, as the paper) or ``al_am`` (FLAP's
            adaptive structure: one global threshold over all layers and both module kinds).
        allocation: ``al_am`` only: what the global threshold ranks: ``score`` (each layer's standardised
            ``method`` scores; FLAP) or ``compensated_error`` (each head unit's and channel's share of the
            error left after refitting, per parameter, each token's error relative to its residual-stream
            norm, from a dense pass with one layer's full statistics at a time; beyond FLAP, needs a
            compensation that refits, see :func:`.engine.error_units`).
        max_layer_ratio: ``al_am`` only: no layer loses more than this fraction of its head units or of
            its MLP channels (the threshold moves on to other layers); null: no cap (FLAP).
        ratio: fraction of attention heads and of MLP channels to remove, in [0, 1).
        attn_ratio: fraction of attention heads to remove instead of ``ratio`` (uniform structure only).
        mlp_ratio: fraction of MLP channels to remove instead of ``ratio`` (uniform structure only).
        targets: which projections are compensated: ``both``, ``o_proj`` or ``down_proj``.
        head_rounding: how a head ratio becomes a feasible head count: ``floor`` (the largest count
            <= ratio x heads; the paper) or ``nearest``.
        gqa_mode: grouped-query attention: ``per_group`` removes query heads in equal numbers from
            every kv group (k/v kept), ``whole_group`` removes whole kv groups with their k/v rows.
        ls_lambda: ridge of ``least_squares`` (relative to the mean Gram matrix ``G / n``) and of
            ``affine_least_squares`` (relative to the mean variance of the kept inputs).
        stats_dtype: accumulation dtype of the calibration statistics (``float64`` or ``float32``).
        refresh_mlp_stats: re-collect down_proj statistics after the layer's attention is pruned
            (not in the paper).
        selection: which heads/channels of each layer go: ``score`` (the lowest scores of ``method``;
            the paper) or ``compensated_error`` (greedily, the ones whose removal leaves the least
            affine least-squares error once the rest is refitted, :mod:`.error_selection`; needs a
            compensation that refits: not ``none``/``bias``; a module that ``targets`` leaves
            uncompensated is selected by score; with ``compensation_target: dense`` the error is still measured
            against the module's own output). The counts per layer come from ``structure`` either way.
        compensation_target: what a compensated module is fitted to: ``pruned`` (its own output on the pruned-so-far
            inputs; the paper) or ``dense`` (the dense model's residual stream after the module, so the
            errors of earlier layers are corrected too; keeps a second copy of the activations and
            runs each layer five times instead of twice; needs a compensation that fits targets:
            rotation, rotation_scale, least_squares or affine_least_squares).
        target: the old name of ``compensation_target``: refused, with a message naming the new key.
        offload_inputs: keep the captured layer inputs on CPU and move them to the layer's device
            one batch at a time.
        execution_device: the device each decoder layer is moved to while it is pruned, one layer at a
            time (e.g. ``cuda:0`` for a model kept on CPU); null: where the layer's weights are.
        execution_dtype: the dtype each decoder layer and the calibration activations run in while the
            layer is pruned: ``float32``, ``bfloat16`` or ``float16``; the weights go back in the model's
            (out of core: the checkpoint's) own dtype (rounded, where this dtype is narrower). null: the
            model's dtype. ``float32`` for a bf16 model on a CPU without native bf16 (no AVX512-BF16/AMX),
            where a bf16 matmul is several times slower than a float32 one. Statistics and compensation
            are float32/float64 either way.
        arithmetic: ``fast``: each batch's Gram product in float32, summed in float64, and the
            Procrustes rotation from a float64 eigendecomposition (a thin one where the cross matrix
            is rank-deficient); ``float64``: every product and an SVD in float64 (the reference
            math; slower). The two agree to a few 1e-6 relative on the weights.
    """

    method: Method = "rcpu"
    compensation: Optional[Compensation] = None
    structure: Structure = "uniform"
    allocation: Allocation = "score"
    max_layer_ratio: Optional[float] = None
    ratio: float = 0.2
    attn_ratio: Optional[float] = None
    mlp_ratio: Optional[float] = None
    targets: Targets = "both"
    head_rounding: HeadRounding = "floor"
    gqa_mode: GqaMode = "per_group"
    ls_lambda: float = 1e-3
    stats_dtype: StatsDtype = "float64"
    refresh_mlp_stats: bool = False
    offload_inputs: bool = False
    execution_device: Optional[str] = None
    execution_dtype: Optional[ExecutionDtype] = None
    arithmetic: Arithmetic = "fast"
    compensation_target: CompensationTarget = "pruned"
    selection: Selection = "score"
    #: Renamed ``compensation_target``: any value is refused with a message naming the new key (a
    #: field so that YAML, the CLI and ``PruningConfig(**d)`` all reach that message; not saved).
    target: Optional[str] = field(default=None, repr=False, compare=False,
                                  metadata={"help": "renamed: use compensation_target"})

    def __post_init__(self) -> None:
        for old, new in RENAMED_KEYS.items():
            if getattr(self, old) is not None:
                raise ValueError(f"{old}={getattr(self, old)!r}: the key {old!r} was renamed {new!r}; "
                                 f"write {new}: {getattr(self, old)} instead")
        for name, kind in _ENUMS.items():
            _check_choice(name, getattr(self, name), get_args(kind))
        if self.compensation is None:
            self.compensation = DEFAULT_COMPENSATION[self.method]
        _check_choice("compensation", self.compensation, get_args(Compensation))
        check_ratio("ratio", self.ratio)
        for name in ("attn_ratio", "mlp_ratio"):
            if getattr(self, name) is not None:
                check_ratio(name, getattr(self, name))
                if self.structure == "al_am":
                    raise ValueError(
                        f"{name}={getattr(self, name)!r} cannot be combined with structure='al_am' "
                        "(one global threshold over both module kinds); use structure='uniform' "
                        f"or leave {name} unset"
                    )
        if self.max_layer_ratio is not None:
            if self.structure != "al_am":
                raise ValueError(f"max_layer_ratio={self.max_layer_ratio!r} caps the adaptive structure; "
                                 "it needs structure='al_am' (leave it unset for 'uniform')")
            if not _is_number(self.max_layer_ratio) or not self.ratio <= self.max_layer_ratio <= 1.0:
                raise ValueError(f"max_layer_ratio={self.max_layer_ratio!r} is out of range; allowed: a number "
                                 f"in [ratio, 1] = [{self.ratio}, 1]")
        if not _is_number(self.ls_lambda) or not math.isfinite(self.ls_lambda) or self.ls_lambda < 0:
            raise ValueError(f"ls_lambda must be a finite number >= 0, got {self.ls_lambda!r}")
        for name in ("refresh_mlp_stats", "offload_inputs"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.execution_dtype is not None:
            _check_choice("execution_dtype", self.execution_dtype, (*get_args(ExecutionDtype), None))
        if self.compensation_target == "dense" and self.compensation not in (
                "rotation", "rotation_scale", "least_squares", "affine_least_squares"):
            raise ValueError(f"compensation_target='dense' fits compensation to explicit targets; "
                             f"compensation={self.compensation!r} does not; use rotation, rotation_scale, "
                             "least_squares or affine_least_squares")
        if self.allocation != "score" and self.structure != "al_am":
            raise ValueError(f"allocation={self.allocation!r} sets the adaptive structure's per-layer counts; "
                             "it needs structure='al_am' (leave it 'score' for 'uniform')")
        if self.allocation == "compensated_error" and self.compensation in ("none", "bias"):
            raise ValueError(f"allocation='compensated_error' ranks what a refit leaves; compensation="
                             f"{self.compensation!r} refits nothing: use allocation='score' or a refitting compensation")
        if self.selection == "compensated_error" and self.compensation in ("none", "bias"):
            raise ValueError(f"selection='compensated_error' picks what a refit absorbs; compensation="
                             f"{self.compensation!r} refits nothing: use selection='score' or a refitting compensation")
        if self.execution_device is not None:
            try:
                torch.device(self.execution_device)
            except (RuntimeError, TypeError):
                raise ValueError(f"execution_device={self.execution_device!r} is not a device; e.g. 'cpu', "
                                 "'cuda', 'cuda:1' or null") from None

    @property
    def head_ratio(self) -> float:
        """Ratio of attention heads to remove (``attn_ratio`` or ``ratio``)."""
        return self.ratio if self.attn_ratio is None else self.attn_ratio

    @property
    def channel_ratio(self) -> float:
        """Ratio of MLP channels to remove (``mlp_ratio`` or ``ratio``)."""
        return self.ratio if self.mlp_ratio is None else self.mlp_ratio

    @property
    def execution_torch_dtype(self) -> torch.dtype | None:
        """``execution_dtype`` as a torch dtype (None: each layer runs in its own dtype)."""
        return None if self.execution_dtype is None else getattr(torch, self.execution_dtype)

    def compensates(self, module: str) -> bool:
        """Whether compensation applies to ``module`` (``"o_proj"`` or ``"down_proj"``)."""
        return self.compensation != "none" and self.targets in ("both", module)

    def to_dict(self) -> dict[str, Any]:
        """The knobs (renamed keys left out)."""
        data = asdict(self)
        for old in RENAMED_KEYS:
            del data[old]
        return data


#: Keys of older versions -> their names now (refused, naming the new key).
RENAMED_KEYS = {"target": "compensation_target"}

_ENUMS = {
    "method": Method,
    "structure": Structure,
    "allocation": Allocation,
    "targets": Targets,
    "head_rounding": HeadRounding,
    "gqa_mode": GqaMode,
    "stats_dtype": StatsDtype,
    "arithmetic": Arithmetic,
    "compensation_target": CompensationTarget,
    "selection": Selection,
}


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed values: {list(allowed)}")


def check_ratio(name: str, value: Any) -> float:
    """The one check of a pruning ratio (config fields, schedules): ``value`` as a float in [0, 1)."""
    if not _is_number(value) or not math.isfinite(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name}={value!r} is out of range; allowed: a number in [0, 1)")
    return float(value)
