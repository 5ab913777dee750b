"""Lightning layer: the LightningModule, the DataModule, the pruning callback, results and the CLI.

* :class:`CausalLMModule` wraps a Hugging Face causal LM (calibration forward in ``predict_step``,
  perplexity / zero-shot evaluation in ``validation_step``/``test_step``) and carries the pruning
  plan through checkpoints (:mod:`.checkpointing`; :class:`PruningPlanMixin` gives any LightningModule the same).
* :class:`RCPUDataModule`: calibration windows, WikiText-2 perplexity windows, zero-shot tasks,
  sharded over ranks without duplicates (:class:`UnpaddedDistributedSampler`).
* :class:`RCPUPruningCallback`: calibrate -> prune -> save, in a predict loop or in ``fit``.
* :class:`RCPUResultsWriter`: one JSON per run (rank 0, atomic).
* :class:`LogProgress`: loop progress as log lines (for output that is not a terminal).
* :mod:`.cli`: ``RCPUTrainer`` (adds ``prune``) and ``RCPUCLI`` (the repo's ``cli.py``).
"""

from ..pruning.io import save_hf_checkpoint
from .callback import RCPUPruningCallback
from .checkpointing import CHECKPOINT_PLAN_KEY, PruningPlanMixin, find_causal_lm, install_plan_hooks
from .data import RCPUDataModule, TensorRows, UnpaddedDistributedSampler
from .logs import configure_logging
from .module import CausalLMModule, ZeroShotBatch
from .progress import LogProgress
from .results import RCPUResultsWriter

__all__ = [
    "CHECKPOINT_PLAN_KEY",
    "CausalLMModule",
    "LogProgress",
    "PruningPlanMixin",
    "RCPUDataModule",
    "RCPUPruningCallback",
    "RCPUResultsWriter",
    "TensorRows",
    "UnpaddedDistributedSampler",
    "ZeroShotBatch",
    "configure_logging",
    "find_causal_lm",
    "install_plan_hooks",
    "save_hf_checkpoint",
]
