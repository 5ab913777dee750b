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


#: What to tell a user whose data cannot be found (locally or on the hub).
LOCAL_DATA_HINT = (f"set {DATA_DIR_ENV} (or data.data_dir) to the folder holding wikitext-2/ and zeroshot/ "
                   "(README, Data)")


def data_dir_origin(data_dir: str | os.PathLike | None) -> str:
    """Where the data folder in use comes from, for messages: ``data_dir`` or ``$RCPU_DATA_DIR``."""
    return "data_dir" if data_dir is not None else f"${DATA_DIR_ENV}"


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """``data_dir`` if given, else ``$RCPU_DATA_DIR``, else ``None`` (meaning: the hub)."""
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    if chosen is None:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        where = ("data_dir (data.data_dir)" if data_dir is not None
                 else f"the environment variable {DATA_DIR_ENV}")
        raise FileNotFoundError(f"{where} is {str(chosen)!r}, which is not a directory: point it at the folder "
                                "holding wikitext-2/ and zeroshot/" + ("" if data_dir is not None else
                                f", or unset {DATA_DIR_ENV} to read the Hugging Face hub"))
    return path


def hub_failure(what: str, exc: BaseException) -> OSError:
    """The error for data that could not be read from the Hugging Face hub: the cause, then the local way."""
    cause = (str(exc).strip().splitlines() or [""])[0][:200]
    return OSError(f"{what} could not be read from the Hugging Face hub ({type(exc).__name__}: {cause}); no local "
                   f"data folder was given: {LOCAL_DATA_HINT}")


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
        log.info("no data folder (data.data_dir, $%s): reading WikiText-2 %s from the Hugging Face hub", DATA_DIR_ENV,
                 split)
        try:
            rows = list(load_dataset("wikitext", "wikitext-2-raw-v1", split=hub_split)["text"])
        except Exception as exc:  # no network, hub down, offline mode: say how to use local files instead
            raise hub_failure(f"WikiText-2 {split!r}", exc) from exc
    else:
        path = find_split_file(folder, split)
        if path is None:
            raise FileNotFoundError(f"no WikiText-2 {split!r} split under {folder} ({data_dir_origin(data_dir)}; looked "
                                    f"for wiki.{split}.raw, {split}.txt, wiki.{split}.tokens)")
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
            log.warning("no WikiText-2 train split under %s: calibration (and fit's training and validation "
                        "windows) use the valid split instead", folder)
        return "valid"
    raise FileNotFoundError(f"no WikiText-2 train or valid split under {folder} ({data_dir_origin(data_dir)}) for "
                            "calibration")


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
