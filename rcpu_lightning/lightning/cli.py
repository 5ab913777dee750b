"""LightningCLI with a ``prune`` subcommand (the repository's ``cli.py`` calls :func:`main`).

    python cli.py prune -c configs/smollm2-rcpu.yaml              # calibrate, prune, save, test
    python cli.py test  -c configs/smollm2-rcpu.yaml --model.model outputs/smollm2/rcpu-rotation-20
    python cli.py prune -c configs/smollm2-rcpu.yaml --print_config
    python cli.py report outputs/smollm2/*.json --markdown table.md  # tables from results files

Top-level config keys: ``trainer``, ``model`` (:class:`CausalLMModule`), ``data``
(:class:`RCPUDataModule`), ``pruning`` (:class:`RCPUPruningCallback`, always instantiated; it acts
only in ``predict``/``prune`` and ``fit``) and ``results`` (:class:`RCPUResultsWriter`).

Errors of the kinds user mistakes raise (``ValueError``, ``TypeError``, ``OSError``: a bad value, a
missing file, an output that exists) end with one line on stderr and exit status 2; set
``RCPU_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks.progress import ProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from ..files import check_output_path, format_output_path, write_text_atomic
from ..models.loading import check_model_spec
from ..pruning.config import PruningConfig
from ..pruning.io import PLAN_FILE, load_plan
from .callback import RCPUPruningCallback, output_fields
from .data import RCPUDataModule
from .logs import configure_logging
from .module import CausalLMModule
from .progress import LogProgress
from .results import RCPUResultsWriter, config_path, summary_lines

DEBUG_ENV = "RCPU_DEBUG"

PRUNE_HELP = (
    "Calibrate, prune, save the pruned checkpoint, evaluate it, print a summary. Options most runs need "
    "(all of them follow): -c CONFIG (a YAML file; several merge in order); "
    "--pruning.config.method/.ratio/.compensation/.structure/.head_rounding (what to prune and how); "
    "--pruning.save_dir DIR (the pruned checkpoint; --pruning.overwrite true replaces an existing one); "
    "--data.calibration.nsamples N (calibration windows: fewer = faster); "
    "--data.ppl_max_windows N (evaluate on the first N perplexity windows); --data.tasks [boolq,piqa,...] "
    "(zero-shot tasks); --results.path FILE (the results JSON; --results.overwrite true replaces one); "
    "--evaluate_dense true (also evaluate the dense model, for a before/after); --print_config."
)


def _writers(trainer: Trainer) -> list[RCPUResultsWriter]:
    return [c for c in trainer.callbacks if isinstance(c, RCPUResultsWriter)]


class RCPUTrainer(Trainer):
    """A Trainer with ``prune``: a predict loop that calibrates and prunes, then (by default) a test loop."""

    def prune(
        self,
        model: LightningModule,
        datamodule: Optional[LightningDataModule] = None,
        evaluate: bool = True,
        evaluate_dense: bool = False,
    ) -> dict[str, Any]:
        """Calibrate on the calibration windows, prune, save the pruned checkpoint, then evaluate it.

        The usual options (see ``--help`` for all): ``--pruning.config.method``/``ratio``/
        ``compensation``/``structure``/``head_rounding`` (what to prune), ``--pruning.save_dir``
        (where the pruned checkpoint goes; ``--pruning.overwrite true`` to replace one),
        ``--data.calibration.nsamples`` (calibration windows; fewer = faster),
        ``--data.ppl_max_windows`` (evaluate on the first N perplexity windows only),
        ``--data.tasks`` (zero-shot tasks), ``--results.path`` (the results JSON).

        Args:
            model: the LightningModule wrapping the dense LM.
            datamodule: provides ``predict_dataloader`` (calibration) and ``test_dataloader``.
            evaluate: evaluate the pruned model (test loop) afterwards, in the same process.
            evaluate_dense: also evaluate the dense model first, for the before/after summary.

        Returns:
            The module's ``eval_results`` (empty without evaluation).
        """
        if not any(isinstance(c, RCPUPruningCallback) for c in self.callbacks):
            raise ValueError("Trainer.prune needs an RCPUPruningCallback in trainer.callbacks")
        if evaluate_dense:
            self.test(model, datamodule=datamodule, verbose=False)  # the writer keeps it as the "dense" baseline
        self.predict(model, datamodule=datamodule, return_predictions=False)
        if evaluate:
            self.test(model, datamodule=datamodule, verbose=False)
        self._print_summary()
        return dict(getattr(model, "eval_results", {}) or {})

    @rank_zero_only
    def _print_summary(self) -> None:
        for writer in _writers(self):
            if writer.record:
                print("\n".join(summary_lines(writer.record)), flush=True)


class RunConfig(SaveConfigCallback):
    """Saves the run's resolved config beside its results JSON (``<results>.config.yaml``) and into
    the JSON itself (``config``), so every results file says how to reproduce it."""

    def __init__(self, parser, config, **kwargs: Any) -> None:
        super().__init__(parser, config, save_to_log_dir=False, **kwargs)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:  # rank 0 only
        text = self.parser.dump(self.config, skip_none=False)
        for writer in _writers(trainer):
            writer.extra["config"] = text
            if writer.config_path() is not None:
                write_text_atomic(writer.config_path(), text)


class RCPUCLI(LightningCLI):
    """LightningCLI for :class:`CausalLMModule` / :class:`RCPUDataModule` with ``prune``."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "prune": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser) -> None:
        # Forced callbacks under their own keys: override files merge into them (a list entry in
        # trainer.callbacks would be replaced wholesale by a second config file).
        parser.add_lightning_class_args(RCPUPruningCallback, "pruning")
        parser.add_lightning_class_args(RCPUResultsWriter, "results")

    def before_instantiate_classes(self) -> None:
        """Check what needs no model before any weight is loaded: the model spec, the local data files and
        every output location (the callback and the writer check again in ``setup``)."""
        config, sub = self.config[self.subcommand], self.subcommand
        spec = config.model.model
        if isinstance(spec, (str, os.PathLike)):
            check_model_spec(spec)
        prunes, evaluates = sub in ("prune", "predict", "fit"), sub in ("prune", "test", "validate", "fit")
        data = config.data
        RCPUDataModule.check_local_data(data.data_dir, calibration=prunes, evaluation=evaluates and sub != "fit",
                                        ppl_split=data.ppl_split, perplexity=data.perplexity, tasks=data.tasks or [])
        pruning = PruningConfig(**vars(config.pruning.config))
        fields = output_fields(pruning, data.calibration.nsamples)
        if prunes and config.pruning.save_dir:
            check_output_path(format_output_path(config.pruning.save_dir, fields), config.pruning.overwrite,
                              "pruning.save_dir", "--pruning.overwrite true")
        if config.results.path:
            if not prunes:
                fields = _folder_fields(spec)
            path = format_output_path(config.results.path, {**fields, "stage": sub})
            for file in (path, config_path(path)):
                check_output_path(file, config.results.overwrite, "results.path", "--results.overwrite true")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Progress as log lines when stderr is not a terminal (a file, a pipe, CI): Lightning's bars
        would stay silent there until each loop ends."""
        trainer = self.config_init[self.subcommand]["trainer"]
        callbacks = trainer.get("callbacks") or []
        if not sys.stderr.isatty() and trainer.get("enable_progress_bar") is not False and \
                not any(isinstance(c, ProgressBar) for c in callbacks):
            trainer["callbacks"] = [*callbacks, LogProgress()]
        return super().instantiate_trainer(**kwargs)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        for writer in _writers(self.trainer):
            writer.stage = self.subcommand
            writer.extra["command"] = shlex.join([os.path.basename(sys.argv[0])] + sys.argv[1:])


def _folder_fields(spec: Any) -> dict[str, Any]:
    """Placeholder values of a run that evaluates ``spec``: its plan's settings for a pruned folder, else dense."""
    folder = Path(str(spec)).expanduser()
    if isinstance(spec, (str, os.PathLike)) and (folder / PLAN_FILE).is_file():
        plan = load_plan(folder)
        return {**(plan.config or {}), "nsamples": plan.calibration.get("nsamples")}
    return {"method": "dense", "ratio": 0.0}


class _NoProductTips(logging.Filter):
    """Drop Lightning's advertisement for its cloud logger from CLI runs (it is not a warning)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "💡 Tip:" not in record.getMessage()


def main(args: Optional[list[str]] = None) -> Optional[RCPUCLI]:
    """Run the CLI; user errors end with one line on stderr (exit 2) unless ``RCPU_DEBUG=1``."""
    argv = sys.argv[1:] if args is None else list(args)
    configure_logging()
    for handler in logging.getLogger("lightning.pytorch").handlers:
        if not any(isinstance(f, _NoProductTips) for f in handler.filters):
            handler.addFilter(_NoProductTips())
    try:
        if argv[:1] == ["report"]:
            from ..eval.report import report_cli

            report_cli(argv[1:], prog="cli.py report")
            return None
        return RCPUCLI(CausalLMModule, RCPUDataModule, trainer_class=RCPUTrainer, save_config_callback=RunConfig,
                       parser_kwargs={"prune": {"description": PRUNE_HELP}}, args=args)
    except (ValueError, TypeError, OSError) as exc:  # bad values, missing files, outputs that exist
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"error: {type(exc).__name__}: {exc}\n(set {DEBUG_ENV}=1 to see the traceback)", file=sys.stderr)
        raise SystemExit(2) from None
