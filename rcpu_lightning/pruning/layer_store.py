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
    """Layers that stay in memory: moved to ``execution_device`` for their turn, then back home.

    ``execution_device=None`` leaves every layer where it is (the whole model on one device).
    """

    def __init__(self, execution_device: str | torch.device | None = None) -> None:
        self.device = None if execution_device is None else torch.device(execution_device)
        self._home: dict[int, torch.device] = {}

    def load(self, index: int, layer: nn.Module) -> None:
        if self.device is not None:
            self._home[index] = model_device(layer)
            layer.to(self.device)

    def unload(self, index: int, layer: nn.Module) -> None:
        if index in self._home:
            layer.to(self._home.pop(index))

    save = unload
