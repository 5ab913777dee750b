"""What every rank of a run must agree on: work done on rank 0 whose outcome (or error) every rank
gets, sums over ranks, and stopping together on SIGTERM."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_info


def on_rank_zero(trainer: Trainer, work: Callable[[], Any], catch: tuple[type[BaseException], ...] = (OSError,),
                 failure: Optional[str] = None) -> Any:
    """Run ``work()`` on rank 0 and broadcast its result, or its error, so that every rank returns the
    result or raises the error (no rank is left waiting at the next collective). An error of a type in
    ``catch`` is raised again as the same type and message; with ``failure`` (for ``catch=(Exception,)``,
    whose types need not rebuild from a message) as ``RuntimeError(f"{failure}: {type}: {message}")``."""
    error, result = None, None
    if trainer.is_global_zero:
        try:
            result = work()
        except catch as exc:  # with ``failure`` only its name travels (any class, even one that does not pickle)
            error = (type(exc), str(exc)) if failure is None else (None, f"{type(exc).__name__}: {exc}")
    error, result = trainer.strategy.broadcast((error, result), src=0)
    if error is None:
        return result
    if failure is not None:
        raise RuntimeError(f"{failure}: {error[1]}")
    raise error[0](error[1])


def sum_over_ranks(trainer: Trainer) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """The engine's ``reduce``: a tensor summed over ranks in float64 (None on one process)."""
    if trainer.world_size <= 1:
        return None
    strategy = trainer.strategy

    def reduce(t: torch.Tensor) -> torch.Tensor:
        # strategy.reduce all-reduces in place (gloo has no AVG; integers would truncate): the
        # engine hands over a fresh buffer of its own, so a float64 one is summed where it is
        buf = t.detach().to(torch.float64)
        return strategy.reduce(buf, reduce_op="sum").to(t.dtype)

    return reduce


def stop_on_sigterm(trainer: Trainer, report: Optional[Callable[[Any], None]]) -> Callable[[Any], None]:
    """The engine's per-layer progress function: ``report`` it, then stop the way Lightning's loops do
    once the trainer received SIGTERM (``trainer.received_sigterm``; cli.py stops even sooner)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    def progress(event: Any) -> None:
        if report is not None:
            report(event)
        stop = trainer.received_sigterm
        if trainer.world_size > 1:  # every rank calls this after every layer: all stop at the same layer
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            rank_zero_info(f"SIGTERM received: stopping after layer {event.index + 1}/{event.total}; nothing is saved")
            raise SIGTERMException()

    return progress
