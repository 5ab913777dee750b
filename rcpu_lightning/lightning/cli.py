"""LightningCLI with a ``prune`` subcommand (the repository's ``cli.py`` calls :func:`main`).

    python cli.py prune -c configs/smollm2-rcpu.yaml              # calibrate, prune, save, test
    python cli.py test  -c configs/smollm2-rcpu.yaml --model.model outputs/smollm2-rcpu-0.2
    python cli.py prune -c configs/smollm2-rcpu.yaml --print_config

Top-level config keys: ``trainer``, ``model`` (:class:`CausalLMModule`), ``data``
(:class:`RCPUDataModule`), ``pruning`` (:class:`RCPUPruningCallback`, always instantiated; it acts
only in ``predict``/``prune`` and ``fit``) and ``results`` (:class:`RCPUResultsWriter`).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Optional

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI

from .callback import RCPUPruningCallback
from .data import RCPUDataModule
from .module import CausalLMModule
from .results import RCPUResultsWriter


class RCPUTrainer(Trainer):
    """A Trainer with ``prune``: a predict loop that calibrates and prunes, then (by default) a test loop."""

    def prune(
        self,
        model: LightningModule,
        datamodule: Optional[LightningDataModule] = None,
        evaluate: bool = True,
    ) -> dict[str, Any]:
        """Calibrate (predict loop), prune and save (the trainer's :class:`RCPUPruningCallback`), then
        evaluate the pruned model (test loop) in the same process.

        Args:
            model: the LightningModule wrapping the dense LM.
            datamodule: provides ``predict_dataloader`` (calibration) and ``test_dataloader``.
            evaluate: run the test loop on the pruned model afterwards.

        Returns:
            The module's ``eval_results`` (empty without evaluation).
        """
        if not any(isinstance(c, RCPUPruningCallback) for c in self.callbacks):
            raise ValueError("Trainer.prune needs an RCPUPruningCallback in trainer.callbacks")
        self.predict(model, datamodule=datamodule, return_predictions=False)
        for writer in (c for c in self.callbacks if isinstance(c, RCPUResultsWriter)):
            writer.write(self, model, "prune")  # pruning facts even if evaluation dies later
        if evaluate:
            self.test(model, datamodule=datamodule, verbose=True)
        return dict(getattr(model, "eval_results", {}) or {})


class RCPUCLI(LightningCLI):
    """LightningCLI for :class:`CausalLMModule` / :class:`RCPUDataModule` with ``prune``."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "prune": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser) -> None:
        # Forced callbacks under their own keys: override files merge into them (a list entry in
        # trainer.callbacks would be replaced wholesale by a second config file).
        parser.callback_keys.append("pruning")
        parser.add_class_arguments(RCPUPruningCallback, "pruning", fail_untyped=False, sub_configs=True,
                                   skip={"config", "calibration_dataloader"})
        parser.add_lightning_class_args(RCPUResultsWriter, "results")

    def _run_subcommand(self, subcommand: str) -> None:
        for writer in (c for c in self.trainer.callbacks if isinstance(c, RCPUResultsWriter)):
            writer.extra = {"subcommand": subcommand, "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
                            "config": self._parser(subcommand).dump(self.config[subcommand], skip_none=False)}
        super()._run_subcommand(subcommand)


def _configure_logging() -> None:
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)
    pkg = logging.getLogger("rcpu_lightning")
    if rank == 0 and not pkg.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s", "%H:%M:%S"))
        pkg.addHandler(handler)
        pkg.setLevel(logging.INFO)
    elif rank != 0:
        pkg.setLevel(logging.WARNING)


def main(args: Optional[list[str]] = None) -> RCPUCLI:
    _configure_logging()
    return RCPUCLI(
        CausalLMModule,
        RCPUDataModule,
        trainer_class=RCPUTrainer,
        save_config_callback=None,  # the resolved config goes into the results JSON instead
        args=args,
    )
