"""The callback inside a user's training: prune before training, train, checkpoint, resume without
re-pruning, checkpoint hooks that compose with the user's, models built in configure_model, errors."""

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
from rcpu_lightning.lightning.checkpointing import CHECKPOINT_MARKER_KEY

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

    # Resume a plain module (no mixin), dense when the restore starts: the callback's instance hooks
    # rebuild the shapes in time, and the callback does not prune again.
    resumed = UserLM()
    trainer2 = _trainer(tmp_path, max_epochs=3, callbacks=[_pruning()])
    trainer2.fit(resumed, train_dataloaders=_train_loader(), ckpt_path=last)
    assert trainer2.global_step == 3 * 8 and _params(resumed) == _params(module)
    assert resumed.pruning_plan == module.pruning_plan
    assert resumed.losses[-1] < module.losses[0]


def test_pruned_checkpoint_loaded_without_the_plan_hooks_names_the_mixin(tmp_path):
    """A module without PruningPlanMixin (load_from_checkpoint) or without the callback (fit(ckpt_path=))
    cannot rebuild the pruned shapes: torch's size-mismatch error must name the fix on its first line."""
    module = UserLMWithPlan()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    _trainer(tmp_path, max_epochs=1, callbacks=[_pruning(), ckpt]).fit(module, train_dataloaders=_train_loader())
    last = tmp_path / "ckpt" / "last.ckpt"
    with pytest.raises(RuntimeError) as err:
        UserLM.load_from_checkpoint(last)
    first_problem = str(err.value).splitlines()[1]  # line 0: "Error(s) in loading state_dict for UserLM:"
    assert "PruningPlanMixin" in first_problem and "RCPUPruningCallback" in first_problem
    with pytest.raises(RuntimeError, match="PruningPlanMixin"):
        _trainer(tmp_path, max_epochs=2).fit(UserLM(), train_dataloaders=_train_loader(), ckpt_path=last)
    # with the mixin the marker is consumed before the weights load (strict loading passes)
    assert UserLMWithPlan.load_from_checkpoint(last).pruning_plan == module.pruning_plan


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
    assert [s["epoch"] for s in state["steps"]] == [0] and state["config"]["ratio"] == 0.34
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
    (lambda: RCPUPruningCallback(save_dir="out/{methd}"), r"unknown placeholder 'methd'"),
    (lambda: RCPUPruningCallback(export_dir="out/{ratoi}"), r"unknown placeholder 'ratoi'"),
    (lambda: RCPUPruningCallback(schedule={0: 0.3, 2: 0.2}), r"decreases"),
    (lambda: RCPUPruningCallback(schedule={-1: 0.3}), r"schedule epoch -1"),
    (lambda: RCPUPruningCallback(schedule={0: 1.0}), r"schedule\[0\]=1.0 is out of range"),
    (lambda: RCPUPruningCallback(schedule=[0.1, 0.2]), r"schedule=\[0.1, 0.2\] is invalid"),
    (lambda: RCPUPruningCallback(PruningConfig(attn_ratio=0.5), schedule={0: 0.3}), r"attn_ratio"),
    (lambda: RCPUPruningCallback(PruningConfig(method="flap", structure="al_am"), schedule={0: 0.1, 1: 0.2}),
     r"needs structure='uniform'"),
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

    from rcpu_lightning.data import CalibrationConfig
    from rcpu_lightning.pruning import load_pruned

    model = save_tiny_llama(tmp_path / "model")
    data = write_tiny_wikitext(tmp_path / "data")
    module, results = run(str(model), str(data), save_dir=str(tmp_path / "pruned"),
                          export_dir=str(tmp_path / "finetuned"), max_steps=3,
                          calibration=CalibrationConfig(nsamples=16, seqlen=16), eval_seqlen=16, train_nsamples=16,
                          ppl_max_windows=5)
    assert results["ppl"] > 1 and results["tokens"] == 5 * 15  # the first 5 of the 9 test windows (bounded)
    assert (tmp_path / "pruned" / "pruning_plan.json").is_file()
    # save_dir: before fine-tuning; export_dir: after it (the module's weights now)
    ids = _pattern(2, seed=3)
    with torch.no_grad():
        now = module.model.eval()(input_ids=ids).logits
        torch.testing.assert_close(load_pruned(tmp_path / "finetuned").eval()(input_ids=ids).logits, now)
        assert not torch.allclose(load_pruned(tmp_path / "pruned").eval()(input_ids=ids).logits, now)


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


# -- resume: the checkpoint's pruned model, no calibration, no pruning, save_dir untouched (issue #15) --------
@pytest.fixture
def engine_calls(monkeypatch):
    """Count what the callback calls of the engine: calibration captures and prunes."""
    import rcpu_lightning.lightning.callback as cb

    calls = {"capture": 0, "catcher": 0, "prune": 0}
    real_capture, real_prune, real_catcher = cb.capture_layer_inputs, cb.prune_model, cb.LayerInputCatcher

    def capture(*args, **kwargs):
        calls["capture"] += 1
        return real_capture(*args, **kwargs)

    def prune(*args, **kwargs):
        calls["prune"] += 1
        return real_prune(*args, **kwargs)

    class Catcher(real_catcher):
        def __init__(self, *args, **kwargs):
            calls["catcher"] += 1
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(cb, "capture_layer_inputs", capture)
    monkeypatch.setattr(cb, "prune_model", prune)
    monkeypatch.setattr(cb, "LayerInputCatcher", Catcher)
    return calls


class EvalLM(UserLM):
    """The user module with evaluation and predict steps (for validate/test/predict(ckpt_path=...))."""

    def validation_step(self, batch, batch_idx):
        return self.net(input_ids=batch, labels=batch).loss

    test_step = validation_step

    def predict_step(self, batch, batch_idx):
        return self.net(input_ids=batch).logits


class WeightsAtStart(L.Callback):
    """The module's weights when each loop starts (after any checkpoint restore)."""

    def __init__(self):
        self.seen = {}

    def _grab(self, stage, pl_module):
        self.seen[stage] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_fit_start(self, trainer, pl_module):
        self._grab("fit", pl_module)

    def on_validation_start(self, trainer, pl_module):
        if not trainer.sanity_checking and trainer.state.fn == "validate":
            self._grab("validate", pl_module)

    def on_test_start(self, trainer, pl_module):
        self._grab("test", pl_module)

    def on_predict_start(self, trainer, pl_module):
        self._grab("predict", pl_module)


def _assert_same_weights(got: dict, want: dict) -> None:
    """Exact: the weights a loop sees are the checkpoint's tensors, copied (no arithmetic)."""
    assert got.keys() == want.keys()
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=0, msg=name)


def test_resume_restores_the_pruned_model_without_calibrating_or_pruning(tmp_path, engine_calls):
    save_dir = tmp_path / "pruned"
    trainer = _trainer(tmp_path, max_epochs=1, callbacks=[
        _pruning(save_dir=str(save_dir)), ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)])
    module = EvalLM()
    trainer.fit(module, train_dataloaders=_train_loader())
    assert engine_calls == {"capture": 1, "catcher": 0, "prune": 1}
    last = tmp_path / "ckpt" / "last.ckpt"
    saved = torch.load(last, weights_only=False)["state_dict"]
    assert saved.pop(CHECKPOINT_MARKER_KEY).numel() == 1  # the marker, consumed by the plan hooks
    written = {f.name: (f.stat().st_mtime_ns, f.read_bytes()) for f in save_dir.iterdir()}
    engine_calls.update(capture=0, catcher=0, prune=0)

    # fit(ckpt_path=...): a fresh dense module, the same callback settings (save_dir exists, no overwrite)
    probe = WeightsAtStart()
    resumed = EvalLM()
    trainer = _trainer(tmp_path, max_epochs=2, callbacks=[_pruning(save_dir=str(save_dir)), probe])
    trainer.fit(resumed, train_dataloaders=_train_loader(), ckpt_path=last)
    assert engine_calls == {"capture": 0, "catcher": 0, "prune": 0}
    _assert_same_weights(probe.seen["fit"], saved)  # the checkpoint's pruned weights, as saved
    assert trainer.global_step == 2 * 8 and resumed.pruning_plan == module.pruning_plan
    assert {f.name: (f.stat().st_mtime_ns, f.read_bytes()) for f in save_dir.iterdir()} == written

    # validate / test / predict(ckpt_path=...) with the callback attached: the same, for every loop
    rows = DataLoader(TensorRows(_pattern(8, seed=4)), batch_size=4)
    for loop in ("validate", "test", "predict"):
        probe = WeightsAtStart()
        getattr(_trainer(tmp_path, callbacks=[_pruning(), probe]), loop)(EvalLM(), rows, ckpt_path=last)
        assert engine_calls == {"capture": 0, "catcher": 0, "prune": 0}, loop
        _assert_same_weights(probe.seen[loop], saved)


# -- checkpoint hooks that compose with the user's own (issue #15, item 2) -----------------------------------
class UserBase(L.LightningModule):
    """A user's base class with its own checkpoint hooks (they do not call super())."""

    def __init__(self):
        super().__init__()
        self.net = make_tiny_llama(num_heads=6, num_kv_heads=2)
        self.heads_seen_on_load = None
        self.user_state = None

    def on_save_checkpoint(self, checkpoint):
        checkpoint["user_key"] = {"tokens_seen": 1234}

    def on_load_checkpoint(self, checkpoint):
        self.user_state = checkpoint.get("user_key")
        attn = self.net.model.layers[0].self_attn
        self.heads_seen_on_load = attn.q_proj.out_features // attn.head_dim  # the LM as the hook sees it

    def training_step(self, batch, batch_idx):
        return self.net(input_ids=batch, labels=batch).loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class UserBaseWithSuper(UserBase):
    """The same hooks, calling super() as Lightning's docs suggest."""

    def on_save_checkpoint(self, checkpoint):
        super().on_save_checkpoint(checkpoint)
        checkpoint["user_key"]["super"] = True

    def on_load_checkpoint(self, checkpoint):
        super().on_load_checkpoint(checkpoint)


class MixinFirst(PruningPlanMixin, UserBase):
    pass


class MixinLast(UserBase, PruningPlanMixin):
    pass


class SuperMixinFirst(PruningPlanMixin, UserBaseWithSuper):
    pass


class SuperMixinLast(UserBaseWithSuper, PruningPlanMixin):
    pass


@pytest.mark.parametrize("cls", [MixinFirst, MixinLast, SuperMixinFirst, SuperMixinLast], ids=lambda c: c.__name__)
def test_checkpoint_hooks_compose_with_the_users_in_both_base_orders(tmp_path, cls):
    module = cls()
    trainer = _trainer(tmp_path, max_epochs=1, enable_checkpointing=False, callbacks=[_pruning()])
    trainer.fit(module, train_dataloaders=_train_loader())
    path = tmp_path / "pruned.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    want = {"tokens_seen": 1234, **({"super": True} if issubclass(cls, UserBaseWithSuper) else {})}
    assert ckpt["user_key"] == want  # the user's keys are kept
    assert ckpt["rcpu_pruning_plan"] == module.pruning_plan  # and the plan added

    loaded = cls.load_from_checkpoint(path)
    assert loaded.user_state == want and loaded.heads_seen_on_load == 4  # the user's hook ran on the pruned LM
    ids = _pattern(2, seed=9)
    with torch.no_grad():
        torch.testing.assert_close(loaded.net.eval()(input_ids=ids).logits, module.net.eval()(input_ids=ids).logits)

    # The user's own base class without the mixin: the callback's instance hooks give a resumed fit the same.
    plain = UserBaseWithSuper() if issubclass(cls, UserBaseWithSuper) else UserBase()
    _trainer(tmp_path, max_epochs=2, enable_checkpointing=False, callbacks=[_pruning()]).fit(
        plain, train_dataloaders=_train_loader(), ckpt_path=path)
    assert plain.user_state == want and plain.heads_seen_on_load == 4 and plain.pruning_plan == module.pruning_plan


# -- a LightningModule that builds its LM in configure_model (issue #15, item 3) ------------------------------
class LazyLM(PruningPlanMixin):
    """Builds the LM in configure_model (the usual pattern for large models); records what the optimizer got."""

    def __init__(self):
        super().__init__()
        self.net = None
        self.built = 0
        self.heads_at_optimizers = None

    def configure_model(self):
        if self.net is None:
            self.net = make_tiny_llama(num_heads=6, num_kv_heads=2)
            self.built += 1

    def training_step(self, batch, batch_idx):
        return self.net(input_ids=batch, labels=batch).loss

    def configure_optimizers(self):
        attn = self.net.model.layers[0].self_attn
        self.heads_at_optimizers = attn.q_proj.out_features // attn.head_dim
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def test_a_model_built_in_configure_model_is_pruned_once_before_the_optimizers(tmp_path, engine_calls):
    module = LazyLM()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    trainer = _trainer(tmp_path, max_epochs=1, callbacks=[_pruning(), ckpt])
    trainer.fit(module, train_dataloaders=_train_loader())
    assert module.built == 1 and engine_calls["prune"] == 1
    assert module.heads_at_optimizers == 4  # the optimizer was built over the pruned model
    opt_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in module.parameters()}
    loaded = LazyLM.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt")  # Lightning calls configure_model first
    ids = _pattern(2, seed=11)
    with torch.no_grad():
        torch.testing.assert_close(loaded.net.eval()(input_ids=ids).logits, module.net.eval()(input_ids=ids).logits)


def test_an_unprunable_configure_model_fails_before_any_calibration(tmp_path, engine_calls):
    module = LazyLM()
    trainer = _trainer(tmp_path, max_epochs=1, callbacks=[_pruning(ratio=0.99)])
    with pytest.raises(ValueError, match="would remove all"):
        trainer.fit(module, train_dataloaders=_train_loader())
    assert engine_calls == {"capture": 0, "catcher": 0, "prune": 0} and module.built == 1


# -- errors: architecture and strategy named (issue #15, items 7 and 3) -------------------------------------
def test_a_non_llama_model_is_refused_naming_its_architecture_and_the_supported_ones(tmp_path, engine_calls):
    from transformers import GPT2Config, GPT2LMHeadModel

    class GPTUser(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=32))

        def training_step(self, batch, batch_idx):
            return self.net(input_ids=batch, labels=batch).loss

        def predict_step(self, batch, batch_idx):
            return self.net(input_ids=batch).logits

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters())

    module = GPTUser()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    for run in (lambda t: t.fit(module, train_dataloaders=_train_loader()),
                lambda t: t.predict(module, dataloaders=_train_loader(), return_predictions=False)):
        with pytest.raises(ValueError, match=r"unsupported architecture .*model_type='gpt2'.*\['llama', 'mistral', 'qwen2'\]"):
            run(_trainer(tmp_path, max_epochs=1, callbacks=[_pruning()]))
    assert engine_calls == {"capture": 0, "catcher": 0, "prune": 0}
    _assert_same_weights(module.state_dict(), before)


def test_sharded_strategies_are_refused_with_the_way_round(tmp_path):
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy

    trainer = SimpleNamespace(strategy=FSDPStrategy(), datamodule=None, world_size=1, is_global_zero=True)
    with pytest.raises(ValueError, match=r"pruning inside fit needs a single-device or DDP strategy, not FSDPStrategy"
                                         r".*Prune first \(cli.py prune"):
        _pruning().setup(trainer, UserLM(), "fit")


def test_a_users_own_module_is_pruned_finetuned_resumed_and_exported_in_one_script(tmp_path, engine_calls):
    from own_module_lifecycle import MyLM, run

    facts = run(tmp_path)
    dense = sum(p.numel() for p in MyLM().parameters())
    assert facts["params_first"] < 0.85 * dense and facts["params_resumed"] == facts["params_first"]
    assert engine_calls["prune"] == 1 and facts["prunes"] == 1  # the resume did not prune again
    assert facts["steps"] == 2 * 8 and facts["export_vs_module_max_abs_diff"] < 1e-5
    assert (tmp_path / "exported" / "pruning_plan.json").is_file()


def test_the_real_samples_of_a_padding_sampler_are_the_first_ones_each_rank_yields():
    from torch.utils.data import DistributedSampler

    from rcpu_lightning.lightning.data import real_samples_of_rank

    data = TensorRows(torch.arange(15)[:, None])  # 15 samples, 2 ranks: torch pads to 16
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=0)
        real = real_samples_of_rank(DataLoader(data, batch_size=3, sampler=sampler))
        seen += list(sampler)[:real]
    assert sorted(seen) == list(range(15))  # every sample once, the repeat left out
    unpadded = UnpaddedDistributedSampler(data, 2, 1)
    assert real_samples_of_rank(DataLoader(data, sampler=unpadded)) is None
    dropping = DistributedSampler(data, num_replicas=2, rank=0, drop_last=True)
    assert real_samples_of_rank(DataLoader(data, sampler=dropping)) is None and real_samples_of_rank(_train_loader()) is None

    class OwnOrder(DistributedSampler):  # pads, but draws its own way: the repeats cannot be found
        def __iter__(self):
            return iter(range(self.rank, self.total_size, self.num_replicas))

    with pytest.raises(ValueError, match=r"repeats 1 of its 15 samples .*UnpaddedDistributedSampler"):
        real_samples_of_rank(DataLoader(data, sampler=OwnOrder(data, num_replicas=2, rank=0)))
