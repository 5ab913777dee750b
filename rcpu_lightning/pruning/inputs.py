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

from ..models.adapter import decoder_layers, model_device, rotary_embedding

_DROPPED_KWARGS = ("cache", "past_key_values", "past_key_value", "hidden_states")


class StopForward(Exception):
    """Raised once decoder layer 0's inputs are recorded, to end a calibration forward early (the
    other layers and the LM head are not needed). :func:`capture_layer_inputs` swallows it; a
    LightningModule whose ``predict_step`` swallows it sets ``stops_calibration_forward = True``.
    The engine's statistics passes raise it too, before a layer's down_proj (``engine.layer_stats``)."""


#: Batch keys that are model inputs of a calibration forward (others are dropped).
_MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "position_ids")


def model_inputs(batch: Any) -> dict[str, Tensor]:
    """A calibration/training batch as model keyword arguments: a tensor ``[B, T]`` of input ids, a
    mapping with ``input_ids`` (plus optional ``attention_mask``/``position_ids``), or a tuple/list
    whose first element is the input ids."""
    if isinstance(batch, Tensor):
        return {"input_ids": batch}
    if isinstance(batch, Mapping):
        if "input_ids" not in batch:
            raise ValueError(f"a batch mapping needs 'input_ids', got keys {sorted(batch)}")
        return {k: v for k, v in batch.items() if k in _MODEL_INPUT_KEYS}
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], Tensor):
        return {"input_ids": batch[0]}
    raise TypeError(f"expected input_ids [B, T] (a tensor, a mapping with 'input_ids' or a tuple), got {type(batch).__name__}")


def to_device(obj: Any, device, **kw) -> Any:
    """``obj`` with every tensor (inside tuples/lists/dicts) moved to ``device``."""
    if isinstance(obj, Tensor):
        return obj.to(device, **kw)
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(o, device, **kw) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device, **kw) for k, v in obj.items()}
    return obj


#: The calibration activations one decoder layer runs on: per batch ``(hidden [B, T, H], layer kwargs)``.
Batches = list[tuple[Tensor, dict[str, Any]]]


@dataclass
class LayerInputs:
    """Captured inputs of decoder layer 0: per batch ``(hidden [B, T, H], layer kwargs)``."""

    batches: Batches = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[Tensor, dict[str, Any]]]:
        return iter(self.batches)

    @property
    def num_tokens(self) -> int:
        return sum(h.shape[0] * h.shape[1] for h, _ in self.batches)


#: Captured activations on CPU are stored in slabs of at least this size: larger than glibc's largest
#: dynamic mmap threshold (32 MiB), so each slab is its own mapping. Kept as one ~2 MB block per batch
#: they would sit in the heap among the forward's freed temporaries, and those holes, which the heap
#: can never return, grow with the number of batches (measured: the non-input peak of a 6-layer
#: SmolLM2 prune grew 1.41x from 128 to 1024 calibration windows; unused slab pages cost no memory).
SLAB_BYTES = 64 << 20


class _Slabs:
    """Contiguous storage for captured hidden states: each batch becomes a view into a slab."""

    def __init__(self) -> None:
        self.slab: Tensor | None = None
        self.used = 0

    def put(self, hidden: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """A view into a slab holding a copy of ``hidden`` (cast to ``dtype`` if given)."""
        dtype = dtype or hidden.dtype
        rows, row = hidden.shape[0], hidden.shape[1:]
        slab = self.slab
        if slab is None or slab.shape[1:] != row or slab.dtype != dtype or self.used + rows > slab.shape[0]:
            per_row = max(hidden[0].numel() * dtype.itemsize, 1)
            slab = self.slab = torch.empty((max(rows, SLAB_BYTES // per_row), *row), dtype=dtype)
            self.used = 0
        view = slab[self.used : self.used + rows]  # [B, T, H]
        view.copy_(hidden)
        self.used += rows
        return view


def copy_activations(batches: Batches) -> Batches:
    """A second copy of the activations (CPU tensors in slabs, as captured ones), sharing the kwargs."""
    slabs = _Slabs()
    return [(slabs.put(h) if h.device.type == "cpu" else h.clone(), kw) for h, kw in batches]


def cast_floating(obj: Any, dtype: torch.dtype, memo: dict[int, tuple[Tensor, Tensor]] | None = None) -> Any:
    """``obj`` with every floating tensor (inside tuples/lists/dicts) in ``dtype``; others as they are.
    ``memo`` (id -> (tensor, its cast)), shared between calls, casts a tensor met twice only once."""
    memo = {} if memo is None else memo
    if isinstance(obj, (tuple, list)):
        return type(obj)(cast_floating(v, dtype, memo) for v in obj)
    if isinstance(obj, dict):
        return {k: cast_floating(v, dtype, memo) for k, v in obj.items()}
    if not isinstance(obj, Tensor) or not obj.is_floating_point() or obj.dtype == dtype:
        return obj
    if id(obj) not in memo:
        memo[id(obj)] = (obj, obj.to(dtype))  # the source kept alive, so that its id is not reused
    return memo[id(obj)][1]


def cast_activations(batches: Batches, dtype: torch.dtype) -> Batches:
    """``batches`` with the hidden states and every floating tensor of the kwargs (position embeddings, a
    float attention mask) in ``dtype``: new tensors where the dtype differs (CPU hidden states in slabs,
    as captured ones; a kwarg shared by several batches stays shared), the same ones where it does not."""
    slabs, memo = _Slabs(), {}

    def hidden(h: Tensor) -> Tensor:
        if h.dtype == dtype or not h.is_floating_point():
            return h
        return slabs.put(h, dtype) if h.device.type == "cpu" else h.to(dtype)

    return [(hidden(h), cast_floating(kw, dtype, memo)) for h, kw in batches]


def _share_equal(kwargs: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """``kwargs`` with every tensor equal to the previous batch's replaced by that one (rotary
    embeddings and position ids are the same for every batch of the same length: keep one copy)."""
    if previous is None:
        return kwargs

    def same(a: Any, b: Any) -> Any:
        if isinstance(a, Tensor) and isinstance(b, Tensor):
            return b if a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b) else a
        if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b):
            return type(a)(same(x, y) for x, y in zip(a, b))
        return a

    return {k: same(v, previous.get(k)) for k, v in kwargs.items()}


def first_rows(obj: Any, n: int, batch: int | None = None) -> Any:
    """``obj`` (a tensor, or tuples/lists/dicts of them) with only the first ``n`` of its ``batch`` rows:
    tensors of at least two dimensions whose first is ``batch`` (default: ``obj``'s own first dimension)
    are sliced; others (1-D positions, tensors broadcast over the batch) are shared as they are."""
    if isinstance(obj, Tensor):
        batch = obj.shape[0] if batch is None else batch
        return obj[:n] if obj.dim() >= 2 and obj.shape[0] == batch and n < batch else obj
    if isinstance(obj, dict):
        return {k: first_rows(v, n, batch) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(first_rows(v, n, batch) for v in obj)
    return obj


class LayerInputCatcher:
    """Context manager recording what enters decoder layer 0 on every ``model(...)`` call.

    ``offload=True`` keeps the captured tensors on CPU. ``stop=True`` aborts each forward at
    layer 0 by raising an internal exception (use :func:`capture_layer_inputs`, which swallows it).
    ``max_rows``: record only the first ``max_rows`` sequences (rows) seen, e.g. to leave out the
    duplicates a padding distributed sampler appends (:func:`first_rows`). ``dtype``: record the hidden
    states and floating kwargs in that dtype (``PruningConfig.execution_dtype``), the position embeddings
    computed again in it (the rotary embedding computes in float32 and rounds to the hidden states' dtype:
    a bf16 model's cos/sin cast up would keep that rounding); the forward itself is not changed.
    """

    def __init__(self, model: nn.Module, offload: bool = False, stop: bool = False, max_rows: int | None = None,
                 dtype: torch.dtype | None = None):
        self.layer = decoder_layers(model)[0]
        self.offload, self.stop, self.max_rows, self.dtype = offload, stop, max_rows, dtype
        self.rotary = rotary_embedding(model)
        self._inputs = LayerInputs()
        self._handle = None
        self._slabs = _Slabs()
        self._rows = 0

    def _hook(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        kept = {k: v for k, v in kwargs.items() if k not in _DROPPED_KWARGS}
        if self.max_rows is not None:
            keep = min(hidden.shape[0], self.max_rows - self._rows)
            if keep <= 0:
                if self.stop:
                    raise StopForward
                return
            hidden, kept = first_rows(hidden, keep), first_rows(kept, keep, hidden.shape[0])
        self._rows += hidden.shape[0]
        kept["use_cache"] = False
        device = torch.device("cpu") if self.offload else hidden.device
        # During a full forward the same tensor flows on (and may be returned, e.g. as
        # hidden_states[0]); pruning overwrites what it records, so record a copy, made as an
        # ordinary tensor even in an inference-mode predict loop (no second copy needed later).
        with torch.inference_mode(False):
            if device.type == "cpu":
                hidden = self._slabs.put(hidden.detach(), self.dtype)
            else:
                hidden = hidden.detach().to(device, self.dtype, copy=not self.stop)
            kept = to_device(kept, device)
            if self.dtype is not None:
                kept = self._in_dtype(kept, hidden)
        previous = self._inputs.batches[-1][1] if self._inputs.batches else None
        self._inputs.batches.append((hidden, _share_equal(kept, previous)))
        if self.stop:
            raise StopForward

    def _in_dtype(self, kwargs: dict[str, Any], hidden: Tensor) -> dict[str, Any]:
        kwargs = cast_floating(kwargs, self.dtype)
        if self.rotary is not None and "position_embeddings" in kwargs and kwargs.get("position_ids") is not None:
            kwargs["position_embeddings"] = self.rotary(hidden, kwargs["position_ids"])  # (cos, sin) in dtype
        return kwargs

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
    return emb.weight.device if emb is not None else model_device(model)


def capture_layer_inputs(
    model: nn.Module, batches: Iterable[Tensor | Mapping[str, Tensor]], offload: bool = False,
    dtype: torch.dtype | None = None,
) -> LayerInputs:
    """Run each batch (see :func:`model_inputs`) up to decoder layer 0 and keep what enters it (in
    ``dtype``, see :class:`LayerInputCatcher`)."""
    device = _input_device(model)
    catcher = LayerInputCatcher(model, offload=offload, stop=True, dtype=dtype)
    with torch.no_grad(), catcher:
        for batch in batches:
            kwargs = to_device(model_inputs(batch), device)
            try:
                model(**kwargs, use_cache=False)
            except StopForward:
                pass
    if not len(catcher.inputs):
        raise ValueError("capture_layer_inputs got no batches")
    return catcher.inputs
