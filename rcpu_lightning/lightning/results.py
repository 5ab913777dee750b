"""`RCPUResultsWriter`: one results JSON per run, written by rank 0, atomically.

The record merges what the run knows: the model, the pruning settings and report (from the
:class:`RCPUPruningCallback` of this trainer, or from ``pruning_report.json`` / the plan of a pruned
checkpoint folder), the evaluation results of the LightningModule (``eval_results``: ppl, tokens,
per-task acc / acc_norm) and the data settings of the DataModule. The keys follow
:mod:`rcpu_lightning.eval.report` (``model``, ``method``, ``ratio``, ``ppl``, ``seqlen``, ``tasks``),
so result files feed its table and plot directly.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch import Callback, LightningModule, Trainer

from ..eval._io import write_json_atomic

log = logging.getLogger(__name__)


PATH_FIELDS = ("method", "compensation", "structure", "targets", "ratio", "ratio_pct", "nsamples", "stage")


def format_path(template: str, fields: dict[str, Any]) -> str:
    """Fill ``{method}``, ``{compensation}``, ``{structure}``, ``{targets}``, ``{ratio}``,
    ``{ratio_pct}`` (e.g. 20), ``{nsamples}``, ``{stage}`` in an output path (others are an error)."""
    if "{" not in template:
        return template
    values = {k: fields.get(k) for k in PATH_FIELDS}
    if values.get("ratio") is not None:
        values["ratio_pct"] = int(round(100 * float(values["ratio"])))
    try:
        return template.format_map(values)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"output path {template!r}: unknown placeholder {exc}; allowed: {list(PATH_FIELDS)}") from None


def _versions() -> dict[str, str]:
    import lightning
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "lightning": lightning.__version__,
            "python": platform.python_version()}


class RCPUResultsWriter(Callback):
    """Write a results JSON after evaluation (test/validate) and after pruning.

    Args:
        path: the JSON file (``None``: do nothing); may hold placeholders, see :func:`format_path`.
        name: model label in the record (default: the module's ``model_name``, e.g. the model spec).
    """

    def __init__(self, path: Optional[str] = None, name: Optional[str] = None) -> None:
        super().__init__()
        self.path = None if path is None else str(path)
        if self.path is not None:
            format_path(self.path, dict.fromkeys(PATH_FIELDS, 0))  # placeholder typos fail now
        self.name = name
        self.started = time.time()
        self.record: dict[str, Any] = {}
        self.extra: dict[str, Any] = {}  # set by the CLI: subcommand, command line, resolved config

    def build(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> dict[str, Any]:
        from .callback import RCPUPruningCallback

        rec: dict[str, Any] = {
            "model": self.name or str(getattr(pl_module, "model_name", type(pl_module).__name__)),
            "stage": stage,
            "world_size": trainer.world_size,
        }
        lm = pl_module.pruned_lm() if hasattr(pl_module, "pruned_lm") else None
        params = sum(p.numel() for p in (lm or pl_module).parameters())
        prune_cb = next((c for c in trainer.callbacks if isinstance(c, RCPUPruningCallback)), None)
        report = prune_cb.report if prune_cb is not None else None
        plan = getattr(pl_module, "pruning_plan", None)
        if report is not None:
            cfg = prune_cb.config
            rec.update(
                method=cfg.method, ratio=cfg.ratio, attn_ratio=cfg.head_ratio, mlp_ratio=cfg.channel_ratio,
                compensation=cfg.compensation, structure=cfg.structure, targets=cfg.targets,
                head_rounding=cfg.head_rounding, gqa_mode=cfg.gqa_mode,
                effective_ratio=report.overall_ratio, effective_params_ratio=1 - report.params_after / report.params_before,
                layer_ratios=report.layer_ratios, params_before=report.params_before, params_after=report.params_after,
                prune_seconds=report.seconds, calib_samples_pruned=prune_cb.calibration_rows,
                prune_world_size=prune_cb.world_size, save_dir=prune_cb.output_dir(),
            )
        elif plan is not None:
            cfg = plan.get("config") or {}
            rec.update({k: cfg.get(k) for k in ("method", "ratio", "compensation", "structure", "targets",
                                                "head_rounding", "gqa_mode")})
            rec.update(params_after=params)
            saved = self._saved_report(pl_module)
            if saved:
                rec.update(params_before=saved.get("params_before"), params_after=saved.get("params_after", params),
                           effective_ratio=saved.get("overall_ratio"), layer_ratios=saved.get("layer_ratios"),
                           prune_seconds=saved.get("seconds"), prune_world_size=saved.get("world_size"))
        else:
            rec.update(method="dense", ratio=0.0, params_before=params, params_after=params, effective_ratio=0.0)
        rec["params"] = params
        dm = getattr(trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "describe"):
            rec.update(dm.describe())
        results = dict(getattr(pl_module, "eval_results", {}) or {})
        rec.update(results)
        rec["seconds"] = time.time() - self.started
        rec["versions"] = _versions()
        rec.update(self.extra)
        return rec

    @staticmethod
    def _saved_report(pl_module: LightningModule) -> Optional[dict]:
        name = getattr(pl_module, "model_name", None)
        if not name:
            return None
        file = Path(str(name)).expanduser() / "pruning_report.json"
        try:
            return json.loads(file.read_text()) if file.is_file() else None
        except (OSError, ValueError):
            return None

    def write(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.path is None:
            return
        record = self.build(trainer, pl_module, stage)
        path = format_path(self.path, {**record, "nsamples": record.get("calib_samples"), "stage": stage})
        record["results_path"] = path
        self.record = record
        if trainer.is_global_zero:
            write_json_atomic(path, record)
            log.info("results written to %s", path)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        from .callback import RCPUPruningCallback

        if any(isinstance(c, RCPUPruningCallback) and c.report is not None for c in trainer.callbacks):
            self.write(trainer, pl_module, "prune")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.write(trainer, pl_module, "test")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self.write(trainer, pl_module, "validate")
