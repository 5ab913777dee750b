"""`LogProgress`: loop progress as log lines, for output that is not a terminal.

Lightning's progress bars redraw one terminal line; written to a file or a pipe (CI logs, ``nohup``,
``| tee``) they show nothing useful until a loop ends, which for a full WikiText-2 evaluation is many
minutes of silence. ``LogProgress`` is a Lightning ``ProgressBar`` that logs one line per loop and
dataloader every ``interval`` seconds instead (done / total batches, elapsed, estimated time left).
The CLI uses it whenever stderr is not a terminal; add it to ``Trainer(callbacks=[...])`` yourself
in the same situation. Lightning disables progress bars on every rank but 0.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks.progress import ProgressBar

log = logging.getLogger(__name__)


class LogProgress(ProgressBar):
    """Log ``<loop>: done/total batches, elapsed, ~left`` every ``interval`` seconds and at the end of a loop.

    Args:
        interval: seconds between two lines of the same loop.
    """

    def __init__(self, interval: float = 30.0) -> None:
        super().__init__()
        if not interval > 0:
            raise ValueError(f"interval={interval!r} is invalid; allowed: a number of seconds > 0")
        self.interval = float(interval)
        self._enabled = True
        self._started = self._last = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    # -- reporting --------------------------------------------------------------------------------
    def _start(self) -> None:
        self._started = self._last = time.monotonic()
        self.reset_dataloader_idx_tracker()

    def _report(self, what: str, done: int, total: Any, final: bool = False) -> None:
        now = time.monotonic()
        if not self._enabled or (not final and now - self._last < self.interval):
            return
        self._last = now
        elapsed = now - self._started
        known = isinstance(total, (int, float)) and math.isfinite(total) and total > 0
        left = f", about {elapsed / done * (total - done):.0f} s left" if known and done and not final else ""
        log.info("%s: %d/%s batches, %.0f s%s", what, done, int(total) if known else "?", elapsed, left)

    def _eval(self, what: str, trainer: Trainer, batch_idx: int, dataloader_idx: int) -> None:
        if self.has_dataloader_changed(dataloader_idx):  # a new dataloader: its own count
            self._started = self._last = time.monotonic()
        total = {"validate": lambda: self.total_val_batches_current_dataloader,
                 "test": lambda: self.total_test_batches_current_dataloader,
                 "predict": lambda: self.total_predict_batches_current_dataloader}[what]()
        counts = {"validate": trainer.num_val_batches, "test": trainer.num_test_batches,
                  "predict": trainer.num_predict_batches}[what]
        label = f"{what} (dataloader {dataloader_idx + 1}/{len(counts)})" if len(counts) > 1 else what
        self._report(label, batch_idx + 1, total, final=batch_idx + 1 == total)

    # -- hooks ------------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        total = self.total_train_batches
        self._report(f"epoch {trainer.current_epoch}", batch_idx + 1, total, final=batch_idx + 1 == total)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start()

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            self._eval("validate", trainer, batch_idx, dataloader_idx)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start()

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval("test", trainer, batch_idx, dataloader_idx)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start()

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval("predict", trainer, batch_idx, dataloader_idx)
