"""How a pruned LM travels through Lightning checkpoints.

A Lightning checkpoint of a pruned model holds the pruning plan once, under
``checkpoint["rcpu_pruning_plan"]`` (a JSON-able dict, never a hyper-parameter). Loading it needs
the pruned *shapes* before the weights: Lightning restores in the order ``LightningModule.
on_load_checkpoint`` -> ``load_state_dict`` -> callbacks, so the shapes are rebuilt in the
module's ``on_load_checkpoint``.

Two ways a LightningModule gets that behaviour, both keeping the user's own hooks and keys:

* :class:`PruningPlanMixin` (needed for ``YourModule.load_from_checkpoint``): every subclass gets
  its ``on_save_checkpoint`` / ``on_load_checkpoint`` *wrapped* when the class is created
  (``__init_subclass__``), whatever the order of its base classes and whether or not its hooks
  call ``super()``: the plan is added after the user's save hook ran, and the shapes are rebuilt
  before the user's load hook runs.
* :func:`install_plan_hooks` (done by :class:`~rcpu_lightning.lightning.RCPUPruningCallback` in
  ``setup`` for modules without the mixin): the same wrapping on the instance, which covers
  ``trainer.fit/validate/test/predict(ckpt_path=...)``.
"""

from __future__ import annotations

import functools
import logging
import types
from collections.abc import Callable
from typing import Any, Optional, Union

import torch
from lightning.pytorch import LightningModule
from torch import nn

from ..models.adapter import check_supported, decoder_layers, layer_parts
from ..pruning.plan import PruningPlan
from ..pruning.surgery import ATTN_PROJ, MLP_PROJ, apply_plan_shapes

log = logging.getLogger(__name__)

#: Key of the plan inside a Lightning checkpoint (next to ``state_dict``).
CHECKPOINT_PLAN_KEY = "rcpu_pruning_plan"
#: A scalar added to a pruned checkpoint's ``state_dict`` and removed again by the plan hooks before the
#: weights load. A module without them (no :class:`PruningPlanMixin`, no callback) meets it as an
#: unexpected key, so the first line of torch's size-mismatch error names the fix.
CHECKPOINT_MARKER_KEY = "rcpu_pruned_checkpoint:load_with_PruningPlanMixin_or_RCPUPruningCallback"

__all__ = ["CHECKPOINT_MARKER_KEY", "CHECKPOINT_PLAN_KEY", "PruningPlanMixin", "find_causal_lm", "install_plan_hooks", "plan_matches",
           "restore_plan_from_checkpoint", "search_causal_lm", "set_plan"]


def find_causal_lm(module: nn.Module, model_attr: Optional[str] = None) -> nn.Module:
    """The Llama-family ``*ForCausalLM`` inside ``module``: the dotted attribute ``model_attr`` if
    given, else ``module.pruned_lm()`` if it defines one, else the first Llama-family submodule
    (its ``model`` attribute first)."""
    if model_attr:
        obj: Any = module
        for part in model_attr.split("."):
            obj = getattr(obj, part)
        return obj
    if callable(getattr(module, "pruned_lm", None)):
        return module.pruned_lm()
    return search_causal_lm(module)


def search_causal_lm(module: nn.Module) -> nn.Module:
    """The first submodule with a ``config`` whose decoder layers the adapter recognises."""
    candidates = [getattr(module, "model", None)] + [m for _, m in module.named_modules()]
    others = []  # models of other architectures: named in the error
    for cand in candidates:
        if isinstance(cand, nn.Module) and hasattr(cand, "config"):
            try:
                decoder_layers(cand)
            except (ValueError, AttributeError):
                if getattr(cand.config, "model_type", None) is not None:
                    others.append(cand)
                continue
            return cand
    if others:
        check_supported(others[0])  # "unsupported architecture X (model_type=...); ... supported: [...]"
    raise ValueError(
        f"{type(module).__name__} holds no Llama-family causal LM yet (a submodule with .config and "
        "model.layers). A module that builds its LM in configure_model is pruned after that has run; "
        "if the LM sits in an unusual place, pass model_attr= to RCPUPruningCallback"
    )


def plan_matches(model: nn.Module, plan: PruningPlan) -> bool:
    """Whether ``model``'s decoder layers already have the shapes and biases of ``plan``."""
    layers = decoder_layers(model)
    if len(layers) != len(plan.layers):
        return False
    for layer, lp in zip(layers, plan.layers):
        p = layer_parts(layer)
        if (p.num_heads, p.num_kv_heads, p.intermediate_size) != (lp.num_heads, lp.num_kv_heads, lp.intermediate_size):
            return False
        if sorted(n for n in ATTN_PROJ + MLP_PROJ if getattr(p, n).bias is not None) != sorted(lp.biases):
            return False
    return True


def as_plan(plan: Union[dict, PruningPlan, None]) -> Optional[PruningPlan]:
    if plan is None or isinstance(plan, PruningPlan):
        return plan
    if not isinstance(plan, dict):
        raise TypeError(f"a pruning plan must be a dict (PruningPlan.to_dict()) or a PruningPlan, got {type(plan).__name__}")
    return PruningPlan.from_dict(plan)


def set_plan(module: nn.Module, plan: Union[dict, PruningPlan], lm: Optional[nn.Module] = None,
             reshape: bool = True) -> None:
    """Record ``plan`` on ``module`` (``module.pruning_plan``, a dict); with ``reshape``, first give its
    LM the plan's shapes where they differ (rebuilt projections hold uninitialised weights until a
    state dict is loaded)."""
    plan = as_plan(plan)
    lm = lm if lm is not None else find_causal_lm(module)
    if reshape and not plan_matches(lm, plan):
        log.info("rebuilding the pruned shapes of %d decoder layers from the pruning plan", len(plan.layers))
        apply_plan_shapes(lm, plan)
    module.pruning_plan = plan.to_dict()


def restore_plan_from_checkpoint(module: nn.Module, checkpoint: dict[str, Any]) -> None:
    """Give ``module``'s LM the shapes of the plan stored in ``checkpoint`` (before its weights load)."""
    state = checkpoint.get("state_dict")
    if isinstance(state, dict):
        state.pop(CHECKPOINT_MARKER_KEY, None)
    plan = checkpoint.get(CHECKPOINT_PLAN_KEY)
    if plan is None:  # checkpoints written before the plan had its own key kept it among the hyper-parameters
        plan = (checkpoint.get("hyper_parameters") or {}).get("pruning_plan")
    if plan is not None:
        set_plan(module, plan)
    elif getattr(module, "pruning_plan", None) is not None:
        raise RuntimeError(
            "this module holds a pruned model but the checkpoint has no pruning plan (a dense "
            "checkpoint?); build the module from the dense model to load it"
        )


# -- hook wrapping ----------------------------------------------------------------------------------
_WRAPPED = "_rcpu_plan_hook"


def _saving(save: Callable) -> Callable:
    @functools.wraps(save)
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save(self, checkpoint)  # the user's hook first: its keys stay, the plan is added
        if getattr(self, "pruning_plan", None) is not None:
            checkpoint[CHECKPOINT_PLAN_KEY] = self.pruning_plan
            if isinstance(checkpoint.get("state_dict"), dict):
                checkpoint["state_dict"][CHECKPOINT_MARKER_KEY] = torch.zeros(())

    setattr(on_save_checkpoint, _WRAPPED, True)
    return on_save_checkpoint


def _loading(load: Callable) -> Callable:
    @functools.wraps(load)
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        restore_plan_from_checkpoint(self, checkpoint)  # shapes first, so the user's hook sees the pruned LM
        load(self, checkpoint)

    setattr(on_load_checkpoint, _WRAPPED, True)
    return on_load_checkpoint


def install_plan_hooks(pl_module: LightningModule) -> None:
    """Wrap this *instance*'s checkpoint hooks (for modules without :class:`PruningPlanMixin`)."""
    if isinstance(pl_module, PruningPlanMixin):
        return
    if not hasattr(pl_module, "pruning_plan"):
        pl_module.pruning_plan = None
    for name, wrap in (("on_save_checkpoint", _saving), ("on_load_checkpoint", _loading)):
        current = getattr(pl_module, name)  # bound: the class's hook or one set on the instance
        if not getattr(current, _WRAPPED, False):
            wrapped = wrap(lambda self, checkpoint, _hook=current: _hook(checkpoint))
            setattr(pl_module, name, types.MethodType(wrapped, pl_module))


class PruningPlanMixin(LightningModule):
    """Checkpoint support for a pruned LM inside any LightningModule (see the module docstring).

    Put it anywhere among the base classes (``class MyLM(PruningPlanMixin, Base)`` or
    ``class MyLM(Base, PruningPlanMixin)``). ``pruned_lm()`` says which submodule is the LM
    (default: :func:`find_causal_lm`); override it when the LM sits in an unusual place.
    """

    pruning_plan: Optional[dict] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, wrap in (("on_save_checkpoint", _saving), ("on_load_checkpoint", _loading)):
            hook = getattr(cls, name)  # as the class's MRO resolves it
            if not getattr(hook, _WRAPPED, False) or name in cls.__dict__:
                setattr(cls, name, wrap(hook))

    def pruned_lm(self) -> nn.Module:
        return search_causal_lm(self)

    def set_pruning_plan(self, plan: Union[dict, PruningPlan], reshape: bool = True) -> None:
        """Record ``plan`` (see :func:`set_plan`)."""
        set_plan(self, plan, self.pruned_lm(), reshape)
