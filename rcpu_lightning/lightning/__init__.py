"""Lightning layer: the LightningModule, the DataModule, the pruning callback, results and the CLI.

* :class:`CausalLMModule` wraps a Hugging Face causal LM (calibration forward in ``predict_step``,
  perplexity / zero-shot evaluation in ``validation_step``/``test_step``) and carries the pruning
  plan through checkpoints (:class:`PruningPlanMixin` gives any LightningModule the same).
* :class:`RCPUDataModule`: calibration windows, WikiText-2 perplexity windows, zero-shot tasks,
  sharded over ranks without duplicates (:class:`UnpaddedDistributedSampler`).
* :class:`RCPUPruningCallback`: calibrate -> prune -> save, in a predict loop or in ``fit``.
* :class:`RCPUResultsWriter`: one JSON per run (rank 0, atomic).
* :mod:`.cli`: ``RCPUTrainer`` (adds ``prune``) and ``RCPUCLI`` (the repo's ``cli.py``).
"""

from .callback import RCPUPruningCallback, save_hf_checkpoint
from .data import RCPUDataModule, TensorRows, UnpaddedDistributedSampler
from .module import CHECKPOINT_PLAN_KEY, CausalLMModule, PruningPlanMixin, StopForward, ZeroShotBatch, find_causal_lm
from .results import RCPUResultsWriter

__all__ = [
    "CHECKPOINT_PLAN_KEY",
    "CausalLMModule",
    "PruningPlanMixin",
    "RCPUDataModule",
    "RCPUPruningCallback",
    "RCPUResultsWriter",
    "StopForward",
    "TensorRows",
    "UnpaddedDistributedSampler",
    "ZeroShotBatch",
    "find_causal_lm",
    "save_hf_checkpoint",
]
