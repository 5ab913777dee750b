"""benchmarks/gradual.py end to end on a tiny Llama and tiny WikiText files, and its README section."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).parent / "scripts"))

from benchmarks import gradual  # noqa: E402
from benchmarks import render_readme as rr  # noqa: E402
from tiny_setup import save_tiny_llama, write_tiny_wikitext  # noqa: E402


def test_gradual_benchmark_runs_and_renders(tmp_path):
    model = save_tiny_llama(tmp_path / "model")
    data = write_tiny_wikitext(tmp_path / "data")
    out = tmp_path / "results" / "gradual.json"
    assert gradual.main(["--model", str(model), "--data-dir", str(data), "--steps", "2", "--batch-size", "2",
                         "--calib-samples", "16", "--seqlen", "16", "--eval-seqlen", "16", "--ppl-windows", "4",
                         "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {r["key"]: r for r in result["rows"]}
    assert list(rows) == ["dense", "one_shot_no_finetuning", "one_shot", "gradual"]
    assert rows["one_shot"]["finetune_steps"] == rows["gradual"]["finetune_steps"] == 6
    assert [s["epoch"] for s in rows["gradual"]["steps"]] == [0, 1, 2] and len(rows["gradual"]["losses"]) == 6
    assert rows["one_shot"]["kept"] == rows["gradual"]["kept"]  # the same final architecture
    assert rows["one_shot"]["params"] == rows["gradual"]["params"] < rows["dense"]["params"]
    assert rows["one_shot_no_finetuning"]["ppl"] != rows["one_shot"]["ppl"]  # save_dir: before fine-tuning
    assert result["settings"]["ppl_windows"] == 4 and result["run"]["commit"]

    section = rr.gradual_section(out.parent, tmp_path / "README.md")
    assert "Gradual 10 → 20 → 30 %" in section and f"{rows['gradual']['ppl']:.2f}" in section
    assert "first 4 WikiText-2 test windows" in section
