"""Quality grid on SmolLM2-135M: WikiText-2 perplexity (and zero-shot accuracy) per method and ratio.

Full grid (hours on a 2-core CPU; resumable, rerun the same command to continue)::

    RCPU_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/quality.py

Quick grid (4 rows at 20 %, 32 calibration samples, first 16 perplexity windows, no zero-shot;
rows go to ``results/quality_quick.json``, never mixed with the full rows)::

    RCPU_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/quality.py --quick

Every finished row is appended to the JSON file at once; a row whose key (model, variant, ratio,
calibration set, evaluation settings) is already there is skipped. ``--rows`` selects variants
(comma-separated ids, shell patterns allowed), ``--ppl-windows N`` scores the first N test windows
only (recorded in the row and its key), ``--no-zeroshot`` skips the zero-shot tasks.
Tables (``quality.md``) and the PPL-vs-ratio plot (``quality_ppl.png``) are rewritten from all
matching rows at the end (``--report-only`` does just that).
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if not __package__:  # run as `python benchmarks/quality.py`: import this folder as the package it is
    sys.path[0] = str(Path(__file__).resolve().parents[1])
from benchmarks import _common as C  # noqa: E402

from rcpu_lightning.data import CalibrationConfig

log = logging.getLogger("benchmarks.quality")


@dataclass(frozen=True)
class Variant:
    id: str
    label: str
    config: dict[str, Any] | None  # PruningConfig overrides; None = the dense model
    table2: bool = False  # a row of the paper's Table 2 (zero-shot at 20 % and 30 %)
    tune_lambda: bool = False
    plot: bool = False
    lambdas: tuple[float, ...] | None = None  # λ grid of tune_lambda (None: the settings' --ls-lambdas)
    # adaptive rows (they can hit any size): remove at least as many decoder-layer parameters as every
    # fixed-size row at the same nominal ratio (+ MATCH_MARGIN, half an AL-AM head unit on SmolLM2),
    # so that all rows of a column compare at one size; the row records the ratio it ran at
    match_removed: bool = False
    baseline: bool = True  # False: a variant of ours (versus_table compares ours with the baselines only)


VARIANTS: list[Variant] = [
    Variant("dense", "Dense", None, table2=True),
    Variant("wanda_sp", "WANDA-sp", {"method": "wanda_sp"}, table2=True, plot=True),
    Variant("flap_al_am", "FLAP (AL-AM)", {"method": "flap", "structure": "al_am"}, table2=True, plot=True,
            match_removed=True),
    Variant("flap_ul_um", "FLAP (UL-UM)", {"method": "flap", "structure": "uniform"}),
    Variant("ls_best", "LS (λ_best)", {"method": "rcpu", "compensation": "least_squares"}, table2=True,
            tune_lambda=True, plot=True),
    Variant("rcpu_rot", "RCPU (rot)", {"method": "rcpu", "compensation": "rotation"}, table2=True, plot=True),
    Variant("rcpu_rot_scale", "RCPU (rot+scale)", {"method": "rcpu", "compensation": "rotation_scale"},
            table2=True, plot=True),
    Variant("rcpu_nocomp", "RCPU, no compensation", {"method": "rcpu", "compensation": "none"}, plot=True),
    Variant("rcpu_o_proj_only", "RCPU rot, o_proj only", {"method": "rcpu", "targets": "o_proj"}),
    Variant("rcpu_down_proj_only", "RCPU rot, down_proj only", {"method": "rcpu", "targets": "down_proj"}),
    Variant("rcpu_refresh_mlp", "RCPU rot, refreshed MLP stats", {"method": "rcpu", "refresh_mlp_stats": True}),
    # ours beyond the paper (configs/rcpu-affine.yaml): AL-AM allocation by compensated error, selection by
    # compensated error, affine least squares; chosen on held-out windows (results/heldout.json)
    Variant("rcpu_affine", "RCPU-affine (error allocation and selection, affine LS)",
            {"method": "flap", "structure": "al_am", "allocation": "compensated_error",
             "compensation": "affine_least_squares", "selection": "compensated_error"},
            table2=True, tune_lambda=True, plot=True, lambdas=(1e-1,), match_removed=True, baseline=False),
    # its previous allocation: FLAP's scores (the RCPU-affine of the previous release)
    Variant("rcpu_affine_flap", "RCPU-affine with FLAP's allocation",
            {"method": "flap", "structure": "al_am", "compensation": "affine_least_squares",
             "selection": "compensated_error"}, tune_lambda=True, lambdas=(1e-2, 1e-1), match_removed=True,
            baseline=False),
]
VARIANT_BY_ID = {v.id: v for v in VARIANTS}
OURS = "rcpu_affine"  # the row compared with every other one (versus_table); it matches every row's size
QUICK_VARIANTS = ["dense", "wanda_sp", "rcpu_nocomp", "rcpu_rot"]

FULL = {"ratios": [0.1, 0.2, 0.3], "nsamples": 128, "ppl_windows": 0, "zeroshot": True}
QUICK = {"ratios": [0.2], "nsamples": 32, "ppl_windows": 16, "zeroshot": False}
DEFAULT_LAMBDAS = [1e-3, 1e-2, 1e-1, 1.0]
HEAD_ROUNDING = "nearest"
MATCH_MARGIN = 0.001


# -- keys -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    model: str = C.MODEL_NAME
    nsamples: int = CalibrationConfig.nsamples  # the paper's calibration (128 x 128, seed 0)
    seqlen: int = CalibrationConfig.seqlen
    seed: int = CalibrationConfig.seed
    eval_seqlen: int = 128
    ppl_windows: int = 0  # 0 = the whole test split
    zs_limit: int = 500
    ls_lambdas: tuple[float, ...] = tuple(DEFAULT_LAMBDAS)
    ls_heldout: int = 32

    def calib_id(self, variant: Variant) -> str:
        return "none" if variant.config is None else f"{self.nsamples}x{self.seqlen}@seed{self.seed}"

    def lambdas(self, variant: Variant) -> tuple[float, ...]:
        return variant.lambdas or self.ls_lambdas

    def variant_id(self, variant: Variant) -> str:
        if not variant.tune_lambda:
            return variant.id
        grid = ",".join(f"{x:g}" for x in self.lambdas(variant))
        return f"{variant.id}[grid={grid};heldout={self.ls_heldout}]"

    def ppl_id(self) -> str:
        return f"wikitext2-test/L{self.eval_seqlen}/{'all' if self.ppl_windows <= 0 else f'first{self.ppl_windows}'}"


def row_prefix(s: Settings, variant: Variant, ratio: float) -> str:
    ratio = 0.0 if variant.config is None else ratio
    return f"{s.model}|{s.variant_id(variant)}|ratio={ratio:g}|calib={s.calib_id(variant)}"


def ppl_key(s: Settings, variant: Variant, ratio: float) -> str:
    """Key of a perplexity row: model, variant (with the λ grid for LS), ratio, calibration set, windows."""
    return f"{row_prefix(s, variant, ratio)}|ppl={s.ppl_id()}"


def zs_key(s: Settings, variant: Variant, ratio: float, task: str) -> str:
    """Key of a zero-shot row (one task; harness protocol, first ``zs_limit`` documents)."""
    return f"{row_prefix(s, variant, ratio)}|zs={task}/limit{s.zs_limit}"


@dataclass
class Job:
    variant: Variant
    ratio: float
    ppl: bool  # perplexity row missing
    tasks: list[str] = field(default_factory=list)  # zero-shot rows missing


def plan_jobs(store: C.RowStore, s: Settings, variants: list[Variant], ratios: list[float], tasks: list[str],
              zs_ratios: list[float]) -> tuple[list[Job], list[str]]:
    """Jobs with something left to compute, and the keys skipped because they exist already."""
    have, jobs, skipped = store.keys(), [], []
    for v in variants:
        for ratio in ([0.0] if v.config is None else ratios):
            want_zs = v.table2 and (v.config is None or any(math.isclose(ratio, z) for z in zs_ratios))
            pk = ppl_key(s, v, ratio)
            zk = {t: zs_key(s, v, ratio, t) for t in (tasks if want_zs else [])}
            missing = [t for t, k in zk.items() if k not in have]
            skipped += [k for k in [pk, *zk.values()] if k in have]
            if pk not in have or missing:
                jobs.append(Job(v, ratio, pk not in have, missing))
    # adaptive rows after the fixed-size ones (they match their size), ours last (it matches every row's)
    jobs.sort(key=lambda j: (j.variant.match_removed, j.variant.id == OURS))
    return jobs, skipped


# -- data -------------------------------------------------------------------------------------------
def lambda_windows(tokenizer, n: int, s: Settings, data_dir):
    """``n`` windows of the calibration split that overlap no calibration window (for choosing λ)."""
    from rcpu_lightning.data import heldout_windows

    return heldout_windows(tokenizer, n, CalibrationConfig(s.nsamples, s.seqlen, s.seed), data_dir)[0]


# -- one job ----------------------------------------------------------------------------------------
def pruned_variant(dense, calib, config_kwargs: dict, s: Settings, ratio: float):
    """A pruned copy of ``dense``; returns (model, report, config, wall and CPU seconds incl. the copy and
    the input capture)."""
    from rcpu_lightning.pruning import PruningConfig, prune_copy

    cfg = PruningConfig(ratio=ratio, head_rounding=HEAD_ROUNDING, **config_kwargs)
    calibration = CalibrationConfig(s.nsamples, s.seqlen, s.seed)
    t0, c0 = time.perf_counter(), time.process_time()
    model, report = prune_copy(dense, calib, cfg, calibration.batch_size, calibration=calibration.to_dict())
    return model, report, cfg, time.perf_counter() - t0, time.process_time() - c0


def tune_lambda(dense, calib, heldout, variant: Variant, s: Settings, ratio: float, known: float | None):
    """Prune once per λ of the grid; keep the λ with the lowest held-out calibration-split NLL."""
    from rcpu_lightning.eval.perplexity import evaluate_perplexity

    lambdas = [known] if known is not None else list(s.lambdas(variant))
    best, search = None, {}
    for lam in lambdas:
        model, report, cfg, sec, cpu = pruned_variant(dense, calib, {**variant.config, "ls_lambda": lam}, s, ratio)
        nll = evaluate_perplexity(model, heldout, progress=False)["mean_nll"] if len(lambdas) > 1 else None
        search[f"{lam:g}"] = nll
        print(f"  LS λ={lam:g}: held-out mean NLL {nll if nll is None else round(nll, 5)} (pruned in {sec:.0f} s)",
              flush=True)
        if best is None or (nll is not None and nll < best[0]):
            best = (nll if nll is not None else 0.0, lam, model, report, cfg, sec, cpu)
        else:
            del model
    _, lam, model, report, cfg, sec, cpu = best
    return model, report, cfg, sec, cpu, {"lambda": lam, "heldout_mean_nll": search,
                                          "heldout_windows": int(heldout.shape[0]) if heldout is not None else 0}


def report_summary(report) -> dict[str, Any]:
    first = report.layers[0] if report.layers else {}
    uniform = all(layer["heads"] == first.get("heads") and layer["channels"] == first.get("channels")
                  for layer in report.layers)
    return {
        "decoder_params_removed": report.decoder_params_removed,
        "params_before": report.params_before,
        "params_after": report.params_after,
        "heads_per_layer": [layer["heads"] for layer in report.layers] if not uniform else first.get("heads"),
        "kv_heads_per_layer": first.get("kv_heads") if uniform else [layer["kv_heads"] for layer in report.layers],
        "channels_per_layer": [layer["channels"] for layer in report.layers] if not uniform else first.get("channels"),
        "engine_seconds": report.seconds,
    }


def run_job(job: Job, dense, tokenizer, calib, windows, heldout_fn, store: C.RowStore, s: Settings, args) -> None:
    from rcpu_lightning.eval.perplexity import evaluate_perplexity
    from rcpu_lightning.eval import evaluate_task

    v, ratio = job.variant, job.ratio
    base: dict[str, Any] = {"model": s.model, "method": v.label, "variant": v.id, "ratio": ratio,
                            "calib_samples": s.nsamples if v.config else None, "calib_seqlen": s.seqlen,
                            "calib_seed": s.seed, "head_rounding": HEAD_ROUNDING if v.config else None}
    extra: dict[str, Any] = {}
    if v.config is None:
        model = dense
        extra["params_before"] = sum(t.numel() for t in dense.parameters())
    else:
        config = dict(v.config)
        run_ratio = ratio
        if v.match_removed:
            extra["matched_removed"] = matched_removed(store, s, v, ratio)
            run_ratio = max(ratio, extra["matched_removed"] + MATCH_MARGIN)
        if v.tune_lambda:
            prev = store.get(ppl_key(s, v, ratio))  # resume: λ already chosen for this row
            known = prev["ls"]["lambda"] if prev and prev.get("ls") else None
            model, report, cfg, sec, cpu, extra["ls"] = tune_lambda(
                dense, calib, None if known is not None else heldout_fn(), v, s, run_ratio, known)
        else:
            model, report, cfg, sec, cpu = pruned_variant(dense, calib, config, s, run_ratio)
        extra.update(report_summary(report))
        extra.update(config=cfg.to_dict(), prune_seconds=sec, prune_cpu_seconds=cpu)
        print(f"  pruned: decoder-layer params removed {report.decoder_params_removed:.4f}, {sec:.0f} s", flush=True)
    if job.ppl:
        t0 = time.perf_counter()
        ppl = evaluate_perplexity(model, windows, batch_size=args.eval_batch_size, progress=False)
        row = {"key": ppl_key(s, v, ratio), "kind": "ppl", **base, "ppl": ppl["ppl"], "mean_nll": ppl["mean_nll"],
               "seqlen": ppl["seqlen"], "ppl_windows": ppl["windows"], "ppl_windows_total": args.total_windows,
               "ppl_tokens": ppl["tokens"], "ppl_seconds": time.perf_counter() - t0, **extra, "run": C.run_info()}
        store.add(row)
        print(f"  PPL {ppl['ppl']:.3f} on {ppl['windows']} windows ({row['ppl_seconds']:.0f} s)", flush=True)
    for task in job.tasks:
        res = evaluate_task(model, tokenizer, task, data_dir=args.data_dir, limit=s.zs_limit, progress=False)
        store.add({"key": zs_key(s, v, ratio, task), "kind": "zeroshot", **base, "task": task, "tasks": {task: res},
                   "decoder_params_removed": extra.get("decoder_params_removed"), "ls": extra.get("ls"), "run": C.run_info()})
        print(f"  {task}: acc {res['acc']:.4f} acc_norm {res['acc_norm']:.4f} ({res['seconds']:.0f} s)", flush=True)


def matched_removed(store: C.RowStore, s: Settings, variant: Variant, ratio: float) -> float:
    """The most decoder-layer parameters any fixed-size pruned row at ``ratio`` removes (0 if none); for
    :data:`OURS`, any other pruned row (the adaptive ones land within half a unit of their ratio, either side)."""
    others = [r["decoder_params_removed"] for r in matching_rows(store.rows, s)[0]
              if r["variant"] not in ("dense", variant.id) and math.isclose(r["ratio"], ratio)
              and (variant.id == OURS or not VARIANT_BY_ID[r["variant"]].match_removed)]
    return max(others, default=0.0)


# -- report -----------------------------------------------------------------------------------------
def matching_rows(rows: list[dict], s: Settings) -> tuple[list[dict], list[dict]]:
    """(perplexity rows, zero-shot rows) measured with the settings ``s`` (other rows are left out)."""
    ppl, zs = [], []
    for r in rows:
        v = VARIANT_BY_ID.get(r.get("variant"))
        if v is None:
            continue
        if r.get("kind") == "ppl" and r["key"] == ppl_key(s, v, r["ratio"]):
            ppl.append(r)
        elif r.get("kind") == "zeroshot" and r["key"] == zs_key(s, v, r["ratio"], r["task"]):
            zs.append(r)
    return ppl, zs


def ppl_table(ppl_rows: list[dict], ratios: list[float]) -> str:
    """Method x ratio perplexity table (effective parameter ratio in parentheses)."""
    by = {(r["variant"], r["ratio"]): r for r in ppl_rows}
    dense = by.get(("dense", 0.0))
    lines = ["| Method | " + " | ".join(f"{100 * x:.0f}%" for x in ratios) + " |",
             "|---|" + "---|" * len(ratios)]
    if dense:
        lines.append("| Dense | " + " | ".join(C.fmt(dense["ppl"], ".2f") for _ in ratios) + " |")
    for v in VARIANTS:
        if v.config is None or not any((v.id, x) in by for x in ratios):
            continue
        cells = []
        for x in ratios:
            r = by.get((v.id, x))
            cells.append("–" if r is None else f"{C.fmt(r['ppl'], '.2f')} ({100 * r['decoder_params_removed']:.1f}%)")
        lines.append(f"| {v.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def versus_table(ppl_rows: list[dict], zs_rows: list[dict], ratios: list[float], ours: str = OURS) -> str:
    """Ours against the best baseline row of each column: PPL ratio, decoder-layer parameters removed, and
    the mean zero-shot accuracy against the best baseline's mean (where both are measured)."""
    lines = ["| ratio | ours: PPL (removed) | best baseline | its PPL (removed) | ours / best | "
             "removes at least as much | zero-shot mean: ours vs best baseline's |", "|---|---|---|---|---|---|---|"]
    means = zeroshot_means(zs_rows)
    for x in ratios:
        mine = next((r for r in ppl_rows if r["variant"] == ours and math.isclose(r["ratio"], x)), None)
        others = [r for r in ppl_rows if r["variant"] != "dense" and VARIANT_BY_ID[r["variant"]].baseline
                  and math.isclose(r["ratio"], x)]
        if mine is None or not others:
            continue
        best = min(others, key=lambda r: r["ppl"])
        most = max(r["decoder_params_removed"] for r in others)
        lines.append(f"| {100 * x:.0f}% | {mine['ppl']:.2f} ({100 * mine['decoder_params_removed']:.2f}%) | "
                     f"{VARIANT_BY_ID[best['variant']].label} | {best['ppl']:.2f} ({100 * best['decoder_params_removed']:.2f}%) "
                     f"| {mine['ppl'] / best['ppl']:.3f} | {'yes' if mine['decoder_params_removed'] >= most else 'no'} "
                     f"({100 * mine['decoder_params_removed']:.3f}% vs at most {100 * most:.3f}%) | "
                     f"{_zeroshot_versus(means, ours, [r['variant'] for r in others], mine['ratio'])} |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def _zeroshot_versus(means: dict[tuple[str, float], tuple[float, float]], ours: str, baselines: list[str],
                     ratio: float) -> str:
    """``not lower: 43.80 vs 43.69 (LS (λ_best), < 2 s.e.)``; – when ours or every baseline lacks a mean."""
    theirs = [(means[(v, ratio)], v) for v in baselines if (v, ratio) in means]
    if (ours, ratio) not in means or not theirs:
        return "–"
    (mine, se), ((best, best_se), v) = means[(ours, ratio)], max(theirs, key=lambda t: t[0][0])
    noise = within_noise(mine, se, best, best_se)
    return (f"{'not lower' if mine >= best else 'lower'}: {100 * mine:.2f} vs {100 * best:.2f} "
            f"({VARIANT_BY_ID[v].label}{', < 2 s.e.' if noise else ''}; {len(theirs)} of {len(baselines)} baselines measured)")


def cost_table(ppl_rows: list[dict], ratios: list[float]) -> str:
    """Per row: parameters, decoder-layer parameters removed, prune seconds, PPL evaluation seconds."""
    lines = ["| Method | ratio | params | removed | prune s | PPL eval s |", "|---|---|---|---|---|---|"]
    order = {v.id: i for i, v in enumerate(VARIANTS)}
    rows = sorted((r for r in ppl_rows if r["variant"] == "dense" or any(math.isclose(r["ratio"], x) for x in ratios)),
                  key=lambda r: (r["ratio"], order[r["variant"]]))
    for r in rows:
        if r["variant"] == "dense":
            params, removed, prune = r.get("params_before"), "–", "–"
        else:
            params, removed, prune = r.get("params_after"), f"{100 * r['decoder_params_removed']:.1f}%", C.fmt(r.get("prune_seconds"), '.0f')
        size = "–" if params is None else f"{params / 1e6:.2f} M"
        lines.append(f"| {VARIANT_BY_ID[r['variant']].label} | {100 * r['ratio']:.0f}% | {size} | {removed} | {prune} "
                     f"| {C.fmt(r.get('ppl_seconds'), '.0f')} |")
    return "\n".join(lines) + "\n"


def table_notes(ppl_rows: list[dict], s: Settings) -> str:
    notes = []
    shapes = {}
    for r in ppl_rows:
        if r["variant"] in ("dense",) or r.get("config", {}).get("structure") == "al_am":
            continue
        shapes.setdefault(r["ratio"], (r.get("heads_per_layer"), r.get("kv_heads_per_layer"), r.get("channels_per_layer")))
    windows = {(r["ppl_windows"], r.get("ppl_windows_total")) for r in ppl_rows}
    w_desc = ", ".join(f"{w} of {t}" for w, t in sorted(windows, key=str))
    notes.append(f"- Model: {s.model}, float32, CPU. Perplexity: WikiText-2 test, windows of {s.eval_seqlen} tokens "
                 f"({w_desc} windows scored). In parentheses: decoder-layer parameters removed (effective ratio).")
    notes.append(f"- Calibration: {s.nsamples} windows x {s.seqlen} tokens, seed {s.seed}, drawn from the tokenized "
                 "WikiText-2 v1 *valid* split (no train split is available offline), not the paper's train split.")
    notes.append("- Head rounding `nearest`: SmolLM2 has 9 query heads in 3 kv groups, so heads go in units of 3 "
                 "(one per group, k/v kept). `floor` would remove no head below 1/3 and leave the o_proj "
                 "compensation untested. Heads per layer after pruning (uniform rows): "
                 + "; ".join(f"{100 * x:.0f}%: {h}/9 heads, {c}/1536 MLP channels"
                             for x, (h, _, c) in sorted(shapes.items()))
                 + ("; at 10 % nearest rounding still removes no head (0.9 -> 0), so only MLP channels are pruned"
                    if any(math.isclose(x, 0.1) for x in shapes) else "") + ".")
    ls = {r["ratio"]: r["ls"] for r in ppl_rows if r.get("ls") and r["variant"] == "ls_best"}
    if ls:
        notes.append("- LS (λ_best): ridge least squares (λ relative to the mean Gram G/n) on the RCPU selection; λ "
                     "picked from the grid {" + ", ".join(f"{x:g}" for x in s.ls_lambdas) + "} by the lowest mean NLL "
                     f"on {s.ls_heldout} held-out windows of the calibration split that overlap no calibration "
                     "window (reconstruction error on the calibration set itself always favours the smallest λ). "
                     "Chosen: " + ", ".join(f"{100 * x:.0f}%: λ={v['lambda']:g}" for x, v in sorted(ls.items())) + ".")
    ours = sorted((r for r in ppl_rows if r["variant"] == OURS), key=lambda r: r["ratio"])
    if ours:
        notes.append("- RCPU-affine (ours, beyond the paper; `configs/rcpu-affine.yaml`): an adaptive AL-AM structure "
                     "decides how many heads and channels each layer loses, by one global threshold on each unit's "
                     "compensated error per parameter (`allocation: compensated_error`: the error its removal leaves "
                     "once the rest is refitted, each token's error relative to its residual-stream norm; the budget "
                     "counted in decoder-layer parameters, added biases included); which ones go is chosen greedily by "
                     "the error left after refitting (`selection: compensated_error`); the kept columns are refitted "
                     "by affine least squares (ridge fit to the original module's output plus a bias for the mean of "
                     "the dropped inputs). Run at the ratio that removes at least as many decoder-layer parameters as "
                     f"every other row of its column, FLAP (AL-AM) included (+{100 * MATCH_MARGIN:g} %): "
                     + ", ".join(f"{100 * r['ratio']:.0f}%: ratio {r['config']['ratio']:.4f}" for r in ours)
                     + "; " + _lambda_note(VARIANT_BY_ID[OURS], ours, s) + ".")
    flap_alloc = sorted((r for r in ppl_rows if r["variant"] == "rcpu_affine_flap"), key=lambda r: r["ratio"])
    if flap_alloc:
        notes.append("- RCPU-affine with FLAP's allocation: the same, with FLAP's scores setting the per-layer counts "
                     "(`allocation: score`; the RCPU-affine of the previous release); "
                     + _lambda_note(VARIANT_BY_ID["rcpu_affine_flap"], flap_alloc, s) + ".")
    if any(r["variant"].startswith("flap") for r in ppl_rows):
        notes.append("- FLAP (AL-AM) uses FLAP's global adaptive structure (per-layer counts differ), its threshold set "
                     "to remove a share of the decoder-layer parameters (FLAP's code takes the share of the prunable "
                     "heads and channels only, which removes less): the requested ratio, or the size of the uniform "
                     "rows of its column where that is larger (whole heads make them overshoot), so that every row "
                     "of a column compares at one size (in parentheses); FLAP rows use FLAP's bias compensation.")
    notes.append("- WANDA-sp has no compensation; RCPU rows use RCPU's variance-aware score (γ) for selection.")
    if any(r["variant"] in ("rcpu_o_proj_only", "rcpu_down_proj_only") for r in ppl_rows):
        notes.append("- o_proj only / down_proj only: the same heads and channels are removed as in RCPU (rot); rotation "
                     "compensation is applied to that projection only, the other is pruned without compensation. "
                     "Where no head is removed (10 %), o_proj only is the same model as RCPU, no compensation, and "
                     "down_proj only the same as RCPU (rot).")
    return "\n".join(notes) + "\n"


def _lambda_note(variant: Variant, rows: list[dict], s: Settings) -> str:
    """How a tuned variant's λ was set: fixed (a one-value grid, chosen with benchmarks/heldout.py) or searched."""
    if len(variant.lambdas) == 1:
        return f"λ {variant.lambdas[0]:g} (chosen on held-out windows with `benchmarks/heldout.py`)"
    return ("λ from {" + ", ".join(f"{x:g}" for x in variant.lambdas) + f"}} by the lowest mean NLL on the same "
            f"{s.ls_heldout} held-out windows: "
            + ", ".join(f"{100 * r['ratio']:.0f}%: λ={r['ls']['lambda']:g}" for r in rows if r.get("ls")))


# -- the paper's claims, checked on these rows --------------------------------------------------------
@dataclass(frozen=True)
class Claim:
    text: str
    a: str  # variant id expected to win
    b: str  # variant id expected to lose (or to be matched, for "close")
    kind: str = "ppl"  # "ppl": lower wins; "zs": higher mean zero-shot accuracy wins
    close: float | None = None  # "a ≈ b": relative difference at most this


CLAIMS: list[Claim] = [
    Claim("RCPU (rot) has lower PPL than WANDA-sp", "rcpu_rot", "wanda_sp"),
    Claim("RCPU (rot) has lower PPL than FLAP (AL-AM)", "rcpu_rot", "flap_al_am"),
    Claim("RCPU (rot) has lower PPL than FLAP (UL-UM)", "rcpu_rot", "flap_ul_um"),
    Claim("rotation ≈ rotation + scale (PPL within 5 %)", "rcpu_rot", "rcpu_rot_scale", close=0.05),
    Claim("RCPU (rot) has lower PPL than least squares (λ_best)", "rcpu_rot", "ls_best"),
    Claim("RCPU (rot) has lower PPL than no compensation", "rcpu_rot", "rcpu_nocomp"),
    Claim("ablation: o_proj only beats down_proj only", "rcpu_o_proj_only", "rcpu_down_proj_only"),
    Claim("ablation: both (RCPU rot) beat o_proj only", "rcpu_rot", "rcpu_o_proj_only"),
    Claim("ablation: down_proj only beats no compensation", "rcpu_down_proj_only", "rcpu_nocomp"),
    Claim("RCPU (rot) has higher mean zero-shot accuracy than WANDA-sp", "rcpu_rot", "wanda_sp", kind="zs"),
    Claim("RCPU (rot) has higher mean zero-shot accuracy than FLAP (AL-AM)", "rcpu_rot", "flap_al_am", kind="zs"),
]


def reference_note(zs_rows: list[dict]) -> str:
    """A note with the model-free accuracies of the scored documents (from any row that recorded them)."""
    from rcpu_lightning.eval.report import TASK_TITLES
    from rcpu_lightning.eval.tasks import TASKS

    rates = {}
    for r in zs_rows:
        res = r["tasks"][r["task"]]
        if "majority_position" in res:
            rates[r["task"]] = (res["chance"], res["majority_position"])
    if not rates:
        return ""
    cells = ", ".join(f"{TASK_TITLES[t]} {100 * rates[t][0]:.1f} / {100 * rates[t][1]:.1f}" for t in TASKS if t in rates)
    return ("- Without a model (chance / always the most frequent gold position), on the same documents: "
            f"{cells} (%). A model that leans towards one answer can score above the dense model without "
            "being better.\n")


def zeroshot_means(zs_rows: list[dict]) -> dict[tuple[str, float], tuple[float, float]]:
    """(variant, ratio) -> (mean of the reported per-task accuracies, its standard error), only where every
    task of TASKS is present. s.e. = sqrt(Σ s.e.²) / tasks (tasks treated as independent)."""
    from rcpu_lightning.eval.tasks import TASKS

    by: dict[tuple[str, float], dict[str, tuple[float, float]]] = {}
    for r in zs_rows:
        res = r["tasks"][r["task"]]
        se = res.get(f"{res.get('reported_metric', 'acc')}_stderr", float("nan"))
        by.setdefault((r["variant"], r["ratio"]), {})[r["task"]] = (res["reported"], se)
    out = {}
    for k, v in by.items():
        if all(t in v for t in TASKS):
            out[k] = (sum(v[t][0] for t in TASKS) / len(TASKS), math.sqrt(sum(v[t][1] ** 2 for t in TASKS)) / len(TASKS))
    return out


def within_noise(a: float, se_a: float, b: float, se_b: float) -> bool:
    """Whether two means differ by less than twice the standard error of their difference."""
    return abs(a - b) < 2 * math.sqrt(se_a**2 + se_b**2)


def claim_cell(claim: Claim, values: dict[tuple[str, float], tuple[float, float | None]], ratio: float) -> str:
    """``yes (a vs b)`` / ``no (a vs b)``; zero-shot differences under two standard errors are marked."""
    a, b = values.get((claim.a, ratio)), values.get((claim.b, ratio))
    if a is None or b is None:
        return "–"
    (va, sa), (vb, sb) = a, b
    scale = 100.0 if claim.kind == "zs" else 1.0
    if claim.close is not None:
        holds = abs(va - vb) <= claim.close * min(abs(va), abs(vb))
    else:
        holds = va < vb if claim.kind == "ppl" else va > vb
    noise = sa is not None and sb is not None and within_noise(va, sa, vb, sb)
    return f"{'yes' if holds else 'no'} ({scale * va:.2f} vs {scale * vb:.2f}{', < 2 s.e.' if noise else ''})"


def claims_table(ppl_rows: list[dict], zs_rows: list[dict], ratios: list[float]) -> str:
    """Each headline claim of the paper (rcpu-method.md) per ratio: holds here or not, with both figures."""
    values = {"ppl": {(r["variant"], r["ratio"]): (r["ppl"], None) for r in ppl_rows}, "zs": zeroshot_means(zs_rows)}
    lines = ["| Claim (paper, LLaMA-7B) | " + " | ".join(f"{100 * x:.0f}%" for x in ratios) + " |",
             "|---|" + "---|" * len(ratios)]
    for c in CLAIMS:
        cells = [claim_cell(c, values[c.kind], x) for x in ratios]
        if any(cell != "–" for cell in cells):
            lines.append(f"| {c.text} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def cost_notes() -> str:
    return ("- prune s: wall seconds of input capture + `prune_model` on the shared 2-core CPU (one run each; other "
            "jobs may have shared the cores). For LS (λ_best) it is the prune with the chosen λ; choosing λ took one "
            "prune and one held-out evaluation per grid value on top.\n")


def settings_from_rows(rows: list[dict]) -> Settings | None:
    """The settings of the most recent pruned perplexity row (to render a file without knowing its flags)."""
    ppl = [r for r in rows if r.get("kind") == "ppl" and r.get("variant") in VARIANT_BY_ID and r.get("calib_samples")]
    if not ppl:
        return None
    r = ppl[-1]
    windows = 0 if r["ppl_windows"] == r.get("ppl_windows_total") else r["ppl_windows"]
    limits = [t.get("limit") for z in rows if z.get("kind") == "zeroshot" for t in z.get("tasks", {}).values()]
    ls = next((x["ls"] for x in reversed(ppl) if x.get("ls") and len(x["ls"].get("heldout_mean_nll", {})) > 1
               and not VARIANT_BY_ID[x["variant"]].lambdas), None)  # the grid of --ls-lambdas, not a variant's own
    kw = {}
    if ls:
        kw = {"ls_lambdas": tuple(float(k) for k in ls["heldout_mean_nll"]), "ls_heldout": ls["heldout_windows"]}
    return Settings(nsamples=r["calib_samples"], seqlen=r["calib_seqlen"], seed=r["calib_seed"], eval_seqlen=r["seqlen"],
                    ppl_windows=windows, zs_limit=limits[-1] if limits else 500, **kw)


def report_markdown(rows: list[dict], s: Settings, ratios: list[float] | None = None, image: str | None = None,
                    heading: str = "##") -> str:
    """Markdown tables (perplexity, zero-shot) and notes from the rows measured with ``s``."""
    from rcpu_lightning.eval.report import results_table

    ppl_rows, zs_rows = matching_rows(rows, s)
    if not ppl_rows:
        return ""
    ratios = ratios or sorted({r["ratio"] for r in ppl_rows if r["ratio"] > 0})
    parts = [f"{heading} WikiText-2 perplexity ({s.model})\n", ppl_table(ppl_rows, ratios), "", table_notes(ppl_rows, s)]
    versus = versus_table(ppl_rows, zs_rows, ratios)
    if versus:
        parts += [f"\n{heading} Ours against the best baseline at the same size\n", versus]
    parts += [f"\n{heading} Size and cost per row\n", cost_table(ppl_rows, ratios), "", cost_notes()]
    measured = {(r["variant"], r["ratio"]) for r in zs_rows}  # only models with zero-shot rows get a line
    if zs_rows:
        merged = [{"model": s.model, "method": r["method"], "ratio": r["ratio"], "ppl": r["ppl"]}
                  for r in ppl_rows if (r["variant"], r["ratio"]) in measured] + zs_rows
        parts += [f"\n{heading} Zero-shot accuracy (lm-evaluation-harness protocol, first "
                  f"{s.zs_limit} documents per task)\n", results_table(merged), reference_note(zs_rows)]
    parts += [f"\n{heading} The paper's claims on this model\n", claims_table(ppl_rows, zs_rows, ratios), "",
              "- The paper's headline and ablation claims (rcpu-method.md; on LLaMA-7B all of them hold), checked on "
              "the rows above. In parentheses: the figure of the method named first in the claim, then the other's "
              "(PPL, or mean zero-shot accuracy in % over the seven tasks). *< 2 s.e.*: the zero-shot difference is "
              "smaller than twice its standard error (500 documents per task), so it does not tell the two apart. "
              "–: a row is missing.\n"]
    if image:
        parts += [f"\n![WikiText-2 perplexity vs pruning ratio]({image})\n"]
    return "\n".join(parts)


def write_report(rows: list[dict], s: Settings, ratios: list[float], md_path: Path, png_path: Path) -> str:
    """Write ``md_path`` (tables) and ``png_path`` (PPL vs ratio, via the eval report functions)."""
    from rcpu_lightning.eval.report import plot_ppl_vs_ratio

    ppl_rows, _ = matching_rows(rows, s)
    if not ppl_rows:
        return ""
    plot_rows = [{"model": s.model, "method": r["method"], "ratio": r["ratio"], "ppl": r["ppl"]}
                 for r in ppl_rows if r["variant"] == "dense" or VARIANT_BY_ID[r["variant"]].plot]
    image = None
    if len({r["ratio"] for r in plot_rows}) > 1:
        plot_ppl_vs_ratio(plot_rows, png_path, title=f"SmolLM2-135M: WikiText-2 PPL vs pruning ratio")
        image = png_path.name
    text = report_markdown(rows, s, ratios, image)
    C.write_text_atomic(md_path, text)
    return text


# -- main -------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="reduced grid -> results/quality_quick.json")
    p.add_argument("--rows", default=None, help="comma-separated variant ids or patterns "
                   f"(default: all; quick: {','.join(QUICK_VARIANTS)}); known: {','.join(VARIANT_BY_ID)}")
    p.add_argument("--ratios", default=None, help="comma-separated pruning ratios (default 0.1,0.2,0.3; quick 0.2)")
    p.add_argument("--nsamples", type=int, default=None, help="calibration windows (default 128; quick 32)")
    p.add_argument("--seqlen", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ppl-windows", type=int, default=None, help="score the first N test windows (0 = all; quick 16)")
    p.add_argument("--eval-batch-size", type=int, default=8)
    p.add_argument("--no-zeroshot", action="store_true")
    p.add_argument("--zs-limit", type=int, default=500, help="first N documents per zero-shot task")
    p.add_argument("--zs-ratios", default="0.2,0.3")
    p.add_argument("--tasks", default=None, help="zero-shot tasks (default: the seven of the paper)")
    p.add_argument("--ls-lambdas", default=",".join(f"{x:g}" for x in DEFAULT_LAMBDAS))
    p.add_argument("--ls-heldout", type=int, default=32, help="held-out calibration-split windows for choosing λ")
    p.add_argument("--data-dir", default=None, help="default: $RCPU_DATA_DIR")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="row file (default results/quality.json or quality_quick.json)")
    p.add_argument("--report-only", action="store_true", help="only rewrite the markdown/plot from the row file")
    p.add_argument("--dry-run", action="store_true", help="print what would run / be skipped")
    return p.parse_args(argv)


def resolve(args) -> tuple[Settings, list[Variant], list[float], list[str], list[float], Path]:
    from rcpu_lightning.eval.tasks import TASKS

    mode = QUICK if args.quick else FULL
    ratios = [float(x) for x in args.ratios.split(",")] if args.ratios else list(mode["ratios"])
    patterns = args.rows.split(",") if args.rows else (QUICK_VARIANTS if args.quick else ["*"])
    variants = [v for v in VARIANTS if any(fnmatch.fnmatch(v.id, p.strip()) for p in patterns)]
    unknown = [p for p in patterns if not any(fnmatch.fnmatch(v.id, p.strip()) for v in VARIANTS)]
    if unknown:
        raise SystemExit(f"--rows {unknown} match no variant; known: {', '.join(VARIANT_BY_ID)}")
    zeroshot = mode["zeroshot"] and not args.no_zeroshot
    tasks = ([t.strip() for t in args.tasks.split(",")] if args.tasks else list(TASKS)) if zeroshot else []
    s = Settings(nsamples=args.nsamples or mode["nsamples"], seqlen=args.seqlen, seed=args.seed,
                 ppl_windows=mode["ppl_windows"] if args.ppl_windows is None else args.ppl_windows,
                 zs_limit=args.zs_limit, ls_lambdas=tuple(float(x) for x in args.ls_lambdas.split(",")),
                 ls_heldout=args.ls_heldout)
    out = Path(args.out) if args.out else C.RESULTS_DIR / ("quality_quick.json" if args.quick else "quality.json")
    return s, variants, ratios, tasks, [float(x) for x in args.zs_ratios.split(",")], out


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    s, variants, ratios, tasks, zs_ratios, out = resolve(args)
    store = C.RowStore(out)
    md, png = out.with_suffix(".md"), out.with_name(out.stem + "_ppl.png")
    if args.report_only:
        print(write_report(store.rows, s, ratios, md, png) or "no matching rows")
        return 0
    jobs, skipped = plan_jobs(store, s, variants, ratios, tasks, zs_ratios)
    for k in skipped:
        print(f"skip (already in {out.name}): {k}")
    for j in jobs:
        print(f"todo: {j.variant.id} @ {j.ratio:g}: ppl={'yes' if j.ppl else 'done'}, zero-shot tasks {j.tasks or '-'}")
    if args.dry_run or not jobs:
        if not jobs:
            write_report(store.rows, s, ratios, md, png)
        return 0

    C.setup_torch(args.threads)
    from rcpu_lightning.data import calibration_windows, perplexity_windows
    from rcpu_lightning.models import load_causal_lm

    dense, tokenizer = load_causal_lm(C.MODEL_SPEC)
    dense.eval()
    all_windows = perplexity_windows(tokenizer, s.eval_seqlen, args.data_dir)
    args.total_windows = int(all_windows.shape[0])
    windows = all_windows[: s.ppl_windows] if s.ppl_windows > 0 else all_windows
    calib = calibration_windows(tokenizer, s.nsamples, s.seqlen, s.seed, args.data_dir)
    cache: dict[str, Any] = {}

    def heldout():
        if "h" not in cache:
            cache["h"] = lambda_windows(tokenizer, s.ls_heldout, s, args.data_dir)
        return cache["h"]

    t_start = time.perf_counter()
    for i, job in enumerate(jobs, 1):
        print(f"[{i}/{len(jobs)}] {job.variant.label} @ {100 * job.ratio:.0f}% "
              f"(elapsed {time.perf_counter() - t_start:.0f} s)", flush=True)
        run_job(job, dense, tokenizer, calib, windows, heldout, store, s, args)
    text = write_report(store.rows, s, ratios, md, png)
    print(text)
    print(f"done in {time.perf_counter() - t_start:.0f} s; rows in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
