"""`CausalLMModule`: a LightningModule around a Hugging Face causal LM (Llama family).

It owns no pruning logic. It runs the forwards the loops ask for and carries the pruning plan:

* ``predict_step``: the calibration forward (the pruning callback's catcher records what enters
  decoder layer 0; the forward stops there, see :class:`~rcpu_lightning.pruning.StopForward`).
* ``validation_step`` / ``test_step``: a ``[B, T]`` tensor batch is a perplexity window batch
  (:class:`~rcpu_lightning.eval.Perplexity`, sum states); a :class:`ZeroShotBatch` is a batch of
  multiple-choice items (:class:`~rcpu_lightning.eval.MultipleChoiceAccuracy`, sum states). Both
  are exact under DDP as long as every sample is seen once (the DataModule's samplers do that).
* ``training_step``: plain causal-LM loss, so a pruned model can be fine-tuned.
* ``pruning_plan``: the plan of a pruned model (from a ``save_pruned`` folder, a checkpoint, or the
  callback). Lightning checkpoints carry it (:mod:`.checkpointing`), so ``trainer.fit(ckpt_path=...)``,
  ``trainer.test(ckpt_path=...)`` and ``load_from_checkpoint`` rebuild the pruned shapes first.

The model is loaded in ``__init__``: every rank reads the weights on CPU first, which suits models
that fit in host memory. For bigger ones, ``out_of_core=True`` builds only the skeleton (weights on the
``meta`` device, the token embeddings real) of a local safetensors checkpoint: the predict loop then
captures the layer-0 inputs and the pruning callback streams one decoder layer at a time from disk to
``pruning.save_dir`` (:func:`~rcpu_lightning.pruning.prune_skeleton`); such a module only calibrates.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn
from transformers import PreTrainedModel

from ..eval import MultipleChoiceAccuracy, Perplexity, item_loglikelihoods, resolve_max_length
from ..eval.tasks import PAPER_METRIC
from ..models.loading import DTYPES, IN_MEMORY_DTYPE, load_causal_lm
from ..pruning.inputs import StopForward, model_inputs
from ..pruning.io import PLAN_FILE, load_plan, load_pruned
from ..pruning.streaming import CheckpointSource, build_skeleton, checkpoint_dtype
from .checkpointing import PruningPlanMixin

log = logging.getLogger(__name__)


class ZeroShotBatch:
    """A batch of multiple-choice items (a plain object, so Lightning's device transfer leaves the
    frozen item dataclasses alone) plus the BOS switch they are scored with."""

    __slots__ = ("items", "bos", "task")

    def __init__(self, items: list, bos: Optional[bool] = None) -> None:
        self.items = list(items)
        self.bos = bos
        self.task = self.items[0].task if self.items else None

    def __len__(self) -> int:
        return len(self.items)


class CausalLMModule(PruningPlanMixin):
    """A Hugging Face causal LM for calibration, evaluation and fine-tuning.

    Args:
        model: a model spec for :func:`~rcpu_lightning.models.load_causal_lm` (hub id, local folder,
            ``.gguf`` file, ``smollm2-135m``), a folder written by ``save_pruned`` (loaded with
            ``load_pruned`` when it holds ``pruning_plan.json``), or an already built Hugging Face
            model (then pass ``tokenizer`` for zero-shot tasks / the DataModule; it is not saved as a
            hyper-parameter, so give it again to ``load_from_checkpoint(path, model=...)``).
        dtype: ``float32``, ``bfloat16``, ``float16`` or ``auto`` (ignored for an ``nn.Module``); default
            (None): float32 for a model loaded into memory, and out of core the checkpoint's own dtype
            (the dtype the pruned shards are written in: a bf16 checkpoint stays bf16 on disk).
        cache_dir: GGUF conversion cache (default ``$RCPU_CACHE_DIR`` or ``~/.cache/rcpu-lightning``).
        tokenizer: tokenizer object or spec (default: the one loaded with ``model``).
        lr / weight_decay: AdamW settings of ``configure_optimizers`` (fine-tuning).
        max_length: zero-shot context limit (default: from the model config, as the harness).
        loglikelihood_batch_size: requests per forward inside one zero-shot batch.
        out_of_core: ``model`` is a local safetensors checkpoint folder too big to load: hold only its
            skeleton, for out-of-core pruning by the callback (predict loop / ``cli.py prune`` only).
    """

    def __init__(
        self,
        model: Union[str, os.PathLike, PreTrainedModel] = "smollm2-135m",
        dtype: Optional[str] = None,
        cache_dir: Optional[str] = None,
        tokenizer: Any = None,
        lr: float = 1e-5,
        weight_decay: float = 0.0,
        max_length: Optional[int] = None,
        loglikelihood_batch_size: int = 16,
        out_of_core: bool = False,
    ) -> None:
        super().__init__()
        if dtype is not None and dtype not in DTYPES and dtype != "auto":
            raise ValueError(f"dtype={dtype!r} is not supported; allowed: {[*DTYPES, 'auto']} or None")
        ignore = [n for n, v in (("model", model), ("tokenizer", tokenizer)) if not isinstance(v, (str, os.PathLike, type(None)))]
        self.save_hyperparameters(ignore=ignore)
        self.pruning_plan: Optional[dict] = None
        self.checkpoint_source: Optional[CheckpointSource] = None  # out of core: where the layers come from
        if out_of_core:
            self.model, self.tokenizer, self.checkpoint_source = self._skeleton(model, dtype, tokenizer)
            self.model_name = str(model)
        elif isinstance(model, nn.Module):
            self.model, self.model_name = model, type(model).__name__
            self.tokenizer = tokenizer
        else:
            self.model, loaded_tok, folder_plan = self._load(str(model), dtype or IN_MEMORY_DTYPE, cache_dir)
            self.model_name = str(model)
            self.tokenizer = loaded_tok if tokenizer is None else tokenizer
            if folder_plan is not None:
                self.set_pruning_plan(folder_plan, reshape=False)
        if isinstance(self.tokenizer, (str, os.PathLike)):
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(str(self.tokenizer))
        self.ppl_metric = Perplexity()
        self.task_metrics = nn.ModuleDict()
        self.eval_results: dict[str, Any] = {}

    # -- loading -----------------------------------------------------------------------------
    @staticmethod
    def _load(spec: str, dtype: str, cache_dir: Optional[str]):
        """(model, tokenizer, plan or None): a save_pruned folder goes through load_pruned."""
        folder = Path(spec).expanduser()
        if (folder / PLAN_FILE).is_file():
            from transformers import AutoTokenizer

            kwargs = {} if dtype == "auto" else {"dtype": DTYPES[dtype]}
            model = load_pruned(folder, **kwargs).eval()
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
            return model, tokenizer, load_plan(folder)
        model, tokenizer = load_causal_lm(spec, dtype=dtype, cache_dir=cache_dir)
        return model, tokenizer, None

    @staticmethod
    def _skeleton(spec: Any, dtype: str, tokenizer: Any):
        """(skeleton, tokenizer, source) of a local safetensors checkpoint folder, nothing of it loaded
        but the token embeddings."""
        if isinstance(spec, nn.Module) or not Path(str(spec)).expanduser().is_dir():
            raise ValueError(f"out_of_core=True needs a local checkpoint folder with safetensors weights, got "
                             f"{spec!r}; for a hub model download it first (huggingface-cli download ID "
                             "--local-dir DIR)")
        source = CheckpointSource(Path(str(spec)).expanduser())  # refuses a pruned folder
        model = build_skeleton(source, checkpoint_dtype(None if dtype in (None, "auto") else DTYPES[dtype], source.config))
        if tokenizer is None and any((source.path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(source.path))
        return model, tokenizer, source

    def _apply(self, fn, recurse: bool = True):
        # Out of core, the decoder layers stay on the meta device whatever the loops move the module to:
        # the callback reads them from disk one at a time.
        if self.checkpoint_source is None:
            return super()._apply(fn, recurse)
        return super()._apply(lambda t: t if t.is_meta else fn(t), recurse)

    def pruned_lm(self) -> nn.Module:
        return self.model

    # -- forwards ----------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, **kwargs: Any):
        kwargs.setdefault("use_cache", False)
        return self.model(input_ids=input_ids, **kwargs)

    #: predict_step swallows :class:`StopForward`, so the pruning callback may end each calibration
    #: forward at decoder layer 0 (it then skips the other layers and the LM head).
    stops_calibration_forward = True

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, int]:
        """Calibration forward (the pruning callback's catcher records what enters decoder layer 0);
        returns the number of tokens it saw."""
        inputs = model_inputs(batch)
        try:
            self.model(**inputs, use_cache=False, logits_to_keep=1)
        except StopForward:
            pass
        return {"calibration_tokens": int(inputs["input_ids"].numel())}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        ids = model_inputs(batch)["input_ids"]
        loss = self.model(input_ids=ids, labels=ids, use_cache=False).loss
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_fit_start(self) -> None:
        self.model.train()  # loaders return the LM in eval mode; Lightning keeps modes as they are

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    # -- evaluation --------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.checkpoint_source is not None and stage != "predict":
            raise ValueError(f"an out-of-core module (out_of_core=True) holds no weights: it can only calibrate for "
                             f"the pruning callback (predict), not {stage}; load the pruned folder it wrote instead")
        # Create every task metric up front: compute() is a collective, so every rank needs the
        # same metrics even when it received no item of some task.
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        for task in getattr(dm, "tasks", None) or []:
            self._task_metric(task)

    def _task_metric(self, task: str) -> MultipleChoiceAccuracy:
        if task not in self.task_metrics:
            self.task_metrics[task] = MultipleChoiceAccuracy().to(self.device)
        return self.task_metrics[task]

    def _eval_step(self, batch: Any) -> None:
        if isinstance(batch, ZeroShotBatch):
            if self.tokenizer is None:
                raise ValueError("zero-shot tasks need a tokenizer: pass tokenizer= with an nn.Module model")
            max_length = self.hparams.max_length or resolve_max_length(self.model, self.tokenizer)
            lls = item_loglikelihoods(self.model, self.tokenizer, batch.items, bos=batch.bos, max_length=max_length,
                                      batch_size=self.hparams.loglikelihood_batch_size)
            for task in {it.task for it in batch.items}:
                sel = [(ll, it) for ll, it in zip(lls, batch.items) if it.task == task]
                self._task_metric(task).update([s[0] for s in sel], [s[1] for s in sel])
            return
        ids = model_inputs(batch)["input_ids"]
        logits = self.model(input_ids=ids, use_cache=False).logits
        self.ppl_metric.update(logits, ids)

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch)

    def _eval_epoch_end(self, prefix: str) -> None:
        # Every rank runs the same compute() calls (collectives), in the same order.
        results: dict[str, Any] = {}
        # Whether any rank scored windows (one collective, the same answer everywhere).
        if self.trainer.strategy.reduce_boolean_decision(int(self.ppl_metric.token_count) > 0, all=False):
            ppl = self.ppl_metric.compute()
            results.update(ppl=float(ppl), tokens=int(self.ppl_metric.tokens), mean_nll=float(self.ppl_metric.mean_nll))
            # Already the global value on every rank (sum states); sync_dist only silences Lightning.
            self.log(f"{prefix}/ppl", ppl.float(), sync_dist=True)
        self.ppl_metric.reset()
        tasks: dict[str, Any] = {}
        for task in sorted(self.task_metrics):
            metric = self.task_metrics[task]
            # a loop without this task's items (validation holds perplexity windows only): not a result
            if not self.trainer.strategy.reduce_boolean_decision(bool(metric.count > 0), all=False):
                metric.reset()
                continue
            out = metric.compute()
            entry = {k: float(v) for k, v in out.items()}
            entry["n"] = int(entry["n"])
            entry["reported_metric"] = PAPER_METRIC.get(task, "acc")
            entry["reported"] = entry[entry["reported_metric"]]
            tasks[task] = entry
            self.log(f"{prefix}/{task}/acc", out["acc"].float(), sync_dist=True)
            self.log(f"{prefix}/{task}/acc_norm", out["acc_norm"].float(), sync_dist=True)
            metric.reset()
        if tasks:
            results["tasks"] = tasks
        self.eval_results = results

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._eval_epoch_end("val")
        else:
            self.ppl_metric.reset()
            for m in self.task_metrics.values():
                m.reset()

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # -- bookkeeping -------------------------------------------------------------------------
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())
