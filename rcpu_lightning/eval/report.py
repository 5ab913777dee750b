"""Result tables and plots from per-run result JSONs.

A result JSON is a dict or a list of dicts ("rows"). Recognised keys of a row:

* ``model`` (str), ``method`` (str), ``ratio`` (float, pruning ratio; 0 = dense);
* ``ppl`` (float; SparseGPT-style WikiText-2 token perplexity) and optionally ``seqlen``;
* ``tasks``: ``{task: {"acc": float, "acc_norm": float, "reported_metric": "acc"|"acc_norm", ...}}``.

Rows with the same ``(model, method, ratio)`` (e.g. one perplexity file and one zero-shot file of the same
run) are merged. The table follows the pruning papers (LLM-Pruner / FLAP): one row per ratio x method,
columns = WikiText-2 PPL, the seven tasks (in percent, the per-task reported metric) and their mean.

Command line (:func:`report_cli`, a ``jsonargparse.CLI`` of :func:`report`; see ``--help``)::

    python -m rcpu_lightning.eval.report RESULT_JSON... [--markdown out.md] [--plot out.png] [--metric paper|acc|acc_norm]
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Literal, Optional, Sequence

from jsonargparse import CLI, ArgumentParser

from ..files import write_atomic, write_text_atomic
from .tasks import PAPER_METRIC, TASKS

__all__ = ["TASK_TITLES", "load_rows", "merge_rows", "results_table", "plot_ppl_vs_ratio", "report", "report_cli"]

TASK_TITLES: dict[str, str] = {
    "boolq": "BoolQ",
    "piqa": "PIQA",
    "hellaswag": "HellaSwag",
    "winogrande": "WinoGrande",
    "arc_easy": "ARC-e",
    "arc_challenge": "ARC-c",
    "openbookqa": "OBQA",
}


def _key(row: dict) -> tuple[str, str, float]:
    return (str(row.get("model", "")), str(row.get("method", "")), float(row.get("ratio", 0.0) or 0.0))


def merge_rows(rows: Iterable[dict]) -> list[dict]:
    """Merge rows sharing ``(model, method, ratio)``; later values win, ``tasks`` dicts are united."""
    merged: dict[tuple[str, str, float], dict] = {}
    for row in rows:
        if not isinstance(row, dict):
            raise TypeError(f"result rows must be dicts, got {type(row).__name__}")
        k = _key(row)
        if k not in merged:
            merged[k] = {**row, "tasks": dict(row.get("tasks") or {})}
        else:
            tgt = merged[k]
            tasks = {**tgt.get("tasks", {}), **(row.get("tasks") or {})}
            tgt.update({kk: v for kk, v in row.items() if kk != "tasks" and v is not None})
            tgt["tasks"] = tasks
    return list(merged.values())


def load_rows(paths: Sequence[str | os.PathLike]) -> list[dict]:
    rows: list[dict] = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            data = json.load(f)
        rows.extend(data if isinstance(data, list) else [data])
    return merge_rows(rows)


def _task_value(entry: Any, task: str, metric: str) -> float | None:
    if entry is None:
        return None
    if isinstance(entry, (int, float)):
        return float(entry)
    name = PAPER_METRIC.get(task, "acc") if metric == "paper" else metric
    if metric == "paper" and entry.get("reported_metric"):
        name = entry["reported_metric"]
    value = entry.get(name)
    return None if value is None else float(value)


def _fmt(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "–"
    if math.isinf(x) or math.isnan(x):
        return str(x)
    return f"{x:.{digits}f}"


def _sorted(rows: Sequence[dict]) -> list[dict]:
    model_order: dict[str, int] = {}
    method_order: dict[str, int] = {}
    for r in rows:
        model_order.setdefault(str(r.get("model", "")), len(model_order))
        method_order.setdefault(str(r.get("method", "")), len(method_order))
    return sorted(
        rows,
        key=lambda r: (model_order[str(r.get("model", ""))], float(r.get("ratio", 0.0) or 0.0), method_order[str(r.get("method", ""))]),
    )


def results_table(rows: Sequence[dict], metric: str = "paper", tasks: Sequence[str] = TASKS) -> str:
    """Markdown table, one line per (model,) ratio x method.

    Columns: ``Ratio | Method | WikiText-2 PPL | <tasks> | Mean`` (a ``Model`` column first when the rows
    hold more than one model). Task values are percentages of ``metric``: ``"paper"`` = the metric each
    row recorded as reported (default map :data:`PAPER_METRIC`), or ``"acc"`` / ``"acc_norm"`` for all.
    The mean is shown only when every task has a value.
    """
    if metric not in ("paper", "acc", "acc_norm"):
        raise ValueError("metric must be 'paper', 'acc' or 'acc_norm'")
    rows = _sorted(merge_rows(rows))
    multi_model = len({str(r.get("model", "")) for r in rows}) > 1
    head = (["Model"] if multi_model else []) + ["Ratio", "Method", "WikiText-2 PPL"]
    head += [TASK_TITLES.get(t, t) for t in tasks] + ["Mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in rows:
        ratio = float(r.get("ratio", 0.0) or 0.0)
        cells = [str(r.get("model", ""))] if multi_model else []
        cells += [f"{100 * ratio:.0f}%", str(r.get("method", "")), _fmt(r.get("ppl"))]
        vals = [_task_value((r.get("tasks") or {}).get(t), t, metric) for t in tasks]
        cells += [_fmt(None if v is None else 100 * v) for v in vals]
        cells.append(_fmt(100 * sum(vals) / len(vals)) if vals and all(v is not None for v in vals) else "–")
        lines.append("| " + " | ".join(cells) + " |")
    note = {"paper": "per-task metric of LLM-Pruner/FLAP tables (acc: BoolQ, PIQA, WinoGrande, ARC-e; acc_norm: HellaSwag, ARC-c, OBQA)"}.get(
        metric, metric
    )
    return "\n".join(lines) + f"\n\nZero-shot columns: accuracy in %, {note}.\n"


def plot_ppl_vs_ratio(rows: Sequence[dict], png_path: str | os.PathLike, title: str | None = None) -> Path:
    """WikiText-2 perplexity against pruning ratio, one line per (model,) method; log y axis.

    Rows with ratio 0 (the dense model) start every method's line of the same model.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in merge_rows(rows) if r.get("ppl") is not None]
    if not rows:
        raise ValueError("no row has a 'ppl' value to plot")
    models = list(dict.fromkeys(str(r.get("model", "")) for r in rows))
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        for model in models:
            mrows = [r for r in rows if str(r.get("model", "")) == model]
            dense = [r for r in mrows if float(r.get("ratio", 0.0) or 0.0) == 0.0]
            methods = list(dict.fromkeys(str(r.get("method", "")) for r in mrows if float(r.get("ratio", 0.0) or 0.0) > 0))
            if not methods:
                methods = list(dict.fromkeys(str(r.get("method", "")) for r in mrows))
            for method in methods:
                pts = {float(r.get("ratio", 0.0) or 0.0): float(r["ppl"]) for r in dense}
                pts.update({float(r.get("ratio", 0.0) or 0.0): float(r["ppl"]) for r in mrows if str(r.get("method", "")) == method})
                xs = sorted(pts)
                label = method if len(models) == 1 else f"{model} {method}"
                ax.plot([100 * x for x in xs], [pts[x] for x in xs], marker="o", label=label)
        ax.set_xlabel("pruning ratio (%)")
        ax.set_ylabel("WikiText-2 perplexity")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        if title:
            ax.set_title(title)
        fig.tight_layout()
        return write_atomic(png_path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    finally:
        plt.close(fig)


def report(
    paths: list[str],
    markdown: Optional[str] = None,
    plot: Optional[str] = None,
    metric: Literal["paper", "acc", "acc_norm"] = "paper",
) -> str:
    """Table (and optionally a plot) from result JSON files; returns the markdown table.

    Args:
        paths: result JSON files (each a dict or a list of dicts); rows with equal model/method/ratio are merged.
        markdown: write the markdown table here (atomically); without it the table is printed.
        plot: write the PPL-vs-ratio PNG here (needs rows with 'ppl').
        metric: zero-shot metric per task: paper (each row's reported metric), acc or acc_norm.
    """
    if not paths:
        raise ValueError("report needs at least one result JSON path, got none")
    rows = load_rows(paths)
    table = results_table(rows, metric=metric)
    if markdown:
        write_text_atomic(markdown, table)
    else:
        print(table)
    if plot:
        plot_ppl_vs_ratio(rows, plot)
    return table


class _ReportParser(ArgumentParser):
    """``paths`` takes one or more words (``results/*.json``) like argparse's ``nargs="+"``; jsonargparse
    would otherwise read a positional ``list[str]`` from a single word (``"[a.json, b.json]"``)."""

    def add_argument(self, *args: Any, **kwargs: Any) -> Any:
        if args == ("paths",):
            return super().add_argument("paths", type=str, nargs="+", help=kwargs.get("help"))
        return super().add_argument(*args, **kwargs)


def report_cli(args: Optional[list[str]] = None, *, prog: Optional[str] = None) -> None:
    """Run :func:`report` from command-line words (``args=None``: ``sys.argv[1:]``); ``prog`` names the
    command in the usage line. Returns None, so ``sys.exit(report_cli())`` exits 0 after a success."""
    CLI(report, args=args, parser_class=_ReportParser, prog=prog, description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    report_cli(prog="python -m rcpu_lightning.eval.report")
