"""WikiText-2 for calibration and perplexity, from the Hugging Face hub or from local files.

Local layouts accepted for ``data_dir`` (searched in this order, raw before tokenized v1):

* ``<dir>/wiki.{split}.raw`` (wikitext-2-raw-v1, the paper's data)
* ``<dir>/{split}.txt`` or ``<dir>/wiki.{split}.tokens`` (tokenized wikitext-2-v1)
* the same inside ``<dir>/wikitext-2-raw``, ``<dir>/wikitext-2-v1`` or ``<dir>/wikitext-2/...``
  (so the shared data root works as it is).

``data_dir`` defaults to the ``RCPU_DATA_DIR`` environment variable; when neither is set the hub
dataset ``wikitext``/``wikitext-2-raw-v1`` is used.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
_WARNED_VALID: set[Path] = set()
DATA_DIR_ENV = "RCPU_DATA_DIR"
_SUBDIRS = ("", "wikitext-2-raw", "wikitext-2-v1", "wikitext-2/wikitext-2-raw", "wikitext-2/wikitext-2-v1")


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """``data_dir`` if given, else ``$RCPU_DATA_DIR``, else ``None`` (meaning: the hub)."""
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    if chosen is None:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"data_dir={str(path)!r} is not a directory")
    return path


def find_split_file(data_dir: Path, split: str) -> Path | None:
    """The local file holding ``split`` (raw preferred over tokenized v1), or ``None``."""
    names = (f"wiki.{split}.raw", f"{split}.txt", f"wiki.{split}.tokens")
    for name in names:  # raw anywhere beats v1 anywhere
        for sub in _SUBDIRS:
            candidate = data_dir / sub / name
            if candidate.is_file():
                return candidate
    return None


def read_rows(path: str | os.PathLike) -> list[str]:
    """Rows as ``datasets`` yields them from a WikiText file: one per line, a whitespace-only
    line becomes ``""``, any other line keeps its trailing ``"\\n"``."""
    with open(path, encoding="utf-8", newline="") as fh:
        return ["" if not line.strip() else line for line in fh]


def load_rows(split: str, data_dir: str | os.PathLike | None = None) -> list[str]:
    """Rows of one WikiText-2 split (``train``, ``valid`` or ``test``)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {SPLITS}")
    folder = resolve_data_dir(data_dir)
    if folder is None:
        from datasets import load_dataset

        hub_split = {"valid": "validation"}.get(split, split)
        rows = list(load_dataset("wikitext", "wikitext-2-raw-v1", split=hub_split)["text"])
    else:
        path = find_split_file(folder, split)
        if path is None:
            raise FileNotFoundError(f"no WikiText-2 {split!r} split under {folder} (looked for wiki.{split}.raw, {split}.txt, wiki.{split}.tokens)")
        rows = read_rows(path)
        log.info("WikiText-2 %s split: %s (%d rows)", split, path, len(rows))
    if not any(row.strip() for row in rows):
        raise ValueError(f"the WikiText-2 {split!r} split is empty")
    return rows


def calibration_split(data_dir: str | os.PathLike | None = None) -> str:
    """``train``, or ``valid`` when no train split exists locally (logged)."""
    folder = resolve_data_dir(data_dir)
    if folder is None or find_split_file(folder, "train") is not None:
        return "train"
    if find_split_file(folder, "valid") is not None:
        if folder not in _WARNED_VALID:  # once per folder and process
            _WARNED_VALID.add(folder)
            log.warning("no WikiText-2 train split under %s: calibrating on the valid split instead", folder)
        return "valid"
    raise FileNotFoundError(f"no WikiText-2 train or valid split under {folder} for calibration")


def token_stream(tokenizer: PreTrainedTokenizerBase, text: str) -> torch.Tensor:
    ids = tokenizer(text, return_tensors="pt").input_ids[0]  # [N]; tokenizer's own special tokens
    return ids


def perplexity_windows(
    tokenizer: PreTrainedTokenizerBase,
    seqlen: int,
    data_dir: str | os.PathLike | None = None,
    split: str = "test",
) -> torch.Tensor:
    """The test split's rows joined with ``"\\n\\n"``, tokenized once and cut into
    ``floor(N / seqlen)`` non-overlapping windows (the tail is dropped). Returns ``[n, seqlen]``."""
    if seqlen < 2:
        raise ValueError(f"seqlen={seqlen} must be >= 2 (a window scores seqlen - 1 predictions)")
    ids = token_stream(tokenizer, "\n\n".join(load_rows(split, data_dir)))
    n = ids.numel() // seqlen
    if n == 0:
        raise ValueError(f"the {split} split has {ids.numel()} tokens, fewer than one window of seqlen={seqlen}")
    return ids[: n * seqlen].view(n, seqlen)  # [n, seqlen]
