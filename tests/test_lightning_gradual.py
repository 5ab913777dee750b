"""Gradual pruning with one callback and a schedule, and the export of the fine-tuned model (issue #15).

Each step re-calibrates on the current model; the optimizer object survives a step with its state sliced
to the kept rows/columns, the LR scheduler continues, checkpoints in the middle of a schedule resume to
the same weights as an uninterrupted run, and the model at the end of fit is written as a Hugging Face
checkpoint that reloads with identical logits.
"""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from conftest import make_tiny_llama
from rcpu_lightning.lightning import PruningPlanMixin, RCPUPruningCallback, TensorRows
from rcpu_lightning.lightning.cli import RCPUTrainer
from rcpu_lightning.pruning import PruningConfig, feasible_count, load_pruned

ATTN, MLP = ("q_proj", "k_proj", "v_proj", "o_proj"), ("gate_proj", "up_proj", "down_proj")
#: 6 heads in 2 kv groups (units of 2 heads), 48 channels, nearest rounding: 0.2 -> 2 heads and 9 channels
#: removed; 0.6 -> 4 heads and 28 channels (so the second step removes 2 of 4 heads and 19 of 39 channels).
SCHEDULE = {0: 0.2, 1: 0.6}


def _pattern(n: int, seqlen: int = 16, seed: int = 0) -> torch.Tensor:
    starts = torch.randint(0, 64, (n, 1), generator=torch.Generator().manual_seed(seed))
    return (starts + torch.arange(seqlen)) % 64


def _calibration():
    return list(_pattern(16, seed=1).split(4))


def _train_loader():
    return DataLoader(TensorRows(_pattern(64)), batch_size=8, shuffle=False)


class TinyLM(PruningPlanMixin):
    """A user module: Adam with a per-step LambdaLR (lr = 1e-3 * 0.95 ** step)."""

    def __init__(self):
        super().__init__()
        self.net = make_tiny_llama(num_heads=6, num_kv_heads=2)
        self.net.train()

    def training_step(self, batch, batch_idx):
        return self.net(input_ids=batch, labels=batch).loss

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=1e-3)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.95 ** step)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _trainer(tmp_path, callbacks, **kw):
    kw.setdefault("max_epochs", 3)
    kw.setdefault("enable_checkpointing", False)
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=tmp_path, callbacks=callbacks, **kw)


def _pruning(schedule=SCHEDULE, config=None, **kw):
    config = config or PruningConfig(head_rounding="nearest")
    return RCPUPruningCallback(config, schedule=schedule, calibration_dataloader=_calibration, progress=False, **kw)


def _shapes(module) -> list[tuple[int, int]]:
    return [(layer.self_attn.q_proj.out_features // 8, layer.mlp.down_proj.in_features) for layer in module.net.model.layers]


def _projections(module):
    """(layer, projection, "weight"/"bias") -> parameter, for every decoder projection."""
    out = {}
    for i, layer in enumerate(module.net.model.layers):
        for owner, names in ((layer.self_attn, ATTN), (layer.mlp, MLP)):
            for name in names:
                for kind in ("weight", "bias"):
                    p = getattr(getattr(owner, name), kind)
                    if p is not None:
                        out[(i, name, kind)] = p
    return out


def _kept(layer_plan: dict, name: str, kind: str, head_dim: int = 8):
    """(dim, kept indices) of a projection parameter, written out from the plan (independent of the callback)."""
    def rows(heads):
        return [h * head_dim + j for h in heads for j in range(head_dim)]
    if name == "q_proj":
        return 0, rows(layer_plan["kept_heads"])
    if name in ("k_proj", "v_proj"):
        return 0, rows(layer_plan["kept_kv_heads"])
    if name in ("gate_proj", "up_proj"):
        return 0, list(layer_plan["kept_channels"])
    if kind == "bias":
        return None
    return 1, rows(layer_plan["kept_heads"]) if name == "o_proj" else list(layer_plan["kept_channels"])


class Snapshot(L.Callback):
    """Before the pruning callback's epoch start: the optimizer, its state per projection, the parameters."""

    def __init__(self, epoch: int):
        self.epoch, self.state, self.optimizer, self.scheduler = epoch, None, None, None

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            opt = trainer.optimizers[0]
            self.optimizer, self.scheduler = opt, trainer.lr_scheduler_configs[0].scheduler
            self.state = {key: {k: v.clone() for k, v in opt.state[p].items()} for key, p in _projections(pl_module).items()}


class AfterStep(L.Callback):
    """After the pruning callback's epoch start: what the optimizer holds now."""

    def __init__(self, epoch: int):
        self.epoch, self.state, self.params, self.optimizer = epoch, None, None, None

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            opt = self.optimizer = trainer.optimizers[0]
            self.params = _projections(pl_module)
            self.state = {key: {k: v.clone() for k, v in opt.state.get(p, {}).items()} for key, p in self.params.items()}
            assert all(any(q is p for g in opt.param_groups for q in g["params"]) for p in pl_module.parameters())
            assert all(any(q is p for q in pl_module.parameters()) for p in opt.state)  # no stale entries


def test_a_per_step_ratio_floors_to_exactly_the_count_wanted():
    # the callback gives the engine need/current: feasible_count must return `need`, for both roundings
    for current in range(1, 97):
        for unit in (1, 2, 3, 4, 8):
            if current % unit:
                continue
            for need in range(0, current, unit):
                for rounding in ("floor", "nearest"):
                    assert feasible_count(need / current, current, unit, rounding) == need, (need, current, unit, rounding)


def test_a_schedule_step_slices_the_optimizer_state_and_the_scheduler_continues(tmp_path):
    module, pruning = TinyLM(), _pruning()
    before, after = Snapshot(1), AfterStep(1)
    trainer = _trainer(tmp_path, [before, pruning, after])
    trainer.fit(module, train_dataloaders=_train_loader())
    assert _shapes(module) == [(2, 20), (2, 20)] and [s["epoch"] for s in pruning.steps] == [0, 1]

    # the same optimizer and scheduler objects, the scheduler's count unbroken (24 steps of 0.95)
    assert after.optimizer is before.optimizer is trainer.optimizers[0]
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler is before.scheduler and scheduler.optimizer is before.optimizer
    assert trainer.global_step == 24 and scheduler.get_last_lr()[0] == pytest.approx(1e-3 * 0.95 ** 24)

    step_plan = pruning.report.plan.to_dict()["layers"]  # indices refer to the layer before the step
    for (i, name, kind), old in before.state.items():
        new = after.state[(i, name, kind)]
        assert new["step"] == old["step"] == 8  # Adam's step count goes on
        where = _kept(step_plan[i], name, kind)
        for moment in ("exp_avg", "exp_avg_sq"):
            want = old[moment] if where is None else old[moment].index_select(where[0], torch.tensor(where[1]))
            # exact: the step slices Adam's moments (index_select copies, no arithmetic)
            torch.testing.assert_close(new[moment], want, rtol=0, atol=0, msg=f"{i} {name}.{kind} {moment}")
            assert new[moment].shape == after.params[(i, name, kind)].shape


def test_a_bias_added_by_compensation_mid_fit_joins_the_optimizer_with_fresh_state(tmp_path):
    module = TinyLM()
    pruning = _pruning(schedule={1: 0.34}, config=PruningConfig(method="flap", head_rounding="nearest"))
    after = AfterStep(1)
    trainer = _trainer(tmp_path, [pruning, after], max_epochs=2)
    trainer.fit(module, train_dataloaders=_train_loader())
    biases = {k: p for k, p in after.params.items() if k[2] == "bias"}
    assert {k[1] for k in biases} == set(ATTN + MLP)  # FLAP's bias on o/down_proj; Llama's flags: all of them
    assert all(after.state[k] == {} for k in biases)  # fresh: no moments
    weights = [k for k in after.state if k[2] == "weight"]
    assert all(after.state[k]["step"] == 8 for k in weights)
    opt = trainer.optimizers[0]
    assert all(opt.state[p]["step"] == 8 for p in biases.values())  # trained through epoch 1 from scratch
    assert all(opt.state[_projections(module)[k]]["step"] == 16 for k in weights)


def test_a_schedule_function_prunes_when_its_ratio_grows(tmp_path):
    module = TinyLM()
    pruning = _pruning(schedule=lambda epoch: [0.0, 0.2, 0.2, 0.6][epoch])
    trainer = _trainer(tmp_path, [pruning], max_epochs=4)
    trainer.fit(module, train_dataloaders=_train_loader())
    assert [(s["epoch"], s["ratio"]) for s in pruning.steps] == [(1, 0.2), (3, 0.6)]
    assert _shapes(module) == [(2, 20), (2, 20)]
    summary = pruning.results_summary()
    dense = sum(p.numel() for layer in make_tiny_llama(num_heads=6, num_kv_heads=2).model.layers for p in layer.parameters())
    now = sum(p.numel() for layer in module.net.model.layers for p in layer.parameters())
    assert summary["decoder_params_removed"] == pytest.approx(1 - now / dense)
    assert summary["ratio"] == 0.6 and [s["epoch"] for s in summary["pruning_steps"]] == [1, 3]
    assert module.pruning_plan["config"]["ratio"] == 0.6 and module.pruning_plan["config"]["attn_ratio"] is None


@pytest.fixture
def prune_calls(monkeypatch):
    import rcpu_lightning.lightning.callback as cb

    calls = []
    real = cb.prune_model

    def prune(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(cb, "prune_model", prune)
    return calls


def test_a_checkpoint_in_the_middle_of_a_schedule_resumes_to_the_uninterrupted_result(tmp_path, prune_calls):
    schedule = {0: 0.2, 2: 0.6}
    ckpts = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    module = TinyLM()
    trainer = _trainer(tmp_path, [_pruning(schedule), ckpts], max_epochs=4, enable_checkpointing=True)
    trainer.fit(module, train_dataloaders=_train_loader())
    assert len(prune_calls) == 2 and _shapes(module) == [(2, 20), (2, 20)]
    final = {k: v.detach().clone() for k, v in module.state_dict().items()}

    # after epoch 1 the step of epoch 2 is still to come; after epoch 2 the schedule is done
    for ckpt, prunes in (("epoch=1.ckpt", 1), ("epoch=2.ckpt", 0)):
        prune_calls.clear()
        resumed = TinyLM()
        trainer = _trainer(tmp_path, [_pruning(schedule)], max_epochs=4)
        trainer.fit(resumed, train_dataloaders=_train_loader(), ckpt_path=tmp_path / "ckpt" / ckpt)
        assert len(prune_calls) == prunes, ckpt
        assert resumed.pruning_plan == module.pruning_plan and trainer.global_step == 32
        state = resumed.state_dict()
        for name, value in final.items():
            torch.testing.assert_close(state[name], value, msg=f"{ckpt}: {name}")



def _last_batch_checkpoints(tmp_path, schedule, max_epochs):
    """An uninterrupted fit that saves a checkpoint at the last batch of every epoch (``step=8``,
    ``step=16``, ...: what ``last.ckpt`` usually is), its final weights and its plan."""
    ckpts = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{step}", save_top_k=-1, every_n_train_steps=8)
    module, pruning = TinyLM(), _pruning(schedule)
    trainer = _trainer(tmp_path, [pruning, ckpts], max_epochs=max_epochs, enable_checkpointing=True)
    trainer.fit(module, train_dataloaders=_train_loader())
    return {k: v.detach().clone() for k, v in module.state_dict().items()}, module.pruning_plan, pruning.steps


@pytest.mark.parametrize("ckpt, prunes", [("step=8.ckpt", 2), ("step=16.ckpt", 1)])
def test_a_last_batch_checkpoint_resumes_every_step_of_the_schedule_once(tmp_path, prune_calls, ckpt, prunes):
    # Lightning starts the epoch after a last-batch checkpoint without on_train_epoch_start: the step of
    # that epoch must still run, once, before its first batch (issue #23: epoch 1's step was skipped)
    schedule = {0: 0.2, 1: 0.4, 2: 0.6}
    final, plan, steps = _last_batch_checkpoints(tmp_path, schedule, max_epochs=3)
    assert [s["epoch"] for s in steps] == [0, 1, 2]
    prune_calls.clear()
    resumed, pruning = TinyLM(), _pruning(schedule)
    trainer = _trainer(tmp_path, [pruning], max_epochs=3)
    trainer.fit(resumed, train_dataloaders=_train_loader(), ckpt_path=tmp_path / "ckpt" / ckpt)
    assert len(prune_calls) == prunes and [s["epoch"] for s in pruning.steps] == [0, 1, 2]
    assert resumed.pruning_plan == plan and trainer.global_step == 24
    state = resumed.state_dict()
    for name, value in final.items():  # the same operations in the same order: equal up to float32 rounding
        torch.testing.assert_close(state[name], value, msg=f"{ckpt}: {name}")


def test_a_single_later_step_runs_after_a_last_batch_checkpoint_and_the_export_is_pruned(tmp_path, caplog):
    # schedule {1: 0.5}, checkpoint at the last batch of epoch 0: the model was never pruned, and the
    # log still said "pruned, fine-tuned model exported" (issue #23)
    final, plan, _ = _last_batch_checkpoints(tmp_path, {1: 0.5}, max_epochs=2)
    resumed, export = TinyLM(), tmp_path / "exported"
    pruning = _pruning({1: 0.5}, export_dir=str(export))
    with caplog.at_level("INFO"):
        _trainer(tmp_path, [pruning], max_epochs=2).fit(resumed, train_dataloaders=_train_loader(),
                                                         ckpt_path=tmp_path / "ckpt" / "step=8.ckpt")
    assert [s["epoch"] for s in pruning.steps] == [1] and resumed.pruning_plan == plan
    assert json.loads((export / "pruning_plan.json").read_text()) == plan
    assert load_pruned(export).model.layers[0].mlp.down_proj.in_features == _shapes(resumed)[0][1] < 48
    assert f"pruned, fine-tuned model exported to {export}" in caplog.text


def test_a_fit_that_never_reaches_its_step_says_so_and_exports_an_unpruned_model(tmp_path, caplog):
    module, export = TinyLM(), tmp_path / "exported"
    pruning = _pruning({3: 0.5}, export_dir=str(export))
    with caplog.at_level("INFO"), pytest.warns(UserWarning, match="before any pruning step.*not pruned"):
        _trainer(tmp_path, [pruning], max_epochs=1).fit(module, train_dataloaders=_train_loader())
    assert module.pruning_plan is None and not (export / "pruning_plan.json").exists()
    assert f"fine-tuned model (not pruned) exported to {export}" in caplog.text and "pruned, fine-tuned" not in caplog.text
    assert json.loads((export / "pruning_report.json").read_text())["weights"].startswith("fine-tuned, not pruned")



class Crash(L.Callback):
    """Dies in the middle of ``epoch``, after the pruning callback's step of that epoch."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == 2:
            raise RuntimeError("crash")


def test_a_resume_after_a_crash_keeps_the_folders_its_run_wrote_and_refuses_the_others(tmp_path, prune_calls):
    # {1: 0.5}: pruned and saved at the start of epoch 1, dead before the next checkpoint; the resumed run
    # stopped with OutputExistsError on its own save_dir (issue #23)
    save, ckpts = tmp_path / "pruned", ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1)
    first = TinyLM()
    trainer = _trainer(tmp_path, [_pruning({1: 0.5}, save_dir=str(save)), ckpts, Crash(1)], max_epochs=2,
                       enable_checkpointing=True)
    with pytest.raises(RuntimeError, match="crash"):
        trainer.fit(first, train_dataloaders=_train_loader())
    assert (save / "pruning_plan.json").is_file() and [p.name for p in (tmp_path / "ckpt").iterdir()] == ["epoch=0.ckpt"]
    ckpt = tmp_path / "ckpt" / "epoch=0.ckpt"

    # another run (not resumed, or resumed from another run's checkpoint) is refused before any work
    for fit_kw in ({}, {"ckpt_path": _other_runs_checkpoint(tmp_path)}):
        prune_calls.clear()
        with pytest.raises(FileExistsError, match="pruning.save_dir"):
            _trainer(tmp_path, [_pruning({1: 0.5}, save_dir=str(save))], max_epochs=2).fit(
                TinyLM(), train_dataloaders=_train_loader(), **fit_kw)
        assert prune_calls == []

    # the run itself, resumed: its step runs again and its save_dir is replaced by the same model
    prune_calls.clear()
    resumed, pruning = TinyLM(), _pruning({1: 0.5}, save_dir=str(save), export_dir=str(tmp_path / "exported"))
    _trainer(tmp_path, [pruning], max_epochs=2).fit(resumed, train_dataloaders=_train_loader(), ckpt_path=ckpt)
    assert len(prune_calls) == 1 and pruning.saved_to == str(save) and resumed.pruning_plan["layers"]
    assert json.loads((save / "pruning_plan.json").read_text()) == resumed.pruning_plan
    # and once more from that checkpoint: the export the resumed run wrote is its own too (no overwrite flag)
    again = _pruning({1: 0.5}, save_dir=str(save), export_dir=str(tmp_path / "exported"))
    _trainer(tmp_path, [again], max_epochs=3).fit(TinyLM(), train_dataloaders=_train_loader(), ckpt_path=ckpt)
    assert again.exported_to == str(tmp_path / "exported")



class ValidatedLM(TinyLM):
    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.net(input_ids=batch, labels=batch).loss)


def test_the_results_writer_keeps_its_own_runs_file_on_resume_and_refuses_others_before_pruning(tmp_path, prune_calls):
    from rcpu_lightning.lightning import RCPUResultsWriter

    results, ckpts = tmp_path / "fit.json", ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}")
    first = RCPUResultsWriter(str(results))
    _trainer(tmp_path, [_pruning(), first, ckpts], max_epochs=1, enable_checkpointing=True).fit(
        ValidatedLM(), train_dataloaders=_train_loader(), val_dataloaders=_train_loader())
    assert json.loads(results.read_text())["run_id"] == first.run_id
    prune_calls.clear()
    with pytest.raises(FileExistsError, match="results.path"):  # a new run: refused before the first step
        _trainer(tmp_path, [_pruning(), RCPUResultsWriter(str(results))], max_epochs=1).fit(
            ValidatedLM(), train_dataloaders=_train_loader(), val_dataloaders=_train_loader())
    assert prune_calls == [] and json.loads(results.read_text())["run_id"] == first.run_id
    resumed = RCPUResultsWriter(str(results))
    _trainer(tmp_path, [_pruning(), resumed], max_epochs=2).fit(
        ValidatedLM(), train_dataloaders=_train_loader(), val_dataloaders=_train_loader(),
        ckpt_path=tmp_path / "ckpt" / "epoch=0.ckpt")
    assert resumed.run_id == first.run_id and json.loads(results.read_text())["seconds"] == resumed.record["seconds"]


def test_the_results_writer_alone_refuses_another_runs_file_at_fit_start(tmp_path):
    # without the pruning callback (fine-tuning a pruned folder from Python) the writer checks at on_fit_start;
    # a merge once left two on_fit_start methods and the later one dropped the check
    from rcpu_lightning.lightning import RCPUResultsWriter

    results = tmp_path / "fit.json"
    results.write_text('{"run_id": "another run"}')
    with pytest.raises(FileExistsError, match="results.path"):
        _trainer(tmp_path, [RCPUResultsWriter(str(results))], max_epochs=1).fit(
            ValidatedLM(), train_dataloaders=_train_loader(), val_dataloaders=_train_loader())
    assert json.loads(results.read_text()) == {"run_id": "another run"}


def _other_runs_checkpoint(tmp_path):
    """A checkpoint at the end of epoch 0 of a different run with the same settings."""
    ckpts = ModelCheckpoint(dirpath=tmp_path / "other", filename="{epoch}")
    _trainer(tmp_path, [_pruning({1: 0.5}), ckpts], max_epochs=1, enable_checkpointing=True).fit(
        TinyLM(), train_dataloaders=_train_loader())
    return tmp_path / "other" / "epoch=0.ckpt"


# -- export ------------------------------------------------------------------------------------------------
def test_fit_exports_the_pruned_finetuned_model_as_a_hugging_face_checkpoint(tmp_path):
    from transformers import AutoModelForCausalLM

    module = TinyLM()
    save, export = tmp_path / "pruned", tmp_path / "finetuned"
    pruning = _pruning(save_dir=str(save), export_dir=str(export))
    _trainer(tmp_path, [pruning], max_epochs=2).fit(module, train_dataloaders=_train_loader())
    ids = _pattern(3, seed=5)
    with torch.no_grad():
        want = module.net.eval()(input_ids=ids).logits
        for model in (load_pruned(export), AutoModelForCausalLM.from_pretrained(export)):
            torch.testing.assert_close(model.eval()(input_ids=ids).logits, want)
        # save_dir holds the model after the last step, before the fine-tuning that followed it
        assert not torch.allclose(load_pruned(save).eval()(input_ids=ids).logits, want)
    report = json.loads((export / "pruning_report.json").read_text())
    assert report["weights"].startswith("pruned and fine-tuned: end of fit (after epoch 1, step 16)")  # epochs 0, 1 trained
    assert [s["epoch"] for s in report["pruning_steps"]] == [0, 1]
    assert json.loads((save / "pruning_report.json").read_text())["weights"].startswith("right after pruning at epoch 1")
    summary = pruning.results_summary()
    assert summary["export_dir"] == str(export) and summary["save_dir"] == str(save)

    # a second fit into the same folders is refused before any work, and nothing of them is touched
    before = {p.name: p.read_bytes() for p in export.iterdir()}
    again = TinyLM()
    with pytest.raises(FileExistsError, match="pruning.save_dir"):
        _trainer(tmp_path, [_pruning(save_dir=str(save), export_dir=str(export))]).fit(again, train_dataloaders=_train_loader())
    with pytest.raises(FileExistsError, match="pruning.export_dir.*overwrite=True"):
        _trainer(tmp_path, [_pruning(export_dir=str(export))]).fit(again, train_dataloaders=_train_loader())
    assert again.pruning_plan is None and {p.name: p.read_bytes() for p in export.iterdir()} == before


def test_trainer_export_writes_any_checkpoint_as_a_hugging_face_checkpoint(tmp_path):
    module = TinyLM()
    trainer = _trainer(tmp_path, [_pruning()], max_epochs=2)
    trainer.fit(module, train_dataloaders=_train_loader())
    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)
    exporter = RCPUTrainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                           callbacks=[RCPUPruningCallback(export_dir=str(tmp_path / "out"), progress=False)])
    exporter.export(TinyLM(), ckpt_path=str(path))  # a fresh dense module: shapes from the checkpoint's plan
    ids = _pattern(3, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(load_pruned(tmp_path / "out").eval()(input_ids=ids).logits,
                                   module.net.eval()(input_ids=ids).logits)
    report = json.loads((tmp_path / "out" / "pruning_report.json").read_text())
    assert str(path) in report["weights"] and report["decoder_params_removed"] > 0.5
