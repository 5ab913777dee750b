"""benchmarks/readme_tour.py: the README tour's timings read from the log of tools/run_readme_tour.sh,
and the README paragraph render_readme.py writes from them."""

from __future__ import annotations

import json

import pytest

from benchmarks import readme_tour, render_readme

LOG = """\
README tour at commit abc1234 in /tmp/t/clone; 2 cores, load: 0.40 1.00 2.00
+ [23:59:50, load 0.40] .venv/bin/python cli.py prune --help
usage: cli.py ...
+ [23:59:55, load 0.50] .venv/bin/python cli.py prune -c configs/smollm2-rcpu.yaml --data.ppl_max_windows 100
00:01:00 INFO rcpu_lightning.pruning.engine: pruned 30 layers in 70.5 s: decoder-layer parameters removed 21.23%
+ [00:02:05, load 1.90] .venv/bin/python cli.py test -c configs/smollm2-rcpu.yaml --data.ppl_max_windows 300
00:02:30 INFO rcpu_lightning.lightning.progress: test: 21/38 batches, 31 s, about 25 s left
00:03:00 INFO rcpu_lightning.lightning.progress: test: 38/38 batches, 55 s
+ [00:03:05, load 1.80] .venv/bin/python cli.py fit -c configs/smollm2-rcpu.yaml --trainer.max_steps 20
00:03:40 INFO rcpu_lightning.lightning.progress: epoch 0: 20/20 batches, 48 s, train/loss 4.142
+ [00:04:00, load 1.70] .venv/bin/python cli.py fit -c configs/smollm2-rcpu.yaml --pruning.schedule '{0: 0.1}'
00:04:20 INFO rcpu_lightning.pruning.engine: pruned 30 layers in 15.9 s: decoder-layer parameters removed 7.47%
README tour: every line ran in 300 s; load at the end: 1.87 1.64 2.10
"""


def test_a_tour_log_gives_each_figure_from_its_own_command():
    run = readme_tour.parse_tour_log(LOG)
    assert run["commit"] == "abc1234" and run["cores"] == 2 and run["load_1min"] == {"min": 0.4, "max": 1.9}
    assert run["prune_seconds"] == 70.5  # the first prune (128 windows), not the gradual fit's
    assert run["prune_line_seconds"] == 130.0  # 23:59:55 -> 00:02:05, across midnight
    assert run["test_seconds"] == 55.0 and run["fit_training_seconds"] == 48.0 and run["tour_seconds"] == 300.0


def test_a_log_that_stopped_early_is_refused():
    with pytest.raises(ValueError, match="not a finished tour log"):
        readme_tour.parse_tour_log(LOG.rsplit("README tour: every line", 1)[0])


def test_the_readme_paragraph_comes_from_the_runs(tmp_path):
    quiet = {"label": "quiet", **readme_tour.parse_tour_log(LOG)}
    shared = {**quiet, "label": "shared", "commit": "def5678", "load_1min": {"min": 5.0, "max": 8.0},
              "tour_seconds": 1800.0, "prune_seconds": 360.0}
    (tmp_path / "readme_tour.json").write_text(json.dumps({"runs": [quiet, shared]}))
    text = render_readme.timings_paragraph(tmp_path, tmp_path / "README.md")
    assert "commit abc1234" in text and "128 calibration windows 70 s" in text and "the whole tour 5.0 min" in text
    assert "commit def5678" in text and "pruning 360 s" in text and "6 times the quiet tour" in text
    readme = "a\n<!-- timings:start -->\nold\n<!-- timings:end -->\nb\n"
    assert render_readme.replace_between(readme, text, render_readme.TIMINGS_START, render_readme.TIMINGS_END) == \
        f"a\n<!-- timings:start -->\n{text}<!-- timings:end -->\nb\n"
