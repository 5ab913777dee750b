"""`RCPUPruningCallback`: calibrate, prune (RCPU, WANDA-sp, FLAP, magnitude), save and export, from Lightning loops.

When it prunes
--------------
* **Predict loop** (``trainer.predict``, the CLI's ``prune``): ``on_predict_start`` installs a
  :class:`~rcpu_lightning.pruning.LayerInputCatcher` on the LM; every calibration batch of this rank
  is recorded as it enters decoder layer 0; ``on_predict_end`` prunes, once, at ``config``'s ratio.
  Every rank needs at least one calibration batch: with the DataModule's calibration windows this is
  checked in ``setup``; otherwise the first collective of the pruning (a rank without batches reaches
  it in ``teardown``, since Lightning skips an empty predict loop) makes every rank fail with the same
  message. Statistics are summed over ranks (``trainer.strategy.reduce``, float64), so every rank
  takes the same decision and ends with the same weights as a single process. A model that already
  carries a pruning plan (e.g. restored by ``predict(ckpt_path=...)``) is left as it is.
* **Fit**: the ``schedule`` (default ``{0: config.ratio}``: one-shot before training) says which
  cumulative fraction of the *dense* model's heads and channels is removed from which epoch on.

  - The step of epoch 0 happens after the checkpoint (if any) was restored and before the strategy
    moves the model, wraps it (DDP) and builds the optimizers. Lightning restores a checkpoint after
    ``setup`` and ``configure_model`` and right before ``strategy.setup``, and no public hook sits
    between, so ``setup("fit")`` only checks (calibration data present, settings feasible) and
    installs a one-shot wrapper on this trainer's ``strategy.setup`` (removed when it runs, and in
    ``teardown``/``on_exception`` if it never ran). When it runs: if the module now carries a
    pruning plan restored from a checkpoint, nothing is calibrated or pruned (this callback's own
    state, restored from the same checkpoint, says which steps are done) and ``save_dir`` is left
    alone; otherwise the outputs are checked, the LM (built in ``__init__`` or ``configure_model``)
    is calibrated and pruned, then the original ``strategy.setup`` runs.
  - Later steps happen at ``on_train_epoch_start`` of their epoch, re-calibrated on the current
    (pruned, fine-tuned) model; after a resume from a checkpoint saved at the last batch of an epoch
    (Lightning then starts the next epoch without that hook) at ``on_train_batch_start`` of its
    first batch. Each step runs once, whatever the checkpoint position. The optimizer object is kept: its ``param_groups`` get the new
    parameters in place, and its state is carried over, sliced to the kept rows/columns (Adam's
    moments of the surviving units are unchanged, those of removed units dropped; a bias added by
    compensation starts with fresh state), so LR schedulers continue as they were. A DDP wrapper is
    rebuilt over the new parameters.
  - A module that arrives with a plan this callback did not make (a pruned folder, a checkpoint
    without this callback's state) is fine-tuned as it is, never pruned again.

Everything that can be checked is checked before any work: the pruning settings against the
model's architecture (a ratio that would empty a layer, a model that is not Llama-family), the
strategy (single device or DDP), and the outputs (``save_dir``, ``export_dir``: writable; an
existing non-empty folder is only replaced with ``overwrite=True``, and only when this tool wrote
it (:mod:`rcpu_lightning.files`), or by the run that wrote it, resumed: every fit has a
``run_id``, kept in its checkpoints and in the ``pruning_report.json`` of the folders it writes).
The results writer's files are checked after the restore too (``check_resumed_outputs``), right
before the first step.

Outputs (Hugging Face checkpoints plus ``pruning_plan.json`` and ``pruning_report.json``, rank 0,
atomic; ``load_pruned`` or ``from_pretrained`` reload them):

* ``save_dir``: the model **right after pruning**, before any fine-tuning (with a schedule:
  after the latest step, before the fine-tuning that follows it).
* ``export_dir``: the model **at the end of fit**: pruned *and* fine-tuned (also: ``cli.py export``
  from any checkpoint).

Pruning runs outside inference mode, so the new parameters are ordinary trainable tensors even
when the predict loop ran with ``inference_mode=True``. The plan is recorded on the LightningModule
(``pruning_plan``; several steps compose into one plan) and travels with its checkpoints
(:mod:`.checkpointing`).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import json
import math
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn
from torch.utils.data import DistributedSampler

from ..files import REPORT_FILE, atomic_dir, check_output_path, format_output_path
from ..models.adapter import decoder_layers, layer_parts
from ..pruning.config import PruningConfig, check_ratio
from ..pruning.engine import PruningReport, check_feasible, prune_model
from ..pruning.inputs import LayerInputCatcher, LayerInputs, StopForward, capture_layer_inputs, first_rows, model_inputs
from ..pruning.io import save_pruned, write_pruning_files
from ..pruning.plan import LayerPlan, PruningPlan
from ..pruning.progress import default_progress
from ..pruning.selection import feasible_count, head_layout
from ..pruning.streaming import CheckpointSource, prune_skeleton
from ..pruning.surgery import ATTN_PROJ, MLP_PROJ, head_rows
from .checkpointing import as_plan, find_causal_lm, install_plan_hooks, set_plan
from .data import real_samples_of_rank
from .logs import configure_logging

log = logging.getLogger(__name__)

CalibrationSource = Union[Iterable, Callable[..., Iterable], None]
#: epoch -> cumulative fraction of the dense model's heads and channels removed from that epoch on,
#: or a function of the epoch returning that fraction.
Schedule = Union[dict[int, float], Callable[[int], float], None]
_OVERWRITE_FLAG = "overwrite=True (CLI: --pruning.overwrite true)"
_MISSING = object()


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
            latest step) as a Hugging Face checkpoint (rank 0, atomic). May use ``{method}``,
            ``{compensation}``, ``{structure}``, ``{targets}``, ``{ratio}``, ``{ratio_pct}``,
            ``{nsamples}`` (e.g. ``outputs/llama-7b/{method}-{ratio_pct}``). A fit resumed from a
            checkpoint of the run that wrote it (or ``export_dir``) recognises it as its own (the run
            id in its ``pruning_report.json``): no ``overwrite`` needed; only a later step rewrites it.
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
        schedule: Schedule = None,
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
        self.schedule = _check_schedule(schedule, self.config)
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
        self._catcher: Optional[LayerInputCatcher] = None
        self._stop_handle = None
        self._pending = False  # predict: this run prunes, and has not yet
        self._active = False  # fit: this run may prune (the module carries no plan made elsewhere)
        self._restored = False  # fit: a checkpoint was restored before strategy.setup
        self._deferred_check = False  # the LM did not exist in setup (configure_model): check later
        self._wrapped: Optional[tuple] = None  # (strategy, what strategy.__dict__["setup"] was, our wrapper)
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
        if not self.steps:
            return None
        cfg, last = self.config, self.steps[-1]
        ratio = (cfg.ratio, cfg.head_ratio, cfg.channel_ratio) if self.schedule is None else (last["ratio"],) * 3
        out: dict[str, Any] = {
            "method": cfg.method, "ratio": ratio[0], "attn_ratio": ratio[1], "mlp_ratio": ratio[2],
            "compensation": cfg.compensation, "structure": cfg.structure, "targets": cfg.targets,
            "head_rounding": cfg.head_rounding, "gqa_mode": cfg.gqa_mode,
        }
        out.update(_combine_steps(self.steps))
        out.update(calibration=last.get("calibration"), prune_world_size=last.get("world_size"),
                   save_dir=self.saved_to, export_dir=self.exported_to,
                   notes=[n for s in self.steps for n in s.get("notes") or []])
        if self.schedule is not None:
            out["schedule"] = _describe_schedule(self.schedule)
        out["pruning_steps"] = [{k: s.get(k) for k in ("epoch", "ratio", "params_before", "params_after",
                                                       "decoder_params_removed", "seconds")} for s in self.steps]
        return out

    def output_dir(self) -> Optional[str]:
        """``save_dir`` with its placeholders filled."""
        return None if self.save_dir is None else format_output_path(self.save_dir, self.output_fields())

    def export_path(self) -> Optional[str]:
        """``export_dir`` with its placeholders filled."""
        return None if self.export_dir is None else format_output_path(self.export_dir, self.output_fields())

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
        if self.schedule is not None and (callable(self.schedule) or set(self.schedule) != {0}):
            raise ValueError(
                f"schedule={_describe_schedule(self.schedule)} prunes step by step during fit; the predict loop "
                "(cli.py prune) prunes once: set pruning.config.ratio and leave pruning.schedule unset")
        if getattr(pl_module, "pruning_plan", None) is not None:
            rank_zero_info("the LightningModule already carries a pruning plan: the predict loop runs without pruning")
            return
        self._check_strategy(trainer, "pruning in a predict loop")
        self._check_data(trainer, stage="predict")
        if _source(pl_module) is not None and self.save_dir is None:
            raise ValueError("an out-of-core model (model.out_of_core: true) is pruned from disk to disk: set "
                             "pruning.save_dir, where the pruned checkpoint is written layer by layer")
        self._check_model(trainer, pl_module, self._first_config(), defer=False)
        self._check_outputs(trainer, save=True, export=False)
        self._pending = True

    def _setup_fit(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restored = self._active = self._deferred_check = False
        if _source(pl_module) is not None:
            raise ValueError("an out-of-core model (model.out_of_core: true) holds no weights: it can only be "
                             "pruned (cli.py prune / trainer.predict); fine-tune the pruned folder it writes")
        if self.export_dir is not None:
            self._check_strategy(trainer, "export_dir (the model written at the end of fit)",
                                 "Write it from the fit's checkpoint instead: cli.py export --ckpt_path CKPT")
        # A module that carries a plan made elsewhere is not pruned (decided, and said, before strategy.setup).
        if getattr(pl_module, "pruning_plan", None) is None or self.steps:
            self._check_strategy(trainer, "pruning inside fit")
            self._check_data(trainer, stage="fit")
            self._deferred_check = not self.steps and not self._check_model(
                trainer, pl_module, self._largest_step_config(), defer=True)
        self._wrap_strategy_setup(trainer, pl_module)

    def _check_strategy(self, trainer: Trainer, what: str, advice: Optional[str] = None) -> None:
        from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy

        strategy = trainer.strategy
        if isinstance(strategy, SingleDeviceStrategy) or (isinstance(strategy, DDPStrategy)
                                                          and not isinstance(strategy, DeepSpeedStrategy)):
            return
        raise ValueError(
            f"{what} needs a single-device or DDP strategy, not {type(strategy).__name__}: sharded strategies "
            "(FSDP, DeepSpeed) split the weight matrices and the optimizer state across processes and restore "
            "checkpoints after wrapping the model, so the pruned shapes cannot be rebuilt in time. " + (advice or
            "Prune first (cli.py prune, or trainer.predict with this callback, on one process or DDP), then "
            "fine-tune the saved folder (--model.model SAVE_DIR) under any strategy"))

    def _check_data(self, trainer: Trainer, stage: str) -> None:
        if stage == "fit":
            self._calibration_source(trainer)  # there is calibration data
        nsamples = self._calibration.get("nsamples")
        if nsamples is not None and nsamples < trainer.world_size:  # the same answer on every rank
            raise ValueError(_too_few(nsamples, trainer.world_size))

    def _check_model(self, trainer: Trainer, pl_module: LightningModule, config: PruningConfig,
                     defer: bool) -> bool:
        """Refuse (on every rank) settings the model cannot take; False when the LM does not exist yet
        (``defer``: a module that builds it in ``configure_model``; checked again before pruning)."""
        error, missing = None, False
        if trainer.is_global_zero:
            try:
                check_feasible(self.lm(pl_module), config)
            except ValueError as exc:
                if defer and _builds_in_configure_model(pl_module) and "holds no Llama-family" in str(exc):
                    missing = True
                else:
                    error = (ValueError, str(exc))
            except AttributeError as exc:  # model_attr names nothing
                error = (ValueError, f"model_attr={self.model_attr!r}: {exc}")
        error, missing = trainer.strategy.broadcast((error, missing), src=0)
        if error is not None:
            raise error[0](error[1])
        return not missing

    def _check_outputs(self, trainer: Trainer, save: bool, export: bool) -> None:
        """Refuse (on every rank) outputs that cannot be written or would replace something unasked.
        A folder written by this run (before the checkpoint it resumed from, or after it and before a
        crash) is its own output, not the user's."""
        error = None
        if trainer.is_global_zero:
            try:
                if save and self.save_dir is not None:
                    path = self.output_dir()
                    check_output_path(path, self.overwrite or self._own(path), "pruning.save_dir", _OVERWRITE_FLAG)
                if export and self.export_dir is not None:
                    path = self.export_path()
                    check_output_path(path, self.overwrite or self._own(path), "pruning.export_dir", _OVERWRITE_FLAG)
            except OSError as exc:
                error = (type(exc), str(exc))
        error = trainer.strategy.broadcast(error, src=0)
        if error is not None:
            raise error[0](error[1])

    def _own(self, path: str) -> bool:
        """Whether the folder ``path`` was written by this run (its report carries this run's id)."""
        if path == self.saved_to:
            return True
        try:
            return json.loads((Path(path).expanduser() / REPORT_FILE).read_text()).get("run_id") == self.run_id
        except (OSError, ValueError, AttributeError):
            return False

    def lm(self, pl_module: LightningModule) -> nn.Module:
        return find_causal_lm(pl_module, self.model_attr)

    # -- fit: the wrapper of strategy.setup --------------------------------------------------
    def _wrap_strategy_setup(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._unwrap_strategy_setup()
        strategy = trainer.strategy
        original = strategy.setup

        def setup(*args: Any, **kwargs: Any) -> Any:
            self._unwrap_strategy_setup()
            self._before_strategy_setup(trainer, pl_module)
            return original(*args, **kwargs)

        self._wrapped = (strategy, strategy.__dict__.get("setup", _MISSING), setup)
        strategy.setup = setup

    def _unwrap_strategy_setup(self) -> None:
        if self._wrapped is None:
            return
        strategy, before, ours = self._wrapped
        self._wrapped = None
        if strategy.__dict__.get("setup") is not ours:
            return  # someone wrapped it after us: leave theirs in place
        if before is _MISSING:
            del strategy.setup
        else:
            strategy.setup = before

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
            self._check_model(trainer, pl_module, self._largest_step_config(), defer=False)
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
        # Resumed from a checkpoint saved at the last batch of an epoch, Lightning starts the next
        # epoch without ``on_train_epoch_start``: its step runs here, before its first batch, with the
        # restored optimizers (sliced as at an epoch start). Otherwise the epoch start handled it.
        if self._active and trainer.current_epoch > self.last_epoch:
            self._fit_step(trainer, pl_module, trainer.current_epoch, before_setup=False)

    def _due(self, epoch: int) -> Optional[float]:
        """The cumulative ratio due at ``epoch`` (None: no step), given the entries handled so far."""
        if self.schedule is None:
            return self.config.ratio if self.last_epoch < 0 <= epoch else None
        if callable(self.schedule):
            value = _check_ratio_value(self.schedule(epoch), f"schedule({epoch})")
            return value or None
        due = [e for e in self.schedule if self.last_epoch < e <= epoch]
        return self.schedule[max(due)] if due else None

    def _fit_step(self, trainer: Trainer, pl_module: LightningModule, epoch: int, before_setup: bool) -> None:
        target = self._due(epoch)
        self.last_epoch = max(self.last_epoch, epoch)
        if target is None:
            return
        lm = self.lm(pl_module)
        step_config = self._step_config(lm, target, self._plan_of(pl_module))
        if step_config is None:
            rank_zero_info(f"epoch {epoch}: the model already has ratio {target:g} removed; no pruning step")
            return
        rank_zero_info(f"epoch {epoch}: pruning to ratio {target:g} of the dense model"
                       + ("" if before_setup else " (re-calibrated on the current model)"))
        if before_setup:
            lm.to(trainer.strategy.root_device)  # strategy.setup would move it next anyway
            self._prune_from_loader(trainer, pl_module, lm, step_config, epoch, target)
            return
        old = _projection_params(lm)
        self._prune_from_loader(trainer, pl_module, lm, step_config, epoch, target)
        _carry_optimizer_state(trainer.optimizers, old, lm, self.report.plan)
        self._rewrap(trainer, pl_module)

    def _largest_step_config(self) -> PruningConfig:
        """The settings checked against the model before any work: the largest ratio the schedule reaches."""
        if callable(self.schedule):  # not known in advance: the architecture only, each step checks its ratio
            return dataclasses.replace(self.config, ratio=0.0)
        if isinstance(self.schedule, dict):
            return dataclasses.replace(self.config, ratio=max(self.schedule.values()))
        return self.config

    def _first_config(self) -> PruningConfig:
        if self.schedule is None:
            return self.config
        ratio = self.schedule[min(self.schedule)] if isinstance(self.schedule, dict) else self.config.ratio
        return dataclasses.replace(self.config, ratio=ratio)

    def _step_config(self, lm: nn.Module, target: float, plan: Optional[PruningPlan]) -> Optional[PruningConfig]:
        """The engine's settings for a step to ``target`` (a cumulative ratio of the dense model); None
        when the model has that much removed already. On an unpruned model that is ``config`` at that
        ratio; on a model this callback pruned before, ``attn_ratio``/``mlp_ratio`` of the *current*
        shapes that remove exactly (dense count at ``target``) - (already removed)."""
        if plan is None:
            return self.config if self.schedule is None else dataclasses.replace(self.config, ratio=target)
        cfg, dense = self.config, plan.dense
        heads_target, channels_target = (cfg.head_ratio, cfg.channel_ratio) if self.schedule is None else (target, target)
        unit = head_layout(dense["num_attention_heads"], dense["num_key_value_heads"], cfg.gqa_mode).unit_size
        want_heads = feasible_count(heads_target, dense["num_attention_heads"], unit, cfg.head_rounding)
        want_channels = feasible_count(channels_target, dense["intermediate_size"], 1, "floor")
        shapes = {(p.num_heads, p.intermediate_size) for p in map(layer_parts, decoder_layers(lm))}
        if len(shapes) != 1:
            raise ValueError("gradual pruning needs the same shapes in every decoder layer (uniform structure); "
                             f"the model has {sorted(shapes)} (heads, channels)")
        heads, channels = shapes.pop()
        need_heads = max(0, want_heads - (dense["num_attention_heads"] - heads))
        need_channels = max(0, want_channels - (dense["intermediate_size"] - channels))
        if need_heads == 0 and need_channels == 0:
            return None
        if need_heads >= heads or need_channels >= channels:
            raise ValueError(f"ratio {target:g} would remove every attention head or MLP channel of a layer")
        step = dataclasses.replace(cfg, ratio=target, attn_ratio=need_heads / heads, mlp_ratio=need_channels / channels)
        # the per-step ratios give exactly the counts wanted (feasible_count's epsilon sees to it; tested)
        if (feasible_count(step.attn_ratio, heads, unit, cfg.head_rounding), feasible_count(
                step.mlp_ratio, channels, 1, "floor")) != (need_heads, need_channels):
            raise RuntimeError(f"per-step ratios {step.attn_ratio!r}/{step.mlp_ratio!r} do not give "
                               f"{need_heads} heads / {need_channels} channels")
        return step

    def _plan_of(self, pl_module: LightningModule) -> Optional[PruningPlan]:
        """The plan of the model this callback pruned so far (None before its first step)."""
        return as_plan(getattr(pl_module, "pruning_plan", None)) if self.steps else None

    def _rewrap(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """A DDP wrapper registered the old parameters: wrap the module again."""
        from lightning.pytorch.strategies import DDPStrategy

        strategy = trainer.strategy
        if isinstance(strategy, DDPStrategy):
            strategy.model = pl_module
            strategy.configure_ddp()

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
                           config: PruningConfig, epoch: Optional[int], target: float) -> None:
        loader = self._calibration_source(trainer)()
        sharded = isinstance(getattr(loader, "sampler", None), DistributedSampler)
        world, rank = trainer.world_size, trainer.global_rank
        batches = [model_inputs(b) for i, b in enumerate(loader) if sharded or world <= 1 or i % world == rank]
        real = _real_rows(loader, world)
        if real is not None:  # leave out the duplicates a padding sampler appended
            batches = _first_rows_of(batches, real)
        was_training = lm.training
        lm.eval()
        try:
            inputs = capture_layer_inputs(lm, batches, offload=config.offload_inputs) if batches else LayerInputs()
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
        lm = self.lm(pl_module)
        loaders = trainer.predict_dataloaders
        loaders = list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
        real = [_real_rows(loader, trainer.world_size) for loader in loaders]
        if len(loaders) > 1 and any(r is not None for r in real):
            raise ValueError("a calibration loader's sampler repeats samples to fill the processes, which cannot be "
                             "undone with several predict loaders; use rcpu_lightning.lightning.UnpaddedDistributedSampler")
        self._catcher = LayerInputCatcher(lm, offload=self.config.offload_inputs, stop=False, max_rows=real[0])
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
            config = self._first_config()
            self._prune(trainer, pl_module, self.lm(pl_module), catcher.inputs, config, None, config.ratio)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._unwrap_strategy_setup()
        # Lightning skips the whole predict loop (on_predict_start/end included) on a process whose
        # loader is empty; that process meets the others' first collective here and fails with them.
        if stage == "predict" and self._pending:
            self._calibration_record(trainer, LayerInputs())

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._remove_hooks()
        self._unwrap_strategy_setup()

    # -- export ------------------------------------------------------------------------------
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._active and not self.steps:
            rank_zero_warn(f"fit ended (epoch {trainer.current_epoch}) before any pruning step of the schedule "
                           f"{_describe_schedule(self.schedule)} was due: the model was not pruned")
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
        info = {**(_report_fields(self.results_summary()) if self.steps else {}), "weights": f"{state}: {source}"}
        self._write(trainer, pl_module, path, info, what="pruning.export_dir", overwrite=self.overwrite or self._own(path))
        self.exported_to = path
        rank_zero_info(f"{model} exported to {path}")
        return path

    # -- the work ----------------------------------------------------------------------------
    @staticmethod
    def _reduce(trainer: Trainer) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
        if trainer.world_size <= 1:
            return None
        strategy = trainer.strategy

        def reduce(t: torch.Tensor) -> torch.Tensor:
            # strategy.reduce all-reduces in place (gloo has no AVG; integers would truncate): the
            # engine hands over a fresh buffer of its own, so a float64 one is summed where it is
            buf = t.detach().to(torch.float64)
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

    def _prune(self, trainer: Trainer, pl_module: LightningModule, lm: nn.Module, inputs: LayerInputs,
               config: PruningConfig, epoch: Optional[int], target: float) -> None:
        reduce = self._reduce(trainer)
        with torch.inference_mode(False):
            # Captured in an inference-mode loop the inputs may be inference tensors: make ordinary
            # copies (one batch at a time, so two full copies never coexist).
            for k, (h, kw) in enumerate(inputs.batches):
                if h.is_inference():
                    inputs.batches[k] = (h.clone(), kw)
            calibration = self._calibration_record(trainer, inputs)
            progress = _stop_on_sigterm(trainer, default_progress() if self.progress and trainer.is_global_zero
                                        else None)
            source = _source(pl_module)
            if source is None:
                report = prune_model(lm, inputs, config, reduce=reduce, progress=progress, overwrite_inputs=True,
                                     calibration=calibration)
            else:  # disk to disk, one layer at a time on the trainer's device; rank 0 writes
                if config.execution_device is None:
                    config = dataclasses.replace(config, execution_device=str(trainer.strategy.root_device))
                report = self._prune_from_disk(trainer, source, lm, inputs, config, reduce, progress, calibration)
        previous = self._plan_of(pl_module)
        plan = report.plan if previous is None else previous.then(report.plan)
        # the settings recorded with the plan: the user's, at the ratio reached (not a step's own ratios)
        plan.config = self.config.to_dict() if self.schedule is None else \
            {**self.config.to_dict(), "ratio": target, "attn_ratio": None, "mlp_ratio": None}
        self.report = report
        self.steps.append(_step_record(report, epoch, target, trainer.world_size))
        set_plan(pl_module, plan, lm, reshape=False)
        self._log_summary(trainer, report, epoch, target)
        if source is None:
            self._save(trainer, pl_module, epoch)
        else:
            self._complete_report(trainer, report, source)

    def _prune_from_disk(self, trainer: Trainer, source: CheckpointSource, lm: nn.Module, inputs: LayerInputs,
                         config: PruningConfig, reduce, progress, calibration: dict[str, Any]) -> PruningReport:
        path = self.output_dir()
        report = prune_skeleton(source, lm, inputs, path, config, reduce=reduce, progress=progress,
                                overwrite=self.overwrite, calibration=calibration, write=trainer.is_global_zero)
        trainer.strategy.barrier("rcpu-out-of-core-written")
        self.saved_to = path
        rank_zero_info(f"pruned model written to {path} (layer by layer from {source.path})")
        return report

    def _complete_report(self, trainer: Trainer, report: PruningReport, source: CheckpointSource) -> None:
        """Give the folder written out of core the ``pruning_report.json`` fields a saved folder has (beside
        the engine's summary that :func:`prune_skeleton` wrote there)."""
        error: Optional[str] = None
        if trainer.is_global_zero:
            info = {**_report_fields(self.results_summary()), "run_id": self.run_id,
                    "weights": f"right after pruning, layer by layer from {source.path}"}
            try:
                write_pruning_files(self.saved_to, report={**report.summary(), **info})
            except Exception as exc:  # every rank must learn about it
                error = f"{type(exc).__name__}: {exc}"
        error = trainer.strategy.broadcast(error, src=0)
        if error is not None:
            raise RuntimeError(f"writing {REPORT_FILE} into {self.saved_to} failed on rank 0: {error}")

    def _log_summary(self, trainer: Trainer, report: PruningReport, epoch: Optional[int], target: float) -> None:
        total = _combine_steps(self.steps)
        when = "" if epoch is None else f" (epoch {epoch}, step {len(self.steps)})"
        rank_zero_info(
            f"pruned with {self.config.method} ({self.config.compensation}, {self.config.structure}) to ratio "
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

    def _save(self, trainer: Trainer, pl_module: LightningModule, epoch: Optional[int]) -> None:
        if self.save_dir is None:
            return
        path = self.output_dir()
        when = "" if epoch is None else f" at epoch {epoch}"
        info = {**_report_fields(self.results_summary()),
                "weights": f"right after pruning{when}, before the fine-tuning that follows"}
        # a folder this run wrote at an earlier step (or before a crash) is its own output
        self._write(trainer, pl_module, path, info, what="pruning.save_dir", overwrite=self.overwrite or self._own(path))
        self.saved_to = path
        rank_zero_info(f"pruned model saved to {path}")

    def _write(self, trainer: Trainer, pl_module: LightningModule, path: str, info: dict[str, Any], what: str,
               overwrite: bool) -> None:
        error: Optional[str] = None
        info = {**info, "run_id": self.run_id}
        if trainer.is_global_zero:
            try:
                save_hf_checkpoint(self.lm(pl_module), getattr(pl_module, "pruning_plan", None), path,
                                   getattr(pl_module, "tokenizer", None), overwrite=overwrite, extra=info, what=what)
            except Exception as exc:  # every rank must learn about it, not wait at the barrier forever
                error = f"{type(exc).__name__}: {exc}"
        error = trainer.strategy.broadcast(error, src=0)
        if error is not None:
            raise RuntimeError(f"writing {what} {path} failed on rank 0: {error}")

    # -- checkpoints of the callback itself ----------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "last_epoch": self.last_epoch, "config": self.config.to_dict(),
                "schedule": _describe_schedule(self.schedule), "save_dir": self.saved_to, "run_id": self.run_id}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        steps = state_dict.get("steps")
        if steps is None and state_dict.get("pruned"):  # a checkpoint written before steps were recorded: one step
            steps = [{"epoch": state_dict.get("prune_at_epoch") or 0, "ratio": (state_dict.get("config") or {}).get("ratio")}]
        self.steps = [dict(s) for s in steps or []]
        self.last_epoch = int(state_dict.get("last_epoch", max([s.get("epoch") or 0 for s in self.steps], default=-1)))
        self.saved_to = state_dict.get("save_dir")
        self.run_id = state_dict.get("run_id") or self.run_id  # the run it resumes (older checkpoints: none)
        saved = state_dict.get("config")
        if self.steps and saved and (saved != self.config.to_dict()
                                     or state_dict.get("schedule") != _describe_schedule(self.schedule)):
            rank_zero_info(
                f"the checkpoint was pruned with {saved} (schedule {state_dict.get('schedule')}), this callback is "
                f"configured with {self.config.to_dict()} (schedule {_describe_schedule(self.schedule)}): the "
                "checkpoint's pruned model is kept as it is and is not pruned again; schedule entries after epoch "
                f"{self.last_epoch} follow this callback")


# -- schedules --------------------------------------------------------------------------------------
def _check_ratio_value(value: Any, name: str) -> Optional[float]:
    return None if value is None else check_ratio(name, value)


def _check_schedule(schedule: Schedule, config: PruningConfig) -> Schedule:
    if schedule is None:
        return None
    if config.attn_ratio is not None or config.mlp_ratio is not None:
        raise ValueError("a schedule sets the ratio of heads and channels at each step: leave config.attn_ratio "
                         "and config.mlp_ratio unset (or use no schedule)")
    if callable(schedule):
        if config.structure != "uniform":
            raise ValueError(f"a schedule function prunes in several steps, which needs structure='uniform', "
                             f"not {config.structure!r}")
        return schedule
    if not isinstance(schedule, dict) or not schedule:
        raise ValueError(f"schedule={schedule!r} is invalid; allowed: a non-empty {{epoch: ratio}} mapping, a "
                         "function epoch -> ratio, or null")
    checked: dict[int, float] = {}
    for epoch, ratio in schedule.items():
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"schedule epoch {epoch!r} is invalid; allowed: an int >= 0")
        checked[epoch] = _check_ratio_value(ratio, f"schedule[{epoch}]")
        if checked[epoch] is None:
            raise ValueError(f"schedule[{epoch}] is null; allowed: a number in [0, 1)")
    checked = dict(sorted(checked.items()))
    values = list(checked.values())
    if any(b < a for a, b in zip(values, values[1:])):
        raise ValueError(f"schedule={checked} decreases; its ratios are cumulative (of the dense model) and may "
                         "not go down")
    if len(checked) > 1 and config.structure != "uniform":
        raise ValueError(f"a schedule of {len(checked)} steps needs structure='uniform', not {config.structure!r} "
                         "(the adaptive structure decides per-layer counts for one global ratio)")
    return checked


def _describe_schedule(schedule: Schedule) -> Any:
    if schedule is None or isinstance(schedule, dict):
        return None if schedule is None else {int(k): v for k, v in schedule.items()}
    return getattr(schedule, "__qualname__", repr(schedule))


def _source(pl_module: LightningModule) -> Optional[CheckpointSource]:
    """Where an out-of-core module's layers come from (None: its weights are in memory)."""
    return getattr(pl_module, "checkpoint_source", None)


def _builds_in_configure_model(pl_module: LightningModule) -> bool:
    return type(pl_module).configure_model is not LightningModule.configure_model


# -- what a step did, as plain data ----------------------------------------------------------------
def _step_record(report: PruningReport, epoch: Optional[int], target: float, world_size: int) -> dict[str, Any]:
    return {"epoch": epoch, "ratio": target, "params_before": report.params_before, "params_after": report.params_after,
            "decoder_params_removed": report.decoder_params_removed, "layer_params_removed": report.layer_params_removed,
            "seconds": report.seconds, "world_size": world_size, "calibration": report.plan.calibration,
            "layers": report.layers, "notes": report.notes}


def _combine_steps(steps: list[dict[str, Any]]) -> dict[str, Any]:
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


def _report_fields(summary: Optional[dict[str, Any]]) -> dict[str, Any]:
    """A results summary under the keys of ``pruning_report.json`` (what the results writer reads back)."""
    if not summary:
        return {}
    out = {k: summary[k] for k in ("params_before", "params_after", "decoder_params_removed", "model_params_removed",
                                   "layer_params_removed", "notes", "pruning_steps", "schedule") if k in summary}
    if "prune_seconds" in summary:
        out["seconds"] = summary["prune_seconds"]
    out["world_size"] = summary.get("prune_world_size")
    return out


# -- optimizer state across a pruning step ---------------------------------------------------------
def _projection_params(lm: nn.Module) -> dict[tuple[int, str], dict[str, Optional[nn.Parameter]]]:
    """The projections' parameters before a step: (layer, projection) -> {"weight": p, "bias": p or None}."""
    out = {}
    for i, layer in enumerate(decoder_layers(lm)):
        parts = layer_parts(layer)
        for name in ATTN_PROJ + MLP_PROJ:
            lin = getattr(parts, name)
            out[(i, name)] = {"weight": lin.weight, "bias": lin.bias}
    return out


def _kept_index(lp: LayerPlan, name: str, kind: str, head_dim: int) -> Optional[tuple[int, torch.Tensor]]:
    """(dim, indices) of a projection parameter's kept slices, from the step's plan (indices refer to
    the layer before the step); None: the parameter keeps its shape (o_proj/down_proj biases)."""
    if name == "q_proj":
        return 0, head_rows(lp.kept_heads, head_dim)
    if name in ("k_proj", "v_proj"):
        return 0, head_rows(lp.kept_kv_heads, head_dim)
    if name in ("gate_proj", "up_proj"):
        return 0, torch.as_tensor(lp.kept_channels, dtype=torch.long)
    if kind == "bias":
        return None
    if name == "o_proj":
        return 1, head_rows(lp.kept_heads, head_dim)
    return 1, torch.as_tensor(lp.kept_channels, dtype=torch.long)  # down_proj


def _slice_state(state: dict[str, Any], old: nn.Parameter, where: Optional[tuple[int, torch.Tensor]]) -> Optional[dict]:
    """``state`` with every tensor shaped like ``old`` cut to the kept slices; None when some tensor
    cannot be (an optimizer with factored or flattened state): the parameter then starts fresh."""
    out = {}
    for key, value in state.items():
        if torch.is_tensor(value) and value.dim() > 0:
            if value.shape != old.shape:
                return None
            value = value if where is None else value.index_select(where[0], where[1].to(value.device))
        out[key] = value
    return out


def _carry_optimizer_state(optimizers: list[torch.optim.Optimizer], old: dict, lm: nn.Module,
                           step: PruningPlan) -> None:
    """Give the optimizers the step's new parameters in place of the old ones (same optimizer objects,
    same param groups, so LR schedulers continue) with their state sliced to the kept rows/columns;
    parameters added by the step (compensation biases) join the group of their weight with fresh state."""
    new: dict[tuple[int, str], nn.Module] = {}
    for i, layer in enumerate(decoder_layers(lm)):
        parts = layer_parts(layer)
        for name in ATTN_PROJ + MLP_PROJ:
            new[(i, name)] = getattr(parts, name)
    where = {id(p): (key, kind, p) for key, params in old.items() for kind, p in params.items() if p is not None}
    for (i, name), params in old.items():  # frozen stays frozen
        for kind, p in params.items():
            q = getattr(new[(i, name)], kind)
            if p is not None and q is not None and q is not p:
                q.requires_grad_(p.requires_grad)
    fresh_warned = False
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            params = []
            for p in group["params"]:
                found = where.get(id(p))
                if found is None:
                    params.append(p)
                    continue
                (i, name), kind, _ = found
                lin = new[(i, name)]
                q = getattr(lin, kind)
                params.append(q)
                state = optimizer.state.pop(p, None)
                if q is p:
                    if state is not None:
                        optimizer.state[q] = state
                    continue
                if state:
                    sliced = _slice_state(state, p, _kept_index(step.layers[i], name, kind, _head_dim(lm, i)))
                    if sliced is None:
                        if not fresh_warned:
                            rank_zero_warn("optimizer state that is not shaped like its parameter cannot be sliced: "
                                           "pruned parameters of this optimizer start with fresh state")
                            fresh_warned = True
                    else:
                        optimizer.state[q] = sliced
                if kind == "weight":  # a bias the step added to this projection
                    bias = lin.bias
                    if bias is not None and old[(i, name)]["bias"] is None:
                        params.append(bias)
            group["params"][:] = params


def _head_dim(lm: nn.Module, layer: int) -> int:
    return layer_parts(decoder_layers(lm)[layer]).head_dim


# -- small helpers ---------------------------------------------------------------------------------
def _real_rows(loader: Any, world_size: int) -> Optional[int]:
    """How many calibration samples of this rank are real when ``loader``'s sampler pads (None: all)."""
    real = real_samples_of_rank(loader) if world_size > 1 else None
    if real is not None:
        rank_zero_info("the calibration sampler repeats samples to fill the processes: the repeats are left out "
                       "of the statistics")
    return real


def _first_rows_of(batches: list[dict[str, torch.Tensor]], n: int) -> list[dict[str, torch.Tensor]]:
    """The first ``n`` rows (sequences) of a list of model-input batches."""
    out = []
    for batch in batches:
        rows = next(iter(batch.values())).shape[0]
        if n <= 0:
            break
        out.append(first_rows(batch, min(n, rows), rows))
        n -= rows
    return out


def _too_few(nsamples: int, world_size: int, empty: Optional[int] = None) -> str:
    empty = world_size - nsamples if empty is None else empty
    return (f"{nsamples} calibration samples for {world_size} processes: {empty} process(es) would get no calibration "
            "batch, and every process needs at least one; use more calibration samples or fewer processes")


def output_fields(config: PruningConfig, nsamples: Optional[int], schedule: Schedule = None) -> dict[str, Any]:
    """Placeholder values of a pruning run's output paths: the engine settings (``ratio``: where a
    schedule ends) and the calibration size."""
    fields = {**config.to_dict(), "nsamples": nsamples}
    if isinstance(schedule, dict) and schedule:
        fields["ratio"] = schedule[max(schedule)]
    return fields


def _stop_on_sigterm(trainer: Trainer, report: Optional[Callable[[Any], None]]) -> Callable[[Any], None]:
    """The engine's per-layer progress function: ``report`` it, then stop the way Lightning's loops do
    once the trainer received SIGTERM (``trainer.received_sigterm``; cli.py stops even sooner)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    def progress(event: Any) -> None:
        if report is not None:
            report(event)
        stop = trainer.received_sigterm
        if trainer.world_size > 1:  # every rank calls this after every layer: all stop at the same layer
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            rank_zero_info(f"SIGTERM received: stopping after layer {event.index + 1}/{event.total}; nothing is saved")
            raise SIGTERMException()

    return progress


def _stop_forward(module, args, kwargs):
    raise StopForward


def save_hf_checkpoint(lm: nn.Module, plan: Union[PruningReport, PruningPlan, dict, None], path: str | Path,
                       tokenizer: Any = None, overwrite: bool = False, extra: Optional[dict] = None,
                       what: str = "pruning.save_dir") -> Path:
    """``save_pruned`` (``save_pretrained`` for a model without a plan) + tokenizer + ``pruning_report.json``
    into ``path``, atomically (see :func:`rcpu_lightning.files.atomic_dir`; an existing non-empty ``path``
    needs ``overwrite``). ``plan``: a :class:`PruningReport` (its summary is written too), a plan, or None."""
    summary: dict[str, Any] = {}
    if isinstance(plan, PruningReport):
        summary = plan.summary()
        plan = plan.plan
    plan = as_plan(plan)
    with atomic_dir(path, overwrite, what, _OVERWRITE_FLAG) as staged:
        if plan is not None:
            save_pruned(lm, plan, staged, overwrite=True)
        else:
            lm.save_pretrained(staged)
        if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(staged)
        write_pruning_files(staged, report={**summary, **(extra or {})})
    return Path(path)
