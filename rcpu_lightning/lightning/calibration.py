"""The pruning callback's calibration data and the checks it makes before any work (strategy, enough
samples for every rank), as functions of the trainer."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable, Optional, Union

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from ..pruning.inputs import StopForward, first_rows
from ..pruning.streaming import CheckpointSource
from .data import real_samples_of_rank

CalibrationSource = Union[Iterable, Callable[..., Iterable], None]


def check_strategy(trainer: Trainer, what: str, advice: Optional[str] = None) -> None:
    """Refuse a strategy other than single device or DDP for ``what``."""
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


def calibration_source(trainer: Trainer, src: CalibrationSource) -> Callable[[], Iterable]:
    """A function returning the calibration batches: ``src`` (an iterable, or a callable taking nothing
    or ``(trainer, pl_module)``), else the DataModule's ``calibration_dataloader``."""
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


def real_rows(loader: Any, world_size: int) -> Optional[int]:
    """How many calibration samples of this rank are real when ``loader``'s sampler pads (None: all)."""
    real = real_samples_of_rank(loader) if world_size > 1 else None
    if real is not None:
        rank_zero_info("the calibration sampler repeats samples to fill the processes: the repeats are left out "
                       "of the statistics")
    return real


def first_rows_of(batches: list[dict[str, torch.Tensor]], n: int) -> list[dict[str, torch.Tensor]]:
    """The first ``n`` rows (sequences) of a list of model-input batches."""
    out = []
    for batch in batches:
        rows = next(iter(batch.values())).shape[0]
        if n <= 0:
            break
        out.append(first_rows(batch, min(n, rows), rows))
        n -= rows
    return out


def too_few(nsamples: int, world_size: int, empty: Optional[int] = None) -> str:
    empty = world_size - nsamples if empty is None else empty
    return (f"{nsamples} calibration samples for {world_size} processes: {empty} process(es) would get no calibration "
            "batch, and every process needs at least one; use more calibration samples or fewer processes")


def checkpoint_source(pl_module: LightningModule) -> Optional[CheckpointSource]:
    """Where an out-of-core module's layers come from (None: its weights are in memory)."""
    return getattr(pl_module, "checkpoint_source", None)


def builds_in_configure_model(pl_module: LightningModule) -> bool:
    return type(pl_module).configure_model is not LightningModule.configure_model


def stop_forward(module, args, kwargs):
    """A forward pre-hook that ends the calibration forward (after layer 0's inputs are recorded)."""
    raise StopForward


def batches_of_rank(trainer: Trainer, loader: Iterable) -> list[dict[str, torch.Tensor]]:
    """This rank's calibration batches of ``loader`` as model inputs: all of a ``DistributedSampler``'s,
    else every ``world_size``-th; without the duplicates a padding sampler appended."""
    from torch.utils.data import DistributedSampler

    from ..pruning.inputs import model_inputs

    sharded = isinstance(getattr(loader, "sampler", None), DistributedSampler)
    world, rank = trainer.world_size, trainer.global_rank
    batches = [model_inputs(b) for i, b in enumerate(loader) if sharded or world <= 1 or i % world == rank]
    real = real_rows(loader, world)
    return batches if real is None else first_rows_of(batches, real)


def calibration_record(trainer: Trainer, batches: list, configured: dict[str, Any]) -> dict[str, Any]:
    """The calibration data as configured, with the sample count measured over all ranks (one
    collective, the first of the pruning work, so an empty rank fails together with the others).
    ``batches``: this rank's recorded (hidden states [B, T, H], kwargs) pairs."""
    rows = sum(h.shape[0] for h, _ in batches)
    seqlen = max((h.shape[1] for h, _ in batches), default=0)
    counts = torch.tensor([float(rows), float(rows == 0)], dtype=torch.float64)
    if trainer.world_size > 1:
        counts = trainer.strategy.reduce(counts.to(trainer.strategy.root_device), reduce_op="sum").cpu()
    total, empty = int(counts[0]), int(counts[1])
    if total == 0:
        raise ValueError("no calibration batch reached the model: the calibration data is empty")
    if empty:
        raise ValueError(too_few(total, trainer.world_size, empty))
    record = {k: v for k, v in configured.items() if k != "batch_size"}
    record.update(nsamples=total, seqlen=seqlen)
    if not configured:
        record["source"] = "the dataloader given to the trainer or the callback"
    return record


class PredictCapture:
    """The predict loop's calibration: a catcher of decoder layer 0's inputs on the LM, and (for a
    module with ``stops_calibration_forward``) a hook that ends each forward right after layer 0's
    inputs are recorded."""

    def __init__(self) -> None:
        self.catcher = None
        self._stop_handle = None

    def start(self, trainer: Trainer, lm: torch.nn.Module, catcher_class: type, offload: bool,
              stop_after_layer0: bool, dtype: Optional[torch.dtype] = None) -> None:
        loaders = trainer.predict_dataloaders
        loaders = list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
        real = [real_rows(loader, trainer.world_size) for loader in loaders]
        if len(loaders) > 1 and any(r is not None for r in real):
            raise ValueError("a calibration loader's sampler repeats samples to fill the processes, which cannot be "
                             "undone with several predict loaders; use rcpu_lightning.lightning.UnpaddedDistributedSampler")
        self.catcher = catcher_class(lm, offload=offload, stop=False, max_rows=real[0], dtype=dtype)
        self.catcher.__enter__()
        if stop_after_layer0:  # registered after the catcher's hook, so layer 0's inputs are recorded first
            from ..models.adapter import decoder_layers

            self._stop_handle = decoder_layers(lm)[0].register_forward_pre_hook(stop_forward, with_kwargs=True)

    def stop(self) -> Any:
        """Remove the hooks; the catcher (its ``inputs``), or None when none was started."""
        catcher, self.catcher = self.catcher, None
        if catcher is not None:
            catcher.__exit__(None, None, None)
        if self._stop_handle is not None:
            self._stop_handle.remove()
            self._stop_handle = None
        return catcher


def check_data(trainer: Trainer, src: CalibrationSource, nsamples: Optional[int], fit: bool = False) -> None:
    """Refuse a fit without calibration data, and fewer calibration samples than processes."""
    if fit:
        calibration_source(trainer, src)  # there is calibration data
    if nsamples is not None and nsamples < trainer.world_size:  # the same answer on every rank
        raise ValueError(too_few(nsamples, trainer.world_size))


def ordinary_tensors(inputs: Any) -> None:
    """Captured in an inference-mode loop, recorded inputs may be inference tensors: replace them by
    ordinary copies (one batch at a time, so two full copies never coexist)."""
    for k, (h, kw) in enumerate(inputs.batches):
        if h.is_inference():
            inputs.batches[k] = (h.clone(), kw)
