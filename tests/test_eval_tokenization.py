"""Harness tokenisation rules with a real tokenizer (the embedded SmolLM2-135M-Instruct, offline),
and an end-to-end run of every task on a tiny random model with that tokenizer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import make_tiny_llama
from rcpu_lightning.eval import ALL_TASKS, encode_request, evaluate_task, evaluate_tasks, item_loglikelihoods, load_items
from rcpu_lightning.models import embedded_gguf_path, load_causal_lm, resolve_checkpoint

sys.path.insert(0, str(Path(__file__).parent.parent / "tools"))  # tools/compare_harness.py

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


# tests of the embedded SmolLM2 tokenizer: the first use converts its GGUF (~40 s on a fresh machine)
uses_smollm2 = pytest.mark.integration


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    # The tokenizer load_causal_lm("smollm2-135m") returns, without loading the weights (the first call
    # converts the embedded GGUF into the checkpoint cache).
    return AutoTokenizer.from_pretrained(resolve_checkpoint("smollm2-135m"))


def _pieces(tok, ids):
    return [tok.decode([i]) for i in ids]


def test_embedded_gguf_path():
    path = embedded_gguf_path("smollm2-135m")
    assert path.name == GGUF and path.is_file() and path.stat().st_size > 50_000_000


@uses_smollm2
def test_tokenizer_has_no_default_bos(smollm2_tokenizer):
    tok = smollm2_tokenizer
    assert tok.bos_token == "<|im_start|>"
    assert tok.encode("Answer:")[0] != tok.bos_token_id


@uses_smollm2
def test_continuation_is_whole_minus_context(smollm2_tokenizer):
    tok = smollm2_tokenizer
    ctx, cont = encode_request(tok, "Question: Is the sky blue?\nAnswer:", " yes")
    assert _pieces(tok, ctx)[-3:] == ["\n", "Answer", ":"]
    assert _pieces(tok, cont) == [" yes"]
    assert ctx + cont == tok.encode("Question: Is the sky blue?\nAnswer: yes")


@uses_smollm2
def test_trailing_whitespace_moves_to_continuation(smollm2_tokenizer):
    tok = smollm2_tokenizer
    ctx, cont = encode_request(tok, "Answer: ", "yes")
    assert ctx == tok.encode("Answer:")
    assert _pieces(tok, cont) == [" yes"]  # not [" ", "yes"] as a naive split would give
    naive = tok.encode("Answer: ")[len(tok.encode("Answer:")) :] + tok.encode("yes")
    assert cont != naive


@uses_smollm2
def test_boundary_merge_is_not_repaired(smollm2_tokenizer):
    tok = smollm2_tokenizer
    # '"' + '"hi': the whole string merges the two quotes into one token (' ""'). The harness takes
    # whole[len(ctx):], so the continuation is just 'hi' -- the merged token sits in the context slot.
    ctx, cont = encode_request(tok, 'He said "', '"hi')
    whole = tok.encode('He said ""hi')
    assert cont == whole[len(ctx) :]
    assert _pieces(tok, cont) == ["hi"]
    assert cont != tok.encode('"hi')
    assert ctx != whole[: len(ctx)]


@uses_smollm2
def test_bos_switch_with_real_tokenizer(smollm2_tokenizer):
    tok = smollm2_tokenizer
    default_ctx, _ = encode_request(tok, "Hello", " world", bos=None)
    forced_ctx, forced_cont = encode_request(tok, "Hello", " world", bos=True)
    off_ctx, _ = encode_request(tok, "Hello", " world", bos=False)
    assert default_ctx == off_ctx == tok.encode("Hello")  # SmolLM2 adds no BOS by default
    assert forced_ctx == [tok.bos_token_id] + off_ctx
    assert _pieces(tok, forced_cont) == [" world"]


@uses_smollm2
def test_hellaswag_leading_space_continuation_tokens(smollm2_tokenizer):
    tok = smollm2_tokenizer
    # lm-eval keeps a leading space on endings that started with a tag: continuation "  Dip".
    _, cont = encode_request(tok, "Home: How to paint.", "  Dip it.")
    assert _pieces(tok, cont)[:2] == [" ", " Dip"]


@pytest.fixture(scope="module")
def tiny_model_for_smollm2(smollm2_tokenizer):
    return make_tiny_llama(vocab_size=len(smollm2_tokenizer), seed=11)


@uses_smollm2
@pytest.mark.parametrize("task", ALL_TASKS)
def test_every_task_runs_end_to_end(task, shared_data, smollm2_tokenizer, tiny_model_for_smollm2):
    res = evaluate_task(tiny_model_for_smollm2, smollm2_tokenizer, task, data_dir=shared_data, limit=3, batch_size=4, progress=False)
    assert res["n"] == 3 and res["limit"] == 3
    assert res["acc"] in (0.0, 1 / 3, 2 / 3, 1.0) and res["acc_norm"] in (0.0, 1 / 3, 2 / 3, 1.0)
    assert res["bos"] is None and res["bos_in_context"] is False
    assert res["source"].endswith(".jsonl")
    items = load_items(task, shared_data, limit=3)
    lls = item_loglikelihoods(tiny_model_for_smollm2, smollm2_tokenizer, items, batch_size=2)
    assert all(len(l) == it.num_choices and all(v < 0 for v in l) for l, it in zip(lls, items))


@uses_smollm2
def test_evaluate_tasks_of_a_saved_model_make_a_report_row(tmp_path, shared_data, smollm2_tokenizer, tiny_model_for_smollm2):
    # What the former zero-shot command line (`--model DIR --output`) did, in Python:
    # load a model folder with the package's loader, evaluate two tasks, write a report row.
    import json

    from rcpu_lightning.eval.report import load_rows, results_table

    model_dir = tmp_path / "tiny"
    tiny_model_for_smollm2.save_pretrained(model_dir)
    smollm2_tokenizer.save_pretrained(model_dir)
    model, tokenizer = load_causal_lm(str(model_dir))
    results = evaluate_tasks(model, tokenizer, ["piqa", "winogrande"], data_dir=shared_data, limit=2, bos=False, progress=False)
    assert set(results) == {"piqa", "winogrande"}  # every requested task is there
    assert results["piqa"]["n"] == 2 and results["piqa"]["bos"] is False
    assert all(res["limit"] == 2 and res["task"] == task for task, res in results.items())
    out = tmp_path / "res" / "z.json"
    out.parent.mkdir()
    out.write_text(json.dumps({"model": "tiny", "method": "rcpu", "ratio": 0.2, "tasks": results}))
    md = results_table(load_rows([out]))
    row = next(line for line in md.splitlines() if line.startswith("| 20% | rcpu | – |"))
    assert row.endswith("| – |")  # no mean: not all seven tasks


@uses_smollm2
def test_compare_harness_detects_string_and_score_differences(shared_data, smollm2_tokenizer, tiny_model_for_smollm2):
    from compare_harness import compare_task

    items = load_items("arc_easy", shared_data, limit=3)
    lls = item_loglikelihoods(tiny_model_for_smollm2, smollm2_tokenizer, items)
    samples = []
    for it, ll in zip(items, lls):
        args = {f"gen_args_{i}": {"arg_0": c, "arg_1": k} for i, (c, k) in enumerate(it.requests)}
        resp = [[str(v + 1e-4), "False"] for v in ll]
        acc = float(max(range(len(ll)), key=lambda i: (ll[i], -i)) == it.gold)
        samples.append({"doc_id": it.doc_id, "arguments": args, "filtered_resps": resp, "acc": acc})
    res = compare_task("arc_easy", samples, tiny_model_for_smollm2, smollm2_tokenizer, shared_data, None, 4)
    assert res["string_mismatches"] == 0 and res["docs_acc_differs"] == 0
    assert res["max_abs_ll_diff"] == pytest.approx(1e-4, abs=1e-5)  # batch size 4 vs 16: ~1e-6 noise
    samples[1]["arguments"]["gen_args_0"]["arg_1"] = " something else"
    res = compare_task("arc_easy", samples, tiny_model_for_smollm2, smollm2_tokenizer, shared_data, None, 4)
    assert res["string_mismatches"] == 1 and res["string_mismatch_doc_ids"] == [1]
