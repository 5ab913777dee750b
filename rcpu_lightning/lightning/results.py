"""`RCPUResultsWriter`: the one writer of a run's results JSON (rank 0, atomic).

The record merges what the run knows, as plain data: the pruning facts (``results_summary()`` of
any callback that offers one, i.e. :class:`RCPUPruningCallback` after it pruned in this run; else
the plan and ``pruning_report.json`` of a pruned model the module was loaded from; else "dense"),
the evaluation results of the LightningModule (``eval_results``: ppl, tokens, per-task acc /
acc_norm) and, after an evaluation, every metric the module logged (``metrics``: what ``self.log``
gave in its steps, so a module of the user's reports its own), the data settings of the DataModule and
the run (entry point, command, versions). The
keys follow :mod:`rcpu_lightning.eval.report` (``model``, ``method``, ``ratio``, ``ppl``,
``seqlen``, ``tasks``), so result files feed its table and plot directly.

The path may hold placeholders (:func:`rcpu_lightning.files.format_output_path`; ``{stage}`` is
the entry point: ``prune``, ``fit``, ``test``, ...). It is resolved and checked in ``setup``,
before any work: an existing file is only replaced with ``overwrite=True``, or by the run that wrote
it: each run has an id, kept in its checkpoints and its records, so a ``fit`` resumed from a
checkpoint of that run replaces its own results (checked after the restore, before any work).
"""

from __future__ import annotations

import inspect
import json
import logging
import platform
import time
import uuid
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from ..files import REPORT_FILE, check_output_path, format_output_path, write_json_atomic, write_text_atomic
from ..pruning.io import DENSE_FIELDS, summary_fields
from .ranks import on_rank_zero
from .steps import PRUNING_STAGES

log = logging.getLogger(__name__)

_FLAG = "overwrite=True (CLI: --results.overwrite true)"


def _versions() -> dict[str, str]:
    import lightning
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "lightning": lightning.__version__,
            "python": platform.python_version()}


class RCPUResultsWriter(Callback):
    """Write a results JSON after pruning, after evaluation (test / validate) and at the end of ``fit``
    (then with ``training``: steps, epochs, the last training metrics).

    Args:
        path: the JSON file (``null``: write nothing). May hold the placeholders of
            ``rcpu_lightning.files.OUTPUT_PATH_FIELDS`` (``{method}``, ``{ratio_pct}``, ``{stage}``, ...).
        name: model label in the record (default: the module's ``model_name``, e.g. the model spec).
        overwrite: replace an existing results file. Without it the run stops before any work.
    """

    def __init__(self, path: Optional[str] = None, name: Optional[str] = None, overwrite: bool = False) -> None:
        super().__init__()
        self.path = None if path is None else str(path)
        if self.path is not None:
            format_output_path(self.path, {})  # placeholder typos fail now
        self.name = name
        self.overwrite = bool(overwrite)
        self.stage: Optional[str] = None  # the entry point; the CLI sets its subcommand (e.g. "prune")
        self.extra: dict[str, Any] = {}  # set by the CLI: command line, resolved config
        self.resolved: Optional[str] = None
        self.record: dict[str, Any] = {}
        self.dense: Optional[dict[str, Any]] = None  # a prune run's evaluation of the dense model
        self.run_id = uuid.uuid4().hex  # restored from a checkpoint by a resumed fit
        self._unverified: list[str] = []  # existing files a resumed fit may own (decided after the restore)
        self._started = time.time()
        self._epochs: list[int] = []  # fit: the epochs that trained in this run
        self._validated_at: Optional[int] = None  # fit: the step of this run's latest validation

    # -- where ------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.stage = self.stage or stage
        if self.path is None or self.resolved is not None:
            return  # resolved once per run (``prune`` = predict + test: one file)
        path = format_output_path(self.path, {**self._path_fields(trainer, pl_module, self.stage), "stage": self.stage})

        def check() -> None:
            for file in (path, config_path(path)):
                if stage == "fit" and not self.overwrite and Path(file).is_file():
                    self._unverified.append(file)  # a resumed fit's own? its run id is not restored yet
                    continue
                check_output_path(file, self.overwrite, "results.path", _FLAG)

        on_rank_zero(trainer, check)
        self.resolved = path

    def check_resumed_outputs(self, trainer: Trainer) -> None:
        """Refuse the existing results files ``setup`` let through for a fit, unless this run wrote them
        (resumed from its checkpoint). Called after the restore and before any work: by the pruning
        callback before it prunes, else at ``on_fit_start``."""
        files, self._unverified = self._unverified, []

        def check() -> None:
            if files and not self._own_results():
                for file in files:
                    check_output_path(file, False, "results.path", _FLAG)

        on_rank_zero(trainer, check)

    def _own_results(self) -> bool:
        """Whether the results file (and so the config beside it) was written by this run."""
        try:
            return json.loads(Path(str(self.resolved)).read_text()).get("run_id") == self.run_id
        except (OSError, ValueError, AttributeError):
            return False

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.run_id = state_dict.get("run_id") or self.run_id

    def config_path(self) -> Optional[str]:
        """Where the run's resolved config is saved (beside the results file), once resolved."""
        return None if self.resolved is None else config_path(self.resolved)

    @staticmethod
    def _path_fields(trainer: Trainer, pl_module: LightningModule, stage: str) -> dict[str, Any]:
        plan = getattr(pl_module, "pruning_plan", None)
        if plan is not None:  # a pruned model: its own settings
            cfg = plan.get("config") or {}
            return {**cfg, "nsamples": (plan.get("calibration") or {}).get("nsamples")}
        if stage in PRUNING_STAGES:  # a callback is about to prune: its settings
            fields: dict[str, Any] = {}
            for cb in trainer.callbacks:
                if callable(getattr(cb, "output_fields", None)):
                    fields.update(cb.output_fields())
            if fields:
                return fields
        return dict(DENSE_FIELDS)

    # -- what --------------------------------------------------------------------------------------
    def build(self, trainer: Trainer, pl_module: LightningModule, evaluation: Optional[str]) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "model": self.name or str(getattr(pl_module, "model_name", type(pl_module).__name__)),
            "stage": self.stage,
            "evaluation": evaluation,
            "world_size": trainer.world_size,
            "run_id": self.run_id,
        }
        lm = pl_module.pruned_lm() if callable(getattr(pl_module, "pruned_lm", None)) else pl_module
        params = sum(p.numel() for p in lm.parameters())
        rec.update(self._pruning_facts(trainer, pl_module, params))
        rec["params"] = params
        dm = getattr(trainer, "datamodule", None)
        if dm is not None and callable(getattr(dm, "describe", None)):
            rec.update(_describe(dm, evaluation))
        if self.stage == "test":  # the DataModule's calibration settings played no part in this run
            for key in ("calib_samples", "calib_seqlen", "calib_seed"):
                rec.pop(key, None)
        rec.update(dict(getattr(pl_module, "eval_results", {}) or {}))
        if evaluation is not None:  # what the module's own steps logged (a user module has no eval_results)
            rec["metrics"] = logged_metrics(trainer)
        if self.dense is not None:
            rec["dense"] = self.dense
        exported = [cb.exported_to for cb in trainer.callbacks if getattr(cb, "exported_to", None)]
        if exported and not rec.get("export_dir"):
            rec["export_dir"] = exported[-1]
        rec["seconds"] = time.time() - self._started
        rec["versions"] = _versions()
        rec.update(self.extra)
        return rec

    @staticmethod
    def _pruning_facts(trainer: Trainer, pl_module: LightningModule, params: int) -> dict[str, Any]:
        for cb in trainer.callbacks:
            summary = cb.results_summary() if callable(getattr(cb, "results_summary", None)) else None
            if summary is not None:
                return summary
        plan = getattr(pl_module, "pruning_plan", None)
        if plan is None:
            return {**DENSE_FIELDS, "params_before": params, "params_after": params,
                    "decoder_params_removed": 0.0, "model_params_removed": 0.0}
        cfg = plan.get("config") or {}
        facts = {k: cfg.get(k) for k in ("method", "ratio", "compensation", "structure", "targets", "head_rounding",
                                         "gqa_mode")}
        facts.update(params_after=params, calibration=plan.get("calibration"))
        saved = _saved_report(pl_module)
        facts.update(summary_fields(saved))
        return facts

    # -- when --------------------------------------------------------------------------------------
    def write(self, trainer: Trainer, pl_module: LightningModule, evaluation: Optional[str],
              **more: Any) -> None:
        """Build the record (kept in ``record``, for the end-of-run summary) and write it, if a path is set."""
        record = {**self.build(trainer, pl_module, evaluation), **more}
        self.record = record
        if self.resolved is None:
            return
        record["results_path"] = self.resolved
        if trainer.is_global_zero:
            write_json_atomic(self.resolved, record)
            if self.extra.get("config") is not None:  # cli.py's resolved config: written with the results, so a
                write_text_atomic(config_path(self.resolved), self.extra["config"])  # failed run leaves none
            rank_zero_info(f"results written to {self.resolved}")

    @staticmethod
    def _pruned(trainer: Trainer) -> bool:
        return any(callable(getattr(c, "results_summary", None)) and c.results_summary() for c in trainer.callbacks)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._pruned(trainer):
            self.write(trainer, pl_module, None)  # the pruning facts, even if a later evaluation dies

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.stage == "prune" and not self._pruned(trainer):  # ``prune_evaluate_dense``: the baseline
            self.dense = {**(getattr(pl_module, "eval_results", {}) or {}), "metrics": logged_metrics(trainer)}
            return
        self.write(trainer, pl_module, "test")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            if trainer.state.fn == "fit":
                self._validated_at = trainer.global_step
            self.write(trainer, pl_module, "validate")

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.check_resumed_outputs(trainer)  # no-op when the pruning callback already checked (before pruning)
        self._epochs, self._validated_at = [], None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epochs.append(trainer.current_epoch)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The fit's record, also when no validation ran (a fit shorter than one epoch, no val data)."""
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if k.startswith("train") and hasattr(v, "numel") and v.numel() == 1}
        training = {"steps": trainer.global_step, "epochs": self._epochs, "last_metrics": metrics,
                    "validated_at_step": self._validated_at}
        self.write(trainer, pl_module, None if self._validated_at is None else "validate", training=training)


def logged_metrics(trainer: Trainer) -> dict[str, float]:
    """The metrics the module logged in the evaluation that just ended (``self.log`` in its steps and
    epoch hooks, reduced as Lightning reduces them), as plain numbers."""
    out = {}
    for name, value in sorted(trainer.callback_metrics.items()):
        try:
            out[name] = float(value)
        except (TypeError, ValueError):  # a non-scalar: not a metric a record can hold
            continue
    return out


def _describe(dm: Any, evaluation: Optional[str]) -> dict[str, Any]:
    """The DataModule's settings for this record (``describe(evaluation)`` when it takes the evaluation:
    validation and test read different windows)."""
    try:
        takes = len(inspect.signature(dm.describe).parameters) >= 1
    except (TypeError, ValueError):
        takes = False
    return dm.describe(evaluation) if takes else dm.describe()


def _saved_report(pl_module: LightningModule) -> dict[str, Any]:
    """``REPORT_FILE`` (``pruning_report.json``) of the folder the module's model was loaded from (or {})."""
    name = getattr(pl_module, "model_name", None)
    file = Path(str(name)).expanduser() / REPORT_FILE if name else None
    try:
        return json.loads(file.read_text()) if file is not None and file.is_file() else {}
    except (OSError, ValueError):
        return {}


def config_path(results_path: str) -> str:
    """``outputs/x.prune.json`` -> ``outputs/x.prune.config.yaml``."""
    path = Path(results_path)
    return str(path.with_name(path.stem + ".config.yaml"))


def summary_lines(record: dict[str, Any]) -> list[str]:
    """The end-of-run summary of a results record (what ``cli.py prune`` prints last)."""
    lines = [f"== {record.get('stage') or 'run'} summary ==", f"model         {record.get('model')}"]
    if record.get("method") not in (None, DENSE_FIELDS["method"]):
        lines.append(f"pruning       {record['method']} ({record.get('compensation')}, {record.get('structure')}), "
                     f"ratio {record.get('ratio')}")
    before, after = record.get("params_before"), record.get("params_after")
    if before and after:
        removed = [f"whole model -{100 * record['model_params_removed']:.1f}%" if record.get("model_params_removed") is not None else None,
                   f"decoder layers -{100 * record['decoder_params_removed']:.1f}%"
                   if record.get("decoder_params_removed") is not None else None]
        extra = ", ".join(r for r in removed if r)
        lines.append(f"parameters    {before:,} -> {after:,}" + (f" ({extra})" if extra else ""))
    training = record.get("training") or {}
    if record.get("prune_seconds") is not None:
        calib = record.get("calibration") or {}
        lines.append(f"pruning time  {record['prune_seconds']:.1f} s ({calib.get('nsamples')} calibration windows "
                     f"x {calib.get('seqlen')} tokens, {calib.get('source', 'calibration data')})")
    if training:
        epochs = training.get("epochs") or []
        span = "" if not epochs else f" in epoch {epochs[0]}" if len(epochs) == 1 else f" in epochs {epochs[0]}-{epochs[-1]}"
        last = ", ".join(f"{k} {v:.4g}" for k, v in (training.get("last_metrics") or {}).items())
        lines.append(f"training      {training.get('steps')} optimizer steps{span}"
                     + (f" on {record['train_windows']} windows" if record.get("train_windows") else "")
                     + (f"; last {last}" if last else ""))
    dense_ppl = (record.get("dense") or {}).get("ppl")
    if record.get("ppl") is not None:
        windows = f"{record.get('ppl_windows')} windows of {record.get('seqlen')} tokens"
        ppl = f"dense {dense_ppl:.2f} -> pruned {record['ppl']:.2f}" if dense_ppl is not None else f"{record['ppl']:.2f}"
        when = f", after step {training['validated_at_step']}" if training.get("validated_at_step") is not None else ""
        lines.append(f"perplexity    {ppl} (WikiText-2 {record.get('ppl_split', 'test')}, {windows}{when})")
    for task, entry in sorted((record.get("tasks") or {}).items()):
        lines.append(f"{task:13s} {entry['reported_metric']} {100 * entry['reported']:.2f}% (n={entry['n']})")
    if record.get("ppl") is None and not record.get("tasks"):  # a module of the user's: its own metrics
        for name, value in (record.get("metrics") or {}).items():
            lines.append(f"metric        {name} {value:.4g}")
    if record.get("save_dir"):
        lines.append(f"checkpoint    {record['save_dir']}" + (" (right after pruning)" if training else ""))
    if record.get("export_dir"):
        lines.append(f"fine-tuned    {record['export_dir']}")
    if record.get("results_path"):
        lines.append(f"results       {record['results_path']}")
    return lines
