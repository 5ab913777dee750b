"""Fast tests of the benchmark scripts' logic (tiny random models; no SmolLM2, no data)."""

from __future__ import annotations

import copy
import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import _common as C  # noqa: E402
from benchmarks import calibration_scaling as cs  # noqa: E402
from benchmarks import quality as q  # noqa: E402
from benchmarks import render_readme as rr  # noqa: E402
from rcpu_lightning.models.adapter import decoder_layers, layer_parts  # noqa: E402
from rcpu_lightning.pruning import PruningConfig, capture_layer_inputs, prune_model  # noqa: E402

from conftest import make_tiny_llama, rounding_bound  # noqa: E402


# -- row store and keys ---------------------------------------------------------------------------
def test_rowstore_appends_and_reloads(tmp_path):
    path = tmp_path / "rows.json"
    store = C.RowStore(path)
    store.add({"key": "a", "v": 1})
    store.add({"key": "b", "v": 2})
    store.add({"key": "a", "v": 3})  # same key replaces
    again = C.RowStore(path)
    assert again.keys() == {"a", "b"}
    assert again.get("a")["v"] == 3
    with pytest.raises(ValueError):
        store.add({"v": 4})


def test_keys_distinguish_settings():
    s = q.Settings()
    rot, dense, ls = (q.VARIANT_BY_ID[i] for i in ("rcpu_rot", "dense", "ls_best"))
    k = q.ppl_key(s, rot, 0.2)
    assert k != q.ppl_key(s, rot, 0.3)
    assert k != q.ppl_key(q.Settings(nsamples=32), rot, 0.2)
    assert k != q.ppl_key(q.Settings(ppl_windows=16), rot, 0.2)
    assert k != q.ppl_key(s, q.VARIANT_BY_ID["rcpu_rot_scale"], 0.2)
    assert "first16" in q.ppl_key(q.Settings(ppl_windows=16), rot, 0.2) and "/all" in k
    # dense: ratio and calibration do not matter
    assert q.ppl_key(s, dense, 0.2) == q.ppl_key(q.Settings(nsamples=32), dense, 0.0)
    # the LS grid is part of its key (another grid may choose another λ)
    assert q.ppl_key(s, ls, 0.2) != q.ppl_key(q.Settings(ls_lambdas=(0.1,)), ls, 0.2)
    assert q.zs_key(s, rot, 0.2, "piqa") != q.zs_key(q.Settings(zs_limit=100), rot, 0.2, "piqa")


def test_plan_jobs_skips_finished_rows(tmp_path):
    s = q.Settings(ppl_windows=16)
    store = C.RowStore(tmp_path / "q.json")
    variants = [q.VARIANT_BY_ID[i] for i in ("dense", "wanda_sp", "rcpu_nocomp")]
    jobs, skipped = q.plan_jobs(store, s, variants, [0.1, 0.2], ["piqa", "boolq"], [0.2])
    todo = {(j.variant.id, j.ratio): j for j in jobs}
    assert set(todo) == {("dense", 0.0), ("wanda_sp", 0.1), ("wanda_sp", 0.2), ("rcpu_nocomp", 0.1), ("rcpu_nocomp", 0.2)}
    assert todo[("dense", 0.0)].tasks == ["piqa", "boolq"]
    assert todo[("wanda_sp", 0.1)].tasks == []  # zero-shot only at the zs ratios
    assert todo[("wanda_sp", 0.2)].tasks == ["piqa", "boolq"]
    assert todo[("rcpu_nocomp", 0.2)].tasks == []  # not a Table-2 row
    assert skipped == []
    wanda = q.VARIANT_BY_ID["wanda_sp"]
    store.add({"key": q.ppl_key(s, wanda, 0.2), "kind": "ppl"})
    store.add({"key": q.zs_key(s, wanda, 0.2, "piqa"), "kind": "zeroshot"})
    store.add({"key": q.ppl_key(s, wanda, 0.1), "kind": "ppl"})
    jobs, skipped = q.plan_jobs(C.RowStore(tmp_path / "q.json"), s, variants, [0.1, 0.2], ["piqa", "boolq"], [0.2])
    todo = {(j.variant.id, j.ratio): j for j in jobs}
    assert ("wanda_sp", 0.1) not in todo
    assert not todo[("wanda_sp", 0.2)].ppl and todo[("wanda_sp", 0.2)].tasks == ["boolq"]
    assert len(skipped) == 3
    # other eval settings: nothing skipped
    jobs, skipped = q.plan_jobs(C.RowStore(tmp_path / "q.json"), q.Settings(), variants, [0.1, 0.2], [], [0.2])
    assert skipped == [] and len(jobs) == 5


def test_quick_and_full_use_separate_files():
    full = q.resolve(q.parse_args([]))
    quick = q.resolve(q.parse_args(["--quick"]))
    assert full[-1].name == "quality.json" and quick[-1].name == "quality_quick.json"
    assert quick[0].ppl_windows > 0 and quick[3] == []  # subset of windows, no zero-shot
    assert [v.id for v in quick[1]] == [v.id for v in q.VARIANTS if v.id in q.QUICK_VARIANTS]
    assert q.resolve(q.parse_args(["--rows", "rcpu_*", "--no-zeroshot"]))[3] == []
    with pytest.raises(SystemExit):
        q.resolve(q.parse_args(["--rows", "nope"]))


def test_ppl_table_and_report(tmp_path):
    s = q.Settings(ppl_windows=4)
    rows = []
    for vid, ratio, ppl in (("dense", 0.0, 10.0), ("rcpu_rot", 0.2, 12.5), ("wanda_sp", 0.2, 20.0)):
        v = q.VARIANT_BY_ID[vid]
        rows.append({"key": q.ppl_key(s, v, ratio), "kind": "ppl", "variant": vid, "method": v.label, "ratio": ratio,
                     "ppl": ppl, "decoder_params_removed": ratio * 0.9, "ppl_windows": 4, "ppl_windows_total": 100,
                     "heads_per_layer": 6, "channels_per_layer": 1229, "config": {"structure": "uniform"},
                     "params_before": 1_000_000, "params_after": 800_000 if ratio else None,
                     "prune_seconds": 61.4 if ratio else None, "ppl_seconds": 7.6})
    rows.append({**rows[1], "key": "other settings", "ppl": 99.0})  # not matching: ignored
    text = q.write_report(rows, s, [0.2], tmp_path / "q.md", tmp_path / "q.png")
    assert "| RCPU (rot) | 12.50 (18.0%) |" in text and "99.00" not in text
    assert "| Dense | 0% | 1.00 M | – | – | 8 |" in text  # size-and-cost table
    assert "| RCPU (rot) | 20% | 0.80 M | 18.0% | 61 | 8 |" in text
    assert (tmp_path / "q.png").is_file() and "q.png" in text


# -- store-all baseline == streaming engine -------------------------------------------------------
@pytest.mark.parametrize("kv", [2, 6])
def test_storeall_matches_streaming_engine(kv):
    model = make_tiny_llama(num_heads=6, num_kv_heads=kv, num_layers=2)
    torch.manual_seed(1)
    batches = list(torch.randint(0, 64, (12, 16)).split(4))
    config = PruningConfig(method="rcpu", ratio=0.34, head_rounding="nearest")
    ours, store = copy.deepcopy(model), copy.deepcopy(model)
    with torch.no_grad():
        prune_model(ours, capture_layer_inputs(ours, batches), config, progress=False)
        info = cs.storeall_prune(store, capture_layer_inputs(store, batches), config, dtype=torch.float64, chunk=40)
    assert info["stored_mb_max"] > 0
    for la, lb in zip(decoder_layers(ours), decoder_layers(store)):
        pa, pb = layer_parts(la), layer_parts(lb)
        assert pa.num_heads == pb.num_heads < 6 and pa.intermediate_size == pb.intermediate_size < 48
        for name in ("q_proj", "k_proj", "o_proj", "gate_proj", "down_proj"):
            wa, wb = getattr(pa, name).weight, getattr(pb, name).weight
            assert wa.shape == wb.shape
            assert (wa - wb).abs().max().item() < 1e-6, name
    ids = batches[0]
    with torch.no_grad():
        assert torch.allclose(ours(ids).logits, store(ids).logits, atol=1e-5)


def test_storeall_rotation_is_procrustes_of_gram():
    from rcpu_lightning.pruning import ChannelStats, rotation_compensation

    torch.manual_seed(0)
    X, W = torch.randn(300, 10), torch.randn(5, 10)
    keep = [0, 2, 3, 7, 9]
    stats = ChannelStats.zeros(10)
    stats.update(X)
    ref = rotation_compensation(W.double(), stats.G, torch.tensor(keep))
    got = cs.storeall_rotation(W.double(), X, keep, chunk=64)
    assert (ref - got).abs().max() < 1e-10


def test_storeall_refuses_other_methods():
    model = make_tiny_llama()
    with pytest.raises(ValueError):
        cs.storeall_prune(model, None, PruningConfig(method="wanda_sp"))


def test_peak_rss_is_a_high_water_mark_that_can_be_reset():
    import gc

    gc.collect()
    assert C.reset_peak_rss()  # Linux: the benchmarks rely on it
    before = C.rss_mb()
    assert C.peak_rss_mb() <= before + 1.0
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, written, so resident
    del block
    gc.collect()
    assert C.peak_rss_mb() >= before + 60  # the freed block still counts in the peak
    assert C.reset_peak_rss() and C.peak_rss_mb() <= C.rss_mb() + 1.0


# -- README rendering -----------------------------------------------------------------------------
def _results(tmp_path: Path) -> Path:
    d = tmp_path / "results"
    d.mkdir()
    (d / "overhead.json").write_text(json.dumps({"lightning_tokens_per_s": 100.0, "bare_tokens_per_s": 110.0,
                                                 "ratio": 100 / 110, "repeats": 3, "windows": 8, "seqlen": 128}))
    (d / "calibration_scaling_quick.json").write_text(json.dumps([
        {"key": "k", "samples": 16, "ppl": 50.0, "ppl_windows": 4, "ours_seconds": 10.0, "storeall_seconds": 8.0,
         "ours_peak_mb": 30.0, "storeall_peak_mb": 60.0, "time_ratio": 1.25, "memory_ratio": 0.5,
         "cpu_time_ratio": 1.2, "captured_inputs_mb": 4.5}]))
    return d


def test_render_readme_between_markers(tmp_path, capsys):
    d = _results(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text("# T\n\nbefore\n<!-- results:start -->\nSTALE-SECTION\n<!-- results:end -->\nafter\n")
    assert rr.main(["--readme", str(readme), "--results", str(d)]) == 0
    text = readme.read_text()
    assert text.startswith("# T\n\nbefore\n<!-- results:start -->\n") and text.endswith("<!-- results:end -->\nafter\n")
    assert "STALE-SECTION" not in text and "0.91" in text and "0.50" in text
    # idempotent
    rr.main(["--readme", str(readme), "--results", str(d)])
    assert readme.read_text() == text


def test_render_readme_without_markers_prints(tmp_path, capsys):
    d = _results(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    assert rr.main(["--readme", str(readme), "--results", str(d)]) == 0
    assert readme.read_text() == "# no markers\n"
    assert "0.91" in capsys.readouterr().out


class _WordTokenizer:
    """Whitespace tokenizer ("w123" -> 123) with the call signature the data package uses."""

    def __call__(self, text, return_tensors=None):
        ids = torch.tensor([[int(w[1:]) for w in text.split()]])
        return type("Enc", (), {"input_ids": ids})()


def test_heldout_windows_avoid_calibration_windows(tmp_path):
    import random

    words = [f"w{i}" for i in range(4000)]
    (tmp_path / "wiki.valid.tokens").write_text("\n".join(" ".join(words[i : i + 10]) for i in range(0, 4000, 10)) + "\n")
    s = q.Settings(nsamples=8, seqlen=16, seed=3)
    held = q.lambda_windows(_WordTokenizer(), 20, s, str(tmp_path))
    assert held.shape == (20, 16)
    ids = _WordTokenizer()(" ".join(["" if not r.strip() else r for r in open(tmp_path / "wiki.valid.tokens")])).input_ids[0]
    rng = random.Random(3)
    calib = [rng.randint(0, ids.numel() - 16 - 1) for _ in range(8)]
    # each held-out window's start (ids are unique per word here) is >= seqlen away from every calibration start
    pos = {int(t): i for i, t in enumerate(ids.tolist())}
    starts = [pos[int(w[0])] for w in held]
    assert all(abs(a - c) >= 16 for a in starts for c in calib)
    assert len(set(starts)) == 20


def test_every_quality_variant_runs_on_a_tiny_model(tmp_path):
    """Each row of the grid (AL-AM, LS λ search, targets, refreshed stats...) prunes and scores end to end."""
    import argparse

    dense = make_tiny_llama(num_heads=6, num_kv_heads=2, num_layers=2)
    torch.manual_seed(2)
    calib, windows, heldout = (torch.randint(0, 64, (n, 16)) for n in (8, 4, 4))
    s = q.Settings(nsamples=8, seqlen=16, ppl_windows=4, ls_lambdas=(1e-3, 1.0), ls_heldout=4)
    store = C.RowStore(tmp_path / "q.json")
    args = argparse.Namespace(eval_batch_size=2, total_windows=10, data_dir=None)
    jobs, _ = q.plan_jobs(store, s, q.VARIANTS, [0.34], [], [])
    assert jobs[-1].variant.id == q.OURS  # ours last: it matches the size of every other row
    for job in jobs:
        q.run_job(job, dense, None, calib, windows, lambda: heldout, store, s, args)
    rows = {r["variant"]: r for r in C.RowStore(tmp_path / "q.json")}
    assert set(rows) == set(q.VARIANT_BY_ID)
    for vid, r in rows.items():
        assert r["key"] == q.ppl_key(s, q.VARIANT_BY_ID[vid], 0.34) and r["ppl"] > 0 and r["ppl_windows"] == 4
        assert vid == "dense" or r["decoder_params_removed"] > 0
    assert set(rows["ls_best"]["ls"]["heldout_mean_nll"]) == {"0.001", "1"}
    assert rows["ls_best"]["config"]["ls_lambda"] == rows["ls_best"]["ls"]["lambda"]
    assert rows["rcpu_refresh_mlp"]["config"]["refresh_mlp_stats"] and rows["rcpu_o_proj_only"]["config"]["targets"] == "o_proj"
    assert rows["flap_al_am"]["config"]["structure"] == "al_am"
    # ours runs last, at the ratio that removes at least what every other row removes
    adaptive = {v.id for v in q.VARIANTS if v.match_removed}
    assert adaptive == {"flap_al_am", "rcpu_affine", "rcpu_affine_flap"}
    fixed = [r["decoder_params_removed"] for v, r in rows.items() if v not in {"dense", *adaptive}]
    most = max(fixed)
    for v in adaptive - {q.OURS}:  # the adaptive baselines match the fixed-size rows
        assert rows[v]["matched_removed"] == most
        assert rows[v]["config"]["ratio"] == pytest.approx(max(0.34, most + q.MATCH_MARGIN))
    # ours runs last and matches every other row, the adaptive ones included (they land either side of their ratio)
    ours = rows[q.OURS]
    every = max(r["decoder_params_removed"] for v, r in rows.items() if v not in ("dense", q.OURS))
    assert ours["matched_removed"] == every and ours["config"]["ratio"] == pytest.approx(max(0.34, every + q.MATCH_MARGIN))
    assert ours["config"]["compensation"] == "affine_least_squares" and ours["config"]["allocation"] == "compensated_error"
    assert ours["ls"]["lambda"] == 0.1 and ours["ls"]["heldout_mean_nll"] == {"0.1": None}  # one λ: no search
    assert set(rows["rcpu_affine_flap"]["ls"]["heldout_mean_nll"]) == {"0.01", "0.1"}
    assert rows["rcpu_affine_flap"]["config"]["allocation"] == "score"
    assert ours["decoder_params_removed"] >= most - 0.02  # the nearest AL-AM prefix: within half a head slot here
    assert dense.model.layers[0].self_attn.q_proj.out_features == 48  # the dense model itself is never pruned
    # resuming LS with its λ known prunes once, without a search
    v = q.VARIANT_BY_ID["ls_best"]
    q.run_job(q.Job(v, 0.34, False, []), dense, None, calib, windows, lambda: 1 / 0, store, s, args)
    text = q.report_markdown(store.rows, s)
    assert "LS (λ_best)" in text and "λ=" in text
    assert "Ours against the best baseline" in text and "RCPU-affine" in text


def test_versus_table_compares_ours_with_the_best_baseline_in_perplexity_size_and_zero_shot():
    from rcpu_lightning.eval.tasks import TASKS

    def ppl(variant, value, removed):
        return {"variant": variant, "ratio": 0.2, "ppl": value, "decoder_params_removed": removed}

    def zs(variant, acc, se=0.02):  # the same accuracy on every task
        return [{"variant": variant, "ratio": 0.2, "task": t,
                 "tasks": {t: {"reported": acc, "reported_metric": "acc", "acc_stderr": se}}} for t in TASKS]

    rows = [ppl(q.OURS, 80.0, 0.215), ppl("ls_best", 92.0, 0.212), ppl("flap_al_am", 95.0, 0.213),
            ppl("rcpu_affine_flap", 70.0, 0.2)]  # a variant of ours, never the baseline compared with
    table = q.versus_table(rows, zs(q.OURS, 0.40) + zs("ls_best", 0.45, 0.001) + zs("rcpu_affine_flap", 0.9), [0.2])
    cells = table.splitlines()[2].split(" | ")
    assert cells[2] == "LS (λ_best)" and cells[4] == f"{80 / 92:.3f}" and cells[5].startswith("yes")
    # ours is lower than LS's mean by more than two standard errors; FLAP has no zero-shot rows
    assert cells[6] == "lower: 40.00 vs 45.00 (LS (λ_best); 1 of 2 baselines measured) |"
    table = q.versus_table(rows, zs(q.OURS, 0.46) + zs("ls_best", 0.45) + zs("flap_al_am", 0.44), [0.2])
    assert table.splitlines()[2].endswith("| not lower: 46.00 vs 45.00 (LS (λ_best), < 2 s.e.; 2 of 2 baselines measured) |")
    assert "| – |" in q.versus_table(rows, [], [0.2])  # no zero-shot rows: the column says so
    assert q.versus_table([ppl("ls_best", 92.0, 0.212)], [], [0.2]) == ""  # no row of ours: no table


def test_ours_only_scaling_row_renders_without_store_all(tmp_path):
    import argparse

    args = argparse.Namespace(impls=["ours"], ppl_windows=16, seqlen=128, seed=0, check_windows=4,
                              malloc_mmap_threshold=None)
    ours = {"ppl": 60.0, "ppl_windows": 16, "seconds": 100.0, "cpu_seconds": 190.0, "peak_mb": 520.0,
            "captured_inputs_mb": 288.0, "check_mean_nll": 4.1}
    row = cs.make_row(1024, ours, None, args)
    assert row["key"].endswith("|ours-only") and row["time_ratio"] is None and row["memory_ratio"] is None
    both = cs.make_row(128, {**ours, "peak_mb": 260.0, "captured_inputs_mb": 36.0},
                       {**ours, "seconds": 50.0, "peak_mb": 400.0},
                       argparse.Namespace(**{**vars(args), "impls": ["ours", "storeall"]}))
    assert "ours-only" not in both["key"] and both["time_ratio"] == 2.0
    d = tmp_path / "results"
    d.mkdir()
    ours128 = cs.make_row(128, {**ours, "peak_mb": 250.0, "captured_inputs_mb": 36.0}, None, args)
    (d / "calibration_scaling.json").write_text(json.dumps([row, both, ours128]))
    text = rr.scaling_section(d, tmp_path / "README.md")
    # an ours-only row is compared with the ours-only row at 128, not with the row that has store-all
    assert "| 1024 | default | 60.00 (16) | 100 | – | – | – | 520 | – | – | 288 | 2.08 | 1.08 | " in text
    assert "| 128 | default | 60.00 (16) | 100 | 50 | 2.00 |" in text
    # the acceptance lines are computed from the same rows
    assert "- time ratio 2.00–2.00 over 128–128 samples" in text
    assert ("- peak at 1024 (default malloc, ours only, " in text and "): 2.08× ours at 128; of the 270 MB it "
            "grew, 252 MB are the captured layer inputs" in text and "without them 1.08×." in text)


def test_fixed_mmap_threshold_rows_have_their_own_key_and_baseline(tmp_path, monkeypatch):
    import argparse

    monkeypatch.setenv(cs.MMAP_ENV, "999")
    assert cs.worker_env(131072)[cs.MMAP_ENV] == "131072"
    assert cs.MMAP_ENV not in cs.worker_env(None)
    base = dict(impls=["ours"], ppl_windows=16, seqlen=128, seed=0, check_windows=4)
    default, fixed = (argparse.Namespace(**base, malloc_mmap_threshold=t) for t in (None, 131072))
    ours = {"ppl": 60.0, "ppl_windows": 16, "seconds": 100.0, "cpu_seconds": 190.0, "peak_mb": 500.0,
            "captured_inputs_mb": 36.0, "check_mean_nll": 4.1}
    rows = [cs.make_row(128, ours, None, default), cs.make_row(128, {**ours, "peak_mb": 100.0}, None, fixed),
            cs.make_row(1024, {**ours, "peak_mb": 400.0, "captured_inputs_mb": 288.0}, None, fixed)]
    assert len({r["key"] for r in rows}) == 3 and rows[1]["key"].endswith("|malloc_mmap=131072")
    d = tmp_path / "results"
    d.mkdir()
    (d / "calibration_scaling.json").write_text(json.dumps(rows))
    text = rr.scaling_section(d, tmp_path / "README.md")
    assert "| 128 | default | 60.00 (16) | 100 | – | – | – | 500 | – | – | 36 | 1.00 | 1.00 | " in text
    assert "| 1024 | mmap ≥ 128 KiB | 60.00 (16) | 100 | – | – | – | 400 | – | – | 288 | 4.00 | 1.75 | " in text


def test_claims_table_checks_each_claim_per_ratio():
    from rcpu_lightning.eval.tasks import TASKS

    ppl = {("rcpu_rot", 0.2): 100.0, ("wanda_sp", 0.2): 300.0, ("flap_al_am", 0.2): 90.0,
           ("rcpu_rot_scale", 0.2): 104.0, ("rcpu_rot", 0.3): 200.0, ("rcpu_rot_scale", 0.3): 150.0}
    ppl_rows = [{"variant": v, "ratio": x, "ppl": p} for (v, x), p in ppl.items()]

    def zs(variant, acc, tasks=TASKS, ratio=0.2, se=0.02):
        return [{"variant": variant, "ratio": ratio, "task": t,
                 "tasks": {t: {"reported": acc, "reported_metric": "acc_norm", "acc_norm_stderr": se}}} for t in tasks]

    zs_rows = zs("rcpu_rot", 0.5) + zs("wanda_sp", 0.4) + zs("flap_al_am", 0.6, TASKS[:-1])  # FLAP incomplete
    zs_rows += zs("rcpu_rot", 0.41, ratio=0.3) + zs("wanda_sp", 0.40, ratio=0.3)  # 1 point apart: within noise
    means = q.zeroshot_means(zs_rows)
    se = 0.02 * math.sqrt(len(TASKS)) / len(TASKS)
    assert set(means) == {("rcpu_rot", 0.2), ("wanda_sp", 0.2), ("rcpu_rot", 0.3), ("wanda_sp", 0.3)}
    assert means[("rcpu_rot", 0.2)] == pytest.approx((0.5, se))
    lines = {line.split(" | ")[0].lstrip("| "): line for line in q.claims_table(ppl_rows, zs_rows, [0.2, 0.3]).splitlines()}
    assert lines["RCPU (rot) has lower PPL than WANDA-sp"].endswith("| yes (100.00 vs 300.00) | – |")
    assert lines["RCPU (rot) has lower PPL than FLAP (AL-AM)"].endswith("| no (100.00 vs 90.00) | – |")
    assert lines["rotation ≈ rotation + scale (PPL within 5 %)"].endswith(
        "| yes (100.00 vs 104.00) | no (200.00 vs 150.00) |")
    assert lines["RCPU (rot) has higher mean zero-shot accuracy than WANDA-sp"].endswith(
        "| yes (50.00 vs 40.00) | yes (41.00 vs 40.00, < 2 s.e.) |")
    assert "RCPU (rot) has higher mean zero-shot accuracy than FLAP (AL-AM)" not in lines  # no complete FLAP mean
    assert "ablation: o_proj only beats down_proj only" not in lines  # no rows at all: claim left out


def test_reference_note_lists_model_free_rates():
    rows = [{"variant": "dense", "ratio": 0.0, "task": "boolq",
             "tasks": {"boolq": {"reported": 0.42, "chance": 0.5, "majority_position": 0.622}}},
            {"variant": "dense", "ratio": 0.0, "task": "piqa", "tasks": {"piqa": {"reported": 0.65}}}]  # older row
    note = q.reference_note(rows)
    assert "BoolQ 50.0 / 62.2" in note and "PIQA" not in note
    assert q.reference_note(rows[1:]) == ""


def test_zero_shot_table_leaves_out_models_without_zero_shot_rows():
    s = q.Settings()
    rot = q.VARIANT_BY_ID["rcpu_rot"]
    ppl = [{"key": q.ppl_key(s, rot, x), "kind": "ppl", "model": s.model, "variant": "rcpu_rot", "method": rot.label, "ratio": x,
            "ppl": p, "decoder_params_removed": x, "ppl_windows": 10, "ppl_windows_total": 10} for x, p in ((0.1, 65.0), (0.2, 190.0))]
    zs = [{"key": q.zs_key(s, rot, 0.2, "piqa"), "kind": "zeroshot", "model": s.model, "variant": "rcpu_rot", "method": rot.label,
           "ratio": 0.2, "task": "piqa", "tasks": {"piqa": {"acc": 0.55, "acc_norm": 0.56, "reported_metric": "acc", "reported": 0.55}}}]
    text = q.report_markdown(ppl + zs, s)
    table = text.split("Zero-shot accuracy")[1].split("claims on this model")[0]
    assert "| 20% | RCPU (rot) | 190.00 | – | 55.00 |" in table and "| 10% |" not in table


# -- inference.py: dense vs pruned throughput --------------------------------------------------------
from benchmarks import inference as inf  # noqa: E402


def test_inference_flops_match_a_hand_count():
    # hidden 8, 2 query heads + 1 kv head of 4, MLP 16, vocab 10, one layer; per token at 5 keys:
    # q 2*8*8=128, k 2*8*4=64, v 64, o 2*8*8=128 | gate, up, down 3 * 2*8*16=768 | QK^T and PV 4*4*2*5=160 | head 2*8*10=160
    model = make_tiny_llama(num_heads=2, num_kv_heads=1, head_dim=4, hidden_size=8, intermediate_size=16,
                            num_layers=1, vocab_size=10)
    parts = inf.flop_parts(model, 5.0)
    assert parts == {"attn_proj": 384.0, "attn_sdpa": 160.0, "mlp": 768.0, "lm_head": 160.0}
    assert inf.flops_per_token(model, 5.0) == 1472.0
    assert inf.prefill_ctx(128) == 64.5 and inf.decode_ctx(16, 128) == 79.5
    # channels 16 -> 8 (a multiple of 8): the MLP term halves, nothing else moves
    wide = make_tiny_llama(num_heads=2, num_kv_heads=1, head_dim=4, hidden_size=8, intermediate_size=13,
                           num_layers=1, vocab_size=10)
    rounded = inf.round_channels(inf.Variant("rcpu_uniform", wide, "rcpu", "uniform", 0.2), 8)
    assert inf.layer_shapes(rounded.model) == [{"heads": 2, "kv_heads": 1, "channels": 8}]
    assert inf.flop_parts(rounded.model, 5.0)["mlp"] == 3 * 2 * 8 * 8
    assert inf.layer_shapes(wide)[0]["channels"] == 13  # the source model is untouched
    assert rounded.model.config.intermediate_size == 8 and wide.config.intermediate_size == 13  # not stale
    # the first 8 channels, through the surgery: on each token the MLP equals the one built by hand from them
    mlp, src = rounded.model.model.layers[0].mlp, wide.model.layers[0].mlp
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        act = torch.nn.functional.silu(x @ src.gate_proj.weight[:8].T) * (x @ src.up_proj.weight[:8].T)
        torch.testing.assert_close(mlp(x), act @ src.down_proj.weight[:, :8].T)  # same float32 ops: default tol


def test_inference_decode_makes_exactly_the_requested_tokens_as_generate_does():
    model, other = make_tiny_llama(), make_tiny_llama(num_heads=6, num_kv_heads=2, seed=1)
    prompt = torch.tensor([[1, 2, 3, 4]])
    # the lockstep loop: one forward per token and model, the same greedy tokens as generate
    wall, cpu, made = inf.lockstep_decode([model, other], prompt, 6)
    assert [len(w) for w in wall] == [6, 6] and [len(c) for c in cpu] == [6, 6]
    for m, tokens in zip((model, other), made):
        m.generation_config.eos_token_id = None  # (other's greedy choice includes the default EOS, 2)
        assert torch.equal(tokens, inf.time_generate(m, prompt, 6, pad_token_id=0)[1])
    assert not torch.equal(made[0], made[1])
    # an EOS that greedy decoding picks first stops a plain generate; ours still makes exactly 6 tokens
    model.generation_config.eos_token_id = int(made[0][0, 0])
    plain = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=6,
                           pad_token_id=0)
    assert plain.shape[1] - prompt.shape[1] == 1
    assert inf.time_generate(model, prompt, 6, pad_token_id=0)[1].shape == (1, 6)  # raises unless exactly 6
    assert inf.lockstep_decode([model], prompt, 6)[2][0].shape == (1, 6)


def test_inference_script_end_to_end_on_a_tiny_llama(tmp_path):
    out = tmp_path / "inference.json"
    argv = ["--models", "tiny", "--ratios", "0.3", "--repeats", "2", "--prefill-repeats", "3", "--threads", "1",
            "--prefill-batch", "2",
            "--prefill-seqlen", "16", "--prompt-len", "4", "--new-tokens", "5", "--warmup-tokens", "2",
            "--calib-windows", "4", "--rounding-models", "tiny", "--rounding", "8", "--out", str(out)]
    assert inf.main(argv) == 0
    rows = {r["key"].split("|", 3)[1] + "/" + r["key"].split("|", 3)[2]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"main/rcpu_uniform", "main/flap_al_am", "rounding/rcpu_uniform", "rounding/rcpu_uniform_round8"}
    for r in rows.values():
        tokens = {"prefill": 2 * 16, "decode": 5}
        for phase in ("prefill", "decode"):
            secs, tps = r[f"{phase}_seconds"], r[f"{phase}_tokens_per_s"]
            assert len(secs["dense"]) == len(secs["pruned"]) == {"prefill": 3, "decode": 2}[phase]
            for which in ("dense", "pruned"):  # throughput = work / median seconds
                assert tps[which] == pytest.approx(tokens[phase] / C.median(secs[which]))
            assert r[f"{phase}_speedup"] == pytest.approx(tps["pruned"] / tps["dense"])
            assert r[f"{phase}_speedup_per_round"] == pytest.approx(
                C.median([d / p for d, p in zip(secs["dense"], secs["pruned"])]))
        assert r["ideal_speedup"] == pytest.approx(r["flops_per_token"]["dense"] / r["flops_per_token"]["pruned"])
        assert r["prefill_efficiency"] == pytest.approx(r["prefill_speedup"] / r["ideal_speedup"])
        assert r["params"]["pruned"] < r["params"]["dense"] and r["weights_mb"]["pruned"] < r["weights_mb"]["dense"]
        assert r["hidden"] == 64 and r["layers"] == 2 and r["run"]["torch_threads"] == 1
        assert len(r["loadavg_rounds"]) == len(r["cpu_share_rounds"]) == 3
        assert [x["decode"] is None for x in r["cpu_share_rounds"]] == [False, False, True]  # 2 decode rounds
        assert r["decode_matches_generate"] == {"dense": True, "pruned": True}
        assert r["decode_step_ms"]["dense"] > 0 and r["decode_speedup_per_step"] > 0
    uni, r8 = rows["main/rcpu_uniform"], rows["rounding/rcpu_uniform_round8"]
    assert uni["kept_per_layer"] == [{"heads": 2, "kv_heads": 2, "channels": 90}] * 2  # 30 % of 4 heads -> 2 (nearest)
    assert [lp["channels"] for lp in r8["kept_per_layer"]] == [88, 88] and r8["round_to"] == 8
    assert r8["ideal_speedup"] > rows["rounding/rcpu_uniform"]["ideal_speedup"]
    # rerun: every group is done, nothing is measured again
    before = out.read_text()
    assert inf.main(argv) == 0
    assert out.read_text() == before
    # the README section renders these rows (no hidden-4096 row: no target line)
    text = rr.inference_section(tmp_path, tmp_path / "README.md")
    assert "| random Llama, h 64 × 2 layers | RCPU, uniform | 30% | heads 2/4, kv 2/2, channels 90/128 (all 2 layers) |" in text
    assert "channels rounded down" in text and "88 (×8)" in text and "Against the target" not in text
    assert "another thread count" not in text
    (tmp_path / "inference_threads1.json").write_text(out.read_text())  # the same rows, as if run at 1 thread
    text = rr.inference_section(tmp_path, tmp_path / "README.md")
    assert "| `inference_threads1.json` | 1 | random Llama, h 64 × 2 layers | RCPU, uniform | 30% | 90 |" in text


def test_inference_section_names_the_thread_count_of_every_model():
    def row(model_id, hidden, threads):
        return {"model_id": model_id, "hidden": hidden, "layers": 2, "settings": {"threads": threads}}

    assert rr._threads_text([row("smollm2", 576, 2), row("stack", 4096, 2)]) == "2 threads"
    assert rr._threads_text([row("smollm2", 576, 1)]) == "1 thread"
    assert rr._threads_text([row("smollm2", 576, 1), row("stack", 4096, 2)]) == (
        "1 thread (SmolLM2-135M), 2 threads (random Llama, h 4096 × 2 layers)")


def test_inference_target_line_reads_the_4096_rows():
    row = {"hidden": 4096, "ratio": 0.3, "method": "rcpu", "structure": "uniform", "prefill_speedup": 1.30,
           "decode_speedup": 1.20, "ideal_speedup": 1.43, "prefill_efficiency": 1.30 / 1.43, "decode_efficiency": 1.20 / 1.43}
    assert rr.inference_target([row])[-1].endswith("(0.91 and 0.84 of it): target (≥ 0.85 × ideal) not met.")
    row.update(decode_speedup=1.25, decode_efficiency=1.25 / 1.43)
    assert rr.inference_target([row])[-1].endswith("target (≥ 0.85 × ideal) met.")
    assert rr.inference_target([dict(row, hidden=576)]) == []


def test_which_method_section_reads_the_best_rows_off_the_quality_file(tmp_path):
    s = q.Settings()
    rows = []
    for vid, ratio, ppl, structure in (("dense", 0.0, 50.0, None), ("ls_best", 0.2, 90.0, "uniform"),
                                       ("flap_al_am", 0.2, 95.0, "al_am"), ("rcpu_affine", 0.2, 70.0, "al_am"),
                                       ("ls_best", 0.3, 100.0, "uniform"), ("rcpu_affine", 0.3, 120.0, "al_am")):
        v = q.VARIANT_BY_ID[vid]
        rows.append({"key": q.ppl_key(s, v, ratio), "kind": "ppl", "variant": vid, "method": v.label, "ratio": ratio,
                     "ppl": ppl, "decoder_params_removed": ratio, "ppl_windows": 10, "ppl_windows_total": 10,
                     "calib_samples": 128, "calib_seqlen": 128, "calib_seed": 0, "seqlen": 128,
                     "config": {"structure": structure}})
    (tmp_path / "quality.json").write_text(json.dumps(rows))
    text = rr.which_method_section(tmp_path)
    assert ("- **20 %**: best RCPU-affine (error allocation and selection, affine LS) 70.00 (20.0% removed); "
            "next LS (λ_best) 90.00") in text
    assert "best with equal shapes in every layer: LS (λ_best) 90.00" in text  # named where ours (al_am) leads
    assert "- **30 %**: best LS (λ_best) 100.00" in text and "lowest perplexity at 20 % only" in text
    assert "Speed" not in text and "held-out perplexity" not in text  # no inference or held-out rows
    (tmp_path / "heldout.json").write_text(json.dumps([
        {"config": {"ratio": 0.2, "head_rounding": "nearest"}, "heldout_windows": 64, "heldout_ppl": 140.0,
         "decoder_params_removed": 0.2123},
        {"config": {"ratio": 0.2, "method": "flap", "selection": "compensated_error"}, "heldout_windows": 64,
         "heldout_ppl": 60.0, "decoder_params_removed": 0.2}]))
    text = rr.which_method_section(tmp_path)
    assert text.index("| 20% | method: flap, selection: compensated_error | 20.00% | 60.00 |") < \
        text.index("| 20% | (the paper's RCPU) | 21.23% | 140.00 |")  # best first


def test_heldout_script_scores_configs_on_held_out_windows_and_skips_finished_ones(tmp_path, capsys):
    from benchmarks import heldout

    sys.path.insert(0, str(Path(__file__).parent / "scripts"))
    from tiny_setup import save_tiny_llama, write_tiny_wikitext

    model, data = save_tiny_llama(tmp_path / "model"), write_tiny_wikitext(tmp_path / "data")
    out = tmp_path / "heldout.json"
    args = ["--model", str(model), "--data-dir", str(data), "--nsamples", "8", "--seqlen", "16", "--windows", "4",
            "--threads", "1", "--out", str(out)]
    configs = ['{"ratio": 0.34}', '{"ratio": 0.34, "structure": "al_am", "compensation": "affine_least_squares"}']
    threads = torch.get_num_threads()
    try:
        assert heldout.main(args + configs) == 0
    finally:  # the script's setup_torch switches autograd off and sets threads for the whole process
        torch.set_grad_enabled(True)
        torch.set_num_threads(threads)
    rows = json.loads(out.read_text())
    assert [r["config"]["structure"] if "structure" in r["config"] else "uniform" for r in rows] == ["uniform", "al_am"]
    assert all(r["heldout_ppl"] > 1 and r["heldout_windows"] == 4 and r["decoder_params_removed"] > 0.2 for r in rows)
    assert rows[0]["config"]["head_rounding"] == "nearest" and "8x16@seed0" in rows[0]["key"]
    assert heldout.main(args + configs[:1]) == 0 and "measured already" in capsys.readouterr().out


def test_obs_update_in_place_agrees_with_the_previous_form_to_float64_round_off(capsys):
    from benchmarks import obs_update

    threads = torch.get_num_threads()
    dim, steps = 96, 3
    try:
        obs_update.main(["--dim", str(dim), "--out-dim", "32", "--columns", "5", "--steps", str(steps),
                         "--repeats", "2", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "d 96, 5 columns a step" in out
    diff = float(re.search(r"max abs difference (\S+)$", out.strip()).group(1))
    # The two forms are the same algebra (W -= W[:, D] X, H⁻¹ -= H⁻¹[:, D] X with X = H⁻¹[D, D]⁻¹ H⁻¹[D, :])
    # in different summation orders (addmm_ in place vs a product then a subtraction), so they agree to
    # float64 round-off only. The benchmark's H⁻¹ = M Mᵀ + I with M ~ N(0, 1/d) has eigenvalues in [1, ~5]
    # (Marchenko-Pastur) and its Schur complements keep them there, so each solve has κ ≤ 5; entries of W
    # (N(0, 1)) and of H⁻¹ stay below ~5 at this size, so a d-term product sums at most d · 5 · 5 in
    # absolute value; the errors add over the steps. Bound ~1e-9; observed ~1e-15; a wrong update is O(1) off.
    bound = steps * rounding_bound(dim, magnitude=dim * 5.0 * 5.0, dtype=torch.float64, condition=5.0)
    assert diff <= bound, out


def test_big_models_section_reads_targets_off_the_scale_rows(tmp_path):
    def row(mode, layers, ckpt, peak, spl, impl="ours", diff=None, hidden=2048):
        return {"mode": mode, "impl": impl, "layers": layers, "hidden": hidden, "intermediate": 5504, "heads": 16,
                "params": layers * 50_000_000, "checkpoint_mb": ckpt, "peak_rss_mb": peak, "seconds_per_layer": spl,
                "calib_samples": 64, "calib_seqlen": 128, "arithmetic": "fast",
                "max_abs_logit_diff_vs_in_memory": diff, "run": {"loadavg_1m": 1.5}}
    d = tmp_path / "results"
    d.mkdir()
    rows = [row("disk", 2, 402, 1250, 20.0, diff=2e-6), row("memory", 2, 402, 1700, 25.0, diff=2e-6),
            row("disk", 21, 4200, 1260, 21.0), row("disk", 32, 6400, 1270, 22.0),
            row("layer7b", 2, 1540, 5000, 45.0, hidden=4096), row("layer7b", 2, 1540, 5300, 95.0, "reference", hidden=4096),
            row("layer7b", 2, 1540, 7168, 180.0, "affine", hidden=4096),
            {**row("layer7b", 2, 1540, 6000, 80.0, hidden=4096), "calib_samples": 128}]  # ours alone at 128
    (d / "scale.json").write_text(json.dumps(rows))
    text = rr.big_models_section(d, tmp_path / "README.md")
    assert "| disk | h 2048 × 21 layers | 1.05 B | 4200 | 1260 | 0.30 | 21.0 | – | 1.5 |" in text
    assert "1250 MB at 2 layers, 1260 MB at 21 layers, 1270 MB at 32 layers;" in text
    assert "0.30 × the 4.1 GiB checkpoint (not met); 0.20 × the 6.2 GiB checkpoint (met)" in text
    assert "disk vs memory at 2 layers: max abs logit difference 2.0e-06 (met)" in text
    assert "64 × 128 calibration; the model in memory): ours 45.0 s" in text and "reference / ours = 2.11 (met" in text
    # with the limit and the phases (scale.py's layer7b-ours rows since issue 26): ours / limit and a phase table
    phases = {"load": 0.0, "statistics": 20.0, "compensate_o_proj": 8.0, "compensate_down_proj": 9.0, "surgery": 0.5,
              "forward": 7.5, "save": 0.0}
    rows[4].update(phases=phases, dense_forward_s=10.0, pruned_forward_s=8.0, limit_s=18.0, ours_over_limit=2.5,
                   dtype="float32", run={"loadavg_1m": 1.5, "cpu": "AMD EPYC"})
    (d / "scale.json").write_text(json.dumps(rows))
    text = rr.big_models_section(d, tmp_path / "README.md")
    assert "ours 45.0 s, peak 4.88 GiB (on AMD EPYC, float32)" in text
    assert "Ours is 2.50× the layer's two-forward limit (18.0 s" in text and "target ≤ 1.3×: not met) and the reference 5.28×" in text
    assert "| compensate_o_proj | 8.0 s (0.44×) |" in text and "| **layer total** | **45.0 s (2.50×)** |" in text
    assert "| limit: dense forward + pruned forward | 10.0 + 8.0 = 18.0 s |" in text
    # bf16.py's rows: each bf16 variant's PPL against the float32 prune's
    base = {"config": {"ratio": 0.2}, "ppl_windows": 16, "run": {"cpu": "AMD EPYC", "loadavg_1m": 1.0}, "kept": ["a", "b"]}
    (d / "bf16.json").write_text(json.dumps([
        {**base, "variant": "f32", "ppl": 200.0, "prune_seconds": 30.0, "same_layers_as_f32": 2},
        {**base, "variant": "bf16_exec_f32", "ppl": 201.0, "prune_seconds": 32.0, "same_layers_as_f32": 1}]))
    text = rr.big_models_section(d, tmp_path / "README.md")
    assert "the float32 prune 200.00 (30 s); the bf16 checkpoint with `execution_dtype: float32`: 201.00 (+0.50 %, 32 s, " \
           "same kept units as float32 in 1/2 layers). Goal: within 1 % of the float32 prune." in text
    assert "on the same layers: 180.0 s per layer, peak 7.00 GiB (its own run; load 1.5)." in text
    assert "128 × 128 calibration; the model in memory): ours 80.0 s, peak 5.86 GiB." in text  # not paired
    assert "GPU (`benchmarks/gpu_llama7b.py`): not run yet" in text
    # a bf16 ours row (scale.py --dtype bfloat16) stands alone: the float32 pair and its ratio stay as they were
    bf16_row = {**rows[4], "dtype": "bfloat16", "seconds_per_layer": 30.0, "limit_s": 12.0, "ours_over_limit": 2.5,
                "run": {"loadavg_1m": 1.2, "cpu": "AMD EPYC", "bf16_matmul": True}}
    # full7b.py's row: a whole checkpoint through the CLI, with its limit and phases
    full = {"mode": "full7b", "model": "llama-7b", "layers": 32, "hidden": 4096, "heads": 32, "intermediate": 11008,
            "vocab": 32000, "dtype": "bfloat16", "checkpoint_gb": 13.48, "calib_samples": 128, "calib_seqlen": 128,
            "extra_prune_args": [], "omp_num_threads": "2", "run": {"loadavg_1m": 2.0, "cpu": "X", "bf16_matmul": True},
            "total_minutes": 55.2, "seconds_per_layer": 100.0, "peak_rss_mb": 3000.0, "read_seconds": 40.0,
            "write_seconds": 20.0, "pruned_gb": 11.0, "decoder_params_removed": 0.196, "dense_forward_s": 20.0,
            "pruned_forward_s": 16.0, "limit_s": 36.0, "limit_dtype": "bfloat16", "ours_over_limit": 100 / 36,
            "ppl": 40000.0, "ppl_windows": 4, "test_wall_seconds": 300.0, "test_peak_rss_mb": 12000.0,
            "reload_how": "from_pretrained(trust_remote_code=True)", "reload_ok": True, "phases": phases}
    (d / "scale.json").write_text(json.dumps(rows + [bf16_row, full]))
    text = rr.big_models_section(d, tmp_path / "README.md")
    assert "ours 45.0 s, peak 4.88 GiB (on AMD EPYC, float32)" in text and "reference / ours = 2.11 (met" in text
    assert "ours 30.0 s, peak 4.88 GiB (on AMD EPYC, bf16 matmul, bfloat16)" in text
    assert ("(RCPU rot 20 %, 128 × 128 calibration; on X, bf16 matmul, 2 threads, load 2.0): 55.2 min, 100.0 s per "
            "layer, peak RSS 2.93 GiB (met: goal ≤ 4 GiB)") in text
    assert "Ours is 2.78× the layer's two-forward limit (20.0 + 16.0 = 36.0 s, layer 0 in bfloat16" in text
    assert "reload by `from_pretrained(trust_remote_code=True)` + one forward: finite logits." in text
    # the phase table: float32 before bf16, the whole model last; each column says where it ran, and on what
    assert ("| phase | one layer in memory, float32, 64 × 128 (AMD EPYC) | one layer in memory, bfloat16, 64 × 128 "
            "(AMD EPYC, bf16 matmul) | whole model out of core, bfloat16, 128 × 128 (X, bf16 matmul) |") in text
    assert "| **layer total** | **45.0 s (2.50×)** | **30.0 s (2.50×)** | **100.0 s (2.78×)** |" in text
    full["run"]["commit"] = "abc1234"
    (d / "scale.json").write_text(json.dumps([bf16_row, full] + rows))  # file order does not set the columns'
    text = rr.big_models_section(d, tmp_path / "README.md")
    assert "(AMD EPYC, bf16 matmul) | whole model out of core, bfloat16, 128 × 128 (X, bf16 matmul; engine abc1234) |" in text
    assert "| phase | one layer in memory, float32, 64 × 128 (AMD EPYC) |" in text


def test_bf16_script_prunes_each_variant_in_its_dtype_and_compares_with_the_float32_prune(tmp_path, capsys):
    from benchmarks import bf16

    out = tmp_path / "bf16.json"
    argv = ["--quick", "--threads", "1", "--out", str(out)]
    threads = torch.get_num_threads()
    try:
        assert bf16.main(argv) == 0
    finally:  # the script's setup_torch switches autograd off and sets threads for the whole process
        torch.set_grad_enabled(True)
        torch.set_num_threads(threads)
    rows = {r["variant"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"f32", "bf16", "bf16_exec_f32", "dense_f32", "dense_bf16"}
    for name, r in rows.items():  # each evaluated in its own dtype, on the same windows
        assert r["weight_dtypes"] == [r["dtype"]] and r["ppl"] > 1 and math.isfinite(r["ppl"])
        assert r["ppl_windows"] == 4 and r["run"]["torch_threads"] == 1
        ref = rows[r["reference"]]
        assert r["reference"] == ("dense_f32" if name.startswith("dense") else "f32")
        assert r["ppl_vs_reference"] == pytest.approx(r["ppl"] / ref["ppl"] - 1)
    for name, execution in (("f32", None), ("bf16", None), ("bf16_exec_f32", "float32")):
        r = rows[name]
        assert r["config"]["execution_dtype"] == execution and r["prune_seconds"] > 0
        assert r["decoder_params_removed"] == rows["f32"]["decoder_params_removed"]  # the same counts
        assert 0 <= r["same_layers_as_f32"] <= 2 and r["within_goal"] == (abs(r["ppl_vs_reference"]) <= 0.01)
    assert rows["bf16"]["dtype"] == rows["bf16_exec_f32"]["dtype"] == "bfloat16"
    capsys.readouterr()
    before = out.read_text()
    assert bf16.main(argv) == 0 and "measured already" in capsys.readouterr().out  # nothing measured again
    assert out.read_text() == before
