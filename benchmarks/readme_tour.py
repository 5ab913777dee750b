"""The README tour's timings, read from the log of ``tools/run_readme_tour.sh`` into ``results/readme_tour.json``.

    VENV=$PWD/.venv tools/run_readme_tour.sh /tmp/tour > tour.log 2>&1
    .venv/bin/python benchmarks/readme_tour.py tour.log --label quiet   # or --label shared

One run per label (a new run replaces the label's old one). ``render_readme.py`` writes the README's
"How long it takes" paragraph from these runs, so the figures there are never typed by hand.
What is read: each command's start time and 1-minute load (the script's ``+ [HH:MM:SS, load X]`` lines),
the first prune's engine time (``pruned N layers in S s``, 128 calibration windows), the evaluation of
300 test windows (the last ``test: N/N batches, S s`` of the ``cli.py test`` line), the fine-tuning
(the last ``epoch 0: N/N batches, S s`` of the first ``cli.py fit`` line) and the whole tour.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime, timedelta
from pathlib import Path

if not __package__:  # run as `python benchmarks/readme_tour.py`: import this folder as the package it is
    sys.path[0] = str(Path(__file__).resolve().parents[1])
from benchmarks import _common as C  # noqa: E402

OUT = C.RESULTS_DIR / "readme_tour.json"
_COMMAND = re.compile(r"^\+ \[(\d\d:\d\d:\d\d), load ([\d.]+)\] (.*)$")
_HEADER = re.compile(r"^README tour at commit (\w+) in \S+; (\d+) cores")
_TOTAL = re.compile(r"^README tour: every line ran in (\d+) s")


def _commands(lines: list[str]) -> list[dict]:
    """Each command of the tour: its text, start, load at the start, seconds and the lines it printed."""
    out: list[dict] = []
    for line in lines:
        m = _COMMAND.match(line)
        if m:
            out.append({"command": m.group(3), "start": m.group(1), "load": float(m.group(2)), "output": []})
        elif out:
            out[-1]["output"].append(line)
    for this, after in zip(out, out[1:]):
        gap = datetime.strptime(after["start"], "%H:%M:%S") - datetime.strptime(this["start"], "%H:%M:%S")
        this["seconds"] = (gap if gap >= timedelta(0) else gap + timedelta(days=1)).total_seconds()
    return out


def _last_seconds(lines: list[str], pattern: str) -> float | None:
    found = [float(m.group(1)) for line in lines for m in [re.search(pattern, line)] if m]
    return found[-1] if found else None


def _first(commands: list[dict], needle: str) -> dict:
    for c in commands:
        if needle in c["command"]:
            return c
    raise ValueError(f"the tour log has no command containing {needle!r}")


def parse_tour_log(text: str) -> dict:
    """The figures of one tour run (see the module docstring); a ValueError when the tour did not finish."""
    lines = text.splitlines()
    header = next((m for line in lines for m in [_HEADER.match(line)] if m), None)
    total = next((m for line in lines for m in [_TOTAL.match(line)] if m), None)
    if header is None or total is None:
        raise ValueError("not a finished tour log (no 'README tour at commit' or 'every line ran' line)")
    commands = _commands(lines)
    prune, test, fit = _first(commands, "cli.py prune -c"), _first(commands, "cli.py test"), _first(commands, "cli.py fit")
    return {
        "commit": header.group(1), "cores": int(header.group(2)),
        "load_1min": {"min": min(c["load"] for c in commands), "max": max(c["load"] for c in commands)},
        "prune_seconds": _last_seconds(prune["output"], r"pruned \d+ layers in ([\d.]+) s"),
        "prune_line_seconds": prune.get("seconds"), "prune_line": prune["command"],
        "test_seconds": _last_seconds(test["output"], r"test: \d+/\d+ batches, ([\d.]+) s$"),
        "test_line": test["command"],
        "fit_training_seconds": _last_seconds(fit["output"], r"epoch 0: \d+/\d+ batches, ([\d.]+) s"),
        "fit_line": fit["command"],
        "tour_seconds": float(total.group(1)),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("log", help="the output of tools/run_readme_tour.sh")
    p.add_argument("--label", required=True, choices=["quiet", "shared"],
                   help="quiet: nothing else ran on the machine; shared: other jobs did (say which in --machine)")
    p.add_argument("--machine", default="", help="what else ran, in words")
    p.add_argument("--date", default=datetime.now().strftime("%Y-%m-%d"))
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    run = {"label": args.label, "date": args.date, "machine": args.machine,
           **parse_tour_log(Path(args.log).read_text(encoding="utf-8", errors="replace"))}
    out = Path(args.out)
    data = json.loads(out.read_text()) if out.is_file() else {"runs": []}
    data["runs"] = [r for r in data["runs"] if r["label"] != args.label] + [run]
    data["runs"].sort(key=lambda r: r["label"] != "quiet")  # the quiet run first
    C.write_text_atomic(out, json.dumps(data, indent=1) + "\n")
    print(json.dumps(run, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
