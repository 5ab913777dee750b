"""benchmarks/full7b.py: the end-to-end out-of-core run (generate, prune, test, reload), on llama-7b-mini."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
from benchmarks import full7b  # noqa: E402

from conftest import SHARED_DATA  # noqa: E402
from rcpu_lightning.pruning.progress import PHASES  # noqa: E402


@pytest.fixture(autouse=True)
def _data(monkeypatch):
    monkeypatch.setenv("RCPU_DATA_DIR", str(SHARED_DATA))


def test_full7b_options_and_row_keys():
    quick = full7b.parse_args(["--quick"])
    assert (quick.preset, quick.nsamples, Path(quick.out).name) == ("llama-7b-mini", 16, "scale_quick.json")
    full = full7b.parse_args(["--extra-prune-args", "--pruning.config.execution_dtype float32"])
    assert (full.preset, full.nsamples, Path(full.out).name) == ("llama-7b", 128, "scale.json")
    assert full.extra == ["--pruning.config.execution_dtype", "float32"]
    assert full7b.row_key("llama-7b", full) != full7b.row_key("llama-7b", full7b.parse_args([]))
    args = full7b.prune_args(Path("/c"), Path("/p"), Path("/r.json"), 128, full.extra)
    assert args[:3] == ["prune", "-c", str(full7b.CONFIG)] and args[-2:] == full.extra
    assert args[args.index("--data.calibration.nsamples") + 1] == "128"
    # the limit runs in the prune's execution dtype
    assert full7b.execution_dtype(full.extra) == "float32" and full7b.execution_dtype([]) is None
    assert full7b.execution_dtype(["--pruning.config.execution_dtype=bfloat16"]) == "bfloat16"
    assert full7b.execution_dtype(["--pruning.config.execution_dtype", "null"]) is None


@pytest.mark.slow
def test_full7b_quick_runs_end_to_end_and_writes_its_row(tmp_path):
    rows, work = tmp_path / "rows.json", tmp_path / "work"
    assert full7b.main(["--quick", "--work-dir", str(work), "--out", str(rows), "--nsamples", "8",
                        "--ppl-windows", "2"]) == 0
    (row,) = json.loads(rows.read_text())
    assert row["mode"] == "full7b" and row["reload_ok"] and row["generated"] and len(row["layer_seconds"]) == 2
    assert row["calib_samples"] * row["calib_seqlen"] == row["calibration"]["tokens"] == 8 * 128
    assert row["ppl_windows"] == 2 and math.isfinite(row["ppl"]) and row["ppl"] > 1
    # every tensor of the checkpoint is read once (bfloat16: 2 bytes a parameter), the embedding twice
    # (for the skeleton, then to copy it into the pruned folder)
    assert row["read_bytes"] == 2 * row["params"] + 2 * 32000 * 512
    assert 0 < row["write_bytes"] < row["read_bytes"] and row["peak_rss_mb"] > 0 and row["total_minutes"] > 0
    assert not work.exists()  # without --keep, what the run wrote is removed
    # the two-forward limit of layer 0 (step 5), in the checkpoint's dtype, and the phases of the prune
    assert row["limit_dtype"] == "bfloat16" and 0 < row["pruned_forward_s"] and 0 < row["dense_forward_s"]
    assert row["limit_s"] == pytest.approx(row["dense_forward_s"] + row["pruned_forward_s"])
    assert row["ours_over_limit"] == pytest.approx(row["seconds_per_layer"] / row["limit_s"])
    assert set(row["phases"]) <= set(PHASES) and "statistics" in row["phases"]


@pytest.mark.slow
def test_full7b_limit_only_adds_the_limit_to_a_kept_runs_row(tmp_path):
    rows, work = tmp_path / "rows.json", tmp_path / "work"
    argv = ["--quick", "--work-dir", str(work), "--out", str(rows), "--nsamples", "8", "--ppl-windows", "2",
            "--extra-prune-args", "--pruning.config.execution_dtype float32"]
    with pytest.raises(SystemExit, match="no row"):  # nothing ran yet: a clear error, nothing written
        full7b.main([*argv, "--limit-only"])
    assert not rows.exists() and not work.exists()
    assert full7b.main([*argv, "--keep"]) == 0
    (first,) = json.loads(rows.read_text())
    assert full7b.main([*argv, "--limit-only"]) == 0
    (row,) = json.loads(rows.read_text())
    assert row["key"] == first["key"] and row["layer_seconds"] == first["layer_seconds"]  # the same run's row
    assert row["limit_s"] > 0 and "limit_run" in row and "limit_run" not in first
    assert first["limit_dtype"] == row["limit_dtype"] == "float32"  # the prune's execution dtype, not bf16
    assert (work / "pruned" / "config.json").is_file()  # --limit-only removes nothing
