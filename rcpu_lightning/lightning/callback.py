"""`RCPUPruningCallback`: calibrate, prune (RCPU, WANDA-sp, FLAP, magnitude) and save, from Lightning loops.

When it prunes
--------------
* **Predict loop** (``trainer.predict``, the CLI's ``prune``): ``on_predict_start`` installs a
  :class:`~rcpu_lightning.pruning.LayerInputCatcher` on the wrapped LM; every calibration batch of
  this rank is recorded as it enters decoder layer 0; ``on_predict_end`` prunes. Statistics are
  summed over ranks (``trainer.strategy.reduce``, float64), so every rank takes the same decision
  and ends with the same weights, equal to a single-process run.
* **Fit, before training** (default in ``fit``): ``setup("fit")`` captures the calibration data
  (``calibration_dataloader`` argument, else the DataModule's ``calibration_dataloader()``) and
  prunes before optimizers and DDP exist, so training fine-tunes the smaller model.
* **Fit, later** (``prune_at_epoch=N``): at the start of epoch N; then the callback rebuilds the
  optimizers and LR schedulers (``trainer.strategy.setup_optimizers``: fresh optimizer state and
  fresh schedulers) and, for ``DDPStrategy``, re-wraps the module in a new
  ``DistributedDataParallel`` (single-process CPU/GPU is tested; the DDP re-wrap is implemented but
  only the predict path is tested under DDP; FSDP/DeepSpeed are not supported).

Pruning always runs outside inference mode (``torch.inference_mode(False)``), so the new parameters
are ordinary trainable tensors even when the predict loop ran with ``inference_mode=True``.

After pruning, the plan is stored in the LightningModule (``set_pruning_plan`` of
:class:`~rcpu_lightning.lightning.module.PruningPlanMixin`, or a ``pruning_plan`` attribute plus
checkpoint hooks installed on the instance), so Lightning checkpoints carry it. With ``save_dir``,
rank 0 writes a Hugging Face checkpoint (``save_pruned`` + tokenizer + ``pruning_report.json``),
atomically; all ranks wait on a barrier and fail together if the save failed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
import types
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn
from torch.utils.data import DistributedSampler

from ..pruning.config import Compensation, GqaMode, HeadRounding, Method, PruningConfig, StatsDtype, Structure, Targets
from ..pruning.engine import PruningReport, prune_model
from ..pruning.inputs import LayerInputCatcher, LayerInputs, capture_layer_inputs
from ..pruning.io import save_pruned
from .module import CHECKPOINT_PLAN_KEY, StopForward, find_causal_lm, restore_plan_from_checkpoint
from ..models.adapter import decoder_layers

log = logging.getLogger(__name__)

CalibrationSource = Union[Iterable, Callable[..., Iterable], None]


class RCPUPruningCallback(Callback):
    """Structured pruning of the LM inside a LightningModule (see the module docstring for when).

    Engine options (validated here, by :class:`~rcpu_lightning.pruning.PruningConfig`; a bad value
    raises ``ValueError`` at construction):

    Args:
        method: ``rcpu``, ``wanda_sp``, ``flap`` or ``magnitude``.
        ratio: fraction of heads and MLP channels to remove, in [0, 1).
        compensation: ``rotation``, ``rotation_scale``, ``least_squares``, ``bias``, ``none``, or
            ``None`` for the method's default (rcpu: rotation, flap: bias, others: none).
        structure: ``uniform`` or ``al_am`` (FLAP's adaptive global structure).
        attn_ratio / mlp_ratio: per-kind overrides of ``ratio`` (uniform only).
        targets: where compensation applies: ``both``, ``o_proj`` or ``down_proj``.
        head_rounding: ``floor`` (paper) or ``nearest``.
        gqa_mode: ``per_group`` or ``whole_group``.
        ls_lambda: ridge of ``least_squares`` (relative to the mean Gram).
        stats_dtype: ``float64`` or ``float32`` accumulation.
        refresh_mlp_stats: re-collect down_proj statistics after the attention of a layer is pruned.
        offload_inputs: keep captured layer inputs on CPU.
        batch_size: rows per layer forward inside the engine.
        config: a complete :class:`PruningConfig` instead of the arguments above (they are then ignored).
        save_dir: write the pruned model here as a Hugging Face checkpoint (rank 0, atomic); may use
            ``{method}``, ``{compensation}``, ``{structure}``, ``{targets}``, ``{ratio}``,
            ``{ratio_pct}``, ``{nsamples}`` (e.g. ``outputs/llama-7b/{method}-{compensation}-{ratio_pct}``).
        calibration_dataloader: for ``fit``: an iterable of ``input_ids`` [B, T] tensors (or dicts
            with ``input_ids``), or a callable returning one (called with no argument, or with
            ``(trainer, pl_module)`` if it takes two). Default: the DataModule's
            ``calibration_dataloader()``. Without a ``DistributedSampler`` the batches are split
            over ranks by index (batch ``i`` goes to rank ``i % world_size``).
        prune_at_epoch: in ``fit``, prune at the start of this epoch instead of in ``setup``.
        model_attr: dotted attribute path of the LM inside the LightningModule (default: its
            ``pruned_lm()``, else the ``model`` attribute, else the first Llama-family submodule).
        progress: show the engine's progress bar (rank 0 only).
        check_world_size: refuse to resume a checkpoint saved under a different world size.
    """

    def __init__(
        self,
        method: Method = "rcpu",
        ratio: float = 0.2,
        compensation: Optional[Compensation] = None,
        structure: Structure = "uniform",
        attn_ratio: Optional[float] = None,
        mlp_ratio: Optional[float] = None,
        targets: Targets = "both",
        head_rounding: HeadRounding = "floor",
        gqa_mode: GqaMode = "per_group",
        ls_lambda: float = 1e-3,
        stats_dtype: StatsDtype = "float64",
        refresh_mlp_stats: bool = False,
        offload_inputs: bool = False,
        batch_size: int = 8,
        config: Optional[PruningConfig] = None,
        save_dir: Optional[str] = None,
        calibration_dataloader: CalibrationSource = None,
        prune_at_epoch: Optional[int] = None,
        model_attr: Optional[str] = None,
        progress: bool = True,
        check_world_size: bool = True,
    ) -> None:
        super().__init__()
        if config is None:
            config = PruningConfig(
                method=method, ratio=ratio, compensation=compensation, structure=structure, attn_ratio=attn_ratio,
                mlp_ratio=mlp_ratio, targets=targets, head_rounding=head_rounding, gqa_mode=gqa_mode,
                ls_lambda=ls_lambda, stats_dtype=stats_dtype, refresh_mlp_stats=refresh_mlp_stats,
                offload_inputs=offload_inputs, batch_size=batch_size,
            )
        elif not isinstance(config, PruningConfig):
            raise TypeError(f"config must be a PruningConfig or None, got {type(config).__name__}")
        if prune_at_epoch is not None and (isinstance(prune_at_epoch, bool) or not isinstance(prune_at_epoch, int)
                                           or prune_at_epoch < 0):
            raise ValueError(f"prune_at_epoch={prune_at_epoch!r} is invalid; allowed: an int >= 0 or None")
        if calibration_dataloader is not None and not (callable(calibration_dataloader)
                                                       or hasattr(calibration_dataloader, "__iter__")):
            raise TypeError("calibration_dataloader must be an iterable of batches or a callable returning one")
        self.config = config
        self.save_dir = None if save_dir is None else str(save_dir)
        if self.save_dir is not None:  # a placeholder typo fails now, not after hours of calibration
            from .results import PATH_FIELDS, format_path

            format_path(self.save_dir, dict.fromkeys(PATH_FIELDS, 0))
        self.calibration_dataloader = calibration_dataloader
        self.prune_at_epoch = prune_at_epoch
        self.model_attr = model_attr
        self.progress = progress
        self.check_world_size = check_world_size
        self.report: Optional[PruningReport] = None
        self.pruned = False
        self.world_size: Optional[int] = None  # at pruning time
        self.calibration_rows: Optional[int] = None
        self._catcher: Optional[LayerInputCatcher] = None
        self._stop_handle = None

    # -- finding the LM ----------------------------------------------------------------------
    def lm(self, pl_module: LightningModule) -> nn.Module:
        if self.model_attr:
            obj: Any = pl_module
            for part in self.model_attr.split("."):
                obj = getattr(obj, part)
            return obj
        if hasattr(pl_module, "pruned_lm"):
            return pl_module.pruned_lm()
        return find_causal_lm(pl_module)

    # -- hooks: setup / fit ------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._install_checkpoint_hooks(pl_module)
        if stage != "fit":
            return
        source = self._calibration_source(trainer)  # fails fast when there is none
        if self.prune_at_epoch is not None or self.pruned:
            return
        if getattr(pl_module, "pruning_plan", None) is not None:
            log.info("the LightningModule already carries a pruning plan (resumed run?): not pruning again")
            self.pruned = True
            return
        lm = self.lm(pl_module)
        lm.to(trainer.strategy.root_device)  # strategy.setup would move it next anyway
        self._prune_from_loader(trainer, pl_module, lm, source)

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
            import inspect

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
        batches = []
        for i, batch in enumerate(loader):
            if sharded or world <= 1 or i % world == rank:
                batches.append(_as_input_ids(batch))
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
        log.info("optimizers and LR schedulers rebuilt over the pruned parameters (fresh optimizer state)")

    # -- hooks: predict ----------------------------------------------------------------------
    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if getattr(pl_module, "pruning_plan", None) is not None or self.pruned:
            raise ValueError(
                "the model already carries a pruning plan: pruning a pruned model again is not supported; "
                "start from the dense model"
            )
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
        if catcher is None:
            return
        self._prune(trainer, pl_module, self.lm(pl_module), catcher.inputs)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._remove_hooks()

    # -- the work ----------------------------------------------------------------------------
    def _reduce(self, trainer: Trainer) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
        if trainer.world_size <= 1:
            return None
        strategy = trainer.strategy

        def reduce(t: torch.Tensor) -> torch.Tensor:
            # strategy.reduce all-reduces in place (gloo has no AVG; integers would truncate):
            # sum a float64 copy, hand back the caller's dtype.
            buf = t.detach().to(torch.float64).clone()
            return strategy.reduce(buf, reduce_op="sum").to(t.dtype)

        return reduce

    def _prune(self, trainer: Trainer, pl_module: LightningModule, lm: nn.Module, inputs: LayerInputs) -> None:
        reduce = self._reduce(trainer)
        with torch.inference_mode(False):
            # Captured in an inference-mode predict loop the inputs are inference tensors: make
            # ordinary copies (one batch at a time, so two full copies never coexist) so that
            # nothing downstream trips over them.
            for k, (h, kw) in enumerate(inputs.batches):
                if h.is_inference():
                    inputs.batches[k] = (h.clone(), kw)
            rows = sum(h.shape[0] for h, _ in inputs.batches)
            seqlen = max((h.shape[1] for h, _ in inputs.batches), default=0)
            counts = torch.tensor([float(rows), float(rows == 0)], dtype=torch.float64)
            if reduce is not None:  # one collective: global sample count, ranks without samples
                counts = reduce(counts.to(_device(lm))).cpu()
            total_rows, empty_ranks = int(counts[0]), int(counts[1])
            if total_rows == 0:
                raise ValueError("no calibration batch reached the model: the calibration data is empty")
            if empty_ranks:
                raise ValueError(
                    f"{empty_ranks} rank(s) received no calibration sample ({total_rows} samples over "
                    f"{trainer.world_size} ranks); use at least one sample per rank"
                )
            config = dataclasses.replace(self.config, nsamples=total_rows, seqlen=max(seqlen, 1))
            progress = self.progress and trainer.is_global_zero
            report = prune_model(lm, inputs, config, reduce=reduce, progress=progress, release_inputs=True)
        self.report, self.pruned = report, True
        self.world_size, self.calibration_rows = trainer.world_size, total_rows
        _store_plan(pl_module, report)
        self._log_summary(trainer, report)
        self._save(trainer, pl_module, lm, report)

    def _log_summary(self, trainer: Trainer, report: PruningReport) -> None:
        if not trainer.is_global_zero:
            return
        plan = report.plan
        log.info("pruned with %s: %s", self.config.method, json.dumps({k: v for k, v in self.config.to_dict().items()
                                                                       if k not in ("nsamples", "seqlen", "seed")}))
        for i, (lp, ratio) in enumerate(zip(plan.layers, report.layer_ratios)):
            log.info("layer %2d: heads %d/%d  kv %d/%d  channels %d/%d  params -%.1f%%", i, lp.num_heads,
                     plan.dense["num_attention_heads"], lp.num_kv_heads, plan.dense["num_key_value_heads"],
                     lp.intermediate_size, plan.dense["intermediate_size"], 100 * ratio)
        log.info("parameters %d -> %d (decoder layers -%.2f%%) in %.1fs", report.params_before, report.params_after,
                 100 * report.overall_ratio, report.seconds)
        if trainer.logger is not None:
            metrics = {"prune/params_before": report.params_before, "prune/params_after": report.params_after,
                       "prune/overall_ratio": report.overall_ratio, "prune/seconds": report.seconds}
            metrics.update({f"prune/layer_{i:02d}_ratio": r for i, r in enumerate(report.layer_ratios)})
            trainer.logger.log_metrics(metrics, step=trainer.global_step)

    def output_dir(self) -> Optional[str]:
        """``save_dir`` with its placeholders filled (``{method}``, ``{ratio_pct}``, ... see ``format_path``)."""
        if self.save_dir is None:
            return None
        from .results import format_path

        return format_path(self.save_dir, {**self.config.to_dict(), "nsamples": self.calibration_rows})

    def _save(self, trainer: Trainer, pl_module: LightningModule, lm: nn.Module, report: PruningReport) -> None:
        if self.save_dir is None:
            return
        error: Optional[str] = None
        path = self.output_dir()
        if trainer.is_global_zero:
            try:
                tokenizer = getattr(pl_module, "tokenizer", None)
                save_hf_checkpoint(lm, report, path, tokenizer, extra={"world_size": trainer.world_size})
                log.info("pruned model saved to %s", path)
            except Exception as exc:  # every rank must learn about it, not wait at the barrier forever
                error = f"{type(exc).__name__}: {exc}"
        error = trainer.strategy.broadcast(error, src=0)
        trainer.strategy.barrier("rcpu_pruning_saved")
        if error is not None:
            raise RuntimeError(f"saving the pruned model to {path} failed on rank 0: {error}")

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"pruned": self.pruned, "world_size": self.world_size, "method": self.config.method,
                "ratio": self.config.ratio, "prune_at_epoch": self.prune_at_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pruned = bool(state_dict.get("pruned", False)) or self.pruned
        self.world_size = state_dict.get("world_size", self.world_size)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint.setdefault("rcpu_world_size", trainer.world_size)

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("rcpu_world_size")
        if self.check_world_size and saved is not None and saved != trainer.world_size:
            raise RuntimeError(
                f"this checkpoint was saved with world_size={saved} but the run resumes with "
                f"world_size={trainer.world_size}: calibration shards and the padded training sampler "
                "depend on it, so the resumed run would not reproduce the original one; resume with "
                f"{saved} processes (or pass check_world_size=False to accept it)"
            )

    def _install_checkpoint_hooks(self, pl_module: LightningModule) -> None:
        """Give a LightningModule without :class:`PruningPlanMixin` the plan-carrying hooks (instance only)."""
        if hasattr(pl_module, "set_pruning_plan") or getattr(pl_module, "_rcpu_hooks", False):
            return
        orig_save, orig_load = pl_module.on_save_checkpoint, pl_module.on_load_checkpoint
        if not hasattr(pl_module, "pruning_plan"):
            pl_module.pruning_plan = None

        def on_save_checkpoint(self, checkpoint):
            orig_save(checkpoint)
            checkpoint[CHECKPOINT_PLAN_KEY] = self.pruning_plan

        def on_load_checkpoint(self, checkpoint):
            restore_plan_from_checkpoint(self, checkpoint)
            orig_load(checkpoint)

        pl_module.on_save_checkpoint = types.MethodType(on_save_checkpoint, pl_module)
        pl_module.on_load_checkpoint = types.MethodType(on_load_checkpoint, pl_module)
        pl_module._rcpu_hooks = True


def _stop_forward(module, args, kwargs):
    raise StopForward


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _as_input_ids(batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, dict):
        if "input_ids" not in batch:
            raise ValueError(f"a calibration batch dict needs 'input_ids', got keys {sorted(batch)}")
        return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise TypeError(f"calibration batches must be input_ids tensors [B, T] or dicts, got {type(batch).__name__}")


def _store_plan(pl_module: LightningModule, report: PruningReport) -> None:
    if hasattr(pl_module, "set_pruning_plan"):
        pl_module.set_pruning_plan(report.plan, reshape=False)
    else:
        pl_module.pruning_plan = report.plan.to_dict()


def save_hf_checkpoint(lm: nn.Module, report: PruningReport, path: str | os.PathLike, tokenizer: Any = None,
                       extra: Optional[dict] = None) -> Path:
    """``save_pruned`` + tokenizer + ``pruning_report.json`` into ``path``, atomically (staged in a
    sibling temporary folder, then renamed; an existing ``path`` is replaced)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.stage-", dir=path.parent))
    try:
        target = save_pruned(lm, report.plan, staging / "ckpt")
        if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(target)
        summary = report.to_dict()
        summary.pop("plan")
        summary.update(extra or {})
        (target / "pruning_report.json").write_text(json.dumps(summary, indent=1))
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(target, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
