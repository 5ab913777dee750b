"""Where a decoder layer's weights live while the engine is not working on it (sequential onloading).

The engine asks a :class:`LayerStore` for one layer at a time: ``load`` puts layer ``i`` on the
execution device, ``save`` takes the pruned layer away again (back to its home device, or written to
disk and dropped: :class:`~rcpu_lightning.pruning.streaming.SafetensorsLayers`), ``unload`` takes an
unchanged layer away (AL-AM's dense pass). So the execution device never holds more than one layer
plus the calibration activations and the statistics.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from ..models.adapter import model_device


class LayerStore(Protocol):
    def load(self, index: int, layer: nn.Module) -> None:
        """Make layer ``index``'s weights usable on the execution device."""

    def unload(self, index: int, layer: nn.Module) -> None:
        """Take an unchanged layer away from the execution device."""

    def save(self, index: int, layer: nn.Module) -> None:
        """Take the pruned layer away from the execution device (keeping or writing its weights)."""


class ResidentLayers:
    """Layers that stay in memory: moved to ``execution_device`` and cast to ``execution_dtype`` for their
    turn, then back home: each floating tensor to its own device and dtype again (a tensor the surgery
    added, e.g. a compensation bias, to the dtype of the layer's first parameter).

    ``None`` for both leaves every layer where and as it is (the whole model on one device, in its dtype).
    """

    def __init__(self, execution_device: str | torch.device | None = None,
                 execution_dtype: torch.dtype | None = None) -> None:
        self.device = None if execution_device is None else torch.device(execution_device)
        self.dtype = execution_dtype
        self._home: dict[int, tuple[torch.device, dict[str, torch.dtype]]] = {}

    def load(self, index: int, layer: nn.Module) -> None:
        if self.device is None and self.dtype is None:
            return
        self._home[index] = (model_device(layer), floating_dtypes(layer))
        layer.to(device=self.device, dtype=self.dtype)

    def unload(self, index: int, layer: nn.Module) -> None:
        if index not in self._home:
            return
        device, dtypes = self._home.pop(index)
        layer.to(device)
        if self.dtype is not None:
            restore_dtypes(layer, dtypes)

    save = unload


def floating_dtypes(layer: nn.Module) -> dict[str, torch.dtype]:
    """The dtype of each floating parameter and buffer of ``layer``, by name (in registration order)."""
    return {name: t.dtype for name, t in _tensors(layer) if t.is_floating_point()}


def restore_dtypes(layer: nn.Module, dtypes: dict[str, torch.dtype]) -> None:
    """Cast each floating tensor of ``layer`` to its dtype in ``dtypes`` (:func:`floating_dtypes`); a name
    not there (a bias the surgery added) to the first recorded dtype, the layer's weights' one."""
    default = next(iter(dtypes.values()), None)
    with torch.no_grad():
        for name, t in _tensors(layer):
            dtype = dtypes.get(name, default)
            if t.is_floating_point() and dtype is not None and t.dtype != dtype:
                t.data = t.data.to(dtype)


def _tensors(layer: nn.Module):
    yield from layer.named_parameters()
    yield from layer.named_buffers()
