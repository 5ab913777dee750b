"""`PruningPlan`: what was removed, as JSON-serialisable primitives.

The plan is enough to rebuild the pruned shapes on a dense model of the same architecture
(:func:`~rcpu_lightning.pruning.surgery.apply_plan_shapes`) and to reload a checkpoint whose
config alone cannot describe it (non-uniform AL-AM layers, head counts that do not divide
``hidden_size``, o_proj biases on architectures without a bias flag).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

PLAN_VERSION = 1
#: Config fields a plan overrides; ``dense`` holds their values before pruning.
SHAPE_KEYS = ("num_attention_heads", "num_key_value_heads", "intermediate_size", "head_dim")
BIAS_KEYS = ("attention_bias", "mlp_bias")


@dataclass
class LayerPlan:
    """One decoder layer after pruning (indices refer to the dense layer, ascending)."""

    kept_heads: list[int]
    kept_kv_heads: list[int]
    kept_channels: list[int]
    biases: list[str] = field(default_factory=list)  # projections carrying a bias, e.g. ["o_proj"]
    added_biases: list[str] = field(default_factory=list)  # biases created by compensation

    @property
    def num_heads(self) -> int:
        return len(self.kept_heads)

    @property
    def num_kv_heads(self) -> int:
        return len(self.kept_kv_heads)

    @property
    def intermediate_size(self) -> int:
        return len(self.kept_channels)


@dataclass
class PruningPlan:
    """Per-layer kept units plus the dense shape values of the model config."""

    model_type: str
    dense: dict[str, Any]  # SHAPE_KEYS + BIAS_KEYS + hidden_size before pruning
    layers: list[LayerPlan]
    config: dict[str, Any] | None = None  # the PruningConfig used, for the record
    calibration: dict[str, Any] = field(default_factory=dict)  # what the calibration data was (record)
    version: int = PLAN_VERSION

    def uniform_values(self) -> dict[str, int] | None:
        """Config shape values when every layer has the same shapes, else None."""
        shapes = {(lp.num_heads, lp.num_kv_heads, lp.intermediate_size) for lp in self.layers}
        if len(shapes) != 1:
            return None
        heads, kv, inter = shapes.pop()
        return {
            "num_attention_heads": heads,
            "num_key_value_heads": kv,
            "intermediate_size": inter,
            "head_dim": int(self.dense["head_dim"]),
        }

    def then(self, step: "PruningPlan") -> "PruningPlan":
        """The plan of this model pruned again by ``step`` (whose indices refer to this plan's pruned
        layers): kept indices mapped back to the dense layers, biases as ``step`` leaves them, the
        step's config and calibration (the latest step's settings are recorded)."""
        if len(step.layers) != len(self.layers):
            raise ValueError(f"step has {len(step.layers)} layers, this plan {len(self.layers)}")
        layers = []
        for lp, sp in zip(self.layers, step.layers):
            layers.append(LayerPlan(
                kept_heads=[lp.kept_heads[i] for i in sp.kept_heads],
                kept_kv_heads=[lp.kept_kv_heads[i] for i in sp.kept_kv_heads],
                kept_channels=[lp.kept_channels[i] for i in sp.kept_channels],
                biases=list(sp.biases),
                added_biases=sorted(set(lp.added_biases) | set(sp.added_biases)),
            ))
        return PruningPlan(self.model_type, dict(self.dense), layers, step.config, dict(step.calibration))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PruningPlan":
        if not isinstance(data, dict) or "layers" not in data:
            raise ValueError("not a pruning plan: expected a dict with 'layers'")
        if data.get("version", PLAN_VERSION) != PLAN_VERSION:
            raise ValueError(f"pruning plan version {data.get('version')!r} is not supported (need {PLAN_VERSION})")
        layers = [LayerPlan(**lp) for lp in data["layers"]]
        return cls(
            model_type=data["model_type"],
            dense=dict(data["dense"]),
            layers=layers,
            config=data.get("config"),
            calibration=dict(data.get("calibration") or {}),
            version=data.get("version", PLAN_VERSION),
        )
