"""Result table, PPL-vs-ratio plot and the report command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rcpu_lightning.eval.report import load_rows, plot_ppl_vs_ratio, report, report_cli, results_table


def _tasks(acc, acc_norm):
    names = ["boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"]
    return {t: {"acc": acc, "acc_norm": acc_norm} for t in names}


ROWS = [
    {"model": "m", "method": "rcpu", "ratio": 0.2, "ppl": 20.5, "tasks": _tasks(0.5, 0.6)},
    {"model": "m", "method": "dense", "ratio": 0.0, "ppl": 12.345, "tasks": _tasks(0.7, 0.8)},
    {"model": "m", "method": "flap", "ratio": 0.2, "ppl": 25.0},
    {"model": "m", "method": "rcpu", "ratio": 0.5, "ppl": 80.0},
]


def test_table_layout_and_values():
    md = results_table(ROWS)
    lines = md.splitlines()
    assert lines[0] == (
        "| Ratio | Method | WikiText-2 PPL | BoolQ | PIQA | HellaSwag | WinoGrande | ARC-e | ARC-c | OBQA | Mean |"
    )
    assert lines[1] == "|" + "|".join(["---"] * 11) + "|"
    # sorted by ratio, then by first appearance of the method
    assert lines[2] == "| 0% | dense | 12.35 | 70.00 | 70.00 | 80.00 | 70.00 | 70.00 | 80.00 | 80.00 | 74.29 |"
    assert lines[3] == "| 20% | rcpu | 20.50 | 50.00 | 50.00 | 60.00 | 50.00 | 50.00 | 60.00 | 60.00 | 54.29 |"
    assert lines[4] == "| 20% | flap | 25.00 | – | – | – | – | – | – | – | – |"
    assert lines[5] == "| 50% | rcpu | 80.00 | – | – | – | – | – | – | – | – |"
    acc_only = results_table(ROWS, metric="acc").splitlines()
    assert acc_only[2].endswith("| 70.00 | 70.00 | 70.00 | 70.00 | 70.00 | 70.00 | 70.00 | 70.00 |")


def test_row_reported_metric_overrides_default_and_rows_merge():
    rows = [
        {"model": "m", "method": "dense", "ratio": 0.0, "ppl": 10.0},
        {"model": "m", "method": "dense", "ratio": 0.0, "tasks": {"hellaswag": {"acc": 0.4, "acc_norm": 0.5, "reported_metric": "acc"}}},
    ]
    line = results_table(rows).splitlines()[2]
    assert line == "| 0% | dense | 10.00 | – | – | 40.00 | – | – | – | – | – |"


def test_multi_model_adds_column():
    rows = [dict(ROWS[0]), {**ROWS[1], "model": "other"}]
    head = results_table(rows).splitlines()[0]
    assert head.startswith("| Model | Ratio | Method |")


def test_plot_writes_png(tmp_path):
    out = tmp_path / "sub" / "ppl.png"
    plot_ppl_vs_ratio(ROWS, out)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert [p.name for p in out.parent.iterdir()] == ["ppl.png"]  # no temp file left behind
    with pytest.raises(ValueError):
        plot_ppl_vs_ratio([{"model": "m", "method": "x", "ratio": 0.1}], tmp_path / "none.png")


def test_cli_reads_dicts_and_lists(tmp_path):
    a = tmp_path / "a.json"
    b = tmp_path / "b.json"
    a.write_text(json.dumps(ROWS[0]))
    b.write_text(json.dumps(ROWS[1:]))
    md, png = tmp_path / "out" / "table.md", tmp_path / "out" / "plot.png"
    assert report_cli([str(a), str(b), "--markdown", str(md), "--plot", str(png)]) is None
    text = md.read_text()
    assert sum(line.startswith("| ") for line in text.splitlines()) == 5  # header + 4 rows
    assert "| 20% | rcpu | 20.50 |" in text
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in md.parent.iterdir()) == ["plot.png", "table.md"]
    assert len(load_rows([a, b])) == 4


def test_report_prints_without_markdown_and_checks_its_options(tmp_path, capsys):
    a = tmp_path / "a.json"
    a.write_text(json.dumps(ROWS))
    table = report([str(a)], metric="acc")
    assert capsys.readouterr().out == table + "\n" and table == results_table(load_rows([a]), metric="acc")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # no markdown, no plot written
    report_cli([str(a), "--metric", "acc_norm"])
    assert "| 0% | dense | 12.35 | 80.00 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # jsonargparse rejects a metric outside paper|acc|acc_norm
        report_cli([str(a), "--metric", "f1"])
    with pytest.raises(SystemExit):  # at least one path
        report_cli(["--metric", "acc"])


def test_report_runs_as_a_module(tmp_path):
    a = tmp_path / "a.json"
    a.write_text(json.dumps(ROWS[0]))
    md = tmp_path / "t.md"
    proc = subprocess.run([sys.executable, "-m", "rcpu_lightning.eval.report", str(a), "--markdown", str(md)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "| 20% | rcpu | 20.50 |" in md.read_text()


def test_zeroshot_results_are_a_report_row(tmp_path):
    # Shape of a zero-shot results file (`cli.py test --data.tasks ...`; the keys the report uses).
    row = {"model": "SmolLM2", "method": "dense", "ratio": 0.0, "kind": "zeroshot", "tasks": _tasks(0.25, 0.5)}
    for t in row["tasks"].values():
        t["reported_metric"] = "acc_norm"
    p = tmp_path / "z.json"
    p.write_text(json.dumps(row))
    md = results_table(load_rows([p]))
    assert "| 0% | dense | – | 50.00 |" in md
