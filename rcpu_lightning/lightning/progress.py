"""`LogProgress`: loop progress as log lines, for output that is not a terminal.

Lightning's progress bars redraw one terminal line; written to a file or a pipe (CI logs, ``nohup``,
``| tee``) they show nothing useful until a loop ends, which for a full WikiText-2 evaluation is many
minutes of silence. ``LogProgress`` is a Lightning ``ProgressBar`` that logs one line per loop and
dataloader every ``interval`` seconds instead (done / total batches, elapsed, estimated time left; in
training also the loss the module shows in the progress bar, e.g. ``train/loss``).
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
        self._train_total: Any = None  # batches of the current training epoch, fixed at its start
        self._train_done = 0  # batches of the current training epoch done so far
        self._train_reported = 0  # the ``done`` of the last line of the current epoch

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    # -- reporting --------------------------------------------------------------------------------
    def _start(self) -> None:
        self._started = self._last = time.monotonic()
        self.reset_dataloader_idx_tracker()

    def _report(self, what: str, done: int, total: Any, final: bool = False, extra: str = "") -> bool:
        """Log one line (at most every ``interval`` seconds unless ``final``); True when it did."""
        now = time.monotonic()
        if not self._enabled or (not final and now - self._last < self.interval):
            return False
        self._last = now
        elapsed = now - self._started
        known = isinstance(total, (int, float)) and math.isfinite(total) and total >= done > 0
        left = f", about {elapsed / done * (total - done):.0f} s left" if known and not final else ""
        log.info("%s: %d/%s batches, %.0f s%s%s", what, done, int(total) if known else "?", elapsed, left, extra)
        return True

    @staticmethod
    def epoch_batches(trainer: Trainer) -> Any:
        """Training batches this epoch will run, decided at its start: Lightning's own
        ``total_train_batches`` shrinks with the steps left while the epoch runs."""
        total = trainer.num_training_batches
        if trainer.max_steps is not None and trainer.max_steps > 0:
            steps_left = max(trainer.max_steps - trainer.global_step, 0)
            total = min(total, steps_left * max(int(trainer.accumulate_grad_batches), 1))
        return total

    def _train_metrics(self, trainer: Trainer, pl_module: LightningModule) -> str:
        """``, train/loss 3.214`` from the metrics the module logs with ``prog_bar=True`` (those of training)."""
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items()
                   if k != "v_num" and "val" not in k and "test" not in k}
        shown = []
        for key, value in metrics.items():
            value = value.item() if hasattr(value, "item") else value
            shown.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
        return "".join(f", {item}" for item in shown)

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
        self._train_total = self.epoch_batches(trainer)
        self._train_done = self._train_reported = 0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._train_done == 0:  # the clock starts with the first batch, not with what ran before it at the
            self._started = self._last = time.monotonic()  # epoch start (a pruning step: it logs its own time)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._train_done = batch_idx + 1
        final = self._train_done == self._train_total
        if self._report(f"epoch {trainer.current_epoch}", self._train_done, self._train_total, final,
                        self._train_metrics(trainer, pl_module)):
            self._train_reported = self._train_done

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._train_done and self._train_reported != self._train_done:  # stopped early (max_time, a callback)
            self._report(f"epoch {trainer.current_epoch}", self._train_done, self._train_done, True,
                         self._train_metrics(trainer, pl_module))

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
