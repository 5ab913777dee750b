"""Regenerate the README's "Results" section from ``benchmarks/results/*.json`` (no hand-typed numbers).

    .venv/bin/python benchmarks/render_readme.py [--readme README.md] [--results benchmarks/results]

Only the text between ``<!-- results:start -->`` and ``<!-- results:end -->`` is replaced; when
the markers are missing the section is printed to stdout and the README is left alone.
Full-grid files are preferred; ``*_quick.json`` files are shown (labelled as quick) when no full
file exists.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

if not __package__:  # run as `python benchmarks/render_readme.py`: import this folder as the package it is
    sys.path[0] = str(Path(__file__).resolve().parents[1])
from benchmarks import _common as C  # noqa: E402
from benchmarks import quality as Q  # noqa: E402

START, END = "<!-- results:start -->", "<!-- results:end -->"


def _load(path: Path):
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _pick(results: Path, stem: str) -> tuple[Path | None, bool]:
    """(file, is_quick): the full file when it exists, else the quick one."""
    for name, quick in ((f"{stem}.json", False), (f"{stem}_quick.json", True)):
        if (results / name).is_file():
            return results / name, quick
    return None, False


def _picked_rows(results: Path, stem: str) -> tuple[Path | None, list, bool]:
    """(file, its rows or [], is_quick) of :func:`_pick`."""
    path, quick = _pick(results, stem)
    return path, (_load(path) if path else None) or [], quick


def _rel(path: Path, readme: Path) -> str:
    return Path(os.path.relpath(path, readme.parent)).as_posix()


def quality_section(results: Path, readme: Path) -> str:
    path, rows, quick = _picked_rows(results, "quality")
    s = Q.settings_from_rows(rows) if rows else None
    if not s:
        return "### Quality\n\nNo quality rows yet (`python benchmarks/quality.py`).\n"
    png = path.with_name(path.stem + "_ppl.png")
    text = Q.report_markdown(rows, s, image=_rel(png, readme) if png.is_file() else None, heading="####")
    label = " — quick grid (`--quick`), not the full benchmark" if quick else ""
    return f"### Quality{label}\n\nFrom `{_rel(path, readme)}`.\n\n" + text


def which_method_section(results: Path) -> str:
    """'Which method should I use?': the best row per ratio, the best uniform one, and the speed, read off the
    quality and inference rows."""
    _, rows, _ = _picked_rows(results, "quality")
    s = Q.settings_from_rows(rows) if rows else None
    ppl = [r for r in Q.matching_rows(rows, s)[0] if r["variant"] != "dense"] if s else []
    if not ppl:
        return ""
    label = lambda r: Q.VARIANT_BY_ID[r["variant"]].label  # noqa: E731
    cell = lambda r: f"{label(r)} {r['ppl']:.2f} ({100 * r['decoder_params_removed']:.1f}% removed)"  # noqa: E731
    zs = Q.zeroshot_means(Q.matching_rows(rows, s)[1])
    lines = ["### Which method should I use?\n",
             f"Read off the rows below ({s.model}, WikiText-2 perplexity on {'all' if not s.ppl_windows else s.ppl_windows} "
             "test windows; lower is better):\n"]
    for x in sorted({r["ratio"] for r in ppl}):
        col = sorted((r for r in ppl if r["ratio"] == x), key=lambda r: r["ppl"])
        uniform = [r for r in col if r.get("config", {}).get("structure") == "uniform"]
        best_zs = max(((v, z) for (v, ratio), z in zs.items() if ratio == x and v != "dense"), key=lambda t: t[1][0],
                      default=None)
        text = f"- **{100 * x:.0f} %**: best {cell(col[0])}; next {cell(col[1])}" if len(col) > 1 else \
            f"- **{100 * x:.0f} %**: {cell(col[0])}"
        if uniform and uniform[0] is not col[0]:
            text += f"; best with equal shapes in every layer: {cell(uniform[0])}"
        if best_zs:
            text += (f"; highest mean zero-shot accuracy: {Q.VARIANT_BY_ID[best_zs[0]].label} "
                     f"{100 * best_zs[1][0]:.2f} %")
        lines.append(text + ".")
    ratios = sorted({r["ratio"] for r in ppl})
    leads = [x for x in ratios if min((r for r in ppl if r["ratio"] == x), key=lambda r: r["ppl"])["variant"] == Q.OURS]
    if leads:
        where = ", ".join(f"{100 * x:.0f} %" for x in leads)
        measured = ", ".join(f"{100 * r['ratio']:.0f} %" for r in sorted(ppl, key=lambda r: r["ratio"])
                             if r["variant"] == Q.OURS)
        zs_lead = [x for x in ratios if max(((v, z) for (v, r), z in zs.items() if r == x and v != "dense"),
                                            key=lambda t: t[1][0], default=(None,))[0] == Q.OURS]
        head = ("Start from **RCPU-affine** (`-c configs/rcpu-affine.yaml`): the lowest perplexity at every ratio "
                "measured." if leads == ratios else
                f"**RCPU-affine** (`-c configs/rcpu-affine.yaml`) has the lowest perplexity at {where} only (measured "
                f"at {measured}); at the other ratios take the best row named above.")
        if not zs_lead:
            head += " Where zero-shot accuracy matters more than perplexity, it is not the best row (above)."
        lines.append(f"- {head} Its layers differ in shape: the saved folder loads with `load_pruned` (or `cli.py "
                     "--model.model DIR`), with `from_pretrained(DIR, trust_remote_code=True)` in any Hugging Face "
                     "tool, and in llama.cpp as a `deci` GGUF (see Deploy); for a folder that plain `from_pretrained` "
                     "loads without remote code, take the best equal-shape row. The paper's rotation (`configs/smollm2-rcpu.yaml`) reproduces the paper.")
    lines += inference_summary(results) + heldout_lines(results)
    return "\n".join(lines) + "\n"


def heldout_lines(results: Path) -> list[str]:
    """The variants compared on held-out windows (``heldout.py``), best first per ratio."""
    rows = _load(results / "heldout.json") or []
    if not rows:
        return []
    lines = ["\n#### How RCPU-affine was chosen: held-out perplexity\n",
             f"From `heldout.json`: {rows[0]['heldout_windows']} windows of the calibration split that overlap no "
             "calibration window (never the test split), SmolLM2, 128 × 128 calibration. Only the fields that differ "
             "from `PruningConfig`'s defaults are shown (`method` rcpu, `structure` uniform, `allocation` and `selection` score, "
             "`compensation` the method's own: rotation for rcpu, bias for flap).\n",
             "| ratio | config | decoder-layer params removed | held-out PPL |", "|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (round(r["config"].get("ratio", 0.2), 1), r["heldout_ppl"])):
        shown = {k: v for k, v in r["config"].items() if k not in ("ratio", "head_rounding")}
        text = ", ".join(f"{k}: {v}" for k, v in shown.items()) or "(the paper's RCPU)"
        lines.append(f"| {100 * round(r['config'].get('ratio', 0.2), 1):.0f}% | {text} | "
                     f"{100 * r['decoder_params_removed']:.2f}% | {r['heldout_ppl']:.2f} |")
    return lines


def inference_summary(results: Path) -> list[str]:
    """One line: measured vs ideal speedups of the pruned rows of the largest model measured."""
    path, _ = _pick(results, "inference")
    rows = [r for r in (_load(path) or []) if r.get("kind") == "pruned" and r.get("group_kind") == "main"] if path else []
    if not rows:
        return []
    hidden = max(r["hidden"] for r in rows)
    cells = [f"{_PRUNING.get((r['method'], r['structure']), r['method'])} {100 * r['ratio']:.0f} %: prefill "
             f"{r['prefill_speedup']:.2f}×, decode {r['decode_speedup']:.2f}× (ideal {r['ideal_speedup']:.2f}×)"
             for r in sorted((r for r in rows if r["hidden"] == hidden), key=_inf_sort)]
    return [f"- Speed (*Inference speed* below, {_inf_model(next(r for r in rows if r['hidden'] == hidden))}, CPU): "
            + "; ".join(cells) + "."]


def scaling_section(results: Path, readme: Path) -> str:
    path, rows, quick = _picked_rows(results, "calibration_scaling")
    if not rows:
        return "### Calibration scaling\n\nNo rows yet (`python benchmarks/calibration_scaling.py`).\n"
    label = " — quick (`--quick`)" if quick else ""
    lines = [f"### Calibration scaling: streaming statistics vs storing all activations{label}\n",
             f"From `{_rel(path, readme)}`. RCPU (rot) at 20 %; each implementation in a fresh process; peak = "
             "RSS high-water mark during input capture + pruning minus the RSS before it (both include the "
             "captured layer inputs, *inputs MB*). Ratios are ours / store-all; CPU time is less sensitive "
             "to the other jobs on the shared machine than wall time.\n",
             "| samples | malloc | PPL (windows) | ours s | store-all s | time ratio | CPU-time ratio | ours peak MB | "
             "store-all peak MB | memory ratio | inputs MB | ours peak / ours at 128 | same without inputs | commit |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    at128 = {}  # _group -> our 128-sample row (ratios compare rows of the same allocator setting and kind)
    for r in rows:
        if r["samples"] == 128:
            at128.setdefault(_group(r), r)
    for r in sorted(rows, key=lambda r: (r.get("malloc_mmap_threshold") or 0, _group(r)[1], r["samples"])):
        base = at128.get(_group(r))
        growth, growth_net = (_growth(r, base, False), _growth(r, base, True)) if base else (None, None)
        lines.append(f"| {r['samples']} | {_malloc(r)} | {r['ppl']:.2f} ({r['ppl_windows']}) | {r['ours_seconds']:.0f} | "
                     f"{C.fmt(r.get('storeall_seconds'), '.0f')} | {C.fmt(r.get('time_ratio'), '.2f')} | "
                     f"{C.fmt(r.get('cpu_time_ratio'), '.2f')} | {r['ours_peak_mb']:.0f} | "
                     f"{C.fmt(r.get('storeall_peak_mb'), '.0f')} | {C.fmt(r.get('memory_ratio'), '.2f')} | "
                     f"{_inputs_mb(r):.0f} | {C.fmt(growth, '.2f')} | {C.fmt(growth_net, '.2f')} | "
                     f"{_commit(r)} |")
    lines.append("\n– : not measured (a row run with `--impls ours` has no store-all figures). *malloc*: glibc's "
                 "default dynamic mmap threshold, or `MALLOC_MMAP_THRESHOLD_` fixed with `--malloc-mmap-threshold` "
                 "(freed large blocks go back to the system, so the peak counts less allocator retention). "
                 "*Ours at 128*: the 128-sample row of the same setting and kind (rows run with `--impls ours` "
                 "against each other; see *commit* for the engine version each row measured). "
                 "*Same without inputs*: (ours peak − inputs MB) / the same at 128 samples — the part of our "
                 "peak that is not the captured layer inputs, which every layer-by-layer method holds.")
    return "\n".join(lines + scaling_targets(rows, at128)) + "\n"


def scaling_targets(rows: list[dict], at128: dict) -> list[str]:
    """Issue #6's two acceptance ratios, read off the rows (time: ours / store-all; peak: N vs 128)."""
    out = ["\nAgainst the targets (ours / store-all time ≤ 0.5; our peak at the largest count ≤ 1.2× ours at 128):"]
    timed = [r for r in rows if r.get("time_ratio") is not None and r.get("malloc_mmap_threshold") is None]
    if timed:
        t, n = [r["time_ratio"] for r in timed], [r["samples"] for r in timed]
        out.append(f"- time ratio {min(t):.2f}–{max(t):.2f} over {min(n)}–{max(n)} samples: both implementations run "
                   "each layer twice and do float64 products of about the same cost per token (ours `X Xᵀ`; store-all "
                   "`W X`, `W_K X_K`, `Y Zᵀ`), so streaming saves memory, not arithmetic.")
    for group, base in at128.items():
        top = max((r for r in rows if _group(r) == group), key=lambda r: r["samples"])
        if top["samples"] <= 128:
            continue
        grew, inputs = top["ours_peak_mb"] - base["ours_peak_mb"], _inputs_mb(top) - _inputs_mb(base)
        kind = ", ours only" if group[1] else ""
        out.append(f"- peak at {top['samples']} ({_malloc(top)} malloc{kind}, {_commit(top)}): "
                   f"{_growth(top, base, False):.2f}× ours at 128; "
                   f"of the {grew:.0f} MB it grew, {inputs:.0f} MB are the captured layer inputs (they grow with the "
                   f"samples in every layer-by-layer method); without them {_growth(top, base, True):.2f}×.")
    return out if len(out) > 1 else []


def big_models_section(results: Path, readme: Path) -> str:
    """Out-of-core pruning of random LLaMA-architecture checkpoints and LLaMA-7B layers (``scale.py``)."""
    path, rows, quick = _picked_rows(results, "scale")
    if not rows:
        return "### Big models\n\nNo rows yet (`python benchmarks/scale.py`).\n"
    label = " — quick (`--quick`)" if quick else ""
    store = [r for r in rows if r["mode"] in ("disk", "memory")]
    first = store[0] if store else rows[0]  # the checkpoint rows' calibration (layer7b rows may differ)
    lines = [f"### Big models: pruning from disk, and LLaMA-7B layers on a CPU{label}\n",
             f"From `{_rel(path, readme)}`: random-weight LLaMA-architecture checkpoints (float32, one shard per "
             "layer), RCPU (rot) at 20 %, calibration "
             f"{first['calib_samples']} random windows of {first['calib_seqlen']} tokens, `arithmetic: "
             f"{first['arithmetic']}`, each row a fresh process. *disk*: `prune_checkpoint` (one layer at a time, "
             "disk to disk); *memory*: the whole model loaded and pruned by `prune_model`. Peak = the process's "
             "RSS high-water mark (Python and torch included).\n",
             "| mode | model | params | checkpoint MB | peak RSS MB | peak / checkpoint | s / layer | "
             "max abs logit diff vs in-memory | load (1 min) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(store, key=lambda r: (r["checkpoint_mb"], r["mode"])):
        lines.append(f"| {r['mode']} | h {r['hidden']} × {r['layers']} layers | {r['params'] / 1e9:.2f} B | "
                     f"{r['checkpoint_mb']:.0f} | {r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] / r['checkpoint_mb']:.2f} | "
                     f"{r['seconds_per_layer']:.1f} | {C.fmt(r.get('max_abs_logit_diff_vs_in_memory'), '.1e')} | "
                     f"{r.get('run', {}).get('loadavg_1m', '–')} |")
    lines += big_model_targets(store, [r for r in rows if r["mode"] == "layer7b"],
                               [r for r in rows if r["mode"] == "full7b"])
    return "\n".join(lines + gpu_lines(results) + bf16_lines(results)) + "\n"


def bf16_lines(results: Path) -> list[str]:
    """SmolLM2 pruned in float32 and as a bf16 checkpoint (``bf16.py``): PPL against the float32 prune's."""
    rows = {r["variant"]: r for r in (_load(results / "bf16.json") or [])}
    ref = rows.get("f32")
    if ref is None:
        return []
    what = {"bf16_exec_f32": "the bf16 checkpoint with `execution_dtype: float32`",
            "bf16": "the bf16 checkpoint with its forwards in bf16"}
    parts = [f"{label}: {rows[v]['ppl']:.2f} ({100 * (rows[v]['ppl'] / ref['ppl'] - 1):+.2f} %, "
             f"{rows[v]['prune_seconds']:.0f} s, same kept units as float32 in {rows[v]['same_layers_as_f32']}/"
             f"{len(rows[v]['kept'])} layers)" for v, label in what.items() if v in rows]
    dense = [rows[v] for v in ("dense_f32", "dense_bf16") if v in rows]
    loads = "/".join(f"{r['run'].get('loadavg_1m', '–')}" for r in rows.values())
    line = (f"- bf16 end to end (`bf16.py`, SmolLM2, RCPU rot {ref['config']['ratio'] * 100:.0f} %, "
            f"first {ref['ppl_windows']} test windows, on {_cpu(ref) or '?'}, load {loads}): the float32 prune "
            f"{ref['ppl']:.2f} ({ref['prune_seconds']:.0f} s); " + "; ".join(parts))
    if len(dense) == 2:
        line += f". Dense: float32 {dense[0]['ppl']:.2f}, bf16 {dense[1]['ppl']:.2f}"
    return ["", line + ". Goal: within 1 % of the float32 prune."]


def big_model_targets(store: list[dict], layer7b: list[dict], full7b: list[dict]) -> list[str]:
    out = ["", "Against the targets (peak RSS ≤ 0.25 × checkpoint on a ≥ 4 GiB checkpoint; streamed = in-memory "
               "within 1e-3; at LLaMA-7B layer dimensions ours ≤ 1.3 × the layer's two-forward limit and reference / ours "
               "≥ 1.3, float32, the two measured in one run):"]
    disk = sorted((r for r in store if r["mode"] == "disk"), key=lambda r: r["layers"])
    big = [r for r in disk if r["checkpoint_mb"] >= 4096]
    if disk:
        peaks = ", ".join(f"{r['peak_rss_mb']:.0f} MB at {r['layers']} layers" for r in disk)
        ratios = [f"{r['peak_rss_mb'] / r['checkpoint_mb']:.2f} × the {r['checkpoint_mb'] / 1024:.1f} GiB checkpoint "
                  f"({'met' if r['peak_rss_mb'] <= 0.25 * r['checkpoint_mb'] else 'not met'})" for r in big]
        out.append(f"- peak RSS from disk: {peaks}" + "".join(f"; {x}" for x in ratios) + ".")
    diffs = [r for r in disk if r.get("max_abs_logit_diff_vs_in_memory") is not None]
    for r in diffs:
        d = r["max_abs_logit_diff_vs_in_memory"]
        out.append(f"- disk vs memory at {r['layers']} layers: max abs logit difference {d:.1e} "
                   f"({'met' if d <= 1e-3 else 'not met'}).")
    for samples, dtype in sorted({(r["calib_samples"], _dtype(r)) for r in layer7b}, key=lambda k: (k[0], k[1] != "float32")):
        by_impl = {r["impl"]: r for r in layer7b if (r["calib_samples"], _dtype(r)) == (samples, dtype)}
        ours, ref = by_impl.get("ours"), by_impl.get("reference")
        if ours is None:
            continue
        line = (f"- one layer at LLaMA-7B dimensions (h {ours['hidden']}, MLP {ours['intermediate']}, {ours['heads']} "
                f"heads; {samples} × {ours['calib_seqlen']} calibration; the model in memory): ours "
                f"{ours['seconds_per_layer']:.1f} s, peak {ours['peak_rss_mb'] / 1024:.2f} GiB")
        cpu = _cpu(ours)
        line += f" (on {cpu}, {dtype})" if cpu else ""
        if ref is not None:
            speed = ref["seconds_per_layer"] / ours["seconds_per_layer"]
            line += (f"; the reference's stored-activation method {ref['seconds_per_layer']:.1f} s, peak "
                     f"{ref['peak_rss_mb'] / 1024:.2f} GiB: reference / ours = {speed:.2f} "
                     f"({'met' if speed >= 1.3 else 'not met'}; load {ours.get('run', {}).get('loadavg_1m', '–')} / "
                     f"{ref.get('run', {}).get('loadavg_1m', '–')})")
        if ours.get("limit_s"):
            line += _over_limit(ours, f"{ours['limit_s']:.1f} s: one dense + one pruned forward of layer 0, same process")
            if ref is not None:
                line += f" and the reference {ref['seconds_per_layer'] / ours['limit_s']:.2f}×"
        out.append(line + ".")
        affine = by_impl.get("affine")
        if affine is not None:
            out.append(f"  RCPU-affine (`configs/rcpu-affine.yaml`, its allocation pass included) on the same layers: "
                       f"{affine['seconds_per_layer']:.1f} s per layer, peak {affine['peak_rss_mb'] / 1024:.2f} GiB "
                       f"(its own run; load {affine.get('run', {}).get('loadavg_1m', '–')}).")
    out += full7b_lines(full7b)
    timed = [r for r in layer7b + full7b if r.get("impl", "ours") == "ours" and r.get("phases") and r.get("limit_s")]
    out += phase_table(sorted(timed, key=lambda r: (r["mode"] == "full7b", _dtype(r) != "float32", r["calib_samples"])))
    return out if len(out) > 1 else []


def _over_limit(row: dict, how: str) -> str:
    """The sentence on a row's seconds per layer against its two-forward limit (``how`` it was measured)."""
    return (f". Ours is {row['ours_over_limit']:.2f}× the layer's two-forward limit ({how}; target ≤ 1.3×: "
            f"{'met' if row['ours_over_limit'] <= 1.3 else 'not met'})")


def _dtype(row: dict) -> str:
    return row.get("dtype", "float32")


def _cpu(row: dict) -> str | None:
    """The CPU a row ran on, with whether it multiplies bf16 natively (same model names differ in that)."""
    run = row.get("run", {})
    if not run.get("cpu"):
        return None
    flag = run.get("bf16_matmul")
    return run["cpu"] + ("" if flag is None else ", bf16 matmul" if flag else ", no bf16 matmul")


def full7b_lines(rows: list[dict]) -> list[str]:
    """Whole LLaMA-7B-shaped checkpoints pruned out of core through the CLI (``full7b.py``)."""
    out = []
    for r in rows:
        line = (f"- a whole {r['model']} checkpoint (`full7b.py`: random weights, {r['layers']} layers, h {r['hidden']}, "
                f"{r['heads']} heads, MLP {r['intermediate']}, vocab {r['vocab']}; {r['dtype']} safetensors, "
                f"{r['checkpoint_gb']:.1f} GB) pruned by `cli.py prune -c configs/llama-out-of-core.yaml` "
                f"(RCPU rot 20 %, {r['calib_samples']} × {r['calib_seqlen']} calibration"
                + (f", `{' '.join(r['extra_prune_args'])}`" if r.get("extra_prune_args") else "")
                + f"; on {_cpu(r) or '?'}, {r.get('omp_num_threads') or '?'} threads, load "
                f"{r.get('run', {}).get('loadavg_1m', '–')}): {r['total_minutes']:.1f} min, "
                f"{r['seconds_per_layer']:.1f} s per layer, peak RSS {r['peak_rss_mb'] / 1024:.2f} GiB "
                f"({'met' if r['peak_rss_mb'] <= 4096 else 'not met'}: goal ≤ 4 GiB), layer reads "
                f"{r['read_seconds']:.0f} s and shard writes {r['write_seconds']:.0f} s in all; pruned folder "
                f"{r['pruned_gb']:.1f} GB ({100 * r['decoder_params_removed']:.1f} % of the decoder removed)")
        if r.get("limit_s"):
            line += _over_limit(r, f"{r['dense_forward_s']:.1f} + {r['pruned_forward_s']:.1f} = {r['limit_s']:.1f} s, "
                                   f"layer 0 in {r['limit_dtype']}, measured after the prune")
        reload = "finite logits" if r.get("reload_ok") else "FAILED"
        line += (f". `cli.py test` of the folder: PPL {r['ppl']:.0f} on {r['ppl_windows']} windows (random weights: "
                 f"finite is what counts), {r['test_wall_seconds'] / 60:.1f} min, peak {r['test_peak_rss_mb'] / 1024:.1f} GiB; "
                 f"reload by `{r.get('reload_how', 'from_pretrained')}` + one forward: {reload}.")
        out.append(line)
    return out


def _origin(row: dict) -> str:
    """`` (CPU; engine commit)`` of a row, as far as it recorded them: the phase table's columns may come from
    different machines and engine versions."""
    commit = row.get("run", {}).get("commit")
    parts = [p for p in (_cpu(row), commit and f"engine {commit}") if p]
    return f" ({'; '.join(parts)})" if parts else ""


def phase_table(rows: list[dict]) -> list[str]:
    """Where one LLaMA-7B-dimension layer's seconds go (``PruningReport.layers[i]["seconds"]``), per row."""
    if not rows:
        return []
    from rcpu_lightning.pruning.progress import PHASES

    head = " | ".join(f"{'whole model out of core' if r['mode'] == 'full7b' else 'one layer in memory'}, {_dtype(r)}, "
                      f"{r['calib_samples']} × {r['calib_seqlen']}{_origin(r)}" for r in rows)
    lines = ["", "Where a LLaMA-7B-dimension layer's seconds go (mean over the layers of each run; × = share of the "
                 "two-forward limit):", "", f"| phase | {head} |", "|---|" + "---|" * len(rows)]
    for phase in PHASES:
        cells = [f"{r['phases'].get(phase, 0.0):.1f} s ({r['phases'].get(phase, 0.0) / r['limit_s']:.2f}×)"
                 for r in rows]
        lines.append(f"| {phase} | {' | '.join(cells)} |")
    lines.append("| **layer total** | " + " | ".join(
        f"**{r['seconds_per_layer']:.1f} s ({r['ours_over_limit']:.2f}×)**" for r in rows) + " |")
    lines.append("| limit: dense forward + pruned forward | " + " | ".join(
        f"{r['dense_forward_s']:.1f} + {r['pruned_forward_s']:.1f} = {r['limit_s']:.1f} s" for r in rows) + " |")
    return lines


def gpu_lines(results: Path) -> list[str]:
    r = _load(results / "gpu_llama7b.json")
    if not r:
        return ["", "- GPU (`benchmarks/gpu_llama7b.py`): not run yet — no GPU machine was available; the script is "
                    "tested on a CPU at a tiny size."]
    line = (f"- GPU ({r['device']}, `gpu_llama7b.py`): random LLaMA-7B, {r['layers']} layers: "
            f"{r['seconds_per_layer']:.2f} s per layer, peak GPU memory {r['peak_gpu_mb']:.0f} MB")
    if r.get("limit_s"):
        line += f", {r['ours_over_limit']:.2f}× its two-forward limit ({r['limit_s']:.2f} s)"
    big = r.get("llama70b_onload")
    if big:
        line += (f"; Llama-70B layers with sequential onloading: {big['seconds_per_layer']:.2f} s per layer, "
                 f"peak {big['peak_gpu_mb']:.0f} MB")
    return ["", line + "."]


def _group(row: dict) -> tuple:
    """Rows whose peaks are compared: same allocator setting, and ours-only rows among themselves."""
    return row.get("malloc_mmap_threshold"), row.get("storeall_seconds") is None


def _commit(row: dict) -> str:
    return row.get("run", {}).get("commit") or "–"


def _inputs_mb(row: dict) -> float:
    return row.get("captured_inputs_mb") or 0.0


def _growth(row: dict, at128: dict, without_inputs: bool) -> float:
    """Our peak relative to our peak at 128 samples (optionally both less the captured inputs)."""
    def net(r: dict) -> float:
        return r["ours_peak_mb"] - (_inputs_mb(r) if without_inputs else 0.0)

    return net(row) / net(at128)


def _malloc(row: dict) -> str:
    t = row.get("malloc_mmap_threshold")
    return "default" if t is None else f"mmap ≥ {t / 1024:g} KiB"


def overhead_section(results: Path, readme: Path) -> str:
    path = results / "overhead.json"
    r = _load(path)
    if not r:
        return "### Lightning overhead\n\nNo result yet (`python benchmarks/overhead.py`).\n"
    return (f"### Lightning overhead (perplexity evaluation)\n\nFrom `{_rel(path, readme)}`: {r['windows']} windows of "
            f"{r['seqlen']} tokens, median of {r['repeats']} alternating repeats.\n\n"
            "| loop | tokens/s |\n|---|---|\n"
            f"| `Trainer.test` ({r.get('lightning_impl', 'Lightning')}) | {r['lightning_tokens_per_s']:.1f} |\n"
            f"| bare `for batch: model(batch)` | {r['bare_tokens_per_s']:.1f} |\n"
            f"| ratio Lightning / bare | {r['ratio']:.2f} |\n"
            + (f"\nMedian of the per-repeat ratios: {r['ratio_median_per_repeat']:.2f}; same perplexity from both "
               f"loops: {r['ppl_lightning']:.4f} / {r['ppl_bare']:.4f}.\n" if "ratio_median_per_repeat" in r else ""))


_MODEL_ORDER = {"smollm2": 0, "stack": 1, "tiny": 2}
_PRUNING = {("rcpu", "uniform"): "RCPU, uniform", ("flap", "al_am"): "FLAP, AL-AM"}


def _inf_model(r: dict) -> str:
    if r.get("model_id") == "smollm2":
        return "SmolLM2-135M"
    return f"random Llama, h {r['hidden']} × {r['layers']} layers"


def _inf_sort(r: dict) -> tuple:
    return (_MODEL_ORDER.get(r.get("model_id"), 9), r["hidden"], r["ratio"], r.get("method") != "rcpu",
            -(r.get("round_to") or 0) if r.get("round_to") else 1)


def inference_section(results: Path, readme: Path) -> str:
    """Dense vs pruned throughput (``inference.py``), the ideal FLOP ratio and the investigation rows."""
    path, rows, quick = _picked_rows(results, "inference")
    main = sorted((r for r in rows if r.get("kind") == "pruned" and r.get("group_kind") == "main"), key=_inf_sort)
    if not main:
        return "### Inference speed\n\nNo rows yet (`python benchmarks/inference.py`).\n"
    label = " — quick (`--quick`), not the full benchmark" if quick else ""
    st = main[0]["settings"]
    timed = [r for r in rows if r.get("kind") in ("pruned", "rounded")]
    loads = [x for r in timed for x in r.get("loadavg_rounds", [])]
    shares = [x[k] for r in timed for x in r.get("cpu_share_rounds", []) for k in ("prefill", "decode") if x.get(k)]
    steal, others = [x["steal_cores"] for x in shares], [x["others_cores"] for x in shares]
    lines = [f"### Inference speed: dense vs pruned{label}\n",
             f"From `{_rel(path, readme)}`. Prefill: one forward of {st['prefill_batch']} × {st['prefill_seqlen']} "
             f"tokens (logits at every position); decode: greedy `generate` of exactly {st['new_tokens']} tokens "
             f"after a {st['prompt_len']}-token prompt, batch 1, KV cache, the models of a group taking their k-th "
             f"forward in turn. float32 on {_threads_text(timed)}; medians of {st.get('prefill_repeats', st['repeats'])} "
             f"prefill and {st['repeats']} decode rounds in which dense and pruned models alternate, after an untimed "
             "warm-up; the dense figures come from the same rounds as the pruned ones. "
             "*Speedup* = pruned / dense throughput; "
             "*ideal* = dense / pruned matmul FLOPs per token (projections, LM head, attention products at the "
             "measured length; formula in `benchmarks/inference.py`). "
             f"1-minute load average during the rounds: {min(loads):.1f}–{max(loads):.1f} on 2 cores"
             + (f"; while timing, the hypervisor took {min(steal):.1f}–{max(steal):.1f} of the 2 cores (steal, median "
                f"{C.median(steal):.1f}) and other processes {min(others):.1f}–{max(others):.1f} (median "
                f"{C.median(others):.1f})" if shares else "") + ".\n",
             "| model | pruning | ratio | kept per layer (heads, kv heads, MLP channels) | params M | weights MB | "
             "prefill tok/s dense → pruned | prefill speedup | decode tok/s dense → pruned | decode speedup | "
             "ideal | prefill / ideal | decode / ideal |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in main:
        pre, dec = r["prefill_tokens_per_s"], r["decode_tokens_per_s"]
        lines.append(f"| {_inf_model(r)} | {_PRUNING.get((r['method'], r['structure']), r['method'])} | "
                     f"{r['ratio']:.0%} | {r['kept']} | {r['params']['dense'] / 1e6:.1f} → {r['params']['pruned'] / 1e6:.1f} | "
                     f"{r['weights_mb']['dense']:.0f} → {r['weights_mb']['pruned']:.0f} | "
                     f"{pre['dense']:.0f} → {pre['pruned']:.0f} | {r['prefill_speedup']:.2f}× | "
                     f"{dec['dense']:.1f} → {dec['pruned']:.1f} | {r['decode_speedup']:.2f}× | "
                     f"{r['ideal_speedup']:.2f}× | {r['prefill_efficiency']:.2f} | {r['decode_efficiency']:.2f} |")
    lines += inference_target(main)
    lines += ["\n#### The same comparison by other estimators\n",
              "Medians of the wall times (as above), the median of the per-round ratios, the fastest run of each "
              "model, process CPU seconds (all threads), and for decode the median over the cached steps of the "
              "dense / pruned seconds of the same step (taken a fraction of a second apart). *Cores stolen*: CPU "
              "time the hypervisor gave to other virtual machines while the round ran (`steal` in `/proc/stat`), "
              "in cores of 2.\n",
              "| model | pruning | ratio | prefill: median / per round / fastest / CPU | "
              "decode: median / per round / fastest / CPU / per step | ideal (decode) | decode ms per step dense → pruned | "
              "cores stolen, prefill / decode (median) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in main:
        est = lambda k, extra=(): " / ".join(f"{r[f'{k}_speedup{s}']:.2f}"  # noqa: E731
                                             for s in ("", "_per_round", "_best", "_cpu") + extra)
        stolen = [C.fmt(C.median(v) if v else None, ".2f") for v in (
            [x[k]["steal_cores"] for x in r.get("cpu_share_rounds", []) if x.get(k)] for k in ("prefill", "decode"))]
        lines.append(f"| {_inf_model(r)} | {_PRUNING.get((r['method'], r['structure']), r['method'])} | "
                     f"{r['ratio']:.0%} | {est('prefill')} | {est('decode', ('_per_step',))} | "
                     f"{r['ideal_speedup_decode']:.2f}× | {r['decode_step_ms']['dense']:.1f} → {r['decode_step_ms']['pruned']:.1f} | "
                     f"{stolen[0]} / {stolen[1]} |")
    lines += ["\n#### Where the prefill time goes\n",
              "Wall time inside the layers' `self_attn` (SDPA included) and `mlp` modules during the timed prefills "
              "(forward hooks), medians; *rest* = embeddings, norms, LM head. Each part's speedup next to its FLOP "
              "ratio.\n",
              "| model | pruning | ratio | dense: attention / MLP / rest s | attention speedup (ideal) | "
              "MLP speedup (ideal) |", "|---|---|---|---|---|---|"]
    for r in main:
        p = r["parts"]
        rest = p["dense_total_s"] - p["dense_attn_s"] - p["dense_mlp_s"]
        lines.append(f"| {_inf_model(r)} | {_PRUNING.get((r['method'], r['structure']), r['method'])} | "
                     f"{r['ratio']:.0%} | {p['dense_attn_s']:.2f} / {p['dense_mlp_s']:.2f} / {rest:.2f} | "
                     f"{p['attn_speedup']:.2f}× ({p['attn_ideal']:.2f}×) | {p['mlp_speedup']:.2f}× ({p['mlp_ideal']:.2f}×) |")
    lines += inference_rounding(rows) + inference_gemm(rows) + inference_other_threads(results, readme)
    return "\n".join(lines) + "\n"


def _threads_text(timed: list[dict]) -> str:
    """``2 threads``, or per model when the rows were measured at different thread counts."""
    by_model = {_inf_model(r): r["settings"]["threads"] for r in timed}
    counts = sorted(set(by_model.values()))
    plural = lambda n: f"{n} thread{'s' if n != 1 else ''}"  # noqa: E731
    if len(counts) == 1:
        return plural(counts[0])
    return ", ".join(f"{plural(n)} ({m})" for m, n in sorted(by_model.items()))


def inference_other_threads(results: Path, readme: Path) -> list[str]:
    """Rows of ``inference_threads<N>.json`` files: the same comparison at another thread count."""
    lines = []
    for path in sorted(results.glob("inference_threads*.json")):
        rows = sorted((r for r in _load(path) or [] if r.get("kind") in ("pruned", "rounded")), key=_inf_sort)
        if not rows:
            continue
        if not lines:
            lines = ["\n#### The same comparison at another thread count\n",
                     "| file | threads | model | pruning | ratio | kept channels | prefill speedup | decode speedup | "
                     "decode per step | ideal | prefill / ideal | decode / ideal | decode ms per step dense → pruned | "
                     "cores stolen, decode (median) |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            ch = sorted({lp["channels"] for lp in r["kept_per_layer"]})
            stolen = [x["decode"]["steal_cores"] for x in r.get("cpu_share_rounds", []) if x.get("decode")]
            lines.append(f"| `{_rel(path, readme)}` | {r['settings']['threads']} | {_inf_model(r)} | "
                         f"{_PRUNING.get((r['method'], r['structure']), r['method'])} | {r['ratio']:.0%} | "
                         f"{'/'.join(map(str, ch))} | {r['prefill_speedup']:.2f}× | {r['decode_speedup']:.2f}× | "
                         f"{r['decode_speedup_per_step']:.2f}× | {r['ideal_speedup']:.2f}× | {r['prefill_efficiency']:.2f} | "
                         f"{r['decode_efficiency']:.2f} | {r['decode_step_ms']['dense']:.0f} → {r['decode_step_ms']['pruned']:.0f} | "
                         f"{C.fmt(C.median(stolen) if stolen else None, '.2f')} |")
    return lines


def inference_target(main: list[dict]) -> list[str]:
    """The issue's target (measured >= 0.85 x ideal on the hidden-4096 stack at 30 %), read off the rows."""
    out = []
    for r in main:
        if r["hidden"] != 4096 or abs(r["ratio"] - 0.3) > 1e-9:
            continue
        ok = r["prefill_efficiency"] >= 0.85 and r["decode_efficiency"] >= 0.85
        out.append(f"- {_PRUNING.get((r['method'], r['structure']), r['method'])} at 30 % on the hidden-4096 stack: "
                   f"prefill {r['prefill_speedup']:.2f}× and decode {r['decode_speedup']:.2f}× against an ideal "
                   f"{r['ideal_speedup']:.2f}× ({r['prefill_efficiency']:.2f} and {r['decode_efficiency']:.2f} of it): "
                   f"target (≥ 0.85 × ideal) {'met' if ok else 'not met'}.")
    return (["\nAgainst the target:"] + out) if out else []


def inference_rounding(rows: list[dict]) -> list[str]:
    group = sorted((r for r in rows if r.get("group_kind") == "rounding"), key=_inf_sort)
    if not group:
        return []
    lines = ["\n#### Kept MLP channels rounded down to a multiple of 8 / 64\n",
             "The uniform RCPU model with the last kept channels of each layer dropped so that their count is a "
             "multiple of 8 or 64 (heads already give multiples of the head dim), measured in a group of its own "
             "with the dense model and the unrounded model. Compare the fractions of the ideal.\n",
             "| model | ratio | channels kept | ideal | prefill speedup | prefill / ideal | decode speedup | decode / ideal |",
             "|---|---|---|---|---|---|---|---|"]
    for r in group:
        ch = sorted({lp["channels"] for lp in r["kept_per_layer"]})
        lines.append(f"| {_inf_model(r)} | {r['ratio']:.0%} | {'/'.join(map(str, ch))}"
                     f"{' (×' + str(r['round_to']) + ')' if r.get('round_to') else ' (as pruned)'} | "
                     f"{r['ideal_speedup']:.3f}× | {r['prefill_speedup']:.2f}× | {r['prefill_efficiency']:.2f} | "
                     f"{r['decode_speedup']:.2f}× | {r['decode_efficiency']:.2f} |")
    return lines


def inference_gemm(rows: list[dict]) -> list[str]:
    gemm = sorted((r for r in rows if r.get("kind") == "gemm"), key=lambda r: (-r["m"], -r["channels"]))
    if not gemm:
        return []
    lines = ["\n#### The MLP projections alone\n",
             f"`F.linear` with the stack's MLP shapes (hidden {gemm[0]['hidden']}): up/gate `[M, h] × [h, I]`, down "
             "`[M, I] × [I, h]`, every channel count in turn, median of the repeats; M = prefill tokens and M = 1 "
             "(a decode step).\n",
             "| M | channels I | up/gate ms | up/gate GFLOP/s | down ms | down GFLOP/s | MLP ms (2 up + down) | "
             "MLP GFLOP/s |", "|---|---|---|---|---|---|---|---|"]
    for r in gemm:
        lines.append(f"| {r['m']} | {r['channels']} | {r['up_ms']:.2f} | {r['up_gflops']:.1f} | {r['down_ms']:.2f} | "
                     f"{r['down_gflops']:.1f} | {r['mlp_ms']:.2f} | {r['mlp_gflops']:.1f} |")
    return lines


def gradual_section(results: Path, readme: Path) -> str:
    """One-shot vs gradual pruning with the same fine-tuning budget (``gradual.py``)."""
    path = results / "gradual.json"
    r = _load(path)
    if not r:
        return "### Gradual pruning\n\nNo result yet (`python benchmarks/gradual.py`).\n"
    st, run = r["settings"], r.get("run", {})
    lines = ["### Gradual vs one-shot pruning (fine-tuning in between)\n",
             f"From `{_rel(path, readme)}`: {st['model']}, RCPU ({st['compensation']}, `head_rounding: "
             f"{st['head_rounding']}`) inside `Trainer.fit` with one `RCPUPruningCallback` and a `schedule`; "
             f"every run fine-tunes with {st['optimizer']} at a constant lr of {st['lr']:g}, batches of "
             f"{st['batch_size']} windows of {st['seqlen']} tokens, {st['steps_per_epoch']} steps per epoch for 3 "
             "epochs. Perplexity on the "
             f"first {st['ppl_windows']} WikiText-2 test windows of {st['eval_seqlen']} tokens only (not the full "
             "split: not comparable with the quality table).\n",
             f"| run | schedule (epoch: ratio) | fine-tuning steps | kept per layer (heads/kv/MLP) | "
             f"decoder params removed | PPL (first {st['ppl_windows']} test windows) |",
             "|---|---|---|---|---|---|"]
    for row in r["rows"]:
        sched = ", ".join(f"{e}: {v:g}" for e, v in (row.get("schedule") or {}).items()) or "–"
        lines.append(f"| {row['label']} | {sched} | {row['finetune_steps']} | {row['kept']} | "
                     f"{100 * row['decoder_params_removed']:.1f}% | {row['ppl']:.2f} |")
    lines += ["",
              f"- Calibration: {st['calib_samples']} windows of {st['seqlen']} tokens, seed 0, from "
              f"{st.get('calibration_source') or 'the calibration split'}; every gradual step re-calibrates on the "
              "current (pruned, fine-tuned) model, and the optimizer's state of the kept weights carries over.",
              f"- Training: the same {st['train_windows']} windows of the calibration split in the same order for "
              "both runs, overlapping no calibration window; no validation loop; the test split is used for "
              "nothing but the table.",
              "- *no fine-tuning*: the one-shot run's `save_dir` (the model right after pruning).",
              f"- Whole run {r['seconds'] / 60:.0f} min on {run.get('cpus')} cores (load average "
              f"{run.get('loadavg_1m')} at the end; commit {run.get('commit')})."]
    return "\n".join(lines) + "\n"


def deploy_section(results: Path, readme: Path) -> str:
    """llama.cpp running the exported GGUF files (benchmarks/deploy_llamacpp.py): agreement with PyTorch, speed."""
    path, _ = _pick(results, "deploy")
    data = _load(path) if path else None
    if not data:
        return "### Deploy: llama.cpp runs the pruned models\n\nNo rows yet (`python benchmarks/deploy_llamacpp.py`).\n"
    s, run = data["settings"], data["run"]
    label = " — quick run (`--quick`)" if s.get("quick") else ""
    lines = [f"### Deploy: llama.cpp runs the pruned models{label}\n",
             f"From `{_rel(path, readme)}` (`{data['command']}`, llama-cpp-python {s['llama_cpp_python']}). "
             f"Agreement: the first {s['windows']} WikiText-2 test windows of {s['seqlen']} tokens, llama.cpp on the "
             "f32 GGUF vs the PyTorch model; greedy: "
             f"{s['new_tokens']} tokens after a {s['prompt_tokens']}-token prompt. Speed: llama.cpp, {s['threads']} "
             f"threads, prefill of {s['prefill']} tokens, decode of {s['decode']}, median of {s['repeats']}; "
             "speedup over dense in brackets; ideal = dense / pruned parameters multiplied per token "
             "(decoder layers + LM head).\n",
             "| Model | GGUF arch | max abs Δlogit (f32) | PPL PyTorch | PPL llama.cpp f32 | PPL llama.cpp f16 "
             "| greedy f32 identical | f16 prefill tok/s | f16 decode tok/s | q8_0 prefill tok/s | q8_0 decode tok/s "
             "| ideal |",
             "|---|---|---:|---:|---:|---:|:-:|---:|---:|---:|---:|---:|"]
    for r in data["rows"]:
        def tps(dtype: str, phase: str) -> str:
            m = r[f"speed_{dtype}"]
            return f"{m[phase + '_tok_s']:.3g} (×{m[phase + '_speedup']:.2f})"

        gen = r["generation"]
        lines.append(f"| {r['model']} | `{r['arch']}` | {r['max_abs_logit_diff_f32']:.1e} | {r['ppl_torch']:.3f} "
                     f"| {r['ppl_llamacpp_f32']:.3f} | {r['ppl_llamacpp_f16']:.3f} "
                     f"| {'yes' if gen['identical_f32'] else 'no'} ({gen['same_tokens_f32']}/{s['new_tokens']}) "
                     f"| {tps('f16', 'prefill')} | {tps('f16', 'decode')} | {tps('q8_0', 'prefill')} "
                     f"| {tps('q8_0', 'decode')} | ×{r['ideal_speedup']:.2f} |")
    busy = (run.get("loadavg_1m") or 0) > (run.get("torch_threads") or run.get("cpus") or 0) + 0.5
    lines += ["", f"- Measured on {run.get('cpus')} cores (1-minute load {run.get('loadavg_1m')} at the end, "
              f"commit {run.get('commit')}): "
              + ("other jobs ran at the same time, so the speedups are rough. llama.cpp's threads spin-wait at "
                 "every barrier, so with more runnable jobs than cores its throughput collapses and the speedups "
                 "say little about a quiet machine." if busy else
                 "nothing else ran (the load is the benchmark's own threads).")
              + " Every round runs all four models in turn, so that load from elsewhere hits them alike."
              + _prefill_note(data["rows"]),
              "- The RCPU-affine rows were pruned with 32 calibration windows (not 128): the table is about "
              "deployment (agreement, speed), not quality. Pruning commands: `prune_command` in the JSON."]
    return "\n".join(lines + harness_lines(results, readme)) + "\n"


def _prefill_note(rows: list[dict]) -> str:
    """A sentence when llama.cpp's f16 prefill of a pruned model falls short of its ideal by more than a tenth."""
    short = [(r["model"], r["speed_f16"]["prefill_speedup"], r["ideal_speedup"]) for r in rows
             if r["ideal_speedup"] > 1 and r["speed_f16"]["prefill_speedup"] < 0.9 * r["ideal_speedup"]]
    if not short:
        return ""
    listed = ", ".join(f"{m} ×{got:.2f} of ×{ideal:.2f}" for m, got, ideal in short)
    return (f" f16 prefill falls short of the ideal ({listed}) while decode does not: llama.cpp's batched f16 "
            "matrix products are less efficient on the pruned widths (e.g. MLP widths that are not multiples of "
            "64), a likely cause that this benchmark does not break down.")


def harness_lines(results: Path, readme: Path) -> list[str]:
    """lm-evaluation-harness loading a per-layer folder through trust_remote_code vs the project's scorer."""
    path = results / "harness_trust_remote_code.json"
    data = _load(path)
    if not data:
        return []
    out = []
    for task, t in data["tasks"].items():
        out.append(f"- Any Hugging Face tool: lm-evaluation-harness {data.get('lm_eval_version', '')} loaded "
                   f"`{data['model']}` (per-layer shapes) with `trust_remote_code=True` and scored {t['n']} {task} "
                   f"documents: acc {t['harness']['acc']:.4f} / acc_norm {t['harness']['acc_norm']:.4f}, the "
                   f"project's evaluator on the same documents {t['ours']['acc']:.4f} / {t['ours']['acc_norm']:.4f} "
                   f"(max |Δ log-likelihood| {t['max_abs_ll_diff']:.1e} over {t['requests']} requests; "
                   f"`{_rel(path, readme)}`, with the commands).")
    return out


TIMINGS_START, TIMINGS_END = "<!-- timings:start -->", "<!-- timings:end -->"


def timings_paragraph(results: Path, readme: Path) -> str:
    """README "How long it takes": the README tour's timings (``readme_tour.json``, from the tour's log)."""
    path = results / "readme_tour.json"
    runs = {r["label"]: r for r in (_load(path) or {}).get("runs", [])}
    if "quiet" not in runs:
        return ""
    q = runs["quiet"]
    text = (f"How long it takes on {q['cores']} CPU cores, from the tour above run by `tools/run_readme_tour.sh` "
            f"(`{_rel(path, readme)}`, commit {q['commit']}). Quiet (1-minute load {q['load_1min']['min']:.1f}"
            f"–{q['load_1min']['max']:.1f}): pruning SmolLM2 with 128 calibration windows {q['prune_seconds']:.0f} s, "
            f"the second line (the work of `make demo`: prune, dense and pruned perplexity on 100 windows) "
            f"{q['prune_line_seconds'] / 60:.1f} min, perplexity on 300 test windows {q['test_seconds']:.0f} s "
            f"(all 2,382: about {q['test_seconds'] * 2382 / 300 / 60:.0f} min), 20 fine-tuning steps of 4 × 128 "
            f"tokens {q['fit_training_seconds']:.0f} s, the whole tour {q['tour_seconds'] / 60:.1f} min.")
    s = runs.get("shared")
    if s:
        factor = s["tour_seconds"] / q["tour_seconds"]
        text += (f" Shared with other jobs (load {s['load_1min']['min']:.0f}–{s['load_1min']['max']:.0f}, "
                 f"commit {s['commit']}): pruning {s['prune_seconds']:.0f} s, the second line "
                 f"{s['prune_line_seconds'] / 60:.1f} min, 300 windows {s['test_seconds']:.0f} s, the tour "
                 f"{s['tour_seconds'] / 60:.0f} min — {factor:.0f} times the quiet tour: expect several times the "
                 "quiet figures when other jobs share the cores.")
    return text + (" Quick runs: fewer calibration windows (`--data.calibration.nsamples`) and fewer perplexity "
                   "windows (`--data.ppl_max_windows`); both are recorded in the results.\n")


def render(results: Path, readme: Path) -> str:
    body = [f"Generated by `python benchmarks/render_readme.py` from `{_rel(results, readme)}/*.json`; "
            "measured on a shared 2-core CPU machine (timings are noisy; see `benchmarks/README.md`).\n",
            which_method_section(results), quality_section(results, readme), scaling_section(results, readme),
            big_models_section(results, readme), overhead_section(results, readme),
            inference_section(results, readme), deploy_section(results, readme), gradual_section(results, readme)]
    return "\n".join(body)


def replace_between(text: str, section: str, start: str = START, end: str = END) -> str | None:
    """``text`` with the part between the markers replaced by ``section``; None when markers are missing."""
    i, j = text.find(start), text.find(end)
    if i < 0 or j < 0 or j < i:
        return None
    return text[: i + len(start)] + "\n" + section.rstrip("\n") + "\n" + text[j:]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--readme", default=str(C.REPO_ROOT / "README.md"))
    p.add_argument("--results", default=str(C.RESULTS_DIR))
    args = p.parse_args(argv)
    readme, results = Path(args.readme).resolve(), Path(args.results).resolve()
    section = render(results, readme)
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    new = replace_between(text, section)
    if new is None:
        print(f"{readme}: markers {START} / {END} not found; the section is:\n")
        print(section)
        return 0
    new = replace_between(new, timings_paragraph(results, readme), TIMINGS_START, TIMINGS_END) or new
    if new != text:
        C.write_text_atomic(readme, new)
        print(f"updated {readme}")
    else:
        print(f"{readme} already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
