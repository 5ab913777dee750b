"""`CausalLMModule`: a LightningModule around a Hugging Face causal LM (Llama family).

It owns no pruning logic. It runs the forwards the loops ask for and carries the pruning plan:

* ``predict_step``: the calibration forward (the pruning callback's catcher records what enters
  decoder layer 0; the LM head computes one position only and nothing is returned).
* ``validation_step`` / ``test_step``: a ``[B, T]`` tensor batch is a perplexity window batch
  (:class:`~rcpu_lightning.eval.Perplexity`, sum states); a :class:`ZeroShotBatch` is a batch of
  multiple-choice items (:class:`~rcpu_lightning.eval.MultipleChoiceAccuracy`, sum states). Both
  are exact under DDP as long as every sample is seen once (the DataModule's samplers do that).
* ``training_step``: plain causal-LM loss, so a pruned model can be fine-tuned.
* ``pruning_plan`` (init arg and hyper-parameter, a JSON-able dict): the shapes of the pruned
  model. ``on_save_checkpoint`` stores it in every checkpoint; ``on_load_checkpoint`` rebuilds the
  pruned shapes (``apply_plan_shapes``) *before* Lightning loads the state dict, so
  ``trainer.fit(ckpt_path=...)``, ``trainer.test(ckpt_path=...)`` and ``load_from_checkpoint`` work.

The model is loaded in ``__init__`` (not ``configure_model``): the pruning callback works on it in
``setup("fit")``, which runs *before* ``configure_model``, and ``on_load_checkpoint`` needs it to
exist. The cost is that every rank reads the weights on CPU first; for models that do not fit in
host memory per rank this would have to move to ``configure_model`` (not needed for 7B/13B).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional, Union

import torch
from lightning.pytorch import LightningModule
from torch import nn

from ..eval.perplexity import Perplexity
from ..eval.tasks import PAPER_METRIC
from ..eval import MultipleChoiceAccuracy, item_loglikelihoods, resolve_max_length
from ..models.adapter import decoder_layers, layer_parts
from ..models.loading import DTYPES, load_causal_lm
from ..pruning.io import PLAN_FILE, load_plan, load_pruned
from ..pruning.plan import PruningPlan
from ..pruning.surgery import apply_plan_shapes

log = logging.getLogger(__name__)

#: Key of the plan inside a Lightning checkpoint (next to ``state_dict``).
CHECKPOINT_PLAN_KEY = "rcpu_pruning_plan"


class StopForward(Exception):
    """Raised by a calibration hook once decoder layer 0's inputs are recorded; modules that set
    ``stops_calibration_forward = True`` catch it in ``predict_step`` (the rest of the forward is
    not needed for pruning)."""


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


def plan_matches(model: nn.Module, plan: PruningPlan) -> bool:
    """Whether ``model``'s decoder layers already have the shapes of ``plan``."""
    layers = decoder_layers(model)
    if len(layers) != len(plan.layers):
        return False
    for layer, lp in zip(layers, plan.layers):
        p = layer_parts(layer)
        have = (p.num_heads, p.num_kv_heads, p.intermediate_size)
        if have != (lp.num_heads, lp.num_kv_heads, lp.intermediate_size):
            return False
        biased = sorted(n for n in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
                        if getattr(p, n).bias is not None)
        if biased != sorted(lp.biases):
            return False
    return True


def find_causal_lm(module: nn.Module) -> nn.Module:
    """The Llama-family ``*ForCausalLM`` inside ``module``: its ``model`` attribute when that is one,
    else the first submodule whose decoder layers the adapter recognises."""
    candidates = [getattr(module, "model", None)] + [m for _, m in module.named_modules()]
    for cand in candidates:
        if isinstance(cand, nn.Module) and hasattr(cand, "config"):
            try:
                decoder_layers(cand)
            except (ValueError, AttributeError):
                continue
            return cand
    raise ValueError(
        f"{type(module).__name__} holds no Llama-family causal LM (a submodule with .config and "
        "model.layers); pass model_attr= to RCPUPruningCallback"
    )


def _as_plan(plan: Union[dict, PruningPlan, None]) -> Optional[PruningPlan]:
    if plan is None or isinstance(plan, PruningPlan):
        return plan
    if not isinstance(plan, dict):
        raise TypeError(f"pruning_plan must be a dict (PruningPlan.to_dict()) or None, got {type(plan).__name__}")
    return PruningPlan.from_dict(plan)


class PruningPlanMixin:
    """Checkpoint support for a pruned LM inside any LightningModule (mix in before LightningModule).

    ``on_save_checkpoint`` writes the plan into the checkpoint (always, weights-only saves too);
    ``on_load_checkpoint`` rebuilds the pruned shapes before Lightning loads the state dict, so
    ``fit(ckpt_path=...)`` and ``load_from_checkpoint`` work on the smaller model.
    ``pruned_lm()`` says which submodule is the LM (default: :func:`find_causal_lm`).
    """

    pruning_plan: Optional[dict] = None

    def pruned_lm(self) -> nn.Module:
        return find_causal_lm(self)

    def set_pruning_plan(self, plan: Union[dict, PruningPlan], reshape: bool = True) -> None:
        """Record ``plan``; with ``reshape`` give the LM its shapes when they differ (weights of rebuilt
        projections are uninitialised until a state dict is loaded)."""
        plan = _as_plan(plan)
        lm = self.pruned_lm()
        if reshape and not plan_matches(lm, plan):
            log.info("rebuilding the pruned shapes of %d decoder layers from the pruning plan", len(plan.layers))
            apply_plan_shapes(lm, plan)
        self.pruning_plan = plan.to_dict()
        hparams = getattr(self, "_hparams", None)
        if hparams is not None and "pruning_plan" in hparams:  # only where it is an init argument
            hparams["pruning_plan"] = self.pruning_plan

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_PLAN_KEY] = self.pruning_plan

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        restore_plan_from_checkpoint(self, checkpoint)


def restore_plan_from_checkpoint(module: nn.Module, checkpoint: dict[str, Any]) -> None:
    """Give ``module``'s LM the shapes of the plan stored in ``checkpoint`` (before its weights load)."""
    plan = checkpoint.get(CHECKPOINT_PLAN_KEY)
    if plan is None:
        plan = (checkpoint.get("hyper_parameters") or {}).get("pruning_plan")
    if plan is not None:
        if hasattr(module, "set_pruning_plan"):
            module.set_pruning_plan(plan, reshape=True)
        else:
            plan = _as_plan(plan)
            lm = find_causal_lm(module)
            if not plan_matches(lm, plan):
                apply_plan_shapes(lm, plan)
            module.pruning_plan = plan.to_dict()
    elif getattr(module, "pruning_plan", None) is not None:
        raise RuntimeError(
            "this module holds a pruned model but the checkpoint has no pruning plan (a dense "
            "checkpoint?); build the module from the dense model to load it"
        )


class CausalLMModule(PruningPlanMixin, LightningModule):
    """A Hugging Face causal LM for calibration, evaluation and fine-tuning.

    Args:
        model: a model spec for :func:`~rcpu_lightning.models.load_causal_lm` (hub id, local folder,
            ``.gguf`` file, ``smollm2-135m``), a folder written by ``save_pruned`` (loaded with
            ``load_pruned`` when it holds ``pruning_plan.json``), or an already built ``nn.Module``
            (then pass ``tokenizer`` for zero-shot tasks / the DataModule; it is not saved as a
            hyper-parameter, so give it again to ``load_from_checkpoint(path, model=...)``).
        dtype: ``float32``, ``bfloat16``, ``float16`` or ``auto`` (ignored for an ``nn.Module``).
        cache_dir: GGUF conversion cache (default ``$RCPU_CACHE_DIR`` or ``~/.cache/rcpu-lightning``).
        tokenizer: tokenizer object or spec (default: the one loaded with ``model``).
        pruning_plan: ``PruningPlan.to_dict()`` of a pruned model. Given with a dense ``model`` the
            pruned shapes are rebuilt at once with *uninitialised* weights: this is for restoring a
            checkpoint (``load_from_checkpoint`` / CLI ``--ckpt_path`` pass it back from the
            hyper-parameters). The pruning callback sets it after pruning.
        lr / weight_decay: AdamW settings of ``configure_optimizers`` (fine-tuning).
        max_length: zero-shot context limit (default: from the model config, as the harness).
        loglikelihood_batch_size: requests per forward inside one zero-shot batch.
    """

    def __init__(
        self,
        model: Union[str, os.PathLike, nn.Module] = "smollm2-135m",
        dtype: str = "float32",
        cache_dir: Optional[str] = None,
        tokenizer: Any = None,
        pruning_plan: Optional[dict] = None,
        lr: float = 1e-5,
        weight_decay: float = 0.0,
        max_length: Optional[int] = None,
        loglikelihood_batch_size: int = 16,
    ) -> None:
        super().__init__()
        if dtype not in DTYPES and dtype != "auto":
            raise ValueError(f"dtype={dtype!r} is not supported; allowed: {[*DTYPES, 'auto']}")
        ignore = [n for n, v in (("model", model), ("tokenizer", tokenizer)) if not isinstance(v, (str, os.PathLike, type(None)))]
        self.save_hyperparameters(ignore=ignore)
        plan = _as_plan(pruning_plan)
        if isinstance(model, nn.Module):
            self.model, self.model_name = model, type(model).__name__
            self.tokenizer = tokenizer
        else:
            self.model, loaded_tok, folder_plan = self._load(str(model), dtype, cache_dir)
            self.model_name = str(model)
            self.tokenizer = loaded_tok if tokenizer is None else tokenizer
            if folder_plan is not None and plan is None:
                plan = folder_plan
        if isinstance(self.tokenizer, (str, os.PathLike)):
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(str(self.tokenizer))
        self.pruning_plan: Optional[dict] = None
        if plan is not None:
            self.set_pruning_plan(plan, reshape=True)
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

    def pruned_lm(self) -> nn.Module:
        return self.model

    # -- forwards ----------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, **kwargs: Any):
        kwargs.setdefault("use_cache", False)
        return self.model(input_ids=input_ids, **kwargs)

    @staticmethod
    def _input_ids(batch: Any) -> torch.Tensor:
        if isinstance(batch, torch.Tensor):
            return batch
        if isinstance(batch, dict) and "input_ids" in batch:
            return batch["input_ids"]
        if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
            return batch[0]
        raise TypeError(f"expected input_ids [B, T] (a tensor, a dict with 'input_ids' or a tuple), got {type(batch).__name__}")

    #: predict_step swallows :class:`StopForward`, so the pruning callback may end each calibration
    #: forward at decoder layer 0 (it then skips the other layers and the LM head).
    stops_calibration_forward = True

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Calibration forward; returns nothing (the catcher of the pruning callback records layer 0's inputs)."""
        try:
            self.model(input_ids=self._input_ids(batch), use_cache=False, logits_to_keep=1)
        except StopForward:
            pass
        return None

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        ids = self._input_ids(batch)
        loss = self.model(input_ids=ids, labels=ids, use_cache=False).loss
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_start(self) -> None:
        self.model.train()  # loaders return the LM in eval mode

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    # -- evaluation --------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
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
        ids = self._input_ids(batch)
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
