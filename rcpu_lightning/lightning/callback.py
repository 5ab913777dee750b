"""`RCPUPruningCallback`: calibrate, prune (RCPU, WANDA-sp, FLAP, magnitude) and save, from Lightning loops.

When it prunes
--------------
* **Predict loop** (``trainer.predict``, the CLI's ``prune``): ``on_predict_start`` installs a
  :class:`~rcpu_lightning.pruning.LayerInputCatcher` on the LM; every calibration batch of this rank
  is recorded as it enters decoder layer 0; ``on_predict_end`` prunes. Every rank needs at least one
  calibration batch: with the DataModule's calibration windows this is checked in ``setup``;
  otherwise the first collective of the pruning (a rank without batches reaches it in ``teardown``,
  since Lightning skips an empty predict loop) makes every rank fail with the same message. Statistics are summed over ranks (``trainer.strategy.reduce``, float64),
  so every rank takes the same decision and ends with the same weights as a single process.
* **Fit, before training** (default in ``fit``): ``setup("fit")`` captures the calibration data
  (``calibration_dataloader``, else the DataModule's ``calibration_dataloader()``) and prunes before
  optimizers and DDP exist, so training fine-tunes the smaller model.
* **Fit, later** (``prune_at_epoch=N``): at the start of epoch N, then the optimizers/schedulers are
  rebuilt over the new parameters and a DDP module is re-wrapped.

Everything that can be checked is checked in ``setup``, before any work: the pruning settings
against the model's architecture (a ratio that would empty a layer), and ``save_dir`` (it must be
writable, and an existing non-empty folder is only replaced with ``overwrite=True``).

Pruning runs outside inference mode, so the new parameters are ordinary trainable tensors even
when the predict loop ran with ``inference_mode=True``. The plan is recorded on the LightningModule
(``pruning_plan``) and travels with its checkpoints (:mod:`.checkpointing`). With ``save_dir``, rank 0
writes a Hugging Face checkpoint (``save_pruned`` + tokenizer + ``pruning_report.json``) atomically;
all ranks learn whether it worked.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn
from torch.utils.data import DistributedSampler

from ..files import atomic_dir, check_output_path, format_output_path, write_json_atomic
from ..models.adapter import decoder_layers
from ..pruning.config import PruningConfig
from ..pruning.engine import PruningReport, check_feasible, prune_model
from ..pruning.inputs import LayerInputCatcher, LayerInputs, StopForward, capture_layer_inputs, model_inputs
from ..pruning.io import save_pruned
from ..pruning.progress import default_progress
from .checkpointing import find_causal_lm, install_plan_hooks, set_plan
from .logs import configure_logging

log = logging.getLogger(__name__)

CalibrationSource = Union[Iterable, Callable[..., Iterable], None]
REPORT_FILE = "pruning_report.json"


class RCPUPruningCallback(Callback):
    """Structured pruning of the LM inside a LightningModule (see the module docstring for when).

    Args:
        config: the engine's settings (method, ratio, compensation, structure, ...): see
            :class:`~rcpu_lightning.pruning.PruningConfig`. In YAML: ``pruning.config.ratio`` etc.
        save_dir: write the pruned model here as a Hugging Face checkpoint (rank 0, atomic). May use
            ``{method}``, ``{compensation}``, ``{structure}``, ``{targets}``, ``{ratio}``,
            ``{ratio_pct}``, ``{nsamples}`` (e.g. ``outputs/llama-7b/{method}-{ratio_pct}``).
        overwrite: replace an existing non-empty ``save_dir``. Without it such a folder is refused
            before any work starts; nothing of it is touched.
        calibration_dataloader: Python API, for ``fit``: an iterable of calibration batches (``input_ids``
            [B, T] tensors or dicts with ``input_ids``), or a callable returning one (called with no
            argument, or with ``(trainer, pl_module)`` if it takes two). Default: the DataModule's
            ``calibration_dataloader()``. Without a ``DistributedSampler`` the batches are split
            over ranks by index (batch ``i`` goes to rank ``i % world_size``).
        prune_at_epoch: in ``fit``, prune at the start of this epoch instead of before training.
        model_attr: dotted attribute path of the LM inside the LightningModule (default: its
            ``pruned_lm()``, else its ``model`` attribute, else the first Llama-family submodule).
        progress: report per-layer progress on rank 0 (a bar on a terminal, log lines otherwise).
    """

    def __init__(
        self,
        config: PruningConfig = PruningConfig(),
        save_dir: Optional[str] = None,
        overwrite: bool = False,
        calibration_dataloader: CalibrationSource = None,
        prune_at_epoch: Optional[int] = None,
        model_attr: Optional[str] = None,
        progress: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(config, PruningConfig):
            raise TypeError(f"config must be a PruningConfig, got {type(config).__name__}")
        if prune_at_epoch is not None and (isinstance(prune_at_epoch, bool) or not isinstance(prune_at_epoch, int)
                                           or prune_at_epoch < 0):
            raise ValueError(f"prune_at_epoch={prune_at_epoch!r} is invalid; allowed: an int >= 0 or None")
        if calibration_dataloader is not None and not (callable(calibration_dataloader)
                                                       or hasattr(calibration_dataloader, "__iter__")):
            raise TypeError("calibration_dataloader must be an iterable of batches or a callable returning one")
        self.config = dataclasses.replace(config)  # a copy: the default instance is shared
        self._calibration: dict[str, Any] = {}  # what the calibration data is (from the DataModule)
        self.save_dir = None if save_dir is None else str(save_dir)
        if self.save_dir is not None:  # a placeholder typo fails now, not after hours of calibration
            format_output_path(self.save_dir, self.output_fields())
        self.overwrite = bool(overwrite)
        self.calibration_dataloader = calibration_dataloader
        self.prune_at_epoch = prune_at_epoch
        self.model_attr = model_attr
        self.progress = progress
        self.report: Optional[PruningReport] = None
        self.pruned = False
        self.saved_to: Optional[str] = None
        self._world_size: Optional[int] = None  # at pruning time
        self._catcher: Optional[LayerInputCatcher] = None
        self._stop_handle = None
        self._pending = False  # predict: this run prunes, and has not yet

    # -- what the results writer reads (plain data, no reference to this class needed) --------
    def output_fields(self) -> dict[str, Any]:
        """Values for output path placeholders (``{method}``, ``{ratio_pct}``, ``{nsamples}``, ...)."""
        return output_fields(self.config, self._calibration.get("nsamples"))

    def results_summary(self) -> Optional[dict[str, Any]]:
        """What this run's pruning did, as plain data (None before it pruned)."""
        if self.report is None:
            return None
        r, cfg = self.report, self.config
        return {
            "method": cfg.method, "ratio": cfg.ratio, "attn_ratio": cfg.head_ratio, "mlp_ratio": cfg.channel_ratio,
            "compensation": cfg.compensation, "structure": cfg.structure, "targets": cfg.targets,
            "head_rounding": cfg.head_rounding, "gqa_mode": cfg.gqa_mode,
            "decoder_params_removed": r.decoder_params_removed, "model_params_removed": r.model_params_removed,
            "layer_params_removed": r.layer_params_removed, "params_before": r.params_before,
            "params_after": r.params_after, "prune_seconds": r.seconds, "calibration": r.plan.calibration,
            "prune_world_size": self._world_size, "save_dir": self.saved_to, "notes": r.notes,
        }

    def output_dir(self) -> Optional[str]:
        """``save_dir`` with its placeholders filled."""
        return None if self.save_dir is None else format_output_path(self.save_dir, self.output_fields())

    # -- hooks: setup ------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        configure_logging()
        install_plan_hooks(pl_module)
        dm = getattr(trainer, "datamodule", None)
        if callable(getattr(dm, "calibration_info", None)) and self.calibration_dataloader is None:
            self._calibration = dm.calibration_info()
        if not self._prunes_in(stage, pl_module):
            return
        self._check_before_work(trainer, pl_module, stage)
        self._pending = stage == "predict"
        if stage == "fit" and self.prune_at_epoch is None:
            lm = self.lm(pl_module)
            lm.to(trainer.strategy.root_device)  # strategy.setup would move it next anyway
            self._prune_from_loader(trainer, pl_module, lm, self._calibration_source(trainer))

    def _prunes_in(self, stage: str, pl_module: LightningModule) -> bool:
        if stage not in ("fit", "predict") or self.pruned:
            return False
        if getattr(pl_module, "pruning_plan", None) is None:
            return True
        if stage == "predict":
            raise ValueError("the model already carries a pruning plan: pruning a pruned model again is not "
                             "supported; start from the dense model")
        rank_zero_info("the LightningModule already carries a pruning plan (resumed run?): not pruning again")
        self.pruned = True
        return False

    def _check_before_work(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Refuse on every rank, before any calibration, what would fail or destroy something later."""
        if stage == "fit":
            self._calibration_source(trainer)  # there is calibration data
        nsamples = self._calibration.get("nsamples")
        if nsamples is not None and nsamples < trainer.world_size:  # the same answer on every rank
            raise ValueError(_too_few(nsamples, trainer.world_size))
        error = None
        if trainer.is_global_zero:
            try:
                check_feasible(self.lm(pl_module), self.config)
                if self.save_dir is not None:
                    check_output_path(self.output_dir(), self.overwrite, "pruning.save_dir", "overwrite=True "
                                      "(CLI: --pruning.overwrite true)")
            except (ValueError, OSError) as exc:
                error = (type(exc), str(exc))
        error = trainer.strategy.broadcast(error, src=0)
        if error is not None:
            raise error[0](error[1])

    def lm(self, pl_module: LightningModule) -> nn.Module:
        return find_causal_lm(pl_module, self.model_attr)

    # -- fit ---------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.prune_at_epoch is None or self.pruned or trainer.current_epoch != self.prune_at_epoch:
            return
        lm = self.lm(pl_module)
        self._prune_from_loader(trainer, pl_module, lm, self._calibration_source(trainer))
        self._rebuild_training(trainer, pl_module)

    def _calibration_source(self, trainer: Trainer) -> Callable[[], Iterable]:
        src = self.calibration_dataloader
        if src is None:
            dm = getattr(trainer, "datamodule", None)
            if dm is not None and callable(getattr(dm, "calibration_dataloader", None)):
                return dm.calibration_dataloader
            raise ValueError(
                "RCPUPruningCallback has no calibration data for fit: pass calibration_dataloader= "
                "(an iterable of input_ids batches, or a callable returning one) or use a DataModule "
                "with a calibration_dataloader() method"
            )
        if callable(src) and not hasattr(src, "__iter__"):
            try:
                two = len(inspect.signature(src).parameters) >= 2
            except (TypeError, ValueError):
                two = False
            return (lambda: src(trainer, trainer.lightning_module)) if two else src
        return lambda: src

    def _prune_from_loader(self, trainer: Trainer, pl_module: LightningModule, lm: nn.Module,
                           source: Callable[[], Iterable]) -> None:
        loader = source()
        sharded = isinstance(getattr(loader, "sampler", None), DistributedSampler)
        world, rank = trainer.world_size, trainer.global_rank
        batches = [model_inputs(b) for i, b in enumerate(loader) if sharded or world <= 1 or i % world == rank]
        was_training = lm.training
        lm.eval()
        try:
            inputs = capture_layer_inputs(lm, batches, offload=self.config.offload_inputs) if batches else LayerInputs()
            self._prune(trainer, pl_module, lm, inputs)
        finally:
            lm.train(was_training)

    def _rebuild_training(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """After pruning mid-fit: new optimizers/schedulers over the new parameters, DDP re-wrapped."""
        from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

        strategy = trainer.strategy
        if isinstance(strategy, DDPStrategy):
            strategy.model = pl_module  # drop the old wrapper (it registered the old parameters)
            strategy.configure_ddp()
        elif not isinstance(strategy, SingleDeviceStrategy):
            raise RuntimeError(
                f"prune_at_epoch is supported with single-device and DDP strategies, not {type(strategy).__name__}"
            )
        strategy.setup_optimizers(trainer)
        rank_zero_info("optimizers and LR schedulers rebuilt over the pruned parameters (fresh optimizer state)")

    # -- predict -----------------------------------------------------------------------------
    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._pending:
            return
        lm = self.lm(pl_module)
        self._catcher = LayerInputCatcher(lm, offload=self.config.offload_inputs, stop=False)
        self._catcher.__enter__()
        if getattr(pl_module, "stops_calibration_forward", False):
            # Registered after the catcher's hook, so layer 0's inputs are recorded first.
            self._stop_handle = decoder_layers(lm)[0].register_forward_pre_hook(_stop_forward, with_kwargs=True)

    def _remove_hooks(self) -> Optional[LayerInputCatcher]:
        catcher, self._catcher = self._catcher, None
        if catcher is not None:
            catcher.__exit__(None, None, None)
        if self._stop_handle is not None:
            self._stop_handle.remove()
            self._stop_handle = None
        return catcher

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        catcher = self._remove_hooks()
        if catcher is not None:
            self._prune(trainer, pl_module, self.lm(pl_module), catcher.inputs)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Lightning skips the whole predict loop (on_predict_start/end included) on a process whose
        # loader is empty; that process meets the others' first collective here and fails with them.
        if stage == "predict" and self._pending:
            self._calibration_record(trainer, LayerInputs())

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._remove_hooks()

    # -- the work ----------------------------------------------------------------------------
    @staticmethod
    def _reduce(trainer: Trainer) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
        if trainer.world_size <= 1:
            return None
        strategy = trainer.strategy

        def reduce(t: torch.Tensor) -> torch.Tensor:
            # strategy.reduce all-reduces in place (gloo has no AVG; integers would truncate):
            # sum a float64 copy, hand back the caller's dtype.
            buf = t.detach().to(torch.float64).clone()
            return strategy.reduce(buf, reduce_op="sum").to(t.dtype)

        return reduce

    def _calibration_record(self, trainer: Trainer, inputs: LayerInputs) -> dict[str, Any]:
        """The calibration data as configured, with the sample count measured over all ranks (one
        collective, the first of the pruning work, so an empty rank fails together with the others)."""
        self._pending = False
        rows = sum(h.shape[0] for h, _ in inputs.batches)
        seqlen = max((h.shape[1] for h, _ in inputs.batches), default=0)
        counts = torch.tensor([float(rows), float(rows == 0)], dtype=torch.float64)
        if trainer.world_size > 1:
            counts = trainer.strategy.reduce(counts.to(trainer.strategy.root_device), reduce_op="sum").cpu()
        total, empty = int(counts[0]), int(counts[1])
        if total == 0:
            raise ValueError("no calibration batch reached the model: the calibration data is empty")
        if empty:
            raise ValueError(_too_few(total, trainer.world_size, empty))
        record = {k: v for k, v in self._calibration.items() if k != "batch_size"}
        record.update(nsamples=total, seqlen=seqlen)
        if not self._calibration:
            record["source"] = "the dataloader given to the trainer or the callback"
        return record

    def _prune(self, trainer: Trainer, pl_module: LightningModule, lm: nn.Module, inputs: LayerInputs) -> None:
        reduce = self._reduce(trainer)
        with torch.inference_mode(False):
            # Captured in an inference-mode loop the inputs may be inference tensors: make ordinary
            # copies (one batch at a time, so two full copies never coexist).
            for k, (h, kw) in enumerate(inputs.batches):
                if h.is_inference():
                    inputs.batches[k] = (h.clone(), kw)
            calibration = self._calibration_record(trainer, inputs)
            progress = default_progress() if self.progress and trainer.is_global_zero else False
            report = prune_model(lm, inputs, self.config, reduce=reduce, progress=progress, release_inputs=True,
                                 calibration=calibration)
        self.report, self.pruned, self._world_size = report, True, trainer.world_size
        set_plan(pl_module, report.plan, lm, reshape=False)
        self._log_summary(trainer, report)
        self._save(trainer, pl_module, lm, report)

    def _log_summary(self, trainer: Trainer, report: PruningReport) -> None:
        rank_zero_info(
            f"pruned with {self.config.method} ({self.config.compensation}, {self.config.structure}) at ratio "
            f"{self.config.ratio:g}: parameters {report.params_before:,} -> {report.params_after:,}; decoder-layer "
            f"params removed {100 * report.decoder_params_removed:.1f}%, whole-model params removed "
            f"{100 * report.model_params_removed:.1f}%; {report.seconds:.1f} s")
        if trainer.logger is not None:
            metrics = {"prune/params_before": report.params_before, "prune/params_after": report.params_after,
                       "prune/decoder_params_removed": report.decoder_params_removed,
                       "prune/model_params_removed": report.model_params_removed, "prune/seconds": report.seconds}
            metrics.update({f"prune/layer_{i:02d}_params_removed": r for i, r in enumerate(report.layer_params_removed)})
            trainer.logger.log_metrics(metrics, step=trainer.global_step)

    def _save(self, trainer: Trainer, pl_module: LightningModule, lm: nn.Module, report: PruningReport) -> None:
        if self.save_dir is None:
            return
        error: Optional[str] = None
        path = self.output_dir()
        if trainer.is_global_zero:
            try:
                save_hf_checkpoint(lm, report, path, getattr(pl_module, "tokenizer", None), overwrite=self.overwrite,
                                   extra={"world_size": trainer.world_size})
                rank_zero_info(f"pruned model saved to {path}")
            except Exception as exc:  # every rank must learn about it, not wait at the barrier forever
                error = f"{type(exc).__name__}: {exc}"
        error = trainer.strategy.broadcast(error, src=0)
        if error is not None:
            raise RuntimeError(f"saving the pruned model to {path} failed on rank 0: {error}")
        self.saved_to = path

    # -- checkpoints of the callback itself ----------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"pruned": self.pruned, "config": self.config.to_dict(), "prune_at_epoch": self.prune_at_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pruned = bool(state_dict.get("pruned", False)) or self.pruned
        saved = state_dict.get("config")
        if saved and saved != self.config.to_dict():
            rank_zero_info(
                f"the checkpoint was pruned with {saved}, this callback is configured with {self.config.to_dict()}: "
                "the checkpoint's pruned model is kept as it is and is not pruned again")


def _too_few(nsamples: int, world_size: int, empty: Optional[int] = None) -> str:
    empty = world_size - nsamples if empty is None else empty
    return (f"{nsamples} calibration samples for {world_size} processes: {empty} process(es) would get no calibration "
            "batch, and every process needs at least one; use more calibration samples or fewer processes")


def output_fields(config: PruningConfig, nsamples: Optional[int]) -> dict[str, Any]:
    """Placeholder values of a pruning run's output paths: the engine settings and the calibration size."""
    return {**config.to_dict(), "nsamples": nsamples}


def _stop_forward(module, args, kwargs):
    raise StopForward


def save_hf_checkpoint(lm: nn.Module, report: PruningReport, path: str | Path, tokenizer: Any = None,
                       overwrite: bool = False, extra: Optional[dict] = None) -> Path:
    """``save_pruned`` + tokenizer + ``pruning_report.json`` into ``path``, atomically (see
    :func:`rcpu_lightning.files.atomic_dir`; an existing non-empty ``path`` needs ``overwrite``)."""
    with atomic_dir(path, overwrite, "pruning.save_dir", "overwrite=True (CLI: --pruning.overwrite true)") as staged:
        save_pruned(lm, report.plan, staged, overwrite=True)
        if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(staged)
        summary = report.to_dict()
        summary.pop("plan")
        write_json_atomic(staged / REPORT_FILE, {**summary, **(extra or {})}, indent=1)
    return Path(path)
