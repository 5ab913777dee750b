"""A one-shot hook before ``strategy.setup``: the one point of a fit after ``configure_model`` and the
checkpoint restore, and before the model is moved, wrapped (DDP) and the optimizers are built.

Lightning runs, in ``Trainer.fit`` (checked by ``tests/test_lightning_restore_order.py``, with 2.6;
pyproject.toml bounds the version to the tested range): ``setup`` hooks -> ``configure_model`` -> checkpoint restore (``on_load_checkpoint``, model weights)
-> ``strategy.setup`` (move, wrap, optimizers) -> optimizer state restore. No public hook sits
between the restore and ``strategy.setup``, so this wraps that method of one strategy instance.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

_MISSING = object()


class BeforeStrategySetup:
    """Run ``hook()`` once, right before ``strategy.setup`` of one strategy instance.

    ``install`` wraps the instance's ``setup``; the wrapper removes itself when it runs, and ``remove``
    removes it if it never ran (teardown, an exception). A wrapper someone installed after ours is
    left in place."""

    def __init__(self) -> None:
        self._installed: Optional[tuple] = None  # (strategy, what strategy.__dict__["setup"] was, our wrapper)

    @property
    def installed(self) -> bool:
        return self._installed is not None

    def install(self, strategy: Any, hook: Callable[[], None]) -> None:
        self.remove()
        original = strategy.setup

        def setup(*args: Any, **kwargs: Any) -> Any:
            self.remove()
            hook()
            return original(*args, **kwargs)

        self._installed = (strategy, strategy.__dict__.get("setup", _MISSING), setup)
        strategy.setup = setup

    def remove(self) -> None:
        if self._installed is None:
            return
        strategy, before, ours = self._installed
        self._installed = None
        if strategy.__dict__.get("setup") is not ours:
            return  # someone wrapped it after us: leave theirs in place
        if before is _MISSING:
            del strategy.setup
        else:
            strategy.setup = before


def rewrap_ddp(trainer: Any, pl_module: Any) -> None:
    """After a pruning step inside fit: a DDP wrapper registered the old parameters, wrap the module again."""
    from lightning.pytorch.strategies import DDPStrategy

    strategy = trainer.strategy
    if isinstance(strategy, DDPStrategy):
        strategy.model = pl_module
        strategy.configure_ddp()
