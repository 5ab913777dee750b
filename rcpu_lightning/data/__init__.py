"""WikiText-2 (hub or local files) and the calibration windows fed to the pruning engine."""

from .calibration import CalibrationConfig, calibration_stream, calibration_windows, heldout_windows, window_starts
from .wikitext import (
    DATA_DIR_ENV,
    calibration_split,
    find_split_file,
    load_rows,
    perplexity_windows,
    read_rows,
    resolve_data_dir,
    token_stream,
)

__all__ = [
    "CalibrationConfig",
    "DATA_DIR_ENV",
    "calibration_split",
    "calibration_stream",
    "calibration_windows",
    "find_split_file",
    "heldout_windows",
    "load_rows",
    "perplexity_windows",
    "read_rows",
    "resolve_data_dir",
    "token_stream",
    "window_starts",
]
