"""What the pruning callback's steps did, as plain data (checkpointed with the callback, written to
results records and to ``pruning_report.json``)."""

from __future__ import annotations

import math
from typing import Any, Optional

from lightning.pytorch import Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from ..pruning.config import PruningConfig
from ..pruning.engine import PruningReport
from ..pruning.io import report_fields, write_pruning_files
from ..pruning.plan import PruningPlan
from .ranks import on_rank_zero
from .schedule import Schedule, describe_schedule

#: The entry points (Lightning stages and CLI subcommands) in which the pruning callback prunes.
PRUNING_STAGES = ("prune", "predict", "fit")


def step_record(report: PruningReport, epoch: Optional[int], target: float, world_size: int) -> dict[str, Any]:
    return {"epoch": epoch, "ratio": target, "params_before": report.params_before, "params_after": report.params_after,
            "decoder_params_removed": report.decoder_params_removed, "layer_params_removed": report.layer_params_removed,
            "seconds": report.seconds, "world_size": world_size, "calibration": report.plan.calibration,
            "layers": report.layers, "notes": report.notes}


def combine_steps(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The fractions removed by all steps together (each step's fraction is of the model before it)."""
    out: dict[str, Any] = {}
    if all("decoder_params_removed" in s for s in steps):
        out["decoder_params_removed"] = 1 - math.prod(1 - s["decoder_params_removed"] for s in steps)
        out["layer_params_removed"] = [1 - math.prod(1 - r for r in per_layer)
                                       for per_layer in zip(*(s["layer_params_removed"] for s in steps))]
    if all("params_before" in s for s in steps):
        out.update(params_before=steps[0]["params_before"], params_after=steps[-1]["params_after"],
                   model_params_removed=1 - steps[-1]["params_after"] / steps[0]["params_before"],
                   prune_seconds=sum(s["seconds"] for s in steps))
    return out


def steps_summary(config: PruningConfig, schedule: Schedule, steps: list[dict[str, Any]],
                  saved_to: Optional[str], exported_to: Optional[str]) -> Optional[dict[str, Any]]:
    """What the steps did, all together, under a results record's keys (None before the first)."""
    if not steps:
        return None
    last = steps[-1]
    ratio = (config.ratio, config.head_ratio, config.channel_ratio) if schedule is None else (last["ratio"],) * 3
    out: dict[str, Any] = {
        "method": config.method, "ratio": ratio[0], "attn_ratio": ratio[1], "mlp_ratio": ratio[2],
        "compensation": config.compensation, "structure": config.structure, "targets": config.targets,
        "head_rounding": config.head_rounding, "gqa_mode": config.gqa_mode,
    }
    out.update(combine_steps(steps))
    out.update(calibration=last.get("calibration"), prune_world_size=last.get("world_size"),
               save_dir=saved_to, export_dir=exported_to, notes=[n for s in steps for n in s.get("notes") or []])
    if schedule is not None:
        out["schedule"] = describe_schedule(schedule)
    out["pruning_steps"] = [{k: s.get(k) for k in ("epoch", "ratio", "params_before", "params_after",
                                                   "decoder_params_removed", "seconds")} for s in steps]
    return out


def log_step(trainer: Trainer, config: PruningConfig, steps: list[dict[str, Any]], report: PruningReport,
             epoch: Optional[int], target: float) -> None:
    """Say what the latest step did (rank 0) and log it to the trainer's logger."""
    total = combine_steps(steps)
    when = "" if epoch is None else f" (epoch {epoch}, step {len(steps)})"
    rank_zero_info(
        f"pruned with {config.method} ({config.compensation}, {config.structure}) to ratio "
        f"{target:g}{when}: parameters {report.params_before:,} -> {report.params_after:,}; decoder-layer "
        f"params removed {100 * total['decoder_params_removed']:.1f}%, whole-model params removed "
        f"{100 * total['model_params_removed']:.1f}%; {report.seconds:.1f} s")
    if trainer.logger is not None:
        metrics = {"prune/params_before": report.params_before, "prune/params_after": report.params_after,
                   "prune/decoder_params_removed": total["decoder_params_removed"],
                   "prune/model_params_removed": total["model_params_removed"], "prune/seconds": report.seconds}
        metrics.update({f"prune/layer_{i:02d}_params_removed": r
                        for i, r in enumerate(total["layer_params_removed"])})
        trainer.logger.log_metrics(metrics, step=trainer.global_step)


def composed_plan(previous: Optional[PruningPlan], step: PruningPlan, config: PruningConfig, schedule: Schedule,
                  target: float) -> PruningPlan:
    """The plan of the model after a step: the previous steps' plan followed by this one's, recording
    the user's settings at the ratio reached (not a step's own per-step ratios)."""
    plan = step if previous is None else previous.then(step)
    plan.config = config.to_dict() if schedule is None else \
        {**config.to_dict(), "ratio": target, "attn_ratio": None, "mlp_ratio": None}
    return plan


def write_out_of_core_report(trainer: Trainer, folder: str, report: PruningReport, summary: dict[str, Any],
                             run_id: str, source: Any) -> None:
    """Give a folder pruned out of core (rank 0 wrote it) the ``pruning_report.json`` fields that a saved
    folder has: the engine's summary, the results keys, the run id and which weights it holds."""
    info = {**report_fields(summary), "run_id": run_id, "weights": f"right after pruning, layer by layer from {source}"}
    on_rank_zero(trainer, lambda: write_pruning_files(folder, report={**report.summary(), **info}),
                 catch=(Exception,), failure=f"writing the pruning report into {folder} failed on rank 0")
