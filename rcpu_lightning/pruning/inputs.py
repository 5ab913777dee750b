"""Capturing the hidden states and keyword arguments that enter decoder layer 0.

The engine replays these through the layers one at a time, so only the current layer's inputs
are ever held (one ``[B, T, H]`` tensor per batch plus the small kwargs: position embeddings,
attention mask, position ids). Caches are dropped and ``use_cache`` is forced off.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..models.adapter import decoder_layers

_DROPPED_KWARGS = ("cache", "past_key_values", "past_key_value", "hidden_states")


class _StopForward(Exception):
    """Raised by the layer-0 hook to end a forward early (swallowed by capture_layer_inputs)."""


def to_device(obj: Any, device, **kw) -> Any:
    """``obj`` with every tensor (inside tuples/lists/dicts) moved to ``device``."""
    if isinstance(obj, Tensor):
        return obj.to(device, **kw)
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(o, device, **kw) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device, **kw) for k, v in obj.items()}
    return obj


def _slice_batch(obj: Any, rows: slice, batch: int) -> Any:
    """Slice tensors whose leading dim is the batch (others, e.g. [1, T] position ids, are shared)."""
    if isinstance(obj, Tensor):
        return obj[rows] if obj.dim() > 0 and obj.shape[0] == batch and batch > 1 else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(_slice_batch(o, rows, batch) for o in obj)
    if isinstance(obj, dict):
        return {k: _slice_batch(v, rows, batch) for k, v in obj.items()}
    return obj


@dataclass
class LayerInputs:
    """Captured inputs of decoder layer 0: per batch ``(hidden [B, T, H], layer kwargs)``."""

    batches: list[tuple[Tensor, dict[str, Any]]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[Tensor, dict[str, Any]]]:
        return iter(self.batches)

    @property
    def num_tokens(self) -> int:
        return sum(h.shape[0] * h.shape[1] for h, _ in self.batches)

    def rebatch(self, batch_size: int) -> "LayerInputs":
        """Same inputs split into batches of at most ``batch_size`` rows (tensors shared, not copied)."""
        if batch_size <= 0:
            raise ValueError(f"batch_size={batch_size!r} is invalid; allowed: an int > 0")
        out = []
        for hidden, kwargs in self.batches:
            b = hidden.shape[0]
            for start in range(0, b, batch_size):
                rows = slice(start, min(start + batch_size, b))
                out.append((hidden[rows], _slice_batch(kwargs, rows, b)))
        return LayerInputs(out)


class LayerInputCatcher:
    """Context manager recording what enters decoder layer 0 on every ``model(...)`` call.

    ``offload=True`` keeps the captured tensors on CPU. ``stop=True`` aborts each forward at
    layer 0 by raising an internal exception (use :func:`capture_layer_inputs`, which swallows it).
    """

    def __init__(self, model: nn.Module, offload: bool = False, stop: bool = False):
        self.layer = decoder_layers(model)[0]
        self.offload, self.stop = offload, stop
        self._inputs = LayerInputs()
        self._handle = None

    def _hook(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        kept = {k: v for k, v in kwargs.items() if k not in _DROPPED_KWARGS}
        kept["use_cache"] = False
        device = "cpu" if self.offload else hidden.device
        # During a full forward the same tensor flows on (and may be returned, e.g. as
        # hidden_states[0]); pruning overwrites what it records, so record a copy, made as an
        # ordinary tensor even in an inference-mode predict loop (no second copy needed later).
        with torch.inference_mode(False):
            hidden = hidden.detach().to(device, copy=not self.stop)
        self._inputs.batches.append((hidden, to_device(kept, device)))
        if self.stop:
            raise _StopForward

    def __enter__(self) -> "LayerInputCatcher":
        self._handle = self.layer.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @property
    def inputs(self) -> LayerInputs:
        return self._inputs


def _input_device(model: nn.Module) -> torch.device:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return emb.weight.device if emb is not None else next(model.parameters()).device


def capture_layer_inputs(
    model: nn.Module, batches: Iterable[Tensor | Mapping[str, Tensor]], offload: bool = False
) -> LayerInputs:
    """Run each batch (``input_ids`` [B, T], or a dict of model kwargs) up to layer 0 and keep its inputs."""
    device = _input_device(model)
    catcher = LayerInputCatcher(model, offload=offload, stop=True)
    with torch.no_grad(), catcher:
        for batch in batches:
            kwargs = dict(batch) if isinstance(batch, Mapping) else {"input_ids": batch}
            kwargs = to_device(kwargs, device)
            kwargs["use_cache"] = False
            try:
                model(**kwargs)
            except _StopForward:
                pass
    if not len(catcher.inputs):
        raise ValueError("capture_layer_inputs got no batches")
    return catcher.inputs


def sample_calibration(tokens: Tensor, nsamples: int, seqlen: int, seed: int, batch_size: int) -> list[Tensor]:
    """``nsamples`` random windows of ``seqlen`` tokens from a 1-D token stream, seeded -> batches [B, T]."""
    tokens = tokens.reshape(-1)
    if tokens.numel() <= seqlen:
        raise ValueError(f"token stream of {tokens.numel()} tokens is too short for seqlen={seqlen}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - seqlen, (nsamples,), generator=gen)
    windows = torch.stack([tokens[s : s + seqlen] for s in starts.tolist()])  # [nsamples, T]
    return list(windows.split(batch_size))
