"""Default logging for the Lightning layer and the CLI, the way Lightning sets up its own logger.

When the application has configured no logging at all (the root logger has no handler), the
``rcpu_lightning`` logger gets one stderr handler at ``INFO``, so pruning progress and the end-of-run
summary show without any setup; records from processes other than global rank 0 are dropped
(Lightning's ``rank_zero_only.rank``), so a DDP run prints each line once. An application that
configures logging itself keeps full control: nothing is added then.
"""

from __future__ import annotations

import logging

from lightning.pytorch.utilities.rank_zero import rank_zero_only

PACKAGE_LOGGER = "rcpu_lightning"


class RankZeroFilter(logging.Filter):
    """Let records through on global rank 0 only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(rank_zero_only, "rank", 0) == 0


def configure_logging(level: int = logging.INFO) -> None:
    """Give the package logger a rank-zero stderr handler unless logging is already configured (idempotent)."""
    logger = logging.getLogger(PACKAGE_LOGGER)
    if logger.handlers or logging.getLogger().hasHandlers():
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(RankZeroFilter())
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
