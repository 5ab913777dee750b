"""cli.py as a new user meets it (issue 24): `fit` reports like `prune` (progress, loss, summary, results
JSON), SIGTERM stops a run cleanly, and each error names its real cause in one line."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from tiny_setup import save_tiny_llama, tiny_config, write_tiny_wikitext  # noqa: E402

from rcpu_lightning.lightning.cli import main  # noqa: E402

EVERY_BATCH = [{"class_path": "rcpu_lightning.lightning.progress.LogProgress", "init_args": {"interval": 1e-9}}]


pytestmark = pytest.mark.usefixtures("cli_argv")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_reporting")
    return save_tiny_llama(root / "model"), write_tiny_wikitext(root / "data")


def _progress(caplog) -> list[tuple[int, int, int, str]]:
    """(epoch, done, total, rest of the line) of every training progress line."""
    found = []
    for record in caplog.records:
        m = re.match(r"epoch (\d+): (\d+)/(\S+) batches, (.*)", record.getMessage())
        if m:
            found.append((int(m[1]), int(m[2]), int(m[3]) if m[3].isdigit() else -1, m[4]))
    return found


@pytest.mark.parametrize("max_steps, lines", [
    (3, [(0, 1, 3), (0, 2, 3), (0, 3, 3)]),  # shorter than one epoch (4 batches of 4 windows)
    (6, [(0, 1, 4), (0, 2, 4), (0, 3, 4), (0, 4, 4), (1, 1, 2), (1, 2, 2)]),  # into the second epoch
])
def test_fit_reports_progress_loss_summary_and_a_results_file(tiny, tmp_path, caplog, capsys, max_steps, lines):
    model, data = tiny
    cfg = tiny_config(tmp_path / "fit.yaml", model, data, tmp_path / "out", trainer__callbacks=EVERY_BATCH,
                      trainer__enable_progress_bar=True, pruning__export_dir=str(tmp_path / "out" / "ft"))
    with caplog.at_level("INFO", logger="rcpu_lightning"):
        main(["fit", "-c", str(cfg), "--trainer.max_steps", str(max_steps), "--data.train_nsamples", "16",
              "--data.val_nsamples", "8", "--results.path", str(tmp_path / "out" / "run.{stage}.json")])
    progress = _progress(caplog)
    # one line per batch (interval ~0): done counts up to a total fixed for the epoch, never past it
    assert [p[:3] for p in progress] == lines
    assert all(re.search(r"train/loss \d", rest) for *_, rest in progress), progress
    assert not any("-" in rest.split("train/loss")[0] for *_, rest in progress)  # no negative time left

    record = json.loads((tmp_path / "out" / "run.fit.json").read_text())
    assert record["stage"] == "fit" and record["training"]["steps"] == max_steps
    assert record["training"]["epochs"] == sorted({p[0] for p in progress})
    assert record["training"]["last_metrics"]["train/loss"] > 0
    assert record["export_dir"] == str(tmp_path / "out" / "ft") and record["method"] == "rcpu"
    validated = max_steps > 4  # epoch 0 ends (4 batches) and validates only in the longer run
    assert (record["evaluation"] == "validate") == validated and (record.get("ppl") is not None) == validated

    out = capsys.readouterr().out
    assert "== fit summary ==" in out and f"training      {max_steps} optimizer steps" in out
    assert "fine-tuned    " + str(tmp_path / "out" / "ft") in out and "results       " in out
    last_epoch = progress[-1][0]
    report = json.loads((tmp_path / "out" / "ft" / "pruning_report.json").read_text())
    assert f"after epoch {last_epoch}, step {max_steps}" in report["weights"]  # the epoch the progress showed


def test_fit_help_names_the_small_data_options(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the description
    assert "--data.train_nsamples N" in text and "--data.val_nsamples N" in text and "--data.help RCPUDataModule" in text


# -- SIGTERM: a scheduler's warning before the kill stops the run the way Ctrl-C does -------------------
@pytest.mark.slow
def test_sigterm_during_pruning_stops_within_seconds_and_the_retry_succeeds(tiny, tmp_path):
    import os
    import signal
    import subprocess
    import time

    model, data = tiny
    out = tmp_path / "out"
    # with a results file: its config is written with the results, so a stopped run leaves none to block the retry
    cfg = tiny_config(tmp_path / "c.yaml", model, data, out)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    env.pop("RCPU_DEBUG", None)
    proc = subprocess.Popen([sys.executable, str(root / "tests" / "scripts" / "slow_prune_cli.py"), "prune",
                             "-c", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stdout:  # the pruning pauses after its first layer
            if line.startswith("PRUNED LAYER 0"):
                break
        else:
            pytest.fail(f"the pruning never started: {proc.stderr.read()}")
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert took < 10, took  # the pause was 60 s: the signal cut it short
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    # nothing half-written: no pruned folder, no staging leftovers
    assert not out.exists() or not list(out.iterdir()), list(out.iterdir())

    cli = main(["prune", "-c", str(cfg)])  # the same command again, no flag: nothing blocks it
    assert (out / "pruned" / "pruning_plan.json").is_file() and cli.model.eval_results["ppl"] > 1
    assert (out / "results.json").is_file() and (out / "results.config.yaml").is_file()


def test_the_callback_stops_after_the_layer_in_progress_once_the_trainer_received_sigterm(tiny, tmp_path):
    """Without cli.py (a user's own Trainer), Lightning's SIGTERM handler only sets ``trainer.received_sigterm``;
    the pruning stops after the current layer the way Lightning's loops stop: nothing saved, nothing pruned."""
    import lightning as L
    import torch
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from rcpu_lightning.data import CalibrationConfig
    from rcpu_lightning.lightning import CausalLMModule, RCPUDataModule, RCPUPruningCallback
    from rcpu_lightning.pruning import PruningConfig

    model, data = tiny

    def calibration(trainer, pl_module):  # called right before the pruning starts
        trainer._signal_connector.received_sigterm = True  # what Lightning's SIGTERM handler does
        return [torch.randint(0, 60, (4, 16))]

    module = CausalLMModule(str(model))
    pruning = RCPUPruningCallback(PruningConfig(ratio=0.34, head_rounding="nearest"), save_dir=str(tmp_path / "pruned"),
                                  calibration_dataloader=calibration, progress=False)
    trainer = L.Trainer(max_steps=2, callbacks=[pruning], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    dm = RCPUDataModule(data_dir=str(data), calibration=CalibrationConfig(nsamples=8, seqlen=16, batch_size=4),
                        train_nsamples=8, val_nsamples=4)
    with pytest.raises(SIGTERMException):
        trainer.fit(module, datamodule=dm)
    assert not (tmp_path / "pruned").exists() and module.pruning_plan is None and not pruning.pruned


# -- each message names the real cause and the setting it came from -------------------------------------
def _fails(args, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    return err


def test_an_unwritable_save_dir_names_the_folder_that_cannot_be_created(tiny, tmp_path, capsys):
    model, data = tiny
    cfg = tiny_config(tmp_path / "c.yaml", model, data, tmp_path / "out")
    err = _fails(["prune", "-c", str(cfg), "--pruning.save_dir", "/proc/x/out"], capsys)
    # before: "('/proc': No such file or directory)", as if /proc were missing
    assert "the folder '/proc/x' cannot be created in '/proc': its file system accepts no new folders" in err


def test_a_data_folder_from_the_environment_is_named_as_such(tiny, tmp_path, capsys, monkeypatch):
    model, _ = tiny
    cfg = tiny_config(tmp_path / "c.yaml", model, "unused", tmp_path / "out", data__data_dir=None)
    monkeypatch.setenv("RCPU_DATA_DIR", str(tmp_path / "empty"))
    err = _fails(["prune", "-c", str(cfg)], capsys)
    assert f"the environment variable RCPU_DATA_DIR is '{tmp_path / 'empty'}', which is not a directory" in err
    (tmp_path / "empty").mkdir()
    err = _fails(["prune", "-c", str(cfg)], capsys)
    assert "no WikiText-2 train or valid split" in err and "$RCPU_DATA_DIR" in err


def test_no_local_data_and_no_hub_tells_how_to_use_local_files(monkeypatch):
    import datasets

    from rcpu_lightning.data import load_rows
    from rcpu_lightning.eval.tasks import load_items

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.delenv("RCPU_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    for call in (lambda: load_rows("test"), lambda: load_items("piqa")):
        with pytest.raises(OSError) as info:
            call()
        message = str(info.value)
        assert "could not be read from the Hugging Face hub (ConnectionError: Couldn't reach" in message
        assert "set RCPU_DATA_DIR (or data.data_dir) to the folder holding wikitext-2/" in message


def test_test_neither_mentions_calibration_nor_records_the_unused_calibration_settings(tiny, tmp_path, caplog,
                                                                                      monkeypatch):
    model, data = tiny
    valid_only = tmp_path / "data"  # no train split: calibration reads the valid split
    valid_only.mkdir()
    (valid_only / "wiki.test.raw").write_text((data / "wiki.test.raw").read_text())
    (valid_only / "valid.txt").write_text((data / "train.txt").read_text())
    cfg = tiny_config(tmp_path / "c.yaml", model, valid_only, tmp_path / "out",
                      results__path=str(tmp_path / "out" / "{stage}.json"))
    main(["prune", "-c", str(cfg), "--data.calibration.nsamples", "8"])
    monkeypatch.setattr("rcpu_lightning.data.wikitext._WARNED_VALID", set())  # it warns once per folder and process
    caplog.clear()
    with caplog.at_level("INFO", logger="rcpu_lightning"):
        main(["test", "-c", str(cfg), "--model.model", str(tmp_path / "out" / "pruned")])
    assert "valid split instead" not in caplog.text  # test calibrates nothing
    record = json.loads((tmp_path / "out" / "test.json").read_text())
    assert record["calibration"]["nsamples"] == 8  # how the folder was pruned (its plan) ...
    assert "calib_samples" not in record and "calib_seed" not in record  # ... not the config's unused 16


@pytest.mark.parametrize("option, closest", [("--data.ppl_max_window", "--data.ppl_max_windows"),
                                             ("--trainer.maxsteps", "--trainer.max_steps"),
                                             ("--data.calibration.nsampels", "--data.calibration.nsamples"),
                                             ("--prunning.save_dir", "--pruning.save_dir")])
def test_a_mistyped_option_gets_one_line_with_the_closest_name(tiny, tmp_path, capsys, option, closest):
    model, data = tiny
    cfg = tiny_config(tmp_path / "c.yaml", model, data, tmp_path / "out")
    err = _fails(["prune", "-c", str(cfg), option, "4"], capsys)
    assert len(err.strip().splitlines()) == 1, err  # before: an 80-line usage dump
    assert f"unknown option {option}; did you mean {closest}?" in err


def test_a_yaml_syntax_error_names_the_file_and_the_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  devices: 1\nmodel:\n  model: [smollm2-135m\n")
    err = _fails(["prune", "-c", str(bad)], capsys)
    assert f"config file {bad}, line 5" in err and "YAML syntax error" in err
