"""WikiText-2 calibration and perplexity data (hub or local files)."""

from .wikitext import (
    DATA_DIR_ENV,
    calibration_split,
    calibration_windows,
    find_split_file,
    load_rows,
    perplexity_windows,
    read_rows,
    resolve_data_dir,
)

__all__ = [
    "DATA_DIR_ENV",
    "calibration_split",
    "calibration_windows",
    "find_split_file",
    "load_rows",
    "perplexity_windows",
    "read_rows",
    "resolve_data_dir",
]
