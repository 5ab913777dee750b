"""The callback inside a user's training: prune in setup("fit") or at an epoch, train, checkpoint, resume."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from conftest import make_tiny_llama
from rcpu_lightning.lightning import (
    CausalLMModule,
    PruningPlanMixin,
    RCPUPruningCallback,
    TensorRows,
    UnpaddedDistributedSampler,
)
from rcpu_lightning.pruning import PruningConfig

sys.path.insert(0, str(Path(__file__).parent / "scripts"))


def _pattern(n: int, seqlen: int = 16, seed: int = 0) -> torch.Tensor:
    """Learnable rows: each row counts up from a random start (mod 64)."""
    starts = torch.randint(0, 64, (n, 1), generator=torch.Generator().manual_seed(seed))
    return (starts + torch.arange(seqlen)) % 64  # [n, seqlen]


def _calibration():
    return [b for b in _pattern(16, seed=1).split(4)]


class UserLM(L.LightningModule):
    """A plain user module: no knowledge of pruning."""

    def __init__(self, lr: float = 3e-3):
        super().__init__()
        self.save_hyperparameters()
        self.net = make_tiny_llama(num_heads=6, num_kv_heads=2)
        self.net.train()
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        loss = self.net(input_ids=batch, labels=batch, use_cache=False).loss
        self.losses.append(float(loss.detach()))
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class UserLMWithPlan(PruningPlanMixin, UserLM):
    """The same module with the mixin: load_from_checkpoint rebuilds the pruned shapes too."""


def _train_loader():
    return DataLoader(TensorRows(_pattern(64)), batch_size=8, shuffle=False)


def _trainer(tmp_path, **kw):
    kw.setdefault("max_epochs", 2)
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=tmp_path, **kw)


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _pruning(ratio: float = 0.34, **kw):
    config = PruningConfig(ratio=ratio, head_rounding="nearest")
    return RCPUPruningCallback(config, calibration_dataloader=_calibration, progress=False, **kw)


def test_prune_in_setup_then_train_and_resume(tmp_path):
    module = UserLMWithPlan()
    dense = _params(module)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    trainer = _trainer(tmp_path, callbacks=[_pruning(), ckpt])
    trainer.fit(module, train_dataloaders=_train_loader())
    assert _params(module) < 0.85 * dense
    assert module.pruning_plan is not None
    assert module.losses[-1] < 0.8 * module.losses[0]  # fine-tuning the pruned model works
    opt_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in module.parameters()}

    last = tmp_path / "ckpt" / "last.ckpt"
    loaded = UserLMWithPlan.load_from_checkpoint(last)
    ids = _pattern(2, seed=5)
    module.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.net(input_ids=ids).logits, module.net(input_ids=ids).logits)

    # Resume a plain module (no mixin) that is still dense when the restore starts (prune_at_epoch:
    # nothing is pruned in setup): the callback's instance hooks rebuild the shapes in time.
    resumed = UserLM()
    trainer2 = _trainer(tmp_path, max_epochs=3, callbacks=[_pruning(prune_at_epoch=0)])
    trainer2.fit(resumed, train_dataloaders=_train_loader(), ckpt_path=last)
    assert trainer2.global_step == 3 * 8 and _params(resumed) == _params(module)
    assert resumed.pruning_plan == module.pruning_plan
    assert resumed.losses[-1] < module.losses[0]


def test_prune_at_epoch_rebuilds_optimizers(tmp_path):
    module = UserLM()
    dense = _params(module)
    trainer = _trainer(tmp_path, max_epochs=3, enable_checkpointing=False, callbacks=[_pruning(prune_at_epoch=1)])
    trainer.fit(module, train_dataloaders=_train_loader())
    assert _params(module) < 0.85 * dense and trainer.global_step == 3 * 8
    opt_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in module.parameters()}  # no stale (dense) parameters
    after_pruning = module.losses[8:]
    assert all(torch.isfinite(torch.tensor(after_pruning))) and after_pruning[-1] < after_pruning[0]


def test_model_pruned_in_predict_loop_can_be_finetuned_and_reloaded(tmp_path):
    module = CausalLMModule(make_tiny_llama(num_heads=6, num_kv_heads=2), lr=3e-3)
    dense = module.num_parameters()
    predict = _trainer(tmp_path, inference_mode=True, callbacks=[_pruning()])
    predict.predict(module, dataloaders=DataLoader(TensorRows(_pattern(16, seed=1)), batch_size=4),
                    return_predictions=False)
    assert module.num_parameters() < 0.85 * dense and module.pruning_plan is not None
    assert "pruning_plan" not in module.hparams  # the plan travels once, in the checkpoint, not as an hparam
    assert not any(p.is_inference() for p in module.parameters())

    module.losses = []
    fit = _trainer(tmp_path, max_epochs=2, enable_checkpointing=False)
    fit.fit(module, train_dataloaders=_train_loader())
    path = tmp_path / "finetuned.ckpt"
    fit.save_checkpoint(path)
    fresh = CausalLMModule.load_from_checkpoint(path, model=make_tiny_llama(num_heads=6, num_kv_heads=2))
    ids = _pattern(2, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(fresh.model.eval()(input_ids=ids).logits, module.model.eval()(input_ids=ids).logits)


def test_finetuning_after_predict_pruning_lowers_the_loss(tmp_path):
    module = CausalLMModule(make_tiny_llama(num_heads=6, num_kv_heads=2), lr=3e-3)
    _trainer(tmp_path, callbacks=[_pruning()]).predict(
        module, dataloaders=DataLoader(TensorRows(_pattern(16, seed=1)), batch_size=4), return_predictions=False)
    ids = _pattern(32, seed=3)
    with torch.no_grad():
        before = float(module.model(input_ids=ids, labels=ids).loss)
    _trainer(tmp_path, max_epochs=2, enable_checkpointing=False).fit(module, train_dataloaders=_train_loader())
    with torch.no_grad():
        after = float(module.model.eval()(input_ids=ids, labels=ids).loss)
    assert after < 0.8 * before


def test_missing_calibration_data_fails_before_training(tmp_path):
    callback = RCPUPruningCallback(PruningConfig(ratio=0.2))
    trainer = _trainer(tmp_path, callbacks=[callback, ModelCheckpoint(dirpath=tmp_path / "ckpt")])
    with pytest.raises(ValueError, match="no calibration data for fit"):
        trainer.fit(UserLM(), train_dataloaders=_train_loader())
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())


def test_checkpoint_carries_the_plan_once_and_resumes_under_another_world_size(tmp_path, caplog):
    module = UserLM()
    trainer = _trainer(tmp_path, max_epochs=1, callbacks=[_pruning(), ModelCheckpoint(dirpath=tmp_path / "ckpt")])
    trainer.fit(module, train_dataloaders=_train_loader())
    [saved] = list((tmp_path / "ckpt").iterdir())
    ckpt = torch.load(saved, weights_only=False)
    assert ckpt["rcpu_pruning_plan"] == module.pruning_plan  # once: not among the hyper-parameters too
    assert "pruning_plan" not in ckpt["hyper_parameters"] and "rcpu_world_size" not in ckpt
    [state] = [v for k, v in ckpt["callbacks"].items() if k.startswith("RCPUPruningCallback")]
    assert state["pruned"] and state["config"]["ratio"] == 0.34
    # The pruning decisions are sums over all calibration samples, whatever their split over processes:
    # another world size, or other callback settings, do not change the checkpoint's pruned model.
    other = _pruning(ratio=0.5)
    resumed = UserLM()
    with caplog.at_level("INFO", logger="rcpu_lightning"):
        _trainer(tmp_path, max_epochs=2, callbacks=[other]).fit(resumed, train_dataloaders=_train_loader(), ckpt_path=saved)
    assert resumed.pruning_plan == module.pruning_plan and _params(resumed) == _params(module)
    assert "is not pruned again" in caplog.text


@pytest.mark.parametrize("make, message", [
    (lambda: RCPUPruningCallback(PruningConfig(ratio=1.5)), r"ratio=1.5 is out of range"),
    (lambda: RCPUPruningCallback(PruningConfig(method="sparsegpt")), r"method='sparsegpt' is not supported"),
    (lambda: RCPUPruningCallback(prune_at_epoch=-1), r"prune_at_epoch=-1"),
    (lambda: RCPUPruningCallback(save_dir="out/{methd}"), r"unknown placeholder 'methd'"),
])
def test_bad_callback_arguments_fail_at_construction(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_unpadded_sampler_covers_every_window_once():
    rows = TensorRows(torch.zeros(9, 4))
    seen = [i for rank in range(2) for i in UnpaddedDistributedSampler(rows, 2, rank)]
    assert sorted(seen) == list(range(9)) and len(UnpaddedDistributedSampler(rows, 2, 1)) == 4
    assert list(UnpaddedDistributedSampler(TensorRows(torch.zeros(1, 4)), 2, 1)) == []


def test_readme_example_runs(tmp_path):
    from callback_example import run
    from tiny_setup import save_tiny_llama, write_tiny_wikitext

    model = save_tiny_llama(tmp_path / "model")
    data = write_tiny_wikitext(tmp_path / "data")
    results = run(str(model), str(data), save_dir=str(tmp_path / "pruned"), max_steps=3,
                  eval_seqlen=16, train_nsamples=16)
    assert results["ppl"] > 1 and results["tokens"] == 9 * 15
    assert (tmp_path / "pruned" / "pruning_plan.json").is_file()


def test_predict_loop_pruning_equals_the_engine_and_skips_the_lm_head(tmp_path):
    from rcpu_lightning.pruning import PruningConfig, capture_layer_inputs, prune_model

    batches = list(_pattern(16, seed=1).split(4))
    reference = make_tiny_llama(num_heads=6, num_kv_heads=2)
    cfg = PruningConfig(ratio=0.34, head_rounding="nearest")
    prune_model(reference, capture_layer_inputs(reference, batches), cfg, progress=False)

    module = CausalLMModule(make_tiny_llama(num_heads=6, num_kv_heads=2))
    head_calls = []
    module.model.lm_head.register_forward_hook(lambda *a: head_calls.append(1))
    _trainer(tmp_path, callbacks=[_pruning()]).predict(
        module, dataloaders=DataLoader(TensorRows(torch.cat(batches)), batch_size=4), return_predictions=False)
    assert head_calls == []  # calibration forwards stop at decoder layer 0
    ref_state = reference.state_dict()
    for name, value in module.model.state_dict().items():
        torch.testing.assert_close(value, ref_state[name], msg=name)


def test_an_empty_calibration_loader_fails_clearly_in_the_predict_loop(tmp_path):
    module = CausalLMModule(make_tiny_llama(num_heads=6, num_kv_heads=2))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = _trainer(tmp_path, callbacks=[_pruning()])
    with pytest.raises(ValueError, match="the calibration data is empty"):
        trainer.predict(module, dataloaders=DataLoader(TensorRows(torch.zeros(0, 16, dtype=torch.long))),
                        return_predictions=False)
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())
