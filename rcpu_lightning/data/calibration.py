"""Calibration windows: the one declaration of their size and seed, and the one sampler.

The paper's sampler (and its reference code): the calibration split's rows joined with a space,
tokenized once, then ``nsamples`` windows of ``seqlen`` tokens whose starts are drawn with
``random.Random(seed).randint(0, N - seqlen - 1)``. The calibration split is WikiText-2 train, or
the valid split where no train split exists (as in the offline ``shared/data``; logged).
:func:`heldout_windows` draws windows of the same split that overlap no calibration window, for
choosing settings (never the test split).
"""

from __future__ import annotations

import os
import random
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from .wikitext import calibration_split, load_rows, token_stream

__all__ = ["CalibrationConfig", "calibration_stream", "calibration_windows", "heldout_windows", "window_starts"]


@dataclass
class CalibrationConfig:
    """The calibration data fed to the pruning engine (the paper: 128 windows of 128 tokens).

    Args:
        nsamples: number of calibration windows (all processes together).
        seqlen: tokens per window.
        seed: seed of the window starts (``random.Random(seed)``, as the reference code).
        batch_size: windows per calibration forward; the engine re-runs every layer on these batches.
    """

    nsamples: int = 128
    seqlen: int = 128
    seed: int = 0
    batch_size: int = 8

    def __post_init__(self) -> None:
        for name in ("nsamples", "seqlen", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"calibration {name}={value!r} is invalid; allowed: an int >= 1")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"calibration seed={self.seed!r} is invalid; allowed: an int")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibration_stream(
    tokenizer: PreTrainedTokenizerBase, data_dir: str | os.PathLike | None = None, split: str | None = None
) -> tuple[torch.Tensor, str]:
    """``(ids [N], split)``: the calibration split's rows joined with a space, tokenized once."""
    split = split or calibration_split(data_dir)
    return token_stream(tokenizer, " ".join(load_rows(split, data_dir))), split


def window_starts(total: int, nsamples: int, seqlen: int, seed: int) -> list[int]:
    """The reference code's window starts: ``randint(0, total - seqlen - 1)`` from ``random.Random(seed)``."""
    if total < seqlen + 1:
        raise ValueError(f"{total} tokens are fewer than one window of seqlen={seqlen} (+1)")
    rng = random.Random(seed)
    return [rng.randint(0, total - seqlen - 1) for _ in range(nsamples)]


def calibration_windows(
    tokenizer: PreTrainedTokenizerBase,
    nsamples: int,
    seqlen: int,
    seed: int,
    data_dir: str | os.PathLike | None = None,
    split: str | None = None,
) -> torch.Tensor:
    """``nsamples`` random windows of ``seqlen`` tokens of the calibration split -> ``[nsamples, seqlen]``."""
    CalibrationConfig(nsamples, seqlen, seed)  # validates
    ids, split = calibration_stream(tokenizer, data_dir, split)
    if ids.numel() < seqlen + 1:
        raise ValueError(f"the {split} split has {ids.numel()} tokens, fewer than one window of seqlen={seqlen} (+1)")
    starts = window_starts(ids.numel(), nsamples, seqlen, seed)
    return torch.stack([ids[s : s + seqlen] for s in starts])  # [nsamples, seqlen]


def heldout_windows(
    tokenizer: PreTrainedTokenizerBase,
    n: int,
    calibration: CalibrationConfig,
    data_dir: str | os.PathLike | None = None,
    seed_offset: int = 10_000,
    avoid: list[int] | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """``n`` windows of the calibration split that overlap no calibration window -> ``([n, seqlen], starts)``.

    Starts are drawn with ``random.Random(seed + seed_offset)``; a start within ``seqlen`` tokens of
    a calibration window, of an earlier held-out window or of a start in ``avoid`` is rejected.
    """
    ids, _ = calibration_stream(tokenizer, data_dir)
    L = calibration.seqlen
    taken = window_starts(ids.numel(), calibration.nsamples, L, calibration.seed) + list(avoid or [])
    free = ids.numel() - L - (2 * L - 1) * len(taken)
    if n > max(free, 0) // L:
        raise ValueError(f"the calibration split cannot hold {n} more windows of {L} tokens beside {len(taken)} others")
    rng, starts = random.Random(calibration.seed + seed_offset), []
    while len(starts) < n:
        st = rng.randint(0, ids.numel() - L - 1)
        if all(abs(st - c) >= L for c in taken + starts):
            starts.append(st)
    return torch.stack([ids[st : st + L] for st in starts]), starts
