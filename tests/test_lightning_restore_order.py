"""The order of Lightning's fit that the pruning callback's first step relies on
(:mod:`rcpu_lightning.lightning.strategy_hook`): ``setup`` -> ``configure_model`` -> checkpoint restore
(module hook and weights) -> ``strategy.setup`` (optimizers built there). If a Lightning release
changes it, this test fails and says what moved; pyproject.toml bounds ``lightning`` to the tested range."""

import lightning
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.demos.boring_classes import BoringModel

from rcpu_lightning.lightning.strategy_hook import BeforeStrategySetup


class RecordingModel(BoringModel):
    def __init__(self, order):
        super().__init__()
        self.order = order

    def configure_model(self):
        self.order.append("configure_model")

    def on_load_checkpoint(self, checkpoint):
        self.order.append("restore")

    def configure_optimizers(self):
        self.order.append("optimizers")
        return super().configure_optimizers()


class HookBeforeStrategySetup(Callback):
    def __init__(self, order):
        self.order, self.hook, self.weight_at_hook = order, BeforeStrategySetup(), None

    def setup(self, trainer, pl_module, stage):
        self.order.append("setup")

        def before():
            self.order.append("before strategy.setup")
            self.weight_at_hook = pl_module.layer.weight.detach().clone()
            assert trainer.optimizers == [], "the optimizers exist before strategy.setup"

        self.hook.install(trainer.strategy, before)


def _trainer(tmp_path, callback, epochs):
    return Trainer(default_root_dir=tmp_path, max_epochs=epochs, limit_train_batches=2, limit_val_batches=0,
                   logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   accelerator="cpu", devices=1, callbacks=[callback])


def test_lightning_restores_a_checkpoint_after_configure_model_and_before_strategy_setup(tmp_path):
    torch.manual_seed(0)
    first = _trainer(tmp_path, HookBeforeStrategySetup([]), 1)
    first.fit(RecordingModel([]))
    ckpt = tmp_path / "epoch0.ckpt"
    first.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=True)["state_dict"]["layer.weight"]

    torch.manual_seed(1)  # a fresh model whose weights differ from the checkpoint's
    order = []
    hook = HookBeforeStrategySetup(order)
    trainer = _trainer(tmp_path, hook, 2)
    model = RecordingModel(order)
    assert not torch.equal(model.layer.weight, saved)
    trainer.fit(model, ckpt_path=ckpt)

    assert order == ["setup", "configure_model", "restore", "before strategy.setup", "optimizers"], (
        f"lightning {lightning.__version__} changed the order of fit ({order}): the pruning callback's first "
        "step must run after the checkpoint restore and before strategy.setup; see lightning/strategy_hook.py")
    # the weights were restored by the time of the hook (not only the module's on_load_checkpoint called)
    assert hook.weight_at_hook is not None and torch.equal(hook.weight_at_hook, saved)
    assert not hook.hook.installed and "setup" not in vars(trainer.strategy)  # removed itself when it ran


def test_a_hook_that_never_ran_is_removed_and_a_later_wrapper_is_left_in_place():
    class Strategy:
        def setup(self):
            return "original"

    strategy, calls = Strategy(), []
    hook = BeforeStrategySetup()
    hook.install(strategy, lambda: calls.append(1))
    hook.remove()
    assert "setup" not in vars(strategy) and strategy.setup() == "original" and calls == []

    hook.install(strategy, lambda: calls.append(1))
    theirs = lambda: "theirs"  # noqa: E731 - someone wraps it after us
    strategy.setup = theirs
    hook.remove()
    assert strategy.setup is theirs and calls == []
