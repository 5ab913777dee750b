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


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["cli.py"])  # LightningCLI(args=...) warns about pytest's own argv


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
