"""`RCPUDataModule`: calibration windows (predict), training and held-out validation windows (fit,
validate), WikiText-2 test perplexity windows and zero-shot tasks (test).

Which tokens serve what, so that no number is measured on data a decision was made on:

* **calibration**: ``calibration.nsamples`` random windows of the calibration split (WikiText-2
  train, or the valid split where no train split exists, as offline);
* **training** (fit): ``train_nsamples`` windows of the calibration split that overlap no
  calibration window;
* **validation** (fit, validate): ``val_nsamples`` windows of the calibration split that overlap
  neither a calibration nor a training window (:func:`~rcpu_lightning.data.heldout_windows`);
* **test**: the WikiText-2 test split (perplexity) and the zero-shot tasks; never used above.

Distributed evaluation must see every sample exactly once. Lightning's ``DistributedSampler`` pads
with duplicates for validate/test, so every evaluation and calibration loader here carries its own
:class:`UnpaddedDistributedSampler` (a ``DistributedSampler`` subclass, so Lightning keeps it even
with ``use_distributed_sampler=True``): rank ``r`` takes samples ``r, r + W, r + 2W, ...``; ranks
may differ by one sample. The metrics keep sums, so the result equals the single-process value.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any, Optional, Sequence

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..data.calibration import CalibrationConfig, calibration_windows, heldout_windows
from ..data.wikitext import DATA_DIR_ENV, calibration_split, find_split_file, perplexity_windows, resolve_data_dir
from ..eval.tasks import ALL_TASKS, TASK_SPECS, load_items
from ..eval import MultipleChoiceDataset
from .module import ZeroShotBatch

log = logging.getLogger(__name__)

class UnpaddedDistributedSampler(DistributedSampler):
    """Strided, unshuffled, no padding and no duplicates: rank ``r`` of ``W`` gets ``r, r+W, ...``.

    Unlike Lightning's ``UnrepeatedDistributedSampler`` a rank may receive no sample at all (the
    metrics' ``compute()`` still syncs; collectives happen only at epoch end)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.total_size = len(dataset)
        self.num_samples = len(range(rank, self.total_size, num_replicas))

    def __iter__(self):
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


def real_samples_of_rank(loader: Any) -> Optional[int]:
    """How many of this rank's samples are real when ``loader``'s sampler pads with duplicates, else None.

    torch's ``DistributedSampler`` with ``drop_last=False`` makes the dataset divisible by the world size
    by repeating its first samples at the end: global positions ``N .. total_size - 1``, which rank ``r``
    gets as its last samples (it takes positions ``r, r + W, ...``), so its real ones are the first
    ``len(range(r, N, W))`` it yields, whatever the shuffle. A subclass that draws its samples another
    way (its own ``__iter__``) while padding cannot be undone: that is refused, naming the fix.
    """
    sampler = getattr(loader, "sampler", None)
    if not isinstance(sampler, DistributedSampler):
        sampler = getattr(getattr(loader, "batch_sampler", None), "sampler", None)
    if not isinstance(sampler, DistributedSampler) or sampler.drop_last:
        return None
    size = len(sampler.dataset)
    if sampler.total_size <= size:
        return None
    if type(sampler).__iter__ not in _PADDING_ITERS:
        raise ValueError(
            f"the calibration loader's sampler ({type(sampler).__name__}) repeats {sampler.total_size - size} of its "
            f"{size} samples to fill {sampler.num_replicas} processes (the repeats would count twice); use "
            "rcpu_lightning.lightning.UnpaddedDistributedSampler, DistributedSampler(drop_last=True) or a plain DataLoader")
    return len(range(sampler.rank, size, sampler.num_replicas))


def _padding_iters() -> tuple:
    """``__iter__`` of the samplers that pad exactly as torch's ``DistributedSampler`` does."""
    iters = [DistributedSampler.__iter__]
    try:  # Lightning's wrapper of a user sampler: DistributedSampler's positions, mapped
        from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

        iters.append(DistributedSamplerWrapper.__iter__)
    except ImportError:  # pragma: no cover - another Lightning layout
        pass
    return tuple(iters)


_PADDING_ITERS = _padding_iters()


class TensorRows(Dataset):
    """Rows of a ``[n, T]`` tensor (one window per item; the default collate stacks them)."""

    def __init__(self, rows: torch.Tensor) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return self.rows.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.rows[index]


def _collate_zero_shot(items: Sequence[Any], bos: Optional[bool]) -> ZeroShotBatch:
    return ZeroShotBatch(list(items), bos=bos)


class RCPUDataModule(LightningDataModule):
    """WikiText-2 calibration / perplexity windows and zero-shot multiple-choice tasks.

    Args:
        data_dir: local data root (``wikitext-2/`` and ``zeroshot/`` as in ``shared/data``); ``None``:
            ``$RCPU_DATA_DIR``, else the Hugging Face hub.
        tokenizer: tokenizer object or spec; default: the LightningModule's ``tokenizer``.
        calibration: the calibration windows fed to the pruning engine (the paper: 128 x 128).
        eval_seqlen: perplexity window length ``L`` (FLAP/LLM-Pruner: 128).
        eval_batch_size: perplexity windows per forward.
        ppl_split: WikiText-2 split for test perplexity (``test``).
        ppl_max_windows: test on the first N windows only (quick checks; ``None`` = all). Recorded.
        tasks: zero-shot tasks (``boolq``, ``piqa``, ``hellaswag``, ``winogrande``, ``arc_easy``,
            ``arc_challenge``, ``openbookqa``); each is one more test dataloader after perplexity.
        task_limit: first N documents per task (``None`` = full split).
        bos: zero-shot BOS switch: ``None`` tokenizer default, ``False`` never, ``True`` always.
        task_batch_size: items per zero-shot batch.
        perplexity: include the perplexity dataloader in test (``False``: also no validation).
        train_nsamples: training windows of ``calibration.seqlen`` tokens for ``fit``: random windows of
            the calibration split that overlap no calibration window (seed ``calibration.seed + 1``).
        train_batch_size: windows per training step.
        val_nsamples: validation windows (fit, validate) of ``calibration.seqlen`` tokens: windows of the
            calibration split that overlap no calibration or training window (seed ``calibration.seed + 2``);
            scored with ``eval_batch_size`` windows per forward.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        data_dir: Optional[str] = None,
        tokenizer: Any = None,
        calibration: CalibrationConfig = CalibrationConfig(),
        eval_seqlen: int = 128,
        eval_batch_size: int = 8,
        ppl_split: str = "test",
        ppl_max_windows: Optional[int] = None,
        tasks: Optional[list[str]] = None,
        task_limit: Optional[int] = None,
        bos: Optional[bool] = None,
        task_batch_size: int = 16,
        perplexity: bool = True,
        train_nsamples: int = 256,
        train_batch_size: int = 4,
        val_nsamples: int = 64,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(calibration, CalibrationConfig):
            raise TypeError(f"calibration must be a CalibrationConfig, got {type(calibration).__name__}")
        for name, value in (("eval_seqlen", eval_seqlen), ("eval_batch_size", eval_batch_size),
                            ("task_batch_size", task_batch_size), ("train_nsamples", train_nsamples),
                            ("train_batch_size", train_batch_size), ("val_nsamples", val_nsamples)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} is invalid; allowed: an int >= 1")
        if eval_seqlen < 2:
            raise ValueError(f"eval_seqlen={eval_seqlen!r} is invalid; allowed: an int >= 2")
        for name, value in (("ppl_max_windows", ppl_max_windows), ("task_limit", task_limit)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}={value!r} is invalid; allowed: an int >= 1 or null")
        tasks = list(tasks or [])
        unknown = [t for t in tasks if t not in ALL_TASKS]
        if unknown:
            raise ValueError(f"tasks={unknown!r} are unknown; allowed: {list(ALL_TASKS)}")
        if not perplexity and not tasks:
            raise ValueError("perplexity=False and no tasks: nothing to evaluate")
        self.save_hyperparameters(ignore=["tokenizer"] if not isinstance(tokenizer, (str, type(None))) else [])
        self.calibration = dataclasses.replace(calibration)  # a copy: the default instance is shared
        resolved = resolve_data_dir(data_dir)
        self.data_dir = None if resolved is None else str(resolved)
        self._tokenizer = tokenizer
        self.tasks = tasks
        self._cache: dict[str, Any] = {}

    # -- checks ------------------------------------------------------------------------------
    @staticmethod
    def check_local_data(data_dir: Optional[str], calibration: bool, evaluation: bool, ppl_split: str = "test",
                         perplexity: bool = True, tasks: Sequence[str] = ()) -> None:
        """Refuse now, with every missing file named, what a loop would fail to read later (local data only;
        ``data_dir`` None or unset means the hub, which cannot be checked without downloading)."""
        folder = resolve_data_dir(data_dir)
        if folder is None:
            return
        missing = []
        if calibration:
            try:
                calibration_split(folder)
            except FileNotFoundError as exc:
                missing.append(str(exc))
        if evaluation and perplexity and find_split_file(folder, ppl_split) is None:
            missing.append(f"no WikiText-2 {ppl_split!r} split under {folder} (perplexity)")
        for task in tasks if evaluation else ():
            path = folder / "zeroshot" / TASK_SPECS[task].local_file
            if not path.is_file():
                missing.append(f"no {path} (zero-shot task {task!r})")
        if missing:
            origin = "data.data_dir" if data_dir is not None else f"${DATA_DIR_ENV}"
            raise FileNotFoundError("; ".join(missing) + f" (the data folder {str(folder)!r} comes from {origin})")

    def setup(self, stage: str) -> None:
        h = self.hparams
        # fit and validate read training/validation windows of the calibration split; test reads the test split
        self.check_local_data(self.data_dir, calibration=stage in ("fit", "validate", "predict"),
                              evaluation=stage == "test", ppl_split=h.ppl_split, perplexity=h.perplexity,
                              tasks=self.tasks)

    # -- helpers -----------------------------------------------------------------------------
    @property
    def tokenizer(self):
        tok = self._tokenizer
        if tok is None and self.trainer is not None and self.trainer.lightning_module is not None:
            tok = getattr(self.trainer.lightning_module, "tokenizer", None)
        if isinstance(tok, (str, os.PathLike)):
            from transformers import AutoTokenizer

            tok = self._tokenizer = AutoTokenizer.from_pretrained(str(tok))
        if tok is None:
            raise ValueError("RCPUDataModule needs a tokenizer: pass tokenizer= or use a LightningModule with .tokenizer")
        return tok

    def _dist(self) -> tuple[int, int]:
        if self.trainer is None:
            return 1, 0
        return self.trainer.world_size, self.trainer.global_rank

    def _loader(self, dataset: Dataset, batch_size: int, collate_fn=None) -> DataLoader:
        world, rank = self._dist()
        sampler = UnpaddedDistributedSampler(dataset, world, rank) if world > 1 else None
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, collate_fn=collate_fn,
                          num_workers=self.hparams.num_workers)

    # -- data --------------------------------------------------------------------------------
    def calibration_rows(self) -> torch.Tensor:
        """``[nsamples, seqlen]`` calibration windows (cached)."""
        if "calib" not in self._cache:
            c = self.calibration
            self._cache["calib"] = calibration_windows(self.tokenizer, c.nsamples, c.seqlen, c.seed, self.data_dir)
        return self._cache["calib"]

    def calibration_info(self) -> dict[str, Any]:
        """What the calibration windows are, for the pruning plan and the results record."""
        split = calibration_split(self.data_dir)
        source = f"WikiText-2 {split} split" + (f" ({self.data_dir})" if self.data_dir else " (Hugging Face hub)")
        return {**self.calibration.to_dict(), "source": source}

    def perplexity_rows(self) -> torch.Tensor:
        """``[n, eval_seqlen]`` perplexity windows (the first ``ppl_max_windows`` when set; cached)."""
        if "ppl" not in self._cache:
            h = self.hparams
            rows = perplexity_windows(self.tokenizer, h.eval_seqlen, self.data_dir, split=h.ppl_split)
            if h.ppl_max_windows is not None and h.ppl_max_windows < rows.shape[0]:
                log.warning("perplexity on the first %d of %d windows only (ppl_max_windows)", h.ppl_max_windows, rows.shape[0])
                rows = rows[: h.ppl_max_windows]
            self._cache["ppl"] = rows
        return self._cache["ppl"]

    def task_dataset(self, task: str) -> MultipleChoiceDataset:
        key = f"task:{task}"
        if key not in self._cache:
            self._cache[key] = MultipleChoiceDataset(load_items(task, data_dir=self.data_dir, limit=self.hparams.task_limit))
        return self._cache[key]

    # fit: training and validation windows, disjoint from the calibration windows and from each other
    def _heldout(self, kind: str) -> tuple[torch.Tensor, list[int]]:
        """``train`` or ``val`` windows of the calibration split (see the module docstring); cached."""
        if kind not in self._cache:
            h, c = self.hparams, self.calibration
            if kind == "train":
                n, offset, avoid = h.train_nsamples, 1, None
            else:
                n, offset, avoid = h.val_nsamples, 2, self._heldout("train")[1]
            self._cache[kind] = heldout_windows(self.tokenizer, n, c, self.data_dir, seed_offset=offset, avoid=avoid)
            split = calibration_split(self.data_dir)
            what = ("training on %d windows of %d tokens of the WikiText-2 %s split that overlap no calibration window"
                    if kind == "train" else "validating on %d windows of %d tokens of the WikiText-2 %s split that "
                    "overlap no calibration or training window (the test split is kept for testing)")
            log.info(what, n, c.seqlen, split)
        return self._cache[kind]

    def train_rows(self) -> torch.Tensor:
        """``[train_nsamples, calibration.seqlen]`` training windows (cached)."""
        return self._heldout("train")[0]

    def val_rows(self) -> torch.Tensor:
        """``[val_nsamples, calibration.seqlen]`` validation windows (cached)."""
        return self._heldout("val")[0]

    def describe(self, evaluation: Optional[str] = None) -> dict[str, Any]:
        """Settings that belong in a results file (``evaluation="validate"``: the validation windows')."""
        h = self.hparams
        c = self.calibration
        out = {"calib_samples": c.nsamples, "calib_seqlen": c.seqlen, "calib_seed": c.seed, "seqlen": h.eval_seqlen,
               "ppl_split": h.ppl_split, "ppl_max_windows": h.ppl_max_windows, "task_names": list(self.tasks),
               "task_limit": h.task_limit, "bos": h.bos, "data_dir": self.data_dir}
        if "ppl" in self._cache:
            out["ppl_windows"] = int(self._cache["ppl"].shape[0])
        if "train" in self._cache:
            out["train_windows"] = int(self._cache["train"][0].shape[0])
        if evaluation == "validate":
            split = calibration_split(self.data_dir)
            out.update(ppl_split=f"{split} (held out: no calibration or training window)", seqlen=c.seqlen,
                       ppl_max_windows=None, ppl_windows=h.val_nsamples, task_names=[])
        return out

    # -- loaders -----------------------------------------------------------------------------
    def calibration_dataloader(self) -> DataLoader:
        """Calibration windows, sharded over ranks without duplicates (also used by the callback in fit)."""
        return self._loader(TensorRows(self.calibration_rows()), self.calibration.batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self.calibration_dataloader()

    def test_dataloader(self) -> list[DataLoader]:
        """Test perplexity windows, then one loader per zero-shot task."""
        loaders = []
        if self.hparams.perplexity:
            loaders.append(self._loader(TensorRows(self.perplexity_rows()), self.hparams.eval_batch_size))
        collate = functools.partial(_collate_zero_shot, bos=self.hparams.bos)
        for task in self.tasks:
            loaders.append(self._loader(self.task_dataset(task), self.hparams.task_batch_size, collate))
        return loaders

    def val_dataloader(self) -> list[DataLoader]:
        """Held-out perplexity windows (see the module docstring); none with ``perplexity=False``."""
        if not self.hparams.perplexity:
            return []
        return [self._loader(TensorRows(self.val_rows()), self.hparams.eval_batch_size)]

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        # Lightning's own DistributedSampler (padded, shuffled per epoch) is right for training.
        return DataLoader(TensorRows(self.train_rows()), batch_size=h.train_batch_size, shuffle=True,
                          num_workers=h.num_workers)
