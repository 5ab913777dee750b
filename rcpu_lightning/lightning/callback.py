"""`RCPUPruningCallback`: calibrate, prune (RCPU, WANDA-sp, FLAP, magnitude), save and export, from Lightning loops.

* **Predict loop** (``trainer.predict``, the CLI's ``prune``): ``on_predict_start`` installs a
  :class:`~rcpu_lightning.pruning.LayerInputCatcher` on the LM (every calibration batch of this rank
  is recorded as it enters decoder layer 0); ``on_predict_end`` prunes once, at ``config``'s ratio.
  Every rank needs a calibration batch (a rank without one fails with the others at the first
  collective, in ``teardown`` if Lightning skipped its empty loop). Statistics are summed over ranks
  (float64), so every rank takes the same decision and ends with a single process's weights. A model
  that already carries a pruning plan (e.g. restored by ``predict(ckpt_path=...)``) is left as it is.
* **Fit**: the ``schedule`` (:mod:`.schedule`; default ``{0: config.ratio}``) says which cumulative
  fraction of the *dense* model's heads and channels is removed from which epoch on. The step of
  epoch 0 runs after ``configure_model`` and the checkpoint restore, before the strategy moves and
  wraps the model and builds the optimizers (:mod:`.strategy_hook`; a module restored with this
  callback's state is not pruned again). Later steps run at ``on_train_epoch_start`` (after a resume
  from a last-batch checkpoint: ``on_train_batch_start``), re-calibrated on the current model; the
  optimizers keep their objects and get their state sliced to the kept rows/columns
  (:mod:`rcpu_lightning.pruning.optimizer_state`), and a DDP wrapper is rebuilt. A module that arrives
  with a plan this callback did not make is fine-tuned as it is.

Everything that can be checked is checked before any work: the settings against the architecture,
the strategy (single device or DDP), the outputs (writable; an existing non-empty folder is replaced
only with ``overwrite=True`` and only when this tool wrote it, or by the run that wrote it, resumed:
every fit has a ``run_id``, kept in its checkpoints and in the ``pruning_report.json`` it writes).

Outputs (:func:`rcpu_lightning.pruning.io.save_hf_checkpoint`, rank 0, atomic): ``save_dir`` (right after
pruning; with a schedule: after the latest step), ``export_dir`` (end of fit; also ``cli.py export``).
Pruning runs outside inference mode (the new parameters train). The plan is recorded on the module
(``pruning_plan``; steps compose) and travels with its checkpoints (:mod:`.checkpointing`).
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn

from ..files import check_output_path, format_output_path
from ..pruning.config import PruningConfig
from ..pruning.engine import PruningReport, check_feasible, prune_model
from ..pruning.inputs import LayerInputCatcher, LayerInputs, capture_layer_inputs
from ..pruning.io import OVERWRITE_FLAG, output_fields, report_fields, save_hf_checkpoint, written_by_run
from ..pruning.optimizer_state import carry_optimizer_state, projection_params
from ..pruning.plan import PruningPlan
from ..pruning.progress import default_progress
from ..pruning.streaming import prune_skeleton
from . import calibration as calib
from . import schedule as sched
from .calibration import CalibrationSource, checkpoint_source
from .checkpointing import as_plan, find_causal_lm, install_plan_hooks, set_plan
from .logs import configure_logging
from .ranks import on_rank_zero, stop_on_sigterm, sum_over_ranks
from .steps import composed_plan, log_step, step_record, steps_summary, write_out_of_core_report
from .strategy_hook import BeforeStrategySetup, rewrap_ddp

class RCPUPruningCallback(Callback):
    """Structured pruning of the LM inside a LightningModule (see the module docstring for when).

    Args:
        config: the engine's settings (method, ratio, compensation, structure, ...): see
            :class:`~rcpu_lightning.pruning.PruningConfig`. In YAML: ``pruning.config.ratio`` etc.
        schedule: gradual pruning in ``fit``: ``{epoch: ratio}``, the cumulative fraction of the
            *dense* model's attention heads and MLP channels removed from that epoch on (e.g.
            ``{0: 0.1, 2: 0.2, 4: 0.3}``; values may not decrease), or a function ``epoch -> ratio``.
            Each step re-calibrates on the current model and removes what the new ratio adds. With a
            schedule its values replace ``config.ratio`` (``attn_ratio``/``mlp_ratio`` must be unset);
            ``None`` (default) is ``{0: config.ratio}``: one-shot, before training. Uniform structure
            only for more than one step; the predict loop prunes once and accepts only ``{0: ratio}``.
        save_dir: write the model right after pruning (before fine-tuning; with a schedule: after the
            latest step) as a Hugging Face checkpoint (rank 0, atomic). May use the placeholders of
            ``rcpu_lightning.files.OUTPUT_PATH_FIELDS`` but ``{stage}`` (``outputs/{method}-{ratio_pct}``).
            A fit resumed from a checkpoint of the run that wrote it (or ``export_dir``) needs no
            ``overwrite`` for it (the run id in its ``pruning_report.json``).
        export_dir: at the end of ``fit``, write the pruned and fine-tuned model there as a Hugging
            Face checkpoint (rank 0, atomic; same placeholders). ``cli.py export`` writes the same
            from any Lightning checkpoint.
        overwrite: replace an existing non-empty ``save_dir`` / ``export_dir``. Without it such a
            folder is refused before any work starts; nothing of it is touched.
        calibration_dataloader: Python API, for ``fit``: an iterable of calibration batches (``input_ids``
            [B, T] tensors or dicts with ``input_ids``), or a callable returning one (called with no
            argument, or with ``(trainer, pl_module)`` if it takes two). Default: the DataModule's
            ``calibration_dataloader()``. Without a ``DistributedSampler`` the batches are split
            over ranks by index (batch ``i`` goes to rank ``i % world_size``); every rank needs one.
        model_attr: dotted attribute path of the LM inside the LightningModule (default: its
            ``pruned_lm()``, else its ``model`` attribute, else the first Llama-family submodule).
        progress: report per-layer progress on rank 0 (a bar on a terminal, log lines otherwise).
    """

    def __init__(
        self,
        config: PruningConfig = PruningConfig(),
        schedule: sched.Schedule = None,
        save_dir: Optional[str] = None,
        export_dir: Optional[str] = None,
        overwrite: bool = False,
        calibration_dataloader: CalibrationSource = None,
        model_attr: Optional[str] = None,
        progress: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(config, PruningConfig):
            raise TypeError(f"config must be a PruningConfig, got {type(config).__name__}")
        if calibration_dataloader is not None and not (callable(calibration_dataloader)
                                                       or hasattr(calibration_dataloader, "__iter__")):
            raise TypeError("calibration_dataloader must be an iterable of batches or a callable returning one")
        self.config = dataclasses.replace(config)  # a copy: the default instance is shared
        self.schedule = sched.check_schedule(schedule, self.config)
        self._calibration: dict[str, Any] = {}  # what the calibration data is (from the DataModule)
        self.save_dir = None if save_dir is None else str(save_dir)
        self.export_dir = None if export_dir is None else str(export_dir)
        for template in (self.save_dir, self.export_dir):  # a placeholder typo fails now, not after hours
            if template is not None:
                format_output_path(template, self.output_fields())
        self.overwrite = bool(overwrite)
        self.calibration_dataloader = calibration_dataloader
        self.model_attr = model_attr
        self.progress = progress
        # what was pruned (plain data; restored from checkpoints): one entry per step
        self.steps: list[dict[str, Any]] = []
        self.last_epoch = -1  # the latest epoch whose schedule entry was handled
        self.report: Optional[PruningReport] = None  # the latest step's report, in this process
        self.saved_to: Optional[str] = None
        self.exported_to: Optional[str] = None
        # this fit's identity: kept in its checkpoints and in the folders it writes, so that a resumed fit
        # recognises its own save_dir/export_dir (e.g. written after the checkpoint it resumes from)
        self.run_id = uuid.uuid4().hex
        self._capture = calib.PredictCapture()  # predict: the calibration inputs' catcher
        self._pending = False  # predict: this run prunes, and has not yet
        self._active = False  # fit: this run may prune (the module carries no plan made elsewhere)
        self._restored = False  # fit: a checkpoint was restored before strategy.setup
        self._deferred_check = False  # the LM did not exist in setup (configure_model): check later
        self._before_setup = BeforeStrategySetup()  # fit: the first step's moment (see the module docstring)
        self._trained_epoch: Optional[int] = None  # fit: the epoch that trained last (progress lines' number)

    @property
    def pruned(self) -> bool:
        """Whether the module holds a model this callback pruned (in this run or before a resume)."""
        return bool(self.steps)

    # -- what the results writer reads (plain data, no reference to this class needed) --------
    def output_fields(self) -> dict[str, Any]:
        """Values for output path placeholders (``{method}``, ``{ratio_pct}``, ``{nsamples}``, ...)."""
        return output_fields(self.config, self._calibration.get("nsamples"), self.schedule)

    def results_summary(self) -> Optional[dict[str, Any]]:
        """What this callback's pruning did, all steps together, as plain data (None before it pruned)."""
        return steps_summary(self.config, self.schedule, self.steps, self.saved_to, self.exported_to)

    def save_path(self) -> Optional[str]:
        """``save_dir`` with its placeholders filled."""
        return None if self.save_dir is None else format_output_path(self.save_dir, self.output_fields())

    def export_path(self) -> Optional[str]:
        """``export_dir`` with its placeholders filled."""
        return None if self.export_dir is None else format_output_path(self.export_dir, self.output_fields())

    def lm(self, pl_module: LightningModule) -> nn.Module:
        return find_causal_lm(pl_module, self.model_attr)

    # -- hooks: setup ------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        configure_logging()
        install_plan_hooks(pl_module)
        dm = getattr(trainer, "datamodule", None)
        # what the calibration data is, in the runs that calibrate (test/validate read no calibration window)
        if stage in ("fit", "predict") and callable(getattr(dm, "calibration_info", None)) \
                and self.calibration_dataloader is None:
            self._calibration = dm.calibration_info()
        if stage == "fit":
            self._setup_fit(trainer, pl_module)
        elif stage == "predict":
            self._setup_predict(trainer, pl_module)

    def _setup_predict(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._pending = False
        if not sched.prunes_once(self.schedule):
            raise ValueError(
                f"schedule={sched.describe_schedule(self.schedule)} prunes step by step during fit; the predict "
                "loop (cli.py prune) prunes once: set pruning.config.ratio and leave pruning.schedule unset")
        if getattr(pl_module, "pruning_plan", None) is not None:
            rank_zero_info("the LightningModule already carries a pruning plan: the predict loop runs without pruning")
            return
        calib.check_strategy(trainer, "pruning in a predict loop")
        calib.check_data(trainer, None, self._calibration.get("nsamples"))
        if checkpoint_source(pl_module) is not None and self.save_dir is None:
            raise ValueError("an out-of-core model (model.out_of_core: true) is pruned from disk to disk: set "
                             "pruning.save_dir, where the pruned checkpoint is written layer by layer")
        self._check_model(trainer, pl_module, sched.first_step_config(self.config, self.schedule), defer=False)
        self._check_outputs(trainer, save=True, export=False)
        self._pending = True

    def _setup_fit(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restored = self._active = self._deferred_check = False
        if checkpoint_source(pl_module) is not None:
            raise ValueError("an out-of-core model (model.out_of_core: true) holds no weights: it can only be "
                             "pruned (cli.py prune / trainer.predict); fine-tune the pruned folder it writes")
        if self.export_dir is not None:
            calib.check_strategy(trainer, "export_dir (the model written at the end of fit)",
                                 "Write it from the fit's checkpoint instead: cli.py export --ckpt_path CKPT")
        # A module that carries a plan made elsewhere is not pruned (decided, and said, before strategy.setup).
        if getattr(pl_module, "pruning_plan", None) is None or self.steps:
            calib.check_strategy(trainer, "pruning inside fit")
            calib.check_data(trainer, self.calibration_dataloader, self._calibration.get("nsamples"), fit=True)
            self._deferred_check = not self.steps and not self._check_model(
                trainer, pl_module, sched.largest_step_config(self.config, self.schedule), defer=True)
        self._before_setup.install(trainer.strategy, lambda: self._before_strategy_setup(trainer, pl_module))

    def _check_model(self, trainer: Trainer, pl_module: LightningModule, config: PruningConfig,
                     defer: bool) -> bool:
        """Refuse (on every rank) settings the model cannot take; False when the LM does not exist yet
        (``defer``: a module that builds it in ``configure_model``; checked again before pruning)."""
        def check() -> bool:
            try:
                check_feasible(self.lm(pl_module), config)
            except ValueError as exc:
                if defer and calib.builds_in_configure_model(pl_module) and "holds no Llama-family" in str(exc):
                    return False
                raise
            except AttributeError as exc:  # model_attr names nothing
                raise ValueError(f"model_attr={self.model_attr!r}: {exc}") from None
            return True

        return on_rank_zero(trainer, check, catch=(ValueError,))

    def _check_outputs(self, trainer: Trainer, save: bool, export: bool) -> None:
        """Refuse (on every rank) outputs that cannot be written or would replace something unasked.
        A folder written by this run (before the checkpoint it resumed from, or after it and before a
        crash) is its own output, not the user's."""
        def check() -> None:
            if save and self.save_dir is not None:
                path = self.save_path()
                check_output_path(path, self.overwrite or self._own(path), "pruning.save_dir", OVERWRITE_FLAG)
            if export and self.export_dir is not None:
                path = self.export_path()
                check_output_path(path, self.overwrite or self._own(path), "pruning.export_dir", OVERWRITE_FLAG)

        on_rank_zero(trainer, check)

    def _own(self, path: str) -> bool:
        """Whether the folder ``path`` was written by this run (its report carries this run's id)."""
        return path == self.saved_to or written_by_run(path, self.run_id)

    # -- fit: before strategy.setup ------------------------------------------------------------
    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        self._restored = True

    def _before_strategy_setup(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """After ``configure_model`` and the checkpoint restore, before the model is moved and wrapped
        and the optimizers exist (see the module docstring)."""
        for callback in trainer.callbacks:  # other outputs a resumed run may own (results files): before any work
            if callable(getattr(callback, "check_resumed_outputs", None)):
                callback.check_resumed_outputs(trainer)
        if getattr(pl_module, "pruning_plan", None) is not None and not self.steps:
            rank_zero_info(
                "the LightningModule carries a pruning plan this callback did not make (a pruned folder, or a "
                "checkpoint without this callback's state): it is trained as it is and not pruned again")
            self._check_outputs(trainer, save=False, export=True)
            return
        self._active = True
        self._check_outputs(trainer, save=True, export=True)
        if self._deferred_check:  # the LM was built in configure_model
            self._deferred_check = False
            self._check_model(trainer, pl_module, sched.largest_step_config(self.config, self.schedule), defer=False)
        if self._restored:
            if self.steps:
                rank_zero_info(f"resumed with {len(self.steps)} pruning step(s) done (last at epoch "
                               f"{self.steps[-1].get('epoch')}): not calibrating or pruning again")
            return  # the restored optimizer state must match the shapes: any due step runs at the epoch start
        self._fit_step(trainer, pl_module, trainer.current_epoch, before_setup=True)

    # -- fit: the steps ----------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._trained_epoch = trainer.current_epoch
        if self._active and trainer.current_epoch > self.last_epoch:
            self._fit_step(trainer, pl_module, trainer.current_epoch, before_setup=False)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        # Resumed from a checkpoint saved at an epoch's last batch, Lightning starts the next epoch without
        # ``on_train_epoch_start``: its step runs here, before its first batch (otherwise it ran there).
        if self._active and trainer.current_epoch > self.last_epoch:
            self._fit_step(trainer, pl_module, trainer.current_epoch, before_setup=False)

    def _fit_step(self, trainer: Trainer, pl_module: LightningModule, epoch: int, before_setup: bool) -> None:
        target = sched.due_ratio(self.schedule, self.config, self.last_epoch, epoch)
        self.last_epoch = max(self.last_epoch, epoch)
        if target is None:
            return
        lm = self.lm(pl_module)
        step_config = sched.step_config(self.config, self.schedule, lm, target, self._plan_of(pl_module))
        if step_config is None:
            rank_zero_info(f"epoch {epoch}: the model already has ratio {target:g} removed; no pruning step")
            return
        rank_zero_info(f"epoch {epoch}: pruning to ratio {target:g} of the dense model"
                       + ("" if before_setup else " (re-calibrated on the current model)"))
        if before_setup:
            lm.to(trainer.strategy.root_device)  # strategy.setup would move it next anyway
            self._prune_from_loader(trainer, pl_module, lm, step_config, epoch, target)
            return
        old = projection_params(lm)
        self._prune_from_loader(trainer, pl_module, lm, step_config, epoch, target)
        if carry_optimizer_state(trainer.optimizers, old, lm, self.report.plan):
            rank_zero_warn("optimizer state that is not shaped like its parameter cannot be sliced: "
                           "pruned parameters of this optimizer start with fresh state")
        rewrap_ddp(trainer, pl_module)

    def _plan_of(self, pl_module: LightningModule) -> Optional[PruningPlan]:
        """The plan of the model this callback pruned so far (None before its first step)."""
        return as_plan(getattr(pl_module, "pruning_plan", None)) if self.steps else None

    def _prune_from_loader(self, trainer: Trainer, pl_module: LightningModule, lm: nn.Module,
                           config: PruningConfig, epoch: Optional[int], target: float) -> None:
        loader = calib.calibration_source(trainer, self.calibration_dataloader)()
        batches = calib.batches_of_rank(trainer, loader)
        was_training = lm.training
        lm.eval()
        try:
            inputs = (capture_layer_inputs(lm, batches, offload=config.offload_inputs, dtype=config.execution_torch_dtype)
                      if batches else LayerInputs())
            self._prune(trainer, pl_module, lm, inputs, config, epoch, target)
        finally:
            lm.train(was_training)

    # -- predict -----------------------------------------------------------------------------
    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._pending:
            return
        if getattr(pl_module, "pruning_plan", None) is not None:  # restored by predict(ckpt_path=...)
            self._pending = False
            rank_zero_info("the checkpoint holds a pruned model: the predict loop runs without pruning")
            return
        self._capture.start(trainer, self.lm(pl_module), LayerInputCatcher, self.config.offload_inputs,
                            stop_after_layer0=getattr(pl_module, "stops_calibration_forward", False),
                            dtype=self.config.execution_torch_dtype)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        catcher = self._capture.stop()
        if catcher is not None:
            config = sched.first_step_config(self.config, self.schedule)
            self._prune(trainer, pl_module, self.lm(pl_module), catcher.inputs, config, None, config.ratio)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._before_setup.remove()
        # Lightning skips the whole predict loop (on_predict_start/end included) on a process whose
        # loader is empty; that process meets the others' first collective here and fails with them.
        if stage == "predict" and self._pending:
            self._pending = False
            calib.calibration_record(trainer, [], self._calibration)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._capture.stop()
        self._before_setup.remove()

    # -- export ------------------------------------------------------------------------------
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._active and not self.steps:
            rank_zero_warn(f"fit ended (epoch {trainer.current_epoch}) before any pruning step of the schedule "
                           f"{sched.describe_schedule(self.schedule)} was due: the model was not pruned")
        if self.export_dir is not None:
            # Lightning counts an epoch as done once it ends, so current_epoch is one past the last trained
            epoch = trainer.current_epoch if self._trained_epoch is None else self._trained_epoch
            self.export(trainer, pl_module, source=f"end of fit (after epoch {epoch}, step {trainer.global_step})")

    def export(self, trainer: Trainer, pl_module: LightningModule, source: str) -> Optional[str]:
        """Write the module's LM as it is now (pruned and fine-tuned) to ``export_dir`` (rank 0, atomic;
        every rank learns whether it worked). ``source`` says where the weights come from."""
        path = self.export_path()
        if path is None:
            raise ValueError("export needs pruning.export_dir (CLI: --pruning.export_dir DIR)")
        # say what the model is: a fit whose schedule step never ran exports a dense model
        pruned = bool(self.steps) or getattr(pl_module, "pruning_plan", None) is not None
        state, model = ("pruned and fine-tuned", "pruned, fine-tuned model") if pruned else \
            ("fine-tuned, not pruned", "fine-tuned model (not pruned)")
        self._write(trainer, pl_module, path, "pruning.export_dir", weights=f"{state}: {source}")
        self.exported_to = path
        rank_zero_info(f"{model} exported to {path}")
        return path

    # -- the work ----------------------------------------------------------------------------
    def _prune(self, trainer: Trainer, pl_module: LightningModule, lm: nn.Module, inputs: LayerInputs,
               config: PruningConfig, epoch: Optional[int], target: float) -> None:
        with torch.inference_mode(False):
            calib.ordinary_tensors(inputs)
            self._pending = False
            calibration = calib.calibration_record(trainer, inputs.batches, self._calibration)
            progress = stop_on_sigterm(trainer, default_progress() if self.progress and trainer.is_global_zero
                                       else None)
            source = checkpoint_source(pl_module)
            if source is None:
                report = prune_model(lm, inputs, config, reduce=sum_over_ranks(trainer), progress=progress,
                                     overwrite_inputs=True, calibration=calibration)
            else:  # disk to disk, one layer at a time on the trainer's device; rank 0 writes
                if config.execution_device is None:
                    config = dataclasses.replace(config, execution_device=str(trainer.strategy.root_device))
                report = prune_skeleton(source, lm, inputs, self.save_path(), config, reduce=sum_over_ranks(trainer),
                                        progress=progress, overwrite=self.overwrite, calibration=calibration,
                                        write=trainer.is_global_zero)
                trainer.strategy.barrier("rcpu-out-of-core-written")
                self.saved_to = self.save_path()
                rank_zero_info(f"pruned model written to {self.saved_to} (layer by layer from {source.path})")
        plan = composed_plan(self._plan_of(pl_module), report.plan, self.config, self.schedule, target)
        self.report = report
        self.steps.append(step_record(report, epoch, target, trainer.world_size))
        set_plan(pl_module, plan, lm, reshape=False)
        log_step(trainer, self.config, self.steps, report, epoch, target)
        if source is None:
            self._save(trainer, pl_module, epoch)
        else:
            write_out_of_core_report(trainer, self.saved_to, report, self.results_summary(), self.run_id, source.path)

    def _save(self, trainer: Trainer, pl_module: LightningModule, epoch: Optional[int]) -> None:
        if self.save_dir is None:
            return
        path = self.save_path()
        when = "" if epoch is None else f" at epoch {epoch}"
        self._write(trainer, pl_module, path, "pruning.save_dir",
                    weights=f"right after pruning{when}, before the fine-tuning that follows")
        self.saved_to = path
        rank_zero_info(f"pruned model saved to {path}")

    def _write(self, trainer: Trainer, pl_module: LightningModule, path: str, what: str, weights: str) -> None:
        """The module's LM to ``path`` (rank 0, atomic); a folder this run wrote before is its own output."""
        info = {**report_fields(self.results_summary()), "weights": weights, "run_id": self.run_id}
        overwrite = self.overwrite or self._own(path)
        on_rank_zero(trainer, lambda: save_hf_checkpoint(
            self.lm(pl_module), getattr(pl_module, "pruning_plan", None), path, getattr(pl_module, "tokenizer", None),
            overwrite=overwrite, extra=info, what=what), catch=(Exception,),
            failure=f"writing {what} {path} failed on rank 0")  # every rank learns it, none waits forever

    # -- checkpoints of the callback itself ----------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "last_epoch": self.last_epoch, "config": self.config.to_dict(),
                "schedule": sched.describe_schedule(self.schedule), "save_dir": self.saved_to, "run_id": self.run_id}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        steps = state_dict.get("steps")
        if steps is None and state_dict.get("pruned"):  # checkpoints of before the schedule: one step, no record
            steps = [{"epoch": state_dict.get("prune_at_epoch") or 0, "ratio": (state_dict.get("config") or {}).get("ratio")}]
        self.steps = [dict(s) for s in steps or []]
        self.last_epoch = int(state_dict.get("last_epoch", max([s.get("epoch") or 0 for s in self.steps], default=-1)))
        self.saved_to = state_dict.get("save_dir")
        self.run_id = state_dict.get("run_id") or self.run_id  # the run it resumes (older checkpoints: none)
        saved, schedule = state_dict.get("config"), sched.describe_schedule(self.schedule)
        if self.steps and saved and (saved != self.config.to_dict() or state_dict.get("schedule") != schedule):
            rank_zero_info(
                f"the checkpoint was pruned with {saved} (schedule {state_dict.get('schedule')}), this callback is "
                f"configured with {self.config.to_dict()} (schedule {schedule}): the checkpoint's pruned model is "
                f"kept as it is and is not pruned again; schedule entries after epoch {self.last_epoch} follow "
                "this callback")
