"""benchmarks/deploy_llamacpp.py without llama.cpp (not a CI dependency): the ideal-speedup parameter count
and the README's Deploy table rendered from a deploy.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import deploy_llamacpp as dl  # noqa: E402
from benchmarks import render_readme as rr  # noqa: E402

from conftest import make_tiny_llama  # noqa: E402


def test_matmul_params_count_decoder_layers_and_head_not_embeddings():
    model = make_tiny_llama(num_heads=4, num_kv_heads=2, head_dim=8, hidden_size=32, intermediate_size=40,
                            num_layers=2, vocab_size=50)
    attn = 32 * 32 + 2 * (32 * 16) + 32 * 32  # q, k+v (2 kv heads of 8), o
    mlp = 3 * 32 * 40
    norms = 2 * 32
    assert dl.matmul_params(model) == 2 * (attn + mlp + norms) + 50 * 32  # + LM head, no embedding


def _speed(prefill: float, decode: float, dense: tuple[float, float]) -> dict:
    return {"prefill_tok_s": prefill, "decode_tok_s": decode, "prefill_speedup": prefill / dense[0],
            "decode_speedup": decode / dense[1], "prefill_s": [], "decode_s": []}


def test_deploy_table_is_rendered_from_the_json(tmp_path):
    rows = []
    for key, arch, ppl, f16, ideal in (("dense", "llama", 20.25, (1000.0, 100.0), 1.0),
                                       ("rcpu-affine-30", "deci", 31.5, (1300.0, 121.0), 1.31)):
        rows.append({"key": key, "model": dl.LABELS[key], "arch": arch, "max_abs_logit_diff_f32": 2.5e-4,
                     "ppl_torch": ppl, "ppl_llamacpp_f32": ppl + 1e-4, "ppl_llamacpp_f16": ppl + 0.01,
                     "generation": {"identical_f32": True, "same_tokens_f32": 32},
                     "speed_f16": _speed(*f16, dense=(1000.0, 100.0)), "speed_q8_0": _speed(*f16, dense=(1000.0, 100.0)),
                     "ideal_speedup": ideal})
    data = {"rows": rows, "run": {"cpus": 2, "loadavg_1m": 3.0, "commit": "abc"}, "command": "python x.py",
            "settings": {"windows": 8, "seqlen": 128, "new_tokens": 32, "prompt_tokens": 16, "threads": 2,
                         "prefill": 512, "decode": 128, "repeats": 5, "llama_cpp_python": "0.3", "quick": False}}
    (tmp_path / "deploy.json").write_text(json.dumps(data))
    text = rr.deploy_section(tmp_path, tmp_path / "README.md")
    affine = next(line for line in text.splitlines() if line.startswith("| RCPU-affine 30 %"))
    assert "`deci`" in affine and "31.500" in affine and "1.3e+03 (×1.30)" in affine and "121 (×1.21)" in affine
    assert "×1.31" in affine and "yes (32/32)" in affine
    assert "No rows yet" in rr.deploy_section(tmp_path / "none", tmp_path / "README.md")
    harness = {"model": "DIR", "lm_eval_version": "0.4", "tasks": {"arc_easy": {
        "n": 300, "requests": 1199, "max_abs_ll_diff": 6.7e-6, "ours": {"acc": 0.45, "acc_norm": 0.38},
        "harness": {"acc": 0.4467, "acc_norm": 0.3833}}}}
    (tmp_path / "harness_trust_remote_code.json").write_text(json.dumps(harness))
    line = rr.deploy_section(tmp_path, tmp_path / "README.md").splitlines()[-1]
    assert "300 arc_easy" in line and "acc 0.4467 / acc_norm 0.3833" in line and "0.4500 / 0.3800" in line


def test_the_prefill_note_names_only_the_rows_short_of_their_ideal():
    from benchmarks import render_readme

    def row(model, prefill, ideal):
        return {"model": model, "ideal_speedup": ideal, "speed_f16": {"prefill_speedup": prefill}}

    rows = [row("Dense", 1.0, 1.0), row("A", 0.75, 1.20), row("B", 1.15, 1.20)]
    note = render_readme._prefill_note(rows)
    assert "A ×0.75 of ×1.20" in note and "B " not in note and "Dense" not in note
    assert render_readme._prefill_note([row("Dense", 1.0, 1.0), row("B", 1.15, 1.20)]) == ""
