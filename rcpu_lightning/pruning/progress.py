"""Per-layer progress of the engine, reported to a function the caller chooses.

:func:`~rcpu_lightning.pruning.prune_model` calls ``progress(LayerProgress)`` after every decoder
layer. ``progress=True`` uses :func:`default_progress` (a tqdm bar on a terminal, one log line per
layer otherwise, so progress shows in files and CI logs too); ``progress=False`` reports nothing.
Distributed callers pass a reporter only on the process that should print (the Lightning callback
does that on global rank 0).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from .plan import LayerPlan

log = logging.getLogger(__name__)


#: The phases of one layer's turn, in order (seconds of each in :attr:`PhaseClock.seconds`).
PHASES = ("load", "statistics", "compensate_o_proj", "compensate_down_proj", "surgery", "forward", "save")


@dataclass
class PhaseClock:
    """Wall seconds per phase of one layer's turn (:data:`PHASES`): ``load`` and ``save`` move the layer
    (from disk, out of core), ``statistics`` is the dense forward with its hooks (and the reduce),
    ``compensate_*`` choose the kept columns and compensate, ``forward`` runs the pruned layer."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; phases: {PHASES}")
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start


@dataclass(frozen=True)
class LayerProgress:
    """What happened to one decoder layer."""

    index: int  # 0-based layer index
    total: int  # decoder layers in the model
    seconds: float  # wall time of this layer
    elapsed: float  # wall time since pruning started
    plan: LayerPlan
    params_removed: float  # fraction of this layer's parameters removed
    rss_mb: float | None  # resident memory of this process now (None where unknown)
    device_mb: float | None  # peak accelerator memory allocated so far (CUDA only)
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase (PhaseClock)

    def describe(self) -> str:
        mem = [f"RSS {self.rss_mb:,.0f} MB"] if self.rss_mb is not None else []
        mem += [f"GPU peak {self.device_mb:,.0f} MB"] if self.device_mb is not None else []
        return (f"layer {self.index + 1}/{self.total}: heads {self.plan.num_heads}, kv heads {self.plan.num_kv_heads}, "
                f"channels {self.plan.intermediate_size}, params -{100 * self.params_removed:.1f}%, "
                f"{self.seconds:.1f} s ({self.elapsed:.0f} s total){', ' if mem else ''}{', '.join(mem)}")


ProgressFn = Callable[[LayerProgress], None]


def default_progress(desc: str = "pruning layers") -> ProgressFn:
    """A tqdm bar when stderr is a terminal, else one ``INFO`` log line per layer."""
    if not sys.stderr.isatty():
        return lambda event: log.info("%s", event.describe())
    from tqdm.auto import tqdm

    bar = None

    def report(event: LayerProgress) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=event.total, desc=desc, unit="layer")
        bar.set_postfix_str(f"{event.seconds:.1f} s/layer" + (f", RSS {event.rss_mb:,.0f} MB" if event.rss_mb else "")
                            + (f", GPU peak {event.device_mb:,.0f} MB" if event.device_mb is not None else ""))
        bar.update(1)
        if event.index + 1 == event.total:
            bar.close()

    return report


def resolve_progress(progress: bool | ProgressFn | None) -> ProgressFn | None:
    """``True`` -> :func:`default_progress`; ``False``/``None`` -> no reporting; a callable as is."""
    if progress is True:
        return default_progress()
    if not progress:
        return None
    if not callable(progress):
        raise TypeError(f"progress must be a bool or a callable taking a LayerProgress, got {type(progress).__name__}")
    return progress
